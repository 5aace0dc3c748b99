"""How one request to DigitalOcean goes out: the client's transport edge, and its one retry layer.

Every HTTP call of ``DigitalOceanClient`` goes through ``Transport.send``, the one place where httpx
exceptions and HTTP statuses become the project's errors (``sagas.errors``; what an answer means is
``sagas.digitalocean.responses``) and the one retry layer of this call path (callers must not stack
another around it):

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

Every request waits for the token's rate budget first, and every response's ``Date`` header feeds
the provider's clock (``provider_clock``). Every request that leaves the process is counted in
``sagas.telemetry`` (by method and answer, with its latency, its 429s and its wait for the rate
budget): in memory, no I/O on this path.

It must never put the token in a message, a log record or a URL, and never send it to a host other
than ``base_url`` (pagination links are followed by path only).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Literal, TypeVar, overload
from urllib.parse import parse_qsl, urlsplit

import httpx
from pydantic import BaseModel, SecretStr

from sagas.digitalocean.models import Page
from sagas.digitalocean.provider_clock import ProviderClock
from sagas.digitalocean.ratelimit import RequestBudget, current_priority
from sagas.digitalocean.responses import describe, error_body, parse, rate_limit_wait, rejection
from sagas.errors import (
    AmbiguousWriteError,
    ConfigurationError,
    ProviderError,
    ProviderResponseError,
    ProviderUnavailableError,
    RateLimitedError,
)
from sagas.retry import RetryPolicy
from sagas.settings import check_token
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

Method = Literal["GET", "POST", "DELETE"]
_IDEMPOTENT: frozenset[str] = frozenset({"GET", "DELETE"})
# Failures where the request never left this process: safe to send again, even a POST.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

M = TypeVar("M", bound=BaseModel)
P = TypeVar("P", bound=Page)


class Transport:
    """One client's requests: its httpx client, token, rate budget, retry policy and provider clock."""

    def __init__(
        self,
        http: httpx.Client,
        token: SecretStr,
        *,
        budget: RequestBudget | None,
        retry: RetryPolicy,
        max_rate_limit_wait: float,
        before_send: Callable[[], None] | None,
        provider_clock: ProviderClock,
    ) -> None:
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
        self._provider_clock = provider_clock

    def paginate(
        self, path: str, params: dict[str, str], model: type[P], *, max_pages: int | None
    ) -> Iterator[P]:
        query: dict[str, str | int] = {**params, "per_page": PER_PAGE}
        seen: set[tuple[str, frozenset[tuple[str, str]]]] = set()
        for number in range(1, MAX_PAGES + 1):
            seen.add(_page_key(path, query))
            page = self.send("GET", path, params=query, model=model)
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
    def send(
        self,
        method: Method,
        path: str,
        *,
        model: type[M],
        params: dict[str, str | int] | None = None,
        body: BaseModel | None = None,
    ) -> M: ...

    @overload
    def send(
        self,
        method: Method,
        path: str,
        *,
        model: None,
        params: dict[str, str | int] | None = None,
        body: BaseModel | None = None,
    ) -> None: ...

    def send(
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
                    return parse(where, response, model, self._error)

                if status == 429:
                    PROVIDER_RATE_LIMITED.inc(method=method)
                    wait = rate_limit_wait(response.headers)
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
                            request_id=error_body(response).request_id,
                        )
                    logger.info("%s rate limited; waiting %.1fs", where, wait)
                    policy.sleep(wait)
                    rate_limit_waited += wait
                    continue

                if status >= 500:
                    error = error_body(response)
                    detail = describe(status, error)
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

                raise rejection(where, response, self._error)

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

    def _error(self, cls: type[ProviderError], message: str, **kw: object) -> ProviderError:
        # Belt and braces: nothing we build a message from should hold the token, but make sure.
        secret = self._token.get_secret_value()
        return cls(message.replace(secret, "[redacted]"), **kw)  # type: ignore[arg-type]


def _page_key(path: str, query: dict[str, str | int]) -> tuple[str, frozenset[tuple[str, str]]]:
    merged = {"page": "1", **{key: str(value) for key, value in query.items()}}
    return path, frozenset(merged.items())
