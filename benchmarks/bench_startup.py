"""What does an agent's cold start pay for policy-canary, next to feature-flag SDKs?

Each contender runs in a fresh interpreter, in paired rounds (every contender once per round,
in a shuffled order, so a busy neighbour on the box hurts all of them alike). The child
measures its own CPU time (``time.process_time``) and wall time around one statement,
excluding the interpreter's own start-up, which every contender shares:

- (a) ``from policy_canary import Canary``: the serving path only;
- (b) (a) plus ``Canary.open(<sqlite file>).gate(name)``: a store opened, its schema checked,
  the routing table loaded, the background threads started;
- ``import growthbook``, ``import ldclient`` and ``import UnleashClient`` (the ``bench`` extra);
  a missing SDK is reported as such rather than timed.

Targets: (a) CPU at most 1.0x ``import growthbook``'s; (b) at most 1.5x.
Run: ``python benchmarks/bench_startup.py [--repeats 15]`` (``--n`` is unused).
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import tempfile

from _common import median, parse_args, print_table, write_json
from policy_canary.registry import Registry
from policy_canary.store import Store

TARGET_IMPORT = 1.0
TARGET_OPEN = 1.5
POLICY = "support-agent"

_CHILD = """\
import json, sys, time
c0, w0 = time.process_time(), time.perf_counter()
{statement}
c1, w1 = time.process_time(), time.perf_counter()
print(json.dumps({{"cpu": c1 - c0, "wall": w1 - w0, "modules": len(sys.modules)}}))
"""


def contenders(db_url: str) -> dict[str, str]:
    """Name -> the statement timed in a fresh interpreter."""
    return {
        "(a) from policy_canary import Canary": "from policy_canary import Canary",
        "(b) (a) + Canary.open(sqlite).gate()": (
            "from policy_canary import Canary\n"
            f"canary = Canary.open({db_url!r})\n"
            f"canary.gate({POLICY!r})"
        ),
        "import growthbook": "import growthbook",
        "import ldclient": "import ldclient",
        "import UnleashClient": "import UnleashClient",
    }


def run_child(statement: str) -> dict[str, float] | str:
    """One fresh interpreter; its measurement, or why it could not run."""
    done = subprocess.run(
        [sys.executable, "-c", _CHILD.format(statement=statement)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["failed"])[-1]
        return f"unavailable: {last[:80]}"
    measured: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return measured


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], n=0, repeats=15)
    with tempfile.TemporaryDirectory() as folder:
        db_url = f"sqlite:///{folder}/store.db"
        store = Store.open(db_url)
        Registry(store).register(POLICY, {"prompt": "v1"}, author="bench", message="v1")
        store.close()
        cases = contenders(db_url)
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        missing: dict[str, str] = {}
        rng = random.Random(20261201)
        for _ in range(args.repeats):
            order = list(cases)
            rng.shuffle(order)
            for name in order:
                if name in missing:
                    continue
                measured = run_child(cases[name])
                if isinstance(measured, str):
                    missing[name] = measured
                else:
                    samples[name].append(measured)
    reference = samples["import growthbook"]
    ref_cpu = median([s["cpu"] for s in reference]) if reference else None
    results = []
    for name in cases:
        if name in missing:
            results.append({"name": name, "status": missing[name]})
            continue
        cpu = median([s["cpu"] for s in samples[name]])
        results.append(
            {
                "name": name,
                "status": "ok",
                "runs": len(samples[name]),
                "cpu_ms": round(cpu * 1e3, 1),
                "wall_ms": round(median([s["wall"] for s in samples[name]]) * 1e3, 1),
                "modules": int(median([s["modules"] for s in samples[name]])),
                "cpu_vs_growthbook": round(cpu / ref_cpu, 2) if ref_cpu else None,
            }
        )
    rows = {r["name"]: r for r in results}
    a, b = (
        rows["(a) from policy_canary import Canary"],
        rows["(b) (a) + Canary.open(sqlite).gate()"],
    )
    verdict = {
        "import_vs_growthbook": a.get("cpu_vs_growthbook"),
        "open_vs_growthbook": b.get("cpu_vs_growthbook"),
        "import_target_met": ref_cpu is not None and a["cpu_vs_growthbook"] <= TARGET_IMPORT,
        "open_target_met": ref_cpu is not None and b["cpu_vs_growthbook"] <= TARGET_OPEN,
    }
    print_table(
        f"Cold start, median of {args.repeats} paired rounds in fresh interpreters",
        ["contender", "CPU ms", "wall ms", "modules", "CPU vs growthbook"],
        [
            [r["name"], r["cpu_ms"], r["wall_ms"], r["modules"], f"{r['cpu_vs_growthbook']}x"]
            if r["status"] == "ok"
            else [r["name"], r["status"], "", "", ""]
            for r in results
        ],
    )
    print(
        f"targets: (a) <= {TARGET_IMPORT}x -> {verdict['import_vs_growthbook']}x, "
        f"(b) <= {TARGET_OPEN}x -> {verdict['open_vs_growthbook']}x"
    )
    path = write_json(
        args.out,
        "bench_startup",
        {"repeats": args.repeats, "results": results, "verdict": verdict},
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
