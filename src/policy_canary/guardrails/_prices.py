"""The price table: what a model's tokens cost, so a request's cost can be derived.

Users import :class:`ModelPrice` and :func:`price_of` from :mod:`policy_canary.guardrails`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict


class ModelPrice(BaseModel):
    """Price of one model, in US dollars per million input and output tokens."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Strict: a quoted '2.5' or a YAML true is refused rather than read as a price.
    input_usd_per_1m: Annotated[float, Strict()] = Field(ge=0.0, allow_inf_nan=False)
    output_usd_per_1m: Annotated[float, Strict()] = Field(ge=0.0, allow_inf_nan=False)


def price_of(
    prices: Mapping[str, ModelPrice],
    model: str | None,
    input_tokens: int | None,
    output_tokens: int | None,
) -> float | None:
    """Return the cost of a request from its tokens, or ``None`` when it cannot be priced."""
    if model is None or model not in prices or (input_tokens is None and output_tokens is None):
        return None
    price = prices[model]
    return (
        (input_tokens or 0) * price.input_usd_per_1m
        + (output_tokens or 0) * price.output_usd_per_1m
    ) / 1e6
