"""The simulated DigitalOcean account: droplets, actions, snapshots, tags, domains and DNS records, and how
they change over time.

Every public method takes the lock, brings the world up to date and returns JSON-ready dicts, so the
HTTP layer stays thin and tests may read the world from another thread. Nothing runs in the background:
timed transitions (an action completing, a droplet's status changing, a snapshot appearing in the
listings, a deleted droplet or snapshot disappearing) are kept as timestamps or as events in a heap that
``_advance`` replays, in time order, whenever the world is looked at.

Why one file: ``World`` is one lock over one account's state and one event heap; every resource's
transitions are replayed by the same ``_advance``, so splitting by resource would scatter that lock.
"""

from __future__ import annotations

import heapq
import itertools
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from .catalog import (
    BASE_IMAGES,
    BASE_IMAGES_BY_ID,
    DEFAULT_REGION,
    REGIONS,
    SIZES,
    base_image_json,
)
from .config import SimulatorConfig
from .dns import NAME_SERVERS, RecordSpec, normalize_domain, parse_domain_name, parse_record
from .errors import ApiError, not_found, unprocessable
from .records import Action, Domain, DomainRecord, Droplet, Snapshot
from .views import (
    action_json,
    domain_record_json,
    droplet_json,
    droplet_snapshot_json,
    iso,
    snapshot_image_json,
    snapshot_json,
)

ACTION_TYPES = (
    "enable_backups",
    "disable_backups",
    "reboot",
    "power_cycle",
    "shutdown",
    "power_off",
    "power_on",
    "restore",
    "password_reset",
    "resize",
    "rebuild",
    "rename",
    "change_kernel",
    "enable_ipv6",
    "snapshot",
)
NAME_RE = re.compile(r"^[a-zA-Z0-9]?[a-z0-9A-Z.\-]*[a-z0-9A-Z]$")
TAG_RE = re.compile(r"^[a-zA-Z0-9_\-:]+$")
INVALID_NAME = "Only valid hostname characters are allowed. (a-z, A-Z, 0-9, . and -)"
# DigitalOcean's own words for the refusals below; docs/simulator.md names the source of each.
PENDING_EVENT = "Droplet already has a pending event."
POWERED_ON = "Droplet is currently on. Please power it off to run this event."
ALREADY_POWERED_OFF = "Droplet is already powered off."
ALREADY_THIS_SIZE = "The droplet is already set to this size."
SMALLER_DISK = "Size can not decrease size of Droplet's disk image"
BACKUPS_ALREADY_DISABLED = "Backups have already been disabled on this Droplet."

FIRST_DROPLET_ID = 3164444
FIRST_ACTION_ID = 36804636
FIRST_SNAPSHOT_ID = 67512819
FIRST_RECORD_ID = 28448429
CNAME_CONFLICT = "CNAME records cannot share a name with other records."


class World:
    """All simulated resources of one account, guarded by one lock."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self._lock = threading.RLock()
        self.config = config or SimulatorConfig()
        # Ids keep growing across resets so that a stale id never names a new resource.
        self._droplet_ids = itertools.count(FIRST_DROPLET_ID)
        self._action_ids = itertools.count(FIRST_ACTION_ID)
        self._snapshot_ids = itertools.count(FIRST_SNAPSHOT_ID)
        self._record_ids = itertools.count(FIRST_RECORD_ID)
        self._seq = itertools.count()
        self._clear()

    def _clear(self) -> None:
        self._droplets: dict[int, Droplet] = {}
        self._actions: dict[int, Action] = {}
        self._snapshots: dict[int, Snapshot] = {}
        self._tags: set[str] = set()
        self._domains: dict[str, Domain] = {}
        self._events: list[tuple[float, int, Callable[[float], None]]] = []
        self.writes: Counter[str] = Counter()

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def reset(self) -> None:
        """Forget every resource and write counter (ids are not reused)."""
        with self._lock:
            self._clear()

    def set_config(self, config: SimulatorConfig) -> None:
        """Replace the configuration; timings already scheduled keep their old durations."""
        with self._lock:
            self.config = config

    # ---------------------------------------------------------------- time

    def _now(self) -> float:
        now = time.monotonic()
        self._advance(now)
        return now

    def _advance(self, now: float) -> None:
        while self._events and self._events[0][0] <= now:
            at, _, fire = heapq.heappop(self._events)
            fire(at)

    def _schedule(self, at: float, fire: Callable[[float], None]) -> None:
        heapq.heappush(self._events, (at, next(self._seq), fire))

    # ---------------------------------------------------------------- lookups

    def _visible_droplet(self, droplet_id: int, now: float) -> Droplet:
        d = self._droplets.get(droplet_id)
        if d is None or not d.lingering(now):
            raise not_found()
        return d

    def _live_droplet(self, droplet_id: int) -> Droplet:
        d = self._droplets.get(droplet_id)
        if d is None or d.deleted_at is not None:
            raise not_found()
        return d

    def _pending(self, d: Droplet, now: float) -> bool:
        return any(not self._actions[a].completed(now) for a in d.action_ids)

    def _droplet_view(self, d: Droplet, now: float) -> dict[str, Any]:
        locked = any(
            not self._actions[a].completed(now) and self._actions[a].type != "create" for a in d.action_ids
        )
        snapshot_ids = [s.id for s in self._snapshots.values() if s.droplet_id == d.id and s.exists(now)]
        return droplet_json(d, locked=locked, snapshot_ids=snapshot_ids)

    def _resolve_image(self, value: Any, now: float) -> dict[str, Any] | None:
        """The image object for a slug or id (a base image or a visible snapshot), or None."""
        if isinstance(value, str) and not value.isdigit():
            base = BASE_IMAGES.get(value)
            return base_image_json(base) if base else None
        if isinstance(value, bool) or not isinstance(value, int | str):
            return None
        image_id = int(value)
        if image_id in BASE_IMAGES_BY_ID:
            return base_image_json(BASE_IMAGES_BY_ID[image_id])
        snap = self._snapshots.get(image_id)
        if snap is not None and snap.exists(now):
            return snapshot_image_json(snap)
        return None

    # ---------------------------------------------------------------- droplets

    def _new_droplet(self, body: dict[str, Any], name: Any, now: float) -> Droplet:
        if not isinstance(name, str) or len(name) > 255 or not NAME_RE.match(name):
            raise unprocessable(INVALID_NAME)
        region = body.get("region") or DEFAULT_REGION
        if isinstance(region, str) and region not in REGIONS:
            region = next((r for r in sorted(REGIONS) if r.startswith(region)), region)
        if region not in REGIONS:
            raise unprocessable("You specified an invalid region for Droplet creation.")
        size = body.get("size")
        if size not in SIZES:
            raise unprocessable("You specified an invalid size for Droplet creation.")
        image = self._resolve_image(body.get("image"), now)
        if image is None:
            raise unprocessable("You specified an invalid image for Droplet creation.")
        tags = body.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) and TAG_RE.match(t) for t in tags):
            raise unprocessable(
                "Tag names may only contain letters, numbers, colons, dashes and underscores."
            )
        droplet_id = next(self._droplet_ids)
        return Droplet(
            id=droplet_id,
            name=name,
            region=region,
            size_slug=str(size),
            disk=SIZES[str(size)].disk,
            image=image,
            tags=list(dict.fromkeys(tags)),
            created_wall=time.time(),
            ip_index=droplet_id - FIRST_DROPLET_ID,
            backups=bool(body.get("backups")),
            ipv6=bool(body.get("ipv6")),
        )

    def create_droplets(self, body: dict[str, Any]) -> list[tuple[dict[str, Any], int]]:
        """``POST /v2/droplets``: one droplet per name, each with its ``create`` action."""
        with self._lock:
            now = self._now()
            if "names" in body:
                names = body["names"]
                if not isinstance(names, list) or not names or len(names) > 10:
                    raise unprocessable("names must be a list of 1 to 10 droplet names.")
            elif "name" in body:
                names = [body["name"]]
            else:
                raise unprocessable(INVALID_NAME)
            droplets = [self._new_droplet(body, name, now) for name in names]
            out = []
            for d in droplets:
                self._droplets[d.id] = d
                self._tags.update(d.tags)
                action = self._start_action(d, "create", {}, now)
                self.writes[f"droplet:{d.name}"] += 1
                out.append((self._droplet_view(d, now), action.id))
            return out

    def seed_droplet(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a droplet that is already ``active`` (no action, no rate limit)."""
        with self._lock:
            now = self._now()
            d = self._new_droplet(
                {"size": "s-1vcpu-1gb", "image": "ubuntu-22-04-x64", **body}, body.get("name"), now
            )
            d.status = "active"
            self._droplets[d.id] = d
            self._tags.update(d.tags)
            return self._droplet_view(d, now)

    def list_droplets(self, tag_name: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            now = self._now()
            return [
                self._droplet_view(d, now)
                for d in sorted(self._droplets.values(), key=lambda d: d.id)
                if d.lingering(now)
                and (tag_name is None or tag_name in d.tags)
                and (name is None or d.name == name)
            ]

    def get_droplet(self, droplet_id: int) -> dict[str, Any]:
        with self._lock:
            now = self._now()
            return self._droplet_view(self._visible_droplet(droplet_id, now), now)

    def _delete(self, d: Droplet, now: float) -> None:
        d.deleted_at = now
        d.gone_at = now + self.config.wall(self.config.droplet_delete_linger_seconds)
        self._start_action(d, "destroy", {}, now)
        self.writes[f"delete_droplet:{d.id}"] += 1

    def delete_droplet(self, droplet_id: int) -> None:
        with self._lock:
            now = self._now()
            self._delete(self._live_droplet(droplet_id), now)

    def delete_droplets_by_tag(self, tag_name: str) -> int:
        with self._lock:
            now = self._now()
            doomed = [d for d in self._droplets.values() if d.deleted_at is None and tag_name in d.tags]
            for d in doomed:
                self._delete(d, now)
            return len(doomed)

    # ---------------------------------------------------------------- actions

    def _start_action(self, d: Droplet, action_type: str, params: dict[str, Any], now: float) -> Action:
        action = Action(
            id=next(self._action_ids),
            type=action_type,
            droplet_id=d.id,
            region=d.region,
            started_at=now,
            started_wall=time.time(),
            duration=self.config.action_wall_seconds(action_type),
            params=params,
        )
        self._actions[action.id] = action
        d.action_ids.append(action.id)
        self._schedule(action.completes_at, lambda at: self._complete(action, at))
        return action

    def _set_status_later(self, d: Droplet, status: str, completed_at: float) -> None:
        def fire(_: float) -> None:
            d.status = status

        self._schedule(completed_at + self.config.wall(self.config.status_lag_seconds), fire)

    def _complete(self, action: Action, at: float) -> None:
        """Apply an action's effect at the moment it completes."""
        d = self._droplets[action.droplet_id]
        kind, params = action.type, action.params
        if kind == "create":
            if d.status == "new":
                d.status = "active"
        elif kind in ("power_off", "shutdown"):
            self._set_status_later(d, "off", at)
        elif kind in ("power_on", "reboot", "power_cycle"):
            self._set_status_later(d, "active", at)
        elif kind == "resize":
            d.size_slug = params["size"]
            if params.get("disk"):
                d.disk = SIZES[d.size_slug].disk
                d.disk_resized = True
        elif kind in ("rebuild", "restore"):
            d.image = params["image"]
        elif kind == "rename":
            d.name = params["name"]
        elif kind in ("enable_backups", "disable_backups"):
            d.backups = kind == "enable_backups"
        elif kind == "enable_ipv6":
            d.ipv6 = True
        elif kind == "snapshot":
            snap_id = next(self._snapshot_ids)
            self._snapshots[snap_id] = Snapshot(
                id=snap_id,
                name=params["name"],
                droplet_id=d.id,
                region=d.region,
                distribution=str(d.image.get("distribution", "Unknown")),
                min_disk_size=d.disk,
                size_gigabytes=round(1.0 + (snap_id % 300) / 100, 2),
                created_wall=action.started_wall + action.duration,
                visible_at=at + self.config.wall(self.config.snapshot_listing_lag_seconds),
            )

    def _refuse_in_state(self, d: Droplet, kind: str) -> None:
        """422 for an action DigitalOcean refuses in the droplet's present state.

        Only refusals a public source shows are here: a ``shutdown`` of an ``off`` droplet, a
        ``power_on`` of an ``active`` one, a ``snapshot`` or ``enable_ipv6`` of a running one are
        accepted, because the sources disagree or are silent (docs/simulator.md, per action).
        ``status`` is what decides, so a second ``power_off`` inside the status lag is accepted.
        """
        if kind == "power_off" and d.status == "off":
            raise unprocessable(ALREADY_POWERED_OFF)
        if kind == "disable_backups" and not d.backups:
            raise unprocessable(BACKUPS_ALREADY_DISABLED)

    def _action_params(self, d: Droplet, kind: str, body: dict[str, Any], now: float) -> dict[str, Any]:
        """Validate a droplet action's arguments; return what its completion needs."""
        if kind == "snapshot":
            name = body.get("name")
            if name is None:
                name = f"{d.name}-{int(time.time() * 1000)}"
            if not isinstance(name, str) or not name.strip():
                raise unprocessable("Snapshot name must be a non-empty string.")
            return {"name": name}
        if kind == "resize":
            size = body.get("size")
            if size not in SIZES:
                raise unprocessable("You specified an invalid size for Droplet resize.")
            disk = body.get("disk", False)
            if not isinstance(disk, bool):
                raise unprocessable("disk must be a boolean.")
            if d.status != "off":
                raise unprocessable(POWERED_ON)
            if size == d.size_slug:
                raise unprocessable(ALREADY_THIS_SIZE)
            if SIZES[str(size)].disk < d.disk:
                raise unprocessable(SMALLER_DISK)
            return {"size": size, "disk": disk}
        if kind in ("rebuild", "restore"):
            image = self._resolve_image(body.get("image"), now)
            if image is None:
                raise unprocessable(f"You specified an invalid image for Droplet {kind}.")
            if kind == "restore":
                snap = self._snapshots.get(int(image["id"])) if image.get("type") == "snapshot" else None
                if snap is None or snap.droplet_id != d.id:
                    raise unprocessable(
                        "You can only restore a Droplet from one of its snapshots or backups."
                    )
            return {"image": image}
        if kind == "rename":
            name = body.get("name")
            if not isinstance(name, str) or len(name) > 255 or not NAME_RE.match(name):
                raise unprocessable(INVALID_NAME)
            return {"name": name}
        return {}

    def post_action(self, droplet_id: int, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /v2/droplets/{id}/actions``."""
        with self._lock:
            now = self._now()
            d = self._live_droplet(droplet_id)
            kind = body.get("type")
            if kind not in ACTION_TYPES:
                raise unprocessable(f"type must be one of: {', '.join(ACTION_TYPES)}.")
            if self._pending(d, now):
                raise unprocessable(PENDING_EVENT)
            self._refuse_in_state(d, str(kind))
            params = self._action_params(d, str(kind), body, now)
            action = self._start_action(d, str(kind), params, now)
            key = f"snapshot:{params['name']}" if kind == "snapshot" else f"action:{kind}:{d.id}"
            self.writes[key] += 1
            return action_json(action, now)

    def list_droplet_actions(self, droplet_id: int) -> list[dict[str, Any]]:
        with self._lock:
            now = self._now()
            d = self._visible_droplet(droplet_id, now)
            return [action_json(self._actions[a], now) for a in reversed(d.action_ids)]

    def get_droplet_action(self, droplet_id: int, action_id: int) -> dict[str, Any]:
        with self._lock:
            now = self._now()
            self._visible_droplet(droplet_id, now)
            action = self._actions.get(action_id)
            if action is None or action.droplet_id != droplet_id:
                raise not_found()
            return action_json(action, now)

    def list_actions(self) -> list[dict[str, Any]]:
        with self._lock:
            now = self._now()
            return [action_json(a, now) for a in sorted(self._actions.values(), key=lambda a: -a.id)]

    def get_action(self, action_id: int) -> dict[str, Any]:
        with self._lock:
            now = self._now()
            action = self._actions.get(action_id)
            if action is None:
                raise not_found()
            return action_json(action, now)

    # ---------------------------------------------------------------- snapshots and images

    def list_droplet_snapshots(self, droplet_id: int) -> list[dict[str, Any]]:
        with self._lock:
            now = self._now()
            self._visible_droplet(droplet_id, now)
            return [
                droplet_snapshot_json(s)
                for s in sorted(self._snapshots.values(), key=lambda s: s.id)
                if s.droplet_id == droplet_id and s.listed(now)
            ]

    def list_snapshots(self, resource_type: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            now = self._now()
            if resource_type == "volume":
                return []
            return [
                snapshot_json(s)
                for s in sorted(self._snapshots.values(), key=lambda s: s.id)
                if s.listed(now)
            ]

    def _existing_snapshot(self, snapshot_id: int, now: float) -> Snapshot:
        s = self._snapshots.get(snapshot_id)
        if s is None or not s.exists(now):
            raise not_found()
        return s

    def get_snapshot(self, snapshot_id: int) -> dict[str, Any]:
        with self._lock:
            now = self._now()
            return snapshot_json(self._existing_snapshot(snapshot_id, now))

    def delete_snapshot(self, snapshot_id: int) -> None:
        with self._lock:
            now = self._now()
            s = self._existing_snapshot(snapshot_id, now)
            s.deleted_at = now
            s.gone_at = now + self.config.wall(self.config.snapshot_delete_linger_seconds)
            self.writes[f"delete_snapshot:{s.id}"] += 1

    def get_image(self, image: str) -> dict[str, Any]:
        with self._lock:
            now = self._now()
            found = self._resolve_image(image, now)
            if found is None:
                raise not_found()
            return found

    # ---------------------------------------------------------------- domains and DNS records

    def _domain(self, name: str) -> Domain:
        dom = self._domains.get(normalize_domain(name))
        if dom is None:
            raise not_found()
        return dom

    def _add_record(self, dom: Domain, spec: RecordSpec) -> DomainRecord:
        record = DomainRecord(
            id=next(self._record_ids),
            domain=dom.name,
            type=spec.type,
            name=spec.name,
            data=spec.data,
            ttl=spec.ttl,
            priority=spec.priority,
        )
        dom.records[record.id] = record
        return record

    def seed_domain(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /_sim/domains``: a domain with its SOA and NS records (and an apex A for ``ip_address``),
        as ``POST /v2/domains`` would leave it. Not counted as a write."""
        with self._lock:
            name = parse_domain_name(body.get("name"))
            if name in self._domains:
                raise unprocessable(f"The domain {name} already exists.")
            ip = body.get("ip_address")
            dom = Domain(name=name)
            specs = [RecordSpec("SOA", "@", str(dom.ttl), dom.ttl, None)]
            specs += [RecordSpec("NS", "@", ns, dom.ttl, None) for ns in NAME_SERVERS]
            if ip is not None:
                specs.append(parse_record({"type": "A", "name": "@", "data": ip}))
            for spec in specs:
                self._add_record(dom, spec)
            self._domains[name] = dom
            return {"name": name, "ttl": dom.ttl, "zone_file": ""}

    def list_domain_records(
        self, domain: str, *, name: str | None = None, type: str | None = None
    ) -> list[dict[str, Any]]:
        """``GET /v2/domains/{domain}/records``, oldest first; ``name`` is a full name (``www.example.com``)."""
        with self._lock:
            dom = self._domain(domain)
            want = normalize_domain(name) if name is not None else None
            return [
                domain_record_json(r)
                for _, r in sorted(dom.records.items())
                if (want is None or r.fqdn.lower() == want) and (type is None or r.type == type)
            ]

    def create_domain_record(self, domain: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /v2/domains/{domain}/records``: 404 for an unknown domain, 422 for an invalid record."""
        with self._lock:
            dom = self._domain(domain)
            spec = parse_record(body)
            key = spec.name.lower()
            for other in dom.records.values():
                same_name = other.name.lower() == key
                if same_name and "CNAME" in (spec.type, other.type):
                    raise unprocessable(CNAME_CONFLICT)
            record = self._add_record(dom, spec)
            self.writes[f"dns:{record.type}:{record.fqdn}"] += 1
            return domain_record_json(record)

    def get_domain_record(self, domain: str, record_id: int) -> dict[str, Any]:
        with self._lock:
            record = self._domain(domain).records.get(record_id)
            if record is None:
                raise not_found()
            return domain_record_json(record)

    def delete_domain_record(self, domain: str, record_id: int) -> None:
        with self._lock:
            dom = self._domain(domain)
            if dom.records.pop(record_id, None) is None:
                raise not_found()
            self.writes[f"delete_dns_record:{record_id}"] += 1

    # ---------------------------------------------------------------- introspection

    def dump(self) -> dict[str, Any]:
        """Everything, including deleted and not-yet-listed resources (for ``GET /_sim/state``)."""
        with self._lock:
            now = self._now()
            droplets = []
            for d in sorted(self._droplets.values(), key=lambda d: d.id):
                view = self._droplet_view(d, now)
                view["deleted"] = d.deleted_at is not None
                view["visible"] = d.lingering(now)
                view["disk_resized"] = d.disk_resized
                droplets.append(view)
            snapshots = [
                {
                    "id": s.id,
                    "name": s.name,
                    "droplet_id": s.droplet_id,
                    "created_at": iso(s.created_wall),
                    "listed": s.listed(now),
                    "deleted": s.deleted_at is not None,
                }
                for s in sorted(self._snapshots.values(), key=lambda s: s.id)
            ]
            actions = [action_json(a, now) for a in sorted(self._actions.values(), key=lambda a: a.id)]
            return {
                "droplets": droplets,
                "snapshots": snapshots,
                "actions": actions,
                "tags": sorted(self._tags),
                "domains": [
                    {
                        "name": dom.name,
                        "ttl": dom.ttl,
                        "records": [domain_record_json(r) for _, r in sorted(dom.records.items())],
                    }
                    for _, dom in sorted(self._domains.items())
                ],
                "writes": dict(self.writes),
            }


__all__ = ["ACTION_TYPES", "ApiError", "World"]
