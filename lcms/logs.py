"""What LCMS prints while it runs, and the logs it keeps of failed tiles.

- The command line shows one line per event a person cares about: each tile's outcome (tile,
  year, status, seconds), each stage's summary, warnings and errors in colour on a terminal.
  Prefect's and Dask's routine lines ("Finished in state Completed()", the dashboard address,
  the temporary server's banner) are shown only with `--verbose`; `--quiet` shows warnings,
  errors and the final summary.
- A progress bar per stage on a terminal, drawn on the same console as the log lines so the
  two never interleave; plain progress lines every few seconds when the output is a file.
- `capture_tile_log` keeps what one tile's work logged, so that a failed tile leaves its log
  (with the traceback) in the store beside its done mark (`TileStore.write_failure_log`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import traceback
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

QUIET, NORMAL, VERBOSE = 0, 1, 2

# One console for log lines and progress bars: rich draws the lines above a live bar.
console = Console(stderr=True, highlight=False, soft_wrap=True)

_verbosity = NORMAL

# Routine lines from Prefect and Dask, shown only with --verbose.
_ROUTINE = re.compile(
    r"^(Finished in state Completed\(\)$|Beginning (sub)?flow run '.*' for flow '[a-z0-9-]+-tiles'"
    r"|Connecting to an existing Dask cluster|The Dask dashboard is available|Created (sub)?flow run|Created task run)"
)
_ROUTINE_LOGGERS = (
    "prefect.task_runs",
    "prefect.task_runner",
    "distributed",
    "httpx",
    "uvicorn",
    "pyogrio",
    "numexpr",
    "botocore",  # "Found credentials in environment variables."
    "aiobotocore",
    "s3fs",
)
_STYLES = {logging.WARNING: "yellow", logging.ERROR: "bold red", logging.CRITICAL: "bold red"}


class ConsoleLogHandler(logging.Handler):
    """`HH:MM:SS message`, with the level named (and coloured) from warnings up.

    It has a formatter and a public name so that Prefect, when it sets up its logging again (e.g. as
    a flow starts), sees a user's handler on the root logger and leaves it in place.
    """

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    def filter(self, record: logging.LogRecord) -> bool:
        if _verbosity >= VERBOSE:
            return True
        if record.levelno >= logging.WARNING:
            return True
        if _verbosity <= QUIET and not getattr(record, "lcms_summary", False):
            return False
        if record.name.startswith(_ROUTINE_LOGGERS):
            return False
        message = record.getMessage()
        if record.name == "prefect" and message.startswith("Starting temporary server"):
            record.msg, record.args = message.splitlines()[0] + " (for this command only)", ()
            return True
        return not _ROUTINE.match(message)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
            level = f"{record.levelname} " if record.levelno >= logging.WARNING else ""
            text = Text(f"{stamp} {level}{record.getMessage()}", style=_STYLES.get(record.levelno, ""))
            if record.exc_info and _verbosity >= VERBOSE:
                text.append("\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip())
            console.print(text)
        except Exception:  # a log line must never break a run
            self.handleError(record)


def configure(verbosity: int = NORMAL) -> None:
    """Route every log record (ours, Prefect's, Dask's) through one console handler on the root logger.

    Called by the CLI before a command runs, and again once Prefect has set up its own logging
    (Prefect replaces the root logger's handlers when it is imported).
    """
    global _verbosity
    _verbosity = verbosity
    root = logging.getLogger()
    for handler in list(root.handlers):
        if not isinstance(handler, ConsoleLogHandler):
            root.removeHandler(handler)
    if not any(isinstance(h, ConsoleLogHandler) for h in root.handlers):
        root.addHandler(ConsoleLogHandler())
    root.setLevel(logging.DEBUG if verbosity >= VERBOSE else logging.INFO)
    # Prefect's own console handler would print a second copy of its records.
    for name in ("prefect", "uvicorn", "fastapi"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler).__name__ == "PrefectConsoleHandler":
                logger.removeHandler(handler)
        if name != "prefect":
            logger.propagate = True
    if verbosity < VERBOSE:
        for name in ("prefect.server", "uvicorn", "distributed", "httpx", "pyogrio"):
            logging.getLogger(name).setLevel(logging.WARNING)


def summary(logger: logging.Logger, message: str, *args) -> None:
    """A line shown even with --quiet: a stage's or a run's summary."""
    logger.info(message, *args, extra={"lcms_summary": True})


# --------------------------------------------------------------------------- progress


class StageProgress:
    """Progress of one stage's tiles: a bar on a terminal, a plain line every `every` seconds otherwise."""

    def __init__(self, stage: str, total: int, enabled: bool = True, every: float = 15.0):
        self.stage, self.total, self.done, self.every = stage, total, 0, every
        self.bar = enabled and console.is_terminal and _verbosity > QUIET and total > 1
        self.plain = enabled and not self.bar and _verbosity > QUIET and total > 1
        self._last = time.monotonic()
        self._progress: Progress | None = None

    def __enter__(self) -> StageProgress:
        if self.bar:
            self._progress = Progress(
                TextColumn(f"{self.stage}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.stage, total=self.total)
        return self

    def advance(self) -> None:
        self.done += 1
        if self._progress is not None:
            self._progress.advance(self._task)
        elif self.plain and (time.monotonic() - self._last >= self.every) and self.done < self.total:
            self._last = time.monotonic()
            logging.getLogger("lcms.progress").info(
                "%s: %d of %d tile-years (%d %%)", self.stage, self.done, self.total, 100 * self.done // self.total
            )

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()


# --------------------------------------------------------------------------- one tile's log


class _ThreadCapture(logging.Handler):
    def __init__(self, thread: int):
        super().__init__(logging.DEBUG)
        self.thread = thread
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.lines.append(self.format(record))


@contextlib.contextmanager
def capture_tile_log() -> Iterator[list[str]]:
    """Collect what this thread logs (at INFO and above from LCMS' own loggers) while the block runs.

    Tile functions run one per worker thread, so the thread tells one tile's lines from another's.
    """
    handler = _ThreadCapture(threading.get_ident())
    loggers = [logging.getLogger(name) for name in ("lcms", "tasks")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def failure_text(what: str, lines: list[str], exc: BaseException) -> str:
    """The failure log of one tile: what it was, what it logged, and the traceback."""
    trace = "".join(traceback.format_exception(exc)).rstrip()
    logged = "\n".join(lines) if lines else "(nothing logged)"
    return f"{what} failed at {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n\n--- log\n{logged}\n\n--- traceback\n{trace}\n"
