"""PVE's CLI tools over the same code and files: `python -m dapx.lab.pvesim.tools TOOL ARGS...`.

qm / pct (list, config, set, start, stop, shutdown, status, snapshot, delsnapshot, rollback,
listsnapshot, destroy, migrate, create), qmrestore, pvesh (get/set/create/delete PATH,
--output-format json), pvesm (status, list, path, alloc), vzdump. Operations that are tasks
on PVE run in the foreground with their task log on stdout, as the real tools do.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from . import guests, paths, storage, tasks
from .httpd import ApiError, Request


def _parse(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Positional args and --key value options (a bare --flag means 1)."""
    pos: list[str] = []
    opts: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--") or (a.startswith("-") and len(a) > 1 and not a[1].isdigit()):
            key = a.lstrip("-")
            if "=" in key:
                key, _, val = key.partition("=")
                opts[key] = val
            elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                opts[key] = argv[i + 1]
                i += 1
            else:
                opts[key] = 1
        else:
            pos.append(a)
        i += 1
    return pos, opts


def _api(method: str, path: str, params: dict[str, Any]) -> Any:
    from .pveapi import build_router
    return build_router().dispatch(Request(method, path, {k: v for k, v in params.items()}, user="root@pam"))


def _fg(wtype: str, wid: str, op: str, **args: Any) -> int:
    """Run an op in the foreground as a task, log on stdout; exit status 0 when OK."""
    from .ops import OPS
    upid = tasks.make_upid(paths.node_name(), wtype, wid, "root@pam")
    status = tasks.run_body(upid, lambda log: OPS[op](log, **args), echo=True)
    done = status == "OK" or status.startswith("WARNINGS: ")
    if not done:
        print(status, file=sys.stderr)
    return 0 if done else 1


def _fg_body(wtype: str, wid: str, body: Any, echo: Any = True) -> int:
    """Run ``body(log)`` in the foreground as a task (log echoed to ``echo``); exit status."""
    upid = tasks.make_upid(paths.node_name(), wtype, wid, "root@pam")
    status = tasks.run_body(upid, body, echo=echo)
    if status != "OK":
        print(status, file=sys.stderr)
    return 0 if status == "OK" else 1


def _restore_stdin(kind: str, node: str, vmid: int, opts: dict[str, Any]) -> int:
    """``qmrestore - VMID`` / ``pct restore VMID -``: the archive arrives on stdin."""
    from . import stream

    src, _ = stream.stdio()
    return _fg_body(("qm" if kind == "qemu" else "vz") + "restore", str(vmid),
                    lambda log: stream.restore_stdin(log, node, kind, vmid, src,
                                                     opts.get("storage"), int(opts.get("unique", 0))))


def _unlock(kind: str, node: str, vmid: int) -> int:
    """``qm unlock`` / ``pct unlock``: drop the config's lock."""
    from .ops import _unlock as unlock

    guests.require(node, kind, vmid)
    unlock(node, kind, vmid)
    return 0


def _guest_tool(kind: str, argv: list[str]) -> int:
    pos, opts = _parse(argv)
    if not pos:
        print(f"usage: {'qm' if kind == 'qemu' else 'pct'} <command> ...", file=sys.stderr)
        return 255
    cmd, rest = pos[0], pos[1:]
    node = paths.node_name()
    t = "qm" if kind == "qemu" else "vz"
    if cmd == "list":
        return _list(kind, node)
    vmid = int(rest[0])
    if cmd == "config":
        data = _api("GET", f"/nodes/{node}/{kind}/{vmid}/config", opts)
        for k in sorted(data):
            if k != "digest":
                print(f"{k}: {data[k]}")
        return 0
    if cmd == "set":
        _api("PUT", f"/nodes/{node}/{kind}/{vmid}/config", opts)
        return 0
    if cmd == "status":
        print(f"status: {'running' if guests.is_running(vmid) else 'stopped'}")
        return 0
    if cmd in ("start", "stop", "shutdown"):
        guests.require(node, kind, vmid)
        return _fg(t + cmd, str(vmid), cmd, node=node, kind=kind, vmid=vmid)
    if cmd in ("snapshot", "delsnapshot", "rollback"):
        extra = {"description": opts.get("description", "")} if cmd == "snapshot" else {}
        return _fg(t + cmd, str(vmid), cmd, node=node, kind=kind, vmid=vmid, snapname=rest[1], **extra)
    if cmd == "listsnapshot":
        for s in _api("GET", f"/nodes/{node}/{kind}/{vmid}/snapshot", {}):
            print(f"`-> {s['name']:<20} {s.get('description', '')}")
        return 0
    if cmd == "destroy":
        return _fg(t + "destroy", str(vmid), "destroy", node=node, kind=kind, vmid=vmid)
    if cmd == "unlock":
        return _unlock(kind, node, vmid)
    if cmd == "migrate":
        return _fg("qmigrate" if kind == "qemu" else "vzmigrate", str(vmid), "migrate", node=node, kind=kind,
                   vmid=vmid, target=rest[1], online=int(opts.get("online", 0)))
    if cmd in ("create", "restore"):
        if cmd == "restore" or "archive" in opts:
            archive = rest[1] if cmd == "restore" else opts["archive"]
            if archive == "-":
                return _restore_stdin(kind, node, vmid, opts)
            return _fg(t + "restore", str(vmid), "restore", node=node, kind=kind, vmid=vmid, archive=archive,
                       storage_id=opts.get("storage"), force=int(opts.get("force", 0)))
        return _fg(t + "create", str(vmid), "create", node=node, kind=kind, vmid=vmid,
                   values={k: str(v) for k, v in opts.items()})
    print(f"unknown command '{cmd}'", file=sys.stderr)
    return 255


def _list(kind: str, node: str) -> int:
    rows = _api("GET", f"/nodes/{node}/{kind}", {})
    if kind == "qemu":
        print(f"{'VMID':>10} {'NAME':<20} {'STATUS':<10} {'MEM(MB)':<10} {'BOOTDISK(GB)':>12} {'PID':<10}")
        for r in sorted(rows, key=lambda r: r["vmid"]):
            print(f"{r['vmid']:>10} {r.get('name', ''):<20} {r['status']:<10} {r['maxmem'] // 1024**2:<10} "
                  f"{r['maxdisk'] / 1024**3:>12.2f} {r.get('pid', 0):<10}")
    else:
        print(f"{'VMID':<10} {'Status':<10} {'Lock':<12} {'Name':<20}")
        for r in sorted(rows, key=lambda r: r["vmid"]):
            print(f"{r['vmid']:<10} {r['status']:<10} {r.get('lock', ''):<12} {r.get('name', ''):<20}")
    return 0


def _pvesh(argv: list[str]) -> int:
    pos, opts = _parse(argv)
    fmt = opts.pop("output-format", "text")
    opts.pop("noborder", None)
    opts.pop("noheader", None)
    verb, path = pos[0], pos[1]
    method = {"get": "GET", "ls": "GET", "set": "PUT", "create": "POST", "delete": "DELETE"}[verb]
    data = _api(method, "/" + path.strip("/"), opts)
    if fmt in ("json", "json-pretty"):
        print(json.dumps(data, indent=2 if fmt == "json-pretty" else None))
    elif data is not None:
        print(data if isinstance(data, str) else json.dumps(data, indent=2))
    return 0


def _pvesm(argv: list[str]) -> int:
    pos, opts = _parse(argv)
    cmd = pos[0]
    if cmd == "status":
        print(f"{'Name':<16}{'Type':>8}{'Status':>12}{'Total':>16}{'Used':>16}{'Available':>16}{'%':>8}")
        for sid, st in sorted(storage.load().items()):
            s = storage.status(st)
            pct = 100.0 * s["used"] / s["total"] if s["total"] else 0
            print(f"{sid:<16}{st.type:>8}{'active' if s['active'] else 'inactive':>12}{s['total'] // 1024:>16}"
                  f"{s['used'] // 1024:>16}{s['avail'] // 1024:>16}{pct:>7.2f}%")
        return 0
    if cmd == "list":
        vmid = int(opts["vmid"]) if "vmid" in opts else None
        print(f"{'Volid':<50} {'Format':<8} {'Type':<10} {'Size':>14} {'VMID':<6}")
        for v in storage.list_volumes(pos[1], vmid, opts.get("content")):
            print(f"{v['volid']:<50} {v['format']:<8} {v['content']:<10} {v['size']:>14} {v.get('vmid', ''):<6}")
        return 0
    if cmd == "path":
        print(storage.path(pos[1]))
        return 0
    if cmd == "alloc":
        sid, vmid, name, size = pos[1], int(pos[2]), pos[3], pos[4]
        subvol = opts.get("format") == "subvol"
        volid = storage.alloc(sid, vmid, storage.parse_size(size, "K"), subvol=subvol,
                              name=None if name == "" else name.removesuffix(".raw"))
        print(f"successfully created '{volid}'")
        return 0
    if cmd == "free":
        storage.free(pos[1])
        return 0
    print(f"unknown command '{cmd}'", file=sys.stderr)
    return 255


def _vzdump(argv: list[str]) -> int:
    pos, opts = _parse(argv)
    node = paths.node_name()
    vmids = [int(v) for v in pos]
    if opts.get("stdout"):
        return _vzdump_stdout(node, vmids, opts)
    sid = opts.get("storage", "local")
    return _fg("vzdump", str(vmids[0]) if len(vmids) == 1 else "", "vzdump", node=node, vmids=vmids,
               storage_id=sid, mode=opts.get("mode", "snapshot"), notes=opts.get("notes-template", ""),
               cmdline="vzdump " + " ".join(argv))


def _vzdump_stdout(node: str, vmids: list[int], opts: dict[str, Any]) -> int:
    """``vzdump VMID --stdout``: the archive on stdout, the task log on stderr."""
    from . import stream

    if len(vmids) != 1:
        print("only one VM can be backed up to stdout", file=sys.stderr)
        return 255
    _, out = stream.stdio()
    return _fg_body("vzdump", str(vmids[0]),
                    lambda log: stream.vzdump_stdout(log, node, vmids[0], out,
                                                     str(opts.get("mode", "snapshot"))),
                    echo=sys.stderr)


def _qmrestore(argv: list[str]) -> int:
    pos, opts = _parse(argv)
    return _guest_tool("qemu", ["restore", pos[1], pos[0]] + [x for k, v in opts.items() for x in (f"--{k}", str(v))])


TOOLS = {"qm": lambda a: _guest_tool("qemu", a), "pct": lambda a: _guest_tool("lxc", a), "pvesh": _pvesh,
         "pvesm": _pvesm, "vzdump": _vzdump, "qmrestore": _qmrestore}


def main(argv: list[str] | None = None) -> int:
    """Dispatch to TOOL; errors print like PVE's CLI (message on stderr, exit 255)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in TOOLS:
        print(f"usage: tools {{{'|'.join(TOOLS)}}} ARGS...", file=sys.stderr)
        return 255
    try:
        return TOOLS[argv[0]](argv[1:])
    except ApiError as exc:
        print(exc.message, file=sys.stderr)
        for k, v in (exc.errors or {}).items():
            print(f"{k}: {v}", file=sys.stderr)
        return 255
    except (storage.StorageError, OSError, RuntimeError, ValueError, IndexError, KeyError) as exc:
        print(str(exc), file=sys.stderr)
        return 255


if __name__ == "__main__":
    sys.exit(main())
