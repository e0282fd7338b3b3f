"""What a number becomes in each storage format: its bits, its stored value, its error.

Every answer here comes from torch itself: a value is converted with
``torch.tensor([value], dtype=torch.float64).to(dtype)`` and its bits are read back from the
tensor's memory with ``.view(...)``; no rounding rule is re-implemented. The widget
:class:`bigsmall_lab.views.BitLayout` and the chart :func:`bigsmall_lab.views.precision_chart` only
draw what these functions return.

The lesson's headline numbers, in one table (fields are sign/exponent/mantissa bits):

=============  =======  ============  ============  ================
format         fields   70000 stored  1 + 2**-8     largest finite
=============  =======  ============  ============  ================
float32        1/8/23   70000.0       1.00390625    3.4e38
float16        1/5/10   inf           1.00390625    65504
bfloat16       1/8/7    70144.0       1.0           3.39e38
float8_e4m3fn  1/4/3    448.0         1.0           448
float8_e5m2    1/5/2    inf           1.0           57344
=============  =======  ============  ============  ================

>>> decompose(70000, "float16").kind
'inf'
>>> decompose(70000, "bf16").value
70144.0
>>> decompose(1 + 2**-8, "bfloat16").value
1.0

Why one file of ~670 lines (the lab's rule is 600): it is pure, and lesson 03's one subject: a format's
fields, a value's bits, the spacing and rounding of a format, and the text a learner types and reads
(``parse_value``, ``value_text``, ``range_note``: the widget and the exercises share them, so they
live with the maths they describe rather than in a view).
"""

from __future__ import annotations

import ast
import math
import numbers
import operator
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from collections.abc import Iterable, Sequence
from typing import Literal

import torch

from bigsmall_lab._dtypes import DTYPES, dtype_name
from bigsmall_lab._errors import LabError, shown

__all__ = [
    "FORMATS",
    "FloatBits",
    "FormatInfo",
    "Kind",
    "Neighbours",
    "Spacing",
    "compose",
    "decompose",
    "format_info",
    "from_bits",
    "neighbours",
    "parse_value",
    "range_note",
    "representable",
    "rounding_stats",
    "RoundingStats",
    "spacing",
    "value_text",
]

#: The formats torch can hold in a tensor, so the ones whose bits this module can show
#: (the packed 4-bit formats have no torch dtype).
FORMATS: tuple[str, ...] = tuple(name for name, info in DTYPES.items() if info.torch_dtype is not None)

Kind = Literal["normal", "subnormal", "zero", "inf", "nan", "integer"]

# Reading raw bits needs an integer dtype of the same width as the format.
_RAW_VIEW = {32: torch.int32, 16: torch.int16, 8: torch.uint8}


@dataclass(frozen=True)
class FormatInfo:
    """The layout and limits of one storage format, read from ``torch.finfo`` / ``torch.iinfo``.

    ``bits = sign_bits + exponent_bits + mantissa_bits``. For the integer formats there is no
    exponent (``exponent_bits == 0``), ``mantissa_bits`` counts the remaining value bits and the
    float-only quantities (``bias``, ``smallest_normal``, ``smallest_subnormal``, ``eps``) are None.

    >>> info = format_info("float8_e4m3fn")
    >>> (info.sign_bits, info.exponent_bits, info.mantissa_bits, info.bias, info.max, info.has_inf)
    (1, 4, 3, 7, 448.0, False)
    >>> format_info("int8").min, format_info("int8").max
    (-128.0, 127.0)
    """

    dtype: str
    bits: int
    sign_bits: int
    exponent_bits: int
    mantissa_bits: int
    bias: int | None
    max: float
    min: float
    smallest_normal: float | None
    smallest_subnormal: float | None
    eps: float | None
    has_inf: bool
    has_nan: bool
    is_float: bool


@dataclass(frozen=True)
class FloatBits:
    """One value as a format stores it.

    ``bits`` is the stored pattern, most significant bit first, ``format_info(dtype).bits`` long.
    ``sign``, ``exponent`` and ``mantissa`` are the raw field integers read from those bits (for a
    normal float, value = (-1)**sign * 2**(exponent - bias) * (1 + mantissa / 2**mantissa_bits)).
    For int8 ``sign`` is the two's-complement top bit, worth -128, and ``mantissa`` the low 7
    bits, so -1 is sign 1, mantissa 127 (-128 + 127); uint8 has no sign bit.

    ``value`` is what the format holds (may be inf or nan); ``error`` is ``value - given``, and 0.0
    when the format holds exactly what was given (inf for inf, nan for nan).
    """

    dtype: str
    given: float
    bits: str
    sign: int
    exponent: int
    mantissa: int
    value: float
    error: float
    kind: Kind


@dataclass(frozen=True)
class Spacing:
    """Gap from each magnitude's stored value to the next representable value, in one format.

    ``gaps[i]`` belongs to ``magnitudes[i]``; it is nan where the magnitude is larger than
    ``max_finite`` (the format cannot hold it) or is nan. ``gap_at_max`` is the gap just below the
    largest finite value (nothing finite lies above it).
    """

    dtype: str
    magnitudes: tuple[float, ...]
    gaps: tuple[float, ...]
    max_finite: float
    gap_at_max: float


def _format(dtype: str | torch.dtype, argument: str = "dtype") -> str:
    return dtype_name(dtype, allowed=FORMATS, argument=argument)


@lru_cache(maxsize=None)
def _info(name: str) -> FormatInfo:
    td = DTYPES[name].torch_dtype
    special = torch.tensor([math.inf, math.nan], dtype=torch.float64).to(td).to(torch.float64)
    if td.is_floating_point:
        fi = torch.finfo(td)
        # eps = 2**-mantissa_bits and smallest normal = 2**(1 - bias) in every IEEE-style format,
        # so the layout follows from torch's numbers instead of a hand-written table.
        mantissa_bits = round(-math.log2(fi.eps))
        return FormatInfo(
            dtype=name, bits=fi.bits, sign_bits=1, exponent_bits=fi.bits - 1 - mantissa_bits,
            mantissa_bits=mantissa_bits, bias=round(1 - math.log2(fi.tiny)), max=fi.max, min=fi.min,
            smallest_normal=fi.tiny, smallest_subnormal=fi.tiny * fi.eps, eps=fi.eps,
            # float8_e4m3fn ("fn": finite and nan) spends its top exponent on numbers: no inf.
            has_inf=bool(torch.isinf(special[0])), has_nan=bool(torch.isnan(special[1])), is_float=True,
        )
    ii = torch.iinfo(td)
    sign_bits = 1 if ii.min < 0 else 0
    return FormatInfo(
        dtype=name, bits=ii.bits, sign_bits=sign_bits, exponent_bits=0, mantissa_bits=ii.bits - sign_bits,
        bias=None, max=float(ii.max), min=float(ii.min), smallest_normal=None, smallest_subnormal=None,
        eps=None, has_inf=False, has_nan=False, is_float=False,
    )


def format_info(dtype: str | torch.dtype) -> FormatInfo:
    """Field widths, bias and limits of ``dtype`` (a name, an alias such as ``"bf16"`` or a torch dtype).

    ===========  ====  ========  =====  ========  ===============
    format       bits  fields    bias   eps       largest finite
    ===========  ====  ========  =====  ========  ===============
    float32      32    1/8/23    127    1.2e-07   3.4e38
    float16      16    1/5/10    15     9.8e-04   65504
    bfloat16     16    1/8/7     127    7.8e-03   3.39e38
    e4m3fn       8     1/4/3     7      0.125     448
    e5m2         8     1/5/2     15     0.25      57344
    ===========  ====  ========  =====  ========  ===============

    >>> info = format_info("bf16")
    >>> (info.sign_bits, info.exponent_bits, info.mantissa_bits, info.bias, info.eps)
    (1, 8, 7, 127, 0.0078125)
    >>> format_info("float16").max, format_info("float16").smallest_subnormal
    (65504.0, 5.960464477539063e-08)
    """
    return _info(_format(dtype))


def _store(values: torch.Tensor, name: str) -> torch.Tensor:
    """float64 values -> tensor of format ``name``, converted by torch."""
    td = DTYPES[name].torch_dtype
    if td.is_floating_point:
        return values.to(td)
    # float -> int conversion of nan, inf or out-of-range values is undefined behaviour in C++:
    # torch on x86 CPUs wraps (70000 -> 112 in int8) or gives 0, and other devices differ. The lab
    # therefore stores integers the way quantizers do: round half to even, clamp, nan -> 0.
    info = _info(name)
    return torch.nan_to_num(values, nan=0.0).round().clamp(info.min, info.max).to(td)


def _patterns(stored: torch.Tensor, name: str) -> torch.Tensor:
    """Stored tensor -> its bit patterns as non-negative int64 (read from memory, not computed)."""
    bits = _info(name).bits
    return stored.view(_RAW_VIEW[bits]).to(torch.int64) & ((1 << bits) - 1)


def _values(patterns: torch.Tensor, name: str) -> torch.Tensor:
    """Non-negative int64 bit patterns -> the float64 values the format gives them."""
    bits = _info(name).bits
    raw = _RAW_VIEW[bits]
    if raw.is_signed:  # int16/int32 views need the top bit as a negative number
        patterns = torch.where(patterns >= 1 << (bits - 1), patterns - (1 << bits), patterns)
    return patterns.to(raw).view(DTYPES[name].torch_dtype).to(torch.float64)


def _kind(info: FormatInfo, exponent: int, mantissa: int, value: float) -> Kind:
    if not info.is_float:
        return "zero" if value == 0 else "integer"
    top = (1 << info.exponent_bits) - 1
    if exponent == 0:
        return "zero" if mantissa == 0 else "subnormal"
    if exponent == top:
        if info.has_inf:
            return "inf" if mantissa == 0 else "nan"
        if mantissa == (1 << info.mantissa_bits) - 1:  # the "fn" formats keep only S.1111.111 for nan
            return "nan"
    return "normal"


def _error(value: float, given: float) -> float:
    if value == given or (math.isnan(value) and math.isnan(given)):
        return 0.0
    return value - given


def _bits_of(pattern: int, value: float, name: str, given: float) -> FloatBits:
    info = _info(name)
    mantissa = pattern & ((1 << info.mantissa_bits) - 1)
    exponent = (pattern >> info.mantissa_bits) & ((1 << info.exponent_bits) - 1)
    sign = pattern >> (info.bits - 1) if info.sign_bits else 0
    return FloatBits(
        dtype=name, given=given, bits=format(pattern, f"0{info.bits}b"), sign=sign, exponent=exponent,
        mantissa=mantissa, value=value, error=_error(value, given), kind=_kind(info, exponent, mantissa, value),
    )


def _as_float(value: object, argument: str = "value") -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise LabError.bad(argument, value, "use a real number (int or float); parse text with parse_value(...) first",
                           verb="is not a real number")
    try:
        return float(value)
    except OverflowError:  # an int beyond float64, e.g. 10**400: every format sees an infinity
        return math.inf if value > 0 else -math.inf


def decompose(value: float, dtype: str | torch.dtype) -> FloatBits:
    """Store ``value`` in ``dtype`` and read back the bits, fields, stored value and error.

    Floats are rounded by torch (``torch.tensor([value], dtype=torch.float64).to(dtype)``), so
    what you see is what a model's weights get, including torch's quirks:

    - float16 and float8_e5m2 overflow to inf (70000 -> inf in float16);
    - float8_e4m3fn has no inf: torch saturates, so 500, 1e30 and even inf store as 448.0;
    - nan stays nan in every float format (bfloat16 drops the sign of a nan);
    - torch goes float64 -> float32 -> bfloat16/float16, rounding twice: 1 + 2**-8 + 2**-30 stores
      as 1.0 in bfloat16, where a single rounding would give 1.0078125.

    Integers (int8, uint8) are stored the way quantizers do it: round half to even, clamp to the
    format's range, nan -> 0 (so 2.5 -> 2, 300 -> 127, -inf -> -128 in int8). Plain
    ``tensor.to(torch.int8)`` instead truncates and, out of range, is undefined behaviour (this CPU
    wraps 300 to 44 and sends inf to 0). Nothing here raises for nan, inf or out-of-range values.

    >>> b = decompose(70000, "bfloat16")
    >>> b.bits, b.sign, b.exponent, b.mantissa, b.value, b.error, b.kind
    ('0100011110001001', 0, 143, 9, 70144.0, 144.0, 'normal')
    >>> decompose(70000, "float16").bits, decompose(70000, "float16").kind
    ('0111110000000000', 'inf')
    >>> decompose(1e-7, "float16").kind, decompose(-0.0, "float16").bits
    ('subnormal', '1000000000000000')
    >>> decompose(-1, "int8").bits, decompose(300, "int8").value
    ('11111111', 127.0)
    """
    name = _format(dtype)
    given = _as_float(value)
    stored = _store(torch.tensor([given], dtype=torch.float64), name)
    bits = _info(name).bits
    pattern = stored.view(_RAW_VIEW[bits]).item() & ((1 << bits) - 1)  # read from memory
    return _bits_of(pattern, float(stored.item()), name, given)


def _pattern(bits: str, name: str, argument: str = "bits") -> int:
    width = _info(name).bits
    if not isinstance(bits, str):
        raise LabError.bad(argument, bits, f"use a string of {width} characters '0' or '1'", verb="is not a string")
    digits = bits.replace(" ", "").replace("_", "")
    if len(digits) != width or set(digits) - {"0", "1"}:
        raise LabError.bad(argument, bits, f"{name} needs exactly {width} characters '0' or '1' (spaces and "
                           "underscores may separate fields)", verb=f"is not a {name} bit pattern")
    return int(digits, 2)


def from_bits(bits: str, dtype: str | torch.dtype) -> FloatBits:
    """The :class:`FloatBits` of a bit pattern, most significant bit first (``given`` is its value).

    Spaces and underscores may separate the fields; anything else raises ValueError.

    >>> b = from_bits("0 11110 1111111111", "float16")
    >>> b.value, b.kind, b.error
    (65504.0, 'normal', 0.0)
    >>> from_bits("0_1111_111", "e4m3").kind
    'nan'
    """
    name = _format(dtype)
    pattern = _pattern(bits, name)
    width = _info(name).bits
    raw = _RAW_VIEW[width]
    signed = pattern - (1 << width) if raw.is_signed and pattern >> (width - 1) else pattern
    value = float(torch.tensor([signed], dtype=raw).view(DTYPES[name].torch_dtype).item())
    return _bits_of(pattern, value, name, value)


def compose(bits: str, dtype: str | torch.dtype) -> float:
    """The value a bit pattern stands for in ``dtype``: the inverse of :func:`decompose`.

    Flip one bit of ``decompose(x, dtype).bits`` and compose it to see what that bit is worth.

    >>> compose("0011110000000000", "float16")
    1.0
    >>> compose("0011110000000001", "float16") - 1.0  # lowest mantissa bit: 2**-10
    0.0009765625
    >>> compose("1111 1111", "int8")
    -1.0
    >>> compose("0101", "float16")
    Traceback (most recent call last):
    ...
    bigsmall_lab._errors.LabError: bits '0101' is not a float16 bit pattern; float16 needs exactly 16 characters '0' or '1' (spaces and underscores may separate fields)
    """
    return from_bits(bits, dtype).value


def spacing(dtype: str | torch.dtype, magnitudes: Sequence[float]) -> Spacing:
    """For each magnitude, the gap from its stored value to the next larger representable value.

    The next value comes from adding 1 to the stored bit pattern (non-negative patterns are in
    value order), so the gap is the format's ULP there: it doubles at every power of two in a
    float format and is 1 everywhere in an integer format. Magnitudes use their absolute value.

    ==========  =========  ============  ============
    magnitude   float16    bfloat16      float32
    ==========  =========  ============  ============
    1           2**-10     2**-7         2**-23
    1000        0.5        4.0           6.1e-05
    70000       nan        512.0         0.0078125
    ==========  =========  ============  ============

    >>> s = spacing("bfloat16", [1.0, 1000.0, 70000.0])
    >>> s.gaps
    (0.0078125, 4.0, 512.0)
    >>> spacing("float16", [1.0, 70000.0]).gaps
    (0.0009765625, nan)
    >>> spacing("float16", []).max_finite, spacing("float16", []).gap_at_max
    (65504.0, 32.0)
    """
    name = _format(dtype)
    info = _info(name)
    if isinstance(magnitudes, (str, bytes)) or not isinstance(magnitudes, Iterable):
        raise LabError.bad("magnitudes", magnitudes, "use a list of numbers, e.g. [1.0, 1000.0]", verb="is not a list")
    given = torch.tensor([abs(_as_float(m, "each magnitude")) for m in magnitudes], dtype=torch.float64)
    top = int(_patterns(_store(torch.tensor([info.max], dtype=torch.float64), name), name)[0])
    patterns = _patterns(_store(given, name), name)
    here = _values(patterns, name)
    # Below the largest finite value the next pattern is the next value up; at the top there is
    # nothing finite above, so measure down to the previous value (same gap within that binade).
    at_top = patterns == top
    step = torch.where(at_top, patterns - 1, patterns + 1)
    gaps = (_values(step, name) - here).abs()
    gaps = torch.where((given > info.max) | given.isnan(), math.nan, gaps)
    gap_at_max = float(_values(torch.tensor([top], dtype=torch.int64), name)[0]
                       - _values(torch.tensor([top - 1], dtype=torch.int64), name)[0])
    return Spacing(dtype=name, magnitudes=tuple(given.tolist()), gaps=tuple(gaps.tolist()),
                   max_finite=info.max, gap_at_max=gap_at_max)


def representable(dtype: str | torch.dtype, low: float, high: float) -> tuple[float, ...]:
    """Every finite value of an 8- or 16-bit format between ``low`` and ``high``, ascending.

    Read by enumerating all bit patterns through torch (256 or 65,536 of them).

    >>> representable("float8_e4m3fn", 0.25, 0.5)
    (0.25, 0.28125, 0.3125, 0.34375, 0.375, 0.40625, 0.4375, 0.46875, 0.5)
    """
    name = _format(dtype)
    low, high = _as_float(low, "low"), _as_float(high, "high")
    bits = _info(name).bits
    if bits > 16:
        raise LabError(f"dtype {name!r} has 2**{bits} values: too many to list; use an 8- or 16-bit format")
    values = _values(torch.arange(1 << bits, dtype=torch.int64), name)
    values = values[torch.isfinite(values) & (values >= low) & (values <= high)]
    return tuple(sorted(set(values.tolist())))


@dataclass(frozen=True)
class RoundingStats:
    """What storing a tensor in ``dtype`` does to its values (compared in float64)."""

    dtype: str
    n_values: int
    distinct_stored: int  # how many different values remain
    mean_abs_error: float
    max_abs_error: float
    mean_relative_error: float  # over the non-zero inputs
    flushed_to_zero: float  # fraction of non-zero inputs that became 0
    non_finite: float  # fraction that became inf or nan
    changed: float  # fraction whose value changed at all
    rmse: float = math.nan  # root-mean-square error over the finite stored values
    scale: float = 1.0  # the per-tensor scale the values were divided by before storing (1.0: none)
    output_relative_error: float | None = None  # ||x W'^T - x W^T|| / ||x W^T||, when inputs were given


def rounding_stats(values: torch.Tensor, dtype: str | torch.dtype, scaled: bool = False,
                   inputs: torch.Tensor | None = None) -> RoundingStats:
    """Store ``values`` in ``dtype`` (torch's conversion) and measure the error per element.

    The mean *relative* error weighs every value alike, so a tensor's many tiny values (which an
    unscaled fp8 format keeps only as a few subnormal steps) dominate it; the ``rmse`` weighs each
    value by its error, so the large values count most, as they do in a matmul. Two options show
    what a layer really gets:

    - ``scaled``: a per-tensor scale s = max|values| / the format's largest value; the values are
      stored as values / s and read back x s (how fp8 and int8 weights are kept in practice). The
      largest value lands on the format's largest, the small ones among its normal values.
    - ``inputs``: a batch x (tokens, in_features) that the weight matrix ``values`` (out_features,
      in_features) multiplies; ``output_relative_error`` is ||x W'^T - x W^T|| / ||x W^T|| for the
      stored W', the error the layer passes on.

    >>> rounding_stats(torch.tensor([1.0, 1 + 2**-8, 70000.0]), "float16").non_finite
    0.3333333333333333
    >>> w = torch.tensor([[0.01, -0.02], [0.5, 0.25]])
    >>> rounding_stats(w, "int8").flushed_to_zero, rounding_stats(w, "int8", scaled=True).flushed_to_zero
    (1.0, 0.0)
    >>> rounding_stats(w, "int8", scaled=True).scale   # 0.5 / 127
    0.003937007874015748
    """
    name = _format(dtype)
    if not isinstance(values, torch.Tensor):
        raise LabError.bad("values", values, "pass a torch.Tensor (e.g. a layer's weight)", verb="is not a tensor")
    if not isinstance(scaled, bool):
        raise LabError.bad("scaled", scaled, "use True (a per-tensor scale) or False", verb="is not a bool")
    given = values.detach().reshape(-1).to(torch.float64).cpu()
    absmax = float(given[torch.isfinite(given)].abs().max()) if torch.isfinite(given).any() else 0.0
    scale = absmax / _info(name).max if scaled and absmax > 0 else 1.0
    stored = _store(given / scale, name).to(torch.float64) * scale
    finite = torch.isfinite(stored)
    error = (stored - given).abs()
    nonzero = given != 0
    relative = error[nonzero & finite] / given[nonzero & finite].abs()
    n = max(given.numel(), 1)
    return RoundingStats(
        dtype=name, n_values=given.numel(), distinct_stored=int(torch.unique(stored[finite]).numel()),
        mean_abs_error=float(error[finite].mean()) if finite.any() else math.nan,
        max_abs_error=float(error[finite].max()) if finite.any() else math.nan,
        mean_relative_error=float(relative.mean()) if relative.numel() else 0.0,
        flushed_to_zero=float(((stored == 0) & nonzero).sum()) / max(int(nonzero.sum()), 1),
        non_finite=float((~finite).sum()) / n,
        changed=float((stored != given).sum()) / n,
        rmse=float(error[finite].pow(2).mean().sqrt()) if finite.any() else math.nan,
        scale=scale,
        output_relative_error=None if inputs is None else _output_error(values, stored, inputs),
    )


def _output_error(values: torch.Tensor, stored: torch.Tensor, inputs: torch.Tensor) -> float:
    """||x W'^T - x W^T|| / ||x W^T|| in float64, W = ``values`` (out, in), W' the ``stored`` copy."""
    if not isinstance(inputs, torch.Tensor):
        raise LabError.bad("inputs", inputs, "pass a torch.Tensor of shape (tokens, in_features)", verb="is not a tensor")
    if values.dim() != 2 or inputs.shape[-1] != values.shape[1]:
        raise LabError(f"inputs of shape {tuple(inputs.shape)} cannot multiply values of shape {tuple(values.shape)}; "
                       "pass a weight matrix (out_features, in_features) and inputs (..., in_features)")
    x = inputs.detach().reshape(-1, values.shape[1]).to(torch.float64).cpu()
    reference = x @ values.detach().to(torch.float64).cpu().T
    approx = x @ stored.reshape(values.shape).T
    if not torch.isfinite(approx).all():  # an inf weight makes inf or nan outputs (inf x 0 = nan)
        return math.inf
    norm = float(reference.norm())
    return float((approx - reference).norm()) / norm if norm else math.nan


@dataclass(frozen=True)
class Neighbours:
    """What a format stores for a value and the representable values on either side (float.exposed's view).

    ``below`` / ``above``: the next representable values under and over ``stored`` (-inf and inf at
    the ends of a format that has them; nan where nothing lies beyond, as past float8_e4m3fn's 448
    or past inf). ``gap``: the step from ``stored`` to the next larger magnitude, as :func:`spacing`
    measures it (nan for inf and nan). ``exact``: ``stored`` written out in decimal, every digit.
    """

    dtype: str
    given: float
    stored: float
    below: float
    above: float
    gap: float
    exact: str


@lru_cache(maxsize=None)
def _ladder(name: str) -> torch.Tensor:
    """Every finite value of an 8- or 16-bit format, ascending, -0 merged into 0."""
    values = _values(torch.arange(1 << _info(name).bits, dtype=torch.int64), name)
    return torch.unique(values[torch.isfinite(values)])  # sorted


def _step(stored: float, name: str, up: bool) -> float:
    info = _info(name)
    if info.bits > 16:  # float32: torch's nextafter in the format itself
        x = torch.tensor([stored], dtype=DTYPES[name].torch_dtype)
        return float(torch.nextafter(x, torch.full_like(x, math.inf if up else -math.inf)).item())
    ladder = _ladder(name)
    i = int(torch.searchsorted(ladder, torch.tensor([stored], dtype=torch.float64))[0])  # ladder[i] == stored
    j = i + 1 if up else i - 1
    if 0 <= j < ladder.numel():
        return float(ladder[j])
    return (math.inf if up else -math.inf) if info.has_inf else math.nan


def neighbours(value: float, dtype: str | torch.dtype) -> Neighbours:
    """The value ``dtype`` stores for ``value``, its representable neighbours, the gap there and the
    stored value's exact decimal: what float.exposed and float-toy show beside the bits.

    0.1 is not a float16 value: it lies between 0.0999755859375 (stored: the nearer one) and
    0.10003662109375, 2**-14 apart. In bfloat16, 256 sits between 255 and 258: the gap below a power
    of two is half the gap above it.

    >>> n = neighbours(0.1, "float16")
    >>> n.below, n.stored, n.above, n.gap
    (0.09991455078125, 0.0999755859375, 0.10003662109375, 6.103515625e-05)
    >>> n32 = neighbours(0.1, "float32")
    >>> n32.exact
    '0.100000001490116119384765625'
    >>> b = neighbours(256, "bfloat16")
    >>> b.below, b.stored, b.above, b.gap
    (255.0, 256.0, 258.0, 2.0)
    >>> neighbours(65504, "float16").above, neighbours(448, "e4m3").above
    (inf, nan)
    """
    name = _format(dtype)
    given = _as_float(value)
    stored = decompose(given, name).value
    if math.isnan(stored):
        return Neighbours(name, given, stored, math.nan, math.nan, math.nan, "nan")
    if math.isinf(stored):
        info = _info(name)
        below, above = (info.max, math.nan) if stored > 0 else (math.nan, info.min)
        return Neighbours(name, given, stored, below, above, math.nan, "inf" if stored > 0 else "-inf")
    return Neighbours(name, given, stored, _step(stored, name, up=False), _step(stored, name, up=True),
                      spacing(name, [stored]).gaps[0], format(Decimal(stored), "f"))


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_NAMES = {"inf": math.inf, "infinity": math.inf, "nan": math.nan, "pi": math.pi, "e": math.e}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return _as_float(node.value)
    if isinstance(node, ast.Name) and node.id.lower() in _NAMES:
        return _NAMES[node.id.lower()]
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        try:
            result = _BINARY[type(node.op)](left, right)
        except OverflowError:  # 2.0**2000: float64 itself overflows, which is what inf means
            odd = right.is_integer() and right % 2 == 1
            return -math.inf if left < 0 and odd else math.inf
        if isinstance(result, complex):  # (-8) ** (1/3)
            raise ValueError("a negative number to a fractional power is not a real number")
        return result
    raise ValueError("only numbers, inf, nan, pi, e and + - * / ** are allowed")


_MAX_TEXT = 200  # characters of arithmetic a learner types; longer text is a paste gone wrong


def parse_value(text: str) -> float:
    """The number a learner typed: a decimal, ``inf``/``nan``, or arithmetic with + - * / **.

    >>> parse_value("70000"), parse_value("1 + 2**-8"), parse_value("-0.0"), parse_value("-inf")
    (70000.0, 1.00390625, -0.0, -inf)
    >>> parse_value("7OOOO")
    Traceback (most recent call last):
    ...
    bigsmall_lab._errors.LabError: text '7OOOO' is not a number (it is neither a number nor arithmetic on numbers); type e.g. 70000, 1e-3, -0.0, inf, nan or 1 + 2**-8
    """
    if not isinstance(text, str):
        raise LabError.bad("text", text, "type the number as text, e.g. '70000' or '1 + 2**-8'", verb="is not text")
    hint = "type e.g. 70000, 1e-3, -0.0, inf, nan or 1 + 2**-8"
    if len(text) > _MAX_TEXT:
        raise LabError(f"text {shown(text)} is too long to be a number (over {_MAX_TEXT} characters); {hint}")
    try:
        return float(text)  # fast path; also takes "1e400" (inf) and "nan"
    except ValueError:
        pass
    try:
        return float(_evaluate(ast.parse(text.strip(), mode="eval").body))
    except SyntaxError:
        reason = "it is neither a number nor arithmetic on numbers"
    except ZeroDivisionError:
        reason = "it divides by zero; type inf or nan for those values"
    except (RecursionError, MemoryError):  # "-" * 150 + "1": nesting deeper than the parser allows
        reason = "it nests too deeply"
    except ValueError as exc:
        reason = str(exc)
    raise LabError(f"text {shown(text)} is not a number ({reason}); {hint}")


def value_text(x: float) -> str:
    """Text that :func:`parse_value` reads back as exactly ``x`` (integers without '.0').

    >>> value_text(70144.0), value_text(-0.0), value_text(0.1), value_text(float("inf"))
    ('70144', '-0', '0.1', 'inf')
    """
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    if math.isfinite(x) and x.is_integer() and abs(x) < 1e16:
        return str(int(x))
    return repr(x)  # '0.1', 'inf', 'nan', '1e+20': repr round-trips every float64


def range_note(b: FloatBits) -> str:
    """Why a format could not hold the given value's size at all, or '' when it could.

    The error alone hides why: float8_e4m3fn stores 70000 as 448 (-99.4%) yet its kind is "normal".

    >>> [range_note(decompose(70000, d)) for d in ("float16", "float8_e4m3fn", "bfloat16")]
    ['overflow to inf', 'saturated at the largest value', '']
    >>> range_note(decompose(-1e-8, "float16")), range_note(decompose(0.3, "int8"))
    ('underflow to -0', 'rounded to 0')
    """
    info = _info(b.dtype)
    if math.isnan(b.given):
        return "" if math.isnan(b.value) else f"{b.dtype} has no nan: stored as {value_text(b.value)}"
    if b.given > info.max or b.given < info.min:  # beyond the largest finite value (inf included)
        if math.isinf(b.value):
            return "" if b.value == b.given else f"overflow to {value_text(b.value)}"
        if info.has_inf:  # IEEE rounding: just past the largest value still rounds down to it
            return f"rounded to the {'largest' if b.given > 0 else 'most negative'} value"
        # no inf to go to: float8_e4m3fn and the integers clamp to their ends
        return f"saturated at the {'largest' if b.given > 0 else 'most negative'} value"
    if b.given != 0 and b.value == 0:
        return f"underflow to {value_text(b.value)}" if info.is_float else "rounded to 0"
    return ""
