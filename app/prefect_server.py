"""The Prefect API that flows run in this process talk to: the configured one, or a temporary server of ours.

With no ``PREFECT_API_URL``, Prefect starts a temporary server by itself the first time a client is
needed (``SubprocessASGIServer``) and stops it only from ``atexit``: after a ``kill -9`` of
``sagas run`` that server ran on, holding its port and PREFECT_HOME's database. ``prefect_api()``
starts the same server first (the same app and environment, analytics off, PREFECT_HOME's
database), as our own child that cannot outlive us (``app/server_child.py``: PR_SET_PDEATHSIG on
Linux, end of file on its stdin everywhere), points Prefect at it, and stops it when the block ends.

Prefect is pointed at it through ``PREFECT_API_URL`` in the environment, then its global settings
are reloaded (``refresh_global_settings_context``): every thread sees it, including Prefect's own
worker threads that start with an empty context and read the global settings.

Enter the block on a thread that outlives it (the main thread): on Linux the child's death signal
follows the thread that started it, not the process.

This module must never monkeypatch Prefect, never start a server when an API is configured, and
never leave one running after the block (or this process) ends.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import httpx

from sagas.errors import ConfigurationError

_HEALTH_POLL_SECONDS = 0.05
_STOP_SECONDS = 5.0


class TemporaryServerError(ConfigurationError):
    """The temporary Prefect server did not come up (the way out is a server of one's own)."""


class PrefectApi:
    """The API that flows in this process use. Call ``ready()`` before the first flow runs."""

    def __init__(self, url: str | None, server: _Server | None = None, timeout: float = 0.0) -> None:
        self.url = url
        self._server = server
        self._timeout = timeout
        self.answered = server is None

    def ready(self) -> str | None:
        """Wait until the temporary server answers (at once for a configured API); return the API URL."""
        if self._server is not None and not self.answered:
            _wait_until_healthy(self._server, self._timeout)
            self.answered = True
        return self.url


@contextmanager
def prefect_api() -> Iterator[PrefectApi]:
    """Within the block, Prefect in this process talks to the configured API or to a temporary server.

    The temporary server is started on entry and the block goes on while it boots (a few seconds:
    do the other set-up meanwhile), then ``ready()`` waits for it. Prefect is pointed at it from
    the start: a request made before ``ready()`` waits in the socket's queue rather than failing.
    The handle's URL is ``None`` when there is no API and Prefect's temporary server is disabled
    (then Prefect itself refuses to run a flow, with its own message).
    """
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:
        yield PrefectApi(str(settings.api.url))
        return
    if not settings.server.ephemeral.enabled:
        yield PrefectApi(None)
        return
    server = _start(_server_environment())
    try:
        api = PrefectApi(server.api_url, server, settings.server.ephemeral.startup_timeout_seconds)
        with _pointed_at(server.api_url):
            try:
                yield api
            finally:
                if api.answered:
                    # Never in place of the block's own outcome: the server is going away anyway.
                    with suppress(Exception):
                        _send_what_prefect_still_holds()
    finally:
        _stop(server.process)


class _Server:
    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.api_url = f"http://127.0.0.1:{port}/api"


def _server_environment() -> dict[str, str]:
    """What Prefect's own temporary server gets (``SubprocessASGIServer._run_uvicorn_command``)."""
    from prefect.settings import get_current_settings

    return {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",  # create_app runs only the services meant for this mode
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def _start(environment: dict[str, str]) -> _Server:
    # We bind and listen, then hand the socket over: nobody else can take the port meanwhile, and
    # a connection made while the server boots waits in the queue instead of being refused.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        process = subprocess.Popen(
            [sys.executable, "-m", "app.server_child", str(os.getpid()), str(listener.fileno())],
            env=environment,
            stdin=subprocess.PIPE,  # never written: its end of file tells the child we are gone
            pass_fds=(listener.fileno(),),
            # Its own process group: a Ctrl-C at the terminal reaches only us, and we stop it after
            # the flow has reported its end to it.
            process_group=0,
        )
    finally:
        listener.close()
    # Prefect's logging is set up by prefect.main (which flows import anyway): import it while the
    # server boots, then say what Prefect says of its own temporary server.
    import prefect.main  # noqa: F401
    from prefect.logging import get_logger

    get_logger().info("Starting temporary server on http://127.0.0.1:%d", port)
    return _Server(process, port)


def _wait_until_healthy(server: _Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1) as client:
        while True:
            if server.process.poll() is not None:
                raise TemporaryServerError(
                    f"the temporary Prefect server exited with code {server.process.returncode}"
                    " before it answered (its errors are above); set PREFECT_API_URL to use a server"
                    " of your own"
                )
            with suppress(httpx.TransportError):
                # The request waits in the socket's queue until the server serves it.
                if client.get(f"{server.api_url}/health").status_code == 200:
                    return
            if time.monotonic() >= deadline:
                raise TemporaryServerError(
                    f"the temporary Prefect server did not answer within {timeout:g} s: raise"
                    " PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, or set PREFECT_API_URL"
                )
            time.sleep(_HEALTH_POLL_SECONDS)


@contextmanager
def _pointed_at(url: str) -> Iterator[None]:
    from prefect.context import refresh_global_settings_context

    # The server has no UI (as Prefect's own temporary one): no "View at" link that leads nowhere.
    variables = {"PREFECT_API_URL": url, "PREFECT_UI_URL": os.environ.get("PREFECT_UI_URL", "")}
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    refresh_global_settings_context()
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        refresh_global_settings_context()


def _send_what_prefect_still_holds() -> None:
    """Logs and events still queued go to the server before it stops (as prefect_test_harness does)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=_STOP_SECONDS)
    EventsWorker.drain_all(timeout=_STOP_SECONDS)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.stdin is not None:
        process.stdin.close()  # the child's signal to stop, as if we had died
    process.terminate()
    try:
        process.wait(_STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
