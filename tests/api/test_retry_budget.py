"""Retries are bounded and follow PVE's wording, against fakepve (PVE's own error texts).

A destination API answering 500 costs a replica's VMID check 4 calls (the first try and three
retries) and at most about 20 s of back-off, never 16 calls over a minute as when tasks called
tasks; a 500 that says the guest does not exist is not retried at all; a locked guest names
its lock.
"""

from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from dapx.blocks import ProxmoxNode
from dapx.core.jobspec import ReplicaJob
from dapx.errors import GuestLocked, NotFoundError, TransientApiError
from dapx.tasks.base import BACKOFF_FACTOR, DEFAULT_RETRIES
from tests.api.test_pve_client import TOKEN_ID, TOKEN_SECRET, cert_fingerprint, pve  # noqa: F401

LIMIT = 10_000


def _node(pve, fingerprint: str) -> ProxmoxNode:  # noqa: ANN001
    return ProxmoxNode(name="pve1", host=pve.host, api_port=pve.port, api_token_id=TOKEN_ID,
                       api_token_secret=SecretStr(TOKEN_SECRET), tls_fingerprint=fingerprint)


def _calls_made(pve, method: str, path: str) -> int:  # noqa: ANN001
    rule = pve.failures.get((method, path))
    return LIMIT - (rule["times"] if rule else 0)


def test_the_back_off_is_bounded() -> None:
    from dapx.flows.register import check_vmid_available

    delays = check_vmid_available.retry_delay_seconds
    assert check_vmid_available.retries == DEFAULT_RETRIES == len(delays)
    worst = sum(delays) * (1 + check_vmid_available.retry_jitter_factor)
    assert worst <= 30, f"a transient outage may cost {worst:g} s of back-off alone"
    assert delays == [BACKOFF_FACTOR * 2 ** i for i in range(DEFAULT_RETRIES)]


def _check_vmid(node: ProxmoxNode, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import flow

    from dapx.flows import register
    from dapx.flows.register import check_vmid_available

    async def no_config_file(*_args: object) -> None:  # the SSH half: this test is the API's
        return None

    monkeypatch.setattr(register, "existing_config", no_config_file)

    quick = check_vmid_available.with_options(retry_delay_seconds=0)
    job = ReplicaJob(source="pve3", guest=100, destination="pve1", dest_vmid=9100)

    @flow
    async def check() -> None:
        await quick(job, node, node, "qemu")

    asyncio.run(check())


def test_a_busy_api_costs_four_calls_not_sixteen(pve, cert_fingerprint, prefect_harness,  # noqa: F811
                                                 monkeypatch) -> None:  # noqa: ANN001
    pve.fail("GET", "/cluster/resources", 500, "got timeout", times=LIMIT)
    with pytest.raises(TransientApiError, match="got timeout"):
        _check_vmid(_node(pve, cert_fingerprint), monkeypatch)
    assert _calls_made(pve, "GET", "/cluster/resources") == 1 + DEFAULT_RETRIES


def test_a_missing_guest_is_not_retried(pve, cert_fingerprint, prefect_harness,  # noqa: F811
                                        monkeypatch) -> None:  # noqa: ANN001
    message = "Configuration file 'nodes/pve1/qemu-server/555.conf' does not exist"
    pve.fail("GET", "/cluster/resources", 500, message, times=LIMIT)
    with pytest.raises(NotFoundError, match="555.conf' does not exist"):
        _check_vmid(_node(pve, cert_fingerprint), monkeypatch)
    assert _calls_made(pve, "GET", "/cluster/resources") == 1


def test_a_locked_guest_names_its_lock(pve, cert_fingerprint) -> None:  # noqa: F811
    pve.snapshot_lock(100, "backup")
    api = _node(pve, cert_fingerprint).api()
    with pytest.raises(GuestLocked, match=r"locked \(backup\)") as caught:
        api.set_guest_config("pve1", "qemu", 100, memory=4096)
    assert caught.value.lock == "backup"
