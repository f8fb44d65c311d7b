"""A throwaway PostgreSQL cluster for the deploy tier and the benches: Debian's PostgreSQL 15
binaries run as the ``postgres`` user on a free port of 127.0.0.1, with a temporary data
directory (and its own socket directory) removed afterwards. Never the system cluster, never
a fixed port. ``scripts/setup.sh`` installs the package when run as root.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"


class PostgresMissing(RuntimeError):
    """PostgreSQL cannot run here (package missing, no postgres user, not root)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check() -> None:
    """Raise PostgresMissing saying what to install or do."""
    if os.geteuid() != 0:
        raise PostgresMissing("a throwaway PostgreSQL cluster needs root (it runs as postgres)")
    if not (PG_BIN / "initdb").exists():
        raise PostgresMissing(f"{PG_BIN}/initdb is missing: apt-get install -y postgresql "
                              "(./scripts/setup.sh does it as root)")
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        raise PostgresMissing("there is no postgres user: apt-get install -y postgresql") from None


def _as_postgres(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, user=PG_USER, group=PG_USER, check=True, capture_output=True,
                          text=True, **kwargs)


@contextmanager
def throwaway_cluster(database: str = "prefect") -> Iterator[str]:
    """Start a cluster with one database and a password-protected user; yield its URL
    (``postgresql+asyncpg://dapx:<password>@127.0.0.1:<port>/<database>``); stop it and
    delete its files after."""
    check()
    root = Path(tempfile.mkdtemp(prefix="dapx-pg-"))
    owner = pwd.getpwnam(PG_USER)
    os.chown(root, owner.pw_uid, owner.pw_gid)
    data, sockets = root / "data", root / "run"
    password, port = secrets.token_hex(16), _free_port()
    started = False
    try:
        pwfile = root / "pw"
        pwfile.write_text(password + "\n")
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        pwfile.chmod(0o600)
        sockets.mkdir()
        os.chown(sockets, owner.pw_uid, owner.pw_gid)
        _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "dapx", "-A",
                      "scram-sha-256", f"--pwfile={pwfile}", "--no-sync", "-E", "UTF8"])
        pwfile.unlink()
        options = (f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-o", options, "-l",
                      str(root / "server.log"), "-w", "-t", "60", "start"], timeout=90)
        started = True
        _as_postgres([str(PG_BIN.parent / "bin" / "createdb"), "-h", "127.0.0.1", "-p",
                      str(port), "-U", "dapx", database], env={"PGPASSWORD": password})
        yield f"postgresql+asyncpg://dapx:{password}@127.0.0.1:{port}/{database}"
    finally:
        if started:
            subprocess.run([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w",
                            "stop"], user=PG_USER, group=PG_USER, capture_output=True,
                           timeout=60)
        shutil.rmtree(root, ignore_errors=True)
