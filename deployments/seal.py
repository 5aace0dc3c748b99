"""Make every arcadia-sagas deployment refuse a parameter name its flow does not take.

    prefect deploy --all && python -m deployments.seal

Prefect 3.9.1 builds a deployment's parameter schema from the flow's signature but writes no
``additionalProperties`` into it (its ``ParameterSchema`` keeps only title, type, properties,
required and definitions), so even with ``enforce_parameter_schema: true`` a misspelt name
(``{"droplt_id": 7}``) passes the server's check: 201, a run is created. This adds
``"additionalProperties": false`` to the stored schema of every deployment tagged
``arcadia-sagas``; the server then answers 409 (``Additional properties are not allowed
('droplt_id' was unexpected)``) before a run exists.

Every ``prefect deploy`` writes the schema afresh, so run this after each one; it changes nothing
else, and running it twice is harmless. A deployment left unsealed still refuses the name, only
later: its run fails at once in Prefect's own signature check (``SignatureMismatchError``, listing
the names it was given), before the flow body runs, so nothing is written.

It must never change a deployment's parameters, schedules or anything but that one key.
"""

from __future__ import annotations

from typing import Any

TAG = "arcadia-sagas"


def sealed(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """The schema with unknown names refused, or None when it already refuses them."""
    schema = dict(schema or {"type": "object", "properties": {}})
    if schema.get("additionalProperties") is False:
        return None
    schema["additionalProperties"] = False
    return schema


def seal(client: Any, tag: str = TAG) -> list[str]:
    """Seal every deployment carrying ``tag``; the names of those that changed."""
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterTags

    changed = []
    for deployment in client.read_deployments(
        deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=[tag]))
    ):
        schema = sealed(deployment.parameter_openapi_schema)
        if schema is None:
            continue
        client.update_deployment(deployment.id, DeploymentUpdate(parameter_openapi_schema=schema))
        changed.append(deployment.name)
    return sorted(changed)


def main() -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        changed = seal(client)
    print(f"refusing unknown parameter names now: {', '.join(changed) or 'every deployment already did'}")


if __name__ == "__main__":
    main()
