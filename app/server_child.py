"""The temporary Prefect server's own process: Prefect's API under uvicorn, tied to its parent's life.

``app/prefect_server.py`` starts it as ``python -m app.server_child <parent pid> <socket fd>``, with
the socket already bound to a free loopback port and a pipe on stdin that the parent never writes
to. It serves Prefect's app as Prefect's own temporary server does (the same factory, lifespan on,
errors-only logging; the parent sets the same environment) and goes when its parent goes:

- on Linux, ``PR_SET_PDEATHSIG``: the kernel sends SIGKILL the moment the parent dies, however it
  dies (``kill -9`` included);
- everywhere, the stdin pipe: when the parent dies the kernel closes its end, we read end of file
  and stop the server; if it has not stopped a few seconds later, the process exits anyway.

It must never outlive its parent, nor listen anywhere but on the socket it was handed.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

# How long a graceful shutdown (uvicorn, then Prefect's lifespan) may take once the parent is gone.
SHUTDOWN_GRACE_SECONDS = 3.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:  # pragma: no cover
            print(f"prctl(PR_SET_PDEATHSIG) failed: errno {ctypes.get_errno()}", file=sys.stderr)
    # The parent may have died before the line above ran; then no signal will ever come.
    if os.getppid() != parent:
        os._exit(0)
    threading.Thread(target=_stop_when_stdin_closes, name="parent-watch", daemon=True).start()


def _stop_when_stdin_closes() -> None:
    """End of file on stdin means the parent is gone (or stopped us): shut down, then make sure."""
    while os.read(0, 4096):
        pass  # the parent writes nothing; ignore anything that comes anyway
    os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's graceful shutdown (the default action before it)
    time.sleep(SHUTDOWN_GRACE_SECONDS)
    os._exit(0)


def main(argv: list[str]) -> None:
    parent, fd = int(argv[0]), int(argv[1])
    _die_with_parent(parent)
    import uvicorn

    config = uvicorn.Config(
        "prefect.server.api.server:create_app",
        factory=True,
        log_level="error",
        lifespan="on",
    )
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


if __name__ == "__main__":
    main(sys.argv[1:])
