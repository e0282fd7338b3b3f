"""Tests of bigsmall_lab.bits against torch's own conversions and bit patterns.

The exhaustive tests walk every bit pattern of the 16- and 8-bit formats: the reference values come
from one vectorised ``tensor.view(dtype)`` per format, the code under test is called per pattern.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bigsmall_lab._errors import LabError
from bigsmall_lab.bits import (
    FORMATS, FloatBits, compose, decompose, format_info, from_bits, parse_value, spacing,
)

FLOATS = ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
TORCH = {name: getattr(torch, name) for name in FORMATS}


def same(a: float, b: float) -> bool:
    """Equal as stored values: nan equals nan, and -0.0 differs from 0.0."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def torch_stores(value: float, name: str) -> float:
    return torch.tensor([value], dtype=torch.float64).to(TORCH[name]).to(torch.float64).item()


def reference_kind(value: float, name: str) -> str:
    if not TORCH[name].is_floating_point:
        return "zero" if value == 0 else "integer"
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf"
    if value == 0:
        return "zero"
    return "subnormal" if abs(value) < torch.finfo(TORCH[name]).tiny else "normal"


def value_from_fields(b: FloatBits) -> float:
    """The IEEE formula, written independently of the code under test."""
    info = format_info(b.dtype)
    if not info.is_float:
        return -(2.0 ** info.mantissa_bits) * b.sign + b.mantissa
    fraction = b.mantissa / 2**info.mantissa_bits
    if b.exponent == 0:
        return (-1) ** b.sign * 2.0 ** (1 - info.bias) * fraction
    return (-1) ** b.sign * 2.0 ** (b.exponent - info.bias) * (1 + fraction)


# --- exhaustive: every pattern of every format up to 16 bits ------------------------------------

@pytest.mark.parametrize("name", ["float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "int8", "uint8"])
def test_every_bit_pattern_round_trips_and_agrees_with_torch(name):
    width = torch.iinfo(TORCH[name]).bits if not TORCH[name].is_floating_point else torch.finfo(TORCH[name]).bits
    raw = {16: torch.int16, 8: torch.uint8}[width]
    # All patterns 0 .. 2**width - 1, built in the raw integer dtype (int16 wraps above 32767).
    patterns = torch.arange(2**width, dtype=torch.int64)
    signed = torch.where(patterns >= 2 ** (width - 1), patterns - 2**width, patterns) if raw.is_signed else patterns
    reference = signed.to(raw).view(TORCH[name]).to(torch.float64).tolist()
    kinds = {}
    for pattern, expected in zip(patterns.tolist(), reference):
        bits = format(pattern, f"0{width}b")
        b = from_bits(bits, name)
        assert b.bits == bits
        assert (b.sign << (width - 1) | b.exponent << format_info(name).mantissa_bits | b.mantissa) == pattern
        assert same(b.value, expected), (bits, b.value, expected)
        assert same(compose(bits, name), expected)
        assert b.kind == reference_kind(expected, name), (bits, b.kind)
        if b.kind != "nan" and b.kind != "inf":
            assert same(value_from_fields(b), expected), bits
        back = decompose(expected, name)
        if b.kind == "nan":  # nan payloads are not kept: converting nan gives torch's one nan
            assert back.kind == "nan"
        else:
            assert back.bits == bits and same(back.value, expected) and back.error == 0.0
        kinds[b.kind] = kinds.get(b.kind, 0) + 1
    if name == "float8_e4m3fn":  # no inf; only S.1111.111 is nan; 2 zeros; 14 subnormals
        assert kinds == {"zero": 2, "subnormal": 14, "normal": 238, "nan": 2}
    if name == "float8_e5m2":  # IEEE-style: 2 inf, 6 nan
        assert kinds == {"zero": 2, "subnormal": 6, "normal": 240, "inf": 2, "nan": 6}
    if name == "float16":
        assert kinds == {"zero": 2, "subnormal": 2046, "normal": 61440, "inf": 2, "nan": 2046}


# --- property tests -----------------------------------------------------------------------------

@settings(max_examples=500, deadline=None)
@given(st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True))
def test_float32_holds_every_float32_bitwise(x):
    b = decompose(x, "float32")
    if math.isnan(x):
        assert b.kind == "nan" and b.error == 0.0
    else:
        assert b.bits == format(struct.unpack(">I", struct.pack(">f", x))[0], "032b")  # read by struct, not torch
        assert same(b.value, x) and b.error == 0.0
    assert same(compose(b.bits, "float32"), b.value)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True), st.sampled_from(FLOATS))
def test_stored_value_is_torchs_conversion(x, name):
    b = decompose(x, name)
    assert same(b.value, torch_stores(x, name))
    assert same(compose(b.bits, name), b.value)
    assert b.kind == reference_kind(b.value, name)
    assert same(b.error, 0.0 if same(b.value, x) or (math.isnan(x) and math.isnan(b.value)) else b.value - x)


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["int8", "uint8"]))
def test_integers_round_half_to_even_and_clamp(x, name):
    low, high = (-128, 127) if name == "int8" else (0, 255)
    expected = 0 if math.isnan(x) else round(min(max(x, low), high))  # round() is half-to-even
    b = decompose(x, name)
    assert b.value == expected and b.kind == ("zero" if expected == 0 else "integer")
    assert compose(b.bits, name) == expected


# --- the lesson's facts -------------------------------------------------------------------------

def test_70000_overflows_float16_but_survives_in_bfloat16():
    assert decompose(70000, "float16").kind == "inf"
    assert decompose(70000, "float16").error == math.inf
    assert decompose(70000, "bfloat16").value == 70144.0
    assert decompose(70000, "bfloat16").error == 144.0
    assert decompose(70000, "float32").value == 70000.0


def test_one_plus_two_to_minus_eight_vanishes_in_bfloat16_only():
    assert decompose(1 + 2**-8, "bfloat16").value == 1.0
    assert decompose(1 + 2**-8, "float16").value == 1 + 2**-8
    assert decompose(1 + 2**-7, "bfloat16").value == 1 + 2**-7


@pytest.mark.parametrize(("name", "fields", "bias"), [
    ("float32", (1, 8, 23), 127), ("float16", (1, 5, 10), 15), ("bfloat16", (1, 8, 7), 127),
    ("float8_e4m3fn", (1, 4, 3), 7), ("float8_e5m2", (1, 5, 2), 15),
])
def test_field_widths_and_bias(name, fields, bias):
    info = format_info(name)
    assert (info.sign_bits, info.exponent_bits, info.mantissa_bits) == fields
    assert info.bias == bias
    assert sum(fields) == info.bits


@pytest.mark.parametrize("name", FLOATS)
def test_format_info_matches_torch_finfo(name):
    info, fi = format_info(name), torch.finfo(TORCH[name])
    assert (info.bits, info.max, info.min, info.smallest_normal, info.eps) == (fi.bits, fi.max, fi.min, fi.tiny, fi.eps)
    assert info.has_nan and info.is_float
    assert info.has_inf == (name != "float8_e4m3fn")
    # smallest subnormal is pattern 0...01; largest finite is what 1e300 saturates or rounds below
    assert info.smallest_subnormal == compose("0" * (info.bits - 1) + "1", name)
    assert info.max == float(torch.tensor(fi.max, dtype=torch.float64).to(TORCH[name]).item())


@pytest.mark.parametrize("name", ["int8", "uint8"])
def test_format_info_matches_torch_iinfo(name):
    info, ii = format_info(name), torch.iinfo(TORCH[name])
    assert (info.bits, info.min, info.max) == (ii.bits, ii.min, ii.max)
    assert info.exponent_bits == 0 and info.sign_bits + info.mantissa_bits == 8
    assert (info.bias, info.eps, info.smallest_normal, info.has_inf, info.has_nan) == (None, None, None, False, False)


def test_e4m3fn_saturates_where_e5m2_overflows():
    # measured with torch 2.13 on CPU: e4m3fn has no inf and torch clamps to +-448
    for x in (449.0, 500.0, 1e30, math.inf):
        assert decompose(x, "float8_e4m3fn").value == 448.0
        assert decompose(-x, "float8_e4m3fn").value == -448.0
    assert decompose(math.inf, "e4m3").error == -math.inf
    assert decompose(math.nan, "e4m3").bits == "01111111"
    assert decompose(57344, "float8_e5m2").value == 57344.0
    assert decompose(61440, "float8_e5m2").kind == "inf"  # halfway to the next binade: ties to even is inf


def test_torch_rounds_float64_through_float32():
    # a single rounding gives 1 + 2**-10 (numpy does that); torch goes float64 -> float32 -> float16
    # and the first rounding leaves an exact tie, which the second rounds to even: 1.0
    x = 1 + 2**-11 + 2**-40
    assert float(np.float16(x)) == 1 + 2**-10
    assert decompose(x, "float16").value == 1.0
    assert decompose(x, "float16").value == torch_stores(float(np.float32(x)), "float16")


def test_integer_formats_store_like_a_quantizer():
    cases = {2.5: 2, 3.5: 4, -2.5: -2, 127.6: 127, 300: 127, -300: -128, math.inf: 127, -math.inf: -128,
             math.nan: 0}
    for x, expected in cases.items():
        assert decompose(x, "int8").value == expected, x
    assert decompose(-1, "uint8").value == 0 and decompose(1000, "uint8").value == 255
    b = decompose(-1, "int8")
    assert (b.bits, b.sign, b.exponent, b.mantissa, b.kind) == ("11111111", 1, 0, 127, "integer")
    assert decompose(-128, "int8").bits == "10000000"


def test_signed_zero_keeps_its_sign_bit():
    for name in FLOATS:
        b = decompose(-0.0, name)
        assert b.bits[0] == "1" and b.kind == "zero" and same(b.value, -0.0), name


# --- spacing ------------------------------------------------------------------------------------

def test_spacing_is_the_ulp_and_doubles_at_powers_of_two():
    assert spacing("float16", [1.0]).gaps == (2**-10,)
    assert spacing("bfloat16", [1.0, 2.0, 4.0]).gaps == (2**-7, 2**-6, 2**-5)
    assert spacing("float32", [1.0]).gaps == (2**-23,)
    assert spacing("int8", [0.0, 1.0, 100.0, 127.0, 128.0]).gaps[:4] == (1.0, 1.0, 1.0, 1.0)
    assert math.isnan(spacing("int8", [128.0]).gaps[0])
    assert spacing("float8_e4m3fn", [0.0]).gaps == (format_info("e4m3").smallest_subnormal,)


@pytest.mark.parametrize(("name", "np_dtype"), [("float16", np.float16), ("float32", np.float32)])
def test_spacing_agrees_with_numpy(name, np_dtype):
    magnitudes = np.concatenate([np.geomspace(1e-40, 6e4, 997), [0.0, 1.0, 1024.0, 65504.0]])
    s = spacing(name, magnitudes.tolist())
    for m, gap in zip(magnitudes, s.gaps):
        stored = decompose(float(m), name).value
        expected = float(np.spacing(np_dtype(stored))) if stored < s.max_finite else s.gap_at_max
        assert gap == expected, (m, gap, expected)


def test_spacing_ends_at_the_largest_finite_value():
    assert (spacing("float16", []).max_finite, spacing("float16", []).gap_at_max) == (65504.0, 32.0)
    assert spacing("float8_e4m3fn", []).gap_at_max == 32.0
    assert spacing("float8_e5m2", []).gap_at_max == 8192.0
    assert spacing("bfloat16", []).gap_at_max == 2.0**120
    assert spacing("float16", [65504.0]).gaps == (32.0,)
    assert math.isnan(spacing("float16", [70000.0]).gaps[0])
    assert spacing("bfloat16", [70000.0]).gaps == (512.0,)


def test_bfloat16_trades_precision_for_range():
    bf16, fp16 = spacing("bfloat16", [1.0, 1000.0]), spacing("float16", [1.0, 1000.0])
    assert all(b > f for b, f in zip(bf16.gaps, fp16.gaps))  # coarser everywhere both exist
    assert bf16.max_finite > 1e38 > 1e5 > fp16.max_finite  # but reaches float32's range
    assert format_info("bfloat16").exponent_bits == format_info("float32").exponent_bits


# --- bad input: clear errors, never an error for a value ----------------------------------------

@pytest.mark.parametrize("function", [lambda d: decompose(1.0, d), lambda d: compose("0" * 8, d),
                                      format_info, lambda d: spacing(d, [1.0])])
@pytest.mark.parametrize("bad", ["bf32", "int4", "nf4"])
def test_unknown_dtype_names_dtype_and_lists_the_allowed(function, bad):
    with pytest.raises(ValueError) as excinfo:
        function(bad)
    message = str(excinfo.value)
    # bf32 is no format at all; the packed 4-bit formats exist but have no torch dtype to show bits of
    assert message.startswith(f"dtype {bad!r} is not known" if bad == "bf32" else f"dtype {bad!r} is not allowed here")
    assert all(name in message for name in FORMATS) and isinstance(excinfo.value, LabError)


@pytest.mark.parametrize("bits", ["0101", "0" * 17, "0011110000000002", "00111100 0000000x", ""])
def test_bad_bit_strings_raise_one_clear_sentence(bits):
    with pytest.raises(ValueError) as excinfo:
        compose(bits, "float16")
    message = str(excinfo.value)
    assert message.startswith(f"bits {bits!r}") and "exactly 16 characters '0' or '1'" in message
    assert message.count(". ") == 0


def test_separators_are_allowed_in_bit_strings():
    assert compose("0 01111 0000000000", "float16") == compose("0_01111_0000000000", "float16") == 1.0


def test_wrong_types_raise_one_sentence_naming_the_argument():
    with pytest.raises(LabError, match="^value '70000' is not a real number; use a real number"):
        decompose("70000", "float16")
    with pytest.raises(LabError, match="^bits 10 is not a string"):
        compose(0b1010, "float16")


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("x", [math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0, 10**400, -(10**400)])
def test_extreme_values_are_shown_as_stored_never_raised(name, x):
    b = decompose(x, name)
    assert same(compose(b.bits, name), b.value)
    assert len(b.bits) == format_info(name).bits


def test_torch_dtypes_and_aliases_are_accepted():
    assert decompose(1.0, torch.bfloat16) == decompose(1.0, "bf16") == decompose(1.0, "bfloat16")


# --- parse_value --------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("70000", 70000.0), ("70_000", 70000.0), (" 1e-3 ", 1e-3), ("-0.0", -0.0), ("1 + 2**-8", 1 + 2**-8),
    ("2**-149", 2.0**-149), ("1/3", 1 / 3), ("-inf", -math.inf), ("nan", math.nan), ("2**2000", math.inf),
    ("-2**2001", -math.inf), ("1e400", math.inf),
])
def test_parse_value(text, expected):
    assert same(parse_value(text), expected)


@pytest.mark.parametrize("text", ["", "7OOOO", "x", "1/0", "__import__('os')", "(-8)**0.5", "True", "[1]"])
def test_parse_value_rejects_non_numbers_with_a_hint(text):
    with pytest.raises(ValueError, match=r"^text .* is not a number .*type e\.g\. 70000"):
        parse_value(text)
