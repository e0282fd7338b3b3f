"""Lessons 04a and 04b's exercises: right answers (rounded as learners round them) accepted, and every slip
recognised with its own value and named. Values worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

import bigsmall_lab as bsl
from bigsmall_lab import bnb_formats, exercises
from bigsmall_lab._errors import LabError
from bigsmall_lab.exercises import _lesson04
from bigsmall_lab.quant import QuantSpec


def sig3(x: float) -> float:
    return float(f"{x:.3g}")


@pytest.fixture(autouse=True)
def fresh_questions():
    # each test starts with unanswered questions (tries are counted per question across calls)
    _lesson04_keys = [k for k in exercises._core._ASKED if isinstance(k, tuple) and k[0] in
                      ("scale", "zero_point", "4bit_bytes", "blocksize_bytes", "skip_bytes")]
    for k in _lesson04_keys:
        del exercises._core._ASKED[k]


# --- 04a: the scale -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("absmax", [2.5625, 2.54, 1.0, 1.27, 0.1234, 7.77, 12.7, 0.001])
def test_a_scale_rounded_to_three_significant_figures_is_right(absmax):
    exact = absmax / 127
    assert exercises.check_scale(sig3(exact), absmax=absmax).correct
    assert exercises.check_scale(exact, absmax=absmax).correct


def test_the_lessons_scale_rounded_is_right_and_the_old_tolerance_was_too_tight():
    # max |w| of model.layers.3.mlp.up_proj is 2.5625: 2.5625 / 127 = 0.0201772, written 0.0202 (0.11 % away)
    assert exercises.check_scale(0.0202, absmax=2.5625).correct
    assert abs(0.0202 - 2.5625 / 127) / (2.5625 / 127) > 1e-3  # what the 0.1 % tolerance rejected
    assert not exercises.check_scale(0.0203, absmax=2.5625).correct  # one unit off in the third figure


def test_sig_fig_tolerance_is_half_a_unit_of_the_third_figure():
    assert _lesson04.sig_fig_tolerance(0.020177) == pytest.approx(0.00005 / 0.020177, rel=1e-6)
    assert _lesson04.sig_fig_tolerance(9.99) == pytest.approx(0.005 / 9.99, rel=1e-6)
    assert _lesson04.sig_fig_tolerance(0.0) == 0.0


@pytest.mark.parametrize("value, said", [
    (2.5625 / 128, "divided by 128"),             # 0.0200195: the whole int8 range's half, 128
    (2.5625 / 255, "divided by 255"),             # 0.0100490: steps of the whole range, for absmax alone
    (2 * 2.5625 / 255, "2 x absmax over all 255"),  # 0.0200980: (max - min) / 255, asymmetric thinking
    (2.5625 * 127, "multiplied"),                 # 325.4375
    (127 / 2.5625, "1 / scale"),                  # 49.5610
    (sig3(2.5625 / 128), "divided by 128"),       # 0.0200, as a learner writes it
    (sig3(2.5625 / 255), "divided by 255"),       # 0.0100
])
def test_scale_slips_are_named(value, said):
    verdict = exercises.check_scale(value, absmax=2.5625)
    assert not verdict.correct and verdict.slip and said in verdict.slip, verdict


# --- 04a: the zero-point ------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, said", [
    (0, "symmetric"),           # 0.0 is code 0 only when the range is centred
    (191, "unsigned"),          # [-3, 1] in int8: scale 4 / 255; 0.0 is 191.25 steps above -3: unsigned 191
    (63.25, "round it"),        # -128 + 191.25, not rounded
    (-63, "sign is flipped"),   # the right answer is -128 + 191 = 63
])
def test_zero_point_slips_are_named(value, said):
    assert exercises.check_zero_point(63, low=-3.0, high=1.0).correct
    verdict = exercises.check_zero_point(value, low=-3.0, high=1.0)
    assert not verdict.correct and verdict.slip and said in verdict.slip, verdict


# --- 04a: bytes of a 4-bit layer ----------------------------------------------------------------------------

@pytest.mark.parametrize("value, said", [
    (442_368, "codes alone"),         # 1536 x 576 / 2
    (884_736, "int8"),                # one byte per weight
    (442_368 + 2 * 13_824, "16 bits"),  # absmax in bf16
    (2 * 884_736, "bf16"),
    (4 * 884_736, "bits"),            # 4 bits per weight, counted as bytes
])
def test_4bit_bytes_slips_are_named(value, said):
    assert exercises.check_4bit_bytes(442_368 + 4 * 13_824 + 64, 1536, 576).correct
    verdict = exercises.check_4bit_bytes(value, 1536, 576)
    assert not verdict.correct and verdict.slip and said in verdict.slip, verdict


# --- 04a: change the block size, predict, measure -----------------------------------------------------------

def measured_nf4_bytes(rows: int, cols: int, blocksize: int) -> int:
    import bitsandbytes.functional as F

    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0))
    return bnb_formats.bnb_4bit_bytes(*F.quantize_4bit(w, blocksize=blocksize, quant_type="nf4"))


@pytest.mark.parametrize("blocksize", [32, 64, 128, 256, 4096])
def test_bitsandbytes_stores_what_the_planner_counts(blocksize):
    assert measured_nf4_bytes(1536, 576, blocksize) == QuantSpec(4, "nf4", "group", blocksize).storage_bytes((1536, 576))


def test_blocksize_prediction_is_checked_against_the_measurement():
    # blocks of 128 over 1536 x 576: 442,368 code bytes + 6,912 x 4 absmax bytes + 64 = 470,080
    measured = measured_nf4_bytes(1536, 576, 128)
    assert measured == 470_080
    check = exercises.check_blocksize_bytes
    assert check(470_080, measured, 1536, 576, 128).correct
    assert check(470_016, measured, 1536, 576, 128).correct  # without the code book: within a thousandth
    assert not check(None, measured, 1536, 576, 128).answered


@pytest.mark.parametrize("value, said", [
    (442_368, "codes alone"),                  # forgot the absmax
    (442_368 + 4 * 13_824 + 64, "blocks of 64"),  # kept the default block size: 497,728
    (442_368 + 2 * 6_912, "16 bits"),          # absmax in bf16
    (884_736 + 4 * 6_912, "int8"),             # one byte per weight
    (8 * 470_080, "bits, not bytes"),          # 3,760,640
    (470_080 / 1e9, "GB"),
    (470_080 / 2 ** 30, "GiB"),
])
def test_blocksize_slips_are_named(value, said):
    verdict = exercises.check_blocksize_bytes(value, 470_080, 1536, 576, 128)
    assert not verdict.correct and verdict.slip and said in verdict.slip, verdict


def test_blocksize_must_be_one_bitsandbytes_accepts():
    with pytest.raises(LabError, match="^blocksize 100"):
        exercises.check_blocksize_bytes(1, 1, 1536, 576, 100)


# --- 04b: leave layers in bf16, predict, measure ------------------------------------------------------------

@pytest.fixture(scope="module")
def skip_models():
    from transformers import BitsAndBytesConfig

    def config(skip):
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                                  llm_int8_skip_modules=skip)

    full = bsl.load_model("bigsmall-tiny", dtype=torch.bfloat16, quantization_config=config(None))
    partly = bsl.load_model("bigsmall-tiny", dtype=torch.bfloat16, quantization_config=config(["lm_head", "down_proj"]))
    return bsl.stored_weight_bytes(full), partly


# bigsmall-tiny: 6 layers, down_proj 256 x 768 = 196,608 weights each, 1,179,648 in all.
# In nf4 one down_proj takes 98,304 code bytes + 3,072 x 4 absmax bytes = 110,592 (+ 64 for its code book);
# in bf16 393,216 bytes.
DOWN = 6 * 196_608
DOWN_NF4 = 6 * (98_304 + 4 * 3_072 + 64)
DOWN_BF16 = 2 * DOWN


def test_skip_prediction_from_the_4bit_bytes_is_right(skip_models):
    full, partly = skip_models
    measured = bsl.stored_weight_bytes(partly)
    by_hand = full - DOWN_NF4 + DOWN_BF16
    assert abs(measured - by_hand) <= 1e-3 * measured
    assert exercises.check_skip_bytes(by_hand, partly, full).correct
    assert exercises.check_skip_bytes(full - 6 * (98_304 + 4 * 3_072) + DOWN_BF16, partly, full).correct  # no code books


@pytest.mark.parametrize("slip, said", [
    (lambda full: full, "nothing skipped"),
    (lambda full: full + DOWN_BF16, "kept their 4-bit bytes too"),
    (lambda full: full - DOWN_NF4 + 2 * DOWN_BF16, "not 4 (float32)"),
    (lambda full: full - DOWN_NF4 + 6 * 4 * 3_072 + DOWN_BF16, "not their absmax"),
    (lambda full: DOWN_BF16, "only the skipped layers"),
    (lambda full: full - DOWN_NF4 + DOWN, "2 bytes, not 1"),
    (lambda full: (full - DOWN_NF4 + DOWN_BF16) / 1e9, "GB"),
])
def test_skip_slips_are_named(skip_models, slip, said):
    full, partly = skip_models
    verdict = exercises.check_skip_bytes(slip(full), partly, full)
    assert not verdict.correct and verdict.slip and said in verdict.slip, verdict


def test_skip_needs_a_layer_left_in_bf16():
    model = bsl.load_model("bigsmall-tiny", dtype=torch.bfloat16, quantization_config=bnb_formats.bnb_config("nf4"))
    with pytest.raises(LabError, match="^model has no linear layer left"):
        exercises.check_skip_bytes(1, model, 1)
    assert math.isfinite(bsl.stored_weight_bytes(model))
