"""DNS steps: the A record for a deployment's hostname on a DigitalOcean domain.

A record carries no tag, so it is found by what it is: type A, its full name, and (when we made
it) the droplet's address. Both steps do nothing when the saga has no ``domain``/``hostname``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from sagas.digitalocean.client import DigitalOceanClient
from sagas.digitalocean.models import DomainRecord, DomainRecordCreateRequest
from sagas.errors import (
    AmbiguousWriteError,
    ProviderActionError,
    ProviderNotFoundError,
    ProviderNotReachedError,
    ProviderResponseError,
    ProviderUnavailableError,
)
from sagas.fields import Domain, Hostname
from sagas.steps import KeyScope, StepContext, StepDefinition


class DnsInputs(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    domain: Domain | None = None
    hostname: Hostname | None = None

    @model_validator(mode="after")
    def _both_or_neither(self) -> DnsInputs:
        if (self.domain is None) != (self.hostname is None):
            raise ValueError("give both domain and hostname for the DNS record, or neither")
        return self

    @property
    def fqdn(self) -> str:
        assert self.domain is not None and self.hostname is not None
        return self.domain if self.hostname == "@" else f"{self.hostname}.{self.domain}"


def _key(action: str) -> Any:
    def key(scope: KeyScope) -> str:
        inputs = DnsInputs.model_validate(scope.inputs)
        target = inputs.fqdn if inputs.domain else "none"
        return f"{scope.prefix}-dns-{action}-{target}-{scope.saga_id.hex}"

    return key


def _a_records(do: DigitalOceanClient, inputs: DnsInputs) -> list[DomainRecord]:
    assert inputs.domain is not None
    return do.list_domain_records(inputs.domain, name=inputs.fqdn, type="A")


def _address(ctx: StepContext) -> str:
    created = ctx.outputs.get("create_droplet", {})
    address = created.get("public_ipv4")
    if not address and "droplet_id" in ctx.inputs:
        address = ctx.services.digitalocean().get_droplet(int(ctx.inputs["droplet_id"])).public_ipv4
    if not address:
        raise ProviderActionError("the droplet has no public IPv4 address for the DNS record")
    return str(address)


def create_dns_record(ctx: StepContext) -> Mapping[str, Any]:
    inputs = DnsInputs.model_validate(ctx.inputs)
    if inputs.domain is None:
        return {"skipped": "no domain and hostname given"}
    if ctx.recorded.get("record_id"):
        return ctx.recorded
    do = ctx.services.digitalocean()
    address = _address(ctx)
    for _ in range(3):
        mine = [r for r in _a_records(do, inputs) if r.data == address]
        if mine:  # made before a crash, or by an unanswered POST
            record = mine[0]
            break
        first = ctx.before_write(posting=True, data=address)
        try:
            record = do.create_domain_record(
                inputs.domain,
                DomainRecordCreateRequest(type="A", name=inputs.hostname or "@", data=address, ttl=300),
            )
            break
        except (ProviderUnavailableError, ProviderNotReachedError):
            ctx.write_not_sent(first=first, posting=False)  # it never reached the provider
            raise
        except (AmbiguousWriteError, ProviderResponseError):
            continue  # look again before posting again
    else:
        raise AmbiguousWriteError(f"3 DNS record creates for {inputs.fqdn} went unanswered")
    ctx.checkpoint(record_id=record.id)
    return {"record_id": record.id, "fqdn": inputs.fqdn, "data": address, "domain": inputs.domain}


def delete_created_dns_record(ctx: StepContext) -> None:
    inputs = DnsInputs.model_validate(ctx.inputs)
    if inputs.domain is None:
        return
    do = ctx.services.digitalocean()
    ids = {int(ctx.recorded["record_id"])} if ctx.recorded.get("record_id") else set()
    if ctx.recorded.get("data"):
        ids |= {r.id for r in _a_records(do, inputs) if r.data == ctx.recorded["data"]}
    for record_id in sorted(ids):
        try:
            do.delete_domain_record(inputs.domain, record_id)
        except ProviderNotFoundError:
            pass  # already gone


def delete_dns_record(ctx: StepContext) -> Mapping[str, Any]:
    """Remove the hostname's A records, remembering each one first so the undo can restore it."""
    inputs = DnsInputs.model_validate(ctx.inputs)
    if inputs.domain is None:
        return {"skipped": "no domain and hostname given"}
    do = ctx.services.digitalocean()
    removed: list[dict[str, Any]] = list(ctx.recorded.get("removed", []))
    current = _a_records(do, inputs)
    known = {(r["name"], r["data"]) for r in removed}
    removed += [
        {"name": r.name, "data": r.data, "ttl": r.ttl} for r in current if (r.name, r.data) not in known
    ]
    if current:
        ctx.before_write(removed=removed)
    for record in current:
        with contextlib.suppress(ProviderNotFoundError):
            do.delete_domain_record(inputs.domain, record.id)
    return {"removed": removed, "fqdn": inputs.fqdn}


def restore_dns_records(ctx: StepContext) -> None:
    inputs = DnsInputs.model_validate(ctx.inputs)
    if inputs.domain is None:
        return
    do = ctx.services.digitalocean()
    present = {r.data for r in _a_records(do, inputs)}
    for record in ctx.recorded.get("removed", []):
        if record["data"] not in present:
            do.create_domain_record(
                inputs.domain,
                DomainRecordCreateRequest(
                    type="A", name=record["name"], data=record["data"], ttl=record.get("ttl") or 1800
                ),
            )


def _has_domain(inputs: Mapping[str, Any]) -> bool:
    return inputs.get("domain") is not None


CREATE_DNS_RECORD = StepDefinition(
    name="create_dns_record",
    execute=create_dns_record,
    compensate=delete_created_dns_record,
    idempotency_key=_key("create"),
    inputs_model=DnsInputs,
    summary="create the A record <hostname>.<domain> -> the droplet's address (skipped without a domain)",
    compensation_summary="delete that record (found by name and address; 404 counts as done)",
    timeout_seconds=600.0,
    applies=_has_domain,
    skipped_because="no domain and hostname given",
)
DELETE_DNS_RECORD = StepDefinition(
    name="delete_dns_record",
    execute=delete_dns_record,
    compensate=restore_dns_records,
    idempotency_key=_key("delete"),
    inputs_model=DnsInputs,
    summary="delete the hostname's A records, recording each first (skipped without a domain)",
    compensation_summary="recreate the recorded records that are missing",
    timeout_seconds=600.0,
    applies=_has_domain,
    skipped_because="no domain and hostname given",
)
