"""Exercises of lesson 03 (dtypes): predict what a format does to a number, then check.

Every expected value comes from :mod:`bigsmall_lab.bits` (torch's own conversion) or from the
lab's dtype table; the slips are the numbers a learner reaches by a known mistake:

- :func:`check_gap`: the gap between neighbouring values of a format at a magnitude (bf16 at 256);
- :func:`check_stored`: what a format stores for a value (float16 of 65,520 and of 1e-8);
- :func:`check_load_peak_ratio`: the CPU peak of loading a bf16 checkpoint as float32, in bf16 weights;
- :func:`check_fp8_rmse_ratio`: how many times e5m2's RMSE is e4m3's on real weights.

>>> print(check_gap(2))
[correct] 2 is right: 256 = 2**8, and bfloat16's 7 mantissa bits split each power of two into 2**7 = 128 steps: 256 / 128 = 2.
>>> print(check_stored(float("inf"), 65520))  # doctest: +ELLIPSIS
[correct] inf is right: ...
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._dtypes import bytes_per_element, dtype_name, torch_dtype
from .._errors import LabError
from ..bits import FORMATS, RoundingStats, decompose, format_info, range_note, spacing, value_text
from ._core import Exercise, Slip, Verdict, ask, distinct_slips

__all__ = ["check_fp8_rmse_ratio", "check_gap", "check_load_peak_ratio", "check_stored"]

_FLOATS = tuple(name for name in FORMATS if format_info(name).is_float)


def _power(x: float) -> str:
    """'2**8' for a power of two, else the number."""
    exponent = math.log2(x) if x > 0 else math.nan
    return f"2**{int(exponent)}" if math.isfinite(exponent) and exponent == int(exponent) else value_text(x)


def check_gap(answer: Any, dtype: str = "bfloat16", at: float = 256) -> Verdict:
    """The gap from ``at`` to the next larger value ``dtype`` can store.

    Slips: epsilon (the gap at 1.0, not at ``at``), the gap just below ``at`` (a power of two starts a
    new binade), the number of steps instead of their size, another format's gap.
    """
    name = dtype_name(dtype, allowed=_FLOATS)
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not 0 < at <= format_info(name).max:
        raise LabError.bad("at", at, f"use a positive number up to {name}'s largest value "
                           f"{format_info(name).max:g}", verb="is not a magnitude")
    at = float(at)
    expected = spacing(name, [at]).gaps[0]

    def build() -> Exercise:
        info = format_info(name)
        steps = 2**info.mantissa_bits
        binade = 2.0 ** math.floor(math.log2(at))
        below = spacing(name, [binade / 2]).gaps[0]  # the power of two below: half the gap
        slips = [Slip(info.eps, f"that is epsilon, {name}'s gap at 1.0; at {value_text(at)} the gap is "
                                f"{value_text(binade)} times larger (it doubles at every power of two)"),
                 Slip(steps, f"that is how many steps the {info.mantissa_bits} mantissa bits make in each power of "
                             "two; the question asks for the size of one step"),
                 Slip(below, f"that is the gap just below {value_text(binade)}; from {value_text(binade)} up the "
                             "next power of two begins and the gap doubles")]
        for other in ("float32", "float16", "bfloat16"):
            if other != name:
                slips.append(Slip(spacing(other, [at]).gaps[0], f"that is {other}'s gap at {value_text(at)} "
                                  f"({format_info(other).mantissa_bits} mantissa bits); {name} keeps "
                                  f"{info.mantissa_bits}"))
        return Exercise(
            "gap", expected=expected, example="0.5 or 2**-3",
            why=(f"{value_text(binade)} = {_power(binade)}, and {name}'s {info.mantissa_bits} mantissa bits split each "
                 f"power of two into 2**{info.mantissa_bits} = {steps} steps: {value_text(binade)} / {steps} = "
                 f"{value_text(expected)}"),
            hint=f"which power of two is {value_text(at)} in, and into how many steps does the mantissa split it?",
            slips=distinct_slips(expected, slips))

    return ask(("gap", name, at), build).check(answer)


def _other_neighbour(value: float, stored: float, name: str) -> float | None:
    """The representable value next to ``stored`` on the other side of ``value``: what rounding the wrong
    way gives (up instead of down, away from the even mantissa at a tie); None when ``value`` is stored
    exactly or rounds to inf or 0."""
    if stored == value or not math.isfinite(stored) or stored == 0:
        return None
    td = torch_dtype(name)
    toward = torch.tensor(math.inf if value > stored else -math.inf, dtype=td)
    other = torch.nextafter(torch.tensor(stored, dtype=td), toward).item()
    return other if math.isfinite(other) else None


def check_stored(answer: Any, value: float, dtype: str = "float16") -> Verdict:
    """The value ``dtype`` really stores for ``value`` (torch's conversion), within 0.01 %.

    Slips: the value itself (not representable), its neighbour on the other side (rounded the wrong way,
    or away from the even mantissa at a tie), the largest finite value for a value that rounds to
    inf, the smallest subnormal or normal for a value that rounds to 0, what bfloat16 would store.
    Write infinity as ``float("inf")`` or ``math.inf``.
    """
    name = dtype_name(dtype, allowed=_FLOATS)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise LabError.bad("value", value, "use a real number, e.g. 65520 or 1e-8", verb="is not a number to store")
    value = float(value)
    stored = decompose(value, name)
    expected = stored.value

    def build() -> Exercise:
        info = format_info(name)
        note = range_note(stored)
        slips = []
        if math.isinf(expected):
            top = spacing(name, []).gap_at_max
            slips.append(Slip(info.max, f"{value_text(info.max)} is {name}'s largest finite value, but "
                                        f"{value_text(value)} is at least halfway to the next step up "
                                        f"({value_text(info.max + top)}): rounding goes to the even mantissa, past "
                                        "the largest value, so it overflows to inf", 1e-6))
        if expected == 0:
            slips.append(Slip(info.smallest_subnormal,
                              f"{info.smallest_subnormal:.3g} is {name}'s smallest positive (subnormal) value, but "
                              f"{value_text(value)} is less than half of it, so it rounds down to 0", 0.01))
            slips.append(Slip(info.smallest_normal,
                              f"{info.smallest_normal:.3g} is {name}'s smallest normal value; below it come the "
                              f"subnormals, and {value_text(value)} lies below even those", 0.01))
        slips.append(Slip(value, f"{name} cannot hold {value_text(value)} exactly"
                                 + (f" ({note})" if note else ": it rounds to the nearest value it has")))
        other_way = _other_neighbour(value, expected, name)
        if other_way is not None:
            tie = abs(other_way - value) == abs(expected - value)
            slips.append(Slip(other_way, f"{value_text(other_way)} is {name}'s neighbour on the other side of "
                                         f"{value_text(value)}; " + (
                                             "halfway between two values, rounding goes to the one with the even "
                                             "mantissa (its last bit 0)" if tie else
                                             "conversion rounds to the nearest value, not up, down or toward zero"),
                              1e-6))
        for other in ("bfloat16", "float16", "float32"):
            if other != name:
                slips.append(Slip(decompose(value, other).value, f"that is what {other} stores; {name} has "
                                  f"{info.exponent_bits} exponent and {info.mantissa_bits} mantissa bits", 1e-4))
        why = f"{name} stores {value_text(value)} as {value_text(expected)}"
        if note:
            why += f" ({note})"
        return Exercise(
            "stored", expected=expected, rel_tol=1e-4, slip_tol=1e-6, example='float("inf"), 0.0 or 65504',
            why=why, hint=(f"{name}'s largest finite value is {value_text(info.max)} and its smallest positive value "
                           f"{info.smallest_subnormal:.3g}; where does {value_text(value)} fall, and which way does "
                           "it round?"),
            slips=distinct_slips(expected, slips))

    return ask(("stored", name, value), build).check(answer)


def check_load_peak_ratio(answer: Any, stored: str = "bfloat16", loaded: str = "float32") -> Verdict:
    """On a CPU, the peak memory of loading a ``stored`` checkpoint as ``loaded``, in units of the
    checkpoint's weights (within 10 %, as measured peaks include a little runtime).

    The lab's dtype table answers it: the ``loaded`` copy (4 / 2 = 2 for bf16 -> fp32) plus the mapped
    ``stored`` shards, resident while they are read (1): 3.
    """
    stored, loaded = dtype_name(stored), dtype_name(loaded)
    ratio = bytes_per_element(loaded) / bytes_per_element(stored)
    expected = ratio + 1

    def build() -> Exercise:
        return Exercise(
            "load_peak_ratio", expected=expected, rel_tol=0.1, slip_tol=0.05, example="2.5",
            why=(f"the {loaded} copy takes {ratio:g} x the {stored} weights, and the {stored} shards it is converted "
                 f"from are mapped into memory (RssFile) while it is made: {ratio:g} + 1 = {expected:g}"),
            hint=(f"what is in memory at the moment the {stored} weights are being converted to {loaded}: the new "
                  "copy, and what is it read from?"),
            slips=distinct_slips(expected, [
                Slip(ratio, f"that is the {loaded} copy alone; the memory-mapped {stored} shards it is read from are "
                            "resident at the same time"),
                Slip(1, f"that is dtype='auto': the {stored} weights used as they are"),
                Slip(2 * ratio, f"two {loaded} copies would be the old random-init-then-load path; transformers 5 "
                                "builds the model on the meta device first")]))

    return ask(("load_peak_ratio", stored, loaded), build).check(answer)


def check_fp8_rmse_ratio(answer: Any, e4m3: RoundingStats, e5m2: RoundingStats) -> Verdict:
    """How many times e5m2's root-mean-square error is e4m3's, storing the same weights (within 25 %).

    ``e4m3`` and ``e5m2`` are :func:`bigsmall_lab.bits.rounding_stats` of the same tensor. Slips: the
    ratio of mean relative errors (dominated by the weights nearest zero), the inverse ratio.
    """
    for argument, stats, fmt in (("e4m3", e4m3, "float8_e4m3fn"), ("e5m2", e5m2, "float8_e5m2")):
        if not isinstance(stats, RoundingStats) or stats.dtype != fmt:
            raise LabError.bad(argument, stats, f"pass bits.rounding_stats(weights, {fmt!r})",
                               verb="is not the rounding stats of " + fmt)
    if e4m3.n_values != e5m2.n_values or not e4m3.rmse > 0:
        raise LabError("e4m3 and e5m2 must be the rounding stats of the same non-zero tensor")
    expected = e5m2.rmse / e4m3.rmse
    by_relative = (e5m2.mean_relative_error / e4m3.mean_relative_error
                   if e4m3.mean_relative_error > 0 else math.nan)

    def build() -> Exercise:
        return Exercise(
            "fp8_rmse_ratio", expected=expected, rel_tol=0.25, slip_tol=0.1, example="1.5",
            why=(f"measured: e5m2's RMSE {e5m2.rmse:.3g} / e4m3's {e4m3.rmse:.3g} = {expected:.2f}; one mantissa bit "
                 "fewer doubles the step within each power of two, and most of the squared error sits in the "
                 "large weights, where e4m3 keeps its 3 bits"),
            hint="e4m3 has 3 mantissa bits, e5m2 has 2: how much bigger is e5m2's step in the same power of two? "
                 "And which weights dominate a squared error?",
            slips=distinct_slips(expected, [
                Slip(by_relative, "that is the ratio of mean relative errors, which the weights nearest zero dominate "
                                  "(there e5m2's extra exponent bit helps); RMSE weighs every weight by its error"),
                Slip(1 / expected, "that is the inverse: e4m3 has the finer steps, so e5m2's error is the larger"),
            ]))

    return ask(("fp8_rmse_ratio", e4m3.n_values, round(expected, 6)), build).check(answer)
