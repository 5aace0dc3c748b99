"""Running the saga flows as Prefect deployments: see serve.py and ../prefect.yaml."""
