"""bits.neighbours (float.exposed's view: neighbours, gap, exact decimal) and rounding_stats' RMSE,
per-tensor scale and matmul output error, checked against numpy, the decimal module and sums by hand."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest
import torch

from bigsmall_lab import bits
from bigsmall_lab.views import BitLayout


@pytest.mark.parametrize("x", [0.1, 1.0, 256.0, 65504.0, 6e-8, 1e-5, -3.7, 0.0, 1234.5])
def test_float16_neighbours_agree_with_numpy_nextafter(x):
    n = bits.neighbours(x, "float16")
    stored = np.float16(x)
    assert n.stored == float(stored)
    with np.errstate(over="ignore"):  # past 65504 numpy's next value is inf, as ours
        assert n.below == float(np.nextafter(stored, np.float16(-np.inf)))
        assert n.above == float(np.nextafter(stored, np.float16(np.inf)))


@pytest.mark.parametrize("x", [0.1, 1.0, 3.0e38, 1e-45, -2.5])
def test_float32_neighbours_agree_with_numpy_nextafter(x):
    n = bits.neighbours(x, "float32")
    stored = np.float32(x)
    assert (n.below, n.above) == (float(np.nextafter(stored, np.float32(-np.inf))),
                                  float(np.nextafter(stored, np.float32(np.inf))))


def test_bfloat16_256_sits_between_255_and_258():
    # 7 mantissa bits: [128, 256) in steps of 1, [256, 512) in steps of 2
    n = bits.neighbours(256, "bf16")
    assert (n.below, n.stored, n.above, n.gap) == (255.0, 256.0, 258.0, 2.0)
    assert n.gap == bits.spacing("bfloat16", [256]).gaps[0]


def test_exact_decimal_is_every_digit_of_the_stored_value():
    n = bits.neighbours(0.1, "float32")
    assert Decimal(n.exact) == Decimal(float(np.float32(0.1)))  # exact, not the shortest repr
    assert n.exact == "0.100000001490116119384765625"
    assert bits.neighbours(70000, "bfloat16").exact == "70144"
    assert bits.neighbours(-0.0, "float16").exact == "-0"


def test_ends_of_each_format():
    assert bits.neighbours(65504, "float16").above == math.inf  # the next step is inf
    assert math.isnan(bits.neighbours(448, "float8_e4m3fn").above)  # no inf: nothing above
    inf = bits.neighbours(70000, "float16")
    assert inf.stored == math.inf and inf.below == 65504.0 and math.isnan(inf.above) and inf.exact == "inf"
    nan = bits.neighbours(math.nan, "bfloat16")
    assert math.isnan(nan.below) and math.isnan(nan.gap) and nan.exact == "nan"
    assert (bits.neighbours(-128, "int8").below, bits.neighbours(-128, "int8").above) != (None, None)
    assert math.isnan(bits.neighbours(-128, "int8").below) and bits.neighbours(-128, "int8").above == -127.0
    zero = bits.neighbours(0.0, "float16")
    assert zero.above == 2.0**-24 and zero.below == -(2.0**-24)  # the smallest subnormals


def test_rmse_and_the_per_tensor_scale_by_hand():
    w = torch.tensor([0.01, -0.02, 0.5, 0.25], dtype=torch.float64)
    plain = bits.rounding_stats(w, "int8")
    assert plain.flushed_to_zero == 1.0 and plain.scale == 1.0
    assert plain.rmse == pytest.approx(math.sqrt((0.01**2 + 0.02**2 + 0.5**2 + 0.25**2) / 4))  # all became 0
    scaled = bits.rounding_stats(w, "int8", scaled=True)
    s = 0.5 / 127  # absmax onto 127
    stored = [round(0.01 / s) * s, round(-0.02 / s) * s, 127 * s, round(0.25 / s) * s]
    assert scaled.scale == pytest.approx(s)
    assert scaled.rmse == pytest.approx(math.sqrt(sum((a - b) ** 2 for a, b in zip(stored, w.tolist())) / 4))
    assert scaled.flushed_to_zero == 0.0


def test_a_per_tensor_scale_rescues_small_weights_in_e4m3():
    w = torch.randn(128, 128, generator=torch.Generator().manual_seed(1)) * 0.02
    plain, scaled = bits.rounding_stats(w, "float8_e4m3fn"), bits.rounding_stats(w, "float8_e4m3fn", scaled=True)
    assert scaled.mean_relative_error < plain.mean_relative_error / 2  # no weight left among the subnormals
    assert scaled.rmse < plain.rmse


def test_output_error_of_a_matmul_by_hand():
    w = torch.tensor([[1.0, 2.0], [0.5, 70000.0]])
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # float16: 70000 -> inf, so an output is inf (or nan: inf x 0): the error is infinite
    assert bits.rounding_stats(w, "float16", inputs=x).output_relative_error == math.inf
    # bfloat16: 70000 -> 70144, everything else exact; x is the identity, so the outputs are W^T
    err = bits.rounding_stats(w, "bfloat16", inputs=x).output_relative_error
    assert err == pytest.approx(144 / math.sqrt(1 + 4 + 0.25 + 70000**2))
    assert bits.rounding_stats(w, "bfloat16").output_relative_error is None
    with pytest.raises(ValueError, match="cannot multiply"):
        bits.rounding_stats(w, "bfloat16", inputs=torch.ones(3, 5))


def test_bitlayout_rows_show_neighbours_gap_and_decimal():
    w = BitLayout(value="0.1", dtypes=["float16", "float8_e4m3fn"])
    fp16, e4m3 = w.rows
    assert (fp16["below"], fp16["value"], fp16["above"]) == ("0.09991455078125", "0.0999755859375", "0.10003662109375")
    assert fp16["gap"] == "6.103515625e-05" and fp16["decimal"] == "0.0999755859375"
    w.value = "448"
    assert w.rows[1]["above"] == "–"  # e4m3fn has nothing above 448
