"""Every input file is read with a bounded read: devices and pipes cannot exhaust memory.

``stat()`` reports 0 bytes for ``/dev/zero``, a pipe or a FIFO, so these tests feed exactly
those. The CLI runs in a subprocess capped by ``RLIMIT_AS``: if the bounded read ever regresses
to "read everything", the child dies of ``MemoryError`` and the test fails instead of the
machine swapping.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from policy_canary.documents import read_text
from policy_canary.errors import InputError, InvalidSpecError
from policy_canary.store import Store

_MAIN = "from policy_canary.cli import main; main()"
#: Address space for the child: plenty for the CLI, far below what reading /dev/zero takes.
_AS_LIMIT = 1536 * 1024 * 1024


def _cap_memory() -> None:  # pragma: no cover - runs in the child
    resource.setrlimit(resource.RLIMIT_AS, (_AS_LIMIT, _AS_LIMIT))


def _run(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _MAIN, "--db", db, *args],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_cap_memory,
        check=False,
    )


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/store.db"
    Store.open(url).close()
    return url


@pytest.fixture
def endless_fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO whose writer sends bytes until the reader closes it."""
    path = tmp_path / "endless.fifo"
    os.mkfifo(path)

    def feed() -> None:
        chunk = b"a" * 65536
        try:
            with path.open("wb") as out:
                while True:
                    out.write(chunk)
        except (BrokenPipeError, OSError):
            return

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    yield path
    if writer.is_alive():  # nobody opened the FIFO: open it once so the writer finishes
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        os.close(fd)
    writer.join(timeout=5)


COMMANDS = {
    "policy push": ("policy", "push", "agent", "{file}"),
    "policy import": ("policy", "import", "{file}"),
    "plan check": ("plan", "check", "{file}"),
    "alerts dispatch --config": ("alerts", "dispatch", "--config", "{file}"),
    "incident replay": ("incident", "replay", "{file}"),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_dev_zero_is_refused_by_every_command_that_reads_a_file(db: str, command: str) -> None:
    args = [a.replace("{file}", "/dev/zero") for a in COMMANDS[command]]
    done = _run(db, *args, "--json")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    error = json.loads(done.stdout)["error"]
    assert "/dev/zero" in error["message"]
    assert "larger than" in error["message"]


@pytest.mark.parametrize("command", ["policy push", "plan check"])
def test_an_endless_fifo_is_refused_after_the_limit(
    db: str, command: str, endless_fifo: Path
) -> None:
    args = [a.replace("{file}", str(endless_fifo)) for a in COMMANDS[command]]
    done = _run(db, *args)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert "larger than" in done.stderr


def test_a_small_spec_through_a_pipe_is_read(db: str, tmp_path: Path) -> None:
    path = tmp_path / "spec.fifo"
    os.mkfifo(path)
    writer = threading.Thread(target=path.write_text, args=("prompt: hello\n",), daemon=True)
    writer.start()
    done = _run(db, "policy", "push", "agent", str(path), "--json")
    writer.join(timeout=5)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["version"]["number"] == 1


def test_read_text_reads_at_most_limit_plus_one_bytes() -> None:
    with pytest.raises(InvalidSpecError, match=r"/dev/zero: the spec file is larger than 1,000"):
        read_text(Path("/dev/zero"), limit=1000, what="spec file", error=InvalidSpecError)


def test_read_text_accepts_exactly_the_limit_and_explains_other_failures(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_bytes(b"x" * 10)
    assert read_text(path, limit=10, what="file") == "x" * 10
    with pytest.raises(InputError, match="larger than 9 bytes"):
        read_text(path, limit=9, what="file")
    with pytest.raises(InputError, match="is a folder"):
        read_text(tmp_path, limit=9, what="file")
    with pytest.raises(InputError, match="no such file"):
        read_text(tmp_path / "absent", limit=9, what="file")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(InputError, match=r"not UTF-8 text \(byte 0\)"):
        read_text(path, limit=9, what="file")
