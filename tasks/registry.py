"""The registry: every saga kind and the steps it runs, in one place (DESIGN rule 8).

| kind      | steps                                                                                   |
|-----------|-----------------------------------------------------------------------------------------|
| provision | create_droplet -> create_dns_record                                                     |
| suspend   | create_droplet_snapshot -> power_off_droplet                                            |
| resume    | power_on_droplet                                                                        |
| update    | create_droplet_snapshot -> power_off_droplet -> resize_droplet -> power_on_droplet      |
| rollback  | create_droplet_snapshot (safety) -> power_off_droplet -> restore_droplet (pivot)        |
|           |   -> power_on_droplet (retried forward)                                                 |
| offboard  | create_droplet_snapshot (final, kept) -> power_off_droplet -> delete_dns_record         |
|           |   -> delete_droplet (pivot)                                                             |
| snapshot  | create_droplet_snapshot                                                                 |
| test      | any registered steps, chosen by the caller                                              |

Destructive kinds (offboard, rollback, update: they destroy or replace what the customer runs)
are capped at so many running at once, per account and per customer deployment
(``SAGAS_MAX_DESTRUCTIVE_PER_ACCOUNT`` / ``_PER_DEPLOYMENT``). A kind's ``version`` is pinned into every saga it starts (rule 7): change a kind's step list and
you must bump its version, so sagas started under the old list fail loudly instead of running
different steps. Inputs use DigitalOcean's names.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from sagas.fields import (
    Domain,
    DropletId,
    DropletName,
    Hostname,
    ImageSlug,
    RegionSlug,
    SizeSlug,
    SnapshotId,
    SnapshotLabel,
)
from sagas.steps import Catalog, KindDefinition, droplet_resource
from tasks.basic import FAIL, FLAKY, NOOP
from tasks.dns import CREATE_DNS_RECORD, DELETE_DNS_RECORD, DnsInputs
from tasks.droplets import (
    CREATE_DROPLET,
    DELETE_DROPLET,
    RESTORE,
    CreateDropletInputs,
    DropletInputs,
    RestoreInputs,
)
from tasks.power import POWER_OFF, POWER_ON, RESIZE, ResizeInputs
from tasks.snapshots import CREATE_DROPLET_SNAPSHOT, SnapshotInputs

_FORBID = ConfigDict(extra="forbid")


class SnapshotKindInputs(SnapshotInputs):
    model_config = _FORBID


class ProvisionInputs(CreateDropletInputs, DnsInputs):
    model_config = _FORBID


class SuspendInputs(SnapshotInputs):
    model_config = _FORBID


class ResumeInputs(DropletInputs):
    model_config = _FORBID


class UpdateInputs(ResizeInputs, SnapshotInputs):
    model_config = _FORBID


class RollbackInputs(RestoreInputs, SnapshotInputs):
    model_config = _FORBID


class OffboardInputs(SnapshotInputs, DnsInputs):
    model_config = _FORBID


class TestKindInputs(BaseModel):
    """The test kind passes its inputs to whichever steps it runs; each step checks its own."""

    model_config = ConfigDict(extra="forbid", strict=True)

    droplet_id: DropletId | None = Field(default=None, description="For steps on a droplet.")
    label: SnapshotLabel | None = Field(default=None, description="create_droplet_snapshot: name suffix.")
    name: DropletName | None = Field(default=None, description="create_droplet: the droplet's name.")
    region: RegionSlug | None = Field(default=None, description="create_droplet: region slug, e.g. nyc3.")
    size: SizeSlug | None = Field(
        default=None, description="create_droplet / resize_droplet: size slug, e.g. s-1vcpu-1gb."
    )
    image: ImageSlug | None = Field(
        default=None, description="create_droplet: image slug, e.g. ubuntu-24-04-x64."
    )
    resize_disk: StrictBool | None = Field(
        default=None, description="resize_droplet: grow the disk too (a pivot)."
    )
    snapshot_id: SnapshotId | None = Field(default=None, description="restore_droplet: snapshot id.")
    domain: Domain | None = Field(default=None, description="DNS steps: a domain managed at DigitalOcean.")
    hostname: Hostname | None = Field(default=None, description="DNS steps: the record's name, e.g. www.")


def _droplet_name_resource(inputs: Any) -> str | None:
    return f"droplet-name:{inputs['name']}" if inputs.get("name") else droplet_resource(inputs)


snap, off, on = "create_droplet_snapshot", "power_off_droplet", "power_on_droplet"


@cache
def catalog() -> Catalog:
    def kind(
        name: str,
        summary: str,
        inputs: type[BaseModel],
        *steps: str,
        asks_approval: bool = False,
        destructive: bool = False,
    ) -> KindDefinition:
        resource = _droplet_name_resource if name == "provision" else droplet_resource
        # A person approves before the first step that changes what the customer sees.
        visible = next((s for s in steps if s != snap), steps[0])
        return KindDefinition(
            name=name,
            version="1",
            inputs_model=inputs,
            steps=steps,
            summary=summary,
            resource=resource,
            approval_before=visible,
            asks_approval=asks_approval,
            destructive=destructive,
        )

    return Catalog(
        steps=[
            CREATE_DROPLET,
            CREATE_DNS_RECORD,
            DELETE_DNS_RECORD,
            CREATE_DROPLET_SNAPSHOT,
            POWER_OFF,
            POWER_ON,
            RESIZE,
            RESTORE,
            DELETE_DROPLET,
            FAIL,
            FLAKY,
            NOOP,
        ],
        kinds=[
            kind(
                "provision",
                "create a droplet and its DNS record",
                ProvisionInputs,
                "create_droplet",
                "create_dns_record",
            ),
            kind("suspend", "snapshot, then power off", SuspendInputs, snap, off),
            kind("resume", "power on", ResumeInputs, on),
            kind(
                "update",
                "snapshot, power off, resize, power on",
                UpdateInputs,
                snap,
                off,
                "resize_droplet",
                on,
                destructive=True,
            ),
            kind(
                "rollback",
                "safety snapshot, power off, restore, power on",
                RollbackInputs,
                snap,
                off,
                "restore_droplet",
                on,
                asks_approval=True,
                destructive=True,
            ),
            kind(
                "offboard",
                "final snapshot, power off, delete DNS, delete droplet",
                OffboardInputs,
                snap,
                off,
                "delete_dns_record",
                "delete_droplet",
                asks_approval=True,
                destructive=True,
            ),
            kind("snapshot", "snapshot one droplet", SnapshotKindInputs, snap),
            KindDefinition(
                name="test",
                version="1",
                inputs_model=TestKindInputs,
                steps=None,
                summary="run registered steps chosen by the caller (smoke tests)",
                resource=_droplet_name_resource,
            ),
        ],
    )
