"""``zfs`` argv builders and output parsers (pure; the ssh task runs them).

Every builder takes names checked by ``dapx.core.validate`` (and checks them again: cheap,
and nothing unchecked can reach a command line). Commands use only what both OpenZFS and
zfs-fuse 0.7 (pool v23) have: no ``zfs list -p``, no ``zfs get -t``; ``zfs get -Hp`` gives
exact numbers on both.
"""

from __future__ import annotations

import re

from dapx.core.snapshots import Snapshot
from dapx.core.validate import snapshot_path, validate_dataset_name
from dapx.errors import InputError, PermanentError

SNAPSHOT_PROPS = ("guid", "createtxg", "creation")
_USER_PROP = re.compile(r"[a-z0-9_.-]+:[a-z0-9_.:-]+")
_PROP_VALUE = re.compile(r"[A-Za-z0-9_.:/@+-]{1,1024}")
_NATIVE_PROPS = {"guid", "createtxg", "creation", "written", "used", "referenced", "type",
                 "mountpoint", "readonly"}


def _user_property(name: str) -> str:
    if not _USER_PROP.fullmatch(name):
        raise InputError(f"ZFS user property {name!r} must look like module:name in lower case")
    return name


def _any_property(name: str) -> str:
    return name if name in _NATIVE_PROPS else _user_property(name)


def list_snapshot_props(dataset: str) -> list[str]:
    """``zfs get`` of guid, createtxg and creation for ``dataset`` and its snapshots.

    Depth 1 also lists direct children; ``parse_snapshot_props`` keeps only ``dataset@*``.
    """
    return ["zfs", "get", "-H", "-p", "-r", "-d", "1", "-o", "name,property,value",
            ",".join(SNAPSHOT_PROPS), validate_dataset_name(dataset)]


def parse_snapshot_props(output: str, dataset: str) -> list[Snapshot]:
    """Snapshots of ``dataset`` from ``list_snapshot_props`` output, oldest first.

    In: tab-separated ``name property value`` lines. Out: Snapshot list sorted by createtxg.
    Raises PermanentError for a malformed line or a snapshot missing a property.
    """
    found: dict[str, dict[str, int]] = {}
    for line in output.splitlines():
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise PermanentError(f"unexpected 'zfs get' output line: {line[:120]!r}")
        name, prop, value = parts
        base, at, short = name.partition("@")
        if not at or base != dataset or prop not in SNAPSHOT_PROPS:
            continue
        if not value.isdigit():
            raise PermanentError(f"'zfs get' gave {prop}={value!r} for {name}; expected a number")
        found.setdefault(short, {})[prop] = int(value)
    missing = [n for n, props in found.items() if len(props) != len(SNAPSHOT_PROPS)]
    if missing:
        raise PermanentError(f"'zfs get' left out properties of {dataset}@{missing[0]}")
    snaps = [Snapshot(name=n, **props) for n, props in found.items()]
    return sorted(snaps, key=lambda s: s.createtxg)


def dataset_exists(dataset: str) -> list[str]:
    """``zfs list -H -o name <ds>``: exit 0 when it exists (stderr says 'does not exist')."""
    return ["zfs", "list", "-H", "-o", "name", validate_dataset_name(dataset)]


def list_tree(dataset: str) -> list[str]:
    """``zfs list -H -o name -r <ds>``: the dataset and every descendant (zfs-fuse has no
    ``-t`` filter worth relying on; snapshots are filtered out by ``parse_tree``)."""
    return ["zfs", "list", "-H", "-o", "name", "-r", validate_dataset_name(dataset)]


def parse_tree(output: str, dataset: str) -> list[str]:
    """``list_tree`` output -> the dataset and its descendants, parents before children.

    Raises InputError when a descendant's name is one dapx refuses (a space, a leading
    ``-``...): it would reach syncoid's shell strings. PermanentError when ``dataset`` is
    not in the output.
    """
    names = [ln.strip() for ln in output.splitlines() if ln.strip() and "@" not in ln]
    tree = sorted(validate_dataset_name(n) for n in names
                  if n == dataset or n.startswith(dataset + "/"))
    if not tree or tree[0] != dataset:
        raise PermanentError(f"'zfs list' did not list {dataset}")
    return tree


def create_parents(dataset: str) -> list[str]:
    """``zfs create -p <ds>``: the parent datasets a receive needs (idempotent)."""
    return ["zfs", "create", "-p", validate_dataset_name(dataset)]


def snapshot(dataset: str, name: str) -> list[str]:
    """``zfs snapshot <ds>@<name>``."""
    return ["zfs", "snapshot", snapshot_path(dataset, name)]


def destroy_snapshot(dataset: str, name: str) -> list[str]:
    """``zfs destroy <ds>@<name>``: one snapshot, never recursive."""
    return ["zfs", "destroy", snapshot_path(dataset, name)]


def destroy_dataset(dataset: str) -> list[str]:
    """``zfs destroy -r <ds>``: only for a FullSend plan with ``replace_target`` (force).

    Refuses a pool's root dataset (InputError): dapx never destroys a whole pool.
    """
    if "/" not in validate_dataset_name(dataset):
        raise InputError(f"refusing to destroy {dataset!r}: it is a whole pool")
    return ["zfs", "destroy", "-r", dataset]


def rollback(dataset: str, name: str) -> list[str]:
    """``zfs rollback -r <ds>@<name>``: discards later writes and later snapshots (force)."""
    return ["zfs", "rollback", "-r", snapshot_path(dataset, name)]


def set_user_property(target: str, prop: str, value: str) -> list[str]:
    """``zfs set module:name=value <ds>`` (user properties only, e.g. ``dapx:owner``)."""
    if not _PROP_VALUE.fullmatch(value):
        raise InputError(f"property value {value!r} must be 1..1024 of letters, digits, "
                         "_ . : / @ + -")
    return ["zfs", "set", f"{_user_property(prop)}={value}", _target(target)]


def get_property(target: str, prop: str) -> list[str]:
    """``zfs get -H -p -o value <prop> <ds>``; parse with ``parse_property_value``."""
    return ["zfs", "get", "-H", "-p", "-o", "value", _any_property(prop), _target(target)]


def parse_property_value(output: str) -> str | None:
    """The value printed by ``get_property``; None when unset (ZFS prints ``-``)."""
    value = output.strip("\n")
    return None if value in ("-", "") else value


def _target(target: str) -> str:
    """A dataset or ``dataset@snap`` name, validated."""
    dataset, at, short = target.partition("@")
    return snapshot_path(dataset, short) if at else validate_dataset_name(dataset)
