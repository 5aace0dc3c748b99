"""A faithful, in-memory DigitalOcean API v2 simulator served over real HTTP.

Droplets, actions, snapshots, tags and DNS records with the real API's timing and eventual consistency,
per-token rate limits with the real headers, and fault injection through ``/_sim``. It shares no code or models with
``sagas.digitalocean.client``: both are checked against the official OpenAPI spec on their own.
See ``docs/simulator.md``.
"""

from .app import SimulatorApp, create_app
from .config import SimulatorConfig
from .faults import FaultRule
from .server import RunningSimulator, run_simulator_in_thread, serve

__all__ = [
    "FaultRule",
    "RunningSimulator",
    "SimulatorApp",
    "SimulatorConfig",
    "create_app",
    "run_simulator_in_thread",
    "serve",
]
