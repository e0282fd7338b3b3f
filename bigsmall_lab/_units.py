"""Memory sizes: parse what a learner types ("15GB", "7.5 GiB", 1024) and format bytes for people.

Decimal units (KB, MB, GB, TB) are powers of 1000, binary units (KiB, MiB, GiB, TiB) powers of 1024,
as in accelerate's ``convert_file_size_to_int``: a "16 GB" GPU card has 16e9 bytes, about 14.9 GiB.

>>> parse_size("15GB"), parse_size("1 GiB")
(15000000000, 1073741824)
>>> format_bytes(16_060_522_496)
'16.06 GB'
"""

from __future__ import annotations

import math
import numbers
import re

from ._errors import LabError

__all__ = ["GB", "GiB", "MB", "MiB", "format_bytes", "parse_size"]

MiB = 1024**2
GiB = 1024**3
MB = 1000**2
GB = 1000**3

_UNITS = {
    "": 1, "B": 1,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
    "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(size: int | float | str, *, argument: str = "size") -> int:
    """Bytes in ``size``: an integer number of bytes or a string such as "15GB", "200MiB", "1.5 GiB".

    Bad input raises :class:`~bigsmall_lab._errors.LabError` naming ``argument``.
    """
    allowed = ("write a number of bytes or a number and a unit from B, KB, MB, GB, TB (powers of 1000) "
               "or KiB, MiB, GiB, TiB (powers of 1024), e.g. '15GB'")
    if isinstance(size, bool):
        raise LabError.bad(argument, size, allowed, verb="is not a memory size")
    if isinstance(size, numbers.Real):
        if not math.isfinite(size) or size < 0:
            raise LabError.bad(argument, size, "use a finite number of bytes >= 0 or a string like '15GB'",
                               verb="is not a memory size")
        return int(size)
    if not isinstance(size, str):
        raise LabError.bad(argument, size, allowed, verb="is not a memory size")
    match = _SIZE.match(size) if len(size) < 100 else None
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise LabError.bad(argument, size, allowed, verb="is not a memory size")
    return int(float(match.group(1)) * _UNITS[unit])


def format_bytes(n_bytes: float, unit: str = "GB", digits: int = 2) -> str:
    """``n_bytes`` in ``unit`` (GB, GiB, MB, MiB, ...) with ``digits`` decimals: 16060522496 -> '16.06 GB'."""
    factor = _UNITS.get(unit.upper()) if isinstance(unit, str) else None
    if factor is None and not (isinstance(unit, str) and unit.upper() in ("", "B")):
        raise LabError.bad("unit", unit, "use one of: " + ", ".join(u for u in _UNITS if u), verb="is not a unit")
    if factor is None or unit.upper() in ("", "B"):
        return f"{int(n_bytes):,} B"
    return f"{n_bytes / factor:,.{digits}f} {unit}"
