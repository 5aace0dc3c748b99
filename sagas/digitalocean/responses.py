"""What a DigitalOcean response means: a 2xx's body as its model, the project's error for the rest.

The one reading of DigitalOcean's answers (``sagas.digitalocean.transport`` sends the requests):

- 2xx: the body is parsed into a model; a body we cannot parse is ``ProviderResponseError``, and a
  web page answering with a 2xx is ``ProviderNotReachedError`` (something else answered).
- 404 ``ProviderNotFoundError``; 422 "pending event" ``PendingEventError``; other 4xx
  ``ProviderRejectedError`` with DigitalOcean's ``id``/``message``/``request_id`` (``error_body``).
- 429: how long it asks us to wait (``rate_limit_wait``).

Every error is made by the ``error`` the transport passes in, which redacts the token.
"""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from typing import Protocol, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from sagas.digitalocean.models import ErrorBody
from sagas.errors import (
    PendingEventError,
    ProviderError,
    ProviderNotFoundError,
    ProviderNotReachedError,
    ProviderRejectedError,
    ProviderResponseError,
)

M = TypeVar("M", bound=BaseModel)


class MakeError(Protocol):
    """Builds an error of ``cls`` from a message (the transport's, which redacts the token)."""

    def __call__(self, cls: type[ProviderError], message: str, **kw: object) -> ProviderError: ...


def parse(where: str, response: httpx.Response, model: type[M] | None, error: MakeError) -> M | None:
    """A 2xx's body as ``model`` (None when no model is wanted), or the error its body calls for."""
    if model is None:
        return None
    kind = response.headers.get("content-type", "")
    if response.content and "json" not in kind.lower():
        # DigitalOcean answers JSON, always: a web page with a 2xx is someone else (a captive
        # portal, SAGAS_DO_API_URL pointing at a web site), so the request never reached it.
        raise error(
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
        raise error(
            ProviderResponseError,
            f"{where}: HTTP {response.status_code} with a body that is not a {model.__name__}"
            f" ({exc.error_count()} problems, first at {loc}: {first['msg']};"
            f" content-type {response.headers.get('content-type', 'none')!r}).{advice}",
            status_code=response.status_code,
            request_id=response.headers.get("x-request-id"),
        ) from exc


def rejection(where: str, response: httpx.Response, error: MakeError) -> ProviderError:
    """The error of a 4xx other than 429 (which is waited out, not an error, while the wait allows)."""
    status = response.status_code
    body = error_body(response)
    detail = describe(status, body)
    kw: dict[str, object] = {"status_code": status, "request_id": body.request_id}
    if status == 404:
        return error(
            ProviderNotFoundError,
            f"{where}: {detail}; the resource does not exist (for an undo, it is already gone).",
            **kw,
        )
    if status == 422 and "pending event" in (body.message or "").lower():
        return error(
            PendingEventError,
            f"{where}: {detail}; another action is still running on the droplet: wait for it"
            " to finish and try again.",
            **kw,
        )
    if status in (401, 403):
        advice = "check that the token for this purpose is valid and has the needed scope."
    else:
        advice = "the request is wrong as sent: sending it again unchanged will fail again."
    return error(ProviderRejectedError, f"{where}: {detail}; {advice}", **kw)


def error_body(response: httpx.Response) -> ErrorBody:
    """DigitalOcean's error fields, or an empty ErrorBody for an HTML page or an empty body."""
    try:
        error = ErrorBody.model_validate_json(response.content)
    except ValidationError:
        error = ErrorBody()
    if error.request_id is None and "x-request-id" in response.headers:
        error = error.model_copy(update={"request_id": response.headers["x-request-id"]})
    return error


def describe(status: int, error: ErrorBody) -> str:
    text = f"HTTP {status}"
    if error.id:
        text += f" {error.id[:80]}"
    if error.message:
        text += f": {error.message[:300]}"
    if error.request_id:
        text += f" (request id {error.request_id[:80]})"
    return text


def rate_limit_wait(headers: httpx.Headers) -> float | None:
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
