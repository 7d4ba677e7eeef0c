"""Durations and sizes as operators write them: ``250ms``, ``5s``, ``64KiB``, ``10MB``.

A unit is mandatory. A bare ``5`` is ambiguous (seconds? milliseconds? bytes? KiB?) and such a
misreading at the edge is costly (a 5 ms timeout, a 5-byte body cap), so it is refused instead
of guessed. The number is parsed as an exact fraction, so ``0.1s`` is the float nearest 0.1 and
``1.5KiB`` is exactly 1536.
"""

from __future__ import annotations

import re
from fractions import Fraction

DURATION_UNITS: dict[str, Fraction] = {
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
}

SIZE_UNITS: dict[str, int] = {
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    # Decimal (SI) units, as disks and network gear count. "kB" is the SI spelling of "KB".
    "KB": 1000,
    "kB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}

_NUMBER = r"(?P<number>[0-9]+(?:\.[0-9]+)?)"
_DURATION = re.compile(_NUMBER + r"(?P<unit>ms|s|m|h)")
_SIZE = re.compile(_NUMBER + r"(?P<unit>B|KiB|MiB|GiB|KB|kB|MB|GB)")
# Anything that reads as a plain number (signed, leading or trailing dot) is "missing a unit"
# rather than "malformed": that is the likelier mistake and the more useful message.
_BARE_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)")

DURATION_NEEDS_UNIT = "a duration needs a unit, e.g. '5s'"
SIZE_NEEDS_UNIT = "a size needs a unit, e.g. '64KiB'"


def parse_duration(text: str) -> float:
    """``"250ms"`` -> ``0.25`` seconds. Raises ValueError with an operator-facing message."""
    match = _DURATION.fullmatch(text)
    if match is None:
        if _BARE_NUMBER.fullmatch(text):
            raise ValueError(DURATION_NEEDS_UNIT)
        raise ValueError(f"expected a duration such as '250ms', '5s', '2m' or '1h', got {text!r}")
    try:
        return float(Fraction(match["number"]) * DURATION_UNITS[match["unit"]])
    except OverflowError:
        raise ValueError(f"duration {text!r} is too large") from None


def parse_size(text: str) -> int:
    """``"64KiB"`` -> ``65536`` bytes. Raises ValueError with an operator-facing message."""
    match = _SIZE.fullmatch(text)
    if match is None:
        if _BARE_NUMBER.fullmatch(text):
            raise ValueError(SIZE_NEEDS_UNIT)
        raise ValueError(f"expected a size such as '512B', '64KiB', '10MiB' or '1GB', got {text!r}")
    size = Fraction(match["number"]) * SIZE_UNITS[match["unit"]]
    # "1.5KiB" is a fine way to write 1536 bytes; "1.5B" names no real size.
    if size.denominator != 1:
        raise ValueError(f"size {text!r} is not a whole number of bytes")
    return int(size)
