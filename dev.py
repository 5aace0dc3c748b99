#!/usr/bin/env python3
"""Set up and run arcadia-sagas with nothing but Python 3.11+.

    python3 dev.py demo    # create .venv, install, run the demo saga (embedded Postgres + simulator)
    python3 dev.py test    # create .venv, install with test extras, run the test suite
    python3 dev.py lint    # ruff and mypy

The virtual environment lives in .venv next to this file; a second run reuses it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def ensure_environment() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036  (this script runs before the project's Python is known)
        sys.exit(f"arcadia-sagas needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / ".installed"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    print("installing arcadia-sagas and its dependencies (about a minute the first time)", flush=True)
    pip = [str(PY), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True)
    stamp.write_text(digest)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "demo"
    ensure_environment()
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if command == "demo":
        return subprocess.call([str(BIN / "sagas"), "demo"], cwd=ROOT, env=env)
    if command == "test":
        return subprocess.call([str(PY), "-m", "pytest", *argv[1:]], cwd=ROOT, env=env)
    if command == "lint":
        lint = subprocess.call([str(PY), "-m", "ruff", "check", "."], cwd=ROOT)
        return lint or subprocess.call([str(PY), "-m", "mypy"], cwd=ROOT)
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
