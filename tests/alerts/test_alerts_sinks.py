"""Alert sinks against a real HTTP receiver on 127.0.0.1: failures, recovery, signatures.

The receiver is ``http.server`` in a thread on an ephemeral port. It checks each request's
HMAC itself (not through our helpers) and dedupes on ``Idempotency-Key`` the way we tell
users to, so "delivered exactly once" is measured on the receiving side.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from policy_canary.alerts import (
    Alert,
    AlertKind,
    DeliveryError,
    Dispatcher,
    DispatchReport,
    LogSink,
    Severity,
    SlackWebhookSink,
    WebhookSink,
    enqueue_alert,
    list_alerts,
    sign_body,
    verify_signature,
)
from policy_canary.clock import ManualClock
from policy_canary.errors import InputError
from policy_canary.store import Store

SECRET = "s3cret-shared-with-the-receiver"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
KEY = "r1:rollback"


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A scripted webhook receiver: answers ``script`` statuses in turn, then 200."""

    secret: str = SECRET
    script: list[int] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    accepted: dict[str, bytes] = field(default_factory=dict)
    bad_signatures: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    port: int = 0

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/slow":
                    receiver.release.wait(5)
                status = receiver.handle(Request(self.path, dict(self.headers.items()), body))
                answer = b"ok" if status < 300 else b"upstream exploded\n  try later"
                try:
                    self.send_response(status)
                    if status in (301, 302, 307):
                        self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the sink gave up waiting (/slow): no one is left to answer

            def log_message(self, *_args: object) -> None:  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        # A short poll keeps shutdown() (which waits for the next poll) quick.
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()

    def stop(self) -> None:
        if self.server is not None:
            self.release.set()
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def handle(self, request: Request) -> int:
        with self.lock:
            self.requests.append(request)
            status = self.script.pop(0) if self.script else 200
            if status != 200:
                return status
            expected = (
                "sha256=" + hmac.new(self.secret.encode(), request.body, hashlib.sha256).hexdigest()
            )
            if request.headers.get("X-Policy-Canary-Signature") != expected:
                self.bad_signatures += 1
                return 401
            # Dedupe on the idempotency key, as a careful receiver does.
            self.accepted.setdefault(request.headers["Idempotency-Key"], request.body)
            return 200


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.start()
    yield r
    r.stop()


def enqueue(store: Store) -> None:
    with store.begin() as conn:
        enqueue_alert(
            conn,
            key=KEY,
            kind="rollback",
            severity="critical",
            summary="support-agent v2 rolled back: failure rate <2x> & rising",
            payload={"guardrail": "failure_rate"},
            at=T0,
            policy="support-agent",
            rollout_id="r1",
        )


def the_alert(alert_id: int = 1) -> Alert:
    return Alert(
        id=alert_id,
        key=KEY,
        kind=AlertKind.ROLLBACK,
        severity=Severity.CRITICAL,
        summary="support-agent v2 rolled back",
        created_at=T0,
        policy="support-agent",
        rollout_id="r1",
    )


def test_webhook_failures_stay_pending_then_deliver_once_with_signature_and_same_key(
    store: Store, clock: ManualClock, receiver: Receiver
) -> None:
    enqueue(store)
    receiver.script = [500, 500]
    sink = WebhookSink(receiver.url(), secret=SECRET, timeout=5, clock=clock)
    d = Dispatcher(store, [sink], clock=clock, base_backoff=timedelta(seconds=10))

    assert d.dispatch_once() == DispatchReport(delivered=0, failed=1, pending=1)
    [view] = list_alerts(store, status="pending")
    [state] = view.deliveries
    assert (state.sink, state.status.value, state.attempts) == ("webhook", "pending", 1)
    assert state.last_error == (
        f"HTTP 500 from http://127.0.0.1:{receiver.port}: upstream exploded try later"
    )

    clock.advance(timedelta(minutes=1))
    assert d.dispatch_once() == DispatchReport(delivered=0, failed=1, pending=1)
    clock.advance(timedelta(minutes=1))
    assert d.dispatch_once() == DispatchReport(delivered=1, failed=0, pending=0)
    clock.advance(timedelta(hours=1))
    assert d.dispatch_once() == DispatchReport(delivered=0, failed=0, pending=0)

    assert len(receiver.requests) == 3
    assert {r.headers["Idempotency-Key"] for r in receiver.requests} == {KEY}
    assert receiver.bad_signatures == 0
    assert list(receiver.accepted) == [KEY]
    body = json.loads(receiver.accepted[KEY])
    assert body == {
        "format": "policy-canary.alert/1",
        "id": view.alert.id,
        "key": KEY,
        "kind": "rollback",
        "severity": "critical",
        "summary": "support-agent v2 rolled back: failure rate <2x> & rising",
        "created_at": "2026-01-01T00:00:00+00:00",
        "policy": "support-agent",
        "rollout_id": "r1",
        "payload": {"guardrail": "failure_rate"},
    }
    last = receiver.requests[-1].headers
    assert last["Content-Type"] == "application/json; charset=utf-8"
    # The timestamp comes from the sink's clock: two minutes after T0 on the last attempt.
    assert last["X-Policy-Canary-Timestamp"] == str(int(T0.timestamp()) + 120)
    [done] = list_alerts(store)[0].deliveries
    assert (done.status.value, done.attempts, done.last_error) == ("delivered", 3, None)


def test_connection_refused_is_retried_until_the_receiver_comes_up(
    store: Store, clock: ManualClock, receiver: Receiver
) -> None:
    enqueue(store)
    port = receiver.port
    receiver.stop()  # nothing listens on the port now: connections are refused
    sink = WebhookSink(receiver.url(), secret=SECRET, clock=clock)
    d = Dispatcher(store, [sink], clock=clock)

    assert d.dispatch_once() == DispatchReport(delivered=0, failed=1, pending=1)
    [state] = list_alerts(store)[0].deliveries
    assert state.last_error is not None
    assert state.last_error.startswith(f"cannot reach http://127.0.0.1:{port}: ")
    assert "refused" in state.last_error.lower()

    receiver.start()  # same port
    assert receiver.port == port
    clock.advance(timedelta(minutes=1))
    assert d.dispatch_once() == DispatchReport(delivered=1, failed=0, pending=0)
    assert list(receiver.accepted) == [KEY]
    assert len(receiver.requests) == 1


def test_slack_sink_posts_text_and_blocks(
    store: Store, clock: ManualClock, receiver: Receiver
) -> None:
    enqueue(store)
    receiver.script = [503]
    sink = SlackWebhookSink(receiver.url("/services/T0/B0/xyz"), secret=SECRET, clock=clock)
    d = Dispatcher(store, [sink], clock=clock)
    assert d.dispatch_once().failed == 1
    clock.advance(timedelta(minutes=1))
    assert d.dispatch_once().delivered == 1

    message = json.loads(receiver.accepted[KEY])
    assert message == {
        "text": "[critical] support-agent v2 rolled back: failure rate <2x> & rising",
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": ":rotating_light: CRITICAL: rollback · support-agent",
                    "emoji": True,
                },
            },
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": "support-agent v2 rolled back: failure rate &lt;2x&gt; &amp; rising",
                },
            },
            {
                "type": "context",
                "elements": [
                    {
                        "type": "mrkdwn",
                        "text": "rollout `r1` · key `r1:rollback` · 2026-01-01 00:00:00Z",
                    }
                ],
            },
        ],
    }
    assert {r.headers["Idempotency-Key"] for r in receiver.requests} == {KEY}


def test_webhook_and_slack_sinks_have_independent_status(
    store: Store, clock: ManualClock, receiver: Receiver
) -> None:
    enqueue(store)
    slack_down = Receiver()
    slack_down.start()
    slack_down.script = [500] * 5
    try:
        sinks = [
            WebhookSink(receiver.url(), secret=SECRET, clock=clock),
            SlackWebhookSink(slack_down.url(), secret=SECRET, clock=clock),
        ]
        d = Dispatcher(store, sinks, clock=clock)
        assert d.dispatch_once() == DispatchReport(delivered=1, failed=1, pending=1)
        statuses = {x.sink: (x.status.value, x.attempts) for x in list_alerts(store)[0].deliveries}
        assert statuses == {"webhook": ("delivered", 1), "slack": ("pending", 1)}
    finally:
        slack_down.stop()


def test_redirects_are_failures_and_not_followed(receiver: Receiver) -> None:
    receiver.script = [302]
    sink = WebhookSink(receiver.url(), secret=SECRET)
    with pytest.raises(DeliveryError, match=r"^HTTP 302 from http://127\.0\.0\.1:\d+"):
        sink.send(the_alert())
    assert len(receiver.requests) == 1


def test_a_silent_receiver_times_out(receiver: Receiver) -> None:
    sink = WebhookSink(receiver.url("/slow"), timeout=0.2)
    with pytest.raises(
        DeliveryError, match=r"no answer from http://127\.0\.0\.1:\d+ within 0\.2 s"
    ):
        sink.send(the_alert())


def test_errors_never_show_the_url_path_which_may_hold_a_token(receiver: Receiver) -> None:
    receiver.script = [404]
    sink = SlackWebhookSink(receiver.url("/services/T0/B0/TOPSECRETTOKEN?sig=abc"))
    with pytest.raises(DeliveryError) as caught:
        sink.send(the_alert())
    assert "TOPSECRET" not in str(caught.value)
    assert "sig=abc" not in str(caught.value)
    assert "TOPSECRET" not in repr(sink)


def test_without_a_secret_no_signature_header_is_sent(receiver: Receiver) -> None:
    receiver.secret = ""  # the receiver then expects sha256 of an empty key: it will refuse
    sink = WebhookSink(receiver.url())
    with pytest.raises(DeliveryError, match="HTTP 401"):
        sink.send(the_alert())
    assert "X-Policy-Canary-Signature" not in receiver.requests[0].headers
    assert receiver.requests[0].headers["Idempotency-Key"] == KEY


def test_http_sinks_refuse_bad_urls_names_and_timeouts() -> None:
    with pytest.raises(InputError, match="not an http\\(s\\) URL"):
        WebhookSink("ftp://example.com/hook")
    with pytest.raises(InputError, match="not an http\\(s\\) URL"):
        SlackWebhookSink("hooks.slack.com/services/x")
    with pytest.raises(InputError, match="timeout must be a positive"):
        WebhookSink("https://example.com", timeout=0)
    with pytest.raises(InputError, match="sink name 'Ops Hook' is not allowed"):
        WebhookSink("https://example.com", name="Ops Hook")


def test_log_sink_writes_one_json_line_per_alert() -> None:
    stream = io.StringIO()
    LogSink(stream=stream).send(the_alert(7))
    [line] = stream.getvalue().splitlines()
    assert json.loads(line) == {
        "event": "policy_canary.alert",
        "format": "policy-canary.alert/1",
        "id": 7,
        "key": KEY,
        "kind": "rollback",
        "severity": "critical",
        "summary": "support-agent v2 rolled back",
        "created_at": "2026-01-01T00:00:00+00:00",
        "policy": "support-agent",
        "rollout_id": "r1",
        "payload": {},
    }


def test_log_sink_defaults_to_the_current_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    LogSink().send(the_alert())
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err)["key"] == KEY


def test_signature_helpers_match_a_plain_hmac() -> None:
    body = b'{"key":"r1:rollback"}'
    expected = "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    assert sign_body("k", body) == expected
    assert verify_signature("k", body, expected)
    assert not verify_signature("k", body + b" ", expected)
    assert not verify_signature("other", body, expected)
    assert not verify_signature("k", body, None)
