"""``syncoid`` argv (sanoid 2.1.0), run on the source node, pushing to the destination.

syncoid joins its options into shell strings itself (``-o $opt``, ``-i $key``, ``mbuffer -R
$limit``) and only quotes dataset names, so every value put here is validated to plain
characters first (``validate_abs_path``, ``parse_bandwidth``).

Decisions: dapx takes its own snapshots, so syncoid always runs with ``--no-sync-snap`` and
sends what exists (``-I`` from the common snapshot). The plan decides every rollback (and
refuses a written target), so syncoid runs with ``--no-rollback``: no second rollback round
trip, and a receive into a target written after the plan fails instead of discarding it.
Syncoid 2.1's ``--no-command-checks`` is not used: it reads another key than it sets
(``nocommandchecks``), so the checks run anyway. The destination's host key is pinned: a
dapx-owned known_hosts file, ``StrictHostKeyChecking=yes``, the global file ignored.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field

from dapx.core.types import AbsPath, Bandwidth
from dapx.core.validate import (Compression, validate_abs_path, validate_dataset_name,
                                validate_host)
from dapx.errors import InputError

_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}")

# dapx's names -> syncoid's (--compress accepts gzip, pigz-*, zstd-fast/-slow, lz4, xz, lzo, none)
SYNCOID_COMPRESSION: dict[str, str] = {"lz4": "lz4", "zstd": "zstd-fast", "gzip": "gzip",
                                       "none": "none"}


class SyncoidOptions(BaseModel):
    """How one syncoid transfer runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    compression: Compression = Field(default="lz4", description="Compression on the wire",
                                     examples=["zstd"])
    ssh_key: AbsPath = Field(description="Replication private key on the source node",
                             examples=["/root/.ssh/dapx_replication"])
    known_hosts_file: AbsPath = Field(description="known_hosts file on the source node "
                                      "pinning the destination's host key",
                                      examples=["/etc/dapx/known_hosts"])
    ssh_port: int = Field(default=22, ge=1, le=65535, description="Destination SSH port",
                          examples=[22])
    bandwidth_limit: Bandwidth | None = Field(default=None, description="Limit on the source "
                                              "side (bytes/s, k/M/G)", examples=["10M"])
    recursive: bool = Field(default=False, description="Also send child datasets "
                            "(plain dataset mode)", examples=[False])
    resume: bool = Field(default=True, description="Use resumable receive (real ZFS only; "
                         "off on zfs-fuse)", examples=[True])
    create_bookmark: bool = Field(default=False, description="Bookmark the newest source "
                                  "snapshot (real ZFS only; zfs-fuse has no bookmarks)",
                                  examples=[False])
    rollback_target: bool = Field(default=False, description="Let syncoid roll the target "
                                  "back and receive with -F (discarding writes since its last "
                                  "snapshot). Off: the plan step refuses or rolls back itself, "
                                  "and a write after it makes the receive fail instead of "
                                  "being discarded", examples=[False])
    force_delete: bool = Field(default=False, description="Let syncoid destroy a target with "
                               "no common snapshot; set only from a forced plan",
                               examples=[False])


# The ciphers of every stream between nodes: OpenSSH's default set (since 6.x, PVE's every
# release) with AES-GCM first, not chacha20-poly1305. Both are AEAD ciphers of full strength;
# on CPUs with AES instructions (every amd64 server PVE runs on) AES-GCM costs less CPU per
# byte, and a stream's two ssh processes are a large part of a transfer's CPU: a bare 512 MiB
# send between two lab nodes took 2.27-2.43 s with AES-GCM against 2.42-2.59 s with the
# default order. The whole set, reordered, not OpenSSH 8.7's ``^`` prefix: PVE 7's 8.4 lacks
# it, and a server that accepts any default cipher still finds one here.
STREAM_CIPHERS = ("aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
                  "aes128-ctr,aes192-ctr,aes256-ctr")


def ssh_options(known_hosts_file: str) -> list[str]:
    """The ssh ``-o`` options of a stream between nodes: the destination's host key pinned, no
    prompts, AES-GCM first (``STREAM_CIPHERS``)."""
    known = validate_abs_path(known_hosts_file, "known_hosts file")
    return [f"UserKnownHostsFile={known}", "GlobalKnownHostsFile=/dev/null",
            "StrictHostKeyChecking=yes", "BatchMode=yes", "IdentitiesOnly=yes",
            f"Ciphers={STREAM_CIPHERS}"]


STREAM_SSH = ('ssh -i "$key" -o UserKnownHostsFile="$known" -o GlobalKnownHostsFile=/dev/null '
              '-o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes '
              f'-o Ciphers={STREAM_CIPHERS} -p "$port" "$dest" "$remote"')
"""The ``ssh`` of the shell pipelines (direct zfs, btrfs and vzdump streams), with the same
options as ``ssh_options``; ``$key``, ``$known``, ``$port``, ``$dest`` and ``$remote`` are the
script's own variables, set from its positional arguments."""


def syncoid_argv(source_dataset: str, target_host: str, target_dataset: str,
                 options: SyncoidOptions, *, target_user: str = "root") -> list[str]:
    """``syncoid [options] <src> <user>@<host>:<dst>``.

    In: validated dataset names, the destination host (IPv4 or name) and options.
    Out: the argv. Raises InputError for a bad name, host or user.
    """
    validate_dataset_name(source_dataset)
    validate_dataset_name(target_dataset)
    if not _USER.fullmatch(target_user):
        raise InputError(f"SSH user {target_user!r} is not a plain user name")
    argv = ["syncoid", "--no-sync-snap", f"--compress={SYNCOID_COMPRESSION[options.compression]}",
            f"--sshkey={options.ssh_key}", f"--sshport={options.ssh_port}"]
    argv += [f"--sshoption={opt}" for opt in ssh_options(options.known_hosts_file)]
    if options.bandwidth_limit:
        argv.append(f"--source-bwlimit={options.bandwidth_limit}")
    flags = {"--recursive": options.recursive, "--no-resume": not options.resume,
             "--create-bookmark": options.create_bookmark,
             "--no-rollback": not options.rollback_target,
             "--force-delete": options.force_delete}
    argv += [flag for flag, on in flags.items() if on]
    return argv + [source_dataset, f"{target_user}@{validate_host(target_host)}:{target_dataset}"]


# syncoid opens an SSH master connection to the destination for every run (a key exchange and
# a login each time: ~0.1 core-second and ~0.15 s per transfer, measured in the lab), and 2.1
# (Debian 12, PVE 8) names its socket /tmp/syncoid-<user@host>-<epoch second> (fixed upstream
# in 2.2, sanoid #734), so two syncoids sending to one host in the same second would share it
# and the first to finish would close the master under the other. Each transfer therefore runs
# with an ``ssh`` shim first in PATH that gives every ``-S <socket>`` one shared master per
# destination instead: ``ControlMaster=auto`` in the root-only ``SHARED_MASTERS`` directory
# (``%C``: a hash of this node, the destination, its port and user), kept ``MASTER_PERSIST``
# seconds after its last session; syncoid's ``-O exit`` is left out so the next transfer finds
# it. The master is made with syncoid's own options, so the destination's host key is checked
# as pinned; a transfer that starts while another makes the master connects on its own. The
# shim's directory goes when the transfer ends. The replication flows' trust check, run just
# before, logs in afresh with ``master_argv`` and leaves its connection as that master, so a
# run with no master left from an earlier one logs in once, not twice.
SHARED_MASTERS = "/run/dapx-ssh"
MASTER_PERSIST = 5
_MASTERS_DIR = r'''
mkdir -p -m 700 "$DAPX_MASTERS" && [ -O "$DAPX_MASTERS" ] && chmod 700 "$DAPX_MASTERS" || exit 1
'''
SHARED_MASTER = _MASTERS_DIR + r'''real=$(command -v ssh) || exit 1
dir=$(mktemp -d /tmp/dapx-syncoid.XXXXXXXX) || exit 1
trap 'rm -rf "$dir"' EXIT
cat > "$dir/ssh" <<'SHIM'
#!/bin/sh
for arg do [ "$arg" = -O ] && exit 0; done
socket=
for arg do
  shift
  if [ -n "$socket" ]; then socket=; continue; fi
  case $arg in
    -S) socket=1; set -- "$@" -o "ControlPath=$DAPX_MASTERS/%C" -o ControlMaster=auto \
          -o "ControlPersist=$DAPX_PERSIST"; continue;;
    -M) continue;;
  esac
  set -- "$@" "$arg"
done
exec "$DAPX_REAL_SSH" "$@"
SHIM
chmod 700 "$dir/ssh"
DAPX_REAL_SSH=$real PATH="$dir:$PATH" "$@"'''


def master_argv(ssh_argv: list[str]) -> list[str]:
    """``ssh_argv`` (an ``ssh ... HOST COMMAND`` from the source node) logging in afresh and
    leaving its connection behind as the shared master the next transfer to that host takes
    up (``ControlMaster=yes``: with a master there already it logs in on its own)."""
    shared = ["-o", f"ControlPath={SHARED_MASTERS}/%C", "-o", "ControlMaster=yes",
              "-o", f"ControlPersist={MASTER_PERSIST}"]
    return ["env", f"DAPX_MASTERS={SHARED_MASTERS}", "sh", "-c", _MASTERS_DIR + 'exec "$@"',
            "sh", ssh_argv[0], *shared, *ssh_argv[1:]]


def with_shared_master(argv: list[str]) -> list[str]:
    """``env DAPX_MASTERS=... DAPX_PERSIST=... sh -c SHARED_MASTER sh ARGV...``: ``argv`` (a
    syncoid command) sharing one SSH master per destination; its exit status is the
    command's."""
    return ["env", f"DAPX_MASTERS={SHARED_MASTERS}", f"DAPX_PERSIST={MASTER_PERSIST}",
            "sh", "-c", SHARED_MASTER, "sh", *argv]
