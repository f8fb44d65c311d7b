"""Parameter checks with PVE's JSONSchema wording, for the parameters the simulator serves.

A spec is {name: Param}; check() returns the cleaned values or raises PVE's 400
"Parameter verification failed." with one message per bad field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .httpd import ApiError

_FORMATS = {
    "pve-configid": (re.compile(r"[a-zA-Z][a-zA-Z0-9_\-]*"), "invalid configuration ID '{v}'"),
    "pve-node": (re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?"), "value does not look like a valid node name"),
    "pve-storage-id": (re.compile(r"[a-z][a-z0-9\-_.]*[a-z0-9]", re.I), "storage ID '{v}' contains illegal characters"),
    "pve-vmid-list": (re.compile(r"\d+([,; ]\d+)*"), "value does not look like a valid VM ID list"),
}


@dataclass
class Param:
    """One parameter: type, optional flag, bounds, enum, PVE format name, max length."""

    type: str = "string"
    optional: bool = True
    minimum: int | None = None
    maximum: int | None = None
    enum: tuple[str, ...] | None = None
    format: str | None = None
    max_length: int | None = None


VMID = Param("integer", optional=False, minimum=100, maximum=999999999)
NODE = Param("string", optional=False, format="pve-node")
BOOL = Param("boolean")
INT = Param("integer")
STR = Param("string")


def _check_one(p: Param, value: Any) -> tuple[Any, str | None]:
    sval = str(value)
    if p.type == "integer":
        if isinstance(value, bool) or not re.fullmatch(r"[+-]?\d+", sval):
            return None, f"type check ('integer') failed - got '{sval}'"
        num = int(sval)
        if p.minimum is not None and num < p.minimum:
            return None, f"value must have a minimum value of {p.minimum}"
        if p.maximum is not None and num > p.maximum:
            return None, f"value must have a maximum value of {p.maximum}"
        return num, None
    if p.type == "boolean":
        low = sval.lower()
        if low in ("1", "true", "yes", "on"):
            return 1, None
        if low in ("0", "false", "no", "off"):
            return 0, None
        return None, f"type check ('boolean') failed - got '{sval}'"
    if p.enum is not None and sval not in p.enum:
        return None, f"value '{sval}' does not have a value in the enumeration '{', '.join(p.enum)}'"
    if p.max_length is not None and len(sval) > p.max_length:
        return None, f"value may only be {p.max_length} characters long"
    if p.format:
        rx, msg = _FORMATS[p.format]
        if not rx.fullmatch(sval):
            return None, "invalid format - " + msg.format(v=sval)
    return sval, None


def check(spec: dict[str, Param], params: dict[str, Any], extra_ok: bool = False,
          extra_pattern: re.Pattern[str] | None = None) -> dict[str, Any]:
    """Validated params (ints and booleans converted); raises ApiError 400 with per-field errors."""
    out: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, value in params.items():
        p = spec.get(name)
        if p is None:
            if extra_ok or (extra_pattern is not None and extra_pattern.fullmatch(name)):
                out[name] = value
            else:
                errors[name] = "property is not defined in schema and the schema does not allow additional properties"
            continue
        val, err = _check_one(p, value)
        if err:
            errors[name] = err
        else:
            out[name] = val
    for name, p in spec.items():
        if not p.optional and name not in params:
            errors[name] = "property is missing and it is not optional"
    if errors:
        raise ApiError(400, "Parameter verification failed.", errors)
    return out
