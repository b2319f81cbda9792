"""Alerts: an outbox written in the controller's transaction, sinks, and a dispatcher.

The controller calls :func:`enqueue_alert` inside the transaction that changes a rollout, so
an alert exists if and only if the transition happened (design invariant 6). The
:class:`Dispatcher` later delivers every alert to every configured sink, each with its own
status row in ``alert_deliveries``:

* **claim** a due delivery in a short transaction (status ``sending``, ``attempts + 1`` and a
  lease in ``next_attempt_at``), **send** outside any transaction, **record** the outcome in
  another transaction guarded by the claimed ``attempts`` (a compare-and-swap), so a delivery
  is marked at most once even with two dispatchers;
* a failure keeps the delivery ``pending`` (``failing`` after repeated failures) with
  ``last_error`` and an exponential, capped, deterministically jittered ``next_attempt_at``;
  nothing is ever given up on or dropped (design invariant 8);
* a crash between send and record leaves the lease to expire and the alert is sent again with
  the same ``Idempotency-Key`` (its ``key``), so receivers can drop the duplicate.

This module is the public face; the code lives in ``_outbox.py`` (enqueue, list),
``_dispatch.py`` (the dispatcher), ``_sinks.py`` (sinks) and ``_config.py``
(:func:`load_sinks`). The operator's guide is the "Alerts" section of ``docs/operations.md``.
"""

from __future__ import annotations

from policy_canary.alerts._config import load_sinks
from policy_canary.alerts._dispatch import Dispatcher, DispatchReport, retry_delay
from policy_canary.alerts._outbox import AlertView, DeliveryView, enqueue_alert, list_alerts
from policy_canary.alerts._sinks import (
    AlertSink,
    BaseSink,
    DeliveryError,
    HttpSink,
    LogSink,
    MemorySink,
    SlackWebhookSink,
    WebhookSink,
    sign_body,
    slack_message,
    verify_signature,
)
from policy_canary.alerts._types import (
    ALERT_FORMAT,
    Alert,
    AlertKind,
    AlertStatus,
    DeliveryStatus,
    Severity,
)

__all__ = [
    "ALERT_FORMAT",
    "Alert",
    "AlertKind",
    "AlertSink",
    "AlertStatus",
    "AlertView",
    "BaseSink",
    "DeliveryError",
    "DeliveryStatus",
    "DeliveryView",
    "DispatchReport",
    "Dispatcher",
    "HttpSink",
    "LogSink",
    "MemorySink",
    "Severity",
    "SlackWebhookSink",
    "WebhookSink",
    "enqueue_alert",
    "list_alerts",
    "load_sinks",
    "retry_delay",
    "sign_body",
    "slack_message",
    "verify_signature",
]
