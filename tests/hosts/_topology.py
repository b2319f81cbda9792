"""Test hosts as Linux network namespaces on one switch, and the processes they run.

The layout (one per test run; every name carries the run's pid and a random tag, so
parallel runs never collide):

    netns <run>-sw   bridge br0 10.200.1.1/24  + the PostgreSQL forwarder listening there
    netns <run>-h1   eth0 10.200.1.11/24  ─┐
    netns <run>-h2   eth0 10.200.1.12/24  ─┼─ veth pairs, switch ends enslaved to br0
    netns <run>-h3   eth0 10.200.1.13/24  ─┘

Nothing is added to the machine's own network namespace: no address, no route, no
forwarding. PostgreSQL listens on 127.0.0.1 only, so ``proc_forward.py`` (started in the
root namespace) opens its listening socket inside the switch namespace and its upstream
connections on the root loopback. Traffic therefore stays on addresses inside these
namespaces and on loopback. A host is partitioned by taking its own link down (``eth0`` in
its namespace): its packets go nowhere, the others' packets to it are dropped at the switch.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
SUBNET = "10.200.1"
SWITCH_ADDRESS = f"{SUBNET}.1"
PG_PORT = 5432
SERVER_PORT = 8600
#: How long any helper process may live before it stops by itself (seconds).
LIFETIME = 240
#: prctl(2): the signal a child gets when its parent dies.
PR_SET_PDEATHSIG = 1


class TopologyError(AssertionError):
    """The namespaces could not be built (not root, no iproute2, no netns support)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise TopologyError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


def _prune_dead_runs() -> None:
    """Delete namespaces left by earlier runs of this test whose process is gone."""
    listed = _ip("netns", "list", check=False).stdout.split()
    for name in listed:
        if not name.startswith("pcnet-"):
            continue
        pid = name.split("-")[1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _ip("netns", "del", name, check=False)


@dataclass
class Host:
    """One namespace with one address."""

    name: str
    netns: str
    address: str

    def link(self, up: bool) -> None:
        """Bring this host's own link up or down (down: the host is partitioned)."""
        _ip("-n", self.netns, "link", "set", "eth0", "up" if up else "down")

    def connections_to(self, address: str, port: int) -> int:
        """Established TCP connections from this host to ``address:port``."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.netns, "ss", "-Htn", "state", "established",
             "dst", f"{address}:{port}"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return len([line for line in done.stdout.splitlines() if line.strip()])


@dataclass
class Topology:
    """The switch and its hosts; :meth:`build` makes them, :meth:`destroy` removes them."""

    run: str
    switch: str
    hosts: dict[str, Host] = field(default_factory=dict)

    @classmethod
    def build(cls, count: int = 3) -> Topology:
        """Create the switch namespace and ``count`` host namespaces on it."""
        if os.geteuid() != 0:
            raise TopologyError("the multi-host test creates network namespaces: run it as root")
        if shutil.which("ip") is None or shutil.which("ss") is None:
            raise TopologyError(
                "the multi-host test needs `ip` and `ss` from iproute2 (apt-get install iproute2)"
            )
        _prune_dead_runs()
        run = f"pcnet-{os.getpid()}-{secrets.token_hex(3)}"
        topo = cls(run, f"{run}-sw")
        try:
            _ip("netns", "add", topo.switch)
            sw = ("-n", topo.switch)
            _ip(*sw, "link", "set", "lo", "up")
            _ip(*sw, "link", "add", "br0", "type", "bridge")
            _ip(*sw, "addr", "add", f"{SWITCH_ADDRESS}/24", "dev", "br0")
            _ip(*sw, "link", "set", "br0", "up")
            tag = run.rsplit("-", 1)[1]
            for i in range(1, count + 1):
                host = Host(f"h{i}", f"{run}-h{i}", f"{SUBNET}.{10 + i}")
                topo.hosts[host.name] = host
                _ip("netns", "add", host.netns)
                # Created inside the switch namespace, so no device ever appears in ours.
                port, nic = f"p{tag}{i}", f"n{tag}{i}"
                _ip(*sw, "link", "add", port, "type", "veth", "peer", "name", nic)
                _ip(*sw, "link", "set", nic, "netns", host.netns)
                _ip(*sw, "link", "set", port, "master", "br0")
                _ip(*sw, "link", "set", port, "up")
                hn = ("-n", host.netns)
                _ip(*hn, "link", "set", nic, "name", "eth0")
                _ip(*hn, "addr", "add", f"{host.address}/24", "dev", "eth0")
                _ip(*hn, "link", "set", "eth0", "up")
                _ip(*hn, "link", "set", "lo", "up")
        except BaseException:
            topo.destroy()
            raise
        return topo

    def destroy(self) -> None:
        """Remove every namespace of this run (their devices go with them)."""
        for host in self.hosts.values():
            _ip("netns", "del", host.netns, check=False)
        _ip("netns", "del", self.switch, check=False)

    def exists(self) -> list[str]:
        """The namespaces of this run that still exist."""
        listed = _ip("netns", "list", check=False).stdout.split()
        return [name for name in listed if name.startswith(self.run)]


def _die_with_parent() -> None:
    """In the child: SIGKILL it if the test process dies (even SIGKILLed) before it stops."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Proc:
    """A helper process; its stdout lines are JSON reports, collected by a reader thread."""

    def __init__(self, name: str, argv: list[str], *, netns: str | None) -> None:
        self.name = name
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)])}
        env["PYTHONUNBUFFERED"] = "1"
        prefix = ["ip", "netns", "exec", netns] if netns else []
        self.popen = subprocess.Popen(
            [*prefix, *argv],
            preexec_fn=_die_with_parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.reports: list[dict[str, Any]] = []
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.stderr: list[str] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()

    @classmethod
    def python(cls, name: str, script: str, *args: str, netns: str | None) -> Proc:
        """Run ``tests/hosts/<script>`` with this interpreter (the venv's)."""
        return cls(name, [sys.executable, str(HERE / script), *args], netns=netns)

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            try:
                doc = json.loads(line)
            except ValueError:
                doc = {"kind": "text", "text": line.rstrip()}
            with self._lock:
                self.reports.append(doc)

    def _read_err(self) -> None:
        assert self.popen.stderr is not None
        for line in self.popen.stderr:
            self.stderr.append(line.rstrip())

    def of(self, kind: str) -> list[dict[str, Any]]:
        """The reports of one kind so far."""
        with self._lock:
            return [r for r in self.reports if r.get("kind") == kind]

    def last(self, kind: str) -> dict[str, Any] | None:
        """The newest report of one kind, if any."""
        found = self.of(kind)
        return found[-1] if found else None

    def send(self, command: dict[str, Any]) -> None:
        """One command line on the process's stdin."""
        assert self.popen.stdin is not None
        self.popen.stdin.write(json.dumps(command) + "\n")
        self.popen.stdin.flush()

    def wait_for(self, check: Callable[[], Any], what: str, seconds: float = 20.0) -> Any:
        """Poll ``check`` (bounded) until it is truthy; fail with this process's output."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            if self.popen.poll() is not None:
                break
            time.sleep(0.005)  # bounded polling of a real process
        raise AssertionError(f"{self.name}: {what} not seen\n{self.tail()}")

    def tail(self) -> str:
        """The last lines the process wrote, for failure messages."""
        with self._lock:
            out = [json.dumps(r) for r in self.reports[-15:]]
        return "\n".join(["stdout:", *out, "stderr:", *self.stderr[-30:]])

    def terminate(self) -> None:
        """Send SIGTERM without waiting (see :meth:`stop`)."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> int | None:
        """Ask it to stop (SIGTERM), wait, kill if it does not; return its exit code."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL, as a crashed host would die."""
        self.popen.kill()
        self.popen.wait(timeout=20)


@contextlib.contextmanager
def processes() -> Iterator[list[Proc]]:
    """A list to register helper processes in; every one is stopped on the way out."""
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            proc.stop()
