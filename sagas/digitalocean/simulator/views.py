"""Render records as the JSON objects the real API returns (shapes follow the official OpenAPI spec)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from .catalog import SIZES, region_json, size_json
from .records import Action, DomainRecord, Droplet, Snapshot


def iso(wall: float) -> str:
    """A Unix timestamp as the API formats it: ``2020-07-21T18:37:44Z``."""
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _networks(d: Droplet) -> dict[str, Any]:
    if d.status == "new":
        return {"v4": [], "v6": []}
    hi, lo = divmod(d.ip_index, 250)
    v4 = [
        {
            "ip_address": f"10.108.{hi}.{lo + 2}",
            "netmask": "255.255.240.0",
            "gateway": "10.108.0.1",
            "type": "private",
        },
        {
            "ip_address": f"159.203.{hi % 250}.{lo + 2}",
            "netmask": "255.255.240.0",
            "gateway": f"159.203.{hi % 250}.1",
            "type": "public",
        },
    ]
    v6: list[dict[str, Any]] = []
    if d.ipv6:
        v6.append(
            {
                "ip_address": f"2604:a880:800:10::{d.ip_index:x}:1001",
                "netmask": 64,
                "gateway": "2604:a880:800:10::1",
                "type": "public",
            }
        )
    return {"v4": v4, "v6": v6}


def droplet_json(d: Droplet, *, locked: bool, snapshot_ids: list[int]) -> dict[str, Any]:
    size = SIZES[d.size_slug]
    features = ["private_networking"]
    if d.backups:
        features.append("backups")
    if d.ipv6:
        features.append("ipv6")
    backup_window = None
    if d.backups:
        day = int(d.created_wall // 86400 + 1) * 86400
        backup_window = {"start": iso(day), "end": iso(day + 23 * 3600)}
    return {
        "id": d.id,
        "name": d.name,
        "memory": size.memory,
        "vcpus": size.vcpus,
        "disk": d.disk,
        "disk_info": [{"type": "local", "size": {"amount": d.disk, "unit": "gib"}}],
        "locked": locked,
        "status": d.status,
        "kernel": None,
        "created_at": iso(d.created_wall),
        "features": features,
        "backup_ids": [],
        "next_backup_window": backup_window,
        "snapshot_ids": snapshot_ids,
        "image": dict(d.image),
        "volume_ids": [],
        "size": size_json(d.size_slug),
        "size_slug": d.size_slug,
        "networks": _networks(d),
        "region": region_json(d.region),
        "tags": list(d.tags),
        "vpc_uuid": f"5a4981aa-9653-4bd1-bef5-{d.region.encode().hex():0>12.12}",
    }


def action_json(a: Action, now: float) -> dict[str, Any]:
    done = a.completed(now)
    return {
        "id": a.id,
        "status": "completed" if done else "in-progress",
        "type": a.type,
        "started_at": iso(a.started_wall),
        "completed_at": iso(a.started_wall + a.duration) if done else None,
        "resource_id": a.droplet_id,
        "resource_type": "droplet",
        "region": region_json(a.region),
        "region_slug": a.region,
    }


def droplet_snapshot_json(s: Snapshot) -> dict[str, Any]:
    """An entry of ``GET /v2/droplets/{id}/snapshots``: the id is an integer."""
    return {
        "id": s.id,
        "name": s.name,
        "distribution": s.distribution,
        "slug": None,
        "public": False,
        "regions": [s.region],
        "created_at": iso(s.created_wall),
        "min_disk_size": s.min_disk_size,
        "size_gigabytes": s.size_gigabytes,
        "type": "snapshot",
    }


def snapshot_json(s: Snapshot) -> dict[str, Any]:
    """An entry of ``GET /v2/snapshots`` / ``GET /v2/snapshots/{id}``: ids are strings."""
    return {
        "id": str(s.id),
        "name": s.name,
        "created_at": iso(s.created_wall),
        "regions": [s.region],
        "resource_id": str(s.droplet_id),
        "resource_type": "droplet",
        "min_disk_size": s.min_disk_size,
        "size_gigabytes": s.size_gigabytes,
        "tags": [],
    }


def snapshot_image_json(s: Snapshot) -> dict[str, Any]:
    """A droplet snapshot seen as an image (``GET /v2/images/{id}``, a droplet's ``image``)."""
    return {
        "id": s.id,
        "name": s.name,
        "distribution": s.distribution,
        "slug": None,
        "public": False,
        "regions": [s.region],
        "created_at": iso(s.created_wall),
        "min_disk_size": s.min_disk_size,
        "size_gigabytes": s.size_gigabytes,
        "type": "snapshot",
        "description": "",
        "tags": [],
        "status": "available",
        "error_message": "",
    }


def domain_record_json(r: DomainRecord) -> dict[str, Any]:
    """A domain record: every attribute present, ``null`` where the type does not use it."""
    return {
        "id": r.id,
        "type": r.type,
        "name": r.name,
        "data": r.data,
        "priority": r.priority,
        "port": None,
        "ttl": r.ttl,
        "weight": None,
        "flags": None,
        "tag": None,
    }
