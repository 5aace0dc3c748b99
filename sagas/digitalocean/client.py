"""Typed, synchronous DigitalOcean API v2 client over an injected ``httpx.Client``: the calls the
sagas make (droplets, actions, snapshots, domain records), with models in and out.

Each method checks its ids and names before anything is sent, and sends through the client's
``Transport`` (``sagas.digitalocean.transport``), the one place where failures become the project's
errors and the one retry layer of this call path: a GET or DELETE is retried there, a POST that may
have reached the provider never is (``AmbiguousWriteError``: look the resource up by its name).
Listings follow every page. ``provider_time()`` reads the provider's clock, learned from every
response's ``Date`` header, which steps compare with the provider's own timestamps.

It must never put the token in a message, a log record or a URL, and never send it to a host other
than ``base_url``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from types import TracebackType
from typing import Self, get_args
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from sagas.digitalocean.models import (
    Action,
    ActionEnvelope,
    ActionPage,
    DomainRecord,
    DomainRecordCreateRequest,
    DomainRecordEnvelope,
    DomainRecordPage,
    DomainRecordType,
    Droplet,
    DropletActionRequest,
    DropletCreateRequest,
    DropletEnvelope,
    DropletPage,
    Snapshot,
    SnapshotActionRequest,
    SnapshotEnvelope,
    SnapshotPage,
)
from sagas.digitalocean.provider_clock import ProviderClock, provider_clock_for
from sagas.digitalocean.ratelimit import RequestBudget, budget_for_token
from sagas.digitalocean.shared_budget import BudgetStore, shared_budget_for_token
from sagas.digitalocean.transport import USER_AGENT, Transport
from sagas.errors import ConfigurationError, InputError, ProviderUnavailableError
from sagas.retry import RetryPolicy
from sagas.settings import Settings, TokenPurpose, check_token

logger = logging.getLogger("sagas.digitalocean")

# How long 429s may hold one call back in all before it is RateLimitedError.
MAX_RATE_LIMIT_WAIT = 120.0

DOMAIN_RECORD_TYPES: tuple[str, ...] = get_args(DomainRecordType)


# The client's retry policy. It retries ProviderUnavailableError alone: the transport raises that
# only for a transient failure of a request that is safe to send again (a GET or DELETE that met a
# 5xx or a transport error, a POST that never left this process). Build others with ``.replace(...)``.
DEFAULT_RETRY = RetryPolicy(on=ProviderUnavailableError)


class DigitalOceanClient:
    """The DigitalOcean calls the sagas make, with models in and out. Not thread-safe to close while
    in use; otherwise safe to share between threads (httpx.Client is)."""

    def __init__(
        self,
        http: httpx.Client,
        token: SecretStr,
        *,
        budget: RequestBudget | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        max_rate_limit_wait: float = MAX_RATE_LIMIT_WAIT,
        before_send: Callable[[], None] | None = None,
        provider_clock: ProviderClock | None = None,
    ) -> None:
        if not token.get_secret_value():
            raise ConfigurationError("an empty DigitalOcean token was given: set SAGAS_DO_TOKEN")
        check_token(token.get_secret_value(), "the DigitalOcean token given to the client")
        if max_rate_limit_wait < 0:
            raise ValueError("max_rate_limit_wait must not be negative")
        self._http = http
        # The provider's clock, learned from every response's Date header (shared per base URL).
        self._provider_clock = provider_clock or provider_clock_for(str(http.base_url))
        # before_send is called before every request; it may raise to stop the request (a runner
        # that lost its lease must not call the provider again).
        self._transport = Transport(
            http,
            token,
            budget=budget,
            retry=retry,
            max_rate_limit_wait=max_rate_limit_wait,
            before_send=before_send,
            provider_clock=self._provider_clock,
        )
        self._owns_http = False

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        purpose: TokenPurpose,
        *,
        transport: httpx.BaseTransport | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        max_rate_limit_wait: float = MAX_RATE_LIMIT_WAIT,
        before_send: Callable[[], None] | None = None,
        budget_store: BudgetStore | None = None,
    ) -> DigitalOceanClient:
        """A client for ``purpose``'s token that owns its httpx client and shares the token's budget:
        with every process that uses ``budget_store``, or else with this process's other clients."""
        token = settings.do_token_for(purpose)
        http = httpx.Client(
            base_url=settings.do_api_url,
            timeout=settings.do_timeout_seconds,
            transport=transport,
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
            follow_redirects=False,
        )
        budget: RequestBudget
        if budget_store is not None:
            budget = shared_budget_for_token(
                token,
                budget_store,
                settings.do_rate_limit_per_minute,
                settings.do_rate_limit_per_hour,
                scale=settings.do_rate_window_scale,
            )
        else:
            budget = budget_for_token(
                token,
                settings.do_rate_limit_per_minute,
                settings.do_rate_limit_per_hour,
                scale=settings.do_rate_window_scale,
            )
        try:
            client = cls(
                http,
                token,
                budget=budget,
                retry=retry,
                max_rate_limit_wait=max_rate_limit_wait,
                before_send=before_send,
            )
        except BaseException:
            http.close()
            raise
        client._owns_http = True
        return client

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DigitalOceanClient(base_url={str(self._http.base_url)!r})"

    def provider_time(self) -> datetime | None:
        """A time DigitalOcean's clock has certainly reached (its latest ``Date`` header plus the time
        elapsed here since), on the clock that stamps ``started_at`` and ``created_at``; None before
        this process had any answer from it. Costs no request."""
        return self._provider_clock.now_at_least()

    # --- droplets --------------------------------------------------------------------------------

    def get_droplet(self, droplet_id: int) -> Droplet:
        return self._transport.send("GET", f"/v2/droplets/{_id(droplet_id)}", model=DropletEnvelope).droplet

    def list_droplets(self, *, tag_name: str | None = None, name: str | None = None) -> list[Droplet]:
        params = {k: v for k, v in (("tag_name", tag_name), ("name", name)) if v is not None}
        pages = self._transport.paginate("/v2/droplets", params, DropletPage, max_pages=None)
        return [droplet for page in pages for droplet in page.droplets]

    def find_droplets_by_tag(self, tag: str) -> list[Droplet]:
        """Every droplet carrying ``tag`` (all pages). A droplet deleted moments ago may still be listed."""
        if not tag:
            raise InputError("a tag to look droplets up by must not be empty")
        return self.list_droplets(tag_name=tag)

    def create_droplet(self, req: DropletCreateRequest) -> Droplet:
        return self._transport.send("POST", "/v2/droplets", body=req, model=DropletEnvelope).droplet

    def delete_droplet(self, droplet_id: int) -> None:
        self._transport.send("DELETE", f"/v2/droplets/{_id(droplet_id)}", model=None)

    # --- actions ---------------------------------------------------------------------------------

    def create_droplet_snapshot(self, droplet_id: int, name: str) -> Action:
        """Start a snapshot action. Its ``resource_id`` is the droplet; find the snapshot by name."""
        return self.post_droplet_action(droplet_id, SnapshotActionRequest(name=name))

    def post_droplet_action(self, droplet_id: int, req: DropletActionRequest) -> Action:
        path = f"/v2/droplets/{_id(droplet_id)}/actions"
        return self._transport.send("POST", path, body=req, model=ActionEnvelope).action

    def get_action(self, action_id: int) -> Action:
        return self._transport.send("GET", f"/v2/actions/{_id(action_id)}", model=ActionEnvelope).action

    def list_droplet_actions(self, droplet_id: int, *, max_pages: int | None = 2) -> list[Action]:
        """The droplet's actions, newest first as the API returns them; ``max_pages=None`` for all."""
        path = f"/v2/droplets/{_id(droplet_id)}/actions"
        pages = self._transport.paginate(path, {}, ActionPage, max_pages=max_pages)
        return [action for page in pages for action in page.actions]

    # --- snapshots -------------------------------------------------------------------------------

    def list_droplet_snapshots(self, droplet_id: int) -> list[Snapshot]:
        """Every snapshot of the droplet. A new snapshot appears here seconds after its action
        completes and lingers briefly after it is deleted: poll, do not conclude from one look."""
        path = f"/v2/droplets/{_id(droplet_id)}/snapshots"
        pages = self._transport.paginate(path, {}, SnapshotPage, max_pages=None)
        # The per-droplet listing omits the origin; fill it in so callers see the same shape as
        # /v2/snapshots/{id}.
        return [
            snap.model_copy(update={"resource_id": str(droplet_id), "resource_type": "droplet"})
            if snap.resource_id is None
            else snap
            for page in pages
            for snap in page.snapshots
        ]

    def find_droplet_snapshot_by_name(self, droplet_id: int, name: str) -> Snapshot | None:
        """The droplet's snapshot named ``name`` (the oldest if there are several), or None."""
        matches = sorted(
            (s for s in self.list_droplet_snapshots(droplet_id) if s.name == name),
            key=lambda s: s.created_at,
        )
        if len(matches) > 1:
            logger.warning(
                "droplet %s has %d snapshots named %r; using the oldest, %s",
                droplet_id,
                len(matches),
                name,
                matches[0].id,
            )
        return matches[0] if matches else None

    def list_snapshots(self) -> list[Snapshot]:
        """Every droplet snapshot in the account, whatever became of its droplet."""
        pages = self._transport.paginate(
            "/v2/snapshots", {"resource_type": "droplet"}, SnapshotPage, max_pages=None
        )
        return [snap for page in pages for snap in page.snapshots]

    def find_snapshot_by_name(self, name: str) -> Snapshot | None:
        """The account's droplet snapshot named ``name`` (the oldest if several), or None."""
        matches = sorted((s for s in self.list_snapshots() if s.name == name), key=lambda s: s.created_at)
        return matches[0] if matches else None

    def get_snapshot(self, snapshot_id: str) -> Snapshot:
        path = f"/v2/snapshots/{_path_segment(snapshot_id)}"
        return self._transport.send("GET", path, model=SnapshotEnvelope).snapshot

    def delete_snapshot(self, snapshot_id: str) -> None:
        """Delete a snapshot. Raises ProviderNotFoundError when it is already gone (an undo's success)."""
        self._transport.send("DELETE", f"/v2/snapshots/{_path_segment(snapshot_id)}", model=None)

    # --- domain records --------------------------------------------------------------------------

    def list_domain_records(
        self, domain: str, *, name: str | None = None, type: str | None = None
    ) -> list[DomainRecord]:
        """The domain's records, all pages. ``name`` is the *full* name (``www.example.com``, or the
        domain itself for ``@`` records), as the API's filter wants it; ``type`` one of
        ``DOMAIN_RECORD_TYPES`` (e.g. ``"A"``)."""
        if type is not None and type not in DOMAIN_RECORD_TYPES:
            raise InputError(
                f"a DNS record type must be one of {', '.join(DOMAIN_RECORD_TYPES)}, not {type!r}"
            )
        params = {k: v for k, v in (("name", name), ("type", type)) if v is not None}
        pages = self._transport.paginate(
            _domain_records_path(domain), params, DomainRecordPage, max_pages=None
        )
        return [record for page in pages for record in page.domain_records]

    def create_domain_record(self, domain: str, req: DomainRecordCreateRequest) -> DomainRecord:
        """Create a record. A POST: an ambiguous outcome is ``AmbiguousWriteError`` and is never
        re-sent (do not count on the API to deduplicate records); look the record up by name and data."""
        return self._transport.send(
            "POST", _domain_records_path(domain), body=req, model=DomainRecordEnvelope
        ).domain_record

    def get_domain_record(self, domain: str, record_id: int) -> DomainRecord:
        path = f"{_domain_records_path(domain)}/{_id(record_id)}"
        return self._transport.send("GET", path, model=DomainRecordEnvelope).domain_record

    def delete_domain_record(self, domain: str, record_id: int) -> None:
        """Delete a record. Raises ProviderNotFoundError when it is already gone (an undo's success)."""
        self._transport.send("DELETE", f"{_domain_records_path(domain)}/{_id(record_id)}", model=None)


def _id(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"a DigitalOcean id must be a positive integer, not {value!r}")
    return value


def _domain_records_path(domain: str) -> str:
    name = domain.strip().rstrip(".") if isinstance(domain, str) else ""
    if not name or "/" in name or any(c.isspace() for c in name):
        raise InputError(f"a domain name must be a non-empty name like example.com, not {domain!r}")
    return f"/v2/domains/{_path_segment(name)}/records"


def _path_segment(value: str) -> str:
    if not value:
        raise InputError("a DigitalOcean id must not be empty")
    return quote(str(value), safe="")
