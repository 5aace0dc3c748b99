"""Typed, synchronous DigitalOcean API v2 client over an injected ``httpx.Client``.

Every HTTP call goes through ``DigitalOceanClient._send``, the one place where httpx exceptions and
HTTP statuses become the project's errors (``sagas.errors``) and the one retry layer of this call
path (callers must not stack another around it):

- 2xx: the body is parsed into a model; a body we cannot parse is ``ProviderResponseError``.
- 404 ``ProviderNotFoundError``; 422 "pending event" ``PendingEventError``; other 4xx
  ``ProviderRejectedError`` with DigitalOcean's ``id``/``message``/``request_id``.
- 429: wait for ``retry-after`` or ``ratelimit-reset`` and send again (a 429 was not applied, so this
  is safe for every method) within the client's ``max_rate_limit_wait``; then ``RateLimitedError``.
  These waits are a budget of their own and do not count against the retry policy's deadline.
- 5xx and transport failures: GET and DELETE are retried by the client's ``RetryPolicy``
  (``sagas.retry``: capped attempts and deadline, jittered backoff), then ``ProviderUnavailableError``.
  A POST is retried only when nothing was sent (connect errors); once it may have reached the
  provider it is ``AmbiguousWriteError`` at once and NEVER re-sent: the caller resolves it by looking
  the resource up by its deterministic name.
- A request that cannot even be built or sent as a valid HTTP request (a token that is not a valid
  header value) is ``ConfigurationError`` or ``ProviderError``, raised without its cause: the cause's
  text would quote the header, token included.

Every response's ``Date`` header feeds the provider's clock (``provider_clock``, read through
``provider_time()``), which steps compare with the provider's own timestamps.

Every request that leaves the process is counted in ``sagas.telemetry`` (by method and answer,
with its latency, its 429s and its wait for the rate budget): in memory, no I/O on this path.

It must never put the token in a message, a log record or a URL, and never send it to a host other
than ``base_url`` (pagination links are followed by path only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Literal, Self, TypeVar, get_args, overload
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
from pydantic import BaseModel, SecretStr, ValidationError

from sagas.digitalocean.models import (
    Action,
    ActionEnvelope,
    ActionPage,
    DomainRecord,
    DomainRecordCreateRequest,
    DomainRecordEnvelope,
    DomainRecordPage,
    DomainRecordType,
    Droplet,
    DropletActionRequest,
    DropletCreateRequest,
    DropletEnvelope,
    DropletPage,
    ErrorBody,
    Page,
    Snapshot,
    SnapshotActionRequest,
    SnapshotEnvelope,
    SnapshotPage,
)
from sagas.digitalocean.provider_clock import ProviderClock, provider_clock_for
from sagas.digitalocean.ratelimit import RequestBudget, budget_for_token, current_priority
from sagas.digitalocean.shared_budget import BudgetStore, shared_budget_for_token
from sagas.errors import (
    AmbiguousWriteError,
    ConfigurationError,
    InputError,
    PendingEventError,
    ProviderError,
    ProviderNotFoundError,
    ProviderNotReachedError,
    ProviderRejectedError,
    ProviderResponseError,
    ProviderUnavailableError,
    RateLimitedError,
)
from sagas.retry import RetryPolicy
from sagas.settings import Settings, TokenPurpose, check_token
from sagas.telemetry import (
    PROVIDER_RATE_LIMITED,
    PROVIDER_REQUEST_DURATION,
    PROVIDER_REQUESTS,
    RATE_BUDGET_WAIT,
    status_class,
)

logger = logging.getLogger("sagas.digitalocean")

USER_AGENT = "arcadia-sagas/0.1"
PER_PAGE = 200
# A listing longer than this is a pagination loop at the provider, not a real account.
MAX_PAGES = 500
# A 429 that says "retry now" still waits this long, so a misbehaving server cannot spin us.
MIN_RATE_LIMIT_WAIT = 1.0
# How long 429s may hold one call back in all before it is RateLimitedError.
MAX_RATE_LIMIT_WAIT = 120.0

DOMAIN_RECORD_TYPES: tuple[str, ...] = get_args(DomainRecordType)

Method = Literal["GET", "POST", "DELETE"]
_IDEMPOTENT: frozenset[str] = frozenset({"GET", "DELETE"})
# Failures where the request never left this process: safe to send again, even a POST.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

M = TypeVar("M", bound=BaseModel)
P = TypeVar("P", bound=Page)


# The client's retry policy. It retries ProviderUnavailableError alone: ``_send`` raises that only
# for a transient failure of a request that is safe to send again (a GET or DELETE that met a 5xx or
# a transport error, a POST that never left this process). Build others with ``.replace(...)``.
DEFAULT_RETRY = RetryPolicy(on=ProviderUnavailableError)


class DigitalOceanClient:
    """The DigitalOcean calls the sagas make, with models in and out. Not thread-safe to close while
    in use; otherwise safe to share between threads (httpx.Client is)."""

    def __init__(
        self,
        http: httpx.Client,
        token: SecretStr,
        *,
        budget: RequestBudget | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        max_rate_limit_wait: float = MAX_RATE_LIMIT_WAIT,
        before_send: Callable[[], None] | None = None,
        provider_clock: ProviderClock | None = None,
    ) -> None:
        if not token.get_secret_value():
            raise ConfigurationError("an empty DigitalOcean token was given: set SAGAS_DO_TOKEN")
        check_token(token.get_secret_value(), "the DigitalOcean token given to the client")
        if max_rate_limit_wait < 0:
            raise ValueError("max_rate_limit_wait must not be negative")
        self._http = http
        self._token = token
        self._budget = budget
        # Whatever ``on`` the caller chose, only what is safe to send again is ever re-sent: a
        # caller's policy may narrow that, never widen it (a POST that may have landed is never resent).
        self._retry = retry.replace(
            on=lambda exc: isinstance(exc, ProviderUnavailableError) and retry.retries(exc)
        )
        self._max_rate_limit_wait = max_rate_limit_wait
        # Called before every request; it may raise to stop the request (a runner that lost its
        # lease must not call the provider again).
        self._before_send = before_send
        # The provider's clock, learned from every response's Date header (shared per base URL).
        self._provider_clock = provider_clock or provider_clock_for(str(http.base_url))
        self._owns_http = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        purpose: TokenPurpose,
        *,
        transport: httpx.BaseTransport | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        max_rate_limit_wait: float = MAX_RATE_LIMIT_WAIT,
        before_send: Callable[[], None] | None = None,
        budget_store: BudgetStore | None = None,
    ) -> DigitalOceanClient:
        """A client for ``purpose``'s token that owns its httpx client and shares the token's budget:
        with every process that uses ``budget_store``, or else with this process's other clients."""
        token = settings.do_token_for(purpose)
        http = httpx.Client(
            base_url=settings.do_api_url,
            timeout=settings.do_timeout_seconds,
            transport=transport,
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
            follow_redirects=False,
        )
        budget: RequestBudget
        if budget_store is not None:
            budget = shared_budget_for_token(
                token,
                budget_store,
                settings.do_rate_limit_per_minute,
                settings.do_rate_limit_per_hour,
                scale=settings.do_rate_window_scale,
            )
        else:
            budget = budget_for_token(
                token,
                settings.do_rate_limit_per_minute,
                settings.do_rate_limit_per_hour,
                scale=settings.do_rate_window_scale,
            )
        try:
            client = cls(
                http,
                token,
                budget=budget,
                retry=retry,
                max_rate_limit_wait=max_rate_limit_wait,
                before_send=before_send,
            )
        except BaseException:
            http.close()
            raise
        client._owns_http = True
        return client

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DigitalOceanClient(base_url={str(self._http.base_url)!r})"

    def provider_time(self) -> datetime | None:
        """A time DigitalOcean's clock has certainly reached (its latest ``Date`` header plus the time
        elapsed here since), on the clock that stamps ``started_at`` and ``created_at``; None before
        this process had any answer from it. Costs no request."""
        return self._provider_clock.now_at_least()

    # --- droplets --------------------------------------------------------------------------------

    def get_droplet(self, droplet_id: int) -> Droplet:
        return self._send("GET", f"/v2/droplets/{_id(droplet_id)}", model=DropletEnvelope).droplet

    def list_droplets(self, *, tag_name: str | None = None, name: str | None = None) -> list[Droplet]:
        params = {k: v for k, v in (("tag_name", tag_name), ("name", name)) if v is not None}
        pages = self._paginate("/v2/droplets", params, DropletPage, max_pages=None)
        return [droplet for page in pages for droplet in page.droplets]

    def find_droplets_by_tag(self, tag: str) -> list[Droplet]:
        """Every droplet carrying ``tag`` (all pages). A droplet deleted moments ago may still be listed."""
        if not tag:
            raise InputError("a tag to look droplets up by must not be empty")
        return self.list_droplets(tag_name=tag)

    def create_droplet(self, req: DropletCreateRequest) -> Droplet:
        return self._send("POST", "/v2/droplets", body=req, model=DropletEnvelope).droplet

    def delete_droplet(self, droplet_id: int) -> None:
        self._send("DELETE", f"/v2/droplets/{_id(droplet_id)}", model=None)

    # --- actions ---------------------------------------------------------------------------------

    def create_droplet_snapshot(self, droplet_id: int, name: str) -> Action:
        """Start a snapshot action. Its ``resource_id`` is the droplet; find the snapshot by name."""
        return self.post_droplet_action(droplet_id, SnapshotActionRequest(name=name))

    def post_droplet_action(self, droplet_id: int, req: DropletActionRequest) -> Action:
        path = f"/v2/droplets/{_id(droplet_id)}/actions"
        return self._send("POST", path, body=req, model=ActionEnvelope).action

    def get_action(self, action_id: int) -> Action:
        return self._send("GET", f"/v2/actions/{_id(action_id)}", model=ActionEnvelope).action

    def list_droplet_actions(self, droplet_id: int, *, max_pages: int | None = 2) -> list[Action]:
        """The droplet's actions, newest first as the API returns them; ``max_pages=None`` for all."""
        path = f"/v2/droplets/{_id(droplet_id)}/actions"
        pages = self._paginate(path, {}, ActionPage, max_pages=max_pages)
        return [action for page in pages for action in page.actions]

    # --- snapshots -------------------------------------------------------------------------------

    def list_droplet_snapshots(self, droplet_id: int) -> list[Snapshot]:
        """Every snapshot of the droplet. A new snapshot appears here seconds after its action
        completes and lingers briefly after it is deleted: poll, do not conclude from one look."""
        path = f"/v2/droplets/{_id(droplet_id)}/snapshots"
        pages = self._paginate(path, {}, SnapshotPage, max_pages=None)
        # The per-droplet listing omits the origin; fill it in so callers see the same shape as
        # /v2/snapshots/{id}.
        return [
            snap.model_copy(update={"resource_id": str(droplet_id), "resource_type": "droplet"})
            if snap.resource_id is None
            else snap
            for page in pages
            for snap in page.snapshots
        ]

    def find_droplet_snapshot_by_name(self, droplet_id: int, name: str) -> Snapshot | None:
        """The droplet's snapshot named ``name`` (the oldest if there are several), or None."""
        matches = sorted(
            (s for s in self.list_droplet_snapshots(droplet_id) if s.name == name),
            key=lambda s: s.created_at,
        )
        if len(matches) > 1:
            logger.warning(
                "droplet %s has %d snapshots named %r; using the oldest, %s",
                droplet_id,
                len(matches),
                name,
                matches[0].id,
            )
        return matches[0] if matches else None

    def list_snapshots(self) -> list[Snapshot]:
        """Every droplet snapshot in the account, whatever became of its droplet."""
        pages = self._paginate("/v2/snapshots", {"resource_type": "droplet"}, SnapshotPage, max_pages=None)
        return [snap for page in pages for snap in page.snapshots]

    def find_snapshot_by_name(self, name: str) -> Snapshot | None:
        """The account's droplet snapshot named ``name`` (the oldest if several), or None."""
        matches = sorted((s for s in self.list_snapshots() if s.name == name), key=lambda s: s.created_at)
        return matches[0] if matches else None

    def get_snapshot(self, snapshot_id: str) -> Snapshot:
        path = f"/v2/snapshots/{_path_segment(snapshot_id)}"
        return self._send("GET", path, model=SnapshotEnvelope).snapshot

    def delete_snapshot(self, snapshot_id: str) -> None:
        """Delete a snapshot. Raises ProviderNotFoundError when it is already gone (an undo's success)."""
        self._send("DELETE", f"/v2/snapshots/{_path_segment(snapshot_id)}", model=None)

    # --- domain records --------------------------------------------------------------------------

    def list_domain_records(
        self, domain: str, *, name: str | None = None, type: str | None = None
    ) -> list[DomainRecord]:
        """The domain's records, all pages. ``name`` is the *full* name (``www.example.com``, or the
        domain itself for ``@`` records), as the API's filter wants it; ``type`` one of
        ``DOMAIN_RECORD_TYPES`` (e.g. ``"A"``)."""
        if type is not None and type not in DOMAIN_RECORD_TYPES:
            raise InputError(
                f"a DNS record type must be one of {', '.join(DOMAIN_RECORD_TYPES)}, not {type!r}"
            )
        params = {k: v for k, v in (("name", name), ("type", type)) if v is not None}
        pages = self._paginate(_domain_records_path(domain), params, DomainRecordPage, max_pages=None)
        return [record for page in pages for record in page.domain_records]

    def create_domain_record(self, domain: str, req: DomainRecordCreateRequest) -> DomainRecord:
        """Create a record. A POST: an ambiguous outcome is ``AmbiguousWriteError`` and is never
        re-sent (do not count on the API to deduplicate records); look the record up by name and data."""
        return self._send(
            "POST", _domain_records_path(domain), body=req, model=DomainRecordEnvelope
        ).domain_record

    def get_domain_record(self, domain: str, record_id: int) -> DomainRecord:
        path = f"{_domain_records_path(domain)}/{_id(record_id)}"
        return self._send("GET", path, model=DomainRecordEnvelope).domain_record

    def delete_domain_record(self, domain: str, record_id: int) -> None:
        """Delete a record. Raises ProviderNotFoundError when it is already gone (an undo's success)."""
        self._send("DELETE", f"{_domain_records_path(domain)}/{_id(record_id)}", model=None)

    # --- the transport edge ----------------------------------------------------------------------

    def _paginate(
        self, path: str, params: dict[str, str], model: type[P], *, max_pages: int | None
    ) -> Iterator[P]:
        query: dict[str, str | int] = {**params, "per_page": PER_PAGE}
        seen: set[tuple[str, frozenset[tuple[str, str]]]] = set()
        for number in range(1, MAX_PAGES + 1):
            seen.add(_page_key(path, query))
            page = self._send("GET", path, params=query, model=model)
            yield page
            next_url = page.next_url
            if next_url is None or (max_pages is not None and number >= max_pages):
                return
            path, query = self._follow_link(next_url)
            query.setdefault("per_page", PER_PAGE)
            if _page_key(path, query) in seen:
                break
        raise self._error(
            ProviderResponseError,
            f"GET {path}: the provider's pagination links loop or exceed {MAX_PAGES} pages;"
            " the listing is incomplete, report it to the provider",
        )

    def _follow_link(self, url: str) -> tuple[str, dict[str, str | int]]:
        # Follow by path only: the token must never go to a host other than base_url.
        parts = urlsplit(url)
        path = parts.path
        prefix = self._http.base_url.path.rstrip("/")
        if prefix and path.startswith(prefix + "/"):
            path = path[len(prefix) :]
        if not path.startswith("/v2/"):
            raise self._error(
                ProviderResponseError,
                f"the provider sent a pagination link outside /v2/ ({path!r}); refusing to follow it",
            )
        return path, dict(parse_qsl(parts.query))

    @overload
    def _send(
        self,
        method: Method,
        path: str,
        *,
        model: type[M],
        params: dict[str, str | int] | None = None,
        body: BaseModel | None = None,
    ) -> M: ...

    @overload
    def _send(
        self,
        method: Method,
        path: str,
        *,
        model: None,
        params: dict[str, str | int] | None = None,
        body: BaseModel | None = None,
    ) -> None: ...

    def _send(
        self,
        method: Method,
        path: str,
        *,
        model: type[M] | None,
        params: dict[str, str | int] | None = None,
        body: BaseModel | None = None,
    ) -> M | None:
        where = f"{method} {path}"
        self._refuse_an_unsendable_token(where)
        payload = body.model_dump(mode="json", exclude_none=True) if body is not None else None
        idempotent = method in _IDEMPOTENT
        tries = 0
        rate_limit_waited = 0.0
        # The deadline is for failures, not for the provider's rate limit: 429 waits have their own
        # budget (max_rate_limit_wait), so the policy's clock does not see them.
        clock = self._retry.clock
        policy = self._retry.replace(clock=lambda: clock() - rate_limit_waited)

        def attempt() -> M | None:
            """One try, through any 429s. A retryable failure is ProviderUnavailableError."""
            nonlocal tries, rate_limit_waited
            tries += 1
            while True:
                if self._before_send is not None:
                    self._before_send()
                if self._budget is not None:
                    asked = time.monotonic()
                    self._budget.acquire()
                    RATE_BUDGET_WAIT.observe(
                        time.monotonic() - asked, priority=current_priority().name.lower()
                    )
                request = self._build(where, method, path, params, payload)
                unsendable: str | None = None
                response: httpx.Response | None = None
                sent = time.monotonic()
                try:
                    response = self._http.send(request)
                except httpx.LocalProtocolError as exc:
                    # h11 refusing our own request (an illegal header value): its text quotes it.
                    unsendable = type(exc).__name__
                except httpx.TransportError as exc:
                    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    if not idempotent and not isinstance(exc, _NOT_SENT):
                        raise self._error(
                            AmbiguousWriteError,
                            f"{where} failed with {what} after the request may have reached the provider;"
                            " it may or may not have been applied. Do not resend it: look the resource up"
                            " by its idempotency key.",
                        ) from exc
                    raise self._error(
                        ProviderUnavailableError,
                        f"{where} failed with {what} ({tries} attempts); the provider could not"
                        " be reached: try again later.",
                    ) from exc
                except httpx.HTTPError as exc:  # e.g. a body that cannot be decoded
                    raise self._error(
                        ProviderResponseError,
                        f"{where}: the response could not be read ({type(exc).__name__}: {exc});"
                        " report it with the time of the request.",
                    ) from exc
                finally:
                    if response is not None:
                        self._provider_clock.observe(response.headers.get("date"))
                    if self._budget is not None:
                        # Answered or not (a lost response was counted all the same), the request
                        # is counted from now on: the provider counted it no later than this.
                        self._budget.observe(response.headers if response is not None else {})
                    if unsendable is None:  # it left this process: count it, answered or not
                        PROVIDER_REQUEST_DURATION.observe(time.monotonic() - sent, method=method)
                        PROVIDER_REQUESTS.inc(
                            method=method,
                            status_class=status_class(response.status_code if response is not None else None),
                        )
                if unsendable is not None:
                    # Raised outside the handler, so the cause is neither printed nor kept as context.
                    raise self._unsendable(where, unsendable)

                assert response is not None  # every path without one raised above
                status = response.status_code
                logger.debug("%s %s -> %s", method, path, status)

                if 200 <= status < 300:
                    return self._parse(where, response, model)

                if status == 429:
                    PROVIDER_RATE_LIMITED.inc(method=method)
                    wait = _rate_limit_wait(response.headers)
                    if wait is None:
                        wait = policy.backoff(1)
                    wait = max(wait, MIN_RATE_LIMIT_WAIT)
                    if rate_limit_waited + wait > self._max_rate_limit_wait:
                        raise self._error(
                            RateLimitedError,
                            f"{where}: rate limited (HTTP 429) for longer than the client's"
                            f" {self._max_rate_limit_wait:.0f}s wait budget; the request was not applied,"
                            f" retry after {wait:.0f}s or lower the request rate.",
                            retry_after=wait,
                            status_code=status,
                            request_id=_error_body(response).request_id,
                        )
                    logger.info("%s rate limited; waiting %.1fs", where, wait)
                    policy.sleep(wait)
                    rate_limit_waited += wait
                    continue

                if status >= 500:
                    error = _error_body(response)
                    detail = _describe(status, error)
                    if not idempotent:
                        raise self._error(
                            AmbiguousWriteError,
                            f"{where} failed with {detail}; the provider may or may not have applied it."
                            " Do not resend it: look the resource up by its idempotency key.",
                            status_code=status,
                            request_id=error.request_id,
                        )
                    raise self._error(
                        ProviderUnavailableError,
                        f"{where} failed with {detail} ({tries} attempts); the provider is having"
                        " trouble: try again later.",
                        status_code=status,
                        request_id=error.request_id,
                    )

                raise self._rejection(where, response)

        def log_retry(exc: BaseException, failures: int, delay: float) -> None:
            status = getattr(exc, "status_code", None)
            if status is not None:
                logger.warning("%s -> %s; retrying in %.1fs", where, status, delay)
            else:
                cause = type(exc.__cause__).__name__ if exc.__cause__ is not None else type(exc).__name__
                logger.warning("%s failed with %s; retrying in %.1fs", where, cause, delay)

        return policy.run(attempt, on_retry=log_retry)

    def _build(
        self,
        where: str,
        method: Method,
        path: str,
        params: dict[str, str | int] | None,
        payload: object,
    ) -> httpx.Request:
        """The request, or an error that does not quote it: httpx's own (a UnicodeEncodeError of the
        Authorization header, say) carries the header value, token included, in its text or fields."""
        try:
            return self._http.build_request(
                method, path, params=params, json=payload, headers=self._headers()
            )
        except Exception as exc:
            problem = type(exc).__name__
        # Outside the handler: the new error has no __context__ pointing back at httpx's.
        raise self._unsendable(where, problem)

    def _refuse_an_unsendable_token(self, where: str) -> None:
        """ConfigurationError, before anything is built, for a token no header can carry.

        The constructor refuses such a token already; this is checked again on every call because
        httpx and httpcore quote a header value they refuse, in their exceptions and in their own
        DEBUG log records, where no redaction of ours can reach.
        """
        try:
            check_token(self._token.get_secret_value(), "the client's DigitalOcean token")
        except ConfigurationError as exc:
            message = f"{where} was not sent: {exc}"
        else:
            return
        raise ConfigurationError(message)

    def _unsendable(self, where: str, problem: str) -> ProviderError:
        """A request httpx would not build or send although the token is fine: a bug of ours."""
        return self._error(
            ProviderError,
            f"{where} was not sent: httpx refused to build or send it ({problem}); nothing reached"
            " the provider. This is a bug in the request: report it with the time of the request.",
        )

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self._token.get_secret_value()}",
            "User-Agent": USER_AGENT,
            "Content-Type": "application/json",
            "Accept": "application/json",
        }

    def _parse(self, where: str, response: httpx.Response, model: type[M] | None) -> M | None:
        if model is None:
            return None
        kind = response.headers.get("content-type", "")
        if response.content and "json" not in kind.lower():
            # DigitalOcean answers JSON, always: a web page with a 2xx is someone else (a captive
            # portal, SAGAS_DO_API_URL pointing at a web site), so the request never reached it.
            raise self._error(
                ProviderNotReachedError,
                f"{where}: HTTP {response.status_code} with content-type {kind[:80]!r}, not DigitalOcean's"
                " JSON: something else answered at SAGAS_DO_API_URL, and the request did not reach the"
                " provider; check the URL (and any proxy).",
                status_code=response.status_code,
            )
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(part) for part in first["loc"]) or "body"
            # A 2xx to a POST means the write was applied even though we cannot read the result.
            advice = (
                " The write was accepted: look the resource up by its idempotency key, do not resend it."
                if where.startswith("POST")
                else " The API may have changed or a proxy answered: report it with the request id."
            )
            raise self._error(
                ProviderResponseError,
                f"{where}: HTTP {response.status_code} with a body that is not a {model.__name__}"
                f" ({exc.error_count()} problems, first at {loc}: {first['msg']};"
                f" content-type {response.headers.get('content-type', 'none')!r}).{advice}",
                status_code=response.status_code,
                request_id=response.headers.get("x-request-id"),
            ) from exc

    def _rejection(self, where: str, response: httpx.Response) -> ProviderError:
        status = response.status_code
        error = _error_body(response)
        detail = _describe(status, error)
        kw: dict[str, object] = {"status_code": status, "request_id": error.request_id}
        if status == 404:
            return self._error(
                ProviderNotFoundError,
                f"{where}: {detail}; the resource does not exist (for an undo, it is already gone).",
                **kw,
            )
        if status == 422 and "pending event" in (error.message or "").lower():
            return self._error(
                PendingEventError,
                f"{where}: {detail}; another action is still running on the droplet: wait for it"
                " to finish and try again.",
                **kw,
            )
        if status in (401, 403):
            advice = "check that the token for this purpose is valid and has the needed scope."
        else:
            advice = "the request is wrong as sent: sending it again unchanged will fail again."
        return self._error(ProviderRejectedError, f"{where}: {detail}; {advice}", **kw)

    def _error(self, cls: type[ProviderError], message: str, **kw: object) -> ProviderError:
        # Belt and braces: nothing we build a message from should hold the token, but make sure.
        secret = self._token.get_secret_value()
        return cls(message.replace(secret, "[redacted]"), **kw)  # type: ignore[arg-type]


def _id(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"a DigitalOcean id must be a positive integer, not {value!r}")
    return value


def _domain_records_path(domain: str) -> str:
    name = domain.strip().rstrip(".") if isinstance(domain, str) else ""
    if not name or "/" in name or any(c.isspace() for c in name):
        raise InputError(f"a domain name must be a non-empty name like example.com, not {domain!r}")
    return f"/v2/domains/{_path_segment(name)}/records"


def _page_key(path: str, query: dict[str, str | int]) -> tuple[str, frozenset[tuple[str, str]]]:
    merged = {"page": "1", **{key: str(value) for key, value in query.items()}}
    return path, frozenset(merged.items())


def _path_segment(value: str) -> str:
    if not value:
        raise InputError("a DigitalOcean id must not be empty")
    return quote(str(value), safe="")


def _error_body(response: httpx.Response) -> ErrorBody:
    """DigitalOcean's error fields, or an empty ErrorBody for an HTML page or an empty body."""
    try:
        error = ErrorBody.model_validate_json(response.content)
    except ValidationError:
        error = ErrorBody()
    if error.request_id is None and "x-request-id" in response.headers:
        error = error.model_copy(update={"request_id": response.headers["x-request-id"]})
    return error


def _describe(status: int, error: ErrorBody) -> str:
    text = f"HTTP {status}"
    if error.id:
        text += f" {error.id[:80]}"
    if error.message:
        text += f": {error.message[:300]}"
    if error.request_id:
        text += f" (request id {error.request_id[:80]})"
    return text


def _rate_limit_wait(headers: httpx.Headers) -> float | None:
    """Seconds a 429 asks us to wait: ``retry-after`` (seconds or HTTP date), else ``ratelimit-reset``."""
    retry_after = headers.get("retry-after")
    if retry_after:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(retry_after).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    reset = headers.get("ratelimit-reset")
    if reset:
        try:
            return max(0.0, float(reset) - time.time())
        except ValueError:
            pass
    return None
