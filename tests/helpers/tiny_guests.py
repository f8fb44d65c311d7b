"""Small extra guests on lab nodes, for fleet tests and benches: a VM with one disk (a ZFS
dataset holding ``disk.raw``) of a few hundred KiB, made and removed in one command per
node however many there are."""

from __future__ import annotations

from dapx.lab import estate

# zfs-fuse calls a dataset busy for a while after a send from it ended: destroy again then,
# once a second for up to $tries seconds (the scripts' first argument; 0: try once).
_DESTROY = r'''tries=$1; shift
destroy() {
  i=0
  while ! err=$(zfs destroy "$@" 2>&1); do
    case $err in *busy*) ;; *) return 0 ;; esac
    i=$((i + 1)); [ $i -gt "$tries" ] && { echo "$err" >&2; return 1; }
    sleep 1
  done
}
'''
BUSY_WAIT = 90
# Values arrive as positional arguments; the scripts are constants.
_MAKE = r'''set -e
node=$1; kib=$2; shift 2
for vmid in "$@"; do
  ds=rpool/data/vm-$vmid-disk-0
  zfs list -H -o name "$ds" >/dev/null 2>&1 || zfs create "$ds"
  [ "$(zfs get -H -o value mounted "$ds")" = yes ] || zfs mount "$ds"
  head -c $((kib * 1024)) /dev/urandom > "/$ds/disk.raw"
  printf 'cores: 1\nmemory: 128\nname: tiny%s\nnet0: virtio=BC:24:11:00:%02X:%02X,bridge=vmbr0\nscsi0: local-zfs:vm-%s-disk-0,size=1M\nscsihw: virtio-scsi-single\n' \
    "$vmid" $((vmid / 256 % 256)) $((vmid % 256)) "$vmid" > "/etc/pve/nodes/$node/qemu-server/$vmid.conf"
done
'''
_CHANGE = r'''set -e
kib=$1; shift
for vmid in "$@"; do
  dd if=/dev/urandom of="/rpool/data/vm-$vmid-disk-0/disk.raw" bs=1024 count="$kib" conv=notrunc status=none
done
'''
_REMOVE = _DESTROY + r'''node=$1; shift
for vmid in "$@"; do
  rm -f "/etc/pve/nodes/$node/qemu-server/$vmid.conf"
  zfs list -H -o name "rpool/data/vm-$vmid-disk-0" >/dev/null 2>&1 || continue
  destroy -r "rpool/data/vm-$vmid-disk-0"
  # zfs-fuse unmounts before destroying: one that failed leaves the dataset unmounted
  zfs list -H -o name "rpool/data/vm-$vmid-disk-0" >/dev/null 2>&1 &&
    zfs mount "rpool/data/vm-$vmid-disk-0" 2>/dev/null
done
'''
_CONFIG_ONLY = r'''node=$1; shift
for vmid in "$@"; do
  printf 'cores: 1\nmemory: 128\nscsi0: local-zfs:vm-%s-disk-0,size=1M\n' "$vmid" \
    > "/etc/pve/nodes/$node/qemu-server/$vmid.conf"
done
'''


def make(node: str, vmids: list[int], kib: int = 256) -> None:
    """VMs ``vmids`` on ``node``, each one disk of ``kib`` KiB of random bytes (idempotent)."""
    if vmids:
        estate.run(node, ["sh", "-c", _MAKE, "sh", node, str(kib), *map(str, vmids)],
                   timeout=600)


def change(node: str, vmids: list[int], kib: int = 16) -> None:
    """Overwrite the first ``kib`` KiB of each guest's disk (a small delta)."""
    if vmids:
        estate.run(node, ["sh", "-c", _CHANGE, "sh", str(kib), *map(str, vmids)], timeout=600)


def make_without_disk(node: str, vmids: list[int]) -> None:
    """VMs whose config names a local-zfs disk that does not exist (their replica fails)."""
    if vmids:
        estate.run(node, ["sh", "-c", _CONFIG_ONLY, "sh", node, *map(str, vmids)])


def remove(node: str, vmids: list[int], wait: bool = True) -> None:
    """Remove the guests' configs and datasets (with their snapshots); ``wait``: while
    zfs-fuse says busy (else what is busy stays)."""
    if vmids:
        estate.run(node, ["sh", "-c", _REMOVE, "sh", _tries(wait), node, *map(str, vmids)],
                   timeout=600)


def _tries(wait: bool) -> str:
    return str(BUSY_WAIT if wait else 0)


def remove_replicas(node: str, vmids: list[int], wait: bool = True) -> None:
    """Remove replicas registered on ``node`` as ``vmids`` and their datasets under
    rpool/replica (what a replica job with those destination VMIDs made); ``wait`` as in
    ``remove``."""
    remove_script = _DESTROY + r'''node=$1; shift
for vmid in "$@"; do
  rm -f "/etc/pve/nodes/$node/qemu-server/$vmid.conf" "/etc/pve/nodes/$node/lxc/$vmid.conf"
  for ds in $(zfs list -H -o name -r rpool/replica 2>/dev/null | grep -E "^rpool/replica/(vm|subvol)-$vmid-disk-[0-9]+$"); do
    destroy -r "$ds"
  done
done
'''
    if vmids:
        estate.run(node, ["sh", "-c", remove_script, "sh", _tries(wait), node,
                          *map(str, vmids)], timeout=600)


def remove_snapshots(node: str, tag_prefix: str, wait: bool = True) -> None:
    """Destroy every snapshot on ``node`` whose name starts with ``tag_prefix`` (the
    snapshots replica jobs left on their sources, e.g. ``dapx_pve3-2``)."""
    script = _DESTROY + r'''zfs list -H -o name -t snapshot -r rpool | grep "@$1" | while read -r s; do
  destroy "$s"
done
'''
    estate.run(node, ["sh", "-c", script, "sh", _tries(wait), tag_prefix], timeout=600)
