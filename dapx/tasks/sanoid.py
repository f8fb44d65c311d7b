"""sanoid on a node: read sanoid.conf exactly, and replace it only after sanoid accepted it.

``read_conf`` returns the file's exact bytes (base64 over SSH, so no byte is re-encoded) and
its sha256. ``install_conf`` sends the new text to a constant script on the node that
1. writes it to a private temporary directory and runs sanoid itself on it
   (``sanoid --configdir=TMP --readonly``: parses the file and every setting as a real run
   would, takes and prunes nothing; sanoid 2.1 has no ``--configcheck``);
2. checks the file on the node is still the one read (sha256), so a concurrent edit is
   never overwritten;
3. keeps the previous file as ``sanoid.conf.dapx-previous`` and renames the new one into
   place (same directory: atomic; mode and owner copied from the old file).
With ``check_only`` it stops after step 1 (the dry run).
"""

from __future__ import annotations

import base64
import hashlib
from typing import TYPE_CHECKING

from dapx.core.sanoidconf import CONF_PATH
from dapx.errors import CommandError, ConflictError, InputError, PermanentError
from dapx.tasks.base import dapx_task
from dapx.tasks.ssh import run

if TYPE_CHECKING:
    from dapx.blocks.node import ProxmoxNode

ABSENT = "absent"
BACKUP_SUFFIX = ".dapx-previous"
_CHANGED, _REFUSED, _MISSING = 75, 65, 69

_READ = r'''if [ -e "$1" ]; then base64 -w0 -- "$1" || exit 70; else echo absent; fi'''

_INSTALL = r'''conf=$1 expect=$2 mode=$3
command -v sanoid >/dev/null 2>&1 || exit 69
tmp=$(mktemp -d /tmp/dapx-sanoid.XXXXXX) || exit 70
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/sanoid.conf" || exit 70
if ! sanoid --configdir="$tmp" --cache-dir="$tmp/cache" --run-dir="$tmp/run" --readonly \
     > "$tmp/out" 2>&1; then
  sed "s#$tmp/sanoid.conf#$conf#g" "$tmp/out" >&2; exit 65
fi
sed "s#$tmp/sanoid.conf#$conf#g" "$tmp/out"
[ "$mode" = check ] && exit 0
if [ -e "$conf" ]; then now=$(sha256sum < "$conf" | cut -d' ' -f1); else now=absent; fi
[ "$now" = "$expect" ] || exit 75
mkdir -p "$(dirname "$conf")" || exit 70
new="$conf.dapx-new.$$"
cp "$tmp/sanoid.conf" "$new" || exit 70
if [ -e "$conf" ]; then
  chmod --reference="$conf" "$new" && chown --reference="$conf" "$new" || exit 70
  cp -p "$conf" "$conf.dapx-previous" || exit 70
fi
mv -f "$new" "$conf" || exit 70'''


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dapx_task(name="read-sanoid-conf")
async def read_conf(node: "ProxmoxNode", path: str = CONF_PATH) -> tuple[str, str]:
    """(text, sha256) of ``path`` on ``node``; ("", "absent") when there is none. Bytes that
    are not UTF-8 survive the round trip (surrogateescape)."""
    result = await run(node, ["sh", "-c", _READ, "sh", path], timeout=60)
    out = result.stdout.strip()
    if out == ABSENT:
        return "", ABSENT
    data = base64.b64decode(out)
    return data.decode("utf-8", errors="surrogateescape"), digest(data)


@dapx_task(name="install-sanoid-conf", retries=0)
async def install_conf(node: "ProxmoxNode", text: str, expected: str, *, check_only: bool,
                       path: str = CONF_PATH) -> str:
    """Check ``text`` with sanoid on ``node`` and (unless ``check_only``) replace ``path``
    with it if the file still has sha256 ``expected``. Returns sanoid's output (warnings).

    Raises InputError when sanoid refuses the new file (its message), ConflictError when the
    file changed since it was read, PermanentError when sanoid is not installed.
    Not retried: a lost answer must be looked at, not repeated blindly.
    """
    data = text.encode("utf-8", errors="surrogateescape")
    result = await run(node, ["sh", "-c", _INSTALL, "sh", path, expected,
                              "check" if check_only else "install"],
                       input=data, check=False, timeout=300)
    status, err = result.exit_status, result.stderr.strip()
    if status == 0:
        return result.stdout.strip()
    if status == _REFUSED:
        last = err.splitlines()[-1] if err else "no message"
        raise InputError(f"sanoid on {node.name} refuses the new {path} ({last}); nothing "
                         "was written")
    if status == _CHANGED:
        raise ConflictError(f"{path} on {node.name} changed while the policy was being "
                            "prepared; nothing was written, run the policy again")
    if status == _MISSING:
        raise PermanentError(f"sanoid is not installed on {node.name}; run install-sanoid "
                             "first")
    raise CommandError(f"writing {path} on {node.name} failed (exit {status}): "
                       f"{err[-300:] or 'no message'}", exit_status=status)
