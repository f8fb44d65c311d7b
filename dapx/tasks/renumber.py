"""Renumber a guest on its node over SSH: rename its volumes, move its config.

The plan (which volumes, which names, the new config) is ``dapx.core.renumber``'s; this module
carries it out the way PVE's own tools touch these files: ``zfs rename`` for datasets, ``mv``
for image files and BTRFS subvolumes (with their ``@snapshot`` siblings), and the config
written atomically under the new VMID in ``/etc/pve/nodes/<node>/`` before the old one is
removed. Every step checks first: a volume already under its new name counts as moved, and
a config already moved counts as done, so a retried or repeated renumber finishes the job.
Before moving anything, every volume is checked: a new name already taken by something else
stops the renumber with nothing changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dapx.core.guestconfig import GuestKind
from dapx.core.renumber import RenumberPlan, VolumeMove, plan_renumber
from dapx.errors import ConflictError, PermanentError
from dapx.tasks.base import dapx_task
from dapx.tasks.guests import STORAGE_CFG, config_path, read_files, write_file

if TYPE_CHECKING:
    from dapx.blocks.node import ProxmoxNode

# Constant scripts; paths and names only ever arrive as positional arguments.
_STATES = ('while [ "$#" -ge 3 ]; do m=$1 s=$2 d=$3; shift 3; '
           'if [ "$m" = zfs ]; then '
           'zfs list -H -o name "$s" >/dev/null 2>&1 && a=1 || a=0; '
           'zfs list -H -o name "$d" >/dev/null 2>&1 && b=1 || b=0; '
           'else [ -e "$s" ] && a=1 || a=0; [ -e "$d" ] && b=1 || b=0; fi; '
           'echo "$a$b"; done')
"""Prints, per (method, source, target) triple, whether each exists: ``10``, ``01``..."""
_MOVE_PATH = ('s=$1 d=$2; mkdir -p "${d%/*}" || exit 1; '
              'for x in "$s"@*; do [ -e "$x" ] || continue; t="$d${x#"$s"}"; '
              'mv -T "$x" "$t" 2>/dev/null && continue; '
              '[ "$(btrfs property get -ts "$x" ro 2>/dev/null)" = ro=true ] '
              '|| { mv -T "$x" "$t"; exit 1; }; '
              'btrfs property set -ts "$x" ro false && mv -T "$x" "$t" '
              '&& btrfs property set -ts "$t" ro true || exit 1; '
              'done; mv -T "$s" "$d" || exit 1; rmdir --ignore-fail-on-non-empty "${s%/*}"')
"""Moves a file or directory (and its ``@snapshot`` siblings: BTRFS), then drops the old
``images/<vmid>`` directory if it is empty. A read-only BTRFS snapshot cannot move to another
directory (its ``..`` lives in it: EROFS), so it is made writable for the move and read-only
again at once; one with a received UUID refuses that (no ``-f``), and the renumber stops."""


async def _states(node: "ProxmoxNode", moves: list[VolumeMove]) -> list[str]:
    """Per move: ``10`` to do, ``01`` done, ``11`` both names taken, ``00`` volume missing."""
    from dapx.tasks.ssh import run

    if not moves:
        return []
    args = [x for m in moves for x in ("zfs" if m.method == "zfs" else "path", m.source,
                                       m.target)]
    result = await run(node, ["sh", "-c", _STATES, "sh", *args])
    return result.stdout.split()


def _refusals(moves: list[VolumeMove], states: list[str]) -> list[str]:
    problems = []
    for move, state in zip(moves, states):
        if state == "11":
            problems.append(f"{move.target} exists already (so does {move.source})")
        elif state == "00":
            problems.append(f"{move.source} ({move.old_volid}) does not exist")
    return problems


async def _move(node: "ProxmoxNode", move: VolumeMove) -> None:
    from dapx.tasks.ssh import run
    from dapx.tasks.zfs import rename_unmounted

    if move.method == "zfs":  # unmounted first: zfs-fuse keeps a fresh mount busy
        await rename_unmounted(node, move.source, move.target)
    else:
        await run(node, ["sh", "-c", _MOVE_PATH, "sh", move.source, move.target], timeout=600)


async def read_plan(node: "ProxmoxNode", kind: GuestKind, old: int, new: int, *,
                    new_may_exist: bool = False) -> tuple[RenumberPlan | None, dict[str, str]]:
    """(plan, files read); the plan is None when the guest is already ``new``. Raises
    PermanentError when neither config exists, ConflictError when both do (unless
    ``new_may_exist``: a guest there now will have moved away), InputError for volumes dapx
    cannot rename."""
    old_path, new_path = config_path(kind, old, node.name), config_path(kind, new, node.name)
    files = (await read_files(node, [old_path, new_path, STORAGE_CFG])).files
    if old_path not in files:
        if new_path in files:
            return None, files
        raise PermanentError(f"guest {old} ({kind}) is not on node {node.name}")
    if new_path in files and not new_may_exist:
        raise ConflictError(f"cannot renumber guest {old} to {new} on {node.name}: "
                            f"{new_path} exists")
    from dapx.core.storagecfg import parse_storage_cfg

    storages = parse_storage_cfg(files.get(STORAGE_CFG, ""))
    return plan_renumber(files[old_path], kind, old, new, storages), files


@dapx_task(name="check-renumber")
async def check_renumber(node: "ProxmoxNode", kind: GuestKind, old: int, new: int,
                         moving_away: list[str] | None = None) -> RenumberPlan:
    """Plan renumbering guest ``old`` to ``new`` on ``node`` and check, changing nothing, that
    it could run now: every volume there, every new name free. ``moving_away``: volume ids
    whose names may be taken now because they will have moved first (the guest a swap sets
    aside). Raises ConflictError naming each problem, InputError, PermanentError."""
    plan, _ = await read_plan(node, kind, old, new, new_may_exist=moving_away is not None)
    if plan is None:
        raise ConflictError(f"guest {old} is not on {node.name} but {new} is")
    states = await _states(node, plan.moves)
    problems = []
    for move, state in zip(plan.moves, states):
        if state == "01":
            state = "00"  # before anything moved, a taken new name means the volume is gone
        if not (state == "11" and move.new_volid in (moving_away or [])):
            problems += _refusals([move], [state])
    if problems:
        raise ConflictError(f"cannot renumber guest {old} to {new} on {node.name}: "
                            + "; ".join(problems))
    return plan


@dapx_task(name="renumber-guest")
async def renumber_guest(node: "ProxmoxNode", kind: GuestKind, old: int, new: int) -> bool:
    """Give guest ``old`` on ``node`` the VMID ``new``: rename every volume, write the config
    as ``new``, remove ``old``'s. Returns False when it was done already. Safe to repeat.
    Raises ConflictError (a new name is taken; nothing moved), PermanentError, CommandError."""
    from dapx.tasks.ssh import run

    plan, _ = await read_plan(node, kind, old, new)
    if plan is None:
        return False
    states = await _states(node, plan.moves)
    problems = _refusals(plan.moves, states)
    if problems:
        raise ConflictError(f"cannot renumber guest {old} to {new} on {node.name}: "
                            + "; ".join(problems))
    for move, state in zip(plan.moves, states):
        if state == "10" or (state == "01" and move.method == "zfs"):
            await _move(node, move)  # "01": moved; mounted again if a cut came before that
    await write_file(node, config_path(kind, new, node.name), plan.config_text)
    await run(node, ["rm", "-f", "--", config_path(kind, old, node.name)])
    return True

