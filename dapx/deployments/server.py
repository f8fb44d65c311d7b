"""Run the product: a Prefect server on its embedded SQLite, the work pool, and a worker.

``dapx up`` calls ``run_product``; the pieces are separate so tests can start just a server.

The server is never open: it runs with Prefect's own authentication
(``PREFECT_SERVER_API_AUTH_STRING``) with a credential made once and kept root-only in
``$PREFECT_HOME/dapx/api-auth`` (0600), CORS allows only the UI's own origin, and the Prefect
home with its database (which holds every block secret and their encryption key) is
readable by root only (0700/0600). Clients need nothing exported: the active Prefect profile
(``profiles.toml``, 0600) gets ``PREFECT_API_URL`` and ``PREFECT_API_AUTH_STRING``, which the
``prefect`` and ``dapx`` commands, workers and the Python SDK all read.
"""

from __future__ import annotations

import os
import secrets
import shlex
import stat
import subprocess
import sys
import time
import tomllib
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Iterator

import httpx

from dapx.errors import DapxError

WORK_POOL = "dapx"
DEFAULT_PORT = 4200
CREDENTIAL_FILE = Path("dapx") / "api-auth"
"""The API credential, relative to the Prefect home: ``dapx:<random>``, root-only."""
CREDENTIAL_USER = "dapx"
DEFAULT_PROFILE = "ephemeral"  # the profile Prefect makes active when none is chosen

DATABASE_ENV = "DAPX_DATABASE_URL"
"""The product's database, for Prefect's server and DAPX's own store alike: an SQLAlchemy URL
(``postgresql+asyncpg://user:password@host:5432/dapx``). Unset: Prefect's SQLite under the
Prefect home. ``dapx up --database URL`` sets it for everything it starts; a worker host sets
it in ``/etc/dapx/dapx.env`` (``dapx install-service``)."""

LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
"""Concurrency leases kept in files under the Prefect home: they survive a server restart, so a
lock held by a running job is neither lost (a second run getting in) nor leaked (the slot taken
for good, as with Prefect's in-memory default)."""


def server_env(port: int | None = None, credential: str | None = None,
               database: str | None = None) -> dict[str, str]:
    """Settings of the Prefect server the product runs (on top of the caller's environment);
    with ``credential``, authentication and CORS limited to the UI's origins on ``port``;
    with ``database`` (``database_url``), that database instead of the SQLite file."""
    env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASE_STORAGE,
           # The UI calls the API at this URL: on another port than 4200 it would call nothing.
           "PREFECT_UI_API_URL": f"http://127.0.0.1:{port or DEFAULT_PORT}/api"}
    if credential:
        env |= {"PREFECT_SERVER_API_AUTH_STRING": credential,
                "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": ui_origins(port or DEFAULT_PORT)}
    if database:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database
    return env


_ASYNC_DRIVERS = {"postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg",
                  "postgresql+asyncpg": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite",
                  "sqlite+aiosqlite": "sqlite+aiosqlite"}


def database_url(url: str | None = None) -> str | None:
    """The product's database URL with its async driver (``postgresql://`` becomes
    ``postgresql+asyncpg://``, as Prefect's server needs): ``url``, else ``$DAPX_DATABASE_URL``,
    else None (Prefect's SQLite). Raises InputError for a URL that is not PostgreSQL or SQLite
    or names no database; the message never repeats the URL (it may hold a password)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    from dapx.errors import InputError

    text = (url if url is not None else os.environ.get(DATABASE_ENV, "")).strip()
    if not text:
        return None
    try:
        parsed = make_url(text)
    except (ArgumentError, ValueError):
        raise InputError("the database URL is not an SQLAlchemy URL; use "
                         "postgresql+asyncpg://user:password@host:5432/dbname") from None
    driver = _ASYNC_DRIVERS.get(parsed.drivername)
    if driver is None or not parsed.database:
        raise InputError(f"the database URL must be postgresql+asyncpg://user:password@host/"
                         f"dbname (got a {parsed.drivername} URL"
                         f"{'' if parsed.database else ' naming no database'})")
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def prefect_bin() -> str:
    """Path of the `prefect` command installed beside this Python."""
    return str(Path(sys.executable).with_name("prefect"))


def prefect_api_url() -> str | None:
    """The API URL this process's Prefect client uses (environment, then profile)."""
    from prefect.settings import PREFECT_API_URL

    return os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()


def is_healthy(api_url: str) -> bool:
    """True when a Prefect server answers ``api_url``/health."""
    try:
        return httpx.get(f"{api_url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(api_url: str, timeout: float = 90.0) -> None:
    """Wait until ``api_url``/health answers; raise DapxError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_healthy(api_url):
            return
        time.sleep(0.5)
    raise DapxError(f"Prefect server at {api_url} did not become healthy in {timeout:.0f} s")


# -----------------------------------------------------------------------------------------------
# The API credential, the Prefect home's modes, the client profile


def prefect_home() -> Path:
    """The Prefect home: ``$PREFECT_HOME`` when set (read now, not at import), else Prefect's
    setting (``~/.prefect``)."""
    if os.environ.get("PREFECT_HOME"):
        return Path(os.environ["PREFECT_HOME"]).expanduser()
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home).expanduser()


def secure_home(home: Path) -> None:
    """Make the Prefect home and its database, profiles and dapx files root-only: the
    database holds every block secret and the key they are encrypted with."""
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    (home / CREDENTIAL_FILE.parent).mkdir(mode=0o700, exist_ok=True)
    (home / CREDENTIAL_FILE.parent).chmod(0o700)
    for path in [*home.glob("prefect.db*"), home / "profiles.toml",
                 *(home / CREDENTIAL_FILE.parent).glob("*")]:
        if path.is_file() and not path.is_symlink():
            path.chmod(stat.S_IMODE(path.stat().st_mode) & 0o600)


def api_credential(home: Path | None = None) -> str:
    """The Prefect API credential (``dapx:<random>``), made once and kept in
    ``<home>/dapx/api-auth`` (0600, in a 0700 directory). In: the Prefect home (default
    ``prefect_home()``). Out: the credential."""
    home = home or prefect_home()
    secure_home(home)
    path = home / CREDENTIAL_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = ""
    if text:
        return text
    credential = f"{CREDENTIAL_USER}:{secrets.token_urlsafe(32)}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(credential + "\n")
    path.chmod(0o600)
    return credential


def ui_origins(port: int) -> str:
    """The UI's own origins (CORS allows only these): 127.0.0.1 and localhost on ``port``."""
    return f"http://127.0.0.1:{port},http://localhost:{port}"


def client_settings(api_url: str | None, credential: str) -> dict[str, str]:
    """What a client needs to use the server: its URL (when known) and the credential. The
    server-side credential comes along so that a server Prefect starts by itself from this
    profile (``prefect server start``, the ephemeral one) is never open either."""
    settings = {"PREFECT_API_AUTH_STRING": credential,
                "PREFECT_SERVER_API_AUTH_STRING": credential}
    return settings | ({"PREFECT_API_URL": api_url} if api_url else {})


def write_client_profile(settings: dict[str, str], home: Path | None = None) -> Path:
    """Merge ``settings`` into the active Prefect profile in ``<home>/profiles.toml`` (0600),
    as ``prefect config set`` would; return the file's path. The active profile is
    ``$PREFECT_PROFILE``, else the file's ``active``, else Prefect's default."""
    import toml  # Prefect's own dependency, as prefect.settings.profiles writes the file

    home = home or prefect_home()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml")
    data = tomllib.loads(path.read_text()) if path.exists() else {}
    active = os.environ.get("PREFECT_PROFILE") or data.get("active") or DEFAULT_PROFILE
    data.setdefault("active", active)
    profile = data.setdefault("profiles", {}).setdefault(active, {})
    if all(profile.get(k) == v for k, v in settings.items()):
        return path
    profile.update(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(toml.dumps(data))
    path.chmod(0o600)
    return path


def use_credential(api_url: str | None, credential: str) -> AbstractContextManager:
    """Point the processes this one starts (environment, now) and this process (the settings
    context returned, to enter) at the server with the credential."""
    from prefect.settings import (PREFECT_API_AUTH_STRING, PREFECT_API_URL,
                                  temporary_settings)

    updates = {PREFECT_API_AUTH_STRING: credential}
    os.environ["PREFECT_API_AUTH_STRING"] = credential
    if api_url:
        os.environ["PREFECT_API_URL"] = api_url
        updates[PREFECT_API_URL] = api_url
    return temporary_settings(updates=updates)


def connect_clients(api_url: str, home: Path | None = None) -> Path:
    """After the server is up: write its URL and credential into the active profile, so
    ``prefect``, ``dapx``, workers and the SDK find them with nothing exported. Returns the
    credential file's path (the UI's login asks for its content)."""
    home = home or prefect_home()
    write_client_profile(client_settings(api_url, api_credential(home)), home)
    return home / CREDENTIAL_FILE


def prepare_clients(home: Path | None = None) -> None:
    """Before the first server runs (``dapx init``): make the credential and put it in the
    active profile, so even a server Prefect starts by itself requires it; use it here."""
    home = home or prefect_home()
    credential = api_credential(home)
    write_client_profile(client_settings(None, credential), home)
    use_credential(None, credential).__enter__()  # for the rest of this command


def use_saved_credential(home: Path | None = None) -> None:
    """Use the saved credential in this command when no credential is configured (e.g.
    another profile is active); nothing when there is none."""
    from prefect.settings import PREFECT_API_AUTH_STRING

    if os.environ.get("PREFECT_API_AUTH_STRING") or PREFECT_API_AUTH_STRING.value():
        return
    path = (home or prefect_home()) / CREDENTIAL_FILE
    try:
        credential = path.read_text().strip()
    except OSError:
        return
    if credential:
        use_credential(None, credential).__enter__()  # for the rest of this command


# -----------------------------------------------------------------------------------------------
# The server


def start_server(port: int = DEFAULT_PORT, *, log_path: Path | None = None,
                 home: Path | None = None, database: str | None = None) -> subprocess.Popen:
    """Start ``prefect server start`` on 127.0.0.1:``port`` in a session of its own (the
    database and leases under ``home``, default the caller's PREFECT_HOME; with ``database``,
    that database: see ``database_url``), requiring the home's credential
    (``api_credential``), CORS limited to its UI, its files root-only; ``stop_server`` ends
    it. Prefect migrates the database to its version as it starts."""
    home = home or prefect_home()
    credential = api_credential(home)
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    env = {**os.environ, "PREFECT_HOME": str(home), **server_env(port, credential, database)}
    env.pop("PREFECT_API_URL", None)
    try:
        # umask 077: the database, its journal and the logs are created root-only.
        return subprocess.Popen(
            [prefect_bin(), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            umask=0o077)
    finally:
        if log is not subprocess.DEVNULL:
            log.close()  # the child holds its own copy


def stop_server(proc: subprocess.Popen) -> None:
    """Terminate the server (SIGKILL after 20 s)."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def prefect_server(port: int = DEFAULT_PORT, *, log_path: Path | None = None,
                   home: Path | None = None, database: str | None = None) -> Iterator[str]:
    """Start ``prefect server start`` on 127.0.0.1:``port`` (``start_server``: with
    authentication, CORS limited to its UI, its home root-only, on ``database`` when given);
    yield its API URL; stop it after."""
    api_url = f"http://127.0.0.1:{port}/api"
    home = home or prefect_home()
    proc = start_server(port, log_path=log_path, home=home, database=database)
    try:
        wait_healthy(api_url)
        secure_home(home)  # a database made by an older version may still be world-readable
        yield api_url
    finally:
        stop_server(proc)


HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"


def with_heartbeats(template: dict, heartbeat_seconds: int) -> bool:
    """Make every flow run of a process pool send heartbeats (so a run whose process dies with
    its worker is marked Crashed: ``dapx.deployments.automations``), keeping whatever else
    the template's environment holds. True when ``template`` changed."""
    properties = template.setdefault("variables", {}).setdefault("properties", {})
    env = properties.setdefault("env", {"type": "object"})
    default = env.get("default") or {}
    if default.get(HEARTBEAT_ENV):
        return False
    env["default"] = {**default, HEARTBEAT_ENV: str(heartbeat_seconds)}
    return True


# A process worker whose pool sets no command starts each flow run through a workspace
# supervisor: a Python process that imports Prefect's runner (~0.8 s) only to start a second
# one, the engine. Naming the engine command makes it one process (a run is Running ~0.9 s
# sooner, and holds one interpreter's memory instead of two). The interpreter is the worker's
# own: the first word of its command line (a venv's python for the `prefect` script; a
# relative one is taken from the worker's directory, symlinks kept so the venv stays), so the
# command holds no path of the host that made the pool, and a worker on another host runs its
# own installation. Linux: /proc.
ENGINE_SCRIPT = '\n'.join([
    'python=$(tr "\\000" "\\n" </proc/$PPID/cmdline | head -n 1) || exit 1',
    'case $python in */*) python=$(cd -P "/proc/$PPID/cwd" && realpath -s -- "$python") '
    '|| exit 1;; esac',
    'exec "$python" -m prefect.engine'])
ENGINE_COMMAND = shlex.join(["sh", "-c", ENGINE_SCRIPT])


def with_engine_command(template: dict) -> bool:
    """Make a process pool start flow runs with ``ENGINE_COMMAND`` unless its template names
    a command already. True when ``template`` changed."""
    properties = template.setdefault("variables", {}).setdefault("properties", {})
    command = properties.setdefault("command", {"type": "string"})
    if command.get("default"):
        return False
    command["default"] = ENGINE_COMMAND
    command["description"] = ("Set by DAPX: Prefect's engine under the worker's own Python, one "
                              "process per flow run (left blank, Prefect starts a workspace "
                              "supervisor process first, which then starts the engine).")
    return True


def ensure_work_pool(name: str = WORK_POOL) -> None:
    """Create the process work pool ``name`` (flow runs with heartbeats, one process each),
    or add those to an existing pool's job template (nothing else of it changes)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    from dapx.deployments.automations import HEARTBEAT_SECONDS

    with get_client(sync_client=True) as client:
        try:
            template = client.read_work_pool(name).base_job_template
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            with_heartbeats(template, HEARTBEAT_SECONDS)
            with_engine_command(template)
            try:
                client.create_work_pool(WorkPoolCreate(name=name, type="process",
                                                       base_job_template=template))
            except ObjectAlreadyExists:  # created meanwhile by another process
                pass
            return
        if not template.get("job_configuration"):  # a pool made without a template
            template = ProcessWorker.get_default_base_job_template()
        changed = [with_heartbeats(template, HEARTBEAT_SECONDS), with_engine_command(template)]
        if any(changed):
            client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))


def register_blocks() -> None:
    """Register DAPX block types with the Prefect server (what `prefect block register -m` does)."""
    subprocess.run([prefect_bin(), "block", "register", "-m", "dapx.blocks"],
                   check=True, stdout=subprocess.DEVNULL)


WORKER_QUERY_SECONDS = 0.5
"""How often a worker asks the server for runs to start (Prefect's default, 10 s, makes a run
started from the UI wait up to 10 s before anything happens)."""


def worker_env() -> dict[str, str]:
    """Settings of the workers the product starts (on top of the caller's environment)."""
    return {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": str(WORKER_QUERY_SECONDS)}


def worker_argv(pool: str = WORK_POOL, limit: int = 4, *, run_once: bool = False) -> list[str]:
    """argv of a process worker on ``pool`` running at most ``limit`` flow runs at once."""
    argv = [prefect_bin(), "worker", "start", "--pool", pool, "--type", "process",
            "--limit", str(limit)]
    return argv + (["--run-once"] if run_once else [])
