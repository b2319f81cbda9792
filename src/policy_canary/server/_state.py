"""What one server holds: the library objects it calls, its limits, and its recent decisions."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from fastapi import Request

from policy_canary.clock import Clock
from policy_canary.controller import Incidents, Rollouts
from policy_canary.errors import InputError, NotFoundError, RateLimitedError
from policy_canary.registry import Registry
from policy_canary.server._idempotency import Idempotency
from policy_canary.server._ofrep_body import EvaluationBodies
from policy_canary.server._remote_events import GroupCommit, KnownRefs
from policy_canary.server._watch import RoutingWatch
from policy_canary.serving import Canary, Decision
from policy_canary.settings import DEFAULT_MAX_SPEC_BYTES
from policy_canary.store._audit import default_actor
from policy_canary.tokens import TokenInfo, Tokens, token_digest


@dataclass(frozen=True, slots=True)
class Limits:
    """Request limits; every endpoint reads its body within one of these."""

    body_bytes: int = 1024 * 1024
    spec_bytes: int = DEFAULT_MAX_SPEC_BYTES
    events_body_bytes: int = 16 * 1024 * 1024
    events_per_batch: int = 10_000
    ofrep_body_bytes: int = 64 * 1024
    decisions_kept: int = 100_000
    #: Requests per second each token (or, without auth, the server) may make; None: no limit.
    rate_per_second: float | None = None
    #: Seconds between keep-alive comments on an idle ``/api/v1/stream``.
    stream_keepalive: float = 15.0
    #: Seconds after which the server ends a stream (the client reconnects, sending
    #: ``Last-Event-ID``): spreads subscribers over replicas added since, and stays under
    #: load balancers' connection lifetimes.
    stream_seconds: float = 300.0
    #: Seconds an authenticated token is trusted without a store read (revocations made
    #: through another process take effect within this).
    token_cache_seconds: float = 1.0
    #: Seconds between the routing watcher's polls of the store (its LISTEN is instant).
    watch_interval: float = 0.1

    @property
    def push_body_bytes(self) -> int:
        """A spec's body may carry formatting and a message around the canonical spec."""
        return 4 * self.spec_bytes + 64 * 1024


class Decisions:
    """Decisions the server's OFREP evaluations made, waiting for their events (bounded).

    The oldest are forgotten first once ``capacity`` is reached; recording a forgotten one is
    refused with a message that says so. The policies of the last ``capacity`` decisions are
    kept separately so feedback can be authorised after the event was recorded.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._open: OrderedDict[str, Decision] = OrderedDict()
        self._policy: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, decision: Decision) -> None:
        """Remember ``decision`` until its event is recorded (or it is evicted)."""
        with self._lock:
            did = decision.decision_id
            self._open[did] = decision
            self._policy[did] = decision.policy
            while len(self._open) > self._capacity:
                self._open.popitem(last=False)
            while len(self._policy) > self._capacity:
                self._policy.popitem(last=False)

    def policy_of(self, decision_id: str) -> str | None:
        """The policy of a decision this server made recently, else None."""
        with self._lock:
            return self._policy.get(decision_id)

    def peek(self, decision_ids: Sequence[str]) -> list[Decision]:
        """The open decisions with these ids; :class:`NotFoundError` names the first unknown."""
        with self._lock:
            return [self._get(did, i) for i, did in enumerate(decision_ids)]

    def take(self, decision_ids: Sequence[str]) -> list[Decision]:
        """Remove and return these open decisions, all or none."""
        with self._lock:
            found = [self._get(did, i) for i, did in enumerate(decision_ids)]
            for did in decision_ids:
                del self._open[did]
            return found

    def _get(self, decision_id: str, index: int) -> Decision:
        decision = self._open.get(decision_id)
        if decision is None:
            recorded = decision_id in self._policy
            why = (
                "its event was already recorded; record each decision once (send late "
                "scores to /api/v1/feedback)"
                if recorded
                else "this server did not make it, or it was one of more than "
                f"{self._capacity:,} unrecorded decisions and was forgotten"
            )
            raise NotFoundError(f"events[{index}]: decision {decision_id!r} is not open: {why}")
        return decision


class TokenCache:
    """Tokens authenticated in the last ``seconds``, by digest: no store read per request.

    A hit is re-checked for expiry at every use; a revocation through this server clears
    the cache at once, one made elsewhere (the CLI, another replica) takes effect here
    within ``seconds`` (plus the one store read that re-checks it). Refusals are never
    cached. When an entry goes stale, the first request re-authenticates while the others
    keep the entry for up to :attr:`RECHECK_SECONDS` more: a busy token costs one store read
    a second, not one per request in flight at that moment.
    """

    #: How long a stale entry serves while one request re-checks the token.
    RECHECK_SECONDS = 0.5

    def __init__(self, seconds: float, *, now: Callable[[], float] = time.monotonic) -> None:
        self._seconds = seconds
        self._now = now
        self._found: dict[str, tuple[TokenInfo, float]] = {}
        self._lock = threading.Lock()

    def get(self, secret: str) -> TokenInfo | None:
        """The cached token, or None: then the caller authenticates (and puts or forgets)."""
        digest = token_digest(secret)
        hit = self._found.get(digest)
        if hit is None:
            return None
        now = self._now()
        if now - hit[1] <= self._seconds:
            return hit[0]
        with self._lock:
            hit = self._found.get(digest)
            if hit is None or now - hit[1] <= self._seconds:
                return None if hit is None else hit[0]
            # This caller re-checks; the others see the entry fresh for a moment meanwhile.
            self._found[digest] = (hit[0], now - self._seconds + self.RECHECK_SECONDS)
        return None

    def peek(self, secret: str) -> TokenInfo | None:
        """The cached token if it is fresh; never starts a re-check (see :meth:`get`)."""
        hit = self._found.get(token_digest(secret))
        if hit is None or self._now() - hit[1] > self._seconds:
            return None
        return hit[0]

    def put(self, secret: str, token: TokenInfo) -> None:
        """Remember ``token`` as authenticated now."""
        if len(self._found) > 10_000:
            self._found.clear()
        self._found[token_digest(secret)] = (token, self._now())

    def forget(self, secret: str) -> None:
        """Drop ``secret``'s entry (its re-check refused it)."""
        self._found.pop(token_digest(secret), None)

    def clear(self) -> None:
        """Forget every token (a revocation through this server)."""
        self._found = {}


class RateLimiter:
    """A token bucket per caller: ``rate`` requests per second, bursts of up to one second's.

    Refusals raise :class:`RateLimitedError` carrying the whole seconds until one request
    is allowed again (the ``Retry-After`` header).
    """

    def __init__(self, rate: float, clock: Clock) -> None:
        if rate <= 0:
            raise InputError(f"the rate limit must be a positive number per second; got {rate}")
        self._rate = rate
        self._burst = max(rate, 1.0)
        self._clock = clock
        self._buckets: dict[str, tuple[float, datetime]] = {}
        self._lock = threading.Lock()

    def take(self, caller: str) -> None:
        """Spend one request of ``caller``'s allowance, or refuse."""
        now = self._clock.now()
        with self._lock:
            level, at = self._buckets.get(caller, (self._burst, now))
            level = min(self._burst, level + (now - at).total_seconds() * self._rate)
            if level < 1.0:
                self._buckets[caller] = (level, now)
                wait = math.ceil((1.0 - level) / self._rate)
                raise RateLimitedError(
                    f"{caller!r} is over its limit of {self._rate:g} requests per second; "
                    f"retry in {wait} s",
                    retry_after=wait,
                )
            self._buckets[caller] = (level - 1.0, now)


@dataclass
class ServerState:
    """The library objects behind every endpoint."""

    canary: Canary
    registry: Registry
    rollouts: Rollouts
    incidents: Incidents
    tokens: Tokens
    idempotency: Idempotency
    auth: bool
    limits: Limits
    decisions: Decisions = field(init=False)
    rate_limiter: RateLimiter | None = field(init=False)
    watch: RoutingWatch = field(init=False)
    known_refs: KnownRefs = field(default_factory=KnownRefs)
    token_cache: TokenCache = field(init=False)
    bodies: EvaluationBodies = field(default_factory=EvaluationBodies)
    event_writer: GroupCommit = field(init=False)
    #: Who acts when auth is off (``--no-auth`` on loopback): the OS user running the server.
    local_actor: str = field(default_factory=default_actor)

    def __post_init__(self) -> None:
        self.decisions = Decisions(self.limits.decisions_kept)
        self.event_writer = GroupCommit(self.canary._link)
        self.token_cache = TokenCache(self.limits.token_cache_seconds)
        self.watch = RoutingWatch(
            self.canary.store, self.canary._link, interval=self.limits.watch_interval
        )
        rate = self.limits.rate_per_second
        self.rate_limiter = RateLimiter(rate, self.tokens.clock) if rate is not None else None


def server_state(request: Request) -> ServerState:
    """The :class:`ServerState` of the app serving ``request``."""
    found = request.app.state.server
    assert isinstance(found, ServerState), "create_app() sets app.state.server"
    return found
