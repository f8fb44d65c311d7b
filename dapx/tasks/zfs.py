"""ZFS on a node over SSH: snapshot lists for many datasets at once, snapshots, rollback,
destroy, owner marks, feature detection. Argv comes from ``dapx.core.zfs_argv`` (or is built
here from validated names); every function takes the node block and uses the flow run's
shared SSH session.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dapx.core import zfs_argv
from dapx.core.syncoid_argv import STREAM_SSH
from dapx.core.processes import PS_ARGV, busy_message, receives_into
from dapx.core.snapnames import OWNER_PROPERTY
from dapx.core.snapshots import Snapshot
from dapx.core.validate import snapshot_path, validate_dataset_name
from dapx.errors import CommandError, ConflictError, InputError
from dapx.tasks.base import dapx_task
from dapx.tasks.ssh import command_failure, run

if TYPE_CHECKING:
    from dapx.blocks.node import ProxmoxNode

STATE_PROPS = ("guid", "createtxg", "creation", OWNER_PROPERTY, "referenced")
EMPTY_SLACK = 1024 * 1024
"""Bytes a dataset without any snapshot may reference and still count as holding no data
(an empty filesystem references some KiB of metadata)."""
PROBE_SNAPSHOT = "dapx-probe"
"""Snapshot the written-probe takes and destroys at once (pools without ``written``); one
left by a killed run is ignored by planning and removed by the next probe."""


@dataclass
class DatasetState:
    """One dataset as ``zfs get`` shows it; ``exists`` False when there is no such dataset."""

    name: str
    exists: bool = False
    owner: str | None = None
    referenced: int = 0
    snapshots: list[Snapshot] = field(default_factory=list)
    written: int | None = None
    """Bytes written into the head since its newest snapshot (``head_written``); None: not
    measured."""

    @property
    def written_bytes(self) -> int:
        """What planning counts as written: the measured bytes; for a dataset without any
        snapshot, the data it holds beyond an empty filesystem's metadata."""
        if not self.snapshots:
            return self.referenced if self.referenced > EMPTY_SLACK else 0
        return self.written or 0


def states_argv(datasets: list[str]) -> list[str]:
    """One ``zfs get`` for several datasets and their snapshots (4 columns with source)."""
    return ["zfs", "get", "-H", "-p", "-r", "-d", "1", "-o", "name,property,value,source",
            ",".join(STATE_PROPS), *[validate_dataset_name(d) for d in datasets]]


def parse_states(output: str, datasets: list[str]) -> dict[str, DatasetState]:
    """``states_argv`` output -> {dataset: DatasetState} for every requested dataset."""
    states = {d: DatasetState(d) for d in datasets}
    snapshot_lines: dict[str, list[str]] = {d: [] for d in datasets}
    for line in output.splitlines():
        parts = line.split("\t")
        if len(parts) != 4:
            continue
        name, prop, value, source = parts
        base, at, short = name.partition("@")
        if base not in states:
            continue
        state = states[base]
        if at:
            if short != PROBE_SNAPSHOT:
                snapshot_lines[base].append("\t".join(parts[:3]))
            continue
        state.exists = True
        if prop == OWNER_PROPERTY and value != "-" and source.startswith(("local", "received")):
            state.owner = value
        elif prop == "referenced" and value.isdigit():
            state.referenced = int(value)
    for name, lines in snapshot_lines.items():
        states[name].snapshots = zfs_argv.parse_snapshot_props("\n".join(lines), name)
    return states


# ``dataset_states`` with more in the same round trip: the running processes first (to refuse
# a receive still running into a target), then the states, then each dataset's ``written``
# (OpenZFS; zfs-fuse has no such property and says so), in sections split by ``$1``.
_STATES_PLUS = r'''sep=$1 props=$2 ps=$3 written=$4; shift 4
[ "$ps" = 1 ] && ''' + shlex.join(PS_ARGV) + r'''
echo "$sep"
zfs get -H -p -r -d 1 -o name,property,value,source "$props" "$@"
status=$?
echo "$sep"
[ "$written" = 1 ] && zfs get -H -p -o name,value written "$@" 2>&1
exit $status'''
_SECTION = "--dapx-section--"


@dapx_task
async def dataset_states(node: "ProxmoxNode", datasets: list[str], *,
                         refuse_receiving: list[str] | None = None,
                         written: bool = False) -> dict[str, DatasetState]:
    """Every dataset's existence, owner mark, head size and snapshots, in one command.

    In the same round trip, optionally: ``refuse_receiving`` raises ConflictError (one line,
    naming the process) when a ``zfs receive`` into one of those names runs on ``node``;
    ``written`` fills each state's ``written`` where ZFS has that property (else it stays
    None: ``head_written`` probes). A missing dataset is reported as ``exists=False``; any
    other zfs error raises CommandError.
    """
    if not datasets:
        return {}
    names = [validate_dataset_name(d) for d in datasets]
    if refuse_receiving is None and not written:
        result = await run(node, states_argv(names), check=False, timeout=120)
        listing, measured = result.stdout, ""
    else:
        result = await run(node, ["sh", "-c", _STATES_PLUS, "sh", _SECTION, ",".join(STATE_PROPS),
                                  "1" if refuse_receiving is not None else "0",
                                  "1" if written else "0", *names], check=False, timeout=120)
        ps, listing, measured = split_sections(result.stdout)
        found = receives_into(ps, refuse_receiving or [])
        if found:
            raise ConflictError(busy_message(node.name, found))
    other = [ln for ln in result.stderr.splitlines()
             if ln.strip() and "does not exist" not in ln]
    if result.exit_status != 0 and other:
        raise CommandError(f"zfs get failed on node {node.name}: {other[-1]}",
                           exit_status=result.exit_status, stderr_tail="\n".join(other[-20:]))
    states = parse_states(listing, datasets)
    for name, value in parse_written(measured).items():
        if name in states:
            states[name].written = value
    return states


def split_sections(output: str) -> tuple[str, str, str]:
    """``_STATES_PLUS`` output -> (ps, states, written). Raises CommandError when the output
    was cut before its sections (never read as "no such dataset")."""
    parts = output.split(f"{_SECTION}\n")
    if len(parts) != 3:
        raise CommandError(f"zfs get printed {len(parts) - 1} of 2 section marks; the output "
                           "was cut")
    return parts[0], parts[1], parts[2]


def _lacks_written(output: str) -> bool:
    """zfs says it has no ``written`` property (zfs-fuse)."""
    return "invalid property" in output or "bad property" in output


@dapx_task
async def dataset_tree(node: "ProxmoxNode", dataset: str) -> list[str]:
    """``dataset`` and its descendants on ``node``, parents first.

    Raises InputError when the dataset does not exist or a descendant has a name dapx
    refuses; CommandError for any other zfs failure.
    """
    result = await run(node, zfs_argv.list_tree(dataset), check=False, timeout=120)
    if result.exit_status != 0:
        if "does not exist" in result.stderr:
            raise InputError(f"dataset {dataset} does not exist on node {node.name}; check "
                             "the name (zfs list) and the source node")
        raise CommandError(f"zfs list failed on node {node.name}: "
                           f"{(result.stderr.strip().splitlines() or ['?'])[-1]}",
                           exit_status=result.exit_status)
    return zfs_argv.parse_tree(result.stdout, dataset)


@dapx_task
async def take_snapshots(node: "ProxmoxNode", datasets: list[str], name: str) -> bool:
    """Snapshot every dataset as ``<ds>@<name>`` in ONE ``zfs snapshot`` (atomic across them).

    Returns True when atomic; zfs versions that take one name per command get one command
    per dataset (returns False: the disks may differ by milliseconds).
    """
    paths = [snapshot_path(d, name) for d in datasets]
    result = await run(node, ["zfs", "snapshot", *paths], check=False, timeout=120)
    if result.exit_status == 0:
        return True
    if "exists" in result.stderr and await _snapshots_exist(node, paths):
        return True  # a retry after the connection dropped once the command had run
    if len(paths) == 1 or "usage" not in result.stderr.lower() + result.stdout.lower():
        raise CommandError(f"zfs snapshot failed on node {node.name}: "
                           f"{(result.stderr.strip().splitlines() or ['?'])[-1]}",
                           argv=["zfs", "snapshot", *paths], exit_status=result.exit_status)
    for path in paths:
        if not await _snapshots_exist(node, [path]):  # safe to repeat
            await run(node, ["zfs", "snapshot", path], timeout=120)
    return False


async def _snapshots_exist(node: "ProxmoxNode", paths: list[str]) -> bool:
    """True when every snapshot in ``paths`` exists (one ``zfs list``)."""
    found = await run(node, ["zfs", "list", "-H", "-o", "name", "-t", "snapshot", *paths],
                      check=False, timeout=120)
    return found.exit_status == 0


# What ``zfs destroy`` says of a snapshot that is not there: OpenZFS, then zfs-fuse.
_ALREADY_GONE = ("could not find any snapshots to destroy", "does not exist")


@dapx_task
async def destroy_snapshots(node: "ProxmoxNode", dataset: str, names: list[str]) -> list[str]:
    """Destroy ``dataset@name`` for each name (never recursive); returns the names.

    A snapshot already gone counts as destroyed, so a retry after a dropped connection (or a
    concurrent prune) is safe; any other failure raises CommandError (a hold, a clone), or
    TransientCommandError when ZFS says busy (retried)."""
    for name in names:
        argv = zfs_argv.destroy_snapshot(dataset, name)
        result = await run(node, argv, check=False, timeout=300)
        if result.exit_status != 0 and not any(t in result.stderr for t in _ALREADY_GONE):
            raise command_failure(node, "zfs destroy", argv, result)
    return names


# Many guests at once (a fleet's quick round): one round trip per node, one outcome line per
# group. A group is one guest's disks, snapshotted in one command (atomic across them) or,
# where zfs takes one name per command, one by one; a retry finds them taken and says ok.
# Up to SNAPSHOTS_AT_ONCE groups are taken at once (the first argument): each `zfs snapshot`
# waits for its pool's transaction group to sync, and snapshots taken together share one.
SNAPSHOTS_AT_ONCE = 8
_SNAPSHOT_GROUPS = r"""exists() { zfs list -H -o name -t snapshot "$@" >/dev/null 2>&1; }
snap() {
  if out=$(zfs snapshot "$@" 2>&1) || exists "$@"; then printf 'ok\t%s\n' "$1"; return; fi
  case $out in
    *[Uu]sage*) for p; do
        exists "$p" || out=$(zfs snapshot "$p" 2>&1) || {
          printf 'failed\t%s\t%s\n' "$1" "$(printf '%s' "$out" | tail -n 1)"; return; }
      done
      printf 'ok\t%s\n' "$1" ;;
    *) printf 'failed\t%s\t%s\n' "$1" "$(printf '%s' "$out" | tail -n 1)" ;;
  esac
}
at_once=$1 group=() running=0
shift
for arg; do
  if [ "$arg" != -- ]; then group+=("$arg"); continue; fi
  snap "${group[@]}" &
  group=() running=$((running + 1))
  if [ "$running" -ge "$at_once" ]; then wait -n; running=$((running - 1)); fi
done
wait"""
# Pruning many datasets: first which of the snapshots named to be held exist (one ``zfs list``
# for all: the ones just received, so a copy is seen complete before anything of it goes),
# then per dataset its names in turn; one already gone counts as destroyed. Arguments: the
# ``ds@snap`` paths to hold, ``---``, then ``ds hold name... --`` per dataset (hold may be "").
NOT_HELD = "does not hold"
_DESTROY_SETS = r"""paths=()
while [ "$#" -gt 0 ] && [ "$1" != --- ]; do paths+=("$1"); shift; done
shift
held=
if [ "${#paths[@]}" -gt 0 ]; then held=$(zfs list -H -o name -t snapshot "${paths[@]}" 2>/dev/null); fi
held=$'\n'$held$'\n'
prune() {
  ds=$1 hold=$2; shift 2
  if [ -n "$hold" ]; then
    case $held in
      *$'\n'"$ds@$hold"$'\n'*) ;;
      *) printf 'failed\t%s\tdoes not hold %s\n' "$ds" "$hold"; return ;;
    esac
  fi
  for n; do
    out=$(zfs destroy "$ds@$n" 2>&1) && continue
    case $out in
      *"could not find any snapshots"*|*"does not exist"*) ;;
      *) printf 'failed\t%s\t%s\n' "$ds" "$(printf '%s' "$out" | tail -n 1)"; return ;;
    esac
  done
  printf 'ok\t%s\n' "$ds"
}
group=()
for arg; do
  if [ "$arg" = -- ]; then prune "${group[@]}"; group=(); else group+=("$arg"); fi
done"""


def parse_outcomes(output: str, keys: list[str]) -> dict[str, str]:
    """``ok|failed<TAB>key[<TAB>why]`` lines -> {key: "" when ok, else why}; a key without a
    line failed without saying (the script was cut)."""
    found = {k: "no outcome reported" for k in keys}
    for line in output.splitlines():
        state, _, rest = line.partition("\t")
        key, _, why = rest.partition("\t")
        if key in found:
            found[key] = "" if state == "ok" else (why or "failed")
    return found


@dapx_task(name="snapshot-groups")
async def snapshot_groups(node: "ProxmoxNode", groups: list[list[str]]) -> dict[str, str]:
    """Take every group of snapshot paths (``ds@name``: one guest's disks) in one round trip.
    Out: {first path of a group: "" when taken, else zfs's last line}. Safe to repeat."""
    argv = [arg for group in groups for arg in (*[_checked_path(p) for p in group], "--")]
    result = await run(node, ["bash", "-c", _SNAPSHOT_GROUPS, "bash", str(SNAPSHOTS_AT_ONCE),
                              *argv], timeout=600)
    return parse_outcomes(result.stdout, [g[0] for g in groups])


@dapx_task(name="prune-datasets")
async def destroy_snapshot_sets(node: "ProxmoxNode", names: dict[str, list[str]],
                                holding: dict[str, str] | None = None) -> dict[str, str]:
    """Destroy ``dataset@name`` for every dataset and name (never recursive) in one round
    trip; a dataset in ``holding`` ({dataset: snapshot}) loses nothing unless it holds that
    snapshot (checked even with no name to destroy). Out: {dataset: "" when done, else why:
    ``NOT_HELD`` ..., or zfs's last line (busy, a hold...)}. Safe to repeat: a snapshot
    already gone counts as destroyed."""
    holding = holding or {}
    paths, argv, keys = [], [], []
    for ds in dict.fromkeys([*names, *holding]):
        snaps, hold = names.get(ds, []), holding.get(ds, "")
        if snaps or hold:
            keys.append(ds)
            paths += [snapshot_path(ds, hold)] if hold else []
            argv += [validate_dataset_name(ds),
                     hold and snapshot_path(ds, hold).partition("@")[2],
                     *[snapshot_path(ds, n).partition("@")[2] for n in snaps], "--"]
    if not argv:
        return {}
    result = await run(node, ["bash", "-c", _DESTROY_SETS, "bash", *paths, "---", *argv],
                       timeout=900)
    return parse_outcomes(result.stdout, keys)


def _checked_path(path: str) -> str:
    dataset, _, name = path.partition("@")
    return snapshot_path(dataset, name)


@dapx_task
async def rollback(node: "ProxmoxNode", dataset: str, name: str) -> None:
    """``zfs rollback -r dataset@name``: only from a forced plan (destroys later snapshots)."""
    await run(node, zfs_argv.rollback(dataset, name), timeout=300)


# ``zfs create -p`` checks what exists, then creates each level: two runs creating the same
# parent at once (a fleet's first round) see one of them fail with "dataset already exists",
# for the dataset itself (it is there then, which is all a receive needs) or for a level
# above it, while the other run is still creating the rest: then the create is tried again
# (the levels above are there now). Any other failure stops at once, with zfs's words.
_CREATE_PARENTS = r'''for try in 1 2 3 4 5; do
  out=$("$@" 2>&1) && exit 0
  zfs list -H -o name "$4" >/dev/null 2>&1 && exit 0
  case $out in *"dataset already exists"*) ;; *) break ;; esac
done
printf '%s\n' "$out" >&2
exit 1'''


@dapx_task
async def create_parents(node: "ProxmoxNode", dataset: str) -> None:
    """``zfs create -p dataset`` (idempotent, also when another run creates it at the same
    moment): the parent a receive needs."""
    await run(node, ["sh", "-c", _CREATE_PARENTS, "sh", *zfs_argv.create_parents(dataset)],
              timeout=120)


# Marks a dataset dapx's and turns atime off on a filesystem: a replica that is only read
# (browsed, backed up) then stays unwritten, so ``written`` tells real writes apart.
_MARK = r'''zfs set "$2" "$1" || exit 1
[ "$(zfs get -H -o value type "$1")" = filesystem ] || exit 0
zfs set atime=off "$1"'''


@dapx_task
async def mark_owned(node: "ProxmoxNode", dataset: str, owner: str) -> None:
    """Set ``dapx:owner=<owner>`` on a dataset dapx created (plans refuse unmarked targets,
    and targets marked by another job), and ``atime=off`` when it is a filesystem."""
    mark = zfs_argv.set_user_property(dataset, OWNER_PROPERTY, owner)[2]
    await run(node, ["sh", "-c", _MARK, "sh", validate_dataset_name(dataset), mark], timeout=120)


@dapx_task
async def owned_children(node: "ProxmoxNode", parent: str) -> dict[str, str]:
    """{child dataset: owner} for the direct children of ``parent`` that carry a local
    ``dapx:owner`` mark ({} when ``parent`` does not exist)."""
    argv = ["zfs", "get", "-H", "-r", "-d", "1", "-o", "name,value,source", OWNER_PROPERTY,
            validate_dataset_name(parent)]
    result = await run(node, argv, check=False, timeout=120)
    if result.exit_status != 0 and "does not exist" not in result.stderr:
        raise CommandError(f"zfs get failed on node {node.name}: "
                           f"{(result.stderr.strip().splitlines() or ['?'])[-1]}",
                           exit_status=result.exit_status)
    found = {}
    for line in result.stdout.splitlines():
        parts = line.split("\t")
        if (len(parts) == 3 and parts[0].startswith(parent + "/") and "@" not in parts[0]
                and parts[1] != "-" and parts[2].startswith(("local", "received"))):
            found[parts[0]] = parts[1]
    return found


# ---------------------------------------------------------------------------------------------
# Written heads: bytes written into a dataset since its newest snapshot. OpenZFS has the
# ``written`` property. zfs-fuse (pool v23) has not, and its space accounting misses
# overwritten blocks that several snapshots share; there a probe snapshot of the head is sent
# incrementally from the newest snapshot into ``zstreamdump -v``, the WRITE records of file
# contents (object type 19) are summed, and the probe destroyed at once. Only file data
# counts: zfs-fuse rewrites a parent's directory when it mounts a child there, and reading
# (atime) or deleting (the rollback brings it back) loses nothing.
_PROBE = r'''probe=$1; shift
while [ "$#" -ge 2 ]; do
  ds=$1 base=$2; shift 2
  zfs destroy "$ds@$probe" >/dev/null 2>&1
  zfs snapshot "$ds@$probe" || exit 1
  size=$(zfs send -i "$ds@$base" "$ds@$probe" | zstreamdump -v | awk '
    $1 == "WRITE" { file = ($7 == 19); next }
    $1 == "offset" && file { total += $6; file = 0 }
    $1 == "END" { ended = 1 }
    END { if (ended) print total + 0 }')
  zfs destroy "$ds@$probe" || exit 1
  [ -n "$size" ] || { echo "cannot measure what was written into $ds" >&2; exit 1; }
  printf '%s\t%s\n' "$ds" "$size"
done'''


def parse_written(output: str) -> dict[str, int]:
    """``<dataset>\t<bytes>`` lines (``zfs get -o name,value written`` or the probe)."""
    found = {}
    for line in output.splitlines():
        name, _, value = line.partition("\t")
        if value.strip().isdigit():
            found[name] = int(value)
    return found


@dapx_task
async def head_written(node: "ProxmoxNode", heads: dict[str, str],
                       probe: bool = False) -> dict[str, int]:
    """Bytes written into each dataset's head since its newest snapshot.

    In: {dataset: short name of its newest snapshot}; ``probe``: the caller found ``written``
    missing already. OpenZFS: one ``zfs get written``; pools without that property: the
    probe above (takes and destroys ``@dapx-probe``; a
    leftover from a killed probe is removed first, so a retry is safe). Raises CommandError.
    """
    if not heads:
        return {}
    names = [validate_dataset_name(d) for d in heads]
    if not probe:
        argv = ["zfs", "get", "-H", "-p", "-o", "name,value", "written", *names]
        result = await run(node, argv, check=False, timeout=120)
        if result.exit_status == 0:
            return parse_written(result.stdout)
        if not _lacks_written(result.stderr):
            raise CommandError(f"zfs get written failed on node {node.name}: "
                               f"{(result.stderr.strip().splitlines() or ['?'])[-1]}",
                               exit_status=result.exit_status)
    pairs = [arg for d in names for arg in (d, snapshot_path(d, heads[d]).partition("@")[2])]
    probe = await run(node, ["sh", "-c", _PROBE, "sh", PROBE_SNAPSHOT, *pairs], timeout=3600)
    return parse_written(probe.stdout)



# What an incremental send will carry, for progress: the head's ``written@<base>`` (OpenZFS),
# one line per dataset; a ZFS without that property (zfs-fuse) prints nothing for it.
_SEND_SIZES = r'''while [ "$#" -ge 2 ]; do
  size=$(zfs get -H -p -o value "written@$2" "$1" 2>/dev/null) && printf '%s\t%s\n' "$1" "$size"
  shift 2
done
exit 0'''


@dapx_task
async def send_sizes(node: "ProxmoxNode", bases: dict[str, str]) -> dict[str, int]:
    """Bytes written into each dataset since its ``base`` snapshot (in: {dataset: short
    name}): what an incremental send from there carries, near enough for a progress bar.
    Datasets the node cannot measure are left out (zfs-fuse: all of them)."""
    if not bases:
        return {}
    pairs = [arg for d, base in bases.items()
             for arg in snapshot_path(d, base).split("@", 1)]
    result = await run(node, ["sh", "-c", _SEND_SIZES, "sh", *pairs], check=False, timeout=120)
    return parse_written(result.stdout)

# ---------------------------------------------------------------------------------------------
# Forced resends: the new copy arrives beside the old one (``dapx.core.staging``), then swaps.
# Renames and destroys unmount the tree first and mount it again after: ``zfs rename`` of a
# mounted filesystem unmounts it itself on OpenZFS, but zfs-fuse answers "dataset is busy"
# for a long while after a mount, while an explicit unmount works. ``zfs umount`` of a parent
# unmounts its children; a volume has nothing to unmount. A tree's mount that fails does not
# fail the script (the rename or swap before it is done, and undoing it would be worse): it
# prints "not-mounted<TAB>dataset<TAB>zfs's reason" on stdout, and the task logs a warning.
NOT_MOUNTED = "not-mounted"
_TREE = r'''exists() { zfs list -H -o name "$1" >/dev/null 2>&1; }
unmount() { [ "$(zfs get -H -o value mounted "$1" 2>/dev/null)" != yes ] || zfs umount "$1"; }
mount_tree() {
  zfs list -H -o name,canmount,mounted -r "$1" | while read -r name can mounted; do
    if [ "$can" = on ] && [ "$mounted" = no ] && ! err=$(zfs mount "$name" 2>&1); then
      printf 'not-mounted\t%s\t%s\n' "$name" "$(printf '%s' "$err" | tr '\t\n' '  ')"
    fi
  done
  return 0
}
'''
_SWAP = _TREE + r'''target=$1 incoming=$2 old=$3
if ! exists "$incoming"; then
  if exists "$target" && exists "$old"; then mount_tree "$target"; exit 0; fi
  echo "$incoming does not exist: nothing to swap in" >&2; exit 1
fi
unmount "$incoming" || exit 1
if exists "$target"; then
  unmount "$target" || exit 1
  zfs rename "$target" "$old" || { mount_tree "$target"; exit 1; }
fi
if ! zfs rename "$incoming" "$target"; then
  zfs rename "$old" "$target"; mount_tree "$target"; exit 1
fi
mount_tree "$target"'''
_RENAME_UNMOUNTED = _TREE + r'''if exists "$1" && ! exists "$2"; then
  unmount "$1" || exit 1
  zfs rename "$1" "$2" || exit 1
fi
if exists "$2"; then mount_tree "$2"; fi'''
_DESTROY_EXISTING = _TREE + r'''for d; do
  if exists "$d"; then unmount "$d" && zfs destroy -r "$d" || exit 1; fi
done'''


def not_mounted(stdout: str) -> list[tuple[str, str]]:
    """(dataset, zfs's reason) for each dataset a ``mount_tree`` left in place unmounted."""
    found = []
    for line in stdout.splitlines():
        tag, _, rest = line.partition("\t")
        if tag == NOT_MOUNTED:
            dataset, _, why = rest.partition("\t")
            found.append((dataset, why.strip() or "no reason given"))
    return found


def warn_not_mounted(node: "ProxmoxNode", stdout: str) -> None:
    """Log, in the run's log, each dataset the script left in place but could not mount."""
    from dapx.tasks.base import run_logger

    for dataset, why in not_mounted(stdout):
        run_logger().warning("%s on node %s is in place and whole but not mounted (%s); "
                             "mount it with: zfs mount %s", dataset, node.name, why,
                             shlex.quote(dataset))


@dapx_task
async def swap_in(node: "ProxmoxNode", target: str, incoming: str, old: str) -> None:
    """Rename ``target`` to ``old`` and ``incoming`` to ``target`` (renaming the old copy
    back when the second rename fails). Safe to repeat: a finished swap is only mounted
    (a run cut after the renames left ``target`` unmounted)."""
    argv = ["sh", "-c", _SWAP, "sh", *[validate_dataset_name(d) for d in (target, incoming, old)]]
    warn_not_mounted(node, (await run(node, argv, timeout=300)).stdout)


async def rename_unmounted(node: "ProxmoxNode", old: str, new: str) -> None:
    """Rename ``old`` to ``new`` unmounted, then mount ``new``'s tree. When ``new`` exists
    already (a rename done before, perhaps cut before its mount) only the mount is done.
    Not a task: the renumber-guest and rename_back tasks call it."""
    result = await run(node, ["sh", "-c", _RENAME_UNMOUNTED, "sh", validate_dataset_name(old),
                              validate_dataset_name(new)], timeout=600)
    warn_not_mounted(node, result.stdout)


@dapx_task
async def rename_back(node: "ProxmoxNode", old: str, target: str) -> None:
    """Rename ``old`` to ``target`` unless ``target`` exists (a swap cut between its renames)."""
    await rename_unmounted(node, old, target)


@dapx_task
async def destroy_existing(node: "ProxmoxNode", datasets: list[str]) -> list[str]:
    """``zfs destroy -r`` each dataset that exists (dapx's own scratch copies and replicas the
    job was told to remove; never a pool). Returns the names asked for."""
    pools = [d for d in datasets if "/" not in validate_dataset_name(d)]
    if pools:
        raise InputError(f"refusing to destroy {pools[0]!r}: it is a whole pool")
    if datasets:
        await run(node, ["sh", "-c", _DESTROY_EXISTING, "sh", *datasets], timeout=3600)
    return datasets


_MOUNT_TREES = _TREE + r'''for d; do
  if exists "$d"; then mount_tree "$d"; fi
done'''


@dapx_task
async def mount_trees(node: "ProxmoxNode", datasets: list[str]) -> None:
    """Mount each existing dataset and its descendants that ZFS may mount and are not
    mounted (a swap or rename cut before its mount); mounted ones are left alone."""
    if datasets:
        result = await run(node, ["sh", "-c", _MOUNT_TREES, "sh",
                                  *[validate_dataset_name(d) for d in datasets]], timeout=600)
        warn_not_mounted(node, result.stdout)


# Asked again once a second while zfs says busy (zfs-fuse does, for seconds, right after the
# children were renamed away), up to $2 times; stops at once, leaving it, when a child appears
# (another job's resend started using it: not a failure).
_REMOVE_IF_EMPTY = _TREE + r'''tries=0
empty() { [ -z "$(zfs list -H -o name -r -d 1 "$1" | sed 1d)" ]; }
while exists "$1" && empty "$1"; do
  err=$( { unmount "$1" && zfs destroy "$1"; } 2>&1 ) && exit 0
  case $err in *busy*) ;; *) empty "$1" || exit 0; echo "$err" >&2; exit 1 ;; esac
  tries=$((tries + 1))
  [ "$tries" -lt "$2" ] || { echo "$err" >&2; exit 1; }
  sleep 1
done'''
REMOVE_BUSY_TRIES = 15


@dapx_task(retries=0)
async def remove_if_empty(node: "ProxmoxNode", dataset: str) -> None:
    """Destroy ``dataset`` if it has no children (never recursive). It is only tidying dapx's
    scratch parent, which another job may be using: a failure is logged, never raised."""
    from dapx.tasks.base import run_logger

    result = await run(node, ["sh", "-c", _REMOVE_IF_EMPTY, "sh", validate_dataset_name(dataset),
                              str(REMOVE_BUSY_TRIES)], check=False, timeout=120)
    if result.exit_status != 0:
        why = (result.stderr.strip().splitlines() or ["no reason given"])[-1]
        run_logger().warning("could not remove dapx's empty scratch dataset %s on node %s "
                             "(%s); it holds nothing: zfs destroy %s removes it", dataset,
                             node.name, why, shlex.quote(dataset))


@dapx_task
async def supports_resume(node: "ProxmoxNode", pool: str) -> bool:
    """True when the node's ZFS has resumable receive (OpenZFS: ``receive_resume_token``
    exists; zfs-fuse answers 'bad property list')."""
    argv = ["zfs", "get", "-H", "-o", "value", "receive_resume_token",
            validate_dataset_name(pool)]
    return (await run(node, argv, check=False, timeout=60)).exit_status == 0


@dapx_task
async def syncoid_can_list(node: "ProxmoxNode", pool: str) -> bool:
    """True when ``zfs get -t snapshot`` works here. syncoid 2.1.0 needs it on a remote
    target: its fallback for older ZFS (zfs-fuse, Solaris) puts the ssh command in twice and
    fails with 'snapshots couldn't be listed'."""
    argv = ["zfs", "get", "-H", "-p", "-d", "1", "-t", "snapshot", "guid",
            validate_dataset_name(pool)]
    return (await run(node, argv, check=False, timeout=60)).exit_status == 0


# The direct pipeline, for nodes where syncoid cannot run (see syncoid_can_list). A constant
# script: every value arrives as a positional argument; the remote command ($7) is one string
# quoted with shlex.join, which ssh hands to the destination's shell (quoted once, there).
_PIPE = r'''exec 2>&1
base=$1 snap=$2 key=$3 known=$4 port=$5 dest=$6 remote=$7 rate=$8
if [ -n "$base" ]; then set -- -I "$base" "$snap"; else set -- "$snap"; fi
meter() { if [ -n "$rate" ]; then pv -f -n -b -i 1 -L "$rate"; else pv -f -n -b -i 1; fi; }
zfs send "$@" | meter | ''' + STREAM_SSH


def pipe_argv(source_dataset: str, base: str | None, snapshot: str, target_host: str,
              target_dataset: str, *, key: str, known_hosts: str, port: int,
              rate: str | None) -> list[str]:
    """``zfs send [-I base] src@snap | pv | ssh dest zfs receive target`` as one argv (no
    ``-F``: the plan rolled back what it decided to; a target written since fails the
    receive)."""
    import shlex

    from dapx.core.validate import validate_abs_path, validate_host, parse_bandwidth

    remote = shlex.join(["zfs", "receive", validate_dataset_name(target_dataset)])
    return ["sh", "-c", _PIPE, "sh",
            snapshot_path(source_dataset, base) if base else "",
            snapshot_path(source_dataset, snapshot), validate_abs_path(key, "ssh key"),
            validate_abs_path(known_hosts, "known_hosts file"), str(int(port)),
            f"root@{validate_host(target_host)}", remote, parse_bandwidth(rate) if rate else ""]
