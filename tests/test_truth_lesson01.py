"""Lesson 01's truths (issue 16): the GPU table in the units the cards are built in, the CUDA context counted
once, the longest context Mistral 7B runs at on a T4, eager attention's scores, the peak band, and the
slips of lesson 01's checkers. Each claim the lesson makes is computed here with its real input (it holds)
and with one input broken (it fails), so a claim that cannot fail would show up.

Worked numbers (published configs; torch's total_memory from estimates.GPUS' sources):
- T4: 15,095 MiB = 15,828,254,720 bytes to torch; nvidia-smi 15,360 MiB = 16,106,127,360; 16 GiB on the card.
- Mistral 7B v0.3 in bf16: 7,248,023,552 x 2 = 14,496,047,104 bytes of weights; per token 2 x 32 layers x 8 KV
  heads x 128 x 2 B = 131,072 B of KV cache and (3 x 14,336 + 2 x 4,096) x 2 B = 102,400 B of activations; the
  last position's logits 32,768 x (2 + 4) = 196,608 B; the assumed CUDA context 500,000,000 B.
  (15,828,254,720 - 14,496,047,104 - 500,000,000 - 196,608) // 233,472 = 3,563 tokens.
- Eager attention, Llama 3.1 8B at 4,096 tokens: 32 heads x 4,096^2 x (2 + 4 + 4) B + 4,096^2 x 2 B of mask.
"""

from __future__ import annotations

import math

import pytest
import torch

import bigsmall_lab as bsl
from bigsmall_lab._errors import LabError
from bigsmall_lab.estimates import (GPUS, RUNTIME_OVERHEAD, Comparison, GpuModel, activation_bytes,
                                    attention_scores_bytes, estimate, fits, longest_context)
from bigsmall_lab.exercises import (check_kv_cache_bytes, check_kv_equals_weights, check_largest_batch,
                                    check_peak_prediction, check_weights_bytes)
from bigsmall_lab.exercises import _core

MiB, GiB = 2**20, 2**30
MISTRAL_WEIGHTS = 7_248_023_552 * 2
MISTRAL_PER_TOKEN = 131_072 + 102_400
MISTRAL_LOGITS = 32_768 * (2 + 4)


@pytest.fixture(autouse=True)
def fresh_questions():
    _core._ASKED.clear()


# --- the GPU table --------------------------------------------------------------------------------

def _lesson_t4_claim(card: GpuModel) -> bool:
    """Lesson 01's claim: torch sees less than nvidia-smi, which shows less than the GiB on the card."""
    return card.usable_bytes < card.smi_bytes < card.marketed_number * GiB


def test_every_gpu_has_three_figures_a_source_and_sees_less_than_the_box():
    for card in GPUS.values():
        assert card.source and card.marketed.endswith("GB") and card.usable_bytes == card.torch_bytes
        assert card.torch_bytes <= card.smi_bytes <= card.marketed_number * GiB, card.name
    assert _lesson_t4_claim(GPUS["T4"])
    # a row typed the other way round (torch above nvidia-smi) breaks the lesson's claim
    broken = GpuModel("T4", "16 GB", 15_360, 15_360 * MiB + 1, "broken on purpose")
    assert not _lesson_t4_claim(broken)


def test_80_gb_cards_hold_gib_not_decimal_gb():
    # nvidia-smi: A100 80GB 81,920 MiB, H100 80GB HBM3 81,559 MiB; read as 80 x 10**9 they lose ~7 %
    assert GPUS["A100 80GB"].smi_mib == 81_920 and GPUS["H100"].smi_mib == 81_559
    for name in ("A100 80GB", "H100"):
        assert GPUS[name].usable_bytes > 80 * 10**9 * 1.06
    assert GPUS["T4"].smi_mib == 15_360 and GPUS["T4"].usable_bytes == 15_095 * MiB
    assert GPUS["T4"].usable_bytes > 15 * 10**9  # the old "15 GB usable" took a CUDA context off twice


def test_the_cuda_context_is_counted_once_by_the_estimate():
    e = estimate("llama-3.2-1b", seq_len=1024)
    assert e.overhead_bytes == RUNTIME_OVERHEAD.bytes
    assert e.total_bytes == e.weights_bytes + e.kv_cache_bytes + e.activation_bytes + RUNTIME_OVERHEAD.bytes
    t4 = GPUS["T4"].usable_bytes  # the whole of what torch sees, no context taken off it
    assert fits(t4, "T4") and not fits(t4 + 1, "T4")


# --- the longest context ---------------------------------------------------------------------------

def _mistral_claims(edge: int, seq_len: int = 4096) -> bool:
    """Lesson 01's two Mistral claims: fits at the edge and not one token more; the verdict at SEQ_LEN."""
    at, past, at_seq = (estimate("mistral-7b-v0.3", seq_len=n) for n in (edge, edge + 1, seq_len))
    at_seq_ok = (not at_seq.fits("T4")) if seq_len > edge else at_seq.fits("T4")
    return fits(at.weights_bytes, "T4") and at.fits("T4") and not past.fits("T4") and at_seq_ok


def test_mistral_runs_on_a_t4_up_to_the_context_counted_by_hand():
    by_hand = (GPUS["T4"].usable_bytes - MISTRAL_WEIGHTS - RUNTIME_OVERHEAD.bytes - MISTRAL_LOGITS) // MISTRAL_PER_TOKEN
    edge = longest_context("mistral-7b-v0.3", "T4")
    assert edge == by_hand == 3563
    assert _mistral_claims(edge) and _mistral_claims(edge, seq_len=2048)
    # an edge found against the old 15 GB (context subtracted twice) makes the lesson's claim fail
    wrong = longest_context("mistral-7b-v0.3", 15 * 10**9)
    assert wrong < edge and not _mistral_claims(wrong)
    assert not _mistral_claims(edge + 1)


def test_longest_context_edges_and_bad_input():
    assert longest_context("llama-3.1-8b", "T4") == 0  # its weights alone do not fit
    edge = longest_context("llama-3.2-1b", "24GB", batch_size=2, attn_implementation="eager")
    e = estimate("llama-3.2-1b", seq_len=edge, batch_size=2, attn_implementation="eager")
    assert e.fits("24GB") and not estimate("llama-3.2-1b", seq_len=edge + 1, batch_size=2,
                                           attn_implementation="eager").fits("24GB")
    assert edge < longest_context("llama-3.2-1b", "24GB", batch_size=2)  # eager's scores cost context
    with pytest.raises(LabError, match="gpu 'T5'"):
        longest_context("mistral-7b-v0.3", "T5")


# --- eager attention ---------------------------------------------------------------------------------

def _eager_by_hand(heads: int, seq: int, width: int) -> int:
    """The lesson's count: scores in the dtype + float32 copy (unless float32) + float32 softmax, and the mask."""
    return heads * seq * seq * (width + (0 if width == 4 else 4) + 4) + seq * seq * width


@pytest.mark.parametrize("dtype, width", [("bfloat16", 2), ("float32", 4)])
def test_eager_adds_the_scores_counted_by_hand(dtype, width):
    sdpa = activation_bytes("llama-3.1-8b", 4096, dtype=dtype)
    eager = activation_bytes("llama-3.1-8b", 4096, dtype=dtype, attn_implementation="eager")
    assert eager - sdpa == attention_scores_bytes("llama-3.1-8b", 4096, dtype=dtype) == _eager_by_hand(32, 4096, width)
    assert attention_scores_bytes("llama-3.1-8b", 4096, batch_size=3, dtype=dtype) == 3 * _eager_by_hand(32, 4096, width)
    # the claim fails when the count forgets the float32 softmax, or counts all 8 KV heads instead of 32
    assert eager - sdpa != _eager_by_hand(32, 4096, width) - 32 * 4096**2 * 4
    assert eager - sdpa != _eager_by_hand(8, 4096, width)


def test_the_lessons_activation_count_by_hand_holds_for_other_architectures_and_can_fail():
    for preset in ("llama-3.1-8b", "qwen2.5-7b", "mistral-7b-v0.3"):
        cfg = bsl.zoo.config_dict(preset)
        seq = 2048
        by_hand = (3 * cfg["intermediate_size"] * seq * 2 + 2 * cfg["hidden_size"] * seq * 2
                   + seq * cfg["vocab_size"] * 2)
        every = activation_bytes(preset, seq, all_logits=True)
        assert every == by_hand, preset
        assert every != by_hand - cfg["intermediate_size"] * seq * 2  # an MLP of 2 x intermediate: the claim fails


def test_bad_attn_implementation_is_named():
    for value in ("flash", None, 3):
        with pytest.raises(LabError, match="attn_implementation"):
            activation_bytes("llama-3.2-1b", 16, attn_implementation=value)
    with pytest.raises(LabError, match="attn_implementation"):
        estimate("llama-3.2-1b", attn_implementation="fused")


TINY = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=256, hidden_size=64,
            intermediate_size=128, num_hidden_layers=1, num_attention_heads=8, num_key_value_heads=2,
            max_position_embeddings=2048, tie_word_embeddings=True)


def test_eager_peaks_above_sdpa_by_the_scores_on_a_tiny_llama():
    # 8 heads x 1024^2 x (4 + 4) B in float32 + 1024^2 x 4 B of mask = 71,303,168 B of scores; the MLP is ~2 MB
    from transformers import LlamaConfig, LlamaForCausalLM

    seq = 1024
    ids = torch.randint(0, 256, (1, seq))
    peaks = {}
    for impl in ("sdpa", "eager"):
        config = LlamaConfig(**{k: v for k, v in TINY.items() if k not in ("model_type", "architectures")})
        config._attn_implementation = impl
        torch.manual_seed(0)
        model = LlamaForCausalLM(config).eval()
        with torch.no_grad():
            model(ids[:, :16], logits_to_keep=1)
            with bsl.track(impl, device="cpu") as t:
                model(ids, logits_to_keep=1)
        peaks[impl] = t.peak_bytes
    scores = attention_scores_bytes(TINY, seq, dtype="float32")
    assert scores == _eager_by_hand(8, seq, 4) == 71_303_168
    assert peaks["eager"] > peaks["sdpa"]  # the lesson's ordering claim
    measured = Comparison("scores", scores, peaks["eager"] - peaks["sdpa"])
    assert measured.matches(0.25), measured.ratio  # the lesson's tolerance on the difference
    # an estimate of the scores alone in the dtype (no float32 softmax, no copy) would fail the same check
    assert not Comparison("scores", 8 * seq * seq * 4, peaks["eager"] - peaks["sdpa"]).matches(0.25)


# --- the peak band (section 5) -----------------------------------------------------------------------

def test_the_peak_band_fails_above_and_below():
    band = (0.95, 1.25)  # the lesson's PEAK_BAND

    def holds(estimate_bytes, measured_bytes):
        return band[0] <= Comparison("peak", estimate_bytes, measured_bytes).ratio <= band[1]

    est = 365 * MiB
    assert holds(est, int(est * 1.07))       # what the lesson measures (about 1.07)
    assert not holds(est, est * 2)           # a forward pass that doubled the memory
    assert not holds(est, est // 2)          # a peak below the weights: the measurement missed the load


# --- the checkers' slips --------------------------------------------------------------------------------

def test_weights_bytes_new_slips():
    exact = 1_235_814_400 * 2  # Llama 3.2 1B, bf16
    assert "in bits" in check_weights_bytes(exact * 8, "llama-3.2-1b").slip
    assert "in MiB" in check_weights_bytes(exact / MiB, "llama-3.2-1b").slip  # 2,357.1
    layer = bsl.estimates.module_bytes("llama-3.2-1b")["model.layers.0"]
    assert layer == 60_821_504 * 2
    assert "one decoder layer" in check_weights_bytes(layer, "llama-3.2-1b").slip


def test_kv_cache_new_slips():
    exact = 17_179_869_184
    assert "in bits" in check_kv_cache_bytes(exact * 8).slip
    assert "in MiB" in check_kv_cache_bytes(16_384).slip  # 2**34 / 2**20


def test_kv_equals_weights_per_layer_slip():
    tokens = 8_030_261_248 * 2 / 131_072
    assert "one layer's KV cache" in check_kv_equals_weights(tokens * 32).slip


def test_largest_batch_nvidia_smi_slip_on_a_t4():
    # Llama 3.2 1B, 4,096 tokens: 2 x 16 x 8 x 64 x 2 B x 4,096 = 134,217,728 B per sequence
    per_seq, weights = 134_217_728, 2_471_628_800
    assert check_largest_batch((GPUS["T4"].usable_bytes - weights) // per_seq, "llama-3.2-1b", gpu="T4",
                               seq_len=4096).correct  # 99
    smi = check_largest_batch((15_360 * MiB - weights) // per_seq, "llama-3.2-1b", gpu="T4", seq_len=4096)  # 101
    assert "nvidia-smi" in smi.slip
    assert "16 x 10**9" in check_largest_batch((16 * 10**9 - weights) // per_seq, "llama-3.2-1b", gpu="T4",
                                               seq_len=4096).slip  # 100


def test_peak_prediction_right_within_15_percent_and_each_slip():
    earlier, measured = 230 * MiB, 140 * MiB  # eager peaks measured at 1,024 and 768 tokens
    args = ("bigsmall-small", 768, 1024, earlier)
    unanswered = check_peak_prediction(None, measured, *args)
    assert not unanswered.answered and "140" not in unanswered.message
    assert check_peak_prediction(140 * 1.14, measured, *args).correct
    assert not check_peak_prediction(140 * 1.2, measured, *args).correct
    _core._ASKED.clear()
    assert "with the tokens" in check_peak_prediction(230 * 0.75, measured, *args).slip  # 172.5 MiB: linear
    assert "in bytes" in check_peak_prediction(measured, measured, *args).slip
    assert "in GB or GiB" in check_peak_prediction(measured / 10**9, measured, *args).slip
    assert "in GB or GiB" in check_peak_prediction(measured / GiB, measured, *args).slip  # 7 % apart: one slip
    fused = activation_bytes("bigsmall-small", 768) / MiB  # 15.4 MiB: no scores
    assert "fused (SDPA)" in check_peak_prediction(fused, measured, *args).slip
    squared = check_peak_prediction(230 * 2.25, 700 * MiB, "bigsmall-small", 1536, 1024, earlier)  # x (1.5)^2
    assert "square of the tokens" in squared.slip
    with pytest.raises(LabError, match="measured_bytes"):
        check_peak_prediction(1, -5, *args)
