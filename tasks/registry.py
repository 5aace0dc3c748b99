"""The registry: every saga kind and the steps it runs, in one place (DESIGN rule 8).

| kind     | steps                                        |
|----------|----------------------------------------------|
| snapshot | create_droplet_snapshot                      |
| test     | any registered steps, chosen by the caller   |

A kind's ``version`` is pinned into every saga it starts (rule 7): change a kind's step list and
you must bump its version, so sagas started under the old list fail loudly instead of running
different steps.
"""

from __future__ import annotations

from functools import cache

from pydantic import BaseModel, ConfigDict, Field

from sagas.steps import Catalog, KindDefinition, droplet_resource
from tasks.basic import FAIL, NOOP
from tasks.snapshots import CREATE_DROPLET_SNAPSHOT, SnapshotInputs


class TestKindInputs(BaseModel):
    """The test kind passes its inputs to whichever steps it runs."""

    model_config = ConfigDict(extra="forbid")

    droplet_id: int | None = Field(default=None, gt=0, lt=2**53, description="For snapshot steps.")
    label: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")


class SnapshotKindInputs(SnapshotInputs):
    model_config = ConfigDict(extra="forbid")


@cache
def catalog() -> Catalog:
    return Catalog(
        steps=[CREATE_DROPLET_SNAPSHOT, FAIL, NOOP],
        kinds=[
            KindDefinition(
                name="snapshot",
                version="1",
                inputs_model=SnapshotKindInputs,
                steps=("create_droplet_snapshot",),
                summary="snapshot one droplet",
                resource=droplet_resource,
            ),
            KindDefinition(
                name="test",
                version="1",
                inputs_model=TestKindInputs,
                steps=None,
                summary="run registered steps chosen by the caller (smoke tests)",
                resource=droplet_resource,
            ),
        ],
    )
