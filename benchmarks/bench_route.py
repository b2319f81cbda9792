"""How much does ``route()`` cost, next to feature-flag SDKs evaluating the same rollout?

Every contender assigns the same distinct unit keys to a 5% rollout, locally and offline:

- ``policy-canary Gate.route()``: the real SDK path (routing table loaded from a SQLite store,
  a ``Decision`` object built per call);
- ``floor``: the bare hash-and-compare of the splitter's scheme, no decision object;
- GrowthBook, Unleash (UnleashClient) and LaunchDarkly, each bootstrapped from an in-memory or
  on-disk flag definition with no network, evaluated through its documented per-request API.

The realized share of each contender is printed next to its time, as evidence that it really
evaluated the rollout. An SDK that is not installed, or cannot be made to evaluate offline,
is reported as such rather than timed.

Targets: route() <= 1.5 us, and >= 4x faster than the fastest SDK in the same run.
Run: ``python benchmarks/bench_route.py [--n 200000] [--repeats 5]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import tempfile
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import median, parse_args, per_call_us, print_table, write_json
from policy_canary.clock import SystemClock
from policy_canary.registry import Registry
from policy_canary.serving import Canary
from policy_canary.serving._gate import install_table
from policy_canary.serving._splitter import new_salt, salt_prefix, threshold
from policy_canary.store import Store
from policy_canary.store.schema import rollouts

SHARE_BP = 500
TARGET_ROUTE_US = 1.5
TARGET_SPEEDUP = 4.0
FLAG = "support-agent-canary"


class Unavailable(Exception):
    """A contender that cannot run here; the message says why."""


@dataclass
class Contender:
    """One way of assigning a key to the rollout: ``assign(key) -> in candidate?``."""

    name: str
    assign: Callable[[str], Any] | None
    is_candidate: Callable[[Any], bool] = bool
    status: str = "ok"
    close: Callable[[], None] = lambda: None
    runs_us: list[float] = field(default_factory=list)
    realized: float | None = None


def _policy_canary(folder: Path) -> tuple[Contender, Contender, Contender, Store]:
    """The SDK's gate on a real store, and the bare scheme as the floor."""
    store = Store.open(f"sqlite:///{folder}/route-bench.db")
    clock = SystemClock()
    registry = Registry(store, clock=clock)
    v1 = registry.register("support-agent", {"prompt": "v1"}, message="bench", author="bench")
    v2 = registry.register("support-agent", {"prompt": "v2"}, message="bench", author="bench")
    salt = new_salt()
    now = clock.now()
    with store.begin() as conn:
        conn.execute(
            rollouts.insert().values(
                id=uuid.uuid4().hex,
                policy="support-agent",
                baseline_digest=v1.version.id,
                candidate_digest=v2.version.id,
                state="running",
                stage_index=0,
                traffic_bp=SHARE_BP,
                salt=salt,
                plan=json.dumps({"stages": [{"name": "validation"}]}),
                plan_hash="0" * 64,
                revision=1,
                actor="bench",
                reason="bench",
                created_at=now,
                stage_started_at=now,
            )
        )
        store.bump_epoch(conn)
    canary = Canary(store, background=False)
    gate = canary.gate("support-agent")
    route = Contender(
        "policy-canary Gate.route()",
        gate.route,
        is_candidate=lambda d: d.arm.is_candidate(),
        close=canary.close,
    )
    # The same gate without the routed counters (serving/_routed.py), side by side: what
    # counting routed decisions for the outcomes_recorded guardrail costs route().
    bare_canary = Canary(store, background=False)
    bare = bare_canary.gate("support-agent")
    install_table(bare, dataclasses.replace(bare.table, tally=None))
    uncounted = Contender(
        "route() without routed counters",
        bare.route,
        is_candidate=lambda d: d.arm.is_candidate(),
        close=bare_canary.close,
    )
    salted, bound = hashlib.sha256(salt_prefix(salt)), threshold(SHARE_BP)

    def hash_and_compare(key: str) -> bool:
        hasher = salted.copy()
        hasher.update(key.encode("utf-8"))
        return hasher.digest() < bound

    floor = Contender("floor: sha256 hash-and-compare", hash_and_compare)
    return route, uncounted, floor, store


def _traced(store: Store) -> list[tuple[Contender, Callable[[], AbstractContextManager[Any]]]]:
    """route() inside a recording span with annotation off, and with it on outside/inside one.

    With the plain ``Gate.route()`` row (off, no span) these are the four cells side by side.
    """
    try:
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        why = "unavailable: pip install opentelemetry-sdk"
        return [(Contender("route() trace_spans=True", None, status=why), nullcontext)]
    plain = Canary(store, background=False)
    off = Contender("route() trace_spans=False, recording span",
                    plain.gate("support-agent").route, close=plain.close)  # fmt: skip
    canary = Canary(store, background=False, trace_spans=True)
    gate = canary.gate("support-agent")
    idle = Contender("route() trace_spans=True, no span", gate.route)
    # One recording span per timed run: each route() builds and adds its event (the SDK
    # keeps the last 128), which is the cost an instrumented request pays.
    tracer = TracerProvider().get_tracer("bench")
    inside = Contender("route() trace_spans=True, recording span", gate.route, close=canary.close)
    span = lambda: tracer.start_as_current_span("invoke_agent bench")  # noqa: E731
    return [(off, span), (idle, nullcontext), (inside, span)]


def _growthbook() -> Contender:
    try:
        from growthbook import GrowthBook
    except ImportError as error:
        raise Unavailable(f"not installed ({error.name}); pip install -e '.[bench]'") from None
    features = {
        FLAG: {
            "defaultValue": False,
            "rules": [{"force": True, "coverage": SHARE_BP / 10_000, "hashAttribute": "id"}],
        }
    }
    # No api_host/client_key: the features above are the whole configuration (offline).
    gb = GrowthBook(features=features)

    def assign(key: str) -> bool:
        gb.set_attributes({"id": key})
        return gb.is_on(FLAG)

    return Contender("GrowthBook (set_attributes + is_on)", assign, close=gb.destroy)


def _unleash(folder: Path) -> Contender:
    try:
        from UnleashClient import UnleashClient
        from UnleashClient.cache import FileCache
    except ImportError as error:
        raise Unavailable(f"not installed ({error.name}); pip install -e '.[bench]'") from None
    cache = FileCache("policy-canary-bench", directory=str(folder / "unleash"))
    cache.bootstrap_from_dict(
        {
            "version": 2,
            "features": [
                {
                    "name": FLAG,
                    "enabled": True,
                    "strategies": [
                        {
                            "name": "flexibleRollout",
                            "parameters": {
                                "rollout": str(SHARE_BP // 100),
                                "stickiness": "userId",
                                "groupId": FLAG,
                            },
                        }
                    ],
                }
            ],
        }
    )
    # The URL is never contacted: no toggle fetching, metrics or registration.
    client = UnleashClient(
        url="http://127.0.0.1:9/api",
        app_name="policy-canary-bench",
        disable_metrics=True,
        disable_registration=True,
        cache=cache,
    )
    client.initialize_client(fetch_toggles=False)
    if not client.is_enabled(FLAG, {"userId": "probe"}) and not any(
        client.is_enabled(FLAG, {"userId": f"probe-{i}"}) for i in range(200)
    ):
        client.destroy()
        raise Unavailable("bootstrapped flag did not evaluate offline")
    return Contender(
        "Unleash (is_enabled)",
        lambda key: client.is_enabled(FLAG, {"userId": key}),
        close=client.destroy,
    )


def _launchdarkly(folder: Path) -> Contender:
    try:
        import ldclient
        from ldclient import Context
        from ldclient.config import Config
        from ldclient.integrations import Files
    except ImportError as error:
        raise Unavailable(f"not installed ({error.name}); pip install -e '.[bench]'") from None
    flag = {
        "key": FLAG,
        "on": True,
        "version": 1,
        "salt": "bench",
        "variations": [True, False],
        "offVariation": 1,
        "fallthrough": {
            "rollout": {
                "variations": [
                    {"variation": 0, "weight": SHARE_BP * 10},
                    {"variation": 1, "weight": 100_000 - SHARE_BP * 10},
                ]
            }
        },
        "targets": [],
        "rules": [],
        "prerequisites": [],
    }
    path = folder / "launchdarkly-flags.json"
    path.write_text(json.dumps({"flags": {FLAG: flag}}), encoding="utf-8")
    # The file data source replaces streaming; events and diagnostics are off: no network.
    config = Config(
        "sdk-offline-bench",
        update_processor_class=Files.new_data_source(paths=[str(path)]),
        send_events=False,
        diagnostic_opt_out=True,
    )
    client = ldclient.LDClient(config=config, start_wait=5)
    if not client.is_initialized():
        client.close()
        raise Unavailable("file data source did not initialise")
    return Contender(
        "LaunchDarkly (Context + variation)",
        lambda key: client.variation(FLAG, Context.builder(key).build(), False),
        close=client.close,
    )


def main() -> None:
    """Run every contender on the same keys; print and save the comparison."""
    args = parse_args(__doc__.splitlines()[0], n=200_000, repeats=5)
    logging.getLogger("ldclient").setLevel(logging.WARNING)
    keys = [f"user-{i:07d}" for i in range(args.n)]
    with tempfile.TemporaryDirectory(prefix="policy-canary-bench-") as tmp:
        folder = Path(tmp)
        route, uncounted, floor, store = _policy_canary(folder)
        contenders = [route, uncounted, floor]
        for name, make in (
            ("GrowthBook", _growthbook),
            ("Unleash", lambda: _unleash(folder)),
            ("LaunchDarkly", lambda: _launchdarkly(folder)),
        ):
            try:
                contenders.append(make())
            except Unavailable as why:
                contenders.append(Contender(name, None, status=f"unavailable: {why}"))
        for contender in contenders:
            assign = contender.assign
            if assign is None:
                continue
            for key in keys[:1000]:  # warm caches and lazy set-up paths
                assign(key)

            def run(assign: Callable[[str], Any] = assign) -> int:
                for key in keys:
                    assign(key)
                return len(keys)

            contender.runs_us = per_call_us(run, args.repeats)
            is_candidate = contender.is_candidate
            contender.realized = sum(is_candidate(assign(key)) for key in keys) / len(keys)
            contender.close()
        traced = _traced(store)
        for contender, span in traced:
            assign = contender.assign
            if assign is None:
                continue

            def run_traced(
                assign: Callable[[str], Any] = assign,
                span: Callable[[], AbstractContextManager[Any]] = span,
            ) -> int:
                with span():
                    for key in keys:
                        assign(key)
                return len(keys)

            contender.runs_us = per_call_us(run_traced, args.repeats)
            contender.close()
        contenders += [contender for contender, _ in traced]
        store.close()

    route_us = median(route.runs_us)
    sdks = [c for c in contenders[2:] if c.runs_us and not c.name.startswith("route()")]
    fastest = min(sdks, key=lambda c: median(c.runs_us)) if sdks else None
    speedup = median(fastest.runs_us) / route_us if fastest else None
    rows = []
    results = []
    for c in contenders:
        med = median(c.runs_us) if c.runs_us else None
        ratio = med / route_us if med is not None else None
        rows.append(
            [
                c.name,
                f"{med:.3f}" if med is not None else "-",
                f"{min(c.runs_us):.3f}..{max(c.runs_us):.3f}" if c.runs_us else "-",
                f"{c.realized:.4f}" if c.realized is not None else "-",
                f"{ratio:.2f}x" if ratio is not None else "-",
                c.status,
            ]
        )
        results.append(
            {
                "name": c.name,
                "status": c.status,
                "median_us": med,
                "runs_us": c.runs_us,
                "realized_share": c.realized,
                "ratio_to_route": ratio,
            }
        )
    print_table(
        f"route(): {args.n:,} distinct keys at a {SHARE_BP / 100:g}% share, "
        f"median of {args.repeats} runs (us per call)",
        ["contender", "median us", "runs min..max", "realized share", "vs route()", "status"],
        rows,
    )
    verdict = {
        "route_us": route_us,
        "route_target_us": TARGET_ROUTE_US,
        "route_within_target": route_us <= TARGET_ROUTE_US,
        "fastest_sdk": fastest.name if fastest else None,
        "speedup_vs_fastest_sdk": speedup,
        "speedup_target": TARGET_SPEEDUP,
        "speedup_within_target": speedup is not None and speedup >= TARGET_SPEEDUP,
    }
    print(
        f"route() {route_us:.3f} us (target <= {TARGET_ROUTE_US} us: "
        f"{'met' if verdict['route_within_target'] else 'MISSED'}); "
        + (
            f"{speedup:.1f}x faster than the fastest SDK, {fastest.name} "
            f"(target >= {TARGET_SPEEDUP:g}x: "
            f"{'met' if verdict['speedup_within_target'] else 'MISSED'})"
            if fastest and speedup
            else "no SDK could be timed"
        )
    )
    path = write_json(
        args.out,
        "bench_route",
        {
            "n": args.n,
            "repeats": args.repeats,
            "share_bp": SHARE_BP,
            "results": results,
            "verdict": verdict,
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
