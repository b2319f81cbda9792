"""Late evaluations joined to their request by ``gen_ai.response.id``, across exports.

An evaluator that scores a response on its own (another service, a batch judge minutes
later) cannot make its span a child of the agent's request; the GenAI semantic conventions
let its ``gen_ai.evaluation.result`` event name the response instead. The server remembers
which decision each recorded request's response ids belong to, and keeps evaluations that
arrive before their response until it does; both bounded, the oldest forgotten first.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from policy_canary.server._otlp_map import LateEvaluation

#: Response ids remembered, and early evaluations kept, before the oldest are forgotten.
DEFAULT_CAPACITY = 100_000


@dataclass(frozen=True, slots=True)
class Responder:
    """The decision a response belongs to."""

    decision_id: str
    policy: str


class ResponseJoin:
    """``gen_ai.response.id`` → decision, and evaluations waiting for theirs. Thread-safe."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self._capacity = capacity
        self._responses: OrderedDict[str, Responder] = OrderedDict()
        self._waiting: OrderedDict[str, list[LateEvaluation]] = OrderedDict()
        self._waiting_size = 0
        self._lock = threading.Lock()

    def remember(self, response_ids: Iterable[str], responder: Responder) -> list[LateEvaluation]:
        """Tie ``response_ids`` to ``responder``; return evaluations that were waiting for them."""
        ready: list[LateEvaluation] = []
        with self._lock:
            for response_id in response_ids:
                self._responses[response_id] = responder
                self._responses.move_to_end(response_id)
                early = self._waiting.pop(response_id, [])
                self._waiting_size -= len(early)
                ready.extend(early)
            while len(self._responses) > self._capacity:
                self._responses.popitem(last=False)
        return ready

    def resolve(self, evaluation: LateEvaluation) -> Responder | None:
        """The decision ``evaluation`` scores; ``None`` (and kept until it is known) if unknown."""
        with self._lock:
            found = self._responses.get(evaluation.response_id)
            if found is not None:
                return found
            self._waiting.setdefault(evaluation.response_id, []).append(evaluation)
            self._waiting_size += 1
            while self._waiting_size > self._capacity and self._waiting:
                _, dropped = self._waiting.popitem(last=False)
                self._waiting_size -= len(dropped)
        return None

    def waiting(self) -> int:
        """Evaluations kept until their response is recorded."""
        with self._lock:
            return self._waiting_size


__all__ = ["DEFAULT_CAPACITY", "Responder", "ResponseJoin"]
