"""Sizes and times as people read them, for artifacts, notifications and CLI tables alike."""

from __future__ import annotations

from datetime import datetime, timezone


def human_bytes(count: int) -> str:
    """``33554432`` -> ``32.0 MiB``; ``512`` -> ``512 B``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def key_values(values: dict, sep: str = ", ") -> str:
    """``{"memory": "1024", "cores": 2}`` -> ``memory=1024, cores=2`` (``-`` when empty)."""
    return sep.join(f"{k}={v}" for k, v in values.items()) or "-"


def utc_time(stamp: int) -> str:
    """Epoch seconds as ``2026-12-03 06:34:43Z`` (UTC); ``-`` for 0 (unknown)."""
    if not stamp:
        return "-"
    return datetime.fromtimestamp(stamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
