"""Directories the lab had to create on the host (mount points), so `down` removes them again.

Bind mounts inside a node need an existing directory at the target path, and the host's
root filesystem is shared by every namespace. We create missing ones and record them.
"""

from __future__ import annotations

import json
from pathlib import Path

from dapx.lab.common import lab_dir


def _record_file() -> Path:
    return lab_dir() / "host_paths.json"


def _load() -> list[str]:
    try:
        return json.loads(_record_file().read_text())
    except (OSError, ValueError):
        return []


def remember(path: Path) -> None:
    """Record ``path`` as created by the lab if it does not exist yet (call before mkdir)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(str(p))
        p = p.parent
    if missing:
        paths = _load()
        paths.extend(m for m in reversed(missing) if m not in paths)
        _record_file().parent.mkdir(parents=True, exist_ok=True)
        _record_file().write_text(json.dumps(paths))


def ensure_dir(path: Path, mode: int = 0o755) -> None:
    """Create directory ``path`` on the host (recorded) if missing."""
    if not path.exists():
        remember(path)
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)


def remove_created() -> list[str]:
    """rmdir every recorded directory, deepest first; returns those that could not go."""
    left = []
    for p in sorted(_load(), key=len, reverse=True):
        try:
            Path(p).rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            left.append(p)
    if left:
        _record_file().write_text(json.dumps(left))
    else:
        _record_file().unlink(missing_ok=True)
    return left


def recorded() -> list[str]:
    """Paths recorded as created by the lab."""
    return _load()
