"""``policy-canary serve``: refuse unsafe exposure, print the banner, run uvicorn, drain."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from types import FrameType

import uvicorn

from policy_canary.errors import InputError
from policy_canary.server._app import OPENAPI_URL, create_app
from policy_canary.server._state import Limits
from policy_canary.serving import Canary
from policy_canary.settings import Settings
from policy_canary.store import safe_url
from policy_canary.tokens import Tokens

#: Seconds uvicorn waits for in-flight requests after SIGTERM/SIGINT before closing them.
GRACEFUL_SECONDS = 10


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(*, host: str, no_auth: bool, usable_tokens: int) -> str:
    """Refuse to serve unsafely; return the banner's auth line."""
    if no_auth:
        if not is_loopback(host):
            raise InputError(
                f"--no-auth is only allowed on loopback (127.0.0.1, ::1, localhost), not "
                f"{host!r}: anyone who can reach the port could push versions and roll back; "
                "create a token with 'policy-canary token create NAME --role admin' instead"
            )
        return "AUTH DISABLED (--no-auth): every request acts as the local user; loopback only"
    if usable_tokens == 0:
        raise InputError(
            "refusing to serve: the store has no usable API token, so nobody could call the "
            "API; create one with 'policy-canary token create NAME --role admin' (or, for "
            "local use only, bind to 127.0.0.1 with --no-auth)"
        )
    return f"auth: bearer tokens required ({usable_tokens} usable)"


class _Server(uvicorn.Server):
    """uvicorn, ending the event streams first on SIGTERM/SIGINT.

    A stream never finishes by itself, so without this the graceful shutdown would wait
    its whole timeout for them before closing in-flight requests.
    """

    def __init__(self, config: uvicorn.Config, *, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_exit()
        super().handle_exit(sig, frame)


def serve(
    *,
    db_url: str | None,
    host: str = "127.0.0.1",
    port: int = 8600,
    no_auth: bool = False,
    rate_limit: float | None = None,
    open_metrics: bool = False,
    settings: Settings | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Run the server until SIGINT/SIGTERM; in-flight requests drain, buffered events flush.

    uvicorn re-raises the signal once it has shut down (so a supervisor sees how the process
    ended), which is why the canary is closed by the app's shutdown rather than after
    ``run()`` returns; the ``finally`` covers start-up failures.
    """
    chosen = settings or Settings.from_env()
    canary = Canary.open(db_url)
    try:
        auth_line = check_exposure(
            host=host, no_auth=no_auth, usable_tokens=Tokens(canary.store).count_usable()
        )
        limits = Limits(spec_bytes=chosen.max_spec_bytes, rate_per_second=rate_limit)
        app = create_app(
            canary,
            auth=not no_auth,
            limits=limits,
            close_canary=True,
            open_metrics=open_metrics,
        )
        where = f"[{host}]" if ":" in host else host
        echo(f"policy-canary serve on http://{where}:{port}  (store: {safe_url(canary.store.url)})")
        echo(auth_line)
        echo(f"API http://{where}:{port}/api/v1  OpenAPI {OPENAPI_URL}  OFREP /ofrep/v1")
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="info",
            timeout_graceful_shutdown=GRACEFUL_SECONDS,
            server_header=False,
        )
        _Server(config, on_exit=lambda: app.state.server.watch.close(wait=False)).run()
    finally:
        canary.close()  # idempotent: already closed by the app's shutdown
