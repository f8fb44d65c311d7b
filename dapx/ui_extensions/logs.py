"""What run logs show: a deliberate DAPX error (``DapxError``: bad input, a refused key, a
diverged target) is logged as its one-line message, without the traceback Prefect attaches to
every failed run; tracebacks stay for real bugs. Installed once per process, for every logger
and handler, whenever Prefect (re)configures its logging."""

from __future__ import annotations

import logging

from dapx.errors import DapxError

_installed = False


def quiet_user_errors() -> None:
    """Strip the traceback from log records of a DapxError (idempotent)."""
    global _installed
    if _installed:
        return
    make_record = logging.getLogRecordFactory()

    def record_without_user_tracebacks(*args, **kwargs) -> logging.LogRecord:  # noqa: ANN002,ANN003
        record = make_record(*args, **kwargs)
        if record.exc_info and isinstance(record.exc_info[1], DapxError):
            record.exc_info = None
            record.exc_text = None
        return record

    logging.setLogRecordFactory(record_without_user_tracebacks)
    _installed = True
