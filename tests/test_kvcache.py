"""The KV-cache runner, its planner side, lesson 08's views and exercises.

The embedded model bigsmall-tiny (6 layers, 8 heads, 4 KV heads of 32 dims) in float32 caches
2 (K and V) x 6 x 4 x 32 x 4 bytes = 6,144 bytes per token and sequence; 100 tokens x 2 sequences
hold 1,228,800 bytes. Its 4 x 32 = 128 values per token and tensor are two groups of 64 for quanto/hqq.

Published figures checked here (an independent source, typed in with its citation):
Hugging Face, "Llama 3.1 - 405B, 70B & 8B with multilinguality and long context" (2024-07-23),
https://huggingface.co/blog/llama31, table "KV cache size" at 128K tokens in fp16:
8B 15.62 GiB, 70B 39.06 GiB, 405B 123.05 GiB.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import DynamicCache

import bigsmall_lab as bsl
from bigsmall_lab import _compat, kv_plan, kvcache, quality
from bigsmall_lab._errors import LabError
from bigsmall_lab.exercises import (check_blog_kv_heads, check_kv_cache_gib, check_kv_per_gpu,
                                    check_recomputed_positions)
from bigsmall_lab.exercises import _core
from bigsmall_lab.kv_plan import CacheSettings

PER_TOKEN = 2 * 6 * 4 * 32 * 4  # bigsmall-tiny, float32: 6,144 bytes per token and sequence


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return bsl.load_model("bigsmall-tiny", dtype=torch.float32)


@pytest.fixture(scope="module")
def ids():
    return quality.heldout_ids("bigsmall-tiny", 160)


def one_sentence(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert len(text) < 300 and "\n" not in text, text
    return text


# --- measured from the cache object == kv_cache_bytes --------------------------------------------

def test_dynamic_cache_bytes_equal_kv_cache_bytes(tiny, ids):
    batch = ids[:, :100].repeat(2, 1)
    run = kvcache.generate(tiny, batch, "dynamic", max_new_tokens=9)
    # 100 prompt tokens + 9 new ones, the last never fed back: 108 tokens x 2 sequences x 6,144 bytes
    assert run.cache.seq_len == 108
    assert run.cache.total_bytes == 108 * 2 * PER_TOKEN == 1_327_104
    assert run.cache.total_bytes == bsl.kv_cache_bytes(tiny.config, 108, batch_size=2, dtype="float32")
    assert run.estimate_bytes == run.expected_bytes == run.cache.total_bytes and run.ratio == 1.0
    assert run.cache.full_precision_bytes == run.cache.total_bytes and run.cache.quantized_bytes == 0
    assert run.cache.by_device == {"cpu": run.cache.total_bytes}


def test_static_cache_holds_its_full_length_from_the_first_token(tiny, ids):
    run = kvcache.generate(tiny, ids[:, :100], "static", max_new_tokens=9, trace_bytes=True)
    # generate sizes it prompt + new tokens = 109 tokens, all allocated at the first step
    assert run.settings.max_cache_len == 109
    assert run.cache.total_bytes == bsl.kv_cache_bytes(tiny.config, 109, dtype="float32") == 109 * PER_TOKEN
    assert set(run.bytes_trace) == {run.cache.total_bytes}
    dynamic = kvcache.generate(tiny, ids[:, :100], "dynamic", max_new_tokens=9, trace_bytes=True)
    assert dynamic.bytes_trace == [(100 + i) * PER_TOKEN for i in range(9)]  # one token more per step
    assert run.token_ids == dynamic.token_ids  # the same greedy text


def test_a_cache_weighed_by_hand():
    cache = DynamicCache()
    cache.update(torch.zeros(1, 2, 10, 8), torch.zeros(1, 2, 10, 8), 0)  # 2 tensors x 160 float32 values
    cache.update(torch.zeros(1, 2, 10, 8, dtype=torch.bfloat16), torch.zeros(1, 2, 10, 8, dtype=torch.bfloat16), 1)
    assert kvcache.cache_bytes(cache).total_bytes == 2 * 160 * 4 + 2 * 160 * 2


# --- quantized caches ---------------------------------------------------------------------------

QUANTIZED = ["quanto-int4", "quanto-int2", "hqq-int4", "hqq-int2"]


@pytest.mark.parametrize("name", QUANTIZED + ["fp8"])
def test_quantized_caches_hold_fewer_bytes_past_residual_length_and_exactly_what_is_expected(tiny, ids, name):
    kw = {} if name == "fp8" else {"residual_length": 8}
    run = kvcache.generate(tiny, ids[:, :64], CacheSettings.parse(name, **kw), max_new_tokens=13)
    dynamic = bsl.kv_cache_bytes(tiny.config, 76, dtype="float32")
    assert run.cache.seq_len == 76 and run.estimate_bytes == dynamic
    assert run.cache.total_bytes < dynamic
    assert run.cache.total_bytes == run.expected_bytes
    if name != "fp8":
        # 12 decode updates with a window of 8: flushed at the 8th, 4 tokens wait in full precision
        assert run.cache.residual_tokens == kv_plan.residual_tokens_after([64] + [1] * 12, 8) == 4
        assert run.cache.full_precision_bytes == 4 * PER_TOKEN


@pytest.mark.parametrize("name", ["quanto-int2", "quanto-int4"])
def test_quanto_pads_its_last_byte_row_as_counted(tiny, ids, name):
    # 63 prompt tokens + 8 flushed = 71 quantized tokens: 142 rows of 64 values, which 2-bit codes pack 4 rows to a
    # byte row (35.5 rows: quanto pads to 36) and 4-bit codes 2 to a row; the count rounds up as quanto does.
    run = kvcache.generate(tiny, ids[:, :63], CacheSettings.parse(name, residual_length=8), max_new_tokens=13)
    assert run.cache.total_bytes == run.expected_bytes
    rows = 71 * 128 // 64
    bits = 2 if name.endswith("int2") else 4
    assert kv_plan._packed_bytes(kv_plan.QuantBackend.QUANTO, bits, rows * 64, 64) == -(-rows * bits // 8) * 64


def test_quantized_bytes_worked_out_by_hand():
    # quanto int4 on bigsmall-tiny, float32, 200 quantized tokens + 4 in the window, per layer and tensor:
    # 200 x 128 values at 4 bits = 12,800 bytes; 400 groups of 64 x (scale + shift) x 4 bytes = 3,200;
    # the window 4 x 128 x 4 = 2,048. Times 2 tensors x 6 layers:
    assert kv_plan.expected_cache_bytes("bigsmall-tiny", "quanto-int4", 204, dtype="float32",
                                        residual_tokens=4) == 12 * (12_800 + 3_200 + 2_048)
    # fp8: one byte per value + one float32 scale per tensor: 204 x 128 + 4, x 12
    assert kv_plan.expected_cache_bytes("bigsmall-tiny", "fp8", 204, dtype="float32") == 12 * (204 * 128 + 4)


@pytest.mark.slow
def test_the_window_of_a_quantized_cache_follows_residual_length(tiny, ids):
    sizes = {}
    for window in (4, 16, 64):
        run = kvcache.generate(tiny, ids[:, :64], CacheSettings.parse("quanto-int4", residual_length=window),
                               max_new_tokens=31, trace_bytes=True)
        sizes[window] = run.cache.total_bytes
        assert run.cache.residual_tokens == kv_plan.residual_tokens_after([64] + [1] * 30, window)
        assert min(run.bytes_trace) < run.bytes_trace[-1] or window == 64  # flushes drop the bytes (saw-tooth)
    assert sizes[4] < sizes[16] < sizes[64]  # a longer full-precision window holds more


def test_the_prompt_is_quantized_at_once_whatever_the_window():
    # transformers 5.24: the first update is quantized whole; only later tokens wait in the window.
    assert kv_plan.residual_tokens_after([1000], 128) == 0
    assert kv_plan.residual_tokens_after([10, 1, 1, 1], 128) == 3
    assert kv_plan.residual_tokens_after([10] + [1] * 130, 128) == 2  # flushed once, at 128


def test_shared_prefill_gives_the_same_cache_as_a_full_generate(tiny, ids):
    pre = kvcache.prefill(tiny, ids[:, :64])
    assert pre.cached_tokens == 64
    for name in ("dynamic", "quanto-int2", "fp8"):
        full = kvcache.generate(tiny, ids[:, :64], CacheSettings.parse(name), max_new_tokens=8)
        shared = kvcache.generate(tiny, ids[:, :64], CacheSettings.parse(name), max_new_tokens=8, shared=pre)
        assert shared.prefill_shared and not full.prefill_shared
        assert shared.token_ids == full.token_ids
        assert shared.cache.total_bytes == full.cache.total_bytes == shared.expected_bytes


@pytest.mark.slow
def test_compare_orders_the_caches_by_how_much_they_change_the_model(tiny, ids):
    caches = ["dynamic", "static", CacheSettings.parse("quanto-int4", residual_length=16),
              CacheSettings.parse("quanto-int2", residual_length=16)]
    runs = kvcache.compare_caches(tiny, ids, caches, prompt_tokens=96, scored_tokens=48, chunk_tokens=16, new_tokens=4)
    kl = {r.label.split(",")[0]: r.agreement.kl_nats for r in runs}
    assert kl["dynamic"] == 0.0 and runs[0].agreement.top1_agreement == 1.0
    assert kl["static (148 tokens)"] < 1e-6
    assert kl["quanto int2"] > kl["quanto int4"] > 0
    for r in runs:
        assert r.agreement.n_tokens == 48
        assert r.generation.cache.seq_len == 96 + 48 + 4 - 1
        assert r.generation.cache.total_bytes == r.generation.expected_bytes


def test_recomputing_gives_the_same_tokens_and_processes_many_more_positions(tiny, ids):
    result = kvcache.recompute_vs_cache(tiny, ids[:, :32], max_new_tokens=8)
    assert result.identical
    assert len(result.cached_step_s) == len(result.recomputed_step_s) == 7
    assert result.cached_positions == 32 + 8 - 1
    assert result.recomputed_positions == sum(32 + k for k in range(8)) == 284


# --- the planner side ---------------------------------------------------------------------------

def test_the_published_llama_31_table():
    # fp16 at the blog's "128K" = 128,000 tokens (its 8B figure is 2 x 32 x 8 x 128 x 128,000 x 2 bytes
    # = 16,777,216,000 bytes = 15.625 GiB; with 131,072 tokens it would be 16.00).
    published = {"llama-3.1-8b": 15.62, "llama-3.1-70b": 39.06, "llama-3.1-405b": 123.05}
    gib = {name: bsl.kv_cache_bytes(name, 128_000, dtype="float16") / 2**30 for name in published}
    assert round(gib["llama-3.1-8b"], 2) == published["llama-3.1-8b"]
    assert round(gib["llama-3.1-70b"], 2) == published["llama-3.1-70b"]
    assert round(gib["llama-3.1-405b"], 1) == 61.5  # the published config's 8 KV heads
    assert published["llama-3.1-405b"] / gib["llama-3.1-405b"] == pytest.approx(2.0, abs=0.001)  # 16 KV heads


def test_kv_heads_decide_the_cache_mha_gqa_mqa():
    variants = kv_plan.attention_variants("llama-3.1-8b")
    points = kv_plan.kv_curve(variants, [1024, 4096])
    by = {(p.label, p.seq_len): p.kv_bytes for p in points}
    mha, gqa, mqa = variants
    assert by[(mha, 1024)] == 4 * by[(gqa, 1024)] == 32 * by[(mqa, 1024)]  # 32 : 8 : 1 KV heads
    assert by[(gqa, 4096)] == 4 * by[(gqa, 1024)]  # linear in the context
    assert by[(gqa, 1024)] == bsl.kv_cache_bytes("llama-3.1-8b", 1024)
    batch = kv_plan.kv_curve(["llama-3.1-8b"], [1024], batch_sizes=[1, 8])
    assert batch[1].kv_bytes == 8 * batch[0].kv_bytes


def test_per_gpu_cache_stops_shrinking_when_ranks_outnumber_kv_heads():
    points = kv_plan.kv_per_rank_curve(["llama-3.1-405b"], 128_000, [1, 2, 4, 8, 16, 32])
    per_gpu = [p.kv_bytes for p in points]
    assert per_gpu[:4] == [per_gpu[0] // tp for tp in (1, 2, 4, 8)]  # 8 KV heads split 1, 2, 4, 8 ways
    assert per_gpu[3] == per_gpu[4] == per_gpu[5]  # 16 and 32 GPUs: each still holds one whole KV head
    assert [p.replicated for p in points] == [False, False, False, False, True, True]


def test_offload_plan_keeps_two_layers_on_the_gpu():
    plan = kv_plan.plan_cache_offload("llama-3.1-8b", 131_072)
    assert plan.total_bytes == bsl.kv_cache_bytes("llama-3.1-8b", 131_072)
    assert plan.gpu_bytes * 16 == plan.total_bytes  # 2 of 32 layers
    assert plan.gpu_bytes + plan.cpu_bytes == plan.total_bytes


def test_settings_ask_generate_for_the_same_cache(tiny, ids):
    settings = CacheSettings.parse("quanto-int2", residual_length=8)
    assert settings.generate_kwargs() == {"cache_implementation": "quantized",
                                          "cache_config": {"backend": "quanto", "nbits": 2, "residual_length": 8}}
    # the library call with those keywords builds the cache the runner builds
    out = tiny.generate(ids[:, :40], max_new_tokens=12, do_sample=False, return_dict_in_generate=True,
                        **settings.generate_kwargs())
    ours = kvcache.generate(tiny, ids[:, :40], settings, max_new_tokens=12)
    assert kvcache.cache_bytes(_compat.generated_cache(out)).total_bytes == ours.cache.total_bytes
    assert CacheSettings.parse("fp8").generate_kwargs() == {"cache_implementation": "quantized",
                                                            "cache_config": {"backend": "fp8"}}


def test_compat_names_the_cache_argument_of_this_transformers(tiny):
    import inspect

    assert _compat.cache_argument(tiny) in inspect.signature(type(tiny).forward).parameters
    assert {"quanto", "hqq"} <= set(_compat.quantized_cache_backends())


# --- bad input: one sentence --------------------------------------------------------------------

def test_an_unknown_cache_lists_them():
    with pytest.raises(LabError) as err:
        CacheSettings.parse("dynamc")
    text = one_sentence(err)
    assert "did you mean 'dynamic'" in text and "quanto-int4" in text and "fp8" in text
    with pytest.raises(LabError) as err:
        CacheSettings("sliding")
    assert "dynamic, static, quantized, offloaded" in one_sentence(err)


def test_a_backend_that_is_not_installed_names_the_extra(monkeypatch):
    monkeypatch.setattr(kv_plan, "_installed", lambda module: False)
    for name, package in (("quanto-int4", "optimum-quanto"), ("hqq-int2", "hqq")):
        with pytest.raises(LabError) as err:
            CacheSettings.parse(name)
        text = one_sentence(err)
        assert package in text and 'pip install "bigsmall-lab[kvcache]"' in text
    assert CacheSettings.parse("fp8").backend is kv_plan.QuantBackend.FP8  # torch alone


@pytest.mark.parametrize("kwargs, words", [
    (dict(backend="quanto", nbits=3), "nbits 3 is not supported by the quanto backend; use 2 or 4"),
    (dict(backend="hqq", nbits=5), "use one of: 1, 2, 3, 4, 8"),
    (dict(backend="fp8", nbits=4), "fp8 backend"),
    (dict(backend="fp8", residual_length=8), "not used by the fp8 backend"),
    (dict(backend="quanto", residual_length=0), "residual_length 0 is too small"),
    (dict(backend="bitsandbytes"), "backend 'bitsandbytes' is not known"),
])
def test_quantized_settings_that_a_backend_does_not_support(kwargs, words):
    with pytest.raises(LabError) as err:
        CacheSettings("quantized", **kwargs)
    assert words in one_sentence(err)


def test_settings_of_one_cache_given_to_another():
    with pytest.raises(LabError) as err:
        CacheSettings("dynamic", nbits=4)
    assert "only for the quantized cache" in one_sentence(err)
    with pytest.raises(LabError) as err:
        CacheSettings("dynamic", max_cache_len=10)
    assert "only for the static cache" in one_sentence(err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is attached: the offloaded cache runs")
def test_the_offloaded_cache_on_a_cpu_is_one_sentence(tiny, ids):
    with pytest.raises(LabError) as err:
        kvcache.generate(tiny, ids[:, :10], "offloaded", max_new_tokens=2)
    assert "needs a CUDA GPU" in one_sentence(err) and "plan_cache_offload" in str(err.value)


def test_a_group_size_that_does_not_divide_the_heads(tiny):
    with pytest.raises(LabError) as err:
        kvcache.make_cache(tiny, CacheSettings.parse("quanto-int4", q_group_size=48))
    assert "4 KV heads x 32 dims = 128" in one_sentence(err)


def test_things_that_are_not_caches_or_ids(tiny):
    with pytest.raises(LabError) as err:
        kvcache.cache_bytes([1, 2])
    one_sentence(err)
    with pytest.raises(LabError) as err:
        kvcache.generate(tiny, [1, 2, 3], "dynamic")
    one_sentence(err)


# --- lesson 08's exercises ------------------------------------------------------------------------

@pytest.fixture
def fresh_questions():
    _core._ASKED.clear()
    yield
    _core._ASKED.clear()


def test_kv_cache_gib_right_answer_and_slips(fresh_questions):
    # Llama 3.1 70B, fp16, 128,000 tokens: 2 x 80 x 8 x 128 x 128,000 x 2 = 41,943,040,000 bytes = 39.0625 GiB
    assert check_kv_cache_gib(39.06, "llama-3.1-70b", 128_000).correct
    slips = {
        39.0625 / 2: "the 2 for K and V is missing",
        39.0625 * 8: "64 attention (query) heads",          # 64 heads / 8 KV heads
        41.94304: "in GB",
        41_943_040_000: "in bytes",
        40.0: "131,072 tokens",                             # 128 x 1,024 tokens
        39.0625 * 2: "4 bytes per value",
    }
    for answer, words in slips.items():
        _core._ASKED.clear()
        verdict = check_kv_cache_gib(answer, "llama-3.1-70b", 128_000)
        assert not verdict.correct and verdict.slip and words in verdict.slip, (answer, verdict)
    assert check_kv_cache_gib("39", "llama-3.1-70b", 128_000).slip == "not a number"


def test_blog_kv_heads(fresh_questions):
    assert check_blog_kv_heads(16, published_gib=123.05).correct  # 123.05 / 61.52 = 2 x 8 KV heads
    assert "published config's num_key_value_heads" in check_blog_kv_heads(8, published_gib=123.05).slip
    assert "attention (query) heads" in check_blog_kv_heads(128, published_gib=123.05).slip
    assert "ratio" in check_blog_kv_heads(2, published_gib=123.05).slip
    assert check_blog_kv_heads([16], published_gib=123.05).slip == "not a number"
    with pytest.raises(LabError):
        check_blog_kv_heads(16, published_gib=110.0)  # 14.3 KV heads: not a whole number
    with pytest.raises(LabError):
        check_blog_kv_heads(16, published_gib="123")


def test_kv_per_gpu(fresh_questions):
    # 405B fp16... in bf16 (same 2 bytes): 61.5234 GiB, 8 KV heads over 16 GPUs: 1 head each = 7.69 GiB
    assert check_kv_per_gpu(7.69, "llama-3.1-405b", 128_000, 16).correct
    assert "replicated" in check_kv_per_gpu(61.5234375 / 16, "llama-3.1-405b", 128_000, 16).slip
    assert "whole cache" in check_kv_per_gpu(61.52, "llama-3.1-405b", 128_000, 16).slip
    assert "GB" in check_kv_per_gpu(61.5234375 / 8 * 2**30 / 1e9, "llama-3.1-405b", 128_000, 16).slip
    assert check_kv_per_gpu(None).answered is False


def test_recomputed_positions(fresh_questions):
    # 256-token prompt, 64 new tokens: 256 + 257 + ... + 319 = 64 x 256 + 64 x 63 / 2 = 18,400
    assert check_recomputed_positions(18_400, 256, 64).correct
    for answer, words in {319: "count with the cache", 16_384: "grows by one token", 20_480: "P + n - 1",
                          18_464: "the first step"}.items():
        _core._ASKED.clear()
        assert words in check_recomputed_positions(answer, 256, 64).slip
    assert check_recomputed_positions("many", 256, 64).slip == "not a number"


# --- views: built from results, no browser --------------------------------------------------------

@pytest.mark.slow
def test_views_draw_the_numbers_they_are_given(tiny, ids, capsys):
    from bigsmall_lab import views

    runs = kvcache.compare_caches(tiny, ids, ["dynamic", "fp8"], prompt_tokens=64, scored_tokens=16, chunk_tokens=8,
                                  new_tokens=3)
    # a long comparison shows one progress line (stderr in a terminal): which cache runs, then how long it took
    shown = capsys.readouterr().err
    assert "comparing KV caches: 0/2 caches" in shown and "comparing KV caches: done in" in shown, shown
    assert shown.rstrip().endswith("(2 caches)")
    fig = views.cache_runs_chart(runs)
    bars = fig.data[0]
    assert list(bars.x) == [r.generation.cache.total_bytes / 2**20 for r in runs]
    html = views.cache_runs_table(runs).data
    assert "fp8 (e4m3)" in html and f"{runs[1].agreement.kl_nats:.4f}" in html
    points = kv_plan.kv_curve(kv_plan.attention_variants("llama-3.1-8b"), [1024, 8192])
    chart = views.kv_context_chart(points, reference_lines={"weights": bsl.weights_bytes("llama-3.1-8b")})
    assert len(chart.data) == 3 and chart.data[0].y[0] == points[0].kv_bytes / 2**30
    rank = views.kv_per_gpu_chart(kv_plan.kv_per_rank_curve(["llama-3.1-405b"], 1024, [1, 8, 16]))
    assert rank.data[0].y[1] == rank.data[0].y[2]
    traced = kvcache.generate(tiny, ids[:, :20], "dynamic", 4, trace_bytes=True)
    assert list(views.bytes_per_token_chart([traced]).data[0].y) == [b / 2**20 for b in traced.bytes_trace]
    result = kvcache.recompute_vs_cache(tiny, ids[:, :16], 4)
    assert len(views.recompute_chart(result).data) == 2
    # 2 of 32 layers on the GPU: 2 layers x 2 (K and V) x 8 KV heads x 128 dims x 8,192 tokens x 2 bytes
    on_gpu = views.offload_chart([kv_plan.plan_cache_offload("llama-3.1-8b", 8192)]).data[1].y[0]
    assert on_gpu == 2 * 2 * 8 * 128 * 8192 * 2 / 2**30
    res = kvcache.compare_caches(tiny, ids, [CacheSettings.parse("quanto-int2", residual_length=r) for r in (32, 4)],
                          prompt_tokens=64, scored_tokens=32, chunk_tokens=4, new_tokens=0)
    chart = views.residual_chart(res)
    assert list(chart.data[0].x) == ["4", "32"] and res[0].generation is None
    # window 4: every chunk of 4 is quantized at once; window 32: up to 28 tokens wait in full precision
    assert list(chart.data[0].y) == [res[1].peak_bytes / 2**20, res[0].peak_bytes / 2**20]
    assert res[1].peak_bytes < res[0].peak_bytes and math.isfinite(res[0].agreement.kl_nats)


def test_runnable_names_a_cache_this_installation_lacks_instead_of_raising(monkeypatch, capsys):
    from bigsmall_lab import _compat

    monkeypatch.setattr(_compat, "quantized_cache_backends", lambda: ("quanto", "hqq"))  # transformers 5.17's set
    kept = kv_plan.runnable(["dynamic", "fp8", "quanto-int4"])
    assert [s.name for s in kept] == ["dynamic", "quanto-int4"]
    said = capsys.readouterr().out
    assert "skipped 'fp8'" in said and "backend 'fp8'" in said and said.count("\n") == 1


def test_the_old_compare_name_warns_and_runs_compare_caches(monkeypatch):
    # kvcache.compare is kept for one release; quality.compare (two models) keeps the short name.
    monkeypatch.setattr(kvcache, "compare_caches", lambda *args, **kwargs: ("compared", args, kwargs))
    with pytest.warns(DeprecationWarning, match="compare_caches"):
        assert kvcache.compare("model", "ids", ["dynamic"], prompt_tokens=4) == (
            "compared", ("model", "ids", ["dynamic"]), {"prompt_tokens": 4})
