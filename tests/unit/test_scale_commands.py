"""Scaling out, without a server: the database setting, `dapx job create fleet` input, the
worker command line and the systemd units `dapx install-service` writes (checked by
`systemd-analyze verify` when the machine has it)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dapx.deployments import server, service
from dapx.deployments.fleet_cli import default_name, parse_routes, parse_vmids
from dapx.errors import InputError


def test_the_database_url_gets_its_async_driver_and_is_never_echoed(monkeypatch) -> None:
    monkeypatch.delenv(server.DATABASE_ENV, raising=False)
    assert server.database_url() is None
    assert server.database_url("postgresql://u:secret@db:5432/dapx") == \
        "postgresql+asyncpg://u:secret@db:5432/dapx"
    monkeypatch.setenv(server.DATABASE_ENV, "postgres://u:p@db/dapx")
    assert server.database_url() == "postgresql+asyncpg://u:p@db/dapx"
    for bad in ("mysql://u:secret@db/x", "postgresql://u:secret@db", "not a url"):
        with pytest.raises(InputError) as refused:
            server.database_url(bad)
        assert "secret" not in str(refused.value)
    env = server.server_env(4200, "dapx:x", "postgresql+asyncpg://u:p@db/dapx")
    assert env["PREFECT_API_DATABASE_CONNECTION_URL"] == "postgresql+asyncpg://u:p@db/dapx"


def test_fleet_routes_and_guest_lists() -> None:
    assert parse_routes("pve1,pve2", "pve3", ["pve3=pve1"]) == {
        "pve1": "pve3", "pve2": "pve3", "pve3": "pve1"}
    with pytest.raises(InputError, match="SRC=DST"):
        parse_routes("pve1", "pve3", ["pve3"])
    with pytest.raises(InputError, match="twice"):
        parse_routes("pve1", "pve3", ["pve1=pve2"])
    assert parse_vmids("100, 101") == [100, 101] and parse_vmids(None) == []
    with pytest.raises(InputError):
        parse_vmids("100;reboot")
    from dapx.core.fleet import FleetJob

    assert default_name(FleetJob(routes={"pve2": "pve3", "pve1": "pve3"})) == \
        "fleet-pve1-pve2-to-pve3"


def test_the_worker_is_prefects_with_a_limit_and_the_sites_queues() -> None:
    argv = service.worker_argv(["site-a", "site-b"], 3)
    assert argv[1:] == ["worker", "start", "--pool", "dapx", "--type", "process", "--limit",
                        "3", "--work-queue", "site-a", "--work-queue", "site-b"]
    with pytest.raises(InputError, match="site"):
        service.worker_argv(["Site A"], 3)
    with pytest.raises(InputError, match="limit"):
        service.worker_argv([], 0)


def test_a_flow_run_is_one_process_of_the_workers_own_python(tmp_path: Path) -> None:
    """The pool's command runs the engine with the interpreter that runs the worker, found
    from the worker's command line even when it is relative to the worker's directory (the
    run starts in a directory of its own), with the venv kept (symlinks not resolved)."""
    template: dict = {}
    assert server.with_engine_command(template) and not server.with_engine_command(template)
    assert template["variables"]["properties"]["command"]["default"] == server.ENGINE_COMMAND
    own = {"variables": {"properties": {"command": {"default": "python3 -m mine"}}}}
    assert not server.with_engine_command(own)  # a command the administrator set stays
    argv = shlex.split(server.ENGINE_COMMAND)
    assert argv[:2] == ["sh", "-c"] and argv[2].endswith('exec "$python" -m prefect.engine')
    probe = argv[2].replace("-m prefect.engine", "-c 'import sys, prefect; print(sys.prefix)'")
    venv = Path(sys.prefix)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    parent = ("import subprocess, sys; sys.exit(subprocess.run(['sh', '-c', sys.argv[1]], "
              "cwd=sys.argv[2]).returncode)")
    relative = Path(sys.executable).relative_to(venv.parent)  # e.g. .venv/bin/python
    done = subprocess.run([str(relative), "-c", parent, probe, str(run_dir)], cwd=venv.parent,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(venv)


def _verify(path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool:  # the lab machine has it; elsewhere the content checks below still run
        done = subprocess.run([tool, "verify", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def test_units_for_the_product_and_a_sites_worker(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(server.DATABASE_ENV, "postgresql://dapx:pw@db/dapx")
    done = service.install(worker=False, queue=None, limit=4, port=4300, unit_dir=tmp_path,
                           env_file=tmp_path / "etc" / "dapx.env", enable=False)
    assert done[:2] == [f"wrote {tmp_path}/dapx.service", f"wrote {tmp_path}/etc/dapx.env "
                        "(root only)"]
    unit = (tmp_path / "dapx.service").read_text()
    exec_start = shlex.split(unit.split("ExecStart=", 1)[1].splitlines()[0])
    assert exec_start[1:] == ["up", "--lab", "no", "--port", "4300"]
    assert Path(exec_start[0]).name == "dapx" and Path(exec_start[0]).exists()
    assert f"Environment=PREFECT_HOME={tmp_path / 'home'}" in unit
    assert "KillMode=mixed" in unit and "Restart=on-failure" in unit
    env = (tmp_path / "etc" / "dapx.env")
    assert oct(env.stat().st_mode & 0o777) == "0o600"
    assert "DAPX_DATABASE_URL=postgresql+asyncpg://dapx:pw@db/dapx" in env.read_text()
    _verify(tmp_path / "dapx.service")

    service.install(worker=True, queue="site-a", limit=2, port=0, unit_dir=tmp_path,
                    env_file=tmp_path / "etc" / "dapx.env", enable=False)
    worker = (tmp_path / "dapx-worker-site-a.service").read_text()
    argv = shlex.split(worker.split("ExecStart=", 1)[1].splitlines()[0])
    assert argv[1:6] == ["worker", "--limit", "2", "--queue", "site-a"]
    assert "KillMode=control-group" in worker
    _verify(tmp_path / "dapx-worker-site-a.service")
    with pytest.raises(InputError):
        service.worker_unit("../x", 2, tmp_path)


def test_cli_refusals(capsys, monkeypatch) -> None:
    from dapx.cli import main

    # Refused before any server is asked; and never look for one on the default port.
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")

    assert main(["install-service", "--queue", "site-a", "--no-enable"]) == 2
    assert "--worker" in capsys.readouterr().err
    assert main(["job", "create", "replica", "--source", "pve1", "--guest", "100", "--dest",
                 "pve3", "--tag", "x"]) == 2
    assert "does not take --tag" in capsys.readouterr().err
    assert main(["job", "create", "fleet", "--source", "pve1", "--dest", "pve3", "--guest",
                 "100"]) == 2
    assert "does not take --guest" in capsys.readouterr().err


def test_up_refuses_a_bad_database_before_starting_anything(capsys, monkeypatch) -> None:
    from dapx.cli import main

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert main(["up", "--database", "mysql://dapx:secret@db/dapx"]) == 2
    err = capsys.readouterr().err
    assert "postgresql+asyncpg://" in err and "secret" not in err and len(err.splitlines()) == 1


async def test_a_shared_scope_keeps_one_session_key_and_closes_it_once(monkeypatch) -> None:
    from dapx.tasks import ssh

    closed: list[str] = []

    async def close(run_key: str | None = None) -> None:
        closed.append(run_key)

    monkeypatch.setattr(ssh, "close_sessions", close)
    async with ssh.shared_sessions():
        key = ssh._run_key()
        assert key.startswith("shared-")

        async def guest() -> str:  # a guest's run: its own node_sessions() closes nothing
            async with ssh.node_sessions():
                return ssh._run_key()

        import asyncio

        assert await asyncio.gather(guest(), guest()) == [key, key]
        assert closed == []
    assert closed == [key] and ssh._run_key() == ""
