"""Quantization maths: floats onto a few integers with a scale (and a zero-point), and back.

Linear (affine) quantization maps a float range onto an integer range. With 4 bits the integers
are -8 .. 7; take the floats -3.5 .. 10.2:

- **scale** = float range / integer steps = (10.2 - (-3.5)) / (7 - (-8)) = 13.7 / 15 = 0.9133:
  one integer step is worth 0.9133 in floats;
- **zero-point** = the integer that float 0.0 becomes = -8 - round(-3.5 / 0.9133) = -8 + 4 = -4
  (0.0 in float is not integer 0: the range is not centred);
- quantize: q = clamp(round(x / scale) + zero_point, -8, 7), so -3.5 -> -8, 0.0 -> -4, 10.2 -> 7;
- dequantize: x' = (q - zero_point) x scale, so 10.2 comes back as 11 x 0.9133 = 10.047: an error of
  0.153, less than half a step (0.457). Nothing better is possible with 16 levels: it is lossy.

>>> q = quantize(torch.tensor([-3.5, 0.0, 10.2]), bits=4, scheme="asymmetric")
>>> round(q.scales.item(), 4), q.zero_points.item(), q.q.tolist()
(0.9133, -4, [-8, -4, 7])
>>> [round(v, 3) for v in q.dequantize().tolist()]
[-3.653, 0.0, 10.047]

**Symmetric** (absmax) quantization fixes the zero-point at 0 and uses -127 .. 127 for int8:
scale = max|x| / 127. It wastes levels when the range is lopsided, but the matrix multiply needs no
zero-point correction, which is why LLM.int8() (bitsandbytes' ``load_in_8bit``) uses it.

**Granularity** says how many values share one scale: the whole ``tensor``, each row (``channel``,
one output feature of a weight matrix), or each ``group`` of ``group_size`` consecutive values of a
row. One outlier stretches the range of every value that shares its scale; smaller groups confine
the damage and cost one more scale per group.

**Code books.** bitsandbytes' 4-bit formats keep absmax scaling per block of 64 weights but place
their 16 levels unevenly: NF4 at quantiles of a normal distribution (weights are roughly normal,
so each level is used about equally often), FP4 at the values of a tiny float (sign, 2 exponent
bits, 1 mantissa bit). :func:`nf4_code` and :func:`fp4_code` build them; the tests check them and
:func:`quantize` against ``bitsandbytes.functional.quantize_4bit``, and :func:`int8_vectorwise`
against ``int8_vectorwise_quant``.

**GGUF Q4_1** (the format the lab's real model SmolLM2 was shipped in) is the ``"min"`` scheme
with 4 bits and groups of 32: each value is scale x q + min with q in 0 .. 15.
:func:`recover_q4_1` finds those blocks again in the bf16 weights.

Everything here is pure: tensors in, tensors and dataclasses out, on whatever device the input is.

Why one file of ~860 lines (the lab's rule is 600): it is one vocabulary, read top to bottom by lesson
04a. ``QuantSpec`` and the code books are used by every later section (quantize, the errors, LLM.int8's
vector-wise int8, Q4_1's blocks, the mapping report the widget draws), and each section is a few
small pure functions with their worked numbers; split, each file would import the others and a
learner would chase one idea across four files. The formats' names live in ``bnb_formats``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Any

import torch

from ._dtypes import bytes_per_element
from ._errors import LabError, enum_value, whole_number
from .bnb_formats import Quantization

__all__ = [
    "Granularity", "Group", "Histogram", "Int8Vectorwise", "MappingReport", "Q41Recovery", "QuantError", "QuantSpec",
    "Quantized", "Scheme", "SchemeResult", "add_outlier", "codebook", "error_metrics", "evaluate", "fp4_code",
    "histogram", "int8_matmul", "int8_vectorwise", "mapping_report", "nf4_code", "outlier_channels", "quantize",
    "recover_q4_1", "weight_matrices",
]

MIN_BITS, MAX_BITS = 2, 8
# bytes of one scale, zero-point or minimum: bitsandbytes stores absmax and row scales in float32
_META_BYTES = 4
# NF4's outermost quantile: the level 1.0 sits at the normal quantile of this probability
# (bitsandbytes' create_normal_map default, ~1.85 standard deviations, chosen empirically in QLoRA)
_NF4_OFFSET = 0.9677083


class Scheme(str, Enum):
    """How floats are mapped onto integer codes."""

    ASYMMETRIC = "asymmetric"  # scale + integer zero-point; the range [min, max] (0 included) fills all 2**bits codes
    SYMMETRIC = "symmetric"  # absmax: [-max|x|, max|x|] onto -(2**(bits-1) - 1) .. 2**(bits-1) - 1, zero-point 0
    MIN = "min"  # scale x q + min, q in 0 .. 2**bits - 1 (GGUF Q4_1 / Q8_1: the minimum is stored as a float)
    # bitsandbytes' two code books, named as its formats are named (one home: bnb_formats.Quantization)
    NF4 = Quantization.NF4.value  # absmax + 16 levels at normal quantiles (QLoRA's NormalFloat4, bitsandbytes nf4)
    FP4 = Quantization.FP4.value  # absmax + 16 levels of a 4-bit float: 1 sign, 2 exponent, 1 mantissa bit (fp4)

    @property
    def is_codebook(self) -> bool:
        return self in (Scheme.NF4, Scheme.FP4)

    @property
    def label(self) -> str:
        return _SCHEME_LABELS[self]


_SCHEME_LABELS = {
    Scheme.ASYMMETRIC: "asymmetric (scale + zero-point)",
    Scheme.SYMMETRIC: "symmetric (absmax)",
    Scheme.MIN: "scale + min (GGUF Q4_1)",
    Scheme.NF4: "NF4 code book (absmax)",
    Scheme.FP4: "FP4 code book (absmax)",
}


class Granularity(str, Enum):
    """How many values share one scale."""

    TENSOR = "tensor"  # one scale for everything
    CHANNEL = "channel"  # one per row (an output feature of a weight matrix, a token of activations)
    GROUP = "group"  # one per group_size consecutive values of a row (bitsandbytes' 4-bit blocks: 64)


@dataclass(frozen=True)
class QuantSpec:
    """The settings of one quantization; strings are accepted and checked.

    >>> QuantSpec(bits=4, scheme="nf4", granularity="group", group_size=64).label
    'NF4 code book (absmax), 4 bits, groups of 64'
    """

    bits: int = 8
    scheme: Scheme | str = Scheme.ASYMMETRIC
    granularity: Granularity | str = Granularity.TENSOR
    group_size: int = 64

    def __post_init__(self) -> None:
        scheme = enum_value(Scheme, self.scheme, "scheme")
        granularity = enum_value(Granularity, self.granularity, "granularity")
        bits = self.bits if isinstance(self.bits, int) and not isinstance(self.bits, bool) else whole_number(
            self.bits, "bits", minimum=MIN_BITS)
        if not MIN_BITS <= bits <= MAX_BITS:
            raise LabError.bad("bits", self.bits, f"use a whole number from {MIN_BITS} to {MAX_BITS}",
                               verb="is out of range")
        if scheme.is_codebook and bits != 4:
            raise LabError.bad("bits", self.bits, f"{scheme.value} is a code book of 16 levels: use bits=4",
                               verb=f"does not fit scheme {scheme.value!r}")
        group_size = whole_number(self.group_size, "group_size", minimum=1)
        object.__setattr__(self, "scheme", scheme)
        object.__setattr__(self, "granularity", granularity)
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "group_size", group_size)

    @property
    def qmin(self) -> int:
        """Smallest integer code: -8 for asymmetric int4, -7 for symmetric int4 (kept symmetric), 0 else."""
        if self.scheme is Scheme.ASYMMETRIC:
            return -(2 ** (self.bits - 1))
        if self.scheme is Scheme.SYMMETRIC:
            return -(2 ** (self.bits - 1) - 1)
        return 0

    @property
    def qmax(self) -> int:
        """Largest integer code: 7 for int4 (asymmetric and symmetric), 15 for ``min`` and the code books."""
        if self.scheme in (Scheme.ASYMMETRIC, Scheme.SYMMETRIC):
            return 2 ** (self.bits - 1) - 1
        return 2 ** self.bits - 1

    def groups(self, shape: tuple[int, ...] | torch.Size) -> int:
        """How many scales a tensor of ``shape`` needs: 1 per tensor, one per row, or one per group."""
        numel = math.prod(shape)
        rows = shape[0] if len(shape) >= 2 else 1
        if self.granularity is Granularity.TENSOR:
            return 1
        if self.granularity is Granularity.CHANNEL:
            return rows
        return numel // self.group_size

    def storage_bytes(self, shape: tuple[int, ...] | torch.Size) -> int:
        """Bytes a tensor of ``shape`` takes: ``bits`` per value (packed) + 4 bytes (float32) per
        scale and per zero-point or minimum, + 64 bytes for a 16-entry float32 code book.

        An nf4 weight of 1536 x 576 in blocks of 64: 442,368 + 13,824 x 4 + 64 bytes, 4.5 bits per weight:

        >>> QuantSpec(4, "nf4", "group", 64).storage_bytes((1536, 576))
        497728
        """
        groups = self.groups(shape)
        meta = groups * _META_BYTES
        if self.scheme in (Scheme.ASYMMETRIC, Scheme.MIN):
            meta += groups * _META_BYTES
        if self.scheme.is_codebook:
            meta += 16 * _META_BYTES
        return math.ceil(math.prod(shape) * self.bits / 8) + meta

    @property
    def label(self) -> str:
        where = {Granularity.TENSOR: "per tensor", Granularity.CHANNEL: "per row (channel)",
                 Granularity.GROUP: f"groups of {self.group_size}"}[self.granularity]
        return f"{self.scheme.label}, {self.bits} bits, {where}"


# --- code books ---------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def _nf4() -> torch.Tensor:
    # 8 quantiles of the standard normal for the positive side and 7 for the negative side
    # (one extra positive level: the code is asymmetric and has an exact 0), scaled to [-1, 1].
    positive = torch.special.ndtri(torch.linspace(_NF4_OFFSET, 0.5, 9, dtype=torch.float32)[:-1].double())
    negative = -torch.special.ndtri(torch.linspace(_NF4_OFFSET, 0.5, 8, dtype=torch.float32)[:-1].double())
    levels = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
    return (levels / levels.max()).float()


def nf4_code() -> torch.Tensor:
    """The 16 NF4 levels in [-1, 1], ascending (index = the 4-bit code bitsandbytes stores).

    Each level sits at a quantile of the standard normal distribution, so weights that are roughly
    normal use the 16 codes about equally often; levels crowd near 0, where most weights are.

    >>> [round(v, 4) for v in nf4_code()[6:10].tolist()]
    [-0.0911, 0.0, 0.0796, 0.1609]
    """
    return _nf4().clone()


@lru_cache(maxsize=None)
def _fp4() -> torch.Tensor:
    # bitsandbytes' 4-bit float: the 3 bits after the sign are 2 exponent bits e and 1 mantissa bit m.
    # e = 0 is subnormal (m x 2**-4); e = 1, 2, 3 give (1 + m/2) x 2**(4 - e): bitsandbytes counts
    # the exponent field downwards. Listed in bit-pattern order (the code's index), then scaled to
    # [-1, 1] by the largest value, 12.
    magnitudes = []
    for pattern in range(8):
        e, m = pattern >> 1, pattern & 1
        magnitudes.append(m * 2.0**-4 if e == 0 else (1 + m / 2) * 2.0 ** (4 - e))
    levels = torch.tensor(magnitudes + [-v for v in magnitudes], dtype=torch.float32)
    return levels / levels.abs().max()


def fp4_code() -> torch.Tensor:
    """The 16 FP4 levels in [-1, 1], in bit-pattern order: index = sign bit, 2 exponent bits, 1 mantissa bit.

    >>> [round(v, 4) for v in fp4_code()[:8].tolist()]   # 0, 1/192, 8/12, 12/12, 4/12, 6/12, 2/12, 3/12
    [0.0, 0.0052, 0.6667, 1.0, 0.3333, 0.5, 0.1667, 0.25]
    """
    return _fp4().clone()


def codebook(scheme: Scheme | str) -> torch.Tensor:
    """The 16 levels of ``"nf4"`` or ``"fp4"`` (index = stored code)."""
    scheme = enum_value(Scheme, scheme, "scheme")
    if not scheme.is_codebook:
        raise LabError.bad("scheme", scheme.value, "code books exist for 'nf4' and 'fp4'; the others are uniform",
                           verb="has no code book")
    return nf4_code() if scheme is Scheme.NF4 else fp4_code()


# --- quantize -----------------------------------------------------------------------------------

def _as_values(x: Any, argument: str = "x") -> torch.Tensor:
    """``x`` as a floating tensor, checked: not empty, no nan or inf."""
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise LabError.bad(argument, x, "use a tensor (or a list) of floats", verb="is not a tensor") from None
    if x.numel() == 0:
        raise LabError(f"{argument} is empty (shape {tuple(x.shape)}); quantization needs at least one value")
    if not (x.dtype.is_floating_point or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise LabError(f"{argument} has dtype {x.dtype}; use a tensor of floats")
    x = x.detach().float()
    bad = ~torch.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in torch.nonzero(bad)[0].tolist())
        raise LabError(f"{argument} holds {int(bad.sum()):,} nan/inf value(s), the first at index {first}; "
                       f"quantization needs finite values (one inf makes every scale inf)")
    return x


def _rows_cols(x: torch.Tensor) -> tuple[int, int]:
    rows = x.shape[0] if x.ndim >= 2 else 1
    return rows, x.numel() // rows


def _divisors(n: int, limit: int = 8) -> list[int]:
    found = [d for d in range(2, n + 1) if n % d == 0 and d >= 8]
    return found[:limit] or [n]


def _grouped(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``x`` reshaped to (rows, groups, values per group): every scale is one reduction over the last dim."""
    rows, cols = _rows_cols(x)
    if spec.granularity is Granularity.TENSOR:
        return x.reshape(1, 1, -1)
    if spec.granularity is Granularity.CHANNEL:
        return x.reshape(rows, 1, cols)
    if cols % spec.group_size:
        raise LabError(f"group_size {spec.group_size} does not divide the row of {cols:,} values; use a divisor "
                       f"such as {', '.join(map(str, _divisors(cols)))}, or granularity='channel'")
    return x.reshape(rows, cols // spec.group_size, spec.group_size)


def _nonzero(scale: torch.Tensor) -> torch.Tensor:
    # A group of zeros has no range: any scale reproduces it; 1 keeps the division defined.
    return torch.where(scale > 0, scale, torch.ones_like(scale))


@dataclass(frozen=True)
class Group:
    """One group's mapping: the float range it covers and the float value of each integer code."""

    row: int
    index: int  # group number within the row
    start: int  # first column of the group
    size: int  # values in the group
    scale: float
    zero_point: int | None  # asymmetric / symmetric: the integer that 0.0 becomes
    minimum: float | None  # the "min" scheme: the float that code 0 stands for
    low: float  # the float range mapped onto the codes: [low, high]
    high: float
    codes: tuple[int, ...]  # ascending by level
    levels: tuple[float, ...]  # float value of each code, ascending

    @property
    def boundaries(self) -> tuple[float, ...]:
        """Decision boundaries: a value between two levels goes to the nearer one (midpoints)."""
        return tuple((a + b) / 2 for a, b in zip(self.levels[:-1], self.levels[1:]))


@dataclass(frozen=True)
class Quantized:
    """The integers, scales and zero-points (or minimums, or code book) of one quantized tensor.

    ``q`` has the input's shape (int8 codes for asymmetric/symmetric, uint8 for ``min`` and the code
    books); ``scales`` (float32) and ``zero_points`` / ``mins`` have shape (rows, groups per row):
    (1, 1) per tensor, (rows, 1) per channel.
    """

    spec: QuantSpec
    q: torch.Tensor
    scales: torch.Tensor
    zero_points: torch.Tensor | None = None
    mins: torch.Tensor | None = None
    code: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.q.shape)

    @property
    def numel(self) -> int:
        return self.q.numel()

    def _grouped_codes(self) -> torch.Tensor:
        rows, groups = self.scales.shape
        return self.q.reshape(rows, groups, -1)

    def dequantize(self) -> torch.Tensor:
        """The float32 values the integers stand for: (q - zero_point) x scale, scale x q + min, or code[q] x absmax."""
        q = self._grouped_codes()
        scale = self.scales.unsqueeze(-1)
        if self.code is not None:
            out = self.code.to(q.device)[q.long()] * scale
        elif self.mins is not None:
            out = q.float() * scale + self.mins.unsqueeze(-1)
            if not torch.isfinite(out).all():  # q x scale overflowed near float32's maximum: add in float64
                out = (q.double() * scale.double() + self.mins.unsqueeze(-1).double()).float()
        else:
            out = (q.float() - self.zero_points.unsqueeze(-1).float()) * scale
        return out.reshape(self.shape)

    @property
    def storage_bytes(self) -> int:
        """Bytes to store it (:meth:`QuantSpec.storage_bytes`): nf4 in blocks of 64 is 4 + 32/64 = 4.5 bits
        per value."""
        return self.spec.storage_bytes(self.shape)

    @property
    def bits_per_value(self) -> float:
        return 8 * self.storage_bytes / self.numel

    def packed(self) -> torch.Tensor:
        """4-bit codes packed two per byte as bitsandbytes stores them: the first value in the high nibble.

        Signed codes are stored offset by ``-qmin`` (0 .. 15)."""
        if self.spec.bits != 4:
            raise LabError.bad("bits", self.spec.bits, "packing two codes per byte needs bits=4",
                               verb="cannot be packed")
        codes = (self.q.reshape(-1).to(torch.int16) - self.spec.qmin).to(torch.uint8)
        if codes.numel() % 2:
            codes = torch.cat([codes, codes.new_zeros(1)])
        return ((codes[::2] << 4) | codes[1::2]).unsqueeze(1)

    def group(self, row: int = 0, index: int = 0) -> Group:
        """The mapping of one group (row ``row``, group ``index`` of that row)."""
        rows, groups = self.scales.shape
        if not (0 <= row < rows and 0 <= index < groups):
            raise LabError(f"group ({row}, {index}) does not exist; rows 0..{rows - 1}, groups 0..{groups - 1}")
        size = self.numel // (rows * groups)
        scale = float(self.scales[row, index])
        spec = self.spec
        if self.code is not None:
            order = torch.argsort(self.code)
            levels = (self.code[order] * scale).tolist()
            codes = order.tolist()
            return Group(row, index, index * size, size, scale, None, None, -scale, scale, tuple(codes), tuple(levels))
        ints = list(range(spec.qmin, spec.qmax + 1))
        if self.mins is not None:
            minimum = float(self.mins[row, index])
            levels = [i * scale + minimum for i in ints]
            return Group(row, index, index * size, size, scale, None, minimum, levels[0], levels[-1], tuple(ints),
                         tuple(levels))
        zero_point = int(self.zero_points[row, index])
        levels = [(i - zero_point) * scale for i in ints]
        return Group(row, index, index * size, size, scale, zero_point, None, levels[0], levels[-1], tuple(ints),
                     tuple(levels))

    def widest_group(self) -> tuple[int, int]:
        """(row, index) of the group with the largest scale: the one an outlier stretched most."""
        flat = int(torch.argmax(self.scales))
        return divmod(flat, self.scales.shape[1])

    def typical_group(self) -> tuple[int, int]:
        """(row, index) of a group with the median scale: what most groups look like."""
        flat = self.scales.reshape(-1)
        middle = int(torch.argsort(flat)[flat.numel() // 2])
        return divmod(middle, self.scales.shape[1])


def quantize(x: Any, bits: int = 8, scheme: Scheme | str = "asymmetric", granularity: Granularity | str = "tensor",
             group_size: int = 64) -> Quantized:
    """Quantize ``x`` to ``bits``-bit integer codes with one scale per tensor, row or group.

    ``scheme``: ``"asymmetric"`` (scale + integer zero-point; the range always includes 0.0 so that
    0.0 is stored exactly, as PyTorch and torchao do), ``"symmetric"`` (absmax, zero-point 0, the
    integer range kept symmetric: -127 .. 127 for int8, as LLM.int8()), ``"min"`` (scale x q + min,
    GGUF's Q4_1), ``"nf4"`` / ``"fp4"`` (absmax + bitsandbytes' 16-level code books; bits=4).
    ``granularity``: ``"tensor"``, ``"channel"`` (each row of a 2-D tensor; the first dimension
    counts as rows for more dimensions) or ``"group"`` (``group_size`` consecutive values of a row;
    it must divide the row).

    Every dequantized value lies within half a step (half the scale) of the original for the uniform
    schemes. With int8 symmetric and max|x| = 2.54 the step is 2.54 / 127 = 0.02:

    >>> q = quantize(torch.tensor([2.54, -1.0, 0.013]), bits=8, scheme="symmetric")
    >>> round(q.scales.item(), 6), q.q.tolist()
    (0.02, [127, -50, 1])
    >>> [round(v, 4) for v in q.dequantize().tolist()]
    [2.54, -1.0, 0.02]
    """
    return _quantize(_as_values(x), QuantSpec(bits, scheme, granularity, group_size))


def _span(low: torch.Tensor, high: torch.Tensor, steps: int) -> torch.Tensor:
    """(high - low) / steps; where high - low overflows (values near float32's 3.4e38 on both sides), the same
    quotient as high / steps - low / steps, which stays finite, instead of an infinite scale and nan codes."""
    span = (high - low) / steps
    return torch.where(torch.isfinite(span), span, high / steps - low / steps)


def _quantize(values: torch.Tensor, spec: QuantSpec) -> Quantized:
    g = _grouped(values, spec)  # (rows, groups, per group)
    shape = tuple(values.shape)
    if spec.scheme is Scheme.ASYMMETRIC:
        low = g.amin(-1).clamp(max=0.0)
        high = g.amax(-1).clamp(min=0.0)
        scale = _nonzero(_span(low, high, spec.qmax - spec.qmin))
        zero_point = (spec.qmin - torch.round(low / scale)).clamp(spec.qmin, spec.qmax)
        q = (torch.round(g / scale.unsqueeze(-1)) + zero_point.unsqueeze(-1)).clamp(spec.qmin, spec.qmax)
        return Quantized(spec, q.to(torch.int8).reshape(shape), scale, zero_points=zero_point.to(torch.int32))
    if spec.scheme is Scheme.SYMMETRIC:
        absmax = g.abs().amax(-1)
        safe = _nonzero(absmax)
        # x * (qmax / absmax), in this order, as bitsandbytes' int8_vectorwise_quant rounds it
        q = torch.round(g * (spec.qmax / safe).unsqueeze(-1)).clamp(-spec.qmax, spec.qmax)
        zero = torch.zeros_like(absmax, dtype=torch.int32)
        return Quantized(spec, q.to(torch.int8).reshape(shape), safe / spec.qmax, zero_points=zero)
    if spec.scheme is Scheme.MIN:
        low, high = g.amin(-1), g.amax(-1)
        scale = _nonzero(_span(low, high, spec.qmax))
        # g / scale - low / scale is (g - low) / scale without g - low overflowing near float32's maximum
        shifted = (g - low.unsqueeze(-1)) / scale.unsqueeze(-1)
        shifted = torch.where(torch.isfinite(shifted), shifted, g / scale.unsqueeze(-1) - low.unsqueeze(-1) / scale.unsqueeze(-1))
        q = torch.round(shifted).clamp(0, spec.qmax)
        return Quantized(spec, q.to(torch.uint8).reshape(shape), scale, mins=low)
    # code books: scale each block into [-1, 1] by its absmax, then take the nearest of 16 levels
    code = codebook(spec.scheme).to(values.device)
    absmax = g.abs().amax(-1)
    scaled = torch.clamp(g * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(-1), -1, 1)
    order = torch.argsort(code)
    sorted_levels = code[order]
    midpoints = (sorted_levels[:-1] + sorted_levels[1:]) / 2
    nearest = torch.bucketize(scaled, midpoints)  # position among the sorted levels
    return Quantized(spec, order[nearest].to(torch.uint8).reshape(shape), absmax, code=code)


# --- errors -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class QuantError:
    """How far dequantized values are from the originals.

    ``sqnr_db``: signal-to-quantization-noise ratio, 10 log10(sum x**2 / sum (x - x')**2); every
    extra bit of a uniform quantizer adds about 6 dB. ``inf`` when nothing was lost.
    """

    mse: float
    max_abs_error: float
    sqnr_db: float

    @property
    def rmse(self) -> float:
        return math.sqrt(self.mse)


def error_metrics(original: Any, approx: Any) -> QuantError:
    """MSE, max abs error and SQNR (dB) of ``approx`` against ``original`` (same shape).

    >>> e = error_metrics(torch.tensor([1.0, -1.0]), torch.tensor([0.9, -1.0]))
    >>> round(e.mse, 4), round(e.max_abs_error, 4), round(e.sqnr_db, 1)
    (0.005, 0.1, 23.0)
    """
    x = _as_values(original, "original")
    y = _as_values(approx, "approx")
    if x.shape != y.shape:
        raise LabError(f"approx has shape {tuple(y.shape)} and original {tuple(x.shape)}; compare tensors of one shape")
    return _error(x, y)


def _error(x: torch.Tensor, y: torch.Tensor) -> QuantError:
    diff = (x.double() - y.double()).reshape(-1)  # float64 sums: a million squared errors lose nothing
    noise = float(torch.dot(diff, diff))
    flat = x.reshape(-1).double()
    signal = float(torch.dot(flat, flat))
    if noise == 0:
        sqnr = math.inf
    elif signal == 0:
        sqnr = -math.inf
    else:
        sqnr = 10 * math.log10(signal / noise)
    return QuantError(noise / diff.numel(), float(diff.abs().max()), sqnr)


@dataclass(frozen=True)
class SchemeResult:
    spec: QuantSpec
    error: QuantError
    bits_per_value: float


def evaluate(x: Any, specs: list[QuantSpec | dict]) -> list[SchemeResult]:
    """Quantize ``x`` with each setting and measure the error and the storage cost of each.

    >>> torch.manual_seed(0) and None
    >>> w = torch.randn(64, 256) * 0.02
    >>> rows = evaluate(w, [dict(bits=4, scheme="symmetric", granularity="group"),
    ...                     dict(bits=4, scheme="nf4", granularity="group")])
    >>> rows[1].error.sqnr_db > rows[0].error.sqnr_db   # normal weights: NF4 beats uniform int4
    True
    """
    out = []
    values = _as_values(x)
    for spec in specs:
        spec = spec if isinstance(spec, QuantSpec) else QuantSpec(**spec)
        qz = _quantize(values, spec)
        out.append(SchemeResult(spec, _error(values, qz.dequantize()), qz.bits_per_value))
    return out


@dataclass(frozen=True)
class Histogram:
    """Counts of values in ``len(counts)`` equal bins between ``edges[0]`` and ``edges[-1]``."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]

    @property
    def centres(self) -> tuple[float, ...]:
        return tuple((a + b) / 2 for a, b in zip(self.edges[:-1], self.edges[1:]))


def histogram(x: Any, bins: int = 120, low: float | None = None, high: float | None = None) -> Histogram:
    """A histogram computed here, so a chart draws ``bins`` bars instead of a million points.

    >>> histogram(torch.tensor([0.0, 0.5, 1.0, 1.0]), bins=2).counts
    (1, 3)
    """
    bins = whole_number(bins, "bins", minimum=1)
    if bins > _MAX_BINS:  # torch.histc would allocate them all: 1e9 bins are 8 GB for a chart no screen shows
        raise LabError.bad("bins", bins, f"use 1 to {_MAX_BINS:,} (a chart shows a few hundred bars)", verb="is too many")
    return _histogram(_as_values(x), bins, low, high)


_MAX_BINS = 10_000


def _histogram(values: torch.Tensor, bins: int, low: float | None = None, high: float | None = None) -> Histogram:
    values = values.reshape(-1)
    lo = float(values.min()) if low is None else float(low)
    hi = float(values.max()) if high is None else float(high)
    if hi <= lo:
        hi = lo + 1e-12 if lo == 0 else lo + abs(lo) * 1e-6
    counts = torch.histc(values, bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    return Histogram(tuple(edges.tolist()), tuple(int(c) for c in counts.tolist()))


# --- outliers and LLM.int8() --------------------------------------------------------------------

def add_outlier(x: Any, factor: float = 20.0) -> torch.Tensor:
    """A copy of ``x`` whose largest-magnitude value is ``factor`` times larger: one outlier.

    >>> add_outlier(torch.tensor([0.5, -0.75, 0.25]), factor=10).tolist()
    [0.5, -7.5, 0.25]
    """
    values = _as_values(x).clone()
    flat = values.view(-1)
    flat[int(flat.abs().argmax())] *= float(factor)
    return values


def outlier_channels(x: Any, channels: tuple[int, ...] | list[int], magnitude: float) -> torch.Tensor:
    """A copy of activations ``x`` (tokens, features) whose ``channels`` are scaled so their largest
    value has size ``magnitude``: the few large hidden features LLM.int8() found in models >= 6.7B."""
    values = _as_values(x).clone()
    if values.ndim != 2:
        raise LabError(f"x has shape {tuple(values.shape)}; use activations of shape (tokens, features)")
    cols = values.shape[1]
    bad = [c for c in channels if not (isinstance(c, int) and 0 <= c < cols)]
    if bad or not channels:
        raise LabError.bad("channels", list(channels), f"use feature indices from 0 to {cols - 1}")
    for c in channels:
        peak = values[:, c].abs().max().clamp(min=1e-12)
        values[:, c] *= float(magnitude) / peak
    return values


@dataclass(frozen=True)
class Int8Vectorwise:
    """LLM.int8()'s quantization of a matrix: int8 rows with one absmax each, outlier columns apart.

    ``q`` (int8, rows x cols) holds round(x x 127 / row_absmax); columns in ``outlier_cols`` (any
    value with |x| >= threshold) are zero in ``q`` and kept in float in ``outliers``.
    """

    q: torch.Tensor
    row_absmax: torch.Tensor  # float32 (rows,): bitsandbytes' row_stats / SCB
    outlier_cols: torch.Tensor  # long
    outliers: torch.Tensor  # float32 (rows, len(outlier_cols))

    def dequantize(self) -> torch.Tensor:
        out = self.q.float() * (self.row_absmax / 127).unsqueeze(-1)
        if self.outlier_cols.numel():
            out[:, self.outlier_cols] = self.outliers
        return out


def int8_vectorwise(x: Any, threshold: float = 0.0) -> Int8Vectorwise:
    """Row-wise absmax int8 of a 2-D ``x``, as ``bitsandbytes.functional.int8_vectorwise_quant``.

    With ``threshold`` > 0, values with |x| >= threshold are left out of their row's absmax and their
    whole column is kept aside in float (LLM.int8()'s mixed-precision decomposition; bitsandbytes'
    default threshold is 6.0).

    >>> v = int8_vectorwise(torch.tensor([[1.0, -0.5, 8.0], [0.2, 0.1, 0.0]]), threshold=6.0)
    >>> v.q.tolist(), v.row_absmax.tolist(), v.outlier_cols.tolist()
    ([[127, -64, 0], [127, 64, 0]], [1.0, 0.20000000298023224], [2])
    """
    values = _as_values(x)
    if values.ndim != 2:
        raise LabError(f"x has shape {tuple(values.shape)}; int8_vectorwise quantizes a 2-D matrix (rows, cols)")
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold >= 0):
        raise LabError.bad("threshold", threshold, "use a number >= 0 (0 keeps no outliers; bitsandbytes uses 6.0)")
    work = values.clone()
    cols = torch.empty(0, dtype=torch.long, device=values.device)
    if threshold > 0:
        big = work.abs() >= threshold
        cols = torch.nonzero(big.any(dim=0)).reshape(-1)
        work[big] = 0  # outliers do not stretch their row's scale
    absmax = work.abs().amax(dim=1)
    q = torch.round(work * (127.0 / absmax.clamp(min=1e-38)).unsqueeze(-1)).to(torch.int8)
    if cols.numel():
        q[:, cols] = 0
    return Int8Vectorwise(q, absmax, cols, values[:, cols].clone())


def int8_matmul(x: Any, weight: Any, granularity: Granularity | str = "channel",
                threshold: float = 0.0) -> torch.Tensor:
    """``x @ weight.T`` computed in int8, as LLM.int8() computes an nn.Linear.

    Both operands are quantized with absmax (symmetric int8), multiplied as integers (exactly, in
    float64 here) and the result scaled back by the product of their scales. ``granularity``
    ``"tensor"``: one scale per matrix; ``"channel"`` (vector-wise): one per row of ``x`` (a token)
    and per row of ``weight`` (an output feature). With ``threshold`` > 0 (vector-wise only) the
    columns of ``x`` holding an |x| >= threshold are multiplied in float instead, against the
    dequantized int8 weight columns (what bitsandbytes does for a loaded int8 model).
    """
    g = enum_value(Granularity, granularity, "granularity")
    xs, w = _as_values(x, "x"), _as_values(weight, "weight")
    if xs.ndim != 2 or w.ndim != 2 or xs.shape[1] != w.shape[1]:
        raise LabError(f"x {tuple(xs.shape)} and weight {tuple(w.shape)} do not multiply; use x (tokens, in) and "
                       f"weight (out, in)")
    if g is Granularity.GROUP:
        raise LabError.bad("granularity", g.value, "use 'tensor' or 'channel' (vector-wise)",
                           verb="is not offered here")
    if g is Granularity.TENSOR:
        if threshold:
            raise LabError.bad("threshold", threshold, "the outlier threshold goes with granularity='channel'",
                               verb="is not used per tensor")
        qx = quantize(xs, 8, "symmetric", "tensor")
        qw = quantize(w, 8, "symmetric", "tensor")
        ints = qx.q.double() @ qw.q.double().T
        return (ints * (qx.scales * qw.scales).double()).float()
    vx = int8_vectorwise(xs, threshold)
    vw = int8_vectorwise(w)
    ints = vx.q.double() @ vw.q.double().T  # (tokens, out)
    out = ints * (vx.row_absmax.double() / 127).unsqueeze(1) * (vw.row_absmax.double() / 127).unsqueeze(0)
    if vx.outlier_cols.numel():
        w_cols = vw.dequantize()[:, vx.outlier_cols].double()
        out = out + vx.outliers.double() @ w_cols.T
    return out.float()


# --- GGUF Q4_1 ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Q41Recovery:
    """Q4_1 blocks found again in weights that went through it: each block of 32 is scale x q + min."""

    quantized: Quantized  # scheme "min", 4 bits, groups of ``group_size``
    blocks: int
    max_distinct_per_block: int  # <= 16 when the weights came from 4-bit blocks of this size
    max_error_in_steps: float  # largest |recovered - given| in units of the block's step

    @property
    def scales(self) -> torch.Tensor:
        return self.quantized.scales

    @property
    def mins(self) -> torch.Tensor:
        return self.quantized.mins


def recover_q4_1(weight: Any, group_size: int = 32) -> Q41Recovery:
    """Find the Q4_1 blocks of a weight matrix that was stored as GGUF Q4_1 and converted to floats.

    llama.cpp's Q4_1 sets, per block of 32, min = the smallest weight and scale = (max - min) / 15, and
    stores q = round((x - min) / scale) in 0 .. 15. So the smallest weight of a block is min, the
    largest is min + 15 x scale, and every weight of the block lies on that grid of 16 values: the
    ``"min"`` scheme at 4 bits, groups of 32, re-quantizes them with errors far below one step
    (only the rounding to bf16 is left). Weights that never went through Q4_1 show errors up to
    half a step and more than 16 distinct values per block.
    """
    values = _as_values(weight, "weight")
    qz = quantize(values, 4, Scheme.MIN, Granularity.GROUP, group_size)
    rows, groups = qz.scales.shape
    blocks = values.reshape(rows * groups, -1)
    distinct = _max_distinct(blocks)
    err = (qz.dequantize() - values).abs().reshape(rows, groups, -1).amax(-1) / qz.scales
    return Q41Recovery(qz, rows * groups, distinct, float(err.max()))


def _max_distinct(blocks: torch.Tensor) -> int:
    # distinct values per row of a (blocks, 32) matrix, vectorised: sort, count changes
    s = blocks.sort(dim=1).values
    return int(((s[:, 1:] != s[:, :-1]).sum(dim=1) + 1).max())


# --- what the quantization-mapping widget shows ------------------------------------------------

def weight_matrices(model: torch.nn.Module, include: tuple[str, ...] = ("layers.",)) -> dict[str, torch.Tensor]:
    """The 2-D weights of a model's ``nn.Linear`` layers whose name contains one of ``include``
    (by default the decoder layers': q, k, v, o, gate, up, down), by module name, in model order.

    >>> import bigsmall_lab as bsl
    >>> names = list(weight_matrices(bsl.load_model(dtype="bfloat16")))
    >>> names[:2], len(names)
    (['model.layers.0.self_attn.q_proj', 'model.layers.0.self_attn.k_proj'], 42)
    """
    out = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if (isinstance(module, torch.nn.Linear) and isinstance(weight, torch.Tensor) and weight.ndim == 2
                and weight.dtype.is_floating_point and any(part in name for part in include)):
            out[name] = weight
    return out


@dataclass(frozen=True)
class MappingReport:
    """Everything the quantization map draws for one setting: errors, histogram, one group's mapping, a sample.

    ``focus`` is the widest group (largest scale: where an outlier does its damage) or, with
    ``focus="typical"``, a group of median scale; ``focus_values``
    are that group's original values (up to 2,048 of them, evenly strided). ``sample_original`` /
    ``sample_dequantized`` are up to ``sample`` values of the whole tensor, evenly strided, plus its
    largest-magnitude value.
    """

    spec: QuantSpec
    n_values: int
    quantized: Quantized
    error: QuantError
    histogram: Histogram
    focus: Group
    focus_values: torch.Tensor
    focus_codes_used: int  # distinct codes the focus group's values use
    focus_min: tuple[float, int]  # the focus group's smallest value and the code it became
    focus_max: tuple[float, int]  # its largest value and the code it became
    sample_original: torch.Tensor
    sample_dequantized: torch.Tensor
    largest_step: float  # the largest gap between neighbouring levels of any group

    @property
    def storage_bytes(self) -> int:
        return self.quantized.storage_bytes

    @property
    def bits_per_value(self) -> float:
        return self.quantized.bits_per_value

    @property
    def bfloat16_bytes(self) -> int:
        return int(self.n_values * bytes_per_element("bfloat16"))

    @property
    def levels(self) -> int:
        return self.spec.qmax - self.spec.qmin + 1


def _strided(values: torch.Tensor, n: int) -> torch.Tensor:
    """Up to ``n`` evenly strided indices into a flat tensor: deterministic, covers every region."""
    total = values.numel()
    if total <= n:
        return torch.arange(total)
    return torch.linspace(0, total - 1, n).round().long()


def mapping_report(x: Any, bits: int = 8, scheme: Scheme | str = "asymmetric",
                   granularity: Granularity | str = "tensor", group_size: int = 64, sample: int = 2000,
                   bins: int = 120, focus: str = "widest") -> MappingReport:
    """Quantize ``x`` and gather what a picture of the mapping needs (see :class:`MappingReport`).

    >>> r = mapping_report(torch.tensor([-3.5, 0.0, 10.2]), bits=4)
    >>> r.focus.zero_point, round(r.focus.scale, 4), r.levels
    (-4, 0.9133, 16)
    """
    values = _as_values(x)
    qz = _quantize(values, QuantSpec(bits, scheme, granularity, group_size))
    deq = qz.dequantize()
    if focus not in ("widest", "typical"):
        raise LabError.bad("focus", focus,
                           "use 'widest' (the group with the largest scale) or 'typical' (median scale)")
    row, index = qz.widest_group() if focus == "widest" else qz.typical_group()
    focus_group = qz.group(row, index)
    rows, groups = qz.scales.shape
    grouped = values.reshape(rows, groups, -1)[row, index]
    codes = qz.q.reshape(rows, groups, -1)[row, index]
    picked = _strided(grouped, 2048)
    lo, hi = int(grouped.argmin()), int(grouped.argmax())
    flat_codes = codes.reshape(-1)
    flat, flat_deq = values.reshape(-1), deq.reshape(-1)
    idx = torch.unique(torch.cat([_strided(flat, sample), flat.abs().argmax().reshape(1)]))
    if qz.code is not None:
        step = float(torch.diff(qz.code.sort().values).max() * qz.scales.max())
    else:
        step = float(qz.scales.max())
    return MappingReport(
        spec=qz.spec, n_values=values.numel(), quantized=qz, error=_error(values, deq),
        histogram=_histogram(values, bins), focus=focus_group, focus_values=grouped.reshape(-1)[picked],
        focus_codes_used=int((torch.bincount(codes.reshape(-1).long() - qz.spec.qmin) > 0).sum()),
        focus_min=(float(grouped.reshape(-1)[lo]), int(flat_codes[lo])),
        focus_max=(float(grouped.reshape(-1)[hi]), int(flat_codes[hi])),
        sample_original=flat[idx], sample_dequantized=flat_deq[idx],
        largest_step=step)
