"""The protection store never fails a good copy: a store that cannot be written is logged."""

from __future__ import annotations

import logging

from dapx.tasks import store


async def test_a_store_that_cannot_be_written_is_logged_and_records_nothing(
        tmp_path, monkeypatch, caplog) -> None:  # noqa: ANN001 - pytest fixtures
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's directory would go")
    monkeypatch.setenv(store.STORE_URL_ENV, f"sqlite:///{blocker / 'protection.db'}")
    with caplog.at_level(logging.ERROR, logger="dapx.store"):
        stored = await store._store("replica", [store.Copy("pve1", 100, "pve3", "snap")])
    assert stored == 0
    [line] = [r.getMessage() for r in caplog.records if r.name == "dapx.store"]
    assert line.startswith("could not record the replica of pve1/100 in the protection store")
