"""The ``/v2`` routes: thin Starlette handlers that parse the request, call the world and shape the reply.

Authentication, rate limiting and fault injection happen before these run (see ``app.py``); errors are
raised as ``ApiError`` and rendered there.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .dns import parse_type_filter
from .errors import bad_request, not_found
from .pagination import paginate
from .world import World


def parse_id(raw: str) -> int:
    """A positive integer path id; anything else names nothing (404)."""
    if not raw.isdigit() or int(raw) < 1:
        raise not_found()
    return int(raw)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise bad_request("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    return body


def _no_content() -> Response:
    return Response(status_code=204)


class V2Api:
    """Handlers for every simulated ``/v2`` endpoint, bound to one world."""

    def __init__(self, world: World) -> None:
        self.world = world

    def routes(self) -> list[Route]:
        r = Route
        return [
            r("/v2/actions", self.list_actions, methods=["GET"]),
            r("/v2/actions/{action_id}", self.get_action, methods=["GET"]),
            r("/v2/droplets", self.list_droplets, methods=["GET"]),
            r("/v2/droplets", self.create_droplets, methods=["POST"]),
            r("/v2/droplets", self.delete_droplets_by_tag, methods=["DELETE"]),
            r("/v2/droplets/{droplet_id}", self.get_droplet, methods=["GET"]),
            r("/v2/droplets/{droplet_id}", self.delete_droplet, methods=["DELETE"]),
            r("/v2/droplets/{droplet_id}/snapshots", self.list_droplet_snapshots, methods=["GET"]),
            r("/v2/droplets/{droplet_id}/actions", self.list_droplet_actions, methods=["GET"]),
            r("/v2/droplets/{droplet_id}/actions", self.post_droplet_action, methods=["POST"]),
            r("/v2/droplets/{droplet_id}/actions/{action_id}", self.get_droplet_action, methods=["GET"]),
            r("/v2/snapshots", self.list_snapshots, methods=["GET"]),
            r("/v2/snapshots/{snapshot_id}", self.get_snapshot, methods=["GET"]),
            r("/v2/snapshots/{snapshot_id}", self.delete_snapshot, methods=["DELETE"]),
            r("/v2/images/{image_id}", self.get_image, methods=["GET"]),
            r("/v2/domains/{domain_name}/records", self.list_domain_records, methods=["GET"]),
            r("/v2/domains/{domain_name}/records", self.create_domain_record, methods=["POST"]),
            r("/v2/domains/{domain_name}/records/{record_id}", self.get_domain_record, methods=["GET"]),
            r("/v2/domains/{domain_name}/records/{record_id}", self.delete_domain_record, methods=["DELETE"]),
        ]

    # ------------------------------------------------------------ actions

    async def list_actions(self, request: Request) -> Response:
        return JSONResponse(paginate(request, "actions", self.world.list_actions()))

    async def get_action(self, request: Request) -> Response:
        action_id = parse_id(request.path_params["action_id"])
        return JSONResponse({"action": self.world.get_action(action_id)})

    # ------------------------------------------------------------ droplets

    async def list_droplets(self, request: Request) -> Response:
        q = request.query_params
        droplets = self.world.list_droplets(tag_name=q.get("tag_name"), name=q.get("name"))
        return JSONResponse(paginate(request, "droplets", droplets))

    async def create_droplets(self, request: Request) -> Response:
        body = await _json_body(request)
        created = self.world.create_droplets(body)
        base = str(request.base_url).rstrip("/")
        links = {
            "actions": [
                {"id": action_id, "rel": "create", "href": f"{base}/v2/actions/{action_id}"}
                for _, action_id in created
            ]
        }
        if "names" in body:
            return JSONResponse({"droplets": [d for d, _ in created], "links": links}, status_code=202)
        return JSONResponse({"droplet": created[0][0], "links": links}, status_code=202)

    async def delete_droplets_by_tag(self, request: Request) -> Response:
        tag = request.query_params.get("tag_name")
        if not tag:
            raise bad_request("tag_name is required to delete Droplets in bulk.")
        self.world.delete_droplets_by_tag(tag)
        return _no_content()

    async def get_droplet(self, request: Request) -> Response:
        droplet_id = parse_id(request.path_params["droplet_id"])
        return JSONResponse({"droplet": self.world.get_droplet(droplet_id)})

    async def delete_droplet(self, request: Request) -> Response:
        self.world.delete_droplet(parse_id(request.path_params["droplet_id"]))
        return _no_content()

    async def list_droplet_snapshots(self, request: Request) -> Response:
        droplet_id = parse_id(request.path_params["droplet_id"])
        return JSONResponse(paginate(request, "snapshots", self.world.list_droplet_snapshots(droplet_id)))

    async def list_droplet_actions(self, request: Request) -> Response:
        droplet_id = parse_id(request.path_params["droplet_id"])
        return JSONResponse(paginate(request, "actions", self.world.list_droplet_actions(droplet_id)))

    async def post_droplet_action(self, request: Request) -> Response:
        droplet_id = parse_id(request.path_params["droplet_id"])
        body = await _json_body(request)
        return JSONResponse({"action": self.world.post_action(droplet_id, body)}, status_code=201)

    async def get_droplet_action(self, request: Request) -> Response:
        droplet_id = parse_id(request.path_params["droplet_id"])
        action_id = parse_id(request.path_params["action_id"])
        return JSONResponse({"action": self.world.get_droplet_action(droplet_id, action_id)})

    # ------------------------------------------------------------ snapshots and images

    async def list_snapshots(self, request: Request) -> Response:
        resource_type = request.query_params.get("resource_type")
        if resource_type not in (None, "droplet", "volume"):
            raise bad_request("resource_type must be one of: droplet, volume.")
        return JSONResponse(paginate(request, "snapshots", self.world.list_snapshots(resource_type)))

    async def get_snapshot(self, request: Request) -> Response:
        snapshot_id = parse_id(request.path_params["snapshot_id"])
        return JSONResponse({"snapshot": self.world.get_snapshot(snapshot_id)})

    async def delete_snapshot(self, request: Request) -> Response:
        self.world.delete_snapshot(parse_id(request.path_params["snapshot_id"]))
        return _no_content()

    async def get_image(self, request: Request) -> Response:
        return JSONResponse({"image": self.world.get_image(request.path_params["image_id"])})

    # ------------------------------------------------------------ domain records

    async def list_domain_records(self, request: Request) -> Response:
        q = request.query_params
        records = self.world.list_domain_records(
            request.path_params["domain_name"],
            name=q.get("name") or None,
            type=parse_type_filter(q.get("type")),
        )
        return JSONResponse(paginate(request, "domain_records", records))

    async def create_domain_record(self, request: Request) -> Response:
        body = await _json_body(request)
        record = self.world.create_domain_record(request.path_params["domain_name"], body)
        return JSONResponse({"domain_record": record}, status_code=201)

    async def get_domain_record(self, request: Request) -> Response:
        record_id = parse_id(request.path_params["record_id"])
        record = self.world.get_domain_record(request.path_params["domain_name"], record_id)
        return JSONResponse({"domain_record": record})

    async def delete_domain_record(self, request: Request) -> Response:
        record_id = parse_id(request.path_params["record_id"])
        self.world.delete_domain_record(request.path_params["domain_name"], record_id)
        return _no_content()
