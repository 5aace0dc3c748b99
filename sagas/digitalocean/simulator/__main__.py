"""``python -m sagas.digitalocean.simulator``: serve the simulator standalone (like moto or localstack)."""

from __future__ import annotations

import argparse

from .config import SimulatorConfig
from .server import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the DigitalOcean API v2 simulator.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--time-scale", type=float, default=1.0, help="wall seconds per simulated second")
    parser.add_argument("--action-seconds", type=float, default=2.0)
    parser.add_argument("--rate-limit-per-minute", type=int, default=250)
    parser.add_argument("--rate-limit-per-hour", type=int, default=5000)
    args = parser.parse_args(argv)
    config = SimulatorConfig(
        time_scale=args.time_scale,
        action_seconds=args.action_seconds,
        rate_limit_per_minute=args.rate_limit_per_minute,
        rate_limit_per_hour=args.rate_limit_per_hour,
    )
    print(f"DigitalOcean simulator on http://{args.host}:{args.port} (control: /_sim, Ctrl-C to stop)")
    serve(args.host, args.port, config)


if __name__ == "__main__":
    main()
