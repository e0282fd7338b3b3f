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
from bigsmall_lab import quantized, zoo
from bigsmall_lab._errors import LabError
from bigsmall_lab.estimates import cpu_packed_weights_bytes, weights_bytes
from bigsmall_lab.quantized import FourBitPath

FOUR_BIT = ["nf4", "fp4", "nf4-double"]


def load(variant):
    return bsl.load_model(dtype=torch.bfloat16, quantization_config=quantized.bnb_config(variant))


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
