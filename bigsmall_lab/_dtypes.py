"""The one table of storage formats the lab knows, and the parsing of their names.

Every byte count in the lab (weights, KV cache, estimates, CLI) goes through
:func:`bits_per_element`, so a format's size is written down exactly once.

>>> bytes_per_element("bfloat16")
2.0
>>> bytes_per_element("nf4")
0.5

The table holds names, not torch dtypes: torch is imported only when a torch dtype is asked for
(:attr:`DtypeInfo.torch_dtype`, :func:`torch_dtype`), because the CLI plans presets without torch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ._errors import LabError, closest

if TYPE_CHECKING:
    import torch

__all__ = ["DTYPES", "DtypeInfo", "bits_per_element", "bytes_per_element", "dtype_name", "torch_dtype"]


@dataclass(frozen=True)
class DtypeInfo:
    """One storage format: its canonical name, width in bits, the name of its torch dtype (None for
    packed 4-bit) and whether it stores floating-point values."""

    name: str
    bits: int
    torch_name: str | None  # the attribute of ``torch``: torch.float32 is "float32"
    is_float: bool

    @property
    def torch_dtype(self) -> torch.dtype | None:
        """The torch dtype (None for packed 4-bit), imported at this call: the table itself needs no torch."""
        if self.torch_name is None:
            return None
        import torch

        return getattr(torch, self.torch_name)


DTYPES: dict[str, DtypeInfo] = {
    info.name: info
    for info in (
        DtypeInfo("float32", 32, "float32", True),
        DtypeInfo("float16", 16, "float16", True),
        DtypeInfo("bfloat16", 16, "bfloat16", True),
        DtypeInfo("float8_e4m3fn", 8, "float8_e4m3fn", True),
        DtypeInfo("float8_e5m2", 8, "float8_e5m2", True),
        DtypeInfo("int8", 8, "int8", False),
        DtypeInfo("uint8", 8, "uint8", False),
        # 4-bit formats have no torch dtype: bitsandbytes packs two values per uint8.
        DtypeInfo("int4", 4, None, False),
        DtypeInfo("nf4", 4, None, True),
        DtypeInfo("fp4", 4, None, True),
    )
}

# Names a learner meets in papers, posts and older code, mapped to the canonical name.
_ALIASES = {
    "fp32": "float32", "float": "float32", "f32": "float32",
    "fp16": "float16", "half": "float16", "f16": "float16",
    "bf16": "bfloat16",
    "fp8": "float8_e4m3fn", "fp8_e4m3": "float8_e4m3fn", "e4m3": "float8_e4m3fn",
    "float8_e4m3": "float8_e4m3fn",
    "fp8_e5m2": "float8_e5m2", "e5m2": "float8_e5m2",
}


def dtype_name(dtype: str | torch.dtype, *, allowed: tuple[str, ...] | None = None, argument: str = "dtype") -> str:
    """Canonical name of ``dtype`` (a torch dtype, a name or an alias such as ``"bf16"``).

    Raises :class:`~bigsmall_lab._errors.LabError` naming ``argument`` and the allowed names when
    the dtype is unknown (or known but not allowed here: ``build`` takes no int8).

    >>> import torch
    >>> dtype_name(torch.bfloat16), dtype_name("fp16")
    ('bfloat16', 'float16')
    """
    allowed = tuple(DTYPES) if allowed is None else allowed
    # Nothing is a torch.dtype unless torch has been imported, so a caller without torch never imports it here.
    if "torch" in sys.modules and isinstance(dtype, sys.modules["torch"].dtype):
        name = str(dtype).removeprefix("torch.")
    elif isinstance(dtype, str):
        key = dtype.strip().lower().removeprefix("torch.")
        name = _ALIASES.get(key, key)
    else:
        raise LabError.bad(argument, dtype, f"use one of: {', '.join(allowed)}", verb="is not a dtype")
    if name not in allowed:
        aliases = [alias for alias, canonical in _ALIASES.items() if canonical in allowed]
        verb = "is not allowed here" if name in DTYPES else "is not known" + closest(name, [*allowed, *aliases])
        raise LabError.bad(argument, dtype, f"use one of: {', '.join(allowed)}", verb=verb)
    return name


def bits_per_element(dtype: str | torch.dtype) -> int:
    """Width of one stored element in bits: float32 32, bfloat16 16, nf4 4."""
    return DTYPES[dtype_name(dtype)].bits


def bytes_per_element(dtype: str | torch.dtype) -> float:
    """Bytes per element (0.5 for the packed 4-bit formats)."""
    return bits_per_element(dtype) / 8


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype for a name (torch is imported here); ValueError for the packed 4-bit formats, which have none.

    >>> torch_dtype("bf16")
    torch.bfloat16
    """
    name = dtype_name(dtype)
    td = DTYPES[name].torch_dtype
    if td is None:
        torch_names = [n for n, i in DTYPES.items() if i.torch_name is not None]
        raise LabError(f"dtype {name!r} has no torch dtype (bitsandbytes packs it into uint8); "
                       f"use one of: {', '.join(torch_names)}")
    return td
