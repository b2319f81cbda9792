"""An agent process on a test host: route() in a loop, record some outcomes, report as JSON.

``python proc_agent.py CONFIG_JSON``; CONFIG has ``name``, ``policy``, ``lifetime``, and
either ``db_url`` (direct: ``Canary.open``) or ``urls`` plus ``token`` (remote:
``Canary.connect``), with optional ``buffer_size``, ``record_every``, ``stale_after``.

Reports on stdout, one JSON object a line:
- ``view``: the first route() answer of a new (rollout, stage, share), with its wall time;
- ``status`` every 50 ms: ``gate.status().stale``, buffered, dropped and written counts;
- ``final`` after close(): how many outcomes it recorded, and the pipeline's counters.
It stops by itself after ``lifetime`` seconds, or on SIGTERM / a ``{"cmd": "stop"}`` line.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from datetime import timedelta
from typing import Any

from policy_canary import Canary


def say(kind: str, **fields: Any) -> None:
    print(json.dumps({"kind": kind, "at": time.time(), **fields}), flush=True)


def main(config: dict[str, Any]) -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def commands() -> None:
        for line in sys.stdin:
            if json.loads(line).get("cmd") == "stop":
                stop.set()

    threading.Thread(target=commands, daemon=True).start()
    common: dict[str, Any] = {
        "refresh_interval": 0.2,
        "flush_interval": 0.1,
        "buffer_size": int(config.get("buffer_size", 100_000)),
        "stale_after": timedelta(seconds=float(config.get("stale_after", 1.0))),
    }
    if "db_url" in config:
        canary = Canary.open(config["db_url"], migrate=False, **common)
    else:
        canary = Canary.connect(config["urls"], token=config["token"], timeout=1.0, **common)
    gate = canary.gate(config["policy"])
    record_every = int(config.get("record_every", 10))
    deadline = time.monotonic() + float(config["lifetime"])
    say("started", name=config["name"])
    seen: tuple[Any, ...] | None = None
    recorded = 0
    n = 0
    next_status = 0.0
    while not stop.is_set() and time.monotonic() < deadline:
        decision = gate.route(f"user-{n % 5000}")
        view = (decision.rollout_id, decision.stage, decision.traffic_bp)
        if view != seen:
            say("view", rollout=view[0], stage=view[1], traffic_bp=view[2])
            seen = view
        if n % record_every == 0:
            decision.record(latency_ms=20.0 + n % 7, error=False)
            recorded += 1
        n += 1
        if time.monotonic() >= next_status:
            status, stats = gate.status(), canary.stats()
            say(
                "status",
                stale=status.stale,
                error=status.last_error,
                buffered=stats.buffered,
                dropped=stats.dropped,
                written=stats.written,
                recorded=recorded,
                prefix=decision.decision_id.rsplit("-", 1)[0],
            )
            next_status = time.monotonic() + 0.05
        time.sleep(0.001)
    canary.close()
    stats = canary.stats()
    say(
        "final",
        recorded=recorded,
        routed=n,
        written=stats.written,
        buffered=stats.buffered,
        dropped=stats.dropped,
        dropped_full=stats.dropped_full,
        prefix=decision.decision_id.rsplit("-", 1)[0],
    )


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
