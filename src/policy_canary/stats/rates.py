"""Rates against the concurrent baseline: the conditional e-process of design.md section 6.

Only *bad* events carry information here. For each one, Y = 1 when the candidate served it
and rho is the candidate's share of traffic when it was served. If the candidate's rate is at
most ``r0`` times stable's, then P(Y = 1) <= q = rho*r0 / (rho*r0 + 1 - rho), whatever the
traffic volume or a shared incident does to both arms. Each factor of the e-process is the
likelihood ratio of an alternative ratio ``r1`` against ``r0``, i.e. Wald's SPRT, mixed over
alternatives from just above the tolerance out to "stable never shows it" (an infinite ratio),
so a catastrophe is stopped after its first few bad events.

Because the factor depends on an event only through (rho, Y), the state is just the number of
bad events per arm per traffic share (in basis points). Folding is O(new events), the state is a
small JSON object, and the e-value for *any* null ratio can be computed from it, which is what
lets one test serve every stage's tolerance (see ``docs/statistics.md``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from policy_canary.stats.edges import rejection_edge

__all__ = [
    "BPS",
    "LIMIT_WEIGHT",
    "MAIN_WEIGHT",
    "RATE_DETECT_WEIGHT",
    "ConditionalRateProcess",
    "RateMixture",
    "candidate_share_of_bad",
    "conditional_log_evalue",
]

#: Basis points in 100% traffic.
BPS = 10_000
#: Prior weight of the configured ``detect`` alternative in the mean and SLO mixtures (the rest
#: goes to a smaller and a larger alternative): detection of ``detect`` pays ln(1 / MAIN_WEIGHT)
#: of threshold.
MAIN_WEIGHT = 0.65
#: Prior weights of their smaller (midpoint) and larger alternative.
MID_WEIGHT = 0.20
FAR_WEIGHT = 0.15
#: The relative rate test's mixture (``RateMixture.around``): weight of ``detect`` ...
RATE_DETECT_WEIGHT = 0.52
#: ... of the geometric midpoint between the tolerance and ``detect`` ...
RATE_MID_WEIGHT = 0.20
#: ... of the first doubling, ``detect`` x 2 (a gross regression: failures 1% -> 4%) ...
RATE_DOUBLE_WEIGHT = 0.21
#: ... of the further tail ``detect`` x 2^k, k = 2..TAIL_STEPS + 1, split geometrically (each
#: doubling gets TAIL_DECAY times the previous one's weight) ...
TAIL_WEIGHT = 0.05
TAIL_STEPS = 11
TAIL_DECAY = 0.8
#: ... and of the limit "stable never shows it" (ratio infinite; zero for a decrease).
LIMIT_WEIGHT = 0.02
#: What a memo holds for a key it has never seen.
_MISSING = object()
#: Search range for confidence bounds on the rate ratio.
_RATIO_FLOOR = 1e-3
_RATIO_CEILING = 1e3


@dataclass(frozen=True, slots=True)
class RateMixture:
    """Alternative rate ratios (candidate / stable) and their prior weights, summing to one."""

    ratios: tuple[float, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.ratios or len(self.ratios) != len(self.weights):
            raise ValueError("a mixture needs as many weights as ratios, and at least one")
        # 0 and inf are the limits "the candidate never shows it" / "stable never shows it".
        if any(math.isnan(r) or r < 0.0 for r in self.ratios) or any(
            not w > 0.0 for w in self.weights
        ):
            raise ValueError("mixture ratios must be >= 0 (inf allowed), weights positive")
        if not math.isclose(sum(self.weights), 1.0, rel_tol=1e-9):
            raise ValueError(f"mixture weights must sum to 1; got {sum(self.weights)}")

    @classmethod
    def around(cls, null_ratio: float, detect_ratio: float) -> RateMixture:
        """Alternatives from the tolerance out to the limit, most weight on ``detect``.

        * ``detect`` (weight 0.52): the regression the guardrail is sized for;
        * the geometric midpoint of tolerance and ``detect`` (0.20): a pure SPRT tuned to
          ``detect`` drifts *down* on regressions well below it and never fires;
        * the first doubling, ``detect`` x 2 (0.21): a gross regression (failures 1% -> 4%
          at ``detect`` 100%) within 1.3x of the SPRT told the ratio; an alternative a doubling
          away keeps only about 60% of the information per event, so it needs its own term;
        * a further tail ``detect`` x 2^k, k = 2..12 (0.05 in all, each doubling 0.8 times the
          previous one's weight): catastrophes (failures 1% -> 30%, flags 0.01% -> 1%);
        * the limit, an infinite ratio (0.02): stable never shows the bad event, so each
          candidate one multiplies this component by 1/q0 and the first stable one ends it.
          At a 1% share two candidate bad events breach (ln(1/q0) = 4.4 each).

        On the other side of the null (``detect`` below it, a ``max_decrease``) the tail halves
        and the limit is a zero ratio. Every component is a likelihood ratio of an alternative
        on the far side of ``null_ratio`` with a weight fixed before the data, so the mixture is
        a test supermartingale.
        """
        if math.isclose(null_ratio, detect_ratio):
            raise ValueError("the alternative must differ from the null ratio")
        step, limit = (2.0, math.inf) if detect_ratio > null_ratio else (0.5, 0.0)
        tail = [TAIL_DECAY**k for k in range(TAIL_STEPS)]
        scale = TAIL_WEIGHT / sum(tail)
        return cls(
            ratios=(
                detect_ratio,
                math.sqrt(null_ratio * detect_ratio),
                detect_ratio * step,
                *(detect_ratio * step ** (k + 2) for k in range(TAIL_STEPS)),
                limit,
            ),
            weights=(
                RATE_DETECT_WEIGHT,
                RATE_MID_WEIGHT,
                RATE_DOUBLE_WEIGHT,
                *(scale * w for w in tail),
                LIMIT_WEIGHT,
            ),
        )

    @classmethod
    def away(cls, *, pivot: float, null_ratio: float, detect_ratio: float) -> RateMixture:
        """Alternatives on the *other* side of ``pivot``, for non-inferiority.

        They sit the full, half and quarter log-distance ln(detect/null) beyond ``pivot`` (the
        strictest tolerance), so the test also has power when the candidate is merely as good
        as stable.
        """
        step = null_ratio / detect_ratio
        return cls(
            ratios=(pivot * step, pivot * math.sqrt(step), pivot * step**0.25),
            weights=(1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {"ratios": list(self.ratios), "weights": list(self.weights)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RateMixture:
        """Rebuild a mixture from :meth:`to_dict` output."""
        return cls(
            ratios=tuple(float(x) for x in data["ratios"]),
            weights=tuple(float(x) for x in data["weights"]),
        )


def candidate_share_of_bad(share: ArrayLike, ratio: float) -> NDArray[np.float64]:
    """Return q = share*ratio / (share*ratio + 1 - share): P(a bad event is the candidate's).

    An infinite ratio gives q = 1 (stable never has a bad event), a zero ratio q = 0.
    """
    rho = np.asarray(share, dtype=np.float64)
    if math.isinf(ratio):
        return np.ones_like(rho)
    return rho * ratio / (rho * ratio + 1.0 - rho)


def _log_factor(count: NDArray[np.float64], ratio: NDArray[np.float64]) -> NDArray[np.float64]:
    """count x ln(ratio), with 0 x ln 0 = 0: an arm without events costs a limit nothing."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(np.where(count > 0, count * np.log(ratio), 0.0), dtype=np.float64)


def conditional_log_evalue(
    candidate_bad: ArrayLike,
    stable_bad: ArrayLike,
    shares: ArrayLike,
    *,
    null_ratio: float,
    mixture: RateMixture,
) -> NDArray[np.float64]:
    """Return ln K for the null "candidate rate <= null_ratio x stable rate", vectorised.

    ``candidate_bad`` and ``stable_bad`` hold bad-event counts with the traffic shares (in
    (0, 1), one per stratum) on the last axis; any leading axes (runs, looks) broadcast, which
    is how the benchmark evaluates thousands of simulated rollouts at once. Alternatives below
    ``null_ratio`` give the mirror-image test of "candidate rate >= null_ratio x stable rate".
    """
    cand = np.asarray(candidate_bad, dtype=np.float64)
    stab = np.asarray(stable_bad, dtype=np.float64)
    rho = np.asarray(shares, dtype=np.float64)
    q0 = candidate_share_of_bad(rho, null_ratio)
    parts = []
    for ratio, weight in zip(mixture.ratios, mixture.weights, strict=True):
        q1 = candidate_share_of_bad(rho, ratio)
        log_lr = _log_factor(cand, q1 / q0) + _log_factor(stab, (1.0 - q1) / (1.0 - q0))
        parts.append(math.log(weight) + log_lr.sum(axis=-1))
    return np.asarray(np.logaddexp.reduce(np.stack(parts), axis=0), dtype=np.float64)


def _strata_log_evalue(
    cand: NDArray[np.float64],
    stab: NDArray[np.float64],
    rho: NDArray[np.float64],
    null_ratio: float,
    mixture: RateMixture,
) -> float:
    """:func:`conditional_log_evalue` of one state (1-d strata), every component at once.

    The same element-wise operations on a (component, stratum) array instead of one small
    array per component: each element is computed exactly as there, each row summed by the
    same reduction, so the value is identical, for a dozen numpy calls instead of ~180.
    """
    ratios = np.asarray(mixture.ratios, dtype=np.float64)[:, None]
    infinite = np.isinf(ratios)
    q0 = candidate_share_of_bad(rho, null_ratio)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = rho * ratios
        q1 = np.where(infinite, 1.0, scaled / (scaled + 1.0 - rho))
        log_lr = np.where(cand > 0, cand * np.log(q1 / q0), 0.0) + np.where(
            stab > 0, stab * np.log((1.0 - q1) / (1.0 - q0)), 0.0
        )
    log_weights = np.asarray([math.log(w) for w in mixture.weights], dtype=np.float64)
    parts = log_weights + log_lr.sum(axis=-1)
    return float(np.logaddexp.reduce(parts, axis=0))


def _share_of_bad(rho: float, ratio: float) -> float:
    """:func:`candidate_share_of_bad` of one share."""
    if math.isinf(ratio):
        return 1.0
    return rho * ratio / (rho * ratio + 1.0 - rho)


def _count_log(count: float, ratio: float) -> float:
    """:func:`_log_factor` of one cell: count x ln(ratio), with 0 x ln 0 = 0."""
    if count <= 0.0:
        return 0.0
    if ratio <= 0.0:
        return -math.inf if ratio == 0.0 else math.nan
    return count * math.log(ratio)


def _logaddexp(x: float, y: float) -> float:
    """numpy's ``logaddexp`` on two floats (its branches, so the values agree)."""
    if x == y:
        return x + math.log(2.0)
    tmp = x - y
    if tmp > 0:
        return x + math.log1p(math.exp(-tmp))
    if tmp <= 0:
        return y + math.log1p(math.exp(tmp))
    return tmp  # nan


def _scalar_log_evalue(
    cells: list[tuple[float, float, float]],
    null_ratio: float,
    components: list[tuple[float, float]],
) -> float:
    """:func:`conditional_log_evalue` on ``(candidate bad, stable bad, share)`` cells, in floats.

    The same formula term by term; ``components`` are the mixture's (ratio, ln weight) pairs.
    """
    q0s = [_share_of_bad(rho, null_ratio) for _, _, rho in cells]
    total = -math.inf
    for i, (ratio, log_weight) in enumerate(components):
        log_lr = 0.0
        for (cand, stab, rho), q0 in zip(cells, q0s, strict=True):
            q1 = _share_of_bad(rho, ratio)
            log_lr += _count_log(cand, q1 / q0) + _count_log(stab, (1.0 - q1) / (1.0 - q0))
        part = log_weight + log_lr
        total = part if i == 0 else _logaddexp(total, part)
    return total


@dataclass(frozen=True, slots=True)
class _Factored:
    """ln K(null) = N - ln L0(null) of one state and one mixture, in floats.

    Every component's likelihood ratio has the same denominator, the null's likelihood
    L0 = prod q0^cand (1 - q0)^stab over the cells, so the numerator
    N = ln sum_i w_i prod q1_i^cand (1 - q1_i)^stab does not depend on the null. A rate judge
    asks one state for two e-values and a bound per mixture, and a bound's bisection for ~50
    nulls: N is computed once, and each null then costs one q0 and two logarithms per cell
    instead of a pass over the mixture's ~16 components. The value is numpy's
    :func:`conditional_log_evalue` up to rounding (a difference of two logarithms of products
    rather than a sum of logarithms of quotients), and the e-value and the bound now come
    from one formula.
    """

    cells: tuple[tuple[float, float, float], ...]
    numerator: float

    @classmethod
    def of(
        cls, cells: Sequence[tuple[float, float, float]], mixture: RateMixture
    ) -> _Factored | None:
        """The factored form of ``(candidate bad, stable bad, share)`` cells, or None when a
        share lies outside (0, 1) (a hand-made state: the unfactored formulas answer)."""
        if not all(0.0 < rho < 1.0 for _, _, rho in cells):
            return None
        terms = []
        for ratio, weight in zip(mixture.ratios, mixture.weights, strict=True):
            log_l1 = math.log(weight)
            for cand, stab, rho in cells:
                q1 = _share_of_bad(rho, ratio)
                log_l1 += _count_log(cand, q1) + _count_log(stab, 1.0 - q1)
            terms.append(log_l1)
        top = max(terms)
        if top == -math.inf:  # every alternative is ruled out by the data
            return cls(tuple(cells), -math.inf)
        return cls(tuple(cells), top + math.log(math.fsum(math.exp(t - top) for t in terms)))

    def log_e_value(self, null_ratio: float) -> float | None:
        """ln K at ``null_ratio``, or None when a q0 reaches 0 or 1 (the unfactored formula
        then answers, with its limits)."""
        log = math.log
        log_l0 = 0.0
        for cand, stab, rho in self.cells:
            scaled = rho * null_ratio
            q0 = scaled / (scaled + 1.0 - rho)
            if not 0.0 < q0 < 1.0:
                return None
            if cand > 0.0:
                log_l0 += cand * log(q0)
            if stab > 0.0:
                log_l0 += stab * log(1.0 - q0)
        return self.numerator - log_l0


@dataclass(slots=True)
class ConditionalRateProcess:
    """Sufficient statistics of the conditional rate e-process for one boolean metric.

    ``requests`` counts observations per arm (stable, candidate); ``bad`` maps a traffic share
    in basis points to the bad events per arm seen at that share. Events at share 0 or 100%
    carry no comparative information and only count as requests.
    """

    requests: list[int] = field(default_factory=lambda: [0, 0])
    bad_total: list[int] = field(default_factory=lambda: [0, 0])
    bad: dict[int, list[int]] = field(default_factory=dict)
    #: The last e-values and bounds, each with the bad counts it was computed from: a tick
    #: without new bad events (most ticks of a rare metric) reuses them instead of bisecting.
    _memo: dict[tuple[Any, ...], tuple[tuple[tuple[int, int, int], ...], Any]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def _cells_key(self) -> tuple[tuple[int, int, int], ...]:
        return tuple((k, v[0], v[1]) for k, v in sorted(self.bad.items()))

    def _recall(self, key: tuple[Any, ...], cells: tuple[tuple[int, int, int], ...]) -> Any:
        """The value memoised under ``key`` if it was computed from these very counts."""
        found = self._memo.get(key)
        if found is not None and found[0] == cells:
            return found[1]
        return _MISSING

    def fold(self, *, candidate: ArrayLike, share_bp: ArrayLike, bad: ArrayLike) -> None:
        """Fold a batch of observations: arm flags, shares in basis points, bad flags."""
        is_cand = np.asarray(candidate, dtype=bool)
        bps = np.asarray(share_bp, dtype=np.int64)
        is_bad = np.asarray(bad, dtype=bool)
        n_cand = int(np.count_nonzero(is_cand))
        self.requests[0] += int(is_cand.size) - n_cand
        self.requests[1] += n_cand
        n_bad = int(np.count_nonzero(is_bad))
        if not n_bad:
            return
        bad_cand = int(np.count_nonzero(is_bad & is_cand))
        self.bad_total[1] += bad_cand
        self.bad_total[0] += n_bad - bad_cand
        # Bad events are the rare ones: each informative one is counted into its share's cell.
        informative = is_bad & (bps > 0) & (bps < BPS)
        for key, cand in zip(bps[informative].tolist(), is_cand[informative].tolist(), strict=True):
            self.bad.setdefault(key, [0, 0])[1 if cand else 0] += 1

    def _arrays(self) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        keys = sorted(self.bad)
        shares = np.asarray(keys, dtype=np.float64) / BPS
        stable = np.asarray([self.bad[k][0] for k in keys], dtype=np.float64)
        cand = np.asarray([self.bad[k][1] for k in keys], dtype=np.float64)
        return cand, stable, shares

    def log_e_value(self, *, null_ratio: float, mixture: RateMixture) -> float:
        """Return ln K for the null ratio against the mixture's alternatives (0 before data)."""
        if not self.bad:
            return 0.0
        factored = self._factored(mixture)
        value = None if factored is None else factored.log_e_value(null_ratio)
        if value is None:
            cand, stable, shares = self._arrays()
            value = _strata_log_evalue(cand, stable, shares, null_ratio, mixture)
        return float(value)

    def _factored(self, mixture: RateMixture) -> _Factored | None:
        """The state's :class:`_Factored` form for ``mixture``, computed once per counts."""
        cells = self._cells_key()
        key = ("factored", mixture)
        found = self._recall(key, cells)
        if found is _MISSING:
            found = _Factored.of([(float(c), float(s), k / BPS) for k, s, c in cells], mixture)
            self._memo[key] = (cells, found)
        return found  # type: ignore[no-any-return]

    def confidence_bound(self, *, alpha: float, mixture: RateMixture, upper: bool) -> float | None:
        """Return the anytime-valid bound on the rate ratio implied by ``mixture``'s tests.

        With alternatives above (``upper=False``) this is the lower bound: every ratio below it
        is rejected at level ``alpha``. With alternatives below (``upper=True``) it is the upper
        bound. ``None`` means no ratio in the search range is rejected yet.
        """
        threshold = math.log(1.0 / alpha)
        if not self.bad:
            return None
        counts = self._cells_key()
        key = ("confidence_bound", alpha, mixture, upper)
        found = self._recall(key, counts)
        if found is not _MISSING:
            return None if found is None else float(found)
        bound = self._bound(threshold, mixture, upper)
        self._memo[key] = (counts, bound)
        return bound

    def _bound(self, threshold: float, mixture: RateMixture, upper: bool) -> float | None:
        """:meth:`confidence_bound` computed: the bisection for the rejected set's edge."""
        cells = [(float(c), float(s), k / BPS) for k, (s, c) in sorted(self.bad.items())]
        components = [
            (r, math.log(w)) for r, w in zip(mixture.ratios, mixture.weights, strict=True)
        ]
        factored = self._factored(mixture)
        test = factored.log_e_value if factored is not None else lambda _: None

        def rejected(x: float) -> bool:
            value = test(math.exp(x))
            if value is None:  # shares or a q0 outside (0, 1): the formula term by term
                value = _scalar_log_evalue(cells, math.exp(x), components)
            return value >= threshold

        # ln K is convex in ln(null ratio) and falls towards the alternatives, so the rejected
        # set is one interval reaching away from them; bisect for its edge.
        if upper:
            near, far = math.log(max(mixture.ratios)), math.log(_RATIO_CEILING)
        else:
            near, far = math.log(min(mixture.ratios)), math.log(_RATIO_FLOOR)
        edge = rejection_edge(rejected, near, far)
        return None if edge is None else math.exp(edge)

    def rates(self) -> tuple[float | None, float | None]:
        """Return the observed (stable, candidate) rates, ``None`` for an arm without data."""
        stable = self.bad_total[0] / self.requests[0] if self.requests[0] else None
        cand = self.bad_total[1] / self.requests[1] if self.requests[1] else None
        return stable, cand

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (share keys as strings)."""
        return {
            "requests": list(self.requests),
            "bad_total": list(self.bad_total),
            "bad": {str(k): list(v) for k, v in sorted(self.bad.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConditionalRateProcess:
        """Rebuild the state from :meth:`to_dict` output."""
        return cls(
            requests=[int(x) for x in data["requests"]],
            bad_total=[int(x) for x in data["bad_total"]],
            bad={int(k): [int(v[0]), int(v[1])] for k, v in data["bad"].items()},
        )
