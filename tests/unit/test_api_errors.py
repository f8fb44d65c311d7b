"""PVE answers many permanent errors with HTTP 500: errors are classed by its wording too."""

from __future__ import annotations

import pytest

from dapx.errors import (ApiError, AuthError, ConnectionLost, GuestLocked, NotFoundError,
                         TransientApiError, is_retryable)
from dapx.transports.pve import classify_api_error


@pytest.mark.parametrize("status, text, expected, retryable", [
    (500, "Configuration file 'nodes/pve1/qemu-server/555.conf' does not exist",
     NotFoundError, False),
    (500, "storage 'nowhere' does not exist", NotFoundError, False),
    (500, "no such VM ('555')", NotFoundError, False),
    (500, "unable to create VM 100 - VM 100 already exists on node 'pve1'", ApiError, False),
    (500, "VM is locked (backup)", GuestLocked, True),
    (500, "CT 101 is locked (snapshot-delete)", GuestLocked, True),
    (595, "Connection refused", ConnectionLost, True),
    (500, "got timeout", TransientApiError, True),
    (503, "", TransientApiError, True),
    (400, "Parameter verification failed.", ApiError, False),
    (401, "authentication failure", AuthError, False),
])
def test_classified_by_status_and_wording(status: int, text: str, expected: type,
                                          retryable: bool) -> None:
    cls, _ = classify_api_error(status, text)
    assert cls is expected
    assert is_retryable(cls.__new__(cls)) is retryable


def test_the_lock_is_named() -> None:
    assert classify_api_error(500, "VM is locked (backup)") == (GuestLocked, "backup")
