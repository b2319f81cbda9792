"""Plain-text tables of ``bench_detection.py`` results (also pasted into docs/statistics.md)."""

from __future__ import annotations

from typing import Any

__all__ = ["render", "render_targets", "render_truth"]

SHOWN = (
    "ours",
    "sprt-told-truth",
    "sprt@detect",
    "checkpoint@detect",
    "naive",
    "kayenta@0.01",
    "kayenta-matched",
    "z/t-every-look",
)


def render(result: dict[str, Any]) -> str:
    """A plain-text table (also pasted into docs/statistics.md)."""
    head = (
        f"{'scenario':<36} {'method':<18} {'false rb':>9} {'detected':>9} {'median req':>11} "
        f"{'p90 req':>9} {'harmed':>8} {'x Wald':>7} {'x 1-side':>8}"
    )
    lines = [head, "-" * len(head)]

    def fmt(v: float | None, pct: bool = False) -> str:
        if v is None:
            return "-"
        return f"{100 * v:.2f}%" if pct else f"{v:,.0f}"

    def ratio(v: float | None) -> str:
        return "" if v is None else f"{v:.2f}"

    for sc in result["scenarios"]:
        for method in SHOWN:
            row = sc["methods"].get(method)
            if row is None:
                continue
            name = method.replace("@0.01", "")
            if method == "kayenta-matched":
                name = f"kayenta@{row['p']:g}"
            false_rb = fmt(row.get("false_rollback"), pct=True) if sc["null"] else ""
            detected = "" if sc["null"] else fmt(row["rollback_rate"], pct=True)
            lines.append(
                f"{sc['scenario']:<36} {name:<18} {false_rb:>9} {detected:>9} "
                f"{fmt(row.get('median_requests')):>11} {fmt(row.get('p90_requests')):>9} "
                f"{fmt(row.get('median_harmed')):>8} {ratio(row.get('ratio_to_floor')):>7} "
                f"{ratio(row.get('ratio_to_power_one_floor')):>8}"
            )
    return "\n".join(lines)


#: Below the targets table: what its columns mean and how to read a target against a floor.
TARGETS_LEGEND = """\
Medians over runs, in candidate requests. median fl: the Neyman-Pearson median floor; no test
with false rollbacks <= alpha detects within fewer in half the runs (quality: approximate).
kay: kayenta at the p matched to alpha on A/A. harm x: kay harmed / ours harmed. best x: kay
harmed / harm at the median floor, the most any alpha-level method could reach. No method meets
"x Wald <= 1.3" where median fl > 1.3 x Wald fl, nor "harm x >= 2" where best x < 2.
"-": not rolled back in half the runs (or no A/A scenario to match kayenta's p on)."""


def render_targets(result: dict[str, Any]) -> str:
    """A plain-text table of the detection scenarios against Wald's and the median floor."""
    detection = [sc for sc in result["scenarios"] if not sc["null"]]
    width = max((len(sc["scenario"]) for sc in detection), default=8)
    head = (
        f"{'scenario':<{width}} {'Wald fl':>7} {'1-side fl':>9} {'median fl':>9} "
        f"{'ours med':>8} {'x Wald':>6} {'x med fl':>8} {'kay harm':>8} {'ours harm':>9} "
        f"{'harm x':>6} {'best x':>6}"
    )
    lines = [head, "-" * len(head)]

    def count(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}"

    def ratio(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for sc in detection:
        ours = sc["methods"]["ours"]
        kay = sc["methods"].get("kayenta-matched", {})
        lines.append(
            f"{sc['scenario']:<{width}} {count(ours.get('wald_floor')):>7} "
            f"{count(ours.get('power_one_floor')):>9} {count(ours.get('median_floor')):>9} "
            f"{count(ours['median_requests']):>8} {ratio(ours.get('ratio_to_floor')):>6} "
            f"{ratio(ours.get('ratio_to_median_floor')):>8} {count(kay.get('median_harmed')):>8} "
            f"{count(ours['median_harmed']):>9} "
            f"{ratio(sc.get('harmed_kayenta_matched_over_ours')):>6} "
            f"{ratio(sc.get('best_harm_ratio_vs_kayenta_matched')):>6}"
        )
    return "\n".join([*lines, "", TARGETS_LEGEND])


def render_truth(result: dict[str, Any]) -> str:
    """Rate detection scenarios against Wald's SPRT told the true ratio, in bad events too."""
    rates = [sc for sc in result["scenarios"] if not sc["null"] and sc["family"] == "rates"]
    width = max((len(sc["scenario"]) for sc in rates), default=8)
    head = (
        f"{'scenario':<{width}} {'stable':>7} {'cand':>6} {'ratio':>6} {'share':>5} "
        f"{'ours med':>8} {'truth med':>9} {'x truth':>7} {'ours bad':>8} {'truth bad':>9}"
    )
    lines = [head, "-" * len(head)]

    def count(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}"

    for sc in rates:
        ours, truth = sc["methods"]["ours"], sc["methods"]["sprt-told-truth"]
        x = sc.get("median_over_told_truth")
        r = sc.get("true_ratio")
        lines.append(
            f"{sc['scenario']:<{width}} {100 * sc['stable_rate']:>6.2g}% "
            f"{100 * sc['candidate_rate']:>5.2g}% {'inf' if r is None else f'{r:g}':>6} "
            f"{100 * sc['share']:>4.0f}% {count(ours['median_requests']):>8} "
            f"{count(truth['median_requests']):>9} {'-' if x is None else f'{x:.2f}':>7} "
            f"{count(ours['median_harmed']):>8} {count(truth['median_harmed']):>9}"
        )
    legend = (
        "Medians over runs: candidate requests (med) and candidate bad events (bad) before "
        "rollback.\ntruth: Wald's SPRT on the same data told the true ratio (inf: the limit "
        "component alone)."
    )
    return "\n".join([*lines, "", legend])
