"""Teaching truth in lessons 03, 06, 07 and 08 (issue 16): the exercises reveal the answer only on the
second wrong try, never before the learner answers, each lesson recognises at least four common slips
(each tested here with the slip's own value), every lesson ends with a predict-then-run exercise, and
the lesson claims that were nearly always true now fail when their input is broken.

The claim conditions below are the lessons' own, written as functions of their inputs, so each test
runs the condition once on the lesson's input (it holds) and once on a broken input (it fails).
Numbers worked out by hand in comments come from the published configs: Llama 3.1 8B (32 layers, 32
heads, 8 KV heads, head dim 128), 70B (80 layers, 64 heads, 8 KV heads), 405B (126 layers, 128 heads,
8 KV heads); bigsmall-tiny (6 layers, 8 heads, 4 KV heads, head dim 32, hidden 256, vocab 8,192, tied).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

import bigsmall_lab as bsl
from bigsmall_lab import kvcache, placement
from bigsmall_lab.exercises import (_core, check_allreduces, check_cache_bytes, check_gap, check_kv_cache_gib,
                                    check_layers_on_cpu, check_rank_bytes, check_smallest_nproc, check_stored)
from bigsmall_lab.tp_plan import plan as tp_plan

LESSONS = Path(__file__).resolve().parents[1] / "lessons"
GiB, GB, MiB = 2**30, 10**9, 2**20


@pytest.fixture(autouse=True)
def fresh_questions():
    _core._ASKED.clear()
    yield
    _core._ASKED.clear()


def cells(name: str) -> list[dict]:
    return json.loads((LESSONS / name).read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


# --- 1. lesson 06's exercises go through _core.ask: hint first, answer on the second wrong try ---------------

@pytest.mark.parametrize("check, wrong, args", [
    (check_rank_bytes, 1, ("llama-3.1-8b", 2, "bfloat16")),
    (check_allreduces, 1, ("bigsmall-tiny",)),
    (check_smallest_nproc, 4, ("smollm2-135m-instruct",)),
])
def test_lesson06_hint_then_answer(check, wrong, args):
    first = check(wrong, *args)
    assert "Hint:" in first.message and not first.revealed
    second = check(wrong, *args)
    assert second.revealed and "The answer is" in second.message
    assert not check(None, *args).revealed  # an unanswered exercise never reveals


def test_lesson06_rank_bytes_slips_with_their_values():
    p = tp_plan("llama-3.1-8b", 2, "bfloat16")
    right = p.rank_bytes[0]  # 8,030,527,488: half of 16,059,990,016 split + 532,480 of norms
    assert right == 8_030_527_488 and check_rank_bytes(right, p).correct
    slips = {
        16_060_522_496: "whole model",                  # per GPU vs total: the whole bf16 model
        16_060_522_496 / 2: "norms are replicated",      # everything halved
        16_059_990_016 / 2: "left out the replicated norms",
        right * 8: "in bits",                            # bits for bytes
        right / GB: "in GB",
        right / GiB: "in GiB",
        right * 2: "4 bytes per parameter (float32)",    # another dtype
    }
    for value, why in slips.items():
        _core._ASKED.clear()
        assert why in check_rank_bytes(value, p).slip, (value, why)


def test_lesson06_rank_bytes_against_a_measurement():
    p = tp_plan("bigsmall-tiny", 2, "float32")  # 13,644,800 bytes a rank
    assert check_rank_bytes(p.rank_bytes[0], p, measured=p.rank_bytes[0]).correct
    verdict = check_rank_bytes(p.rank_bytes[0] + 1, p, measured=p.rank_bytes[0])  # exact: tolerance 0
    assert not verdict.correct
    with pytest.raises(ValueError, match="measured"):
        check_rank_bytes(1, p, measured=0)


def test_lesson06_allreduce_slips_with_their_values():
    # bigsmall-tiny: 2 x 6 layers + 1 = 13
    for value, why in {12: "vocabulary", 6: "2 per layer", 43: "column-wise", 14: "all-gather",
                       2: "one decoder layer's", 3: "one decoder layer's plus the embedding's"}.items():
        _core._ASKED.clear()
        assert why in check_allreduces(value).slip, (value, why)


# --- 2. lesson 08: the answer is not visible before the learner answers -----------------------------------

def test_lesson08_number_example_is_not_an_answer():
    answer = f"{bsl.kv_cache_bytes('llama-3.1-70b', 128_000, dtype='float16') / GiB:.2f}"  # 39.06
    verdict = check_kv_cache_gib("forty", "llama-3.1-70b", seq_len=128_000, dtype="float16")
    assert verdict.slip == "not a number" and answer not in verdict.message


def _before(cs: list[dict], marker: str) -> str:
    i = next(i for i, c in enumerate(cs) if marker in source(c))
    return "\n".join(source(c) + "".join("".join(o.get("text", "")) for o in c.get("outputs", [])) for c in cs[:i])


def test_lesson08_exercise_answers_not_shown_before_their_questions():
    cs = cells("08_kv_cache.ipynb")
    before_1 = _before(cs, "check_kv_cache_gib(")
    assert "39.06" not in before_1 and "llama-3.1-70b" not in before_1.split("## 2.")[1].split("### Exercise 1")[0]
    before_3 = _before(cs, "check_kv_per_gpu(")
    assert "kv_per_gpu_chart" not in before_3 and "kv_per_rank_curve" not in before_3
    assert "7.69" not in before_3  # 405B on 16 GPUs in bf16: 61.52 GiB / 8 KV heads


# --- 4. slips: at least four per lesson, each with its value ----------------------------------------------

def test_lesson03_slips_with_their_values():
    # bf16 at 256: 2**8 / 2**7 = 2
    for value, why in {2**-7: "epsilon", 128: "how many steps", 1: "gap just below", 0.25: "float16's gap"}.items():
        _core._ASKED.clear()
        assert why in check_gap(value, "bfloat16", at=256).slip, (value, why)
    # float16 of 2049: a tie between 2048 and 2050; the even mantissa wins
    assert check_stored(2048, 2049).correct
    for value, why in {2050: "even mantissa", 2049: "cannot hold 2049 exactly"}.items():
        _core._ASKED.clear()
        assert why in check_stored(value, 2049).slip, (value, why)
    _core._ASKED.clear()
    assert "largest finite value" in check_stored(65504, 65520).slip  # 65520 overflows to inf


def test_lesson07_layers_on_cpu_slips_with_their_values():
    path = bsl.checkpoint("bigsmall-small")
    budget = {"cpu": "300MiB"}
    planned = placement.plan(path, "auto", budget)
    expected = planned.layers_on("cpu")  # 300 MiB - 16 MiB embeddings - 21.5 MiB kept free = 12 layers of 21.5 MiB
    assert expected == 12 and check_layers_on_cpu(expected, expected, path, budget).correct
    for value, why in {13: "budget / one layer", 11: "MiB (2**20 bytes) as MB", 16: "every layer",
                       4: "went to disk"}.items():
        _core._ASKED.clear()
        assert why in check_layers_on_cpu(value, expected, path, budget).slip, (value, why)


def test_lesson08_cache_bytes_slips_with_their_values():
    exact = 2 * 6 * 4 * 32 * 200 * 4  # bigsmall-tiny, 200 tokens, float32: 1,228,800 bytes
    assert check_cache_bytes(exact, exact, "bigsmall-tiny", seq_len=200).correct
    slips = {exact / 2: "2 for K and V", exact * 2: "8 attention (query) heads", exact / 6: "one layer's",
             exact / 2 + 1: "2 for K and V", exact * 8: "in bits", exact / MiB: "in MiB", exact / GB: "in GB",
             exact / GiB: "in GiB"}
    for value, why in slips.items():
        _core._ASKED.clear()
        verdict = check_cache_bytes(value, exact, "bigsmall-tiny", seq_len=200)
        assert verdict.slip and why in verdict.slip, (value, why, verdict)
    # bf16's 2 bytes is the same number as the missing 2 for K and V: the first explanation is named


# --- 5. every lesson ends with a predict-then-run exercise --------------------------------------------------

@pytest.mark.parametrize("name, parameter, check", [
    ("03_dtypes.ipynb", "MY_VALUE", "check_stored(my_fp16, MY_VALUE"),
    ("06_tensor_parallelism.ipynb", "TP_DEGREE", "check_rank_bytes(my_tp_rank_bytes, mine.plan, measured="),
    ("07_device_map.ipynb", "MY_CPU_BUDGET", "check_layers_on_cpu(my_cpu_layers, loaded.layers_on"),
    ("08_kv_cache.ipynb", "MY_CONTEXT", "check_cache_bytes(my_cache_bytes, mine.cache.total_bytes"),
])
def test_lessons_end_with_predict_then_run(name, parameter, check):
    cs = cells(name)
    recap = next(i for i, c in enumerate(cs) if c["cell_type"] == "markdown" and source(c).startswith("## Recap"))
    code = [i for i, c in enumerate(cs[:recap]) if c["cell_type"] == "code"]
    run, ask_cell = code[-1], code[-2]
    assert check in source(cs[run])  # the last cell before the recap measures, then checks
    assert parameter in source(cs[ask_cell]) and "= None" in source(cs[ask_cell])  # the parameter and the answer


# --- 3. the claims that were nearly always true ------------------------------------------------------------

def low0_caps_claims(p: placement.Plan) -> tuple[bool, bool, bool]:
    """Lesson 07, four GPUs with balanced_low_0: the three claims of the cell, as the lesson writes them."""
    caps = p.planned_budgets
    middle = [caps[g] for g in p.gpus[1:-1]]
    per_gpu = p.total_bytes // (len(p.gpus) - 1) + int(1.25 * p.largest_layer_bytes)
    capped = middle == [min(per_gpu, p.budgets[g]) for g in p.gpus[1:-1]] and per_gpu < p.budgets[1]
    last = caps[p.gpus[-1]] == p.budgets[p.gpus[-1]]
    rest = max(0, p.total_bytes - sum(caps[g] for g in p.gpus[1:]))
    return capped, last, caps[0] == min(rest, p.budgets[0])


def test_lesson07_low0_caps_claims_fail_on_other_caps():
    four = {0: "24GiB", 1: "24GiB", 2: "24GiB", 3: "24GiB", "cpu": "100GiB"}
    p = placement.plan("llama-3.1-8b", "balanced_low_0", four)
    assert low0_caps_claims(p) == (True, True, True)
    # GPU 0 given one layer's room: the old claim (cap <= left over + a layer) passed this; the exact one fails
    assert low0_caps_claims(dataclasses.replace(p, planned_budgets={**p.planned_budgets, 0: p.largest_layer_bytes}))[2] is False
    assert low0_caps_claims(dataclasses.replace(p, planned_budgets={**p.planned_budgets, 1: p.budgets[1]}))[0] is False
    assert low0_caps_claims(dataclasses.replace(p, planned_budgets={**p.planned_budgets, 3: 1}))[1] is False
    two = placement.plan("llama-3.1-8b", "balanced_low_0", {0: "24GiB", 1: "24GiB", 2: "24GiB", "cpu": "1GiB"})
    assert all(low0_caps_claims(two))


def gpu0_runs_offloaded(p: placement.Plan) -> bool:
    """Lesson 07: GPU 0 computes its own layers plus every layer the device map sends to the CPU or disk."""
    offloaded = [n for n, d in p.device_map.items() if d in ("cpu", "disk") and n.startswith("model.layers.")]
    return p.layers_run_on(0) == p.layers_on(0) + len(offloaded) > p.layers_on(0)


def test_lesson07_offloaded_layers_claim_fails_when_the_map_disagrees():
    spill = placement.plan("llama-3.1-70b", "auto", {0: "24GB", 1: "24GB", "cpu": "64GB"})
    assert gpu0_runs_offloaded(spill)
    # the old claim (the per-GPU counts add up to all layers) holds by construction for any map
    assert sum(spill.layers_run_on(g) for g in spill.gpus) == spill.n_blocks
    moved = {n: (1 if d in ("cpu", "disk") else d) for n, d in spill.device_map.items()}  # map says: nothing offloaded
    assert not gpu0_runs_offloaded(dataclasses.replace(spill, device_map=moved))
    all_on_gpus = placement.plan("llama-3.1-8b", "auto", {0: "24GiB", 1: "24GiB"})
    assert not gpu0_runs_offloaded(all_on_gpus)  # nothing offloaded: the claim's "also" is false


def cache_agrees(config, seq_len: int, dtype, by_hand_kv_heads: int, weighed: int) -> bool:
    """Lesson 08 section 1: the count by hand, kv_cache_bytes and the weighed cache agree."""
    cfg = bsl.zoo.config_dict(config)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    by_hand = 2 * cfg["num_hidden_layers"] * by_hand_kv_heads * head_dim * torch.finfo(dtype).bits // 8 * seq_len
    return by_hand == bsl.kv_cache_bytes(config, seq_len, dtype=dtype) == weighed


def test_lesson08_by_hand_estimate_and_weighed_cache():
    model = bsl.load_model("bigsmall-tiny", dtype=torch.float32)
    ids = bsl.quality.heldout_ids("bigsmall-tiny", 40)
    run = kvcache.generate(model, ids, "dynamic", 1)
    assert run.cache.seq_len == 40
    assert cache_agrees("bigsmall-tiny", 40, torch.float32, 4, run.cache.total_bytes)
    assert not cache_agrees("bigsmall-tiny", 40, torch.float32, 8, run.cache.total_bytes)  # attention heads by hand
    assert not cache_agrees("bigsmall-tiny", 40, torch.float32, 4, run.cache.total_bytes // 2)  # a cache half full
    assert not cache_agrees("bigsmall-tiny", 41, torch.float32, 4, run.cache.total_bytes)  # one token more


def kv_heads_claims(at_128k: dict[str, int], preset: str = "llama-3.1-8b") -> bool:
    """Lesson 08 section 2: the curves follow the published heads (32 attention, 8 KV, and 1)."""
    published = bsl.zoo.config_dict(preset)
    n_heads, n_kv = published["num_attention_heads"], published["num_key_value_heads"]
    mha, gqa, mqa = list(at_128k)[:3]
    return (at_128k[gqa] == bsl.kv_cache_bytes(preset, 131072)
            and at_128k[mha] * n_kv == at_128k[gqa] * n_heads and at_128k[gqa] == at_128k[mqa] * n_kv)


def test_lesson08_kv_heads_claims_fail_on_wrong_variants():
    variants = kvcache.attention_variants("llama-3.1-8b")
    at = {p.label: p.kv_bytes for p in kvcache.kv_curve(variants, [131072])}
    assert kv_heads_claims(at)  # 64, 16 and 2 GiB
    # variants that forgot to change the KV heads: the old claims, with heads read off the variants, held
    same = {label: {**cfg, "num_key_value_heads": 8} for label, cfg in variants.items()}
    at_same = {p.label: p.kv_bytes for p in kvcache.kv_curve(same, [131072])}
    heads = {label: 8 for label in same}
    mha, gqa, mqa = same
    assert at_same[mha] * heads[gqa] == at_same[gqa] * heads[mha]  # the old condition: always true here
    assert not kv_heads_claims(at_same)
    wrong_dim = {label: {**cfg, "head_dim": 64} for label, cfg in variants.items()}  # head size not kept
    assert not kv_heads_claims({p.label: p.kv_bytes for p in kvcache.kv_curve(wrong_dim, [131072])})


def per_gpu_claims(per_gpu: dict[int, int], blog: dict[int, int], published_gib: float) -> tuple[bool, bool]:
    """Lesson 08 section 3: 405B's cache per GPU, and the blog's 16-KV-head count against its figure."""
    whole = bsl.kv_cache_bytes("llama-3.1-405b", 128_000, dtype="float16")
    flat = per_gpu[1] == whole and per_gpu[8] * 8 == whole and per_gpu[8] == per_gpu[16] == per_gpu[32]
    return flat, round(blog[1] / GiB, 2) == published_gib and blog[16] == per_gpu[16]


def test_lesson08_per_gpu_claims_fail_without_replication_or_with_another_figure():
    tps = [1, 2, 4, 8, 16, 32]
    blog_405b = {**bsl.zoo.config_dict("llama-3.1-405b"), "num_key_value_heads": 16}
    pts = kvcache.kv_per_rank_curve({"405b": "llama-3.1-405b", "blog": blog_405b}, 128_000, tps, dtype="float16")
    per_gpu = {p.tp_size: p.kv_bytes for p in pts if p.label == "405b"}
    blog = {p.tp_size: p.kv_bytes for p in pts if p.label == "blog"}
    assert per_gpu_claims(per_gpu, blog, 123.05) == (True, True)  # the blog's published 123.05 GiB
    split = {tp: per_gpu[1] // tp for tp in tps}  # heads split into pieces, as if no replication
    assert per_gpu_claims(split, blog, 123.05)[0] is False
    assert per_gpu_claims(per_gpu, blog, 61.52)[1] is False  # a figure the 16-head count does not give
    assert per_gpu_claims(per_gpu, per_gpu, 123.05)[1] is False  # the blog counted with 8 KV heads


def test_lesson08_predict_cache_exercise_measures_what_it_checks():
    model = bsl.load_model("bigsmall-tiny", dtype=torch.float32)
    ids = bsl.quality.heldout_ids("bigsmall-tiny", 64)
    run = kvcache.generate(model, ids, "dynamic", 1)
    assert run.cache.total_bytes == run.estimate_bytes == 2 * 6 * 4 * 32 * 64 * 4  # 393,216 bytes
    assert check_cache_bytes(run.cache.total_bytes, run.cache.total_bytes, "bigsmall-tiny", seq_len=64).correct
