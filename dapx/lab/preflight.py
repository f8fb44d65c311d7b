"""Can this machine run the lab? Clear refusals naming what is missing and how to fix it."""

from __future__ import annotations

import os
import shutil
import stat

from dapx.lab.common import LabPreflightError

# Debian package -> programs the lab (or the flows run on its nodes) need from it.
PACKAGES = {
    "zfs-fuse": ["zfs-fuse", "zpool", "zfs"],
    "btrfs-progs": ["mkfs.btrfs", "btrfs"],
    "openssh-server": ["sshd"],
    "openssh-client": ["ssh", "ssh-keygen"],
    "iproute2": ["ip"],
    "util-linux": ["nsenter", "unshare", "losetup", "findmnt"],
    "mount": ["mount", "umount"],
    "sanoid": ["sanoid", "syncoid"],
    "mbuffer": ["mbuffer"],
}
SEARCH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def missing_packages() -> dict[str, list[str]]:
    """{package: [missing programs]} for packages with a program not found."""
    missing = {}
    for pkg, progs in PACKAGES.items():
        gone = [p for p in progs if shutil.which(p, path=SEARCH_PATH) is None]
        if gone:
            missing[pkg] = gone
    return missing


def _is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def require_root() -> None:
    """LabPreflightError unless running as root."""
    if os.geteuid() != 0:
        raise LabPreflightError("the lab needs root (namespaces, mounts, loop devices): "
                                "run it as root, e.g. with sudo")


def preflight() -> None:
    """Raise LabPreflightError if not root, a package is missing, or no FUSE/loop devices."""
    require_root()
    missing = missing_packages()
    if missing:
        pkgs = " ".join(missing)
        detail = "; ".join(f"{p} (no {', '.join(progs)})" for p, progs in missing.items())
        raise LabPreflightError(f"missing Debian package(s): {detail}. "
                                f"Install with: apt-get install -y {pkgs}")
    if not _is_char_device("/dev/fuse"):
        raise LabPreflightError("no /dev/fuse: zfs-fuse needs FUSE (modprobe fuse; in a "
                                "container, pass the device /dev/fuse)")
    if not (_is_char_device("/dev/loop-control") or os.path.exists("/dev/loop0")):
        raise LabPreflightError("no loop devices (/dev/loop-control): modprobe loop; in a "
                                "container, pass /dev/loop-control and /dev/loop*")
    try:
        import cryptography  # noqa: F401  (the lab signs its TLS certificates with it)
    except ImportError as exc:
        raise LabPreflightError("python package 'cryptography' missing in this environment: "
                                "uv sync (it is a dapx dependency)") from exc
