"""Lessons 04a and 04b tell the truth: their claims fail when what they state is false (each tested by breaking
its input), the matmul path they print comes from what bitsandbytes really dispatches (both 4-bit CPU paths
exercised on any machine), and no claim hides where it cannot run. No test depends on this CPU's features."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch

import bigsmall_lab as bsl
from bigsmall_lab import bnb_formats, quality, quantized
from bigsmall_lab._errors import ClaimFailed, LabError
from bigsmall_lab.quant import QuantSpec
from bigsmall_lab.bnb_formats import FourBitPath

ROOT = Path(__file__).resolve().parent.parent
LESSONS = {stem: ROOT / "lessons" / f"{stem}.ipynb" for stem in ("04a_quantization_maps", "04b_bitsandbytes")}


def code_cells(stem: str) -> list[str]:
    nb = json.loads(LESSONS[stem].read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def cell_with(stem: str, text: str) -> str:
    found = [c for c in code_cells(stem) if text in c]
    assert len(found) == 1, f"{stem}: {len(found)} code cells hold {text!r}"
    return found[0]


# --- the old spelling load_in_8bit (04b, section 1) ----------------------------------------------------------

# the lesson's condition, word for word (checked against the notebook below)
REFUSED = 'refused is not None and "load_in_8bit" in refused'


def refused_claim(refused):
    bsl.claim(eval(REFUSED, {"refused": refused}), "transformers refuses from_pretrained(..., load_in_8bit=True)",
              measured=refused)


def test_the_refusal_claim_runs_whatever_transformers_does():
    # It used to sit inside `except TypeError:`: had transformers accepted the keyword, nothing would have run.
    cell = cell_with("04b_bitsandbytes", "rejected_keyword(")
    assert REFUSED in cell and "except" not in cell


def test_the_refusal_claim_holds_for_load_in_8bit_and_fails_for_an_accepted_keyword():
    refused = quantized.rejected_keyword("bigsmall-tiny", load_in_8bit=True)
    assert refused.startswith("TypeError") and "load_in_8bit" in refused
    refused_claim(refused)
    accepted = quantized.rejected_keyword("bigsmall-tiny", dtype=torch.float32)  # the input broken: a valid keyword
    assert accepted is None
    with pytest.raises(ClaimFailed, match="load_in_8bit"):
        refused_claim(accepted)
    with pytest.raises(LabError, match="^kwargs is empty"):
        quantized.rejected_keyword("bigsmall-tiny")


# --- int8 against 4-bit, beyond the intervals (04b, section 3) -------------------------------------------------

KL_CLAIM = 'kl["int8"].high < min(kl["nf4"].low, kl["fp4"].low)'


def kl_claim(kl):
    bsl.claim(eval(KL_CLAIM, {"kl": kl}), "int8 moves the predictions less than nf4 and fp4, beyond their 95% intervals")


def fake_agreements(noise: dict[str, float]) -> dict[str, quality.Interval]:
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (1, 513))
    ref = torch.log_softmax(2 * torch.randn(1, 512, 100), -1)
    return {name: quality.agreement(ref, torch.log_softmax(ref + s * torch.randn_like(ref), -1), ids).kl_interval
            for name, s in noise.items()}


def test_the_kl_claim_holds_when_int8_is_closer_and_fails_when_it_is_not():
    assert KL_CLAIM in cell_with("04b_bitsandbytes", "kl_interval")
    kl_claim(fake_agreements({"int8": 0.1, "nf4": 0.5, "fp4": 0.7}))
    with pytest.raises(ClaimFailed):
        kl_claim(fake_agreements({"int8": 0.5, "nf4": 0.1, "fp4": 0.7}))  # int8 noisier than nf4
    with pytest.raises(ClaimFailed):
        kl_claim(fake_agreements({"int8": 0.3, "nf4": 0.3, "fp4": 0.7}))  # overlapping intervals: not shown


# --- the matmul path (04b, section 4) --------------------------------------------------------------------------

def test_matmul_path_names_both_4bit_cpu_paths_and_the_int8_kernels():
    portable = bnb_formats.matmul_path("4-bit", "cpu", FourBitPath.PORTABLE)
    assert not portable.fused and "dequantize_4bit" in portable.kernel
    fused = bnb_formats.matmul_path("4-bit", "cpu", FourBitPath.REPACKED, quant_type="fp4")
    assert fused.fused and "gemv_4bit_inference_cpu_fp4_bf16" in fused.kernel
    assert "kernels-community" in bnb_formats.matmul_path("4-bit", "cpu", "avx512-bf16, repacked",
                                                        cpu_hub_kernel=True).kernel
    assert "torch._int_mm" in bnb_formats.matmul_path("int8", "cpu", int8_integer=True).kernel
    assert "as float32" in bnb_formats.matmul_path("int8", "cpu", int8_integer=False).kernel
    assert "CUDA" in bnb_formats.matmul_path("int8", "cuda:0").kernel
    assert "heuristic" in bnb_formats.matmul_path("4-bit", "cuda").steps
    for bad in (dict(fmt="int4"), dict(fmt="int8", device="mps"), dict(fmt="4-bit", quant_type="int4")):
        with pytest.raises(LabError):
            bnb_formats.matmul_path(**{"fmt": "4-bit", **bad})


def forward(model):
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3, 4]]))


def test_the_portable_path_is_read_as_dequantize_then_multiply():
    model = bsl.load_model("bigsmall-tiny", dtype=torch.bfloat16, quantization_config=bnb_formats.bnb_config("nf4"))
    quantized.use_portable_4bit(model)
    forward(model)
    path = quantized.model_matmul_path(model)
    assert (path.fmt, path.fused) == ("4-bit", False)


def test_the_repacked_path_is_read_as_fused():
    functional = pytest.importorskip("bitsandbytes.functional")
    if not hasattr(functional, "_convert_weight_packed_for_cpu"):
        pytest.skip("this bitsandbytes has one CPU layout only")
    model = bsl.load_model("bigsmall-tiny", dtype=torch.bfloat16, quantization_config=bnb_formats.bnb_config("fp4"))
    for layer in quantized._four_bit_layers(model):  # bitsandbytes' own repacking, as on an AVX512-BF16 CPU
        layer.weight.data, layer.weight.quant_state = functional._convert_weight_packed_for_cpu(
            layer.weight.data, layer.weight.quant_state)
    path = quantized.model_matmul_path(model)
    assert path.fused and "fp4" in path.kernel


def test_int8_and_bf16_paths_follow_the_dispatcher():
    int8 = bsl.load_model("bigsmall-tiny", dtype=torch.bfloat16, quantization_config=bnb_formats.bnb_config("int8"))
    path = quantized.model_matmul_path(int8)
    assert path.fmt == "int8" and path.fused
    assert ("torch._int_mm" in path.kernel) == quantized.int8_integer_kernel("cpu")
    assert quantized.model_matmul_path(bsl.load_model("bigsmall-tiny", dtype=torch.bfloat16)).fmt == "bf16"


# --- speed (04b, section 5): measured, never asserted ----------------------------------------------------------

def test_forward_seconds_times_each_size():
    model = bsl.load_model("bigsmall-tiny", dtype=torch.float32)
    times = quantized.forward_seconds(model, quality.heldout_ids("bigsmall-tiny", 16), tokens=(1, 16), repeat=2)
    assert set(times) == {1, 16} and all(t > 0 for t in times.values())
    with pytest.raises(LabError, match="^tokens asks for 32"):
        quantized.forward_seconds(model, quality.heldout_ids("bigsmall-tiny", 16), tokens=(32,))


def test_linear_timings_put_the_dequantize_step_under_the_unfused_path():
    rows = quantized.linear_timings(torch.randn(128, 64), tokens=(1,), repeat=1)
    ops = {r.operation for r in rows}
    step = next(r for r in rows if r.operation == "dequantize nf4 weight")
    assert step.part_of in ops and step.part_of in ("nf4", "nf4, dequantize + matmul")
    assert {"bf16 matmul", "int8 (LLM.int8())", "nf4"} <= ops


# --- 04a: the block-size measurement ----------------------------------------------------------------------------

@pytest.mark.parametrize("double", [False, True])
def test_bnb_4bit_bytes_counts_every_tensor_quantize_4bit_returns(double):
    import bitsandbytes.functional as F

    packed, state = F.quantize_4bit(torch.randn(256, 512), blocksize=64, quant_type="nf4", compress_statistics=double)
    plain = QuantSpec(4, "nf4", "group", 64).storage_bytes((256, 512))  # 65,536 + 2,048 x 4 + 64 = 73,792
    if not double:
        assert bnb_formats.bnb_4bit_bytes(packed, state) == plain == 73_792
    else:
        # absmax in 8 bits (2,048 bytes), 8 nested float32 absmax, a 256-entry float32 code book, a 4-byte offset
        assert bnb_formats.bnb_4bit_bytes(packed, state) == 65_536 + 2_048 + 8 * 4 + 256 * 4 + 4 + 64


# --- no claim where it cannot run --------------------------------------------------------------------------------

@pytest.mark.parametrize("stem", list(LESSONS))
def test_no_claim_sits_in_a_try_block(stem):
    for source in code_cells(stem):
        tree = ast.parse(re.sub(r"^(\s*)[%!].*$", r"\1pass", source, flags=re.M))
        for node in ast.walk(tree):
            if isinstance(node, ast.Try):
                inner = ast.dump(node)
                assert "attr='claim'" not in inner, f"{stem}: a claim inside try/except runs only on one branch"
