"""Build the ledger, the catalog, the services and the runner from settings: the one place that does.

Every process builds its parts here: a flow run on a worker, its hooks, the recovery sweep, the
fleet flow, the CLI and the demo. They all spend one DigitalOcean rate budget per token, kept in
the ledger's Postgres (``PostgresBudgetStore``), whichever machine they run on. Two Prefect-specific sources plug in from here as plain
callables, so the core never imports Prefect: tokens from Prefect Secret blocks (when a block is
named in settings) and the launcher that starts a saga's flow run on its kind's deployment. Both
import Prefect only when they are called.

Every process also hands its metric counts (``sagas.telemetry``: provider requests, 429s, waits,
step timings) to the ledger, every few seconds and when it exits, so ``sagas metrics`` sees what
short-lived flow runs on any machine counted.

Nothing happens at import time; ``build_app()`` reads the settings, connects to the ledger and
starts the process's one metrics flusher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from sagas.context import Launcher, Provisioning
from sagas.digitalocean.shared_budget import BudgetStore
from sagas.errors import ConfigurationError
from sagas.invocation import Invoke, invoke_directly
from sagas.ledger.database import engine_for
from sagas.ledger.metrics import MetricsStore
from sagas.ledger.store import Ledger
from sagas.models import SagaRun
from sagas.ratebudget_pg import PostgresBudgetStore
from sagas.runner import Runner
from sagas.services import Services
from sagas.settings import Settings, TokenPurpose, check_token, load_settings
from sagas.steps import Catalog
from sagas.telemetry import flush_in_background
from tasks.registry import catalog as registry_catalog

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

TokenSource = Callable[[TokenPurpose], SecretStr | None]

# The catalog every App of this process uses: the registry's, unless a benchmark or a test
# registered an extended one (``use_catalog``) before the flows build their App.
_catalog_factory: Callable[[], Catalog] = registry_catalog


@dataclass
class App:
    """The parts of one process, built once: what flows, hooks and commands run against."""

    settings: Settings
    ledger: Ledger
    catalog: Catalog
    token_source: TokenSource | None = None
    launch: Launcher | None = None
    # The DigitalOcean rate budget every process shares (the ledger's Postgres); None: per process.
    budget_store: BudgetStore | None = None
    # Where metric counts add up and what the saga rows say, for ``sagas metrics``.
    metrics_store: MetricsStore | None = None

    def services(self) -> Services:
        """Fresh services (provider clients are made lazily and closed with them)."""
        return Services(self.settings, token_source=self.token_source, budget_store=self.budget_store)

    def runner(self, invoke: Invoke[Any] = invoke_directly) -> Runner:
        return Runner(self.ledger, self.catalog, self.services(), invoke)

    def provisioning(self) -> Provisioning:
        return Provisioning(
            self.ledger, self.catalog, launch=self.launch, caps=self.settings.destructive_caps
        )

    def metrics_registry(self) -> CollectorRegistry:
        """A Prometheus registry that reads the ledger at each collection (see ``sagas.metrics``)."""
        from sagas.metrics import registry_for  # prometheus_client: only for the commands that use it

        if self.metrics_store is None:
            raise ConfigurationError("this App was built without a metrics store")
        return registry_for(self.metrics_store, kinds=self.catalog.kind_names, steps=self.catalog.step_names)


def build_app(settings: Settings | None = None) -> App:
    """The process's parts from the environment (or the given settings)."""
    settings = settings or load_settings()
    engine = engine_for(settings)
    metrics_store = MetricsStore(engine)
    flush_in_background(metrics_store.add_counts)
    return App(
        settings=settings,
        ledger=Ledger(engine),
        catalog=_catalog_factory(),
        token_source=lambda purpose: secret_block_token(settings, purpose),
        launch=launch_on_deployment,
        budget_store=PostgresBudgetStore(engine),
        metrics_store=metrics_store,
    )


def use_catalog(factory: Callable[[], Catalog]) -> None:
    """Build every later App with this catalog (benchmarks add no-op steps this way)."""
    global _catalog_factory
    _catalog_factory = factory


def secret_block_token(settings: Settings, purpose: TokenPurpose) -> SecretStr | None:
    """The token from the Prefect Secret block named in settings, if one is named.

    The value must pass ``check_token`` (a refusal names the block, never the value), then goes
    into a SecretStr and from there into the client's header: it is never a flow parameter, never
    logged, never in an artifact.
    """
    block = (
        settings.do_token_provisioning_block
        if purpose is TokenPurpose.PROVISIONING
        else settings.do_token_read_block
    )
    if not block:
        return None
    from prefect.blocks.system import Secret

    try:
        secret: Any = Secret.load(block)  # sync context: the block itself, not a coroutine
        value = secret.get()
    except ValueError as exc:
        raise ConfigurationError(
            f"no Prefect Secret block named {block!r}: create it, or unset the setting"
        ) from exc
    return check_token(str(value), f"the Prefect Secret block {block!r}")


def flow_parameters(saga: SagaRun) -> dict[str, Any]:
    """The parameters of the saga's flow, flat as the flow takes them: its inputs, then bookkeeping."""
    parameters: dict[str, Any] = {**saga.inputs, "saga_id": str(saga.id), "triggered_by": saga.triggered_by}
    if saga.deployment_id is not None:
        parameters["deployment_id"] = saga.deployment_id
    parameters["require_approval"] = bool(saga.options.get("require_approval"))
    if _catalog_factory().kind(saga.kind).steps is None:  # the caller chose the steps (test kind)
        parameters["steps"] = list(saga.step_names)
    return parameters


def launch_on_deployment(saga: SagaRun) -> None:
    """Start the saga's flow run on its kind's deployment (``<kind>/<kind>`` in prefect.yaml).

    The saga id goes in the parameters and the idempotency key, so launching twice makes one run.
    """
    from prefect.deployments import run_deployment

    run_deployment(
        f"{saga.kind}/{saga.kind}",
        parameters=flow_parameters(saga),
        timeout=0,
        idempotency_key=f"saga-{saga.id}",
    )
