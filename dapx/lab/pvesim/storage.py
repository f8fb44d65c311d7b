"""PVE storages as the simulator sees them: storage.cfg parsing and volume operations per type.

Types: zfspool (a VM disk is a dataset holding disk.raw, since zfs-fuse has no zvols; container
volumes are subvol-* datasets), btrfs (PVE's layout images/<vmid>/vm-<vmid>-disk-N/disk.raw in a
subvolume), dir (raw files images/<vmid>/vm-<vmid>-disk-N.raw) and pbs (backups, listed through
the PBS simulator's API). zfs/btrfs run the real commands; dir paths go under DAPX_SIM_ROOT.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import paths
from .runcmd import run

SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_VOLNAME = re.compile(r"^(?:(\d+)/)?((vm|subvol|base)-(\d+)-disk-(\d+))(?:\.(raw|subvol|qcow2))?$")


class StorageError(RuntimeError):
    """A storage operation PVE would refuse, with PVE's wording where known."""


@dataclass
class Storage:
    """One storage.cfg section: id, type and its options."""

    sid: str
    type: str
    opts: dict[str, str] = field(default_factory=dict)

    @property
    def content(self) -> list[str]:
        return [c for c in self.opts.get("content", "").split(",") if c]


def parse_size(text: str, default_unit: str = "") -> int:
    """'4G' / '512M' / '1024' (default_unit applied) -> bytes."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", str(text).strip())
    if not m:
        raise StorageError(f"unable to parse size '{text}'")
    return int(float(m.group(1)) * SIZE_UNITS[m.group(2) or default_unit])


def format_size(size: int) -> str:
    """Bytes -> PVE's size=... form (largest exact unit)."""
    for unit in ("T", "G", "M", "K"):
        if size % SIZE_UNITS[unit] == 0 and size >= SIZE_UNITS[unit]:
            return f"{size // SIZE_UNITS[unit]}{unit}"
    return str(size)


def load() -> dict[str, Storage]:
    """Parse /etc/pve/storage.cfg ("type: id" then tab-indented "key value" lines)."""
    out: dict[str, Storage] = {}
    cfg = paths.pve_dir() / "storage.cfg"
    if not cfg.exists():
        return out
    current: Storage | None = None
    for line in cfg.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line[0].isspace():
            stype, _, sid = line.partition(":")
            current = Storage(sid.strip(), stype.strip())
            out[current.sid] = current
        elif current is not None:
            key, _, value = line.strip().partition(" ")
            current.opts[key] = value.strip()
    return out


def config_digest() -> str:
    """SHA-1 of storage.cfg, as PVE reports it in ``digest``."""
    import hashlib
    cfg = paths.pve_dir() / "storage.cfg"
    return hashlib.sha1(cfg.read_bytes() if cfg.exists() else b"").hexdigest()


def _section(st: Storage) -> str:
    lines = [f"{st.type}: {st.sid}"] + [f"\t{k} {v}" for k, v in st.opts.items()]
    return "\n".join(lines) + "\n"


def _write(storages: dict[str, Storage]) -> None:
    cfg = paths.pve_dir() / "storage.cfg"
    tmp = cfg.with_name(".storage.cfg.tmp")
    tmp.write_text("\n".join(_section(st) for st in storages.values()), encoding="utf-8")
    tmp.replace(cfg)


@contextmanager
def _config_lock() -> Iterator[None]:
    """One change of storage.cfg at a time, as PVE's ``lock_storage_config`` (a pmxcfs lock)
    makes it: the API's request threads and the CLI tools read the file, change it and write
    it whole. Without it, two runs adding the same storage at once lost one write or failed
    on the other's temporary file (seen in a 100-guest fleet round). The lock is the
    directory's own (flock), so no file is added to /etc/pve."""
    directory = paths.pve_dir()
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def add(sid: str, stype: str, opts: dict[str, str]) -> None:
    """Append a storage section; StorageError with PVE's wording when the id exists."""
    with _config_lock():
        storages = load()
        if sid in storages:
            raise StorageError(f"storage ID '{sid}' already defined")
        storages[sid] = Storage(sid, stype, dict(opts))
        _write(storages)


def remove(sid: str) -> None:
    """Remove a storage section (never its data, as PVE)."""
    with _config_lock():
        storages = load()
        if storages.pop(sid, None) is None:
            raise StorageError(f"storage '{sid}' does not exist")
        _write(storages)


def get(sid: str) -> Storage:
    """The storage named sid; raises StorageError with PVE's wording when absent."""
    st = load().get(sid)
    if st is None:
        raise StorageError(f"storage '{sid}' does not exist")
    return st


def split_volid(volid: str) -> tuple[str, str]:
    """'local-zfs:vm-100-disk-0' -> ('local-zfs', 'vm-100-disk-0'); raises on a malformed id."""
    m = re.fullmatch(r"([a-zA-Z][a-zA-Z0-9\-_.]*[a-zA-Z0-9]):(.+)", volid)
    if not m:
        raise StorageError(f"unable to parse volume ID '{volid}'")
    return m.group(1), m.group(2)


def parse_volname(volname: str) -> tuple[int, str, bool]:
    """volname -> (vmid, base name 'vm-100-disk-0', is_subvol)."""
    m = _VOLNAME.match(volname)
    if not m:
        raise StorageError(f"unable to parse volume name '{volname}'")
    return int(m.group(4)), m.group(2), m.group(3) == "subvol" or m.group(6) == "subvol"


def volume_vmid(volid: str) -> int | None:
    """The owner VMID of a disk volume, or None for other volumes."""
    try:
        return parse_volname(split_volid(volid)[1])[0]
    except StorageError:
        return None


# ---------------------------------------------------------------- per-type helpers

def _zfs_ds(st: Storage, name: str) -> str:
    return f"{st.opts['pool']}/{name}"


def _zfs_mountpoint(ds: str) -> Path:
    return Path(run(["zfs", "get", "-H", "-o", "value", "mountpoint", ds]).strip())


def _dir_base(st: Storage) -> Path:
    return paths.sim_path(st.opts["path"])


def _btrfs_subvol(st: Storage, vmid: int, name: str) -> Path:
    return _dir_base(st) / "images" / str(vmid) / name


def volname_for(st: Storage, vmid: int, name: str, subvol: bool) -> str:
    """The volume name PVE gives name on storage st ('vm-1-disk-0', '1/vm-1-disk-0.raw', ...)."""
    if st.type == "zfspool":
        return name
    return f"{vmid}/{name}.{'subvol' if subvol else 'raw'}"


def path(volid: str) -> Path:
    """Filesystem path of a volume: the raw image file, or the directory of a subvol."""
    sid, volname = split_volid(volid)
    st = get(sid)
    if st.type == "pbs":
        raise StorageError(f"storage '{sid}' has no volume paths (type {st.type})")
    vmid, name, subvol = parse_volname(volname)
    if st.type == "zfspool":
        mnt = _zfs_mountpoint(_zfs_ds(st, name))
        return mnt if subvol else mnt / "disk.raw"
    if st.type == "btrfs":
        sub = _btrfs_subvol(st, vmid, name)
        return sub if subvol else sub / "disk.raw"
    if st.type == "dir":
        return _dir_base(st) / "images" / str(vmid) / (name + (".subvol" if subvol else ".raw"))
    raise StorageError(f"storage '{sid}' has no volume paths (type {st.type})")


def _used_names(st: Storage) -> set[str]:
    return {parse_volname(v["volid"].split(":", 1)[1])[1] for v in list_volumes(st.sid)}


def alloc(sid: str, vmid: int, size: int, subvol: bool = False, name: str | None = None) -> str:
    """Create a volume of size bytes for vmid (next free vm-<vmid>-disk-N); returns its volid."""
    st = get(sid)
    if name is None:
        used = _used_names(st)
        prefix = "subvol" if subvol else "vm"
        n = next(i for i in range(10000) if f"{prefix}-{vmid}-disk-{i}" not in used)
        name = f"{prefix}-{vmid}-disk-{n}"
    volid = f"{sid}:{volname_for(st, vmid, name, subvol)}"
    if st.type == "zfspool":
        argv = ["zfs", "create"] + (["-o", f"refquota={size}"] if subvol and size else []) + [_zfs_ds(st, name)]
        run(argv)
    elif st.type == "btrfs":
        sub = _btrfs_subvol(st, vmid, name)
        sub.parent.mkdir(parents=True, exist_ok=True)
        run(["btrfs", "subvolume", "create", str(sub)])
    elif st.type == "dir":
        p = path(volid)
        p.parent.mkdir(parents=True, exist_ok=True)
        if subvol:
            p.mkdir()
        else:
            p.touch(exist_ok=False)
    else:
        raise StorageError(f"storage '{sid}' does not support content type 'images'")
    if not subvol:
        with open(path(volid), "ab") as fh:
            fh.truncate(size)
    return volid


def free(volid: str) -> None:
    """Destroy a volume and its snapshots."""
    sid, volname = split_volid(volid)
    st = get(sid)
    if st.type == "pbs":  # backups have PBS names, not image names
        from . import pbsclient
        pbsclient.delete_backup(st, volname)
        return
    vmid, name, subvol = parse_volname(volname)
    if st.type == "zfspool":
        _zfs_destroy(_zfs_ds(st, name))
    elif st.type == "btrfs":
        sub = _btrfs_subvol(st, vmid, name)
        for snap in sorted(sub.parent.glob(name + "@*")):
            run(["btrfs", "subvolume", "delete", str(snap)])
        run(["btrfs", "subvolume", "delete", str(sub)])
    elif st.type == "dir":
        p = path(volid)
        if p.is_dir():
            import shutil
            shutil.rmtree(p)
        else:
            p.unlink()
    else:
        raise StorageError(f"storage '{sid}' of type '{st.type}' cannot free volumes")
    if st.type in ("dir", "btrfs"):  # as PVE: no empty images/<vmid> directories left behind
        try:
            (_dir_base(st) / "images" / str(vmid)).rmdir()
        except OSError:
            pass


def _zfs_destroy(dataset: str, attempts: int = 10) -> None:
    """``zfs destroy -r``, retried while the dataset is busy (as PVE's ZFS plugin does: a
    just-closed image can keep a zfs-fuse dataset busy for a moment)."""
    import time
    for attempt in range(attempts):
        try:
            run(["zfs", "destroy", "-r", dataset])
            return
        except Exception as exc:
            if "busy" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.5)


def size_of(volid: str) -> int:
    """Size in bytes of a volume (file size of the image; used bytes of a subvol)."""
    p = path(volid)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def resize(volid: str, size: int) -> None:
    """Grow a raw image to size bytes."""
    with open(path(volid), "ab") as fh:
        fh.truncate(size)


def snapshot(volid: str, snap: str) -> None:
    """Snapshot a volume (zfs: ds@snap; btrfs: read-only <subvol>@snap); dir raw: PVE refuses."""
    st, vmid, name = _snap_target(volid)
    if st.type == "zfspool":
        run(["zfs", "snapshot", f"{_zfs_ds(st, name)}@{snap}"])
    else:
        sub = _btrfs_subvol(st, vmid, name)
        run(["btrfs", "subvolume", "snapshot", "-r", str(sub), f"{sub}@{snap}"])


def delsnapshot(volid: str, snap: str) -> None:
    """Remove one volume snapshot."""
    st, vmid, name = _snap_target(volid)
    if st.type == "zfspool":
        run(["zfs", "destroy", f"{_zfs_ds(st, name)}@{snap}"])
    else:
        run(["btrfs", "subvolume", "delete", f"{_btrfs_subvol(st, vmid, name)}@{snap}"])


def rollback(volid: str, snap: str) -> None:
    """Roll a volume back to snap (zfs rollback -r; btrfs: replace the subvolume by a copy of snap)."""
    st, vmid, name = _snap_target(volid)
    if st.type == "zfspool":
        run(["zfs", "rollback", f"{_zfs_ds(st, name)}@{snap}"])
    else:
        sub = _btrfs_subvol(st, vmid, name)
        run(["btrfs", "subvolume", "delete", str(sub)])
        run(["btrfs", "subvolume", "snapshot", f"{sub}@{snap}", str(sub)])


def _snap_target(volid: str) -> tuple[Storage, int, str]:
    sid, volname = split_volid(volid)
    st = get(sid)
    if st.type not in ("zfspool", "btrfs"):
        raise StorageError("snapshot feature is not available")
    vmid, name, _ = parse_volname(volname)
    return st, vmid, name


def _volume_entry(st: Storage, volname: str, p: Path) -> dict:
    vmid, _, subvol = parse_volname(volname)
    # A dataset left unmounted (zfs-fuse unmounts before a destroy that then fails) is still
    # a volume: PVE lists datasets, it never looks at their files.
    found = p.stat() if p.exists() else None
    size = found.st_size if found is not None and p.is_file() else 0
    return {"volid": f"{st.sid}:{volname}", "vmid": vmid, "size": size, "used": size,
            "format": "subvol" if subvol else "raw", "content": "rootdir" if subvol else "images",
            "ctime": int(found.st_mtime) if found is not None else 0}


def list_volumes(sid: str, vmid: int | None = None, content: str | None = None) -> list[dict]:
    """Volumes on a storage as PVE's storage content listing shows them."""
    st = get(sid)
    if st.type == "pbs":
        from . import pbsclient
        items = pbsclient.list_backups(st)
    else:
        items = [_volume_entry(st, vn, p) for vn, p in _scan(st)]
    return [i for i in items if (vmid is None or i.get("vmid") == vmid)
            and (content is None or i.get("content") == content)]


def _scan(st: Storage) -> list[tuple[str, Path]]:
    """(volname, path) pairs for the disk volumes present on a local storage."""
    out: list[tuple[str, Path]] = []
    if st.type == "zfspool":
        pool = st.opts["pool"]
        listing = run(["zfs", "list", "-H", "-o", "name,mountpoint", "-t", "filesystem", "-r", pool])
        for line in listing.splitlines():
            ds, _, mnt = line.partition("\t")
            name = ds[len(pool) + 1:]
            if "/" in name or not _VOLNAME.match(name):
                continue
            subvol = name.startswith("subvol-")
            out.append((name, Path(mnt) if subvol else Path(mnt) / "disk.raw"))
        return out
    images = _dir_base(st) / "images"
    if not images.is_dir():
        return out
    for vmdir in sorted(images.iterdir()):
        for entry in sorted(vmdir.iterdir()):
            if "@" in entry.name:
                continue
            if st.type == "btrfs":
                subvol = entry.name.startswith("subvol-")
                volname = f"{vmdir.name}/{entry.name}.{'subvol' if subvol else 'raw'}"
                p = entry if subvol else entry / "disk.raw"
            else:
                volname, p = f"{vmdir.name}/{entry.name}", entry
            if _VOLNAME.match(volname):
                out.append((volname, p))
    return out


def status(st: Storage) -> dict:
    """total/used/avail bytes and active flag, as /nodes/{node}/storage lists them."""
    try:
        if st.type == "zfspool":
            vals = run(["zfs", "get", "-Hp", "-o", "value", "used,available", st.opts["pool"]]).split()
            used, avail = int(vals[0]), int(vals[1])
        elif st.type == "pbs":
            from . import pbsclient
            s = pbsclient.datastore_status(st)
            used, avail = s["used"], s["avail"]
        else:
            base = _dir_base(st)
            base.mkdir(parents=True, exist_ok=True)
            vfs = os.statvfs(base)
            avail = vfs.f_bavail * vfs.f_frsize
            used = (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
        return {"total": used + avail, "used": used, "avail": avail, "active": 1, "enabled": 1}
    except Exception:  # an unreachable storage is listed inactive, as pvestatd does
        return {"total": 0, "used": 0, "avail": 0, "active": 0, "enabled": 1}


def now() -> int:
    """Current epoch seconds (one place, for tests)."""
    return int(time.time())
