"""PVE-style tasks: UPIDs, log files under /var/log/pve/tasks/<X>/<UPID>, the index, status.

A task runs in its own process (worker.py), as PVE forks a worker, so its UPID carries a real
pid and pstart and 'running' means that process is alive. CLI tools run the same operation in
the foreground and echo the log, as `qm`/`vzdump` do. The log ends with 'TASK OK' or
'TASK ERROR: <message>', and that message becomes the task's exitstatus.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from . import paths


def _pstart(pid: int) -> int:
    """Process start time in clock ticks (field 22 of /proc/<pid>/stat), as PVE puts in the UPID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])


def make_upid(node: str, wtype: str, wid: str, user: str, pid: int | None = None) -> str:
    """UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{type}:{id}:{user}:"""
    pid = pid or os.getpid()
    return f"UPID:{node}:{pid:08X}:{_pstart(pid):08X}:{int(time.time()):08X}:{wtype}:{wid}:{user}:"


def decode_upid(upid: str) -> dict[str, Any]:
    """UPID -> {node, pid, pstart, starttime, type, id, user}; raises ValueError when malformed."""
    parts = upid.split(":")
    if len(parts) != 9 or parts[0] != "UPID":
        raise ValueError(f"unable to parse worker upid '{upid}'")
    return {"upid": upid, "node": parts[1], "pid": int(parts[2], 16), "pstart": int(parts[3], 16),
            "starttime": int(parts[4], 16), "type": parts[5], "id": parts[6], "user": parts[7]}


def log_path(upid: str) -> Path:
    """/var/log/pve/tasks/<last hex digit of starttime>/<UPID>"""
    return paths.tasks_dir() / upid.split(":")[4][-1] / upid


class TaskLog:
    """Appends lines to a task's log file (and to stdout when echo is set, for the CLI tools)."""

    def __init__(self, upid: str, echo: bool | Any = False):
        self.upid = upid
        self.echo = echo
        self.warnings = 0
        self.path = log_path(upid)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()

    def __call__(self, line: str) -> None:
        if line.startswith("WARN: "):  # PVE's log_warn: counted, the task ends WARNINGS: N
            self.warnings += 1
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        if self.echo:  # True: stdout; a stream: there (vzdump --stdout logs on stderr)
            print(line, flush=True, file=None if self.echo is True else self.echo)


def _append_index(upid: str, status: str) -> None:
    index = paths.tasks_dir() / "index"
    with open(index, "a", encoding="utf-8") as fh:
        fh.write(f"{upid} {int(time.time()):08X} {status}\n")


def run_body(upid: str, body: Callable[[TaskLog], None], echo: bool | Any = False) -> str:
    """Run body(log) as task upid; write TASK OK / TASK WARNINGS: N / TASK ERROR; returns the
    exit status (``OK``, ``WARNINGS: N`` or the error)."""
    log = TaskLog(upid, echo)
    try:
        body(log)
        status = "OK"
    except Exception as exc:  # the task's failure is its result: recorded, not raised
        status = (str(exc) or type(exc).__name__).strip().splitlines()[0]
        if os.environ.get("DAPX_SIM_DEBUG"):
            traceback.print_exc()
    if status == "OK" and log.warnings:
        status = f"WARNINGS: {log.warnings}"
        log(f"TASK {status}")
    else:
        log("TASK OK" if status == "OK" else f"TASK ERROR: {status}")
    _append_index(upid, status)
    return status


def spawn(node: str, wtype: str, wid: str, user: str, op: str, args: dict[str, Any]) -> str:
    """Start op(args) in a worker process; returns its UPID once the worker has logged it."""
    job = json.dumps({"node": node, "type": wtype, "id": wid, "user": user, "op": op, "args": args})
    proc = subprocess.Popen([sys.executable, "-m", "dapx.lab.pvesim.worker"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(job.encode())
    proc.stdin.close()
    upid = proc.stdout.readline().decode().strip()
    proc.stdout.close()
    if not upid.startswith("UPID:"):
        raise RuntimeError("unable to start worker")
    _reap_later(proc)
    return upid


def _reap_later(proc: subprocess.Popen) -> None:
    import threading
    threading.Thread(target=proc.wait, daemon=True).start()


def _finished(upid: str) -> str | None:
    """The exit status recorded in the log's last line, or None when the task has not ended."""
    try:
        lines = log_path(upid).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    last = lines[-1] if lines else ""
    if last == "TASK OK":
        return "OK"
    if last.startswith("TASK ERROR: "):
        return last[len("TASK ERROR: "):]
    if last.startswith("TASK WARNINGS: "):
        return "WARNINGS: " + last[len("TASK WARNINGS: "):]
    return None


def status(upid: str) -> dict[str, Any]:
    """PVE's task status: status running|stopped, exitstatus when stopped."""
    info = decode_upid(upid)
    if not log_path(upid).exists():
        raise FileNotFoundError(upid)
    done = _finished(upid)
    if done is None and _pstart(info["pid"]) == info["pstart"]:
        info["status"] = "running"
    else:
        info["status"] = "stopped"
        info["exitstatus"] = done if done is not None else "unexpected status"
    if "!" in info["user"]:
        info["tokenid"] = info["user"].split("!", 1)[1]
    return info


def read_log(upid: str, start: int = 0, limit: int = 50) -> tuple[list[dict[str, Any]], int]:
    """Log lines [{n, t}] from start (0-based), at most limit; plus the total line count."""
    lines = log_path(upid).read_text(encoding="utf-8", errors="replace").splitlines()
    sel = lines[start:start + limit] if limit else lines[start:]
    return [{"n": start + i + 1, "t": t} for i, t in enumerate(sel)], len(lines)


def list_tasks(node: str) -> list[dict[str, Any]]:
    """Every task of node with a log, newest first, with endtime/status for finished ones."""
    out = []
    base = paths.tasks_dir()
    if not base.is_dir():
        return out
    for f in base.glob("?/UPID:*"):
        try:
            st = status(f.name)
        except (ValueError, FileNotFoundError):
            continue
        if st["node"] != node:
            continue
        entry = {k: st[k] for k in ("upid", "node", "pid", "pstart", "starttime", "type", "id", "user")}
        if st["status"] == "stopped":
            entry["status"] = st["exitstatus"]
            entry["endtime"] = int(f.stat().st_mtime)
        out.append(entry)
    out.sort(key=lambda e: e["starttime"], reverse=True)
    return out
