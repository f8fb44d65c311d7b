"""PBS-style tasks inside the PBS simulator process (threads), with PBS's UPID format:

UPID:{node}:{pid:08X}:{pstart:08X}:{task_id:08X}:{starttime:08X}:{type}:{id}:{authid}:
Logs go to /var/log/proxmox-backup/tasks/<pstart & 0xFF as 2 hex>/<UPID>, ending with
'TASK OK' or 'TASK ERROR: msg'.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any, Callable

from . import paths, tasks
from .httpd import ApiError

_ids = itertools.count(1)
_running: set[str] = set()


class _Log:
    def __init__(self, upid: str):
        self.upid = upid
        self.path = _log_path(upid)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()

    def __call__(self, line: str) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


def _log_path(upid: str):
    pstart = int(upid.split(":")[3], 16)
    return paths.sim_path("/var/log/proxmox-backup/tasks") / f"{pstart & 0xFF:02X}" / upid


def _escape(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_.-" else "\\x%02x" % ord(c) for c in text)


def spawn(wtype: str, wid: str, user: str, body: Callable[[Any], None]) -> str:
    """Run body(log) in a thread as a PBS task; returns the UPID at once."""
    pid = os.getpid()
    node = paths.node_name()
    upid = (f"UPID:{node}:{pid:08X}:{tasks._pstart(pid):08X}:{next(_ids):08X}:{int(time.time()):08X}:"
            f"{wtype}:{_escape(wid)}:{user}:")
    log = _Log(upid)
    _running.add(upid)

    def run() -> None:
        try:
            body(log)
            log("TASK OK")
        except Exception as exc:  # recorded as the task's result
            log(f"TASK ERROR: {exc}")
        finally:
            _running.discard(upid)

    threading.Thread(target=run, daemon=True).start()
    return upid


def _decode(upid: str) -> dict[str, Any]:
    parts = upid.split(":")
    if len(parts) != 10 or parts[0] != "UPID":
        raise ApiError(400, f"unable to parse UPID '{upid}'")
    return {"upid": upid, "node": parts[1], "pid": int(parts[2], 16), "pstart": int(parts[3], 16),
            "starttime": int(parts[5], 16), "worker_type": parts[6], "worker_id": parts[7], "user": parts[8]}


def status(upid: str) -> dict[str, Any]:
    """{status: running|stopped, exitstatus: OK|<error>} plus the UPID's fields."""
    info = _decode(upid)
    p = _log_path(upid)
    if not p.exists():
        raise ApiError(400, f"no such task '{upid}'")
    info["type"], info["id"] = info["worker_type"], info["worker_id"]
    if upid in _running:
        info["status"] = "running"
        return info
    last = (p.read_text().splitlines() or [""])[-1]
    info["status"] = "stopped"
    info["exitstatus"] = "OK" if last == "TASK OK" else last.replace("TASK ERROR: ", "", 1) or "unknown"
    return info


def read_log(upid: str, start: int, limit: int) -> list[dict[str, Any]]:
    """[{n, t}] lines of a task log."""
    _decode(upid)
    lines = _log_path(upid).read_text().splitlines()
    return [{"n": start + i + 1, "t": t} for i, t in enumerate(lines[start:start + limit])]


def list_tasks() -> list[dict[str, Any]]:
    """Tasks with a log, newest first."""
    base = paths.sim_path("/var/log/proxmox-backup/tasks")
    out = [status(f.name) for f in base.glob("*/UPID:*")] if base.is_dir() else []
    return sorted(out, key=lambda t: t["starttime"], reverse=True)
