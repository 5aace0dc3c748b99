"""Page a list the way the real API does: ``page``/``per_page``, ``links.pages`` and ``meta.total``."""

from __future__ import annotations

import math
from typing import Any

from starlette.requests import Request

from .errors import bad_request

DEFAULT_PER_PAGE = 20
MAX_PER_PAGE = 200


def parse_page_param(raw: str | None, name: str, default: int, maximum: int | None = None) -> int:
    """``page``/``per_page``: clamped into range like the real API; non-integers are a 400."""
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer.") from None
    value = max(value, 1)
    return min(value, maximum) if maximum is not None else value


def paginate(request: Request, key: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """``{key: items of the page, "links": {"pages": ...}, "meta": {"total": N}}``.

    ``per_page`` is clamped to 1..200 and ``page`` to at least 1, like the real API. ``links.pages`` holds
    only the links that make sense (no ``first``/``prev`` on page 1, no ``next``/``last`` on the last page),
    as absolute URLs built from the request's own URL; ``links`` is ``{}`` when there is a single page.
    """
    page = parse_page_param(request.query_params.get("page"), "page", 1)
    per_page = parse_page_param(
        request.query_params.get("per_page"), "per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE
    )
    total = len(items)
    last = max(1, math.ceil(total / per_page))
    chunk = items[(page - 1) * per_page : page * per_page]

    def url(n: int) -> str:
        return str(request.url.include_query_params(page=n, per_page=per_page))

    pages: dict[str, str] = {}
    if page > 1:
        pages["first"] = url(1)
        pages["prev"] = url(min(page - 1, last))
    if page < last:
        pages["next"] = url(page + 1)
        pages["last"] = url(last)
    links: dict[str, Any] = {"pages": pages} if pages else {}
    return {key: chunk, "links": links, "meta": {"total": total}}
