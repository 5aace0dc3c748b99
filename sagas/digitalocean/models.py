"""Typed shapes of the DigitalOcean API v2 that the sagas use: requests out, responses in.

Response models ignore fields they do not name (``extra="ignore"``), so a field DigitalOcean adds
tomorrow never breaks a saga; a field we rely on that is missing fails validation, which the client
turns into ``ProviderResponseError``. Request models forbid unknown fields, so a typo is caught here
instead of being silently dropped by the API.

This module must never do I/O and never share code with the simulator: each is checked against the
official spec on its own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ActionStatus = Literal["in-progress", "completed", "errored"]


class _ResponseModel(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- responses -----------------------------------------------------------------------------------


class RegionRef(_ResponseModel):
    slug: str
    name: str | None = None


class ImageRef(_ResponseModel):
    id: int | None = None
    slug: str | None = None
    name: str | None = None


class NetworkV4(_ResponseModel):
    ip_address: str
    type: str


class NetworkV6(_ResponseModel):
    ip_address: str
    type: str


class Networks(_ResponseModel):
    v4: list[NetworkV4] = Field(default_factory=list)
    v6: list[NetworkV6] = Field(default_factory=list)


class Droplet(_ResponseModel):
    id: int
    name: str
    # Kept as a plain string: "new", "active", "off", "archive" today; a new status must not break us.
    status: str
    locked: bool
    size_slug: str
    memory: int
    """Megabytes of RAM of the current size."""
    vcpus: int
    disk: int
    """Gigabytes of disk; it only grows (a ``resize`` with ``disk: true``), unlike memory and vcpus."""
    region: RegionRef
    image: ImageRef
    tags: list[str] = Field(default_factory=list)
    created_at: datetime
    networks: Networks = Field(default_factory=Networks)

    @field_validator("tags", mode="before")
    @classmethod
    def _null_tags_are_empty(cls, value: object) -> object:
        return [] if value is None else value

    @property
    def region_slug(self) -> str:
        return self.region.slug

    @property
    def public_ipv4(self) -> str | None:
        """The first public IPv4 address, or None while the droplet has none (e.g. status "new")."""
        return next((n.ip_address for n in self.networks.v4 if n.type == "public"), None)


class Action(_ResponseModel):
    id: int
    status: ActionStatus
    type: str
    started_at: datetime
    completed_at: datetime | None = None
    # For a droplet action this is the droplet, even for a snapshot action (not the snapshot).
    resource_id: int | None = None
    resource_type: str
    region_slug: str | None = None


class Snapshot(_ResponseModel):
    # Integers in /v2/droplets/{id}/snapshots, strings in /v2/snapshots: one type for callers.
    id: str
    name: str
    created_at: datetime
    # Absent from the per-droplet listing; the client fills in the droplet it listed.
    resource_id: str | None = None
    resource_type: str | None = None
    min_disk_size: int
    size_gigabytes: float
    regions: list[str] = Field(default_factory=list)

    @field_validator("id", "resource_id", mode="before")
    @classmethod
    def _int_ids_as_str(cls, value: object) -> object:
        # bool is an int subclass; a boolean id is malformed, not 1.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value


class DomainRecord(_ResponseModel):
    """A DNS record of a domain. ``name`` is relative to the domain (``www``, or ``@`` for the apex);
    attributes a type does not use are null (``priority`` outside MX/SRV, ``port``/``weight`` outside SRV,
    ``flags``/``tag`` outside CAA)."""

    id: int
    type: str
    name: str
    data: str
    ttl: int | None = None
    priority: int | None = None
    port: int | None = None
    weight: int | None = None
    flags: int | None = None
    tag: str | None = None

    def fqdn(self, domain: str) -> str:
        """The full name the listing's ``name`` filter matches: ``www.example.com``, or the domain for ``@``."""
        domain = domain.rstrip(".").lower()
        return domain if self.name == "@" else f"{self.name}.{domain}".lower()


class ErrorBody(_ResponseModel):
    """DigitalOcean's error envelope: ``{"id": "not_found", "message": ..., "request_id": ...}``."""

    id: str | None = None
    message: str | None = None
    request_id: str | None = None


class _Pages(_ResponseModel):
    next: str | None = None


class _Links(_ResponseModel):
    pages: _Pages | None = None


class Page(_ResponseModel):
    """A listing page; `next_url` is where the provider says the next page is."""

    links: _Links | None = None

    @property
    def next_url(self) -> str | None:
        return self.links.pages.next if self.links and self.links.pages else None


class DropletEnvelope(_ResponseModel):
    droplet: Droplet


class DropletPage(Page):
    droplets: list[Droplet]


class ActionEnvelope(_ResponseModel):
    action: Action


class ActionPage(Page):
    actions: list[Action]


class SnapshotEnvelope(_ResponseModel):
    snapshot: Snapshot


class SnapshotPage(Page):
    snapshots: list[Snapshot]


class DomainRecordEnvelope(_ResponseModel):
    domain_record: DomainRecord


class DomainRecordPage(Page):
    domain_records: list[DomainRecord]


# --- requests ------------------------------------------------------------------------------------

DomainRecordType = Literal["A", "AAAA", "CAA", "CNAME", "MX", "NS", "SOA", "SRV", "TXT"]
"""The record types the API knows (the spec's enum for the listing's ``type`` filter)."""


class DropletCreateRequest(_RequestModel):
    name: str = Field(max_length=255, pattern=r"^[a-zA-Z0-9]?[a-z0-9A-Z.\-]*[a-z0-9A-Z]$")
    region: str | None = None
    size: str
    image: str | int
    ssh_keys: list[str | int] = Field(default_factory=list)
    backups: bool = False
    ipv6: bool = False
    monitoring: bool = False
    tags: list[str] = Field(default_factory=list)
    user_data: str | None = None
    vpc_uuid: str | None = None


class SnapshotActionRequest(_RequestModel):
    type: Literal["snapshot"] = "snapshot"
    name: str | None = None


class PowerOffActionRequest(_RequestModel):
    type: Literal["power_off"] = "power_off"


class PowerOnActionRequest(_RequestModel):
    type: Literal["power_on"] = "power_on"


class ShutdownActionRequest(_RequestModel):
    type: Literal["shutdown"] = "shutdown"


class ResizeActionRequest(_RequestModel):
    type: Literal["resize"] = "resize"
    size: str
    disk: bool = False


class RestoreActionRequest(_RequestModel):
    type: Literal["restore"] = "restore"
    image: int


class RebuildActionRequest(_RequestModel):
    type: Literal["rebuild"] = "rebuild"
    image: str | int


DropletActionRequest = Annotated[
    SnapshotActionRequest
    | PowerOffActionRequest
    | PowerOnActionRequest
    | ShutdownActionRequest
    | ResizeActionRequest
    | RestoreActionRequest
    | RebuildActionRequest,
    Field(discriminator="type"),
]
"""Any droplet action we send; ``type`` picks the variant when validating from a dict."""


class DomainRecordCreateRequest(_RequestModel):
    """``POST /v2/domains/{domain}/records``. ``name`` is relative to the domain (``www``, ``@``); for
    CNAME, MX and NS records ``data`` is a hostname ending in a dot (``app.example.com.``) or ``@``."""

    type: Literal["A", "AAAA", "CAA", "CNAME", "MX", "NS", "SRV", "TXT"]
    name: str = Field(min_length=1, max_length=253)
    data: str = Field(min_length=1)
    ttl: int | None = Field(default=None, ge=30)
    """Seconds; None leaves the API's default (1800)."""
    priority: int | None = Field(default=None, ge=0, le=65535)
    port: int | None = Field(default=None, ge=0, le=65535)
    weight: int | None = Field(default=None, ge=0, le=65535)
    flags: int | None = Field(default=None, ge=0, le=255)
    tag: Literal["issue", "issuewild", "iodef"] | None = None

    @model_validator(mode="after")
    def _type_needs(self) -> Self:
        needs = {"MX": ("priority",), "SRV": ("priority", "port", "weight"), "CAA": ("flags", "tag")}
        missing = [f for f in needs.get(self.type, ()) if getattr(self, f) is None]
        if missing:
            raise ValueError(f"a {self.type} record needs {', '.join(missing)}")
        return self
