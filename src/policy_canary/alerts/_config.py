"""Configuring alert sinks from a YAML/JSON file and from the environment.

The file (``--config FILE`` or ``$POLICY_CANARY_ALERTS_CONFIG``)::

    log: true                      # the built-in JSON-lines log sink on stderr (default true)
    sinks:
      - type: webhook
        name: ops-webhook          # optional; defaults to the type; unique per process
        url: https://alerts.example.com/policy-canary
        secret_env: OPS_WEBHOOK_SECRET   # or `secret: ...` (signs each body, HMAC-SHA256)
        timeout: 5                 # seconds, default 10
      - type: slack
        url_env: SLACK_WEBHOOK_URL       # or `url: ...`; Slack URLs are secrets
      - type: log
        name: stdout-log
        stream: stdout             # stderr (default) or stdout

The environment adds sinks on top: ``POLICY_CANARY_ALERT_WEBHOOK_URL`` (with
``POLICY_CANARY_ALERT_WEBHOOK_SECRET``) adds a sink named ``webhook``,
``POLICY_CANARY_ALERT_SLACK_URL`` one named ``slack``, and ``POLICY_CANARY_ALERT_LOG=off``
turns the built-in log sink off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from policy_canary.alerts._sinks import (
    DEFAULT_TIMEOUT,
    AlertSink,
    LogSink,
    SlackWebhookSink,
    WebhookSink,
)
from policy_canary.documents import Loaded, load_document, read_text
from policy_canary.errors import InputError

ENV_CONFIG = "POLICY_CANARY_ALERTS_CONFIG"
ENV_WEBHOOK_URL = "POLICY_CANARY_ALERT_WEBHOOK_URL"
ENV_WEBHOOK_SECRET = "POLICY_CANARY_ALERT_WEBHOOK_SECRET"
ENV_SLACK_URL = "POLICY_CANARY_ALERT_SLACK_URL"
ENV_LOG = "POLICY_CANARY_ALERT_LOG"

#: A sinks file larger than this is certainly not a sinks file.
MAX_CONFIG_BYTES = 256 * 1024
_TOP_KEYS = ("log", "sinks")
_KEYS: dict[str, tuple[str, ...]] = {
    "log": ("type", "name", "stream"),
    "webhook": ("type", "name", "url", "url_env", "secret", "secret_env", "timeout"),
    "slack": ("type", "name", "url", "url_env", "secret", "secret_env", "timeout"),
}
_FALSE = ("0", "false", "no", "off")
_TRUE = ("1", "true", "yes", "on")

Entry = tuple[str | int, ...]


def load_sinks(
    config_path: Path | None = None, environ: Mapping[str, str] | None = None
) -> list[AlertSink]:
    """Build the configured sinks: the log sink (unless disabled), the file's, the env's.

    ``config_path`` defaults to ``$POLICY_CANARY_ALERTS_CONFIG``; ``environ`` to
    ``os.environ``. Raises :class:`InputError` (with ``file:line:column`` for file problems)
    for unknown sink types or keys, missing URLs, unset ``*_env`` variables and duplicate names.
    """
    env = os.environ if environ is None else environ
    if config_path is None and env.get(ENV_CONFIG):
        config_path = Path(env[ENV_CONFIG])
    log_on = _env_flag(env, ENV_LOG, default=True)
    sinks: list[AlertSink] = []
    if config_path is not None:
        file_log, file_sinks = _from_file(config_path, env)
        log_on = log_on and file_log
        sinks.extend(file_sinks)
    sinks.extend(_from_env(env))
    if log_on and not any(isinstance(sink, LogSink) for sink in sinks):
        sinks.insert(0, LogSink())
    seen: set[str] = set()
    for sink in sinks:
        if sink.name in seen:
            raise InputError(
                f"two alert sinks are named {sink.name!r}; give each a distinct 'name' "
                "(the environment's sinks are named 'webhook' and 'slack')"
            )
        seen.add(sink.name)
    return sinks


def _env_flag(env: Mapping[str, str], var: str, *, default: bool) -> bool:
    raw = env.get(var, "").strip().lower()
    if not raw:
        return default
    if raw in _FALSE:
        return False
    if raw in _TRUE:
        return True
    raise InputError(f"{var}={raw!r} is not on or off; use 1/0, true/false, yes/no or on/off")


def _from_env(env: Mapping[str, str]) -> list[AlertSink]:
    sinks: list[AlertSink] = []
    webhook_url = env.get(ENV_WEBHOOK_URL, "").strip()
    if webhook_url:
        secret = env.get(ENV_WEBHOOK_SECRET) or None
        sinks.append(_env_sink(ENV_WEBHOOK_URL, lambda: WebhookSink(webhook_url, secret=secret)))
    elif env.get(ENV_WEBHOOK_SECRET):
        raise InputError(f"{ENV_WEBHOOK_SECRET} is set but {ENV_WEBHOOK_URL} is not; set both")
    slack_url = env.get(ENV_SLACK_URL, "").strip()
    if slack_url:
        sinks.append(_env_sink(ENV_SLACK_URL, lambda: SlackWebhookSink(slack_url)))
    return sinks


def _env_sink(var: str, build: Callable[[], AlertSink]) -> AlertSink:
    try:
        return build()
    except InputError as exc:
        raise InputError(f"{var}: {exc.message}") from None


def _parse(path: Path) -> Loaded:
    text = read_text(path, limit=MAX_CONFIG_BYTES, what="alert sinks file")
    source = str(path)
    if path.suffix.lower() != ".json":
        return load_document(text, source=source)
    strict = load_document(text, source=source, fmt="json")
    # The JSON parser reports syntax errors with line:column but keeps no positions; JSON is
    # (nearly always) YAML too, so the YAML walker supplies positions for later errors.
    try:
        located = load_document(text, source=source)
    except InputError:
        return strict
    return located if located.value == strict.value else strict


def _from_file(path: Path, env: Mapping[str, str]) -> tuple[bool, list[AlertSink]]:
    doc = _parse(path)
    top = doc.value
    if not isinstance(top, dict):
        raise InputError(
            f"{doc.where(())}: the top level must be a mapping with 'sinks' (and 'log')"
        )
    _check_keys(doc, (), top, _TOP_KEYS, "the alert sinks file")
    log_on = top.get("log", True)
    if not isinstance(log_on, bool):
        raise InputError(f"{doc.where(('log',))}: 'log' must be true or false")
    entries = top.get("sinks", [])
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise InputError(f"{doc.where(('sinks',))}: 'sinks' must be a list of sinks")
    sinks = [_sink(doc, ("sinks", i), entry, env) for i, entry in enumerate(entries)]
    if not log_on and any(isinstance(sink, LogSink) for sink in sinks):
        raise InputError(
            f"{doc.where(('log',))}: 'log: false' turns the log sink off, but 'sinks' "
            "configures one; drop one of the two"
        )
    return log_on, sinks


def _check_keys(
    doc: Loaded, at: Entry, value: dict[str, Any], allowed: tuple[str, ...], what: str
) -> None:
    for key in value:
        if key not in allowed:
            raise InputError(
                f"{doc.where((*at, key))}: unknown key {key!r} in {what}; "
                f"allowed: {', '.join(allowed)}"
            )


def _sink(doc: Loaded, at: Entry, entry: Any, env: Mapping[str, str]) -> AlertSink:
    if not isinstance(entry, dict):
        raise InputError(f"{doc.where(at)}: a sink must be a mapping with a 'type'")
    kind = entry.get("type")
    if kind is None:
        raise InputError(f"{doc.where(at)}: this sink has no 'type'; use one of {_types()}")
    if not isinstance(kind, str) or kind not in _KEYS:
        raise InputError(
            f"{doc.where((*at, 'type'))}: unknown sink type {kind!r}; use one of {_types()}"
        )
    _check_keys(doc, at, entry, _KEYS[kind], f"a {kind} sink")
    name = _string(doc, at, entry, "name", default=kind)
    try:
        if kind == "log":
            stream = _string(doc, at, entry, "stream", default="stderr")
            if stream not in ("stderr", "stdout"):
                raise InputError(f"{doc.where((*at, 'stream'))}: stream must be stderr or stdout")
            return LogSink(name=name, stream=sys.stdout if stream == "stdout" else None)
        url = _secretish(doc, at, entry, "url", env, required=True)
        assert url is not None  # required=True raises instead of returning None
        secret = _secretish(doc, at, entry, "secret", env, required=False)
        timeout = entry.get("timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise InputError(
                f"{doc.where((*at, 'timeout'))}: timeout must be a positive number of seconds"
            )
        sink_class = WebhookSink if kind == "webhook" else SlackWebhookSink
        return sink_class(url, name=name, secret=secret, timeout=float(timeout))
    except InputError as exc:
        if exc.message.startswith(doc.source):
            raise
        raise InputError(f"{doc.where(at)}: {exc.message}") from None


def _types() -> str:
    return ", ".join(sorted(_KEYS))


def _string(doc: Loaded, at: Entry, entry: dict[str, Any], key: str, *, default: str) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{doc.where((*at, key))}: {key!r} must be a non-empty string")
    return value.strip()


def _secretish(
    doc: Loaded,
    at: Entry,
    entry: dict[str, Any],
    key: str,
    env: Mapping[str, str],
    *,
    required: bool,
) -> str | None:
    """Read ``key`` literally or from the variable named by ``key_env`` (not both)."""
    env_key = f"{key}_env"
    if key in entry and env_key in entry:
        raise InputError(f"{doc.where((*at, env_key))}: give {key!r} or {env_key!r}, not both")
    if env_key in entry:
        var = _string(doc, at, entry, env_key, default="")
        value = env.get(var, "").strip()
        if not value:
            raise InputError(
                f"{doc.where((*at, env_key))}: environment variable {var} is not set "
                f"(it should hold the sink's {key})"
            )
        return value
    if key in entry:
        return _string(doc, at, entry, key, default="")
    if required:
        raise InputError(
            f"{doc.where(at)}: this {entry['type']} sink has no {key!r}; "
            f"add '{key}: ...' or '{env_key}: VARIABLE'"
        )
    return None
