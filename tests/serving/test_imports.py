"""An agent's cold start: importing the SDK loads the serving path and nothing heavier.

Checked in a fresh interpreter, since this test process has long imported everything. The
import-linter contracts in pyproject.toml hold the same line statically.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("numpy", "scipy", "pydantic", "yaml", "rich", "typer", "alembic", "psycopg")


def _modules_after(code: str) -> list[str]:
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    ).stdout
    loaded: list[str] = json.loads(out.splitlines()[-1])
    return loaded


def _top(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return sorted({m for m in modules if m.split(".")[0] in names})


def test_importing_canary_loads_no_controller_statistics_or_database() -> None:
    loaded = _modules_after("from policy_canary import Canary")
    ours = {m for m in loaded if m.startswith("policy_canary.")}
    # The serving path and the few pure, stdlib-only modules it needs; nothing else of ours.
    shared = {"clock", "errors", "limits", "resilience", "canonical"}
    assert ours - {f"policy_canary.{name}" for name in shared} <= {
        m for m in ours if m.startswith("policy_canary.serving")
    }
    assert _top(loaded, (*HEAVY, "sqlalchemy")) == []


def test_opening_a_sqlite_store_adds_sqlalchemy_but_not_alembic_or_psycopg(tmp_path: Path) -> None:
    from policy_canary import Registry, Store

    url = f"sqlite:///{tmp_path}/store.db"
    store = Store.open(url)
    Registry(store).register("support-agent", {"prompt": "hi"}, author="t", message="m")
    store.close()
    loaded = _modules_after(
        f"from policy_canary import Canary\n"
        f"canary = Canary.open({url!r}, background=False)\n"
        "canary.gate('support-agent').route('u1')\n"
        "canary.close()"
    )
    assert "sqlalchemy" in loaded
    assert _top(loaded, HEAVY) == []
    assert not [m for m in loaded if m.startswith("policy_canary.controller")]


def test_public_names_still_resolve_lazily() -> None:
    loaded = _modules_after("import policy_canary\nassert policy_canary.Controller.__doc__")
    assert "policy_canary.controller" in loaded
    assert json.dumps(sorted(dir(__import__("policy_canary"))))  # dir() lists the lazy names


def test_the_remote_sdk_loads_no_sqlalchemy_and_no_driver(tmp_path: Path) -> None:
    import socket
    import time
    import urllib.request

    from policy_canary import Registry, Store

    url = f"sqlite:///{tmp_path}/store.db"
    store = Store.open(url)
    Registry(store).register("support-agent", {"prompt": "hi"}, author="t", message="m")
    store.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = str(Path(sys.executable).parent / "policy-canary")
    server = subprocess.Popen(
        [cli, "serve", "--db", url, "--port", str(port), "--no-auth"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:  # bounded: a real process binding its port
            try:
                urllib.request.urlopen(f"{base}/api/v1/health", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "the server did not come up"
                time.sleep(0.1)
        loaded = _modules_after(
            f"from policy_canary import Canary\n"
            f"canary = Canary.connect({base!r})\n"
            "d = canary.gate('support-agent').route('u1')\n"
            "d.record(latency_ms=1.0)\n"
            "canary.close()\n"
            "assert canary.stats().written == 1"
        )
    finally:
        server.terminate()
        server.wait(timeout=20)
    assert _top(loaded, (*HEAVY, "sqlalchemy", "psycopg2", "asyncpg")) == []
    assert not [m for m in loaded if m.startswith(("policy_canary.store", "policy_canary.server"))]


def test_every_serving_module_but_the_direct_link_is_held_to_no_database() -> None:
    """The import-linter contract names its modules one by one; a new module must join it."""
    import tomllib

    import policy_canary.serving

    root = Path(policy_canary.serving.__file__).parent
    pyproject = root.parents[2] / "pyproject.toml"
    contracts = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["importlinter"]
    (no_database,) = [
        c
        for c in contracts["contracts"]
        if "sqlalchemy" in c.get("forbidden_modules", ())
        and all(m.startswith("policy_canary.serving.") for m in c["source_modules"])
    ]
    modules = {f"policy_canary.serving.{p.stem}" for p in root.glob("_*.py")} - {
        "policy_canary.serving.__init__",
        "policy_canary.serving._direct",  # the link on a store: the only SQL on the path
        "policy_canary.serving._feedback",  # feedback SQL: the direct link and the controller
    }
    assert sorted(no_database["source_modules"]) == sorted(modules)
