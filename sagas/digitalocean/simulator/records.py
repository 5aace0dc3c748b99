"""The simulator's in-memory records: droplets, actions, snapshots, domains and their DNS records.

Times ending in ``_at`` are ``time.monotonic()`` values (wall seconds, already scaled); times ending in
``_wall`` are Unix timestamps used only for the ``created_at``/``started_at`` fields the API reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Droplet:
    id: int
    name: str
    region: str
    size_slug: str
    disk: int
    image: dict[str, Any]
    """The image object shown on the droplet (a base image or a snapshot image)."""
    tags: list[str]
    created_wall: float
    ip_index: int
    status: str = "new"
    backups: bool = False
    ipv6: bool = False
    disk_resized: bool = False
    """A ``resize`` with ``disk: true`` completed (the disk grew; it can never shrink back)."""
    action_ids: list[int] = field(default_factory=list)
    deleted_at: float | None = None
    gone_at: float | None = None
    """When a deleted droplet stops answering ``GET`` and leaves the listings."""

    def lingering(self, now: float) -> bool:
        """True while the droplet is still visible to ``GET`` and listings."""
        return self.gone_at is None or now < self.gone_at


@dataclass
class Action:
    id: int
    type: str
    droplet_id: int
    region: str
    started_at: float
    started_wall: float
    duration: float
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def completes_at(self) -> float:
        return self.started_at + self.duration

    def completed(self, now: float) -> bool:
        return now >= self.completes_at


@dataclass
class Snapshot:
    id: int
    name: str
    droplet_id: int
    region: str
    distribution: str
    min_disk_size: int
    size_gigabytes: float
    created_wall: float
    visible_at: float
    """The snapshot appears in listings and lookups from this moment (the listing lag)."""
    deleted_at: float | None = None
    gone_at: float | None = None
    """When a deleted snapshot leaves the listings (the delete linger)."""

    def listed(self, now: float) -> bool:
        """Shown in ``GET /v2/droplets/{id}/snapshots`` and ``GET /v2/snapshots``."""
        if now < self.visible_at:
            return False
        return self.gone_at is None or now < self.gone_at

    def exists(self, now: float) -> bool:
        """Answers ``GET /v2/snapshots/{id}`` and can be deleted."""
        return now >= self.visible_at and self.deleted_at is None


@dataclass
class DomainRecord:
    id: int
    domain: str
    type: str
    name: str
    """Relative to the domain, as the API shows it: ``www``, or ``@`` for the apex."""
    data: str
    ttl: int
    priority: int | None = None

    @property
    def fqdn(self) -> str:
        """The full name the ``?name=`` filter matches: ``www.example.com``, or ``example.com`` for ``@``."""
        return self.domain if self.name == "@" else f"{self.name}.{self.domain}"


@dataclass
class Domain:
    name: str
    ttl: int = 1800
    records: dict[int, DomainRecord] = field(default_factory=dict)
