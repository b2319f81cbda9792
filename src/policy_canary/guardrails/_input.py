"""Reading a guardrail's YAML values, and explaining pydantic's errors in the plan's terms."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from policy_canary.errors import PlanError


def parse_number(value: Any, *, field: str, guardrail: str) -> float | None:
    """Read ``20%`` / ``"0.2"`` / ``0.2`` as a float; percentages are divided by 100."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise PlanError(f"guardrail {guardrail!r}: {field} must be a number or a percentage")
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an integer past a double's range
            number = math.inf
    elif isinstance(value, str):
        text = value.strip().replace("_", "")
        try:
            number = float(text[:-1]) / 100.0 if text.endswith("%") else float(text)
        except ValueError:
            raise PlanError(
                f"guardrail {guardrail!r}: {field} {value!r} is not a number; "
                "write e.g. '20%' or 0.2"
            ) from None
    else:
        raise PlanError(f"guardrail {guardrail!r}: {field} must be a number or a percentage")
    if not math.isfinite(number):
        raise PlanError(f"guardrail {guardrail!r}: {field} must be finite")
    return number


def explain_validation(exc: ValidationError, data: Mapping[str, Any]) -> str:
    name = data.get("name", data.get("metric", "?"))
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "guardrail"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown field {loc!r}")
        else:
            parts.append(f"{loc}: {err['msg']}")
    return f"guardrail {name!r}: " + "; ".join(parts)
