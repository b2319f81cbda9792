"""``policy-canary serve``: refuse unsafe exposure, print the banner, run uvicorn, drain.

With ``--controller`` the controller loop runs in this process too (``_controller.py``):
in the app's lifespan with one worker, in the supervisor with ``--workers N`` (never in a
worker: one controller per ``serve``, whatever the number of workers).
"""

from __future__ import annotations

import gc
import ipaddress
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from policy_canary.errors import InputError
from policy_canary.server._app import OPENAPI_URL, create_app
from policy_canary.server._controller import ControllerOptions, ServedController
from policy_canary.server._listen import PortHold, balances
from policy_canary.server._state import Limits
from policy_canary.serving import Canary
from policy_canary.settings import Settings
from policy_canary.store import Store, safe_url
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


#: How long a ``serve --workers N`` worker may take to start before uvicorn replaces it.
WORKER_READY_SECONDS = 60

#: Where ``serve --workers N`` tells its worker processes how to build their app.
WORKER_ENV = "POLICY_CANARY_SERVE_WORKER"


@dataclass(frozen=True, slots=True)
class _Options:
    """What builds one serving process's app (the same in every worker)."""

    db_url: str | None
    no_auth: bool
    rate_limit: float | None
    open_metrics: bool
    max_spec_bytes: int

    def app(self, canary: Canary, controller: ServedController | None = None) -> FastAPI:
        limits = Limits(spec_bytes=self.max_spec_bytes, rate_per_second=self.rate_limit)
        app = create_app(
            canary,
            auth=not self.no_auth,
            limits=limits,
            close_canary=True,
            open_metrics=self.open_metrics,
            end_streams_on_signal=True,
            controller=controller,
        )
        # What importing and building the app allocated (~140,000 objects: modules, classes,
        # routes, schemas) lives as long as the process. Left to the collector, every full
        # collection walks all of it again, stalling the event loop (and every request in
        # flight) for tens of milliseconds; frozen, a full collection walks only what
        # requests keep (such as the open OFREP decisions), about half as long.
        gc.freeze()
        return app


def worker_app() -> FastAPI:
    """The app of one ``serve --workers N`` process: its own canary, store pool and watcher.

    uvicorn calls this (an import-string factory) in each worker it spawns; the options come
    from :data:`WORKER_ENV`, which :func:`serve` sets before spawning.
    """
    options = _Options(**json.loads(os.environ[WORKER_ENV]))
    return options.app(Canary.open(options.db_url))


def say(line: str) -> None:
    """Print a line of the banner or of the controller's reports at once (stdout: a pipe?)."""
    print(line, flush=True)


def serve(
    *,
    db_url: str | None,
    host: str = "127.0.0.1",
    port: int = 8600,
    no_auth: bool = False,
    rate_limit: float | None = None,
    open_metrics: bool = False,
    workers: int = 1,
    access_log: bool = False,
    controller: ControllerOptions | None = None,
    settings: Settings | None = None,
    echo: Callable[[str], None] = say,
) -> None:
    """Run the server until SIGINT/SIGTERM; in-flight requests drain, buffered events flush.

    With ``workers`` > 1, uvicorn runs that many processes, each with its own canary and
    routing watcher over the same store; on Linux each listens on a socket of its own, so
    the kernel spreads connections over them (``_listen.py``). uvicorn re-raises the signal
    once it has shut down (so a supervisor sees how the process ended), which is why the
    canary is closed by the app's shutdown rather than after ``run()`` returns; the
    ``finally`` covers start-up failures.

    With ``controller`` the controller loop runs in this process: in the app (started once it
    is ready, stopped before the canary closes, its series on ``/metrics``) with one worker;
    with several, in this supervisor process on a store of its own, from before the workers
    start until they have all stopped, so ``--workers N`` still runs one controller.
    """
    if workers < 1:
        raise InputError(f"--workers must be 1 or more, got {workers}")
    chosen = settings or Settings.from_env()
    options = _Options(db_url, no_auth, rate_limit, open_metrics, chosen.max_spec_bytes)
    canary = Canary.open(db_url)
    own_store: Store | None = None
    served: ServedController | None = None
    try:
        auth_line = check_exposure(
            host=host, no_auth=no_auth, usable_tokens=Tokens(canary.store).count_usable()
        )
        where = f"[{host}]" if ":" in host else host
        common: dict[str, Any] = {
            "host": host,
            "port": port,
            "log_level": "info",
            "access_log": access_log,
            "timeout_graceful_shutdown": GRACEFUL_SECONDS,
            "server_header": False,
        }
        if workers > 1:
            # uvicorn kills a worker that is not ready within its health-check timeout (5 s
            # by default) and starts another; on a busy host importing and opening the store
            # takes longer than that, and the workers were replaced for ever without serving.
            config = uvicorn.Config(
                f"{__name__}:worker_app",
                factory=True,
                workers=workers,
                timeout_worker_healthcheck=WORKER_READY_SECONDS,
                **common,
            )
            try:  # before the banner, which says where it serves
                listener = PortHold(host, port) if balances() else config.bind_socket()
            except OSError as exc:
                raise InputError(
                    f"cannot listen on {where}:{port}: {exc.strerror or exc}; is another "
                    "server running there? stop it or choose another --port"
                ) from None
        echo(f"policy-canary serve on http://{where}:{port}  (store: {safe_url(canary.store.url)})")
        echo(auth_line)
        echo(f"API http://{where}:{port}/api/v1  OpenAPI {OPENAPI_URL}  OFREP /ofrep/v1")
        if workers > 1:
            sockets = "a socket each" if balances() else "one shared socket"
            echo(
                f"{workers} worker processes on {sockets}; an OFREP decision is held by the "
                "worker that made it (send its event to the same connection, or use the "
                "remote SDK)"
            )
        if controller is not None:
            if workers > 1:
                own_store = Store.open(db_url)
            served = ServedController(own_store or canary.store, controller, echo=echo)
            echo(served.banner())
            if workers > 1:
                echo(
                    "controller: runs in the supervisor process, not in the workers; its "
                    "series (policy_canary_controller_*) are not on /metrics"
                )
        if workers == 1:
            app = options.app(canary, served)
            uvicorn.Server(uvicorn.Config(app, **common)).run()
            return
        canary.close()  # each worker opens its own
        os.environ[WORKER_ENV] = json.dumps(asdict(options))
        supervisor = Multiprocess(config, sockets=[listener])
        if served is not None:
            served.start()  # workers are spawned, not forked: they do not inherit its thread
        supervisor.run()  # returns once every worker has drained and exited
    finally:
        if served is not None:
            served.stop()  # with one worker, the app's shutdown stopped it already
        canary.close()  # idempotent: already closed by the app's shutdown
        if own_store is not None:
            own_store.close()
