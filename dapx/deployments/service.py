"""Running DAPX as services (P6): `dapx worker` and `dapx install-service`.

``dapx worker --queue site-a --limit 4`` is a thin front to ``prefect worker start`` on the
``dapx`` process pool with the product's worker settings (a run started from the UI is picked
up within a second; at most ``--limit`` flow runs at once, so a backlog never starts all at
once). It finds the server's URL and credential where every client does (the active Prefect
profile, or the saved credential), and replaces itself with the worker: signals from systemd
reach Prefect's worker directly.

``dapx install-service`` writes systemd units: ``dapx.service`` runs ``dapx up`` (server,
deployments, a local worker); ``--worker --queue site-a`` writes ``dapx-worker-site-a.service``
for a host that only runs that site's jobs. Both read ``/etc/dapx/dapx.env`` (root-only), where
``DAPX_DATABASE_URL`` names the database when it is PostgreSQL.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from dapx.deployments import server
from dapx.errors import DapxError, InputError

UNIT_DIR = Path("/etc/systemd/system")
ENV_FILE = Path("/etc/dapx/dapx.env")
DEFAULT_WORKER_LIMIT = 4


def worker_argv(queues: list[str], limit: int, name: str | None = None) -> list[str]:
    """``prefect worker start`` on the dapx pool for ``queues`` (all the pool's queues when
    empty), at most ``limit`` runs at once."""
    from dapx.deployments.jobs import validate_site

    if not 1 <= limit <= 1000:
        raise InputError(f"--limit {limit} is out of range: give 1..1000 flow runs at once")
    argv = server.worker_argv(limit=limit)
    for queue in queues:
        argv += ["--work-queue", validate_site(queue)]
    return argv + (["--name", name] if name else [])


def run_worker(queues: list[str], limit: int, name: str | None = None) -> None:
    """Become the worker (exec). The pool is created (with heartbeats) or kept first, when the
    server answers; otherwise Prefect's worker waits for it by itself."""
    argv = worker_argv(queues, limit, name)
    try:
        server.ensure_work_pool()
    except Exception as exc:  # server not up yet (boot order): the worker retries on its own
        print(f"dapx worker: could not check the work pool now ({type(exc).__name__}); "
              "starting the worker anyway", file=sys.stderr)
    sys.stdout.flush()
    os.execve(argv[0], argv, server.worker_env())


# -----------------------------------------------------------------------------------------------
# systemd units


def _dapx_bin() -> str:
    return str(Path(sys.executable).with_name("dapx"))


def _common(description: str, exec_argv: list[str], home: Path, kill_mode: str) -> str:
    """The text of a unit running ``exec_argv`` as root with the Prefect home ``home``."""
    checkout = Path(__file__).resolve().parents[2]
    return f"""[Unit]
Description={description}
Documentation=file://{checkout}/README.md
Wants=network-online.target
After=network-online.target postgresql.service

[Service]
Type=simple
User=root
Environment=HOME=/root
Environment=PREFECT_HOME={home}
Environment=PYTHONUNBUFFERED=1
EnvironmentFile=-{ENV_FILE}
WorkingDirectory={checkout}
ExecStart={shlex.join(exec_argv)}
KillMode={kill_mode}
TimeoutStopSec=60
Restart=on-failure
RestartSec=5
UMask=0077

[Install]
WantedBy=multi-user.target
"""


def server_unit(port: int, home: Path) -> tuple[str, str]:
    """(file name, text) of the unit running the product: ``dapx up`` (Prefect server and UI,
    blocks, deployments, a worker). ``dapx up`` stops its children itself on SIGTERM, so
    systemd signals the main process only (KillMode=mixed)."""
    argv = [_dapx_bin(), "up", "--lab", "no", "--port", str(port)]
    return "dapx.service", _common("DAPX: Prefect server, deployments and a worker", argv,
                                   home, "mixed")


def worker_unit(queue: str | None, limit: int, home: Path) -> tuple[str, str]:
    """(file name, text) of the unit of a worker for one site's queue (every queue of the
    pool when None). The worker and its flow runs stop together (they report Crashed)."""
    worker_argv([queue] if queue else [], limit)  # refuses a bad queue name or limit now
    argv = [_dapx_bin(), "worker", "--limit", str(limit)]
    argv += ["--queue", queue] if queue else []
    # Named after its host and site, so the UI says where each run ran.
    argv += ["--name", f"{socket.gethostname()}-{queue or 'all'}"]
    name = f"dapx-worker-{queue}.service" if queue else "dapx-worker.service"
    return name, _common(f"DAPX worker ({'site ' + queue if queue else 'every site'})",
                         argv, home, "control-group")


def write_env_file(path: Path = ENV_FILE) -> bool:
    """Create ``path`` (0600, in a 0700 directory) holding DAPX_DATABASE_URL when this
    command has it set; keep an existing file. True when written."""
    if path.exists():
        return False
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    url = server.database_url()
    lines = ["# DAPX service settings (root only). DAPX_DATABASE_URL: the product's database,",
             "# e.g. postgresql+asyncpg://dapx:PASSWORD@db.example:5432/dapx",
             f"DAPX_DATABASE_URL={url}" if url else "#DAPX_DATABASE_URL="]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return True


def verify_unit(path: Path) -> str:
    """``systemd-analyze verify`` of a unit file: "" when it passes or the tool is missing,
    else what it said."""
    tool = shutil.which("systemd-analyze")
    if not tool:
        return ""
    done = subprocess.run([tool, "verify", str(path)], capture_output=True, text=True,
                          check=False)
    return "" if done.returncode == 0 else (done.stderr or done.stdout).strip()


def install(*, worker: bool, queue: str | None, limit: int, port: int,
            unit_dir: Path = UNIT_DIR, env_file: Path = ENV_FILE,
            enable: bool = True) -> list[str]:
    """Write the unit (and the env file when missing), verify it, and enable and start it
    when systemd runs here; return what was done, one line each. Raises DapxError when
    ``systemd-analyze verify`` refuses the unit."""
    home = server.prefect_home()
    name, text = worker_unit(queue, limit, home) if worker else server_unit(port, home)
    text = text.replace(f"EnvironmentFile=-{ENV_FILE}", f"EnvironmentFile=-{env_file}")
    unit_dir.mkdir(parents=True, exist_ok=True)
    path = unit_dir / name
    path.write_text(text)
    path.chmod(0o644)
    done = [f"wrote {path}"]
    if write_env_file(env_file):
        done.append(f"wrote {env_file} (root only)")
    problem = verify_unit(path)
    if problem:
        raise DapxError(f"systemd-analyze verify refused {path}: {problem.splitlines()[0]}")
    if enable and Path("/run/systemd/system").is_dir():
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        subprocess.run(["systemctl", "enable", "--now", name], check=True)
        done.append(f"enabled and started {name}")
    else:
        done.append(f"systemd is not running here: start it with `systemctl enable --now "
                    f"{name}` where it is")
    return done
