"""One DigitalOcean rate budget per token across every process and machine, kept in a shared store.

``SharedRateBudget`` is what a client acquires from when a store is configured (the ledger's
Postgres, ``sagas.ratebudget_pg``; ``app.wiring`` connects the two). It keeps the rules of
``ratelimit.RateBudget`` (two sliding windows, priorities and their reserves, tightening from the
provider's headers) for all the token's users at once:

- **Leases of slots, not a round trip per request.** A process asks the store for a few slots at a
  time (``BudgetStore.lease``, one short statement), sized to its demand: the requests waiting now,
  or more (up to 1/25 of the minute's limit) while its leases keep running out before they lapse.
  A lease must be spent within ``hold`` (1/60 of the window: one second in real time); slots not
  spent by then are void. The store counts a lease's slots in the minute and hour windows from
  its grant until ``use_by + window`` (+ the same guard as ``RateBudget``). The next lease call
  *settles* the leases that are done: it says how many slots were used and how long ago their last
  response came, and the store counts them until ``that response + window`` instead (the provider
  counted each request when it arrived, which was before its response). Unused slots are freed.
- **Why it is safe across machines.** Every grant is decided in the store under a row lock on
  the token, against every live lease of the token whoever holds it, on the store's clock alone;
  a process turns "use by" into its own clock conservatively (from *before* it asked), so no two
  clocks need agree. Nothing is granted past a priority's ceiling in either window, or past the
  allowance the provider's headers left, which is shared through the store when it runs low.
- **A process that dies holds nothing.** Its leases lapse ``hold`` after their grant and stop
  counting ``window`` + guard after that, as the requests it may have sent expire at the provider
  (the hour window keeps them for its hour, as the provider does); its place in the priority
  queue lapses within 3/20 of a window. Nothing needs cleaning up.
- **Priorities across processes.** A process whose most urgent waiting request cannot be served
  registers as waiting, with its priority, for 3/20 of a window (renewed at least every 1/10
  while it waits, so a dead process's place lapses within 9 s of real time); once
  served it stays registered for 1/50 of a window more, so that a busy process's next request
  does not lose its turn. Served within 3/20 of a window of being refused, it stays registered
  for 3/20 more instead, as a waiting process: it is still working through what queued while it
  waited, and a pause of its own (every thread busy sending, a loaded CPU) must not hand the
  slots it waited for to a lower priority (the price: the fleet may sit out 3/20 of a window after
  a rollback that had to wait is done). A lease for a lower priority is refused while another
  process is registered with a higher one, so the next slots that free go to the rollback, not to
  the fleet that asked first; the fleet is told to ask again when the rollback's place lapses
  (sooner if its own poll says so). The reserves of ``RESERVES``
  apply to the store's windows: the fleet leaves 4% of each minute and 20% of each hour.
- **When the store fails** (Postgres restarting, unreachable, a lease call slower than two
  seconds) the process neither stops nor bursts: leases it holds stay good until they lapse, and
  new requests go through a local ``RateBudget`` with a quarter of the limits (``fallback_share``),
  still tightened by the provider's headers. The store is tried again after a second; the first
  call that succeeds reports what was sent meanwhile, so the others count it.

It must never hand the token to the store (a hash keys it), never hold its lock while the store
is called, and never be the source of a round trip per request.

Why one file: ``SharedRateBudget`` is one lock over one set of leases, waiters and fallback state;
the store's protocol and its messages are the few types around it, and split apart each half would
only make sense read with the other.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import SecretStr

from sagas.digitalocean.ratelimit import (
    GUARD_SECONDS,
    HOUR,
    IN_FLIGHT_SECONDS,
    MINUTE,
    Priority,
    ProviderSignal,
    RateBudget,
    Turns,
    ceilings,
    current_priority,
    read_rate_headers,
    token_key,
)

logger = logging.getLogger("sagas.digitalocean.budget")

FALLBACK_SHARE = 0.25  # of each limit, for a process whose store does not answer
STORE_RETRY_SECONDS = 1.0  # real seconds between tries of a store that failed
STORE_PATIENCE_SECONDS = 2.0  # a lease call slower than this sends the other waiters to the fallback
MAX_BLOCK = 50  # slots per lease, whatever the limit


@dataclass(frozen=True)
class Settlement:
    """A lease that is done: how many of its slots were sent, and how long ago the last answer came."""

    lease_id: int
    used: int
    age: float


@dataclass(frozen=True)
class LeaseRequest:
    """One call to the store: settle what is done, report what was sent without it, ask for slots."""

    token_key: str
    holder: str
    priority: Priority
    want: int
    minute_ceiling: int
    hour_ceiling: int
    minute_seconds: float  # window lengths, guard included, as this process counts them
    hour_seconds: float
    hold_seconds: float
    wait_seconds: float  # how long a refused caller stays registered as waiting
    yield_seconds: float  # how long a caller served in full stays registered
    settle: tuple[Settlement, ...] = ()
    offline_minute: int = 0  # sent without the store, still in the minute window
    offline_hour: int = 0  # ... still in the hour window (the minute's included)


@dataclass(frozen=True)
class Grant:
    """``slots`` granted under ``lease_id`` (None when none); when fewer than asked, the store
    expects no more before ``retry_in`` seconds."""

    lease_id: int | None
    slots: int
    retry_in: float


class BudgetStore(Protocol):
    """Where the shared windows live. Any exception from it means "not now"."""

    @property
    def key(self) -> str:
        """Which store this is (a database), without secrets: budgets are per token *and* store."""
        ...

    def lease(self, request: LeaseRequest) -> Grant: ...

    def tighten(
        self, token_key: str, *, remaining: int | None, reset_in: float | None, pause: float | None
    ) -> None:
        """Record what the provider's headers said, so every process holds back."""
        ...


@dataclass(eq=False)
class _Lease:
    lease_id: int
    priority: Priority
    left: int
    use_by: float  # on this process's clock, no later than the store's
    forget_at: float  # by then the store has stopped counting it, settled or not
    counted_until: float  # no later than the store counts it in the minute window (for extending)
    used: int = 0
    in_flight: int = 0
    last_response: float | None = None

    def spendable(self, now: float) -> bool:
        return self.left > 0 and now < self.use_by

    def done(self, now: float) -> bool:
        return not self.spendable(now) and self.in_flight == 0


_FALLBACK = object()  # the slot a request took from the fallback budget


@dataclass
class _Offline:
    """Requests sent through the fallback budget and not yet reported to the store."""

    sent: deque[float] = field(default_factory=deque)


class SharedRateBudget:
    """This process's handle on a token's budget in ``store``; thread-safe (see the module doc)."""

    def __init__(
        self,
        store: BudgetStore,
        key: str,
        per_minute: int = 250,
        per_hour: int = 5000,
        *,
        scale: float = 1.0,
        guard: float = GUARD_SECONDS,
        fallback_share: float = FALLBACK_SHARE,
        holder: str | None = None,
    ) -> None:
        if per_minute < 1 or per_hour < 1:
            raise ValueError("a rate budget needs at least one request per window")
        if scale <= 0 or not 0 < fallback_share <= 1:
            raise ValueError("scale must be positive and fallback_share in (0, 1]")
        self.per_minute = per_minute
        self.per_hour = per_hour
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._store = store
        self._key = key
        self._minute = (MINUTE + guard) * scale
        self._hour = (HOUR + guard) * scale
        self._hold = self._minute / 60
        self._poll = self._minute / 10  # a waiting process asks again at least this often ...
        self._wait = self._poll * 1.5  # ... so its place in the queue outlives the gap
        self._yield = self._minute / 50  # ... and stays registered once served
        self._after_expiry = self._minute / 1000  # let a few slots free up before asking again
        self._max_block = max(1, min(MAX_BLOCK, per_minute // 25))
        self._fallback = RateBudget(
            max(1, math.floor(per_minute * fallback_share)),
            max(1, math.floor(per_hour * fallback_share)),
            scale=scale,
            guard=guard,
            in_flight=IN_FLIGHT_SECONDS,
        )
        self._lock = threading.Lock()
        self._turns = Turns()
        self._leases: list[_Lease] = []
        self._retry_at: dict[Priority, float] = dict.fromkeys(Priority, 0.0)
        self._refused_at: dict[Priority, float] = dict.fromkeys(Priority, -math.inf)
        self._block = 1
        self._fetching = False
        self._fetch_started = 0.0
        self._store_down_until = 0.0
        self._store_down = False
        self._offline = _Offline()
        self._signal = ProviderSignal()
        self._last_push = -math.inf
        self._in_flight = threading.local()

    # --- the client's side -------------------------------------------------------------------

    def acquire(self) -> float:
        """Block until one more request of the current priority may be sent; return when (monotonic)."""
        priority = current_priority()
        with self._lock:
            now = time.monotonic()
            if not self._turns and self._signal.delay(now) <= 0 and self._spendable_locked(now, priority):
                # Nobody waits and a slot is in hand: the common case, without queueing.
                return self._spent_locked(self._spend_locked(now, priority), now, priority)
            me = self._turns.join(priority)
            try:
                while True:
                    now = time.monotonic()
                    held_back = self._signal.delay(now)
                    # Served in queue order: a request takes a slot only if enough are left for
                    # every request ahead of it (more urgent, or as urgent and earlier).
                    ahead = self._turns.ahead_of(me)
                    spendable = self._spendable_locked(now, priority)
                    if held_back <= 0 and spendable > ahead:
                        lease = self._spend_locked(now, priority)
                        self._turns.leave(me)
                        self._turns.wake(spendable)  # those the slots left may serve, and the next
                        return self._spent_locked(lease, now, priority)
                    if self._store_unusable_locked(now):
                        self._turns.leave(me)
                        self._turns.wake()
                        break
                    first = ahead == 0
                    if first and held_back <= 0 and not self._fetching and now >= self._retry_at[priority]:
                        self._lease_locked(priority, now)
                        self._turns.wake(self._spendable_locked(time.monotonic(), priority) + 1)
                        continue
                    if first and held_back > 0:
                        timeout = held_back
                    elif first and not self._fetching:
                        timeout = self._retry_at[priority] - now
                    elif self._fetching:  # woken when it ends; a store that hangs is given up on
                        timeout = min(self._poll, STORE_PATIENCE_SECONDS)
                    else:
                        timeout = self._poll  # woken when its turn may have come
                    turn = self._turns.ready_to_wait(me)
                    self._lock.release()
                    try:
                        turn.wait(timeout=min(max(timeout, 0.001), self._poll))
                    finally:
                        self._lock.acquire()
            except BaseException:
                self._turns.leave(me)
                self._turns.wake()
                raise
        # The store is not answering: a conservative local budget, never a stop or a burst.
        counted_at = self._fallback.acquire()
        with self._lock:
            self._offline.sent.append(counted_at)
            while self._offline.sent[0] <= counted_at - self._hour:
                self._offline.sent.popleft()
        self._in_flight.slot = _FALLBACK
        return counted_at

    def observe(self, headers: Mapping[str, str]) -> None:
        """The response to this thread's last request is in: mark its slot answered, and hold
        back (here, and through the store when the provider says the budget runs low)."""
        slot = getattr(self._in_flight, "slot", None)
        self._in_flight.slot = None
        signal = read_rate_headers(headers, time.time())
        push = False
        with self._lock:
            now = time.monotonic()
            if isinstance(slot, _Lease):
                slot.in_flight -= 1
                slot.last_response = now
            if signal is not None:
                self._signal.apply(signal, now, self._minute)
                # A pause always; a low count at most once per poll, not with every response.
                low = signal.remaining is not None and signal.remaining < self.per_minute
                push = signal.pause is not None or (low and now - self._last_push >= self._poll)
                if push and signal.pause is None:
                    self._last_push = now
        # The fallback hears the provider too, and counts its own request from its response.
        if slot is _FALLBACK or signal is not None:
            self._fallback.answered(signal)
        if push and signal is not None:
            try:
                reset_in = signal.reset_in if signal.reset_in is not None else self._minute
                self._store.tighten(
                    self._key, remaining=signal.remaining, reset_in=reset_in, pause=signal.pause
                )
            except Exception as exc:  # the local hold above still applies
                logger.debug("could not share the provider's rate-limit headers: %s", type(exc).__name__)

    # --- inside, under the lock --------------------------------------------------------------

    def _spent_locked(self, lease: _Lease, now: float, priority: Priority) -> float:
        """Hand the slot to this thread; refill the pocket first if it runs low, so that the
        requests behind this one do not all stop while the store is asked."""
        self._in_flight.slot = lease
        if (
            not self._fetching
            and now >= self._retry_at[priority]
            and not self._store_unusable_locked(now)
            and self._spendable_locked(now, priority) < self._block // 2
        ):
            self._lease_locked(priority, now)
            # Those the new slots may serve, and the first in line (to ask again when told).
            self._turns.wake(self._spendable_locked(time.monotonic(), priority) + 1)
        return now

    def _usable_locked(self, now: float, priority: Priority) -> list[_Lease]:
        # A lease granted under a priority's ceiling serves that priority and the ones above it.
        return [lease for lease in self._leases if lease.spendable(now) and priority <= lease.priority]

    def _spendable_locked(self, now: float, priority: Priority) -> int:
        return sum(lease.left for lease in self._usable_locked(now, priority))

    def _spend_locked(self, now: float, priority: Priority) -> _Lease:
        """A slot from a lease this priority may use: the least privileged first, to keep the
        others for the requests that need them."""
        lease = max(self._usable_locked(now, priority), key=lambda lease: (lease.priority, -lease.use_by))
        lease.left -= 1
        lease.used += 1
        lease.in_flight += 1
        self._signal.spend()
        if lease.left == 0:
            # Demand outran the lease: ask for more next time.
            self._block = min(self._max_block, self._block * 2)
        return lease

    def _store_unusable_locked(self, now: float) -> bool:
        if self._fetching and now - self._fetch_started > STORE_PATIENCE_SECONDS:
            return True
        return self._store_down and now < self._store_down_until

    def _lease_locked(self, priority: Priority, now: float) -> None:
        """One call to the store, without the lock held; the caller re-checks everything after."""
        settle: list[tuple[_Lease, Settlement]] = []
        extend: list[_Lease] = []
        for lease in self._leases:
            if lease.done(now):
                if lease.left > 0:
                    self._block = max(1, self._block // 2)  # slots lapsed unused: ask for fewer
                    lease.left = 0
                age = now - lease.last_response if lease.last_response is not None else 0.0
                settle.append((lease, Settlement(lease.lease_id, lease.used, age)))
            elif not lease.spendable(now) and now > lease.counted_until - self._minute * 3 / 4:
                # Requests still unanswered long after the lease lapsed (waiting for a connection,
                # say) may arrive late: keep them counted from now until they are answered.
                extend.append(lease)
        offline_minute = sum(1 for t in self._offline.sent if t > now - self._minute)
        offline_hour = sum(1 for t in self._offline.sent if t > now - self._hour)
        waiting = self._turns.waiting(priority)
        want = max(1, min(self._max_block, max(waiting, self._block)))
        minute_ceiling, hour_ceiling = ceilings(self.per_minute, self.per_hour, priority)
        # Refused lately, this process is still working through the requests that queued while
        # it waited, and may be busy sending them all when it asks (nothing queued, every slot in
        # flight): served now, it keeps a waiting process's place, so that a pause of its own (a
        # loaded CPU) does not hand the slots it waited for to a lower priority.
        refused_lately = now - self._refused_at[priority] < self._wait
        request = LeaseRequest(
            token_key=self._key,
            holder=self.holder,
            priority=priority,
            want=want,
            minute_ceiling=minute_ceiling,
            hour_ceiling=hour_ceiling,
            minute_seconds=self._minute,
            hour_seconds=self._hour,
            hold_seconds=self._hold,
            wait_seconds=self._wait,
            yield_seconds=self._wait if refused_lately else self._yield,
            settle=tuple(s for _, s in settle) + tuple(Settlement(x.lease_id, x.used, 0.0) for x in extend),
            offline_minute=offline_minute,
            offline_hour=offline_hour,
        )
        self._fetching = True
        self._fetch_started = now
        asked_at = time.monotonic()  # before the store's clock granted anything
        grant: Grant | None = None
        failure: BaseException | None = None
        self._lock.release()
        try:
            grant = self._store.lease(request)
        except Exception as exc:
            failure = exc
        finally:
            self._lock.acquire()
            self._fetching = False
        answered_at = time.monotonic()
        if grant is None:
            if not self._store_down:
                logger.warning(
                    "the shared rate budget's store did not answer (%s); sending through a local budget"
                    " of %d requests a minute until it does",
                    type(failure).__name__,
                    self._fallback.per_minute,
                )
            self._store_down = True
            self._store_down_until = answered_at + STORE_RETRY_SECONDS
            self._turns.wake(len(self._turns))  # every waiter goes to the fallback
            return
        if self._store_down:
            logger.warning("the shared rate budget's store answers again")
        self._store_down = False
        while self._offline.sent and self._offline.sent[0] <= now:
            self._offline.sent.popleft()  # reported in this call
        settled = {id(lease) for lease, _ in settle}
        for lease in extend:
            lease.counted_until = asked_at + self._minute
        self._leases = [
            lease for lease in self._leases if id(lease) not in settled and answered_at < lease.forget_at
        ]
        if grant.lease_id is not None and grant.slots > 0:
            self._leases.append(
                _Lease(
                    grant.lease_id,
                    priority,
                    grant.slots,
                    use_by=asked_at + self._hold,
                    forget_at=asked_at + self._hold + self._minute + self._hour,
                    counted_until=asked_at + self._hold + self._minute,
                )
            )
        if grant.slots < want:
            self._refused_at[priority] = answered_at
            # Nothing more for this priority (nor any below it) before the store's word.
            retry_at = answered_at + min(grant.retry_in + self._after_expiry, self._poll)
            for p in Priority:
                if p >= priority:
                    self._retry_at[p] = max(self._retry_at[p], retry_at) if p > priority else retry_at
        else:
            self._retry_at[priority] = 0.0


_registry: dict[str, SharedRateBudget] = {}
_registry_lock = threading.Lock()


def shared_budget_for_token(
    token: SecretStr,
    store: BudgetStore,
    per_minute: int = 250,
    per_hour: int = 5000,
    *,
    scale: float = 1.0,
) -> SharedRateBudget:
    """This process's handle on the token's budget in ``store``, created on first use.

    Keyed by process too: a forked child must not spend its parent's leases.
    """
    key = token_key(token)
    registry_key = f"{os.getpid()}:{store.key}:{key}:{per_minute}:{per_hour}:{scale}"
    with _registry_lock:
        budget = _registry.get(registry_key)
        if budget is None:
            budget = _registry[registry_key] = SharedRateBudget(store, key, per_minute, per_hour, scale=scale)
        return budget
