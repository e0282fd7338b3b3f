"""Exercises of lesson 04 (quantization): predict a scale, a zero-point and the bytes of a 4-bit layer.

Every expected value comes from :mod:`bigsmall_lab.quant` (the same maths the lesson runs); the
slips are the numbers a learner reaches by a known mistake (dividing by 128 or 255, forgetting the
integer range's offset, forgetting the absmax of each block).
"""

from __future__ import annotations

import torch

from ..quant import QuantSpec, quantize
from ._core import Exercise, Slip, Verdict, ask

__all__ = ["check_4bit_bytes", "check_scale", "check_zero_point"]


def check_scale(answer: float | None, absmax: float, bits: int = 8) -> Verdict:
    """The scale of symmetric (absmax) quantization of values whose largest magnitude is ``absmax``.

    >>> print(check_scale(0.02, absmax=2.54))
    [correct] 0.02 is right: symmetric int8 maps [-2.54, 2.54] onto -127 .. 127, so one step is 2.54 / 127 = 0.02.
    >>> print(check_scale(2.54 / 128, absmax=2.54))  # doctest: +ELLIPSIS
    [not quite] You wrote 0.0198438: you divided by 128; ...
    """
    absmax = float(absmax)
    spec = QuantSpec(bits, "symmetric")
    qmax = spec.qmax
    expected = float(quantize(torch.tensor([absmax, -absmax]), bits, "symmetric").scales)

    def build() -> Exercise:
        return Exercise(
            "scale", expected=expected, rel_tol=1e-3, slip_tol=1e-4,
            why=f"symmetric int{bits} maps [-{absmax:g}, {absmax:g}] onto -{qmax} .. {qmax}, so one step is "
                f"{absmax:g} / {qmax} = {expected:.4g}",
            hint=f"the largest magnitude goes to the largest integer code of symmetric int{bits}; how big is one step?",
            slips=(Slip(absmax / 2 ** (bits - 1), f"you divided by {2 ** (bits - 1)}; symmetric quantization stops at "
                                                  f"+{qmax} so that -{qmax} .. {qmax} is centred on 0"),
                   Slip(absmax / (2 ** bits - 1), f"you divided by {2 ** bits - 1}, the steps of the whole integer range, "
                                                  f"but that range covers 2 x {absmax:g} (from -absmax to +absmax)"),
                   Slip(2 * absmax / (2 ** bits - 1), f"you spread 2 x absmax over all {2 ** bits - 1} steps; symmetric "
                                                      f"quantization leaves {-(2 ** (bits - 1))} unused, so 0.0 is code 0: "
                                                      f"{2 * qmax} steps"),
                   Slip(absmax * qmax, f"you multiplied; the scale is the float size of one step: absmax / {qmax}"),
                   Slip(qmax / absmax, f"that is 1 / scale: quantizing multiplies by it, the scale is absmax / {qmax}")))

    return ask(("scale", absmax, bits), build).check(answer)


def check_zero_point(answer: float | None, low: float, high: float, bits: int = 8) -> Verdict:
    """The zero-point (the integer that 0.0 becomes) of asymmetric quantization of [``low``, ``high``].

    >>> print(check_zero_point(-64, low=-1.0, high=3.0))  # doctest: +ELLIPSIS
    [correct] -64 is right: ...
    """
    spec = QuantSpec(bits, "asymmetric")
    q = quantize(torch.tensor([float(low), float(high)]), bits, "asymmetric")
    scale, expected = float(q.scales), int(q.zero_points)
    exact = spec.qmin - float(low) / scale

    def build() -> Exercise:
        return Exercise(
            "zero_point", expected=expected, slip_tol=1e-4,
            why=f"scale = ({high:g} - ({low:g})) / ({spec.qmax} - ({spec.qmin})) = {scale:.5g}; 0.0 lands "
                f"{-float(low) / scale:.4g} steps above the smallest code {spec.qmin}, rounded: "
                f"{spec.qmin} + {round(-float(low) / scale)} = {expected}",
            hint=f"first the scale (float range / integer steps), then: how many steps above {low:g} is 0.0, "
                 f"counted from the smallest code {spec.qmin}?",
            slips=(Slip(0, "0.0 becomes integer 0 only in symmetric quantization; here the range is not centred, so 0.0 "
                           "maps elsewhere"),
                   Slip(round(-float(low) / scale), f"that is the zero-point of unsigned codes 0 .. {2 ** bits - 1}; "
                                                    f"these codes are signed, {spec.qmin} .. {spec.qmax}"),
                   Slip(exact, "the zero-point is an integer code: round it (0.0 must be stored exactly)"),
                   *([Slip(-expected, "the sign is flipped: 0.0 sits above the smallest value, so count up from "
                                      f"{spec.qmin}")] if -expected != round(-float(low) / scale) else [])))

    return ask(("zero_point", float(low), float(high), bits), build).check(answer)


def check_4bit_bytes(answer: float | None, rows: int, cols: int, blocksize: int = 64) -> Verdict:
    """Bytes of one (rows x cols) weight in bitsandbytes' nf4: packed codes + one float32 absmax per block.

    >>> print(check_4bit_bytes(497_728, 1536, 576))  # doctest: +ELLIPSIS
    [correct] 497728 is right: ...
    """
    spec = QuantSpec(4, "nf4", "group", blocksize)
    expected = spec.storage_bytes((rows, cols))
    n = rows * cols
    blocks = n // blocksize

    def build() -> Exercise:
        return Exercise(
            "4bit_bytes", expected=expected, rel_tol=2e-4,  # with or without the 64-byte code book
            why=f"{n:,} weights x 4 bits = {n // 2:,} bytes, + {blocks:,} blocks of {blocksize} x 4 bytes of float32 "
                f"absmax = {4 * blocks:,} bytes (+ the 64-byte code book): {spec.bits + 32 / blocksize:g} bits per weight",
            hint=f"two 4-bit codes share a byte; and each block of {blocksize} weights keeps its absmax (a float32)",
            slips=(Slip(n // 2, f"that is the 4-bit codes alone; each block of {blocksize} also stores its absmax as a "
                                f"float32, {4 * blocks:,} bytes more"),
                   Slip(n, "one byte per weight is int8; 4-bit codes are packed two per byte"),
                   Slip(n // 2 + 2 * blocks, "the absmax is stored in float32 (4 bytes), not 16 bits"),
                   Slip(n * 2, "that is bf16 (2 bytes per weight), before quantization"),
                   Slip(n * 4, "that is the number of bits (4 per weight), not bytes")))

    return ask(("4bit_bytes", rows, cols, blocksize), build).check(answer)
