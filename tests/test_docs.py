"""Code samples in the README and docs are executed, so they cannot rot.

- every ```python block in README.md and docs/ runs (the README's SDK sample against a fresh
  store, with a stand-in ``run_agent``);
- every ``$ policy-canary ...`` line of the README's ```console blocks runs, in order, on a
  fresh database in a folder holding ``examples/``, and must exit 0;
- every ```yaml block in the docs validates (plans, alert sink configs, guardrail lists);
- every ``$ policy-canary ...`` line in docs/ (reference listings with placeholders such as
  incident ids) must name an existing command with existing options.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from policy_canary.cli import app
from policy_canary.registry import Registry
from policy_canary.simulate import V1
from policy_canary.store import Store

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks(path: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(path.read_text()) if lang == language]


def commands(body: str) -> list[list[str]]:
    found = []
    for line in body.splitlines():
        if line.startswith("$ policy-canary"):
            words = shlex.split(line[2:], comments=True)
            if ">" in words:  # a shell redirection in a listing
                words = words[: words.index(">")]
            found.append(words[1:])
    return found


@dataclass
class Usage:
    cost_usd: float = 0.0042
    input_tokens: int = 812
    output_tokens: int = 164
    model: str = "gpt-large"
    safety_flags: tuple[str, ...] = ()


def run_agent(spec: Any, message: str) -> tuple[str, Usage]:
    """Stands in for the user's agent in the README sample."""
    assert "prompt" in spec
    return f"(answer to {message!r})", Usage()


def test_readme_python_samples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path}/agent.db"
    store = Store.open(url)
    Registry(store).register("support-agent", V1)
    store.close()
    monkeypatch.setenv("POLICY_CANARY_DB", url)
    samples = [body for path in DOCS for body in blocks(path, "python")]
    assert samples, "the README shows the SDK"
    for body in samples:
        namespace: dict[str, Any] = {"run_agent": run_agent, "__name__": "readme_sample"}
        exec(compile(body, "README.md", "exec"), namespace)
    store = Store.open(url)
    with store.read() as conn:
        recorded = conn.exec_driver_sql("SELECT count(*) FROM events").scalar_one()
        judged = conn.exec_driver_sql("SELECT quality FROM feedback").scalars().all()
    store.close()
    assert recorded == 1
    assert judged == [0.82]


def test_readme_tour_runs_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("POLICY_CANARY_DB", f"sqlite:///{tmp_path}/tour.db")
    tour = [words for body in blocks(ROOT / "README.md", "console") for words in commands(body)]
    assert len(tour) >= 10
    runner = CliRunner()
    for words in tour:
        result = runner.invoke(app, words)
        assert result.exit_code == 0, f"policy-canary {' '.join(words)}\n{result.stderr}"


def test_every_documented_command_exists() -> None:
    root = typer.main.get_command(app)
    checked = 0
    for path in DOCS:
        for body in blocks(path, "console"):
            for words in commands(body):
                command: Any = root
                args = list(words)
                while args and args[0] in getattr(command, "commands", {}):
                    command = command.commands[args.pop(0)]
                assert not hasattr(command, "commands"), f"{path.name}: {words} is a group"
                options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
                for word in args:
                    if word.startswith("--") or (word.startswith("-") and len(word) == 2):
                        name = word.split("=")[0]
                        assert name in options, f"{path.name}: {' '.join(words)}: {name}?"
                checked += 1
    assert checked >= 20


#: Every series the collectors expose (docs/integrations.md), without _total/_bucket suffixes.
_SERIES_SOURCES = ("telemetry/_prometheus.py", "telemetry/_controller.py")


def _exposed_series() -> set[str]:
    names = set()
    for source in _SERIES_SOURCES:
        text = (ROOT / "src" / "policy_canary" / source).read_text()
        names |= set(re.findall(r'(?:_gauge|_counter)\(\s*"(\w+)"', text))
        names |= set(re.findall(r'(?:_P|METRIC_PREFIX) \+ "(\w+)"', text))
    return {f"policy_canary_{n}" for n in names}


def _check_prometheus_rules(doc: dict[str, Any], source: str) -> None:
    exposed = _exposed_series()
    assert "policy_canary_rollout_phase" in exposed, exposed
    for group in doc["groups"]:
        for rule in group["rules"]:
            assert {"alert", "expr"} <= set(rule), source
            for name in re.findall(r"policy_canary_\w+", rule["expr"]):
                base = re.sub(r"_(total|bucket|count|sum|info)$", "", name)
                assert base in exposed, f"{source}: {rule['alert']} names unknown {name}"


def test_every_yaml_sample_in_the_docs_validates(tmp_path: Path) -> None:
    import yaml

    from policy_canary.alerts import load_sinks
    from policy_canary.guardrails import Guardrail
    from policy_canary.plan import RolloutPlan

    kinds = []
    for path in DOCS:
        for i, body in enumerate(blocks(path, "yaml")):
            source = f"{path.name}#yaml{i}"
            if body.startswith("groups:"):
                _check_prometheus_rules(yaml.safe_load(body), source)
                kinds.append("prometheus")
            elif "stages:" in body:
                RolloutPlan.loads(body, source=source)
                kinds.append("plan")
            elif "sinks:" in body:
                config = tmp_path / f"{path.stem}-{i}.yaml"
                config.write_text(body)
                env = dict.fromkeys(
                    re.findall(r"_env: (\w+)", body), "https://example.invalid/hook"
                )
                assert load_sinks(config, environ=env), source
                kinds.append("sinks")
            else:
                for item in yaml.safe_load(body)["guardrails"]:
                    Guardrail.from_mapping(item)
                kinds.append("guardrails")
    assert {"plan", "sinks", "guardrails", "prometheus"} <= set(kinds)
