"""A test session stops the Prefect servers a killed run left behind, and only those: a fake
`prefect server start` whose parent is gone and whose home is a test's is found once it is
old enough; one with another home, or whose parent still runs, is left alone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import leftovers


def fake_prefect(tmp_path: Path) -> Path:
    script = tmp_path / "prefect"
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(120)\n")
    script.chmod(0o755)
    return script


def orphan(script: Path, home: Path) -> int:
    """Start ``script server start`` in the background of a shell that exits at once (init
    adopts it, as it adopts a killed test run's server); its pid."""
    line = '"$1" server start --host 127.0.0.1 >/dev/null 2>&1 & echo $!'
    out = subprocess.run(["sh", "-c", line, "sh", str(script)],
                         env={**os.environ, "PREFECT_HOME": str(home)},
                         capture_output=True, text=True, check=True).stdout
    return int(out)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_only_orphaned_servers_with_a_test_home_are_stopped(tmp_path: Path) -> None:
    script = fake_prefect(tmp_path)
    ours = orphan(script, tmp_path / "home")
    other = orphan(script, Path("/var/tmp/not-a-test-home"))
    living = subprocess.Popen([str(script), "server", "start"],
                              env={**os.environ, "PREFECT_HOME": str(tmp_path / "home2")})
    try:
        time.sleep(0.3)  # the shells have exited: init adopted both orphans
        assert ours not in leftovers.orphaned_test_servers()  # too young: maybe on purpose
        found = leftovers.orphaned_test_servers(min_age=0)
        assert ours in found and other not in found and living.pid not in found
        # Only ours is stopped here: the other tiers run beside this one, and may be
        # checking on a server they left on purpose.
        assert leftovers.stop([ours]) == [ours]
        for _ in range(50):
            if not alive(ours):
                break
            time.sleep(0.1)
        assert not alive(ours) and alive(other) and living.poll() is None
    finally:
        for pid in (ours, other):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        living.kill()
        living.wait()
