"""Run the simulator with uvicorn: blocking (``serve``) or in a background thread for tests and demos."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import uvicorn

from .app import SimulatorApp, create_app
from .config import SimulatorConfig
from .world import World


def _uvicorn_config(app: SimulatorApp, host: str, port: int) -> uvicorn.Config:
    # ws="none": no websockets import (and so no DeprecationWarning from it); lifespan is not needed.
    return uvicorn.Config(app, host=host, port=port, log_level="warning", ws="none", lifespan="off")


def serve(host: str = "127.0.0.1", port: int = 8765, config: SimulatorConfig | None = None) -> None:
    """Serve a fresh simulator until interrupted (Ctrl-C)."""
    uvicorn.Server(_uvicorn_config(create_app(config), host, port)).run()


@dataclass
class RunningSimulator:
    """A simulator served in a background thread."""

    app: SimulatorApp
    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def state(self) -> World:
        """The live world (thread-safe); ``app.state()`` gives the same dump as ``GET /_sim/state``."""
        return self.app.world


@contextmanager
def run_simulator_in_thread(
    config: SimulatorConfig | None = None,
    port: int = 0,
    host: str = "127.0.0.1",
    startup_timeout: float = 10.0,
) -> Iterator[RunningSimulator]:
    """Serve a fresh simulator on ``host:port`` (0 = an ephemeral port) for the duration of the block."""
    app = create_app(config)
    server = uvicorn.Server(_uvicorn_config(app, host, port))
    thread = threading.Thread(target=server.run, name="do-simulator", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(timeout=5)
            raise RuntimeError(f"the DigitalOcean simulator did not start on {host}:{port}")
        time.sleep(0.01)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningSimulator(app=app, host=host, port=bound_port)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
