"""bitsandbytes' two CPU paths for 4-bit layers, both exercised on any machine.

On a CPU with AVX512-BF16, bitsandbytes (>= 0.49) repacks each 4-bit layer at its first forward pass for a
fused kernel, storing the absmax as bfloat16; elsewhere the layout stays as loaded. The tests never depend
on which CPU runs them: the portable path is forced where the CPU would repack, and the repacked layout is
made with bitsandbytes' own conversion where the CPU would not (its bytes need no AVX512 to count).
"""

from __future__ import annotations

import pytest
import torch

import bigsmall_lab as bsl
from bigsmall_lab import bnb_formats, estimates, placement, quant, quantized, zoo
from bigsmall_lab._errors import LabError
from bigsmall_lab.estimates import cpu_packed_weights_bytes, weights_bytes
from bigsmall_lab.bnb_formats import FourBitPath, Quantization, Variant

FOUR_BIT = ["nf4", "fp4", "nf4-double"]


def load(variant):
    return bsl.load_model(dtype=torch.bfloat16, quantization_config=bnb_formats.bnb_config(variant))


def forward(model):
    with torch.no_grad():
        return model(torch.tensor([[1, 2, 3, 4]])).logits


@pytest.mark.parametrize("variant", FOUR_BIT)
def test_portable_path_keeps_the_loaded_layout_on_any_cpu(variant):
    model = load(variant)
    quantized.use_portable_4bit(model)
    forward(model)
    assert quantized.four_bit_path(model) is FourBitPath.PORTABLE
    assert bsl.stored_weight_bytes(model) == weights_bytes(zoo.TINY_DIR, "bfloat16", variant)


@pytest.mark.parametrize("variant", FOUR_BIT)
def test_the_repacked_layout_is_what_the_planner_counts(variant):
    import bitsandbytes.functional as functional
    if not hasattr(functional, "_convert_weight_packed_for_cpu"):
        pytest.skip("this bitsandbytes has one CPU layout only (no AVX512-BF16 repacking before 0.49)")
    model = load(variant)
    # bitsandbytes' own conversion, the one its forward pass calls on an AVX512-BF16 CPU: a pure tensor
    # transform, so the bytes can be counted on any CPU.
    for layer in quantized._four_bit_layers(model):
        layer.weight.data, layer.weight.quant_state = functional._convert_weight_packed_for_cpu(
            layer.weight.data, layer.weight.quant_state)
    assert quantized.four_bit_path(model) is FourBitPath.REPACKED
    packed = cpu_packed_weights_bytes(zoo.TINY_DIR, "bfloat16", variant)
    assert bsl.stored_weight_bytes(model) == packed
    # By hand: 73,728 blocks of 64 weights; nf4/fp4 save 2 bytes per block, nf4-double adds 168 bytes over them
    # (its 8-bit absmax, nested absmax and 256-entry code book per layer go; a 4-byte offset per layer stays).
    by_hand = weights_bytes(zoo.TINY_DIR, "bfloat16", "nf4") - 73_728 * 2 + (42 * 4 if variant == "nf4-double" else 0)
    assert packed == by_hand
    with pytest.raises(LabError, match="already repacked"):
        quantized.use_portable_4bit(model)


@pytest.mark.parametrize("variant", ["nf4", "int8"])
def test_the_natural_path_matches_its_own_estimate(variant):
    model = load(variant)
    before = bsl.stored_weight_bytes(model)
    path = quantized.four_bit_path(model)
    forward(model)
    after = bsl.stored_weight_bytes(model)
    if variant == "int8":
        assert path is FourBitPath.NONE and after == before
        return
    expected_path = FourBitPath.PENDING if quantized.avx512_bf16() else FourBitPath.PORTABLE
    assert path is expected_path
    if quantized.four_bit_path(model) is FourBitPath.REPACKED:
        assert after == cpu_packed_weights_bytes(zoo.TINY_DIR, "bfloat16", variant) < before
    else:
        assert after == before == weights_bytes(zoo.TINY_DIR, "bfloat16", variant)


def test_both_paths_compute_the_same_layer_within_bf16_rounding():
    """Where this CPU has AVX512-BF16 the fused kernel runs too; the two paths must agree to bf16 precision."""
    if not quantized.avx512_bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes has only the portable path here")
    fused, portable = load("nf4"), load("nf4")
    quantized.use_portable_4bit(portable)
    a, b = forward(fused).float(), forward(portable).float()
    assert quantized.four_bit_path(fused) is FourBitPath.REPACKED
    # bf16 has 8 bits of precision: the kernels round partial sums in another order.
    torch.testing.assert_close(a, b, atol=0.05, rtol=0.02)


def test_the_cpu_packed_estimate_is_the_plain_one_for_int8_and_unquantized():
    for q in (None, "int8"):
        assert cpu_packed_weights_bytes("llama-3.2-1b", "bfloat16", q) == weights_bytes("llama-3.2-1b", "bfloat16", q)


# --- one home for bitsandbytes' format names (issue 19) -------------------------------------------------

def test_the_format_names_have_one_home_and_every_other_name_reads_it():
    assert estimates.Quantization is Quantization  # the estimator re-exports the one enum
    assert [v.value for v in Variant] == ["bf16", *(q.value for q in Quantization)]
    assert [v.quantization for v in Variant] == [None, *Quantization]
    assert {quant.Scheme.NF4.value, quant.Scheme.FP4.value} == {Quantization.NF4.value, Quantization.FP4.value}
    # every format's config is named back the same way by the estimator's reading of it
    assert [bnb_formats.estimator_name(bnb_formats.bnb_config(q)) for q in Quantization] == [q.value for q in Quantization]
    # the old import paths still work, and give the same objects
    assert quantized.bnb_config is bnb_formats.bnb_config and quantized.Variant is Variant


@pytest.mark.parametrize("quantization", list(Quantization))
def test_the_placement_planner_builds_the_config_from_pretrained_would_get(quantization):
    # what placement built before bnb_formats existed: transformers' default compute dtype (float32)
    from transformers import BitsAndBytesConfig

    if quantization is Quantization.INT8:
        before = BitsAndBytesConfig(load_in_8bit=True)
    else:
        before = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4" if quantization is Quantization.FP4
                                    else "nf4", bnb_4bit_use_double_quant=quantization is Quantization.NF4_DOUBLE)
    assert placement._quantizer(quantization).quantization_config.to_dict() == before.to_dict()


def test_a_config_is_asked_for_by_enum_or_text_and_a_typo_is_one_sentence():
    assert bnb_formats.bnb_config(Quantization.FP4).bnb_4bit_quant_type == "fp4"
    assert bnb_formats.bnb_config(Variant.BF16) is None
    with pytest.raises(LabError, match="variant 'nf5' is not known; use one of: bf16, int8, nf4, fp4, nf4-double"):
        bnb_formats.bnb_config("nf5")
