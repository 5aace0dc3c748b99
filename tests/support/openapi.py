"""DigitalOcean's official OpenAPI description, and openapi-core's Request/Response protocols over httpx.

Both sides are checked against the one spec: the client's requests (``tests/test_do_client.py``, whose
fake server validates them) and the simulator's answers (``tests/test_simulator_openapi.py``). The spec
is read, fixed for its one quirk and parsed once per test session.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from werkzeug.datastructures import Headers, ImmutableMultiDict

SPEC_PATH = Path(__file__).parent.parent / "spec" / "do-droplet-lifecycle.openapi.json"
SPEC_SERVER = "https://api.digitalocean.com"


def raw_spec() -> dict[str, Any]:
    """The spec file as it is, quirk and all (a fresh copy each call)."""
    return dict(json.loads(SPEC_PATH.read_text()))


def fix_yaml_off(node: Any) -> None:
    """Spec quirk: the upstream YAML lists the droplet status enum as ``[new, active, off, archive]``
    and a YAML 1.1 loader turned the bare ``off`` into ``false`` when the spec was converted to JSON. The
    real API (and its own prose: "off") reports ``"status": "off"``, so a powered-off droplet would fail
    validation. We restore the string in exactly that enum and nowhere else (see
    ``test_simulator_openapi.py``'s test that the quirk is still upstream)."""
    if isinstance(node, dict):
        enum = node.get("enum")
        if isinstance(enum, list) and "active" in enum and False in enum:
            node["enum"] = ["off" if v is False else v for v in enum]
        for value in node.values():
            fix_yaml_off(value)
    elif isinstance(node, list):
        for value in node:
            fix_yaml_off(value)


@cache
def _fixed_spec() -> dict[str, Any]:
    spec = raw_spec()
    fix_yaml_off(spec)
    return spec


def fixed_spec() -> dict[str, Any]:
    """The spec with its quirk fixed, as a dict (a fresh copy each call, to read examples from)."""
    return copy.deepcopy(_fixed_spec())


@cache
def load_openapi() -> OpenAPI:
    """The spec with its quirk fixed, parsed (and itself validated) once per session."""
    return OpenAPI.from_dict(_fixed_spec())


class OpenAPIRequest:
    """An ``httpx.Request`` in openapi-core's Request protocol.

    ``host_url`` is the server the request is checked as sent to: by default the request's own
    (so a request to a host the spec does not name fails), or ``SPEC_SERVER`` for a request sent to a
    stand-in such as the simulator (same path and query)."""

    def __init__(self, request: httpx.Request, *, host_url: str | None = None) -> None:
        self.request = request
        self._host_url = host_url or f"{request.url.scheme}://{request.url.netloc.decode()}"
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(parse_qs(request.url.query.decode())),
            header=Headers(list(request.headers.items())),
            cookie=ImmutableMultiDict(),
        )

    @property
    def host_url(self) -> str:
        return self._host_url

    @property
    def path(self) -> str:
        return self.request.url.path

    @property
    def method(self) -> str:
        return self.request.method.lower()

    @property
    def body(self) -> bytes | None:
        return self.request.content or None

    @property
    def content_type(self) -> str:
        return str(self.request.headers.get("content-type", "")).lower()


class OpenAPIResponse:
    """An ``httpx.Response`` in openapi-core's Response protocol."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response

    @property
    def status_code(self) -> int:
        return self.response.status_code

    @property
    def content_type(self) -> str:
        return str(self.response.headers.get("content-type", "")).lower()

    @property
    def headers(self) -> Headers:
        return Headers(list(self.response.headers.items()))

    @property
    def data(self) -> bytes | None:
        return self.response.content or None
