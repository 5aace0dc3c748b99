"""What steps depend on, built once per runner: settings, provider clients, the clock.

Clients are created lazily, one per token purpose, and closed with the services. Their rate
budget is shared through ``budget_store`` when one is given (``app.wiring`` gives the ledger's).
``halt_on`` gives the clients an event that, once set (the runner lost its lease), stops every
further provider request at once with LeaseLostError: fencing reaches the provider, not only the ledger.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydantic import SecretStr

from sagas.errors import LeaseLostError
from sagas.settings import Settings, TokenPurpose

if TYPE_CHECKING:
    from sagas.digitalocean.client import DigitalOceanClient
    from sagas.digitalocean.shared_budget import BudgetStore


@dataclass
class Services:
    settings: Settings
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic
    # Where tokens come from before the environment (flows plug in Prefect Secret blocks).
    token_source: Callable[[TokenPurpose], SecretStr | None] | None = None
    # Where the token's rate budget is shared with every other process (the wiring plugs in the
    # ledger's Postgres); None keeps one budget per process.
    budget_store: BudgetStore | None = None
    _clients: dict[TokenPurpose, DigitalOceanClient] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _halt: threading.Event | None = field(default=None, repr=False)

    def halt_on(self, event: threading.Event | None) -> None:
        """From now on, no provider request is sent once ``event`` is set (None: never halt)."""
        self._halt = event

    def _check_halt(self) -> None:
        halt = self._halt
        if halt is not None and halt.is_set():
            raise LeaseLostError(
                "this runner lost its lease on the saga: it stopped calling the provider"
                " (another runner, or a resume, finishes the saga)"
            )

    def digitalocean(self, purpose: TokenPurpose = TokenPurpose.PROVISIONING) -> DigitalOceanClient:
        from sagas.digitalocean.client import DEFAULT_RETRY, DigitalOceanClient

        with self._lock:
            client = self._clients.get(purpose)
            if client is None:
                s = self.settings
                token = self.token_source(purpose) if self.token_source is not None else None
                if token is not None:
                    s = s.model_copy(update={f"do_token_{purpose.value}": token})
                retry = DEFAULT_RETRY.replace(
                    attempts=s.do_retry_attempts,
                    base_delay=s.do_retry_base_seconds,
                    max_delay=s.do_retry_max_seconds,
                    deadline=s.do_retry_deadline_seconds,
                    sleep=self.sleep,
                )
                client = DigitalOceanClient.from_settings(
                    s, purpose, retry=retry, before_send=self._check_halt, budget_store=self.budget_store
                )
                self._clients[purpose] = client
            return client

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
