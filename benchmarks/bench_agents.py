"""How many remote agents can one ``policy-canary serve`` replica carry?

Each agent here is a real ``Canary.connect`` (the remote SDK, default intervals): one event
stream held open, a poll of ``/api/v1/routing`` every second, and its events posted in
batches every half second. ``--procs`` client processes (default 4) hold the agents between
them, and each agent routes and records ``--rate`` requests a second (default 5). For each
count of agents (``--agents``, default 100,200), against a fresh ``serve`` process
(``--workers``, default 1) on PostgreSQL (or ``--backend sqlite``):

1. every agent connects and receives its routing table;
2. after a warm-up, for ``--seconds`` (default 20): the server's CPU (all its processes), its
   resident memory, and the events committed per second, counted in the store;
3. ``--rounds`` (default 5) rollouts started and rolled back through the library: the time
   from each commit until *every* agent's gate serves the change (its table's rollout id),
   p50 / p99 / max over all agents and changes; and until a bare reader of the stream (a
   thread of this process that does nothing else) receives it, which is the server's push
   without what the agents' own processes add;
4. the agents close (flushing their buffers); every event they recorded must be in the
   store, less the drops they counted (none expected).

The report gives the server's cores per 1,000 agents at this rate, and the marginal cost of
the agents added since the previous count (which leaves out what an idle server spends), so
the agents one core carries follow. The client processes share the box's cores with the
server: on the 2-core box they need about as much CPU as the server, which is why the
default stops at 200 agents; on a bigger machine, or with the clients elsewhere, pass larger
counts. Run:
``python benchmarks/bench_agents.py [--quick] [--agents 100,200] [--procs 4]
[--rate 5] [--workers 1] [--backend postgresql|sqlite]``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import func, select

from _common import RESULTS, pg_schema, print_table, write_json
from bench_server import PG_URL, POLICY, _cpu_seconds, _workers, seed, serving
from policy_canary import Canary
from policy_canary.controller import Rollouts
from policy_canary.store import Store
from policy_canary.store.schema import events

#: The driver's step: each agent routes and records ``rate x STEP`` requests per step.
STEP = 0.05


def _rss_mb(pid: int) -> float:
    """Resident memory of one process (Linux /proc), in MB; 0 where unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


# --- one client process: its share of the agents ---------------------------------------------


def client(url: str, token: str, agents: int, rate: float, name: str) -> None:
    """Hold ``agents`` remote canaries; route and record; report each change every gate saw.

    Prints JSON lines: ``ready``; for each routing change, once every gate here serves it,
    ``{"rollout": id or null, "seen": [monotonic times]}``; after ``stop`` on stdin, the
    totals. CLOCK_MONOTONIC is one clock for every process on Linux, so the parent can
    subtract its own commit time.
    """
    canaries = [Canary.connect(url, token=token) for _ in range(agents)]
    gates = [canary.gate(POLICY) for canary in canaries]
    stop = threading.Event()
    recorded = 0

    def drive() -> None:
        nonlocal recorded
        owed, n, due = 0.0, 0, time.monotonic()
        while not stop.is_set():
            owed += rate * STEP
            for _ in range(int(owed)):
                for i, gate in enumerate(gates):
                    with gate.route(f"{name}-{i}-{n}") as decision:
                        decision.record(latency_ms=812.5, error=False, quality=0.8)
                n += 1
                recorded += len(gates)
            owed -= int(owed)
            due += STEP
            stop.wait(max(0.0, due - time.monotonic()))

    def watch() -> None:
        serving = [gate.table.rollout_id for gate in gates]
        pending: dict[str | None, list[float | None]] = {}
        while not stop.is_set():
            now = time.monotonic()
            for i, gate in enumerate(gates):
                rollout = gate.table.rollout_id
                if rollout != serving[i]:
                    serving[i] = rollout
                    pending.setdefault(rollout, [None] * len(gates))[i] = now
            for rollout, seen in list(pending.items()):
                if all(t is not None for t in seen):
                    _emit({"rollout": rollout, "seen": seen})
                    del pending[rollout]
            time.sleep(0.001)

    threads = [threading.Thread(target=f, daemon=True) for f in (drive, watch)]
    for thread in threads:
        thread.start()
    _emit({"ready": agents})
    sys.stdin.readline()  # "stop"
    stop.set()
    for thread in threads:
        thread.join()
    dropped = 0
    for canary, gate in zip(canaries, gates, strict=True):
        canary.close()
        dropped += gate.status().dropped_events
    _emit({"recorded": recorded, "dropped": dropped, "cpu_s": time.process_time()})


# --- the parent: one server, the clients, the measurements ----------------------------------


class Clients:
    """The client processes and the messages they print, read by one thread each."""

    def __init__(self, url: str, token: str, agents: int, procs: int, rate: float) -> None:
        shares = [agents // procs + (i < agents % procs) for i in range(procs)]
        command = [sys.executable, __file__, "--client", url, token]
        self.procs = [
            subprocess.Popen(
                [*command, str(n), str(rate), f"c{i}"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for i, n in enumerate(shares)
            if n
        ]
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Condition()
        for proc in self.procs:
            assert proc.stdout is not None
            threading.Thread(target=self._read, args=(proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            with self._lock:
                self.messages.append(json.loads(line))
                self._lock.notify_all()

    def wait(self, key: str, count: int, timeout: float, value: Any = ...) -> list[dict[str, Any]]:
        """The first ``count`` messages with ``key`` (equal to ``value`` if given)."""

        def found() -> list[dict[str, Any]]:
            return [m for m in self.messages if key in m and (value is ... or m[key] == value)]

        deadline = time.monotonic() + timeout
        with self._lock:
            while len(found()) < count:
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    raise SystemExit(f"the agents did not all report {key!r} in {timeout:.0f} s")
                self._lock.wait(0.5)
            return found()[:count]

    def stop(self) -> list[dict[str, Any]]:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("stop\n")
            proc.stdin.flush()
        totals = self.wait("recorded", len(self.procs), timeout=120)
        for proc in self.procs:
            proc.wait(timeout=60)
        return totals


def _stored(url: str) -> int:
    store = Store.open(url)
    with store.read() as conn:
        count = int(conn.execute(select(func.count()).select_from(events)).scalar_one())
    store.close()
    return count


def _percentile(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def bare_stream(host: str, port: int, token: str) -> list[tuple[int, float]]:
    """One raw ``/api/v1/stream`` reader on a thread of its own: (epoch, monotonic) per frame.

    It does nothing but read, so the time it sees a change is the server's push, apart from
    what the agents' own processes add.
    """
    seen: list[tuple[int, float]] = []
    sock = socket.create_connection((host, port))
    sock.sendall(f"GET /api/v1/stream HTTP/1.1\r\nHost: {host}\r\n"
                 f"Authorization: Bearer {token}\r\n\r\n".encode())  # fmt: skip

    def read() -> None:
        with sock, sock.makefile("rb") as lines:
            for line in lines:
                if line.startswith(b"id: "):
                    seen.append((int(line[4:]), time.monotonic()))

    threading.Thread(target=read, daemon=True).start()
    return seen


def _pushed(seen: list[tuple[int, float]], after: int, since: float) -> tuple[int, float]:
    """The first frame of an epoch past ``after`` read at or after ``since`` (waits 30 s)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for epoch, at in list(seen):
            if epoch > after and at >= since:
                return epoch, at
        time.sleep(0.001)
    raise SystemExit("the bare stream reader never saw the change")


def one_level(url: str, agents: int, args: argparse.Namespace) -> dict[str, Any]:
    token, _, _ = seed(url)
    with serving(url, args.workers) as (host, port, pid):
        server = f"http://{host}:{port}"
        clients = Clients(server, token, agents, min(args.procs, agents), args.rate)
        try:
            clients.wait("ready", len(clients.procs), timeout=300)
            time.sleep(args.warmup)
            workers = sorted({pid, *_workers(pid)})
            cpu0, stored0, t0 = sum(map(_cpu_seconds, workers)), _stored(url), time.monotonic()
            time.sleep(args.seconds)
            cpu1, stored1, t1 = sum(map(_cpu_seconds, workers)), _stored(url), time.monotonic()
            rss = sum(map(_rss_mb, workers))
            admin = Store.open(url)
            rollouts = Rollouts(admin)
            delays: list[float] = []
            bare = bare_stream(host, port, token)
            bare_ms: list[float] = []
            epoch = _pushed(bare, -1, 0.0)[0]  # the frame sent on connecting
            slowest: list[float] = []  # per change, its last agent
            for i in range(args.rounds):
                for change in ("start", "rollback"):
                    if change == "start":
                        row = rollouts.start(POLICY, candidate="v2", actor="bench",
                                             reason="bench", force=True)  # fmt: skip
                        rollout: str | None = row.id
                    else:
                        rollouts.rollback(POLICY, reason=f"round {i}", actor="bench")
                        rollout = None
                    committed = time.monotonic()
                    before = len([m for m in clients.messages if "rollout" in m])
                    seen = clients.wait("rollout", before + len(clients.procs), 60)[before:]
                    if any(m["rollout"] != rollout for m in seen):
                        raise SystemExit(f"the agents saw {seen[0]['rollout']}, not {rollout}")
                    change_ms = [(t - committed) * 1000 for m in seen for t in m["seen"]]
                    slowest.append(max(change_ms))
                    epoch, arrived = _pushed(bare, epoch, committed)
                    bare_ms.append((arrived - committed) * 1000)
                    delays += change_ms
            admin.close()
        finally:
            totals = clients.stop()
        stored_end = _stored(url)
    recorded = sum(m["recorded"] for m in totals)
    dropped = sum(m["dropped"] for m in totals)
    cores = (cpu1 - cpu0) / (t1 - t0)
    ordered = sorted(delays)
    return {
        "agents": agents, "rate": args.rate, "workers": args.workers,
        "server_cores": cores, "cores_per_1000_agents": cores * 1000 / agents,
        "agents_per_core": agents / cores if cores > 0 else None,
        "server_rss_mb": rss, "events_per_s": (stored1 - stored0) / (t1 - t0),
        "expected_events_per_s": agents * args.rate,
        "propagation_p50_ms": statistics.median(ordered), "propagation_p99_ms":
        _percentile(ordered, 0.99), "propagation_max_ms": ordered[-1],
        "propagation_samples": len(ordered), "slowest_agent_per_change_ms": slowest,
        "bare_stream_ms": bare_ms, "bare_stream_p50_ms": statistics.median(bare_ms),
        "bare_stream_max_ms": max(bare_ms),
        "recorded": recorded, "dropped": dropped,
        "stored": stored_end, "client_cpu_s": sum(m["cpu_s"] for m in totals),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (the smoke test)")
    parser.add_argument("--agents", default="100,200", help="agent counts (default 100,200)")
    parser.add_argument("--procs", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--rate", type=float, default=5.0, help="requests/s per agent (5)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds (20)")
    parser.add_argument("--rounds", type=int, default=5, help="rollouts started and rolled back")
    parser.add_argument("--workers", type=int, default=1, help="serve --workers (default 1)")
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    parser.add_argument("--client", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        url, token, agents, rate, name = args.client
        client(url, token, int(agents), float(rate), name)
        return
    if args.quick:
        args.agents, args.procs, args.seconds, args.rounds = "4", 2, 1.0, 1
    args.warmup = 1.0 if args.quick else 5.0
    counts = [int(x) for x in args.agents.split(",")]
    load_before = os.getloadavg()
    runs = []
    for agents in counts:
        with ExitStack() as stack:
            if args.backend == "sqlite":
                url = f"sqlite:///{stack.enter_context(tempfile.TemporaryDirectory())}/a.db"
            else:
                url, problem = stack.enter_context(pg_schema(PG_URL))
                if url is None:
                    raise SystemExit(f"PostgreSQL unreachable: {problem}")
            runs.append(one_level(url, agents, args))
    for before, run in zip([None, *runs[:-1]], runs, strict=True):
        added = run["agents"] - (before["agents"] if before else 0)
        extra = run["server_cores"] - (before["server_cores"] if before else 0)
        run["marginal_cores_per_1000_agents"] = extra * 1000 / added if before else None
    report(runs, args)
    payload = {"backend": args.backend, "runs": runs, "load_before": load_before,
               "load_after": os.getloadavg(), "at": datetime.now(UTC).isoformat()}  # fmt: skip
    print(f"results: {write_json(args.out, 'bench_agents', payload)}")


def report(runs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print_table(
        f"remote agents on one serve replica ({args.backend}, --workers {args.workers}, "
        f"{args.rate:g} requests/s per agent)",
        ["agents", "server cores", "cores / 1,000 agents", "added: cores / 1,000",
         "agents / core", "RSS", "events/s (expected)",
         "change to every agent p50 / p99 / max", "bare stream p50 / max", "lost"],
        [
            (f"{r['agents']:,}", f"{r['server_cores']:.2f}", f"{r['cores_per_1000_agents']:.2f}",
             "-" if r["marginal_cores_per_1000_agents"] is None
             else f"{r['marginal_cores_per_1000_agents']:.2f}",
             f"{r['agents_per_core']:,.0f}" if r["agents_per_core"] else "-",
             f"{r['server_rss_mb']:.0f} MB",
             f"{r['events_per_s']:,.0f} ({r['expected_events_per_s']:,.0f})",
             f"{r['propagation_p50_ms']:.0f} / {r['propagation_p99_ms']:.0f} / "
             f"{r['propagation_max_ms']:.0f} ms",
             f"{r['bare_stream_p50_ms']:.0f} / {r['bare_stream_max_ms']:.0f} ms",
             f"{r['recorded'] - r['dropped'] - r['stored']:,}")
            for r in runs
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
