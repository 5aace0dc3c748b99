"""The simulator's ASGI application: the API edge in front of the routes.

For every ``/v2`` request, in this order: note it in the request journal and count it by route, check
``Authorization: Bearer`` (401), apply the token's rate limits (429), consult the fault rules (latency,
500 before or after serving it, HTML 503, injected 429, lost or late response), then run the route and
add ``ratelimit-*`` and ``x-request-id`` headers to its reply. ``/_sim`` requests go straight to the
control routes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import uuid
from collections import Counter
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match, Route
from starlette.types import Message, Receive, Scope, Send

from .api import V2Api
from .config import SimulatorConfig
from .control import ControlApi
from .errors import NOT_FOUND_MESSAGE, ApiError
from .faults import FaultRegistry, FaultRule
from .journal import JournalEntry, RequestJournal
from .ratelimit import RateLimiter
from .world import World

REQUEST_ID_KEY = "sim.request_id"
HTML_503 = (
    b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    b"<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
    b"<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
)


class ResponseLost(Exception):
    """Raised after a partial response to make the server drop the connection (``lose_response``)."""


class _QuietLostResponses(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ResponseLost))


_quiet_filter = _QuietLostResponses()


class Metrics:
    """Request counters for ``/_sim/state`` and tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.requests: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.rate_limited = 0
        self.injected_429 = 0
        self.lost_responses = 0

    def bump(self, name: str, key: str | None = None) -> None:
        with self._lock:
            if key is None:
                setattr(self, name, getattr(self, name) + 1)
            else:
                getattr(self, name)[key] += 1


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            text: str = bytes(value).decode("latin-1")
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


def _error_body(scope: Scope, error_id: str, message: str) -> dict[str, str]:
    return {"id": error_id, "message": message, "request_id": str(scope.get(REQUEST_ID_KEY, uuid.uuid4()))}


class SimulatorApp:
    """The ASGI app. ``world``, ``faults``, ``limiter`` and ``metrics`` are safe to use from other threads."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.world = World(config)
        self.limiter = RateLimiter()
        self.faults = FaultRegistry()
        self.metrics = Metrics()
        self.journal = RequestJournal()
        self._api_routes = V2Api(self.world).routes()
        self.router = Starlette(
            routes=[*self._api_routes, *ControlApi(self).routes()],
            exception_handlers={ApiError: self._api_error, HTTPException: self._http_error},
        )
        logging.getLogger("uvicorn.error").addFilter(_quiet_filter)

    # ------------------------------------------------------------ Python control API

    @property
    def config(self) -> SimulatorConfig:
        return self.world.config

    def update_config(self, **patch: Any) -> SimulatorConfig:
        """Change config fields live (validated); returns the new config."""
        config = self.world.config.updated(patch)
        self.world.set_config(config)
        return config

    def add_faults(self, *rules: FaultRule | dict[str, Any]) -> None:
        self.faults.add([r if isinstance(r, FaultRule) else FaultRule.model_validate(r) for r in rules])

    def reset(self) -> None:
        """Clear resources, faults, counters, the request journal and rate-limit windows (the config stays)."""
        self.world.reset()
        self.faults.reset()
        self.limiter.reset()
        self.metrics.reset()
        self.journal.clear()

    def state(self) -> dict[str, Any]:
        dump = self.world.dump()
        m = self.metrics
        with m._lock:
            counters = {
                "requests": dict(m.requests),
                "statuses": dict(m.statuses),
                "rate_limited_429": m.rate_limited,
                "injected_429": m.injected_429,
                "responses_429": m.statuses.get("429", 0),
                "lost_responses": m.lost_responses,
                "faults_fired": self.faults.fired_total,
                "writes": dump.pop("writes"),
            }
        return {
            **dump,
            "counters": counters,
            "faults": self.faults.list(),
            "config": self.config.model_dump(),
        }

    # ------------------------------------------------------------ error rendering

    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return JSONResponse(_error_body(request.scope, exc.error_id, exc.message), status_code=exc.status)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            body = _error_body(request.scope, "not_found", NOT_FOUND_MESSAGE)
        elif exc.status_code == 405:
            body = _error_body(request.scope, "method_not_allowed", "Method not allowed.")
        else:
            body = _error_body(request.scope, "error", str(exc.detail))
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    # ------------------------------------------------------------ ASGI

    def _route_label(self, scope: Scope) -> str:
        partial: Route | None = None
        for route in self._api_routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route.path
            if match is Match.PARTIAL and partial is None:
                partial = route
        return partial.path if partial else "(unknown)"

    async def _send_body(
        self, send: Send, status: int, body: bytes, content_type: str, headers: dict[str, str]
    ) -> None:
        self.metrics.bump("statuses", str(status))
        raw = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})

    async def _send_json(self, send: Send, status: int, body: Any, headers: dict[str, str]) -> None:
        await self._send_body(send, status, json.dumps(body).encode(), "application/json", headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (scope["path"] == "/v2" or scope["path"].startswith("/v2/")):
            await self.router(scope, receive, send)
            return
        request_id = str(uuid.uuid4())
        scope[REQUEST_ID_KEY] = request_id
        method, path = scope["method"], scope["path"]
        entry = self.journal.open(method, path, bytes(scope.get("query_string", b"")).decode("latin-1"))
        send = self._journaled(send, entry)
        self.metrics.bump("requests", f"{method} {self._route_label(scope)}")
        config = self.config
        token = _bearer(scope)
        if token is None:
            decision = self.limiter.peek(
                None, per_hour=config.rate_limit_per_hour, time_scale=config.time_scale
            )
            body = _error_body(scope, "unauthorized", "Unable to authenticate you")
            await self._send_json(send, 401, body, {**decision.headers(), "x-request-id": request_id})
            return
        decision = self.limiter.hit(
            token,
            per_minute=config.rate_limit_per_minute,
            per_hour=config.rate_limit_per_hour,
            time_scale=config.time_scale,
        )
        headers = {**decision.headers(), "x-request-id": request_id}
        if not decision.allowed:
            self.metrics.bump("rate_limited")
            body = _error_body(scope, "too_many_requests", "API Rate limit exceeded.")
            await self._send_json(send, 429, body, headers)
            return

        plan = self.faults.plan(method, path)
        if plan.kind is not None or plan.latency:
            self.journal.faulted(entry, plan.kind or "latency")
        if plan.latency:
            await asyncio.sleep(plan.latency)
        if plan.kind == "error_500":
            body = _error_body(scope, "server_error", "Server was unable to give you a response.")
            await self._send_json(send, 500, body, headers)
        elif plan.kind == "error_500_applied":
            await self._error_after_serving(scope, receive, send, headers)
        elif plan.kind == "error_503_html":
            await self._send_body(send, 503, HTML_503, "text/html", {})
        elif plan.kind == "rate_limit_429":
            assert plan.rule is not None
            self.metrics.bump("injected_429")
            wait = str(max(1, math.ceil(plan.rule.seconds)))
            body = _error_body(scope, "too_many_requests", "API Rate limit exceeded.")
            await self._send_json(
                send, 429, body, {**headers, "ratelimit-remaining": "0", "retry-after": wait}
            )
        elif plan.kind == "lose_response":
            await self._lose_response(scope, receive, send, headers)
        elif plan.kind == "slow_response":
            assert plan.rule is not None
            await self._slow_response(scope, receive, send, headers, plan.rule.seconds)
        else:
            try:
                await self.router(scope, receive, self._decorating(send, headers))
            except ClientDisconnect:
                return  # the client hung up before its request was read (a runner killed mid-call)

    def _journaled(self, send: Send, entry: JournalEntry) -> Send:
        async def journaled(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.journal.answered(entry, int(message["status"]))
            await send(message)

        return journaled

    def _decorating(self, send: Send, headers: dict[str, str]) -> Send:
        extra = [(k.encode(), v.encode()) for k, v in headers.items()]

        async def decorated(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.bump("statuses", str(message["status"]))
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        return decorated

    async def _error_after_serving(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str]
    ) -> None:
        """Serve the request (a write the API accepts is applied), then answer a JSON 500 instead."""

        async def discard(message: Message) -> None:
            pass

        await self.router(scope, receive, discard)
        body = _error_body(scope, "server_error", "Server was unable to give you a response.")
        await self._send_json(send, 500, body, headers)

    async def _slow_response(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str], seconds: float
    ) -> None:
        """Apply the request at once, then hold the reply back: a window to kill the caller in."""
        messages: list[Message] = []

        async def capture(message: Message) -> None:
            messages.append(message)

        await self.router(scope, receive, self._decorating(capture, headers))
        await asyncio.sleep(seconds)
        for message in messages:
            await send(message)

    async def _lose_response(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str]
    ) -> None:
        """Apply the request, then start the reply, send half its body and break the connection."""
        status, chunks = 200, []

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.router(scope, receive, capture)
        body = b"".join(chunks)
        if not body or status in (204, 304):
            status, body = 200, json.dumps({"request_id": scope[REQUEST_ID_KEY], "status": "lost"}).encode()
        self.metrics.bump("lost_responses")
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw += [(k.encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body[: max(1, len(body) // 2)], "more_body": True})
        raise ResponseLost(f"{scope['method']} {scope['path']}: response dropped on purpose")


def create_app(config: SimulatorConfig | None = None) -> SimulatorApp:
    """A fresh simulator (its own world, faults, limits and counters) as an ASGI app."""
    return SimulatorApp(config)
