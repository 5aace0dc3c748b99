"""A process that races others to start destructive sagas, for tests/test_blast_radius.py.

    python -m tests.admission_racer refuse --first DROPLET --count N [--deployment ID]
    python -m tests.admission_racer admit --sagas ID,ID,...

It builds its parts the way every process does (``app.wiring.build_app()``; the caps come from
SAGAS_MAX_DESTRUCTIVE_*), prints ``READY <pid>``, reads the Unix time to start at from stdin (so
that processes that started up at different speeds begin together), then as fast as it can:

- ``refuse``: records ``N`` update sagas on droplets ``DROPLET..DROPLET+N-1`` (which need not
  exist: nothing runs them), each refused when the caps are full;
- ``admit``: asks a place for each of the given waiting sagas, in a random order.

Last it prints one JSON line: how many it recorded (or admitted) and how many were refused.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import uuid

from app.wiring import build_app
from sagas.errors import DestructiveCapError
from sagas.models import Admission


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["refuse", "admit"])
    parser.add_argument("--first", type=int, default=1)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--deployment", default=None)
    parser.add_argument("--sagas", default="")
    args = parser.parse_args(argv)

    app = build_app()
    provisioning = app.provisioning()
    caps = app.settings.destructive_caps
    print(f"READY {os.getpid()}", flush=True)
    start_at = float(sys.stdin.readline())
    time.sleep(max(0.0, start_at - time.time()))

    taken, refused = 0, 0
    if args.mode == "refuse":
        for i in range(args.count):
            try:
                provisioning.create_saga(
                    "update",
                    {"droplet_id": args.first + i, "size": "s-2vcpu-2gb"},
                    deployment_id=args.deployment,
                    admission=Admission.REFUSE,
                )
                taken += 1
            except DestructiveCapError:
                refused += 1
    else:
        ids = [uuid.UUID(s) for s in args.sagas.split(",") if s]
        random.shuffle(ids)
        for saga_id in ids:
            if app.ledger.admit(saga_id, caps).admitted_at is not None:
                taken += 1
            else:
                refused += 1
    print(json.dumps({"taken": taken, "refused": refused}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
