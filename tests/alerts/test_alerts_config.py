"""Configuring alert sinks: the YAML/JSON file, the environment, and precise errors."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from policy_canary.alerts import AlertSink, LogSink, SlackWebhookSink, WebhookSink, load_sinks
from policy_canary.errors import InputError


def write(tmp_path: Path, text: str, name: str = "alerts.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def describe(sinks: Sequence[AlertSink]) -> list[tuple[str, str]]:
    return [(type(s).__name__, s.name) for s in sinks]


def test_without_configuration_only_the_log_sink_is_on() -> None:
    sinks = load_sinks(environ={})
    assert describe(sinks) == [("LogSink", "log")]


def test_a_yaml_file_configures_several_sinks(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
sinks:
  - type: webhook
    name: ops-webhook
    url: https://alerts.example.com/policy-canary
    secret_env: OPS_SECRET
    timeout: 2.5
  - type: slack
    url_env: SLACK_URL
""",
    )
    env = {"OPS_SECRET": "hunter2", "SLACK_URL": "https://hooks.slack.com/services/T/B/x"}
    sinks = load_sinks(path, env)
    assert describe(sinks) == [
        ("LogSink", "log"),
        ("WebhookSink", "ops-webhook"),
        ("SlackWebhookSink", "slack"),
    ]
    webhook, slack = sinks[1], sinks[2]
    assert isinstance(webhook, WebhookSink)
    assert (webhook.url, webhook.secret, webhook.timeout) == (
        "https://alerts.example.com/policy-canary",
        "hunter2",
        2.5,
    )
    assert isinstance(slack, SlackWebhookSink)
    assert (slack.url, slack.secret, slack.timeout) == (env["SLACK_URL"], None, 10.0)


def test_a_json_file_works_too_and_log_false_turns_the_log_sink_off(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"log": false, "sinks": [{"type": "webhook", "url": "http://127.0.0.1:9/h"}]}',
        "alerts.json",
    )
    assert describe(load_sinks(path, {})) == [("WebhookSink", "webhook")]


def test_an_explicit_log_sink_replaces_the_default(tmp_path: Path) -> None:
    path = write(tmp_path, "sinks:\n  - type: log\n    name: out\n    stream: stdout\n")
    [sink] = load_sinks(path, {})
    assert isinstance(sink, LogSink)
    assert sink.name == "out"
    assert sink._stream is sys.stdout


def test_the_environment_adds_sinks_and_can_turn_the_log_off(tmp_path: Path) -> None:
    env = {
        "POLICY_CANARY_ALERT_WEBHOOK_URL": "https://alerts.example.com/hook",
        "POLICY_CANARY_ALERT_WEBHOOK_SECRET": "hunter2",
        "POLICY_CANARY_ALERT_SLACK_URL": "https://hooks.slack.com/services/T/B/x",
        "POLICY_CANARY_ALERT_LOG": "off",
    }
    sinks = load_sinks(environ=env)
    assert describe(sinks) == [("WebhookSink", "webhook"), ("SlackWebhookSink", "slack")]
    assert isinstance(sinks[0], WebhookSink)
    assert sinks[0].secret == "hunter2"


def test_the_config_file_can_come_from_the_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path, "sinks:\n  - type: slack\n    name: team\n    url: https://h.example/x\n"
    )
    sinks = load_sinks(environ={"POLICY_CANARY_ALERTS_CONFIG": str(path)})
    assert describe(sinks) == [("LogSink", "log"), ("SlackWebhookSink", "team")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "sinks:\n  - type: pagerduty\n    url: https://x.example\n",
            r"alerts\.yaml:2:11: unknown sink type 'pagerduty'; use one of log, slack, webhook",
        ),
        (
            "sinks:\n  - type: webhook\n    name: hook\n",
            r"alerts\.yaml:2:5: this webhook sink has no 'url'; add 'url: \.\.\.' or 'url_env",
        ),
        (
            "sinks:\n  - type: webhook\n    url: https://x.example\n    url: https://y.example\n",
            r"alerts\.yaml:4:5: duplicate key 'url'",
        ),
        (
            "sinks:\n  - type: slack\n    url: https://x.example\n    channel: '#ops'\n",
            r"alerts\.yaml:4:14: unknown key 'channel' in a slack sink; allowed: type, name, url",
        ),
        ("sinks: [unclosed\n", r"alerts\.yaml:2:1: malformed YAML"),
        (
            "sinks:\n  - type: webhook\n    url: https://x.example\n    timeout: soon\n",
            r"alerts\.yaml:4:14: timeout must be a positive number of seconds",
        ),
        (
            "sinks:\n  - type: webhook\n    url: gopher://x.example\n",
            r"alerts\.yaml:2:5: sink 'webhook': 'gopher://x\.example' is not an http\(s\) URL",
        ),
        (
            "sinks:\n  - type: webhook\n    url_env: MISSING_URL\n",
            r"alerts\.yaml:3:14: environment variable MISSING_URL is not set",
        ),
        ("log: maybe\n", r"alerts\.yaml:1:6: 'log' must be true or false"),
        ("sinkz: []\n", r"alerts\.yaml:1:8: unknown key 'sinkz' in the alert sinks file"),
        ("- type: log\n", r"alerts\.yaml:1:1: the top level must be a mapping"),
        (
            "log: false\nsinks:\n  - type: log\n",
            r"alerts\.yaml:1:6: 'log: false' turns the log sink off, but 'sinks' configures one",
        ),
        (
            "sinks:\n  - type: webhook\n    url: https://a.example\n"
            "  - type: webhook\n    url: https://b.example\n",
            r"two alert sinks are named 'webhook'; give each a distinct 'name'",
        ),
    ],
)
def test_bad_yaml_files_get_located_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InputError, match=message):
        load_sinks(path, {})


def test_bad_json_files_get_located_errors(tmp_path: Path) -> None:
    broken = write(tmp_path, '{"sinks": [\n  {"type": "webhook",}\n]}', "broken.json")
    with pytest.raises(InputError, match=r"broken\.json:2:22: malformed JSON"):
        load_sinks(broken, {})
    unknown = write(tmp_path, '{"sinks": [\n  {"type": "sms", "url": "x"}\n]}', "unknown.json")
    with pytest.raises(InputError, match=r"unknown\.json:2:12: unknown sink type 'sms'"):
        load_sinks(unknown, {})


def test_missing_files_and_bad_environment_values_are_explained(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file; check the path of the alert sinks file"):
        load_sinks(tmp_path / "nope.yaml", {})
    with pytest.raises(InputError, match="is a folder"):
        load_sinks(tmp_path, {})
    with pytest.raises(InputError, match="POLICY_CANARY_ALERT_LOG='maybe' is not on or off"):
        load_sinks(environ={"POLICY_CANARY_ALERT_LOG": "maybe"})
    with pytest.raises(InputError, match="SECRET is set but POLICY_CANARY_ALERT_WEBHOOK_URL"):
        load_sinks(environ={"POLICY_CANARY_ALERT_WEBHOOK_SECRET": "x"})
    with pytest.raises(InputError, match="POLICY_CANARY_ALERT_SLACK_URL: sink 'slack'"):
        load_sinks(environ={"POLICY_CANARY_ALERT_SLACK_URL": "not-a-url"})


def test_an_environment_sink_clashing_with_a_file_sink_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "sinks:\n  - type: slack\n    url: https://h.example/x\n")
    with pytest.raises(InputError, match="two alert sinks are named 'slack'"):
        load_sinks(path, {"POLICY_CANARY_ALERT_SLACK_URL": "https://h.example/y"})


def test_a_sink_type_that_is_not_a_name_is_a_located_error(tmp_path: Path) -> None:
    # Found by the CLI fuzz test: a list as the type was looked up in a dict (TypeError).
    config = tmp_path / "sinks.yaml"
    config.write_text("sinks:\n  - type: []\n")
    with pytest.raises(InputError, match=r"sinks.yaml:2:\d+: unknown sink type \[\]"):
        load_sinks(config)
