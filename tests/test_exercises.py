"""The exercises of lessons 01 and 03: each check with the right answer, each common slip, a non-number.

The right answers are worked out by hand in comments from the published configs (Llama 3.1 8B:
32 layers, 32 heads, 8 KV heads, head dim 128, 8,030,261,248 parameters; Llama 3.2 1B: 16 layers,
hidden 2048, 32 heads, 8 KV heads, head dim 64, vocab 128,256, tied embeddings, 1,235,814,400
parameters) and from IEEE 754 (float16: 10 mantissa bits, largest 65,504, smallest subnormal 2**-24).
"""

from __future__ import annotations

import math

import pytest
import torch

from bigsmall_lab import bits
from bigsmall_lab.exercises import (
    Exercise, Slip, byte_unit_slips, check_fp8_rmse_ratio, check_gap, check_kv_cache_bytes, check_kv_equals_weights,
    check_largest_batch, check_load_peak_ratio, check_stored, check_value, check_weights_bytes,
)
from bigsmall_lab.exercises import _core

W_8B = 8_030_261_248 * 2  # Llama 3.1 8B in bf16
KV_TOKEN_8B = 2 * 32 * 8 * 128 * 2  # K and V x layers x KV heads x head dim x 2 bytes = 131,072


@pytest.fixture(autouse=True)
def fresh_questions():
    """Each test starts with unasked questions (tries are remembered per question)."""
    _core._ASKED.clear()
    yield
    _core._ASKED.clear()


def assert_not_a_number(verdict):
    assert not verdict.correct and verdict.slip == "not a number" and "as a number" in verdict.message


# --- the machinery ------------------------------------------------------------------------------

def test_hint_first_then_the_answer_and_a_right_answer_resets():
    ex = Exercise("t", expected=16e9, why="8e9 x 2", hint="bytes per parameter?", fmt=",.0f", unit=" bytes",
                  slips=(Slip(8e9, "you forgot the 2 bytes"),))
    first = ex.check(8e9)
    assert first.slip == "you forgot the 2 bytes" and "Hint: bytes per parameter?" in first.message
    assert "16,000,000,000" not in first.message and not first.revealed
    second = ex.check(1)
    assert second.revealed and "The answer is 16,000,000,000 bytes" in second.message and second.slip is None
    assert ex.check(16e9).correct and ex.tries == 0


def test_non_numbers_get_one_sentence_and_infinity_is_a_number():
    ex = Exercise("t", expected=math.inf, why="overflow", hint="h")
    for answer in ("inf", [1], True, float("nan"), 1j):
        assert_not_a_number(ex.check(answer))
    assert ex.check(math.inf).correct and ex.check(torch.tensor(math.inf)).correct
    assert not ex.check(65504.0).correct  # inf is close only to itself, whatever the tolerance
    assert not Exercise("t", expected=65504.0, why="w", hint="h", rel_tol=0.5).check(math.inf).correct
    assert not ex.check(None).answered


def test_byte_unit_slips_recognise_gb_and_gib_rounded():
    gb, gib = byte_unit_slips(W_8B)
    ex = Exercise("t", expected=W_8B, why="w", hint="h", slips=(gb, gib))
    assert "in GB" in ex.check(16.06).slip  # 16,060,522,496 / 10**9, rounded
    assert "in GiB" in ex.check(14.96).slip  # / 2**30 = 14.957
    assert byte_unit_slips(0) == ()


# --- lesson 01 ----------------------------------------------------------------------------------

def test_weights_bytes_right_and_each_slip():
    exact = 1_235_814_400 * 2  # Llama 3.2 1B, bf16
    assert check_weights_bytes(exact, "llama-3.2-1b").correct
    unanswered = check_weights_bytes(None, "llama-3.2-1b")
    assert not unanswered.answered and f"{exact:,}" not in unanswered.message  # a hint, not the answer
    assert "number of parameters" in check_weights_bytes(1_235_814_400, "llama-3.2-1b").slip  # forgot x 2 bytes
    # a separate lm_head: + 128,256 x 2048 parameters
    assert "ties it to the input embedding" in check_weights_bytes(exact + 128256 * 2048 * 2, "llama-3.2-1b").slip
    # k and v with 32 heads instead of 8: + 16 layers x 2 x 2048 x (32 - 8) x 64 parameters
    no_gqa = check_weights_bytes(exact + 16 * 2 * 2048 * 24 * 64 * 2, "llama-3.2-1b")
    assert "grouped-query attention" in no_gqa.slip
    assert "RMSNorm" in check_weights_bytes(exact - 33 * 2048 * 2, "llama-3.2-1b").slip  # 2 per layer + final
    assert "4 bytes per parameter" in check_weights_bytes(exact * 2, "llama-3.2-1b").slip
    assert "in GB" in check_weights_bytes(2.47, "llama-3.2-1b").slip
    assert_not_a_number(check_weights_bytes("2471628800", "llama-3.2-1b"))


def test_weights_bytes_reveals_on_the_second_wrong_try():
    first = check_weights_bytes(12345, "llama-3.2-1b")
    assert first.slip is None and "Hint:" in first.message and "2,471,628,800" not in first.message
    second = check_weights_bytes(12345, "llama-3.2-1b")
    assert second.revealed and "2,471,628,800" in second.message


def test_kv_cache_bytes_right_and_each_slip():
    exact = KV_TOKEN_8B * 131072  # 16 GiB at 128K tokens
    assert exact == 17_179_869_184
    assert check_kv_cache_bytes(exact, "llama-3.1-8b", seq_len=131072).correct
    assert "all 32 attention heads" in check_kv_cache_bytes(exact * 4).slip
    assert "one factor 2 is missing" in check_kv_cache_bytes(exact // 2).slip  # K and V, or x 2 bytes
    assert "both factors of 2" in check_kv_cache_bytes(exact // 4).slip
    assert "one layer's cache" in check_kv_cache_bytes(exact // 32).slip
    assert "in GB" in check_kv_cache_bytes(17.18).slip and "in GiB" in check_kv_cache_bytes(16).slip
    assert_not_a_number(check_kv_cache_bytes("16 GiB"))


def test_kv_equals_weights_right_and_each_slip():
    tokens = W_8B / KV_TOKEN_8B  # 122,532.06 tokens
    assert check_kv_equals_weights(122_532).correct and check_kv_equals_weights(round(tokens, -3)).correct  # 1 %
    assert "all 32 attention heads" in check_kv_equals_weights(tokens / 4).slip
    assert "miss a factor 2" in check_kv_equals_weights(tokens * 2).slip
    assert "thousands" in check_kv_equals_weights(122.5).slip
    assert_not_a_number(check_kv_equals_weights("122K"))
    with pytest.raises(ValueError, match="sliding-window"):  # Gemma 2's cache stops growing at its window
        check_kv_equals_weights(1, "gemma-2-9b")


def test_largest_batch_right_and_each_slip():
    kv_seq = KV_TOKEN_8B * 8192  # 1 GiB per 8K-token sequence
    h100 = 81_089 * 2**20  # torch's total_memory on an H100 80GB HBM3 (GPUS' source): 85,027,979,264 bytes
    assert (h100 - W_8B) // kv_seq == 64  # 68,967,456,768 / 1,073,741,824 = 64.2
    assert check_largest_batch(64).correct
    assert "as 80 x 10**9 bytes" in check_largest_batch((80 * 10**9 - W_8B) // kv_seq).slip  # 59
    assert "nominal 80 GiB" in check_largest_batch((80 * 2**30 - W_8B) // kv_seq).slip  # 65
    assert "attention heads" in check_largest_batch((h100 - W_8B) // (4 * kv_seq)).slip  # 16
    assert "weights take their share" in check_largest_batch(h100 // kv_seq).slip  # 79
    assert "misses a factor 2" in check_largest_batch(128).slip
    assert "CUDA context" in check_largest_batch((h100 - W_8B - 500 * 10**6) // kv_seq).slip  # 63
    assert_not_a_number(check_largest_batch("64"))
    with pytest.raises(ValueError, match="gpu 'B300' is not a known GPU"):
        check_largest_batch(1, gpu="B300")


def test_check_value_keeps_its_signature_hints_then_reveals():
    assert check_value(2, 2.0, why="w", hint="h").correct
    first = check_value(0.5, 2.0, why="w", hint="h")
    assert not first.correct and "Hint: h" in first.message and not first.revealed
    assert check_value(0.5, 2.0, why="w", hint="h").revealed
    assert "Hint: h" in str(check_value(None, 2.0, why="w", hint="h"))
    assert_not_a_number(check_value("2", 2.0, why="w", hint="h"))
    assert check_value(1, 2.0, why="w2", hint="h", slips=(Slip(1, "the gap below"),)).slip == "the gap below"


# --- lesson 03 ----------------------------------------------------------------------------------

def test_gap_right_and_each_slip():
    # bf16 at 256 = 2**8: 7 mantissa bits make 128 steps per power of two, so the gap is 2**8 / 2**7 = 2
    assert check_gap(2).correct and check_gap(2.0, "bf16", 256).correct
    assert "epsilon" in check_gap(2**-7).slip  # the gap at 1.0
    assert "how many steps" in check_gap(128).slip
    assert "just below 256" in check_gap(1).slip  # [128, 256) has gap 1
    assert "float16's gap" in check_gap(0.25).slip  # 2**8 / 2**10
    assert "float32's gap" in check_gap(2**8 / 2**23).slip
    assert_not_a_number(check_gap("2"))
    with pytest.raises(ValueError, match="dtype 'int8'"):
        check_gap(1, "int8")


def test_stored_65520_and_1e_minus_8_in_float16():
    # 65,520 is halfway between 65,504 (mantissa all ones, odd) and 65,536: ties go to even -> inf
    assert check_stored(math.inf, 65520).correct
    assert "largest finite value" in check_stored(65504, 65520).slip
    assert "cannot hold 65520" in check_stored(65520, 65520).slip
    assert "bfloat16" in check_stored(65536, 65520).slip  # bf16 stores 65,536
    assert_not_a_number(check_stored("inf", 65520))
    # 1e-8 is below half of the smallest subnormal 2**-24 = 5.96e-8: it rounds to 0
    assert check_stored(0, 1e-8).correct and check_stored(-0.0, 1e-8).correct
    assert "smallest positive (subnormal)" in check_stored(5.96e-8, 1e-8).slip
    assert "smallest normal" in check_stored(6.1e-5, 1e-8).slip  # 2**-14
    assert "cannot hold 1e-08" in check_stored(1e-8, 1e-8).slip
    assert "bfloat16 stores" in check_stored(bits.decompose(1e-8, "bfloat16").value, 1e-8).slip
    assert check_stored(0.0999755859375, 0.1).correct  # 0.1 in float16
    with pytest.raises(ValueError, match="value nan"):
        check_stored(0, math.nan)


def test_load_peak_ratio_right_and_each_slip():
    # bf16 on disk, float32 in memory: the copy (4 / 2 = 2) + the mapped bf16 pages (1) = 3
    assert check_load_peak_ratio(3).correct and check_load_peak_ratio(2.9).correct
    assert "copy alone" in check_load_peak_ratio(2).slip
    assert "dtype='auto'" in check_load_peak_ratio(1).slip
    assert "meta device" in check_load_peak_ratio(4).slip
    assert_not_a_number(check_load_peak_ratio("3x"))


def test_fp8_rmse_ratio_right_and_each_slip():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0)) * 0.05
    e4m3, e5m2 = bits.rounding_stats(w, "float8_e4m3fn"), bits.rounding_stats(w, "float8_e5m2")
    ratio = e5m2.rmse / e4m3.rmse
    assert 1.5 < ratio < 2.5  # one mantissa bit fewer: about twice the step
    assert check_fp8_rmse_ratio(2, e4m3, e5m2).correct
    by_relative = e5m2.mean_relative_error / e4m3.mean_relative_error
    assert abs(by_relative - ratio) > 0.35 * ratio  # the two measures disagree on small unscaled weights
    assert "mean relative errors" in check_fp8_rmse_ratio(by_relative, e4m3, e5m2).slip
    assert "inverse" in check_fp8_rmse_ratio(1 / ratio, e4m3, e5m2).slip
    assert_not_a_number(check_fp8_rmse_ratio("e4m3", e4m3, e5m2))
    with pytest.raises(ValueError, match="e4m3"):
        check_fp8_rmse_ratio(2, e5m2, e5m2)
