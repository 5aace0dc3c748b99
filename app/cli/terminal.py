"""What a ``sagas`` command lets log records print on the terminal: the saga, not the engine.

A normal run shows the saga's progress and its outcome line. An expected failure (a step that
failed, an undo that was retried: anything in our error tree) is in the ledger, in the progress and
in that line, so its log records stay off the terminal: no tracebacks, no per-try warnings of the
runner, no task-run chatter. Only the terminal is spared: the records are still made and every
other handler gets them (Prefect's API handler ships each flow and task run record, tracebacks
included, to the run's logs in the UI; ``PREFECT_LOGGING_EXTRA_LOGGERS=sagas`` adds ours), and a
worker's output is untouched (only the ``sagas`` command installs this).

``--verbose`` shows everything: debug records of the ``sagas.*`` loggers and of Prefect's, with
tracebacks. An unexpected exception (a bug, not our error tree) prints one line in a normal run,
saying that ``--verbose`` shows its traceback.

One handler on the root logger does the printing. Prefect, imported later by a command, sees it and
leaves the root logger alone; a Prefect console handler already there (Prefect imported earlier in
the process) is muted while the command runs. ``install`` returns the undo, so a command run
in-process (tests) leaves logging as it found it. It never reads or prints settings.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable

from sagas.errors import SagaError

_PREFECT_LOGGERS = ("prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.client")


def _expected(record: logging.LogRecord) -> bool:
    return record.exc_info is not None and isinstance(record.exc_info[1], SagaError)


def shown_in_a_normal_run(record: logging.LogRecord) -> bool:
    """Whether a record is printed on the terminal of a run without ``--verbose``."""
    if _expected(record):
        return False  # the ledger, the progress and the outcome line say it, in one line
    name = record.name
    if name == "sagas.runner" or name.startswith("sagas.runner."):
        # Each failed try and each retried undo: the ledger keeps them; the terminal shows the end.
        return record.levelno >= logging.ERROR
    if name == "sagas" or name.startswith("sagas."):
        return record.levelno >= logging.WARNING
    if getattr(record, "task_run_id", None) is not None or name.startswith("prefect.task_runs"):
        # A step's task run: its status is the progress display's; only a bug is worth a line.
        return record.exc_info is not None
    if getattr(record, "flow_run_id", None) is not None or name.startswith("prefect.flow_runs"):
        message = record.getMessage()
        if message.startswith("View at "):
            return True  # where the run is in the UI
        if message.startswith("Finished in state "):
            return False  # the saga's outcome line, which the command prints itself
        return record.levelno >= logging.WARNING
    return True


class TerminalFormatter(logging.Formatter):
    """Prefect's console layout (time | level | who - message), tracebacks only when verbose."""

    def __init__(self, *, tracebacks: bool) -> None:
        super().__init__()
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        moment = time.strftime("%H:%M:%S", time.localtime(record.created))
        task_run = getattr(record, "task_run_name", None)
        flow_run = getattr(record, "flow_run_name", None)
        who = f"Task run {task_run!r}" if task_run else f"Flow run {flow_run!r}" if flow_run else record.name
        line = f"{moment}.{int(record.msecs):03d} | {record.levelname:<7} | {who} - {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            if self.tracebacks:
                line += "\n" + self.formatException(record.exc_info)
            else:
                line += f" ({type(record.exc_info[1]).__name__}: --verbose shows the traceback)"
        return line


class TerminalHandler(logging.Handler):
    """Writes to the current ``sys.stderr`` (looked up per record: a test runner swaps it)."""

    def __init__(self, *, verbose: bool) -> None:
        super().__init__()
        self.set_verbose(verbose)

    def set_verbose(self, verbose: bool) -> None:
        self.verbose = verbose
        self.setFormatter(TerminalFormatter(tracebacks=verbose))

    def filter(self, record: logging.LogRecord) -> bool:
        return super().filter(record) and (self.verbose or shown_in_a_normal_run(record))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


def _mute(record: logging.LogRecord) -> bool:
    return False


# What undoes the current command's changes, newest last (a command run in-process inside another
# in a test nests them).
_undo: list[Callable[[], None]] = []
_handlers: list[TerminalHandler] = []


def install() -> Callable[[], None]:
    """Print log records the quiet way until the returned undo is called (it undoes ``be_verbose``
    too)."""
    root = logging.getLogger()
    handler = TerminalHandler(verbose=False)
    muted = [h for h in root.handlers if type(h).__name__ == "PrefectConsoleHandler"]
    for existing in muted:
        existing.addFilter(_mute)
    root.addHandler(handler)
    _handlers.append(handler)
    mark = len(_undo)

    def undo() -> None:
        while len(_undo) > mark:
            _undo.pop()()
        root.removeHandler(handler)
        _handlers.remove(handler)
        for existing in muted:
            existing.removeFilter(_mute)

    return undo


def be_verbose(verbose: bool) -> None:
    """``--verbose``: debug records of ours and Prefect's, every record, with tracebacks."""
    if not verbose:
        return
    for handler in _handlers:
        handler.set_verbose(True)
    # Prefect reads its level when it is imported (the commands import it late); when it already
    # is, its loggers are set directly.
    environment = os.environ.get("PREFECT_LOGGING_LEVEL")
    levels = {name: logging.getLogger(name).level for name in ("sagas", *_PREFECT_LOGGERS)}
    os.environ["PREFECT_LOGGING_LEVEL"] = "DEBUG"
    for name in levels:
        logging.getLogger(name).setLevel(logging.DEBUG)

    def undo() -> None:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        if environment is None:
            os.environ.pop("PREFECT_LOGGING_LEVEL", None)
        else:
            os.environ["PREFECT_LOGGING_LEVEL"] = environment

    _undo.append(undo)
