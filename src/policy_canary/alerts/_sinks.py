"""Alert sinks: where the dispatcher delivers alerts (a log, a webhook, Slack) and a fake.

A sink is anything with a ``name`` and a ``send(alert)`` that returns once the receiver has
accepted the alert and raises otherwise. The dispatcher owns retries, backoff and the record
of what was delivered, so a sink makes exactly one attempt per call and keeps no state.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import re
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import IO, Any, ClassVar, Protocol, runtime_checkable

from policy_canary import __version__
from policy_canary.alerts._types import Alert
from policy_canary.clock import Clock, SystemClock
from policy_canary.errors import InputError

#: The documented charset of sink names (they key the per-sink delivery status).
SINK_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
#: Seconds an HTTP sink waits for the receiver before the attempt counts as failed.
DEFAULT_TIMEOUT = 10.0
SIGNATURE_HEADER = "X-Policy-Canary-Signature"
TIMESTAMP_HEADER = "X-Policy-Canary-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Slack refuses section text over 3000 characters and header text over 150.
_SLACK_SECTION_MAX = 3000
_SLACK_HEADER_MAX = 150
# How much of a refusing receiver's answer is kept in ``last_error``.
_ERROR_BODY_CHARS = 200


class DeliveryError(Exception):
    """A sink could not deliver an alert; the dispatcher records the message and retries.

    It is not a :class:`~policy_canary.errors.CanaryError` on purpose: it never reaches a
    user as a failed command, only as the ``last_error`` of a delivery that stays pending.
    """


@runtime_checkable
class AlertSink(Protocol):
    """Somewhere alerts go. ``send`` returns once the receiver accepted the alert, else raises."""

    name: str

    def send(self, alert: Alert) -> None:
        """Deliver ``alert`` once; raise (any ``Exception``) if the receiver did not accept it."""
        ...


class BaseSink(ABC):
    """A convenient base for sinks: a validated ``name`` and a readable ``repr``."""

    #: The ``type`` of the sink in a configuration file.
    type: ClassVar[str] = "sink"

    def __init__(self, *, name: str) -> None:
        if not SINK_NAME.fullmatch(name):
            raise InputError(
                f"sink name {name!r} is not allowed; use 1-64 of a-z, 0-9, '.', '_', '-' "
                "starting with a letter or digit"
            )
        self.name = name

    @abstractmethod
    def send(self, alert: Alert) -> None:
        """Deliver ``alert``; raise if the receiver did not accept it."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


class LogSink(BaseSink):
    """Writes each alert as one JSON line (``{"event": "policy_canary.alert", ...}``).

    The default stream is the process's *current* ``sys.stderr``, looked up at each send, so
    redirections made after start-up (and test capture) see the lines.
    """

    type = "log"

    def __init__(self, *, name: str = "log", stream: IO[str] | None = None) -> None:
        super().__init__(name=name)
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, alert: Alert) -> None:
        """Write the alert as one line and flush it."""
        line = json.dumps(
            {"event": "policy_canary.alert", **alert.to_dict()},
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
        )
        stream = self._stream if self._stream is not None else sys.stderr
        with self._lock:
            stream.write(line + "\n")
            stream.flush()


def sign_body(secret: str, body: bytes) -> str:
    """Return the ``X-Policy-Canary-Signature`` value of ``body``: ``sha256=<hex HMAC>``."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """Check a received ``X-Policy-Canary-Signature`` header in constant time (for receivers)."""
    if not header:
        return False
    return hmac.compare_digest(sign_body(secret, body), header.strip())


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirected POST would be re-sent as a GET without its body (or to another host with
    # our signature); a receiver that moved must be reconfigured, so 3xx is a failure.
    def redirect_request(self, *_args: Any, **_kwargs: Any) -> None:
        return None


class HttpSink(BaseSink):
    """Shared machinery of the HTTP sinks: one signed JSON ``POST`` per attempt.

    Every request carries ``Idempotency-Key: <alert key>`` (the same on every attempt),
    ``X-Policy-Canary-Timestamp`` (Unix seconds) and, when a secret is configured,
    ``X-Policy-Canary-Signature: sha256=<HMAC-SHA256 of the exact body bytes>``. Only a 2xx
    answer counts as delivered; redirects are not followed. Error messages name the
    receiver by scheme, host and port only, because webhook paths often carry a token.
    """

    type = "http"

    def __init__(
        self,
        url: str,
        *,
        name: str | None = None,
        secret: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Clock | None = None,
    ) -> None:
        name = name or self.type  # "webhook", "slack": the default name is the sink's type
        super().__init__(name=name)
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port  # parsed lazily: an out-of-range port raises only here
        except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535"
            raise InputError(
                f"sink {name!r}: {url!r} is not a valid URL ({exc}); give e.g. https://host/path"
            ) from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(
                f"sink {name!r}: {url!r} is not an http(s) URL; give e.g. https://host/path"
            )
        if not timeout > 0:
            raise InputError(f"sink {name!r}: timeout must be a positive number of seconds")
        self.url = url
        self.secret = secret or None
        self.timeout = float(timeout)
        self._clock = clock or SystemClock()
        self._opener = urllib.request.build_opener(_NoRedirect)
        self._user_agent = f"policy-canary/{__version__}"
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        #: Where alerts go, without path or query (safe to print and to store as an error).
        self.target = f"{parts.scheme}://{host}{f':{port}' if port else ''}"

    @abstractmethod
    def body(self, alert: Alert) -> Mapping[str, Any]:
        """The JSON object to post for ``alert``; subclasses choose the shape."""

    def headers(self, alert: Alert, body: bytes) -> dict[str, str]:
        """The request headers for one attempt (signature over the exact ``body`` bytes)."""
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": self._user_agent,
            IDEMPOTENCY_HEADER: alert.key,
            TIMESTAMP_HEADER: str(int(self._clock.now().timestamp())),
        }
        if self.secret:
            headers[SIGNATURE_HEADER] = sign_body(self.secret, body)
        return headers

    def send(self, alert: Alert) -> None:
        """POST the alert once; raise :class:`DeliveryError` unless the receiver answers 2xx."""
        body = json.dumps(
            self.body(alert), sort_keys=True, ensure_ascii=False, separators=(",", ":")
        ).encode("utf-8")
        request = urllib.request.Request(
            self.url, data=body, headers=self.headers(alert, body), method="POST"
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                response.read()
        except urllib.error.HTTPError as exc:  # any non-2xx answer, 3xx included
            detail = _answer_excerpt(exc)
            raise DeliveryError(f"HTTP {exc.code} from {self.target}{detail}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise DeliveryError(self._timed_out()) from None
            raise DeliveryError(f"cannot reach {self.target}: {reason}") from None
        except TimeoutError:
            raise DeliveryError(self._timed_out()) from None
        except (OSError, http.client.HTTPException) as exc:
            raise DeliveryError(f"{self.target} broke off: {type(exc).__name__}: {exc}") from None

    def _timed_out(self) -> str:
        return f"no answer from {self.target} within {self.timeout:g} s"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, target={self.target!r})"


def _answer_excerpt(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read(_ERROR_BODY_CHARS).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    finally:
        exc.close()
    return f": {' '.join(text.split())}" if text else ""


class WebhookSink(HttpSink):
    """POSTs the alert's JSON (:meth:`Alert.to_dict`, format ``policy-canary.alert/1``)."""

    type = "webhook"

    def body(self, alert: Alert) -> Mapping[str, Any]:
        """The alert itself."""
        return alert.to_dict()


class SlackWebhookSink(HttpSink):
    """POSTs a Slack incoming-webhook message: ``{"text": ..., "blocks": [...]}``."""

    type = "slack"

    def body(self, alert: Alert) -> Mapping[str, Any]:
        """The Slack message: a header, the summary, and the rollout / key / time context."""
        return slack_message(alert)


def slack_message(alert: Alert) -> dict[str, Any]:
    """Render ``alert`` as a Slack message (``text`` is the notification fallback)."""
    severity = alert.severity
    what = alert.kind.value.replace("_", " ")
    title = f"{severity.emoji} {severity.value.upper()}: {what}"
    if alert.policy:
        title += f" · {alert.policy}"
    context = [f"key `{_slack_escape(alert.key)}`", alert.created_at.strftime("%Y-%m-%d %H:%M:%SZ")]
    if alert.rollout_id:
        context.insert(0, f"rollout `{_slack_escape(alert.rollout_id)}`")
    return {
        "text": f"[{severity.value}] {alert.summary}",
        "blocks": [
            {
                "type": "header",
                "text": {"type": "plain_text", "text": title[:_SLACK_HEADER_MAX], "emoji": True},
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": _slack_escape(alert.summary)[:_SLACK_SECTION_MAX],
                },
            },
            {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)}]},
        ],
    }


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn treats these three as control characters (links, mentions).
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class MemorySink(BaseSink):
    """An in-memory sink for tests: records what it was sent and can be told to fail.

    ``attempts`` lists every call, ``sent`` only the accepted ones; ``MemorySink(fail_times=2)``
    (or :meth:`fail_next`) makes the next calls raise :class:`DeliveryError`.
    """

    type = "memory"

    def __init__(
        self, name: str = "memory", *, fail_times: int = 0, error: str = "simulated failure"
    ) -> None:
        super().__init__(name=name)
        self.sent: list[Alert] = []
        self.attempts: list[Alert] = []
        self._failures_left = fail_times
        self._error = error
        self._lock = threading.Lock()

    def fail_next(self, times: int, error: str | None = None) -> None:
        """Make the next ``times`` sends fail (with ``error`` as the message, if given)."""
        with self._lock:
            self._failures_left = times
            if error is not None:
                self._error = error

    @property
    def keys(self) -> list[str]:
        """The idempotency keys of the accepted alerts, in order."""
        with self._lock:
            return [alert.key for alert in self.sent]

    def send(self, alert: Alert) -> None:
        """Record the attempt; fail if told to, else accept the alert."""
        with self._lock:
            self.attempts.append(alert)
            if self._failures_left > 0:
                self._failures_left -= 1
                raise DeliveryError(self._error)
            self.sent.append(alert)
