"""The ``/_sim`` control endpoints: faults, live config, state dump, request journal, reset, seeding.

No authentication, no rate limiting, no fault injection. Documented with curl examples in
``docs/simulator.md``.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .config import SimulatorConfig
from .errors import ApiError, bad_request
from .faults import FaultRegistry, FaultRule
from .journal import RequestJournal
from .world import World


class Controlled(Protocol):
    """What the control routes act on: ``SimulatorApp`` is one. Named here rather than imported from
    ``app`` so that ``app`` (which builds these routes) and this module do not import each other."""

    world: World
    faults: FaultRegistry
    journal: RequestJournal

    @property
    def config(self) -> SimulatorConfig: ...

    def update_config(self, **patch: Any) -> SimulatorConfig: ...

    def reset(self) -> None: ...

    def state(self) -> dict[str, Any]: ...


async def _body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise bad_request("The request body is not valid JSON.") from None


def _invalid(exc: ValidationError) -> ApiError:
    details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
    return bad_request(details)


def parse_rules(body: Any) -> list[FaultRule]:
    """A rule, a list of rules, or ``{"rules": [...]}``."""
    if isinstance(body, dict) and "rules" in body:
        body = body["rules"]
    items = body if isinstance(body, list) else [body]
    try:
        return [FaultRule.model_validate(item) for item in items]
    except ValidationError as exc:
        raise _invalid(exc) from None


class ControlApi:
    """Handlers for ``/_sim``, operating on one simulator app."""

    def __init__(self, sim: Controlled) -> None:
        self.sim = sim

    def routes(self) -> list[Route]:
        return [
            Route("/_sim/faults", self.list_faults, methods=["GET"]),
            Route("/_sim/faults", self.add_faults, methods=["POST"]),
            Route("/_sim/faults", self.clear_faults, methods=["DELETE"]),
            Route("/_sim/state", self.state, methods=["GET"]),
            Route("/_sim/requests", self.requests, methods=["GET"]),
            Route("/_sim/config", self.get_config, methods=["GET"]),
            Route("/_sim/config", self.update_config, methods=["POST"]),
            Route("/_sim/reset", self.reset, methods=["POST"]),
            Route("/_sim/droplets", self.seed_droplet, methods=["POST"]),
            Route("/_sim/domains", self.seed_domain, methods=["POST"]),
        ]

    async def list_faults(self, request: Request) -> Response:
        return JSONResponse({"rules": self.sim.faults.list()})

    async def add_faults(self, request: Request) -> Response:
        self.sim.faults.add(parse_rules(await _body(request)))
        return JSONResponse({"rules": self.sim.faults.list()}, status_code=201)

    async def clear_faults(self, request: Request) -> Response:
        self.sim.faults.clear()
        return Response(status_code=204)

    async def state(self, request: Request) -> Response:
        return JSONResponse(self.sim.state())

    async def requests(self, request: Request) -> Response:
        raw = request.query_params.get("since", "0")
        if not raw.isdigit():
            raise bad_request("since must be a request number (a non-negative integer).")
        entries, last = self.sim.journal.since(int(raw))
        return JSONResponse({"requests": entries, "last_seq": last})

    async def get_config(self, request: Request) -> Response:
        return JSONResponse(self.sim.config.model_dump())

    async def update_config(self, request: Request) -> Response:
        body = await _body(request)
        if not isinstance(body, dict):
            raise bad_request("The config patch must be a JSON object.")
        try:
            config = self.sim.update_config(**body)
        except ValidationError as exc:
            raise _invalid(exc) from None
        return JSONResponse(config.model_dump())

    async def reset(self, request: Request) -> Response:
        self.sim.reset()
        return Response(status_code=204)

    async def seed_droplet(self, request: Request) -> Response:
        body = await _body(request)
        if not isinstance(body, dict):
            raise bad_request("The droplet must be a JSON object.")
        return JSONResponse({"droplet": self.sim.world.seed_droplet(body)}, status_code=201)

    async def seed_domain(self, request: Request) -> Response:
        body = await _body(request)
        if not isinstance(body, dict):
            raise bad_request("The domain must be a JSON object.")
        return JSONResponse({"domain": self.sim.world.seed_domain(body)}, status_code=201)
