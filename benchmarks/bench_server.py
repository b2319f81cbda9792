"""How fast is ``policy-canary serve``, measured from separate processes on loopback?

Side by side in one run, each against a real ``policy-canary serve`` process (bearer-token
auth on, access log off, ``--workers`` as given, default 1):

1. OFREP single-flag evaluations: ``wrk`` (Debian's package) from its own process, a fresh
   ``targetingKey`` per request; evaluations/s and p50/p99 latency, at 32 connections and
   at 8. The two rows are the same server at two load levels, not a choice of the better
   one: wrk's two threads and the server's workers share the box's two cores, so at 32
   connections a request's tail is mostly time spent waiting for a core (the server is
   saturated; p99 then grows with the queue, i.e. with the connection count), while at 8
   the queue is short and the tail shows more of what the server itself adds. What it adds
   in-process (no HTTP): the garbage collector's full passes, which walked the ~140,000
   objects of start-up (now frozen out of them by ``serve``) and the up to 100,000 open
   OFREP decisions kept for their events (still walked): the longest pause in 120,000
   evaluations fell from 198 ms to 83 ms on a box at load 3 (2 cores).
2. Event ingestion, on SQLite and on PostgreSQL: ``wrk`` with a Lua script posting batches of
   1,000 remote-SDK events (the full decision row, validated like ``record()``, committed
   before the answer) over 4 connections per worker; events/s, and the store is counted afterwards:
   every acknowledged event must be there (``stored >= acked``; a batch in flight when wrk
   stops may land without being counted as acknowledged).
3. OTLP ingest: a separate Python process exports protobuf batches (``POST /v1/traces``,
   the OTLP/HTTP encoding OpenTelemetry's exporter sends) of agent traces, each request an
   ``invoke_agent`` root with its ``feature_flag.evaluation`` event, two ``chat`` spans with
   token usage and one ``execute_tool`` span; spans/s accepted, and every request's event is
   counted in the store afterwards.
4. Routing polls answered 304 (``GET /api/v1/routing`` with the ETag held, what every remote
   agent sends each second): ``wrk`` over 8 connections, side by side on the same server,
   through the fast path and through the full FastAPI route (an extra query parameter,
   which the route ignores, makes the fast path hand the poll on); polls/s and the
   server's CPU per poll, and their ratio.
5. Rollback propagation over the stream, on SQLite and on PostgreSQL: this process holds a
   remote canary (``Canary.connect``) subscribed to the server; a rollout is started and
   rolled back through the library (``Rollouts``, a separate store connection); the time
   from the rollback's commit to the first ``route()`` whose decision carries no rollout.

Targets on the 2-core box: >= 5,000 OFREP evaluations/s with p99 <= 10 ms; >= 50,000
events/s; >= 30,000 OTLP spans/s; propagation p99 <= 250 ms. The report gives each result
as a ratio to its target and the machine's load average before and after, since wrk, the
server and everything else on the box share its cores.
Run: ``python benchmarks/bench_server.py [--quick] [--workers N]``.
Needs ``wrk`` on PATH (``apt-get install -y wrk``) and PostgreSQL for its parts
(``POLICY_CANARY_TEST_PG``, default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``);
a missing one is reported as such, not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from _common import RESULTS, pg_schema, print_table, write_json
from policy_canary import Canary
from policy_canary.controller import Rollouts
from policy_canary.registry import Registry
from policy_canary.store import Store
from policy_canary.store.schema import events
from policy_canary.tokens import Tokens

POLICY = "support-agent"
CLI = str(Path(sys.executable).parent / "policy-canary")
PG_URL = os.environ.get(
    "POLICY_CANARY_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
TARGETS = {"ofrep_rps": 5_000, "ofrep_p99_ms": 10.0, "events_per_s": 50_000, "prop_p99_ms": 250,
           "otlp_spans_per_s": 30_000}  # fmt: skip

_WRK_LUA = """\
local n = 0
request = function()
  n = n + 1
  local body = '{"context":{"targetingKey":"user-' .. n .. '-' .. math.random(1e9) .. '"}}'
  return wrk.format("POST", nil, {["Content-Type"] = "application/json",
                                  ["Authorization"] = "Bearer %s"}, body)
end
"""

_EVENTS_LUA = """\
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
local n = 0
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %s"}
request = function()
  n = n + 1
  local base = "%s" .. tid .. "-" .. n .. "-"
  local parts = {}
  for i = 1, %d do
    parts[i] = '{"decision_id":"' .. base .. i .. '","policy":"%s","arm":"stable",'
      .. '"version_digest":"%s","traffic_bp":0,"scheme":1,"sticky":true,'
      .. '"at":"2026-01-01T00:00:00+00:00","latency_ms":12.5,"error":false,"quality":0.8}'
  end
  return wrk.format("POST", nil, headers, '{"events":[' .. table.concat(parts, ",") .. ']}')
end
"""
BATCH = 1_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def seed(url: str) -> tuple[str, str, str]:
    """A policy with v1 stable and v2; an agent token. Returns (agent secret, v1, v2)."""
    store = Store.open(url)
    registry = Registry(store)
    v1 = registry.register(POLICY, {"prompt": "You are helpful.", "tools": ["search"]},
                           author="bench").version  # fmt: skip
    v2 = registry.register(POLICY, {"prompt": "You are concise.", "tools": ["search"]},
                           author="bench").version  # fmt: skip
    secret = Tokens(store).create("bench-agent", role="agent", actor="bench").secret
    store.close()
    return secret, v1.id, v2.id


@contextmanager
def serving(url: str, workers: int = 1) -> Any:
    """A ``policy-canary serve`` process on a free port; yields (host, port, pid)."""
    port = free_port()
    proc = subprocess.Popen([CLI, "serve", "--db", url, "--port", str(port), "--workers",
                             str(workers)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).is_success:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("policy-canary serve did not start")
        time.sleep(0.1)
    while _listening(port) < workers and sys.platform.startswith("linux"):
        # Every worker listens on its own socket (server/_listen.py): until the last one
        # does, the kernel gives every connection to those that already do.
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"not every one of the {workers} workers started listening")
        time.sleep(0.1)
    try:
        yield "127.0.0.1", port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _listening(port: int) -> int:
    """How many IPv4 sockets listen on ``port`` (Linux's /proc/net/tcp; state 0A)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        count += state == "0A" and int(local.split(":")[1], 16) == port
    return count


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, script: str, *, connections: int, seconds: int) -> dict[str, Any]:
    """Run wrk with a Lua script; requests/s, p50/p99 (ms), completed and non-2xx requests."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as file:
        file.write(script)
    try:
        done = subprocess.run(
            ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s",
             "--latency", "-s", file.name, url],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    finally:
        os.unlink(file.name)
    out = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    pct = {p: _ms(v, u) for p, v, u in re.findall(r"\s(50|99)%\s+([\d.]+)(us|ms|s)", out)}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(non2xx.group(1)) if non2xx else 0
    return {"rps": rps, "p50_ms": pct["50"], "p99_ms": pct["99"], "requests": total,
            "errors": errors}  # fmt: skip


def bench_ofrep(
    host: str, port: int, token: str, seconds: int, connections: int = 32
) -> dict[str, Any]:
    """wrk: evaluations/s and latency percentiles over ``connections`` connections."""
    if shutil.which("wrk") is None:
        return {"skipped": "wrk is not installed (apt-get install -y wrk)"}
    url = f"http://{host}:{port}/ofrep/v1/evaluate/flags/{POLICY}"
    return wrk(url, _WRK_LUA % token, connections=connections, seconds=seconds)


_POLL_LUA = """\
wrk.method = "GET"
wrk.headers["Authorization"] = "Bearer %s"
wrk.headers["If-None-Match"] = '%s'
"""


def bench_poll(host: str, port: int, token: str, seconds: int, pid: int) -> dict[str, Any]:
    """wrk: 304 polls through the fast path and through the full route, side by side."""
    if shutil.which("wrk") is None:
        return {"skipped": "wrk is not installed (apt-get install -y wrk)"}
    base = f"http://{host}:{port}/api/v1/routing"
    auth = {"Authorization": f"Bearer {token}"}
    etag = httpx.get(base, headers=auth).headers["etag"]
    workers = _workers(pid)
    out: dict[str, Any] = {}
    for name, url in (("fast", base), ("full", f"{base}?bench=full")):
        answer = httpx.get(url, headers={**auth, "If-None-Match": etag})
        assert answer.status_code == 304, (url, answer.status_code)
        before = sum(_cpu_seconds(w) for w in workers)
        run = wrk(url, _POLL_LUA % (token, etag), connections=8, seconds=seconds)
        cpu = sum(_cpu_seconds(w) for w in workers) - before
        out[name] = {**run, "cpu_us_per_poll": cpu / max(run["requests"], 1) * 1e6}
    out["cpu_ratio"] = out["full"]["cpu_us_per_poll"] / max(out["fast"]["cpu_us_per_poll"], 1e-9)
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (Linux /proc; 0 where unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _workers(pid: int) -> list[int]:
    """The processes that serve requests: uvicorn's worker children, else ``pid`` itself."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        # uvicorn's workers are spawned ("--multiprocessing-fork"), next to a resource tracker
        spawned = [c for c in children if b"-fork" in Path(f"/proc/{c}/cmdline").read_bytes()]
        workers = [int(c) for c in spawned]
    except OSError:
        workers = []
    return workers or [pid]


def bench_events(
    url: str, host: str, port: int, token: str, digest: str, seconds: int, pid: int
) -> dict[str, Any]:
    """wrk posting batches of 1,000 events over 4 connections per worker; then the store.

    Also the CPU seconds each worker process spent meanwhile. On Linux each worker listens
    on its own socket and the kernel assigns each connection to one by a hash of its
    addresses, so the split varies between runs: with 4 connections per worker all of them
    land on one of 2 workers once in 128 runs (with 4 in all, once in 8); the split says
    how the run went.
    """
    if shutil.which("wrk") is None:
        return {"skipped": "wrk is not installed (apt-get install -y wrk)"}
    prefix = uuid.uuid4().hex[:8] + "-"
    script = _EVENTS_LUA % (token, prefix, BATCH, POLICY, digest)
    workers = _workers(pid)
    cpu_before = [_cpu_seconds(w) for w in workers]
    connections = 4 * len(workers)
    run = wrk(f"http://{host}:{port}/api/v1/events", script, connections=connections,
              seconds=seconds)  # fmt: skip
    cpu = [round(_cpu_seconds(w) - b, 2) for w, b in zip(workers, cpu_before, strict=True)]
    acked = (run["requests"] - run["errors"]) * BATCH
    store = Store.open(url)
    with store.read() as conn:
        stored = conn.execute(
            select(func.count()).select_from(events).where(events.c.decision_id.like(f"{prefix}%"))
        ).scalar_one()
    store.close()
    return {"events_per_s": run["rps"] * BATCH, "batch_p50_ms": run["p50_ms"],
            "batch_p99_ms": run["p99_ms"], "acked": acked, "stored": int(stored),
            "errors": run["errors"], "worker_cpu_s": cpu, "connections": connections}  # fmt: skip


_OTLP_POSTER = f"""\
import http.client, json, os, sys, threading, time
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest, ExportTraceServiceResponse)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
host, port, token, batches, requests, conns, prefix = sys.argv[1:8]
batches, requests, conns = int(batches), int(requests), int(conns)
def kv(key, value):
    v = AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)
    return KeyValue(key=key, value=v)
t0 = 1_700_000_000_000_000_000
def request(spans, key):
    trace, root = os.urandom(16), os.urandom(8)
    agent = spans.add(trace_id=trace, span_id=root, name="invoke_agent support-agent",
                      kind=Span.SPAN_KIND_INTERNAL, start_time_unix_nano=t0,
                      end_time_unix_nano=t0 + 840_000_000)
    agent.attributes.extend([kv("gen_ai.operation.name", "invoke_agent"),
                             kv("gen_ai.agent.name", "support-agent")])
    agent.events.add(name="feature_flag.evaluation", time_unix_nano=t0, attributes=[
        kv("feature_flag.key", "{POLICY}"), kv("feature_flag.result.variant", "v1"),
        kv("feature_flag.provider.name", "policy-canary"), kv("feature_flag.context.id", key)])
    for i, name in enumerate(("chat gpt-large", "execute_tool search", "chat gpt-large")):
        child = spans.add(trace_id=trace, span_id=os.urandom(8), parent_span_id=root,
                          name=name, kind=Span.SPAN_KIND_CLIENT,
                          start_time_unix_nano=t0 + i * 200_000_000,
                          end_time_unix_nano=t0 + (i + 1) * 200_000_000)
        if name.startswith("chat"):
            child.attributes.extend([kv("gen_ai.operation.name", "chat"),
                kv("gen_ai.request.model", "gpt-large"), kv("gen_ai.response.model", "gpt-large"),
                kv("gen_ai.usage.input_tokens", 812), kv("gen_ai.usage.output_tokens", 164)])
        else:
            child.attributes.extend([kv("gen_ai.operation.name", "execute_tool"),
                                     kv("gen_ai.tool.name", "search")])
def body(b):
    export = ExportTraceServiceRequest()
    scope = export.resource_spans.add().scope_spans.add()
    export.resource_spans[0].resource.attributes.append(kv("service.name", "support-agent"))
    scope.scope.name = "support-agent"
    for r in range(requests):
        request(scope.spans, f"{{prefix}}{{b}}-{{r}}")
    return export.SerializeToString()
bodies = [body(b) for b in range(batches)]
spans_per_body = 4 * requests
headers = {{"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {{token}}"}}
accepted, retries = [0] * conns, [0] * conns
def worker(k):
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    for b in range(k, batches, conns):
        while True:
            conn.request("POST", "/v1/traces", body=bodies[b], headers=headers)
            reply = conn.getresponse(); data = reply.read()
            if reply.status in (429, 503):  # what the OTLP exporter does: back off, retry
                retries[k] += 1; time.sleep(0.05); continue
            assert reply.status == 200, (reply.status, data[:200])
            partial = ExportTraceServiceResponse.FromString(data).partial_success
            assert partial.rejected_spans == 0, partial.error_message
            accepted[k] += spans_per_body
            break
threads = [threading.Thread(target=worker, args=(k,)) for k in range(conns)]
t0_ = time.perf_counter()
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({{"seconds": time.perf_counter() - t0_, "accepted": sum(accepted),
                  "retries": sum(retries), "bytes_per_body": len(bodies[0])}}))
"""


def bench_otlp(url: str, host: str, port: int, token: str, batches: int) -> dict[str, Any]:
    """A separate process exporting protobuf batches of 1,000 spans over 4 connections."""
    prefix = "otlp-" + uuid.uuid4().hex[:8] + "-"
    requests = 250  # 4 spans each: 1,000 spans per export, like the SDK's default batch
    done = subprocess.run(
        [sys.executable, "-c", _OTLP_POSTER, host, str(port), token, str(batches),
         str(requests), "4", prefix], capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(done.stdout.splitlines()[-1])
    deadline = time.monotonic() + 60
    store = Store.open(url)
    try:
        while True:  # the server's flusher writes every 0.5 s: wait (bounded) for the rows
            only_otlp = events.c.model == "gpt-large"  # only the OTLP requests set a model
            with store.read() as conn:
                query = select(func.count()).select_from(events).where(only_otlp)
                stored = int(conn.execute(query).scalar_one())
            if stored >= batches * requests or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        store.close()
    return {"spans_per_s": result["accepted"] / result["seconds"], "accepted": result["accepted"],
            "requests": batches * requests, "stored": stored, "retries": result["retries"],
            "bytes_per_export": result["bytes_per_body"]}  # fmt: skip


def bench_propagation(url: str, host: str, port: int, token: str, rounds: int) -> dict[str, Any]:
    """Rollback commit → the subscribed agent's route() carries no rollout; ms per round."""
    store = Store.open(url)
    rollouts = Rollouts(store)
    canary = Canary.connect(f"http://{host}:{port}", token=token, refresh_interval=30)
    gate = canary.gate(POLICY)
    samples = []
    try:
        for i in range(rounds):
            row = rollouts.start(POLICY, candidate="v2", actor="bench", reason="bench",
                                 force=True)  # fmt: skip
            _until(lambda rid=row.id: gate.route("u").rollout_id == rid)
            rollouts.rollback(POLICY, reason=f"round {i}", actor="bench")
            t0 = time.perf_counter()  # the rollback's transaction has committed
            _until(lambda: gate.route("u").rollout_id is None)
            samples.append((time.perf_counter() - t0) * 1000)
    finally:
        canary.close()
        store.close()
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {"p50_ms": statistics.median(samples), "p99_ms": p99, "max_ms": ordered[-1],
            "rounds": rounds}  # fmt: skip


def _until(check: Any, seconds: float = 30.0) -> None:
    deadline = time.perf_counter() + seconds
    while not check():
        if time.perf_counter() > deadline:
            raise SystemExit("the remote canary never saw the change")
        time.sleep(0.0002)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run (smoke test)")
    parser.add_argument("--workers", type=int, default=1, help="serve --workers (default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON results")
    args = parser.parse_args()
    seconds, batches, rounds = (1, 4, 3) if args.quick else (10, 200, 40)
    results: dict[str, Any] = {"quick": args.quick, "targets": TARGETS, "workers": args.workers,
                               "cores": os.cpu_count(), "load_before": os.getloadavg()}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/bench.db"
        token, v1, _ = seed(url)
        with serving(url, args.workers) as (host, port, pid):
            results["ofrep"] = bench_ofrep(host, port, token, seconds)
            results["ofrep_8"] = bench_ofrep(host, port, token, seconds, connections=8)
            results["events_sqlite"] = bench_events(url, host, port, token, v1, seconds, pid)
            results["poll"] = bench_poll(host, port, token, seconds, pid)
            results["otlp"] = bench_otlp(url, host, port, token, batches)
            results["propagation_sqlite"] = bench_propagation(url, host, port, token, rounds)
    with pg_schema(PG_URL) as (pg, problem):
        if pg is None:
            skipped = {"skipped": f"PostgreSQL unreachable: {problem}"}
            results["events_postgresql"] = results["propagation_postgresql"] = skipped
        else:
            token, v1, _ = seed(pg)
            with serving(pg, args.workers) as (host, port, pid):
                results["events_postgresql"] = bench_events(pg, host, port, token, v1, seconds,
                                                            pid)  # fmt: skip
                results["propagation_postgresql"] = bench_propagation(pg, host, port, token,
                                                                      rounds)  # fmt: skip
    results["load_after"] = os.getloadavg()
    results["ratios"] = ratios(results)
    report(results)
    path = write_json(args.out, "bench_server", {**results, "at": datetime.now(UTC).isoformat()})
    print(f"results: {path}")


def ratios(r: dict[str, Any]) -> dict[str, float | None]:
    """Each result against its target: above 1 is better than the target (latency inverted)."""

    def of(part: dict[str, Any], key: str) -> float | None:
        return None if "skipped" in part else float(part[key])

    def more(value: float | None, target: float) -> float | None:
        return None if value is None else value / target

    def less(value: float | None, target: float) -> float | None:
        return None if value is None else target / max(value, 1e-9)

    o, o8 = r["ofrep"], r["ofrep_8"]
    return {
        "ofrep_rps": more(of(o, "rps"), TARGETS["ofrep_rps"]),
        "ofrep_p99": less(of(o, "p99_ms"), TARGETS["ofrep_p99_ms"]),
        "ofrep_8_rps": more(of(o8, "rps"), TARGETS["ofrep_rps"]),
        "ofrep_8_p99": less(of(o8, "p99_ms"), TARGETS["ofrep_p99_ms"]),
        "otlp_spans": more(of(r["otlp"], "spans_per_s"), TARGETS["otlp_spans_per_s"]),
        "events_sqlite": more(of(r["events_sqlite"], "events_per_s"), TARGETS["events_per_s"]),
        "events_postgresql": more(
            of(r["events_postgresql"], "events_per_s"), TARGETS["events_per_s"]
        ),
        "prop_sqlite_p99": less(of(r["propagation_sqlite"], "p99_ms"), TARGETS["prop_p99_ms"]),
        "prop_postgresql_p99": less(
            of(r["propagation_postgresql"], "p99_ms"), TARGETS["prop_p99_ms"]
        ),
    }


def _cell(part: dict[str, Any], key: str, fmt: str) -> str:
    return part["skipped"] if "skipped" in part else format(part[key], fmt)


def _otlp_rows(r: dict[str, Any]) -> list[tuple[str, ...]]:
    t = r["otlp"]
    return [("OTLP protobuf, exports of 1,000 spans (4 conns)", f"{t['spans_per_s']:,.0f} spans/s",
             "", "", ">= 30,000/s", _ratio(r["ratios"]["otlp_spans"]))]  # fmt: skip


def _poll_rows(p: dict[str, Any]) -> list[tuple[str, ...]]:
    if "skipped" in p:
        return [("routing polls answered 304 (wrk, 8 conns)", p["skipped"], "", "", "", "")]
    return [(f"routing polls answered 304, {how} (wrk, 8 conns)",
             f"{p[name]['rps']:,.0f} polls/s, {p[name]['cpu_us_per_poll']:.0f} us CPU each",
             f"{p[name]['p50_ms']:.2f}", f"{p[name]['p99_ms']:.2f}", "",
             f"{p['cpu_ratio']:.1f}x less CPU" if name == "fast" else "")
            for name, how in (("fast", "fast path"), ("full", "full route"))]  # fmt: skip


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x" + ("" if value >= 1 else " (missed)")


def _ofrep_row(r: dict[str, Any], name: str, conns: int) -> tuple[str, ...]:
    o, q = r[name], r["ratios"]
    ratio = "" if q[f"{name}_rps"] is None else (
        f"{_ratio(q[f'{name}_rps'])} / p99 {_ratio(q[f'{name}_p99'])}")  # fmt: skip
    return (f"OFREP single flag (wrk, {conns} conns)", _cell(o, "rps", ",.0f") + " eval/s",
            _cell(o, "p50_ms", ".2f"), _cell(o, "p99_ms", ".2f"), ">= 5,000/s, p99 <= 10 ms",
            ratio)  # fmt: skip


def _conns(part: dict[str, Any]) -> str:
    return str(part.get("connections", "4 per worker"))


def report(r: dict[str, Any]) -> None:
    es, ep = r["events_sqlite"], r["events_postgresql"]
    ps, pp, q = r["propagation_sqlite"], r["propagation_postgresql"], r["ratios"]
    rows = [
        *(_ofrep_row(r, name, conns) for name, conns in (("ofrep", 32), ("ofrep_8", 8))),
        (f"events, batches of 1,000 (wrk, {_conns(es)} conns), SQLite",
         _cell(es, "events_per_s", ",.0f") + " events/s", _cell(es, "batch_p50_ms", ".1f"),
         _cell(es, "batch_p99_ms", ".1f"), ">= 50,000/s", _ratio(q["events_sqlite"])),
        (f"events, batches of 1,000 (wrk, {_conns(ep)} conns), PostgreSQL",
         _cell(ep, "events_per_s", ",.0f") + " events/s", _cell(ep, "batch_p50_ms", ".1f"),
         _cell(ep, "batch_p99_ms", ".1f"), ">= 50,000/s", _ratio(q["events_postgresql"])),
        *_otlp_rows(r),
        *_poll_rows(r["poll"]),
        ("rollback -> route() over SSE, SQLite", "", _cell(ps, "p50_ms", ".1f"),
         _cell(ps, "p99_ms", ".1f"), "p99 <= 250 ms", _ratio(q["prop_sqlite_p99"])),
        ("rollback -> route() over SSE, PostgreSQL", "", _cell(pp, "p50_ms", ".1f"),
         _cell(pp, "p99_ms", ".1f"), "p99 <= 250 ms", _ratio(q["prop_postgresql_p99"])),
    ]  # fmt: skip
    before = ", ".join(f"{x:.1f}" for x in r["load_before"])
    after = ", ".join(f"{x:.1f}" for x in r["load_after"])
    print_table(
        f"policy-canary serve --workers {r['workers']} (loopback, separate processes; "
        f"{r['cores']} cores, load average {before} before, {after} after)",
        ["what", "throughput", "p50 ms", "p99 ms", "target", "vs target"],
        rows,
    )
    for name in ("events_sqlite", "events_postgresql"):
        part = r[name]
        if "skipped" not in part:
            split = " / ".join(f"{s:.1f}" for s in part["worker_cpu_s"])
            print(f"{name}: CPU seconds per worker process during the run: {split}")
        if "skipped" not in part and part["stored"] < part["acked"]:
            print(
                f"LOST EVENTS ({name}): {part['acked']:,} acknowledged, {part['stored']:,} stored"
            )


if __name__ == "__main__":
    main()
