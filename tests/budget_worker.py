"""A process that spends a DigitalOcean token's rate budget, for tests/test_shared_budget.py.

    python -m tests.budget_worker --droplet ID [--threads 6] [--seconds 4] [--requests N]
        [--priority interactive] [--local]

It builds its client the way every process does (``app.wiring.build_app()``: the budget is shared
through the ledger's Postgres; ``--local``: the per-process budget, as before), prints
``READY <pid>`` once built, reads the Unix time to start at from stdin (so that processes that
started up at different speeds begin together), then sends ``GET /v2/droplets/ID`` from
``--threads`` threads, each request marked with ``--priority``, until ``--seconds`` have passed or
``--requests`` were sent in all. Last it prints one JSON line: every request's start and end
(Unix time) and the errors it met. Settings come from the environment (SAGAS_*).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

from app.wiring import build_app
from sagas.digitalocean.ratelimit import Priority, request_priority
from sagas.services import Services
from sagas.settings import TokenPurpose, load_settings


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--droplet", type=int, required=True)
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--priority", choices=[p.name.lower() for p in Priority], default="interactive")
    parser.add_argument("--local", action="store_true", help="the per-process budget, without the store")
    args = parser.parse_args(argv)

    services = Services(load_settings()) if args.local else build_app().services()
    client = services.digitalocean(TokenPurpose.READ)
    priority = Priority[args.priority.upper()]
    print(f"READY {os.getpid()}", flush=True)

    start_at = float(sys.stdin.readline())
    time.sleep(max(0.0, start_at - time.time()))
    deadline = time.time() + args.seconds
    lock = threading.Lock()
    done: list[tuple[float, float]] = []
    errors: list[str] = []
    budget = [args.requests if args.requests is not None else sys.maxsize]

    def spend() -> None:
        with request_priority(priority):
            while time.time() < deadline:
                with lock:
                    if budget[0] <= 0:
                        return
                    budget[0] -= 1
                started = time.time()
                try:
                    client.get_droplet(args.droplet)
                except Exception as exc:
                    with lock:
                        errors.append(type(exc).__name__)
                    continue
                with lock:
                    done.append((started, time.time()))

    threads = [threading.Thread(target=spend) for _ in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    services.close()
    print(json.dumps({"pid": os.getpid(), "done": sorted(done), "errors": errors}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
