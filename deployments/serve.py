"""Serve every saga flow as a deployment from this process (local development without a worker).

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m deployments.serve

Each kind becomes ``<kind>/<kind>``; trigger one with
``prefect deployment run snapshot/snapshot --param params='{"droplet_id": 123}'``.
"""

from __future__ import annotations

from prefect import serve

from flows.snapshot import snapshot
from flows.testing import test_saga


def main() -> None:
    deployments = [
        snapshot.to_deployment(name="snapshot", tags=["arcadia-sagas"]),
        test_saga.to_deployment(name="test", tags=["arcadia-sagas"]),
    ]
    serve(*deployments)  # type: ignore[arg-type]  # sync context: to_deployment returns the object


if __name__ == "__main__":
    main()
