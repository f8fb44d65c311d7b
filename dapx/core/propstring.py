"""PVE property strings: ``virtio=BC:24:11:00:00:01,bridge=vmbr0,firewall=1``.

A property string is a comma list of ``key=value`` items; an item without ``=`` is the value
of the format's default key (the volume in ``local-zfs:vm-100-disk-0,size=32G``). Values may
be double-quoted to hold commas (PVE's parse_property_string). Items keep their order and
their original text, so an unchanged string serialises back byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dapx.errors import InputError


@dataclass
class PropItem:
    """One item: ``key`` None for a default-key item; ``raw`` is its text as written."""

    key: str | None
    value: str
    raw: str


def _split(text: str) -> list[str]:
    """Split at commas outside double quotes; raises InputError on an unclosed quote."""
    items, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            items.append("".join(current))
            current = []
            continue
        current.append(char)
    if quoted:
        raise InputError(f"property string {text!r} has an unclosed quote")
    items.append("".join(current))
    return items


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        return inner.replace('\\"', '"').replace("\\\\", "\\")
    return value


@dataclass
class PropertyString:
    """An ordered, editable property string."""

    items: list[PropItem] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> "PropertyString":
        """Parse ``text``. Out: a PropertyString. Raises InputError on an unclosed quote."""
        items = []
        for raw in _split(text) if text else []:
            key, sep, value = raw.partition("=")
            if sep:
                items.append(PropItem(key, _unquote(value), raw))
            else:
                items.append(PropItem(None, _unquote(raw), raw))
        return cls(items)

    def get(self, key: str | None) -> str | None:
        """The value of ``key`` (None: the default-key item), or None when absent."""
        return next((i.value for i in self.items if i.key == key), None)

    @property
    def default(self) -> str | None:
        """The default-key item's value (the volume of a disk), or None."""
        return self.get(None)

    def set(self, key: str | None, value: str) -> None:
        """Set ``key`` to ``value`` in place (appended when absent).

        The value must not need quoting (no comma, quote, '=' or newline). Raises InputError.
        """
        if any(c in value for c in ',"=\n\r'):
            raise InputError(f"property value {value!r} would need quoting; refusing it")
        raw = value if key is None else f"{key}={value}"
        for item in self.items:
            if item.key == key:
                item.value, item.raw = value, raw
                return
        self.items.append(PropItem(key, value, raw))

    def keys(self) -> list[str | None]:
        """Item keys in order (None for the default-key item)."""
        return [i.key for i in self.items]

    def options(self) -> dict[str, str]:
        """The ``key=value`` items as a dict (the default-key item left out)."""
        return {i.key: i.value for i in self.items if i.key is not None}

    def __str__(self) -> str:
        return ",".join(i.raw for i in self.items)
