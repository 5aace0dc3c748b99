"""Serve every saga flow as a deployment from this process (local development without a worker).

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deployments.serve

Each kind becomes ``<kind>/<kind>``; trigger one with
``prefect deployment run snapshot/snapshot --param params='{"droplet_id": 123}'``.
"""

from __future__ import annotations

from typing import Any

from prefect import serve

from flows import FLOWS, flow_for


def main() -> None:
    deployments: list[Any] = []
    for kind in FLOWS:
        flow, _ = flow_for(kind)
        deployments.append(flow.to_deployment(name=kind, tags=["arcadia-sagas"]))
    from flows.fleet import fleet_snapshot
    from flows.recovery import finish_saga, recovery_sweep

    deployments.append(recovery_sweep.to_deployment(name="recovery-sweep", interval=300))
    deployments.append(finish_saga.to_deployment(name="finish-saga"))
    deployments.append(
        fleet_snapshot.to_deployment(
            name="fleet-snapshot", cron="0 3 * * *", parameters={"params": {"tag": "nightly-snapshot"}}
        )
    )
    serve(*deployments)


if __name__ == "__main__":
    main()
