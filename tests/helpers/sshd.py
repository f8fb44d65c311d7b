"""A real OpenSSH server on 127.0.0.1 for tests: random free port, its own host key, temp dir.

    with SshServer(tmp_path) as server:
        server.authorize(client_public_line)
        ... connect to 127.0.0.1:server.port as server.user ...
        server.replace_host_key()          # same port, new host key (a "reinstalled" node)

Logins are limited to the current user, key-only, with an authorized_keys file inside the temp
dir, so the machine's own ~/.ssh is never touched. The server is killed when the block ends.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional

import asyncssh

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def new_key(kind: str = "ssh-ed25519") -> asyncssh.SSHKey:
    return asyncssh.generate_private_key(kind)


def public_line(key: asyncssh.SSHKey) -> str:
    """``"ssh-ed25519 AAAA..."`` of a key pair."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


class SshServer:
    """One sshd process; ``host_key`` is its current key pair (``host_key_line`` the public line)."""

    def __init__(self, directory: Path, host_key_type: str = "ssh-ed25519") -> None:
        if not os.path.exists(SSHD):
            raise RuntimeError("OpenSSH server not installed: apt-get install openssh-server")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.user = getpass.getuser()
        self.host_key_type = host_key_type
        self.host_key = new_key(host_key_type)
        self.authorized = self.dir / "authorized_keys"
        self.authorized.write_text("")
        self.proc: Optional[subprocess.Popen] = None

    @property
    def host_key_line(self) -> str:
        return public_line(self.host_key)

    def authorize(self, public: str) -> None:
        """Allow a client key (public line) to log in."""
        with self.authorized.open("a") as out:
            out.write(public.strip() + "\n")

    def start(self) -> "SshServer":
        key_file = self.dir / "host_key"
        self.host_key.write_private_key(str(key_file))
        key_file.chmod(0o600)
        config = self.dir / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {key_file}",
            f"PidFile {self.dir / 'sshd.pid'}", f"AuthorizedKeysFile {self.authorized}",
            "StrictModes no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", "PermitRootLogin prohibit-password", f"AllowUsers {self.user}",
            "PrintMotd no", "LogLevel ERROR", "",
        ]))
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
        self.log = (self.dir / "sshd.log").open("ab")
        # Absolute path required by sshd (it re-executes itself).
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_listening()
        return self

    def _wait_listening(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.dir / 'sshd.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"sshd did not listen on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()

    def replace_host_key(self) -> None:
        """Restart on the same port with a freshly generated host key of the same type."""
        self.stop()
        self.host_key = new_key(self.host_key_type)
        self.start()

    def __enter__(self) -> "SshServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
