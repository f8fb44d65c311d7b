"""The one way DAPX makes a Prefect task, and so the one place to read its retry policy.

``dapx_task`` retries a task only when it failed with a transient error (``TransientError``:
connection lost, dataset busy, HTTP 5xx), with exponential backoff of 2, 4, 8 s (jitter up to
half again). A transient outage thus costs at most about a minute before the run fails with
a clear error; permanent errors (missing guest, refused key, diverged target) fail at once.

Rules the factory cannot enforce, every task keeps:
- a task never calls another task (retries would multiply: 4 x 4 attempts);
- a mutating task is safe to repeat (it checks first and treats "already done" as done),
  or is declared with ``retries=0``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_RETRIES = 3
BACKOFF_FACTOR = 2


def dapx_task(fn: F | None = None, *, retries: int = DEFAULT_RETRIES, name: str | None = None,
              timeout_seconds: float | None = None) -> Any:
    """Decorate ``fn`` (sync or async) as a Prefect task with DAPX's retry policy.

    Use bare (``@dapx_task``) or with options (``@dapx_task(retries=0, name="...")``).
    ``retries`` counts retries after the first attempt (transient errors only).
    """
    from prefect import task
    from prefect.cache_policies import NO_CACHE
    from prefect.tasks import exponential_backoff

    from dapx.errors import retry_if_transient

    def decorate(func: F) -> Any:
        options: dict[str, Any] = {"name": name} if name else {}
        if retries:
            options.update(retries=retries,
                           retry_delay_seconds=exponential_backoff(backoff_factor=BACKOFF_FACTOR),
                           retry_jitter_factor=0.5, retry_condition_fn=retry_if_transient)
        return task(func, cache_policy=NO_CACHE, log_prints=False,
                    timeout_seconds=timeout_seconds, **options)

    return decorate(fn) if fn is not None else decorate


def run_logger(fallback: str = "dapx.ssh") -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a flow/task run (shown in the UI), else the logger named
    ``fallback``."""
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # outside a run Prefect raises MissingContextError
        return logging.getLogger(fallback)
