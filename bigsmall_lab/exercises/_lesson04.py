"""Exercises of lessons 04a and 04b (quantization): predict a scale, a zero-point and the bytes of a 4-bit
layer (04a); change a block size, or the layers bitsandbytes leaves in bf16, and predict what is stored,
then measure it (04a, 04b).

Every expected value comes from :mod:`bigsmall_lab.quant` (the same maths the lesson runs) or from a
measurement the lesson has just made; the slips are the numbers a learner reaches by a known mistake
(dividing by 128 or 255, forgetting the integer range's offset, forgetting the absmax of each block,
bits for bytes, GB for bytes).
"""

from __future__ import annotations

import math

import torch

from .._errors import LabError
from ..quant import QuantSpec, quantize
from ._core import Exercise, Slip, Verdict, ask, byte_unit_slips, distinct_slips

__all__ = ["check_4bit_bytes", "check_blocksize_bytes", "check_scale", "check_skip_bytes", "check_zero_point",
           "sig_fig_tolerance"]

# the block sizes bitsandbytes' quantize_4bit accepts
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)


def sig_fig_tolerance(expected: float, digits: int = 3) -> float:
    """The relative tolerance that accepts ``expected`` rounded to ``digits`` significant figures: half a
    unit in the last kept figure, over ``expected`` (0.0202 for 0.020177 is 0.11 % away and is accepted).

    >>> round(sig_fig_tolerance(0.020177), 5)
    0.00248
    """
    if not expected or not math.isfinite(expected):
        return 0.0
    half_unit = 0.5 * 10 ** (math.floor(math.log10(abs(expected))) - digits + 1)
    return half_unit / abs(expected) * (1 + 1e-9)  # float rounding of the learner's decimal


def check_scale(answer: float | None, absmax: float, bits: int = 8) -> Verdict:
    """The scale of symmetric (absmax) quantization of values whose largest magnitude is ``absmax``.

    An answer rounded to 3 significant figures is right (:func:`sig_fig_tolerance`); the slips, rounded
    the same way, are still recognised.

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
            "scale", expected=expected, rel_tol=sig_fig_tolerance(expected),
            why=f"symmetric int{bits} maps [-{absmax:g}, {absmax:g}] onto -{qmax} .. {qmax}, so one step is "
                f"{absmax:g} / {qmax} = {expected:.4g}",
            hint=f"the largest magnitude goes to the largest integer code of symmetric int{bits}; how big is one step?",
            # each slip is recognised rounded to 3 significant figures too, as the right answer is
            slips=tuple(Slip(x.value, x.why, sig_fig_tolerance(x.value)) for x in (
                   Slip(absmax / 2 ** (bits - 1), f"you divided by {2 ** (bits - 1)}; symmetric quantization stops at "
                                                  f"+{qmax} so that -{qmax} .. {qmax} is centred on 0"),
                   Slip(absmax / (2 ** bits - 1), f"you divided by {2 ** bits - 1}, the steps of the whole integer range, "
                                                  f"but that range covers 2 x {absmax:g} (from -absmax to +absmax)"),
                   Slip(2 * absmax / (2 ** bits - 1), f"you spread 2 x absmax over all {2 ** bits - 1} steps; symmetric "
                                                      f"quantization leaves {-(2 ** (bits - 1))} unused, so 0.0 is code 0: "
                                                      f"{2 * qmax} steps"),
                   Slip(absmax * qmax, f"you multiplied; the scale is the float size of one step: absmax / {qmax}"),
                   Slip(qmax / absmax, f"that is 1 / scale: quantizing multiplies by it, the scale is absmax / {qmax}"))))

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


def check_blocksize_bytes(answer: float | None, measured_bytes: int, rows: int, cols: int, blocksize: int) -> Verdict:
    """Predict-then-run: the bytes bitsandbytes' nf4 stores for a (rows x cols) weight in blocks of
    ``blocksize`` (codes + one float32 absmax per block + the 16-entry code book), against
    ``measured_bytes``, what ``quantize_4bit`` returned. Right within 0.1 % (the 64-byte code book may be
    left out).

    >>> measured = QuantSpec(4, "nf4", "group", 128).storage_bytes((1536, 576))
    >>> print(check_blocksize_bytes(measured, measured, 1536, 576, 128))  # doctest: +ELLIPSIS
    [correct] 470,080 bytes is right: ...
    """
    if blocksize not in BLOCKSIZES:
        raise LabError.bad("blocksize", blocksize, f"use one of bitsandbytes' block sizes: "
                                                   f"{', '.join(map(str, BLOCKSIZES))}")
    measured = int(measured_bytes)
    n = rows * cols
    blocks = math.ceil(n / blocksize)
    codes = math.ceil(n / 2)
    computed = QuantSpec(4, "nf4", "group", blocksize).storage_bytes((rows, cols))

    def build() -> Exercise:
        slips = [Slip(codes, f"that is the 4-bit codes alone; each block of {blocksize} also keeps its absmax as a "
                             f"float32, {4 * blocks:,} bytes more"),
                 Slip(codes + 4 * math.ceil(n / 64) + 64,
                      f"that is blocks of 64, the default; with blocksize={blocksize} there are {blocks:,} blocks, "
                      f"one float32 absmax each"),
                 Slip(codes + 2 * blocks, "the absmax is stored in float32 (4 bytes), not 16 bits"),
                 Slip(n + 4 * blocks, "one byte per weight is int8; 4-bit codes are packed two per byte"),
                 Slip(8 * measured, "that is bits, not bytes: divide by 8"),
                 *byte_unit_slips(measured)]
        return Exercise(
            "blocksize_bytes", expected=measured, rel_tol=1e-3, slip_tol=2e-3, fmt=",.0f", unit=" bytes",
            why=f"measured {measured:,} bytes: {n:,} weights x 4 bits = {codes:,} bytes, + {blocks:,} blocks of "
                f"{blocksize} x 4 bytes of absmax = {4 * blocks:,}, + the 64-byte code book = {computed:,} "
                f"({4 + 32 / blocksize:g} bits per weight)",
            hint=f"two 4-bit codes share a byte; how many blocks of {blocksize} are there, and what does each keep?",
            slips=distinct_slips(measured, slips, gap=2e-3))

    return ask(("blocksize_bytes", rows, cols, blocksize, measured), build).check(answer)


def check_skip_bytes(answer: float | None, model: torch.nn.Module, full_bytes: int) -> Verdict:
    """Predict-then-run: the bytes a 4-bit model holds (parameters + quantization state, before any forward
    pass: ``bsl.stored_weight_bytes``) when ``llm_int8_skip_modules`` leaves some linear layers in bf16.

    ``model`` is the model just loaded that way (the measurement), ``full_bytes`` the same format's bytes
    with nothing skipped (measured earlier in the lesson). Right within 0.1 %: a skipped layer also frees
    its copy of the 64-byte code book, which nobody is asked to count.
    """
    from ..measure import stored_weight_bytes

    measured = stored_weight_bytes(model)
    embed = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") else None
    # the linear layers left in 16 bits, except the output layer tied to the embedding (never quantized)
    kept = [m for m in model.modules() if type(m) is torch.nn.Linear and m.weight is not embed]
    if not kept:
        raise LabError("model has no linear layer left in 16 bits; load it with llm_int8_skip_modules naming some")
    params = sum(m.weight.numel() for m in kept)
    bf16 = sum(m.weight.numel() * m.weight.element_size() for m in kept)
    four_bit = sum(QuantSpec(4, "nf4", "group", 64).storage_bytes(tuple(m.weight.shape)) for m in kept)
    absmax = sum(4 * math.ceil(m.weight.numel() / 64) for m in kept)
    full = int(full_bytes)

    def build() -> Exercise:
        slips = [Slip(full, "that is the 4-bit model with nothing skipped; the skipped layers stay in bf16, "
                            "2 bytes per weight"),
                 Slip(full + bf16, "you added the skipped layers' bf16 bytes but kept their 4-bit bytes too: "
                                   "they are not quantized at all now"),
                 Slip(full - four_bit + 2 * bf16, "the skipped layers keep the model's dtype, bf16: 2 bytes per "
                                                  "weight, not 4 (float32)"),
                 Slip(full - four_bit + absmax + bf16, "you removed the skipped layers' 4-bit codes but not their "
                                                       "absmax: a layer left in bf16 has no absmax"),
                 Slip(bf16, "that is only the skipped layers; the rest of the model is still there, in 4 bits"),
                 Slip(full - four_bit + bf16 // 2, "a bf16 weight takes 2 bytes, not 1"),
                 *byte_unit_slips(measured)]
        return Exercise(
            "skip_bytes", expected=measured, rel_tol=1e-3, slip_tol=2e-3, fmt=",.0f", unit=" bytes",
            why=f"measured {measured:,} bytes: the 4-bit model's {full:,}, minus the {len(kept)} skipped layers' "
                f"4-bit bytes ({four_bit:,}: codes + absmax), plus their bf16 bytes ({params:,} weights x 2 = "
                f"{bf16:,})",
            hint="start from the 4-bit model's bytes measured above; what do the skipped layers take in 4 bits, and "
                 "what in bf16?",
            slips=distinct_slips(measured, slips, gap=2e-3))

    return ask(("skip_bytes", measured, full), build).check(answer)
