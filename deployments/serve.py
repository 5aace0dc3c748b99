"""Serve every saga flow as a deployment from this process (local development without a worker).

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deployments.serve

Each kind becomes ``<kind>/<kind>``; its parameters are the kind's inputs, flat. Trigger one with
``prefect deployment run snapshot/snapshot --param droplet_id=3164444``. The deployments are
sealed (``deployments.seal``) before the runner starts, so an unknown parameter name is refused.
"""

from __future__ import annotations

import asyncio
from typing import Any

from prefect.client.orchestration import get_client
from prefect.runner import Runner

from deployments.seal import seal
from flows import FLOWS, flow_for


def main() -> None:
    deployments: list[Any] = []
    for kind in FLOWS:
        deployments.append(flow_for(kind).to_deployment(name=kind, tags=["arcadia-sagas"]))
    from flows.fleet import fleet_snapshot
    from flows.recovery import finish_saga, recovery_sweep

    deployments.append(
        recovery_sweep.to_deployment(name="recovery-sweep", interval=300, tags=["arcadia-sagas"])
    )
    deployments.append(finish_saga.to_deployment(name="finish-saga", tags=["arcadia-sagas"]))
    deployments.append(
        fleet_snapshot.to_deployment(
            name="fleet-snapshot",
            cron="0 3 * * *",
            parameters={"tag": "nightly-snapshot", "queue": "fleet"},
            tags=["arcadia-sagas"],
        )
    )
    # What prefect.flows.serve does, with the seal between registering and serving.
    runner = Runner()
    for deployment in deployments:
        runner.add_deployment(deployment)
    with get_client(sync_client=True) as client:
        seal(client)
    try:
        asyncio.run(runner.start())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
