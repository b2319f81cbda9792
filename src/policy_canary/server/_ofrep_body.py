"""OFREP evaluation bodies: the document of one decision, and its cached encoding."""

from __future__ import annotations

from typing import Any

from policy_canary.server._render import dumps
from policy_canary.serving import Decision, flag_metadata, flag_reason


def evaluation(decision: Decision) -> dict[str, Any]:
    """The OFREP evaluation success body of one decision."""
    return {
        "key": decision.policy,
        "value": decision.version.spec,
        "variant": f"v{decision.version.number}",
        "reason": flag_reason(decision),
        "metadata": flag_metadata(decision),
    }


#: Stands in for the decision id while a body template is encoded (no name or stage holds NUL).
_HOLE = "\x00decision\x00"
_HOLE_JSON = dumps(_HOLE)


class EvaluationBodies:
    """Single-flag evaluation bodies, encoded once per routing table and arm.

    Everything in the body but the decision id is fixed by the routing table, the arm and
    stickiness, so the encoded JSON is kept around that hole: a request costs one bytes join
    instead of building and encoding the whole document (the spec can be large). The bytes
    are exactly ``dumps({**evaluation(decision), "cacheable": False})``.
    """

    def __init__(self) -> None:
        # (policy, arm, sticky) -> (version, rollout id, share, stage, head, tail); replaced
        # when the table changes, so it holds one entry per arm of each policy evaluated.
        self._parts: dict[tuple[str, str, bool], tuple[Any, ...]] = {}

    def body(self, decision: Decision) -> bytes:
        """The encoded OFREP success body of ``decision``."""
        version = decision.version
        rollout_id, share, stage = decision.rollout_id, decision.traffic_bp, decision.stage
        slot = (decision.policy, decision.arm.value, decision.sticky)
        parts = self._parts.get(slot)
        if (
            parts is None
            or parts[0] is not version
            or parts[1] != rollout_id
            or parts[2] != share
            or parts[3] != stage
        ):
            data = {**evaluation(decision), "cacheable": False}
            data["metadata"]["decisionId"] = _HOLE
            head, hole, tail = dumps(data).partition(_HOLE_JSON)
            assert hole, "the decision id is in the metadata"
            parts = (version, rollout_id, share, stage, head, tail)
            self._parts[slot] = parts  # one reference store: other threads see old or new
        # Decision ids are hex and '-' (see Gate.route), so they need no JSON escaping.
        return b"".join((parts[4], b'"', decision.decision_id.encode(), b'"', parts[5]))
