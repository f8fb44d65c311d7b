"""Session-wide rules for every test tier.

Lab and deploy tests must never skip: when the lab or the Prefect server cannot start, those
tests fail and say why. This hook turns any skip in those tiers into a failed session.
"""

from __future__ import annotations

import os

import pytest

# No telemetry or analytics from test servers: the machine has no route to them.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Test servers (the harness's too) keep concurrency leases as `dapx up`'s server does.
os.environ.setdefault("PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE",
                      "prefect.server.concurrency.lease_storage.filesystem")

# The lab fixtures (`lab`, `machine_before`) serve both the lab and the deploy tiers.
pytest_plugins = ["tests.helpers.lab"]

STRICT_TIERS = ("tests/lab/", "tests/deploy/")
_strict_skips: list[str] = []


def pytest_sessionstart(session: pytest.Session) -> None:
    from tests.helpers.leftovers import stop_orphaned_test_servers

    stopped = stop_orphaned_test_servers()
    if stopped:
        print(f"stopped {len(stopped)} Prefect server(s) a killed test run left behind "
              f"(pids {', '.join(map(str, stopped))})")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and any(tier in report.nodeid for tier in STRICT_TIERS):
        _strict_skips.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _strict_skips:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    if _strict_skips:
        terminalreporter.write_line(
            f"FAILED: {len(_strict_skips)} lab/deploy test(s) were skipped; these tiers may not skip:",
            red=True,
        )
        for nodeid in _strict_skips:
            terminalreporter.write_line(f"  {nodeid}", red=True)
