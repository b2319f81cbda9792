"""A local webhook receiver for the demo: checks signatures and keeps what arrives."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from policy_canary.alerts import verify_signature


@dataclass
class Received:
    """Alerts a :class:`WebhookReceiver` accepted, and requests it refused."""

    alerts: list[dict[str, Any]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    refused: int = 0


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 (an ephemeral port) that accepts signed alert webhooks."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.received = Received()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                signature = self.headers.get("X-Policy-Canary-Signature")
                if not verify_signature(receiver.secret, body, signature):
                    receiver.received.refused += 1
                    self.send_response(401)
                    self.end_headers()
                    return
                receiver.received.alerts.append(json.loads(body))
                receiver.received.keys.append(self.headers.get("Idempotency-Key", ""))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Stay quiet: the demo prints its own progress."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Where to POST alerts."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/alerts"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
