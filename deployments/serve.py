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
    serve(*deployments)


if __name__ == "__main__":
    main()
