"""``python -m app.cli``: the ``sagas`` command (the tests run it this way in subprocesses)."""

from app.cli import main

main()
