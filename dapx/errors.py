"""Typed errors shared by every layer.

Every error the product raises on purpose is a ``DapxError``. Its message is one line that
says what is wrong and, where possible, what to do about it. The class says whether a retry
can help: ``TransientError`` (connection lost, dataset busy) or ``PermanentError`` (no such
dataset, diverged target, refused key). Task retries key off that via ``retry_if_transient``.
"""

from __future__ import annotations


class DapxError(Exception):
    """Base of every deliberate DAPX error; ``str(err)`` is the user-facing message."""

    retryable: bool = False


class InputError(DapxError):
    """Invalid input from a user (bad name, VMID out of range, bad cron line, unknown node)."""


class TransientError(DapxError):
    """Something that may work if tried again (connection lost, lock held, busy)."""

    retryable = True


class PermanentError(DapxError):
    """Retrying will not help (missing dataset, diverged target, refused key, failed task)."""


class ConnectionLost(TransientError):
    """A network connection could not be made or was cut."""


class HostKeyError(PermanentError):
    """A node's SSH host key is unknown or differs from the pinned one."""


class TLSFingerprintError(PermanentError):
    """A node's TLS certificate does not match the pinned fingerprint."""


class AuthError(PermanentError):
    """Credentials were refused (SSH key, API token)."""


class CommandError(PermanentError):
    """A remote command exited non-zero.

    Attributes: ``argv`` (list[str]), ``exit_status`` (int|None), ``stderr_tail`` (str).
    """

    def __init__(self, message: str, *, argv: list[str] | None = None,
                 exit_status: int | None = None, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.argv = list(argv or [])
        self.exit_status = exit_status
        self.stderr_tail = stderr_tail


class TransientCommandError(CommandError, TransientError):
    """A remote command failed in a way a retry may fix (dataset busy, lock held)."""

    retryable = True


class ApiError(PermanentError):
    """The PVE/PBS API answered with an error. ``status`` is the HTTP status code."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientApiError(ApiError, TransientError):
    """An API error a retry may fix (HTTP 5xx from a busy node, a lock timeout)."""

    retryable = True


class NotFoundError(ApiError):
    """The API says the guest, storage or file asked for does not exist (PVE answers many of
    these with HTTP 500): retrying cannot help."""


class GuestLocked(TransientApiError):
    """The guest holds a PVE lock (``VM is locked (backup)``); ``lock`` names it. Waits within
    the task's bounded retry budget, then fails naming the lock."""

    def __init__(self, message: str, *, status: int | None = None, lock: str = "") -> None:
        super().__init__(message, status=status)
        self.lock = lock


class TaskFailed(PermanentError):
    """A PVE/PBS task (UPID) ended with an exitstatus other than ``OK``."""

    def __init__(self, message: str, *, upid: str = "", exitstatus: str = "",
                 log_tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.upid = upid
        self.exitstatus = exitstatus
        self.log_tail = list(log_tail or [])


class ConflictError(PermanentError):
    """A plan found a conflict (diverged target, no common snapshot, foreign dataset)."""


def is_retryable(exc: BaseException) -> bool:
    """True when ``exc`` says a retry can help."""
    return bool(getattr(exc, "retryable", False))


def retry_if_transient(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's signature
    """Prefect ``retry_condition_fn``: retry only when the task failed with a transient error.

    Works for sync and async tasks: the exception is read from the state synchronously
    (``_sync=True``), since in an async task the default would hand back a coroutine.
    """
    from prefect.states import get_state_exception

    try:
        return is_retryable(get_state_exception(state, _sync=True))
    except (TypeError, ValueError):  # not a failed state, or no exception attached
        return False
