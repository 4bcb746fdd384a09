"""Which download failures are worth another attempt.

`SourceError` (tasks/download/sources.py) says a source cannot deliver. Its two subclasses say
whether trying again can help:

* `PermanentSourceError`: a missing band file, a corrupt or unreadable file, a scene without a
  date, rejected or missing credentials, a request the service refuses (4xx other than 429).
  The same attempt fails the same way: the tile should fail at once.
* `TransientSourceError`: I/O that may succeed later: the service overloaded or unreachable
  after the source's own retries (429, 5xx, timeouts, dropped connections), a network read
  that broke off.

`is_retryable(exc)` is the rule, for the task that runs a tile: permanent source errors and
configuration or programming errors (`ValueError`, `TypeError`, `KeyError`) are not retried;
a plain `SourceError` is not either (its contract was always "a retry will not fix it");
everything else (transient source errors, `OSError`, store I/O) is. `retry_condition` is the
same rule with the signature of Prefect's `retry_condition_fn` (task, task_run, state); it
needs no Prefect import.
"""

from __future__ import annotations

from typing import Any

from tasks.download.sources import SourceError


class PermanentSourceError(SourceError):
    """A source failure that another attempt cannot fix (missing bands, corrupt file, bad credentials)."""


class TransientSourceError(SourceError):
    """A source failure that may go away (network, service overloaded): worth another attempt."""


_NOT_RETRYABLE = (ValueError, TypeError, KeyError, NotImplementedError)


def is_retryable(exc: BaseException) -> bool:
    """Whether a tile that failed with `exc` may succeed when run again (see the module docstring)."""
    if isinstance(exc, TransientSourceError):
        return True
    if isinstance(exc, (SourceError, *_NOT_RETRYABLE)):
        return False
    return isinstance(exc, Exception)


def retry_condition(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry a failed tile task only if its exception is retryable."""
    exc = getattr(state, "data", None)
    if not isinstance(exc, BaseException):
        try:
            exc = state.result(raise_on_failure=False)
        except Exception as err:  # the result could not be read back: judge that error
            exc = err
    return isinstance(exc, BaseException) and is_retryable(exc)
