"""Lesson 02's claims fail when what they state is false, and its checkers name each slip (issue 16).

Each claim of the lesson is a package method (``LoadRun.agrees_with``, ``ShardSteps.one_shard_in_flight``,
``ShardSteps.holds_what_was_loaded``, ``ShardSteps.agrees_with``); here each is fed a broken input (one copy
where the naive load holds two, two shards in flight, a loop that copied nothing, the shard loop's estimate
for from_pretrained) and must say False. Every slip of the lesson's five checkers is tried with its value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import bigsmall_lab as bsl
from bigsmall_lab import _compat, loading, placement
from bigsmall_lab._errors import LabError
from bigsmall_lab._units import GB, MiB, GiB
from bigsmall_lab.exercises import (check_disk_layers, check_largest_shard, check_meta_bytes, check_naive_peak,
                                    check_shard_loop_peak)
from bigsmall_lab.loading import LoadRun, ShardStep, ShardSteps
from bigsmall_lab.measure import MemoryReport

# test_loading's Llama of 15.5M parameters, bf16 on disk: ~31 MB, here in shards of at most 8 MB (several shards, so
# "every shard mapped" and "one shard in flight" differ by far more than the process's noise).
from .test_loading import SMALL  # noqa: E402


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt02") / "small"
    model = bsl.build(SMALL, dtype="bfloat16", seed=5)
    model.save_pretrained(folder, max_shard_size=8_000_000)
    del model
    return folder


# Memory measured in the test process depends on what ran before it: heap memory freed by an earlier load is
# reused without raising RSS (a loop measured 29.5 MB for 66 MB of new float32 weights right after another test's
# load). Each test that measures runs its loads in a fresh Python, after one warm-up loop (a fresh process's first
# load and forward pay one-time costs, ~5 MB here: above the claims' tolerances on a 31 MB checkpoint; the lesson's
# 360 MiB checkpoint runs after other loads, where 5 MB is 1%). The process prints one JSON line.
_PRELUDE = """
import json, os, sys
from bigsmall_lab import loading
from bigsmall_lab.exercises import check_shard_loop_peak
path = sys.argv[1]
loading.shard_by_shard(path, dtype="float32", forward=True)  # warm-up
"""


def _fresh(code: str, folder) -> dict:
    env = dict(os.environ, TRANSFORMERS_VERBOSITY="error", PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, "-c", _PRELUDE + code, str(folder)], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _steps(*rows: tuple[int, int, int, int], peak: int | None = None) -> ShardSteps:
    """ShardSteps from (shard, loaded, peak, after) rows; the run's peak defaults to the highest step peak."""
    steps = [ShardStep(f"s{i}", *row, seconds=0.0) for i, row in enumerate(rows, 1)]
    top = max(r[2] for r in rows) if peak is None else peak
    return ShardSteps(steps, MemoryReport("cpu", peak_bytes=top, finished=True), [], "cpu")


# --- the claims of cell "naive_estimate = ..." (section 1) --------------------------------------------------

def test_naive_claim_fails_when_the_naive_load_held_one_copy():
    params = bsl.count_parameters("bigsmall-small")
    two_copies = params * 4 + params * 2
    run = LoadRun("naive", MemoryReport("cpu", peak_bytes=two_copies, finished=True), [], params * 2)
    assert run.agrees_with(two_copies, 0.10)
    one_copy = LoadRun("naive", MemoryReport("cpu", peak_bytes=params * 4, finished=True), [], params * 2)
    assert not one_copy.agrees_with(two_copies, 0.10)  # the float32 model alone: 0.67 of the estimate
    assert not run.agrees_with(params * 2, 0.10)  # BMI's estimate (the checkpoint once) does not fit two copies


def test_bmi_claim_fails_when_bmi_held_the_checkpoint_twice():
    ckpt = 360 * MiB
    once = LoadRun("bmi", MemoryReport("cpu", peak_bytes=int(1.05 * ckpt), finished=True), [], ckpt)
    twice = LoadRun("bmi", MemoryReport("cpu", peak_bytes=2 * ckpt, finished=True), [], ckpt)
    assert once.agrees_with(ckpt, 0.10) and not twice.agrees_with(ckpt, 0.10)


def test_within_fails_on_either_side():
    assert loading.within(1_000, 1_000, 0.05) and loading.within(1_049, 1_000, 0.05)
    assert not loading.within(1_060, 1_000, 0.05) and not loading.within(940, 1_000, 0.05)


def test_agrees_with_refuses_nonsense_tolerances():
    run = LoadRun("x", MemoryReport("cpu", peak_bytes=10, finished=True), [], 10)
    for estimate, tol in ((0, 0.1), (10, 1.5), (10, -0.1)):
        with pytest.raises(LabError, match="cannot be compared"):
            run.agrees_with(estimate, tol)


# --- the claims of cell "for s in steps.steps" (section 4) ----------------------------------------------------

def test_one_shard_in_flight_fails_with_two_shards_or_the_whole_checkpoint():
    # 3 shards of 100: placed 100, 200, 300; each peak = placed + that shard's pages
    good = _steps((100, 100, 200, 100), (100, 200, 300, 200), (100, 300, 400, 300))
    assert good.one_shard_in_flight(0.1) == [True, True, True]
    two = _steps((100, 100, 200, 100), (100, 200, 400, 200), (100, 300, 400, 300))  # shard 1 kept while 2 loads
    assert two.one_shard_in_flight(0.1) == [True, False, True]
    mapped_all = _steps((100, 100, 400, 100), (100, 200, 500, 200), (100, 300, 600, 300))  # every shard mapped
    assert not any(mapped_all.one_shard_in_flight(0.1))


def test_holds_what_was_loaded_fails_when_nothing_was_copied_or_a_shard_was_kept():
    good = _steps((100, 100, 200, 101), (100, 200, 300, 199))
    assert all(good.holds_what_was_loaded(0.05))
    mapped = _steps((100, 100, 100, 2), (100, 200, 100, 3))  # copy=False: the weights stayed file pages
    assert not any(mapped.holds_what_was_loaded(0.05))
    kept = _steps((100, 100, 200, 200), (100, 200, 300, 300))  # each shard's dict kept after placing
    assert not any(kept.holds_what_was_loaded(0.05))


def test_estimate_peak_is_the_worst_shard_moment_and_its_claim_fails_off_it():
    steps = _steps((90, 180, 270, 180), (20, 220, 240, 220))
    assert steps.estimate_peak_bytes == 270 and steps.agrees_with(270, 0.05)
    assert not steps.agrees_with(220 + 90 + 20, 0.05)  # "every shard in flight" is not this loop


@pytest.mark.slow
def test_the_claims_hold_on_a_real_loop_and_fail_on_a_mapped_one(small_checkpoint):
    got = _fresh("""
copied = loading.shard_by_shard(path, copy=True)
mapped = loading.shard_by_shard(path, copy=False)  # what the claim rules out: nothing held
print(json.dumps({"flight": copied.one_shard_in_flight(0.10), "held": copied.holds_what_was_loaded(0.05),
                  "mapped_held": mapped.holds_what_was_loaded(0.05), "steps": [str(s) for s in copied.steps]}))
""", small_checkpoint)
    assert all(got["flight"]) and all(got["held"]), got["steps"]
    assert not all(got["mapped_held"])


# --- section 4: the two loaders side by side, and the phases of from_pretrained -----------------------------

@pytest.mark.slow
def test_from_pretrained_maps_every_shard_and_the_loop_one(small_checkpoint):
    got = _fresh("""
marks = []
cmp = loading.compare_loaders(path, dtype="float32", on_phase=marks.append)
acc, hf = cmp.accelerate, cmp.transformers
print(json.dumps({"n": len(acc.steps), "model": acc.steps[-1].loaded_bytes, "ckpt": hf.checkpoint_bytes,
                  "phases": [p.name for p in hf.phases], "marks": marks, "peaks": [p.peak_bytes for p in hf.phases],
                  "acc_phases": [[p.name, p.peak_bytes] for p in acc.phases], "hooked": hf.loader.hooked,
                  "all_at_once": hf.loader.all_shards_at_once, "hf_mapped": hf.mapped_bytes,
                  "acc_mapped": acc.mapped_bytes, "largest": acc.largest_shard_bytes,
                  "flight": acc.one_shard_in_flight(0.10), "acc_estimate": acc.estimate_peak_bytes}))
""", small_checkpoint)
    assert got["n"] >= 4
    assert got["model"] == 2 * got["ckpt"]  # bf16 on disk, float32 in the model
    # the phases were marked from inside the real call, in order, each with its exact peak
    assert got["phases"] == list(loading.BMI_PHASES)
    assert [m for m in got["marks"] if m.startswith("transformers: ")] == [f"transformers: {p}"
                                                                             for p in loading.BMI_PHASES]
    assert all(p is not None for p in got["peaks"]) and got["peaks"][2] == max(got["peaks"])
    assert got["hooked"] and got["all_at_once"]
    # the lesson's claims, and the same claims fed the other loader's figures
    # most of the checkpoint mapped at once (the lesson's claim: 3/4; measured 80-100% here, 94-100% at the lesson's
    # size: the sampled RssFile can miss pages already released), where the loop maps one shard
    # (a busy machine's kernel kept as little as 69 % resident: the test asks for more than one shard at once)
    assert got["hf_mapped"] > 1.5 * got["largest"], (got["hf_mapped"], got["largest"])
    assert not got["acc_mapped"] >= 0.75 * got["ckpt"]
    assert got["acc_mapped"] <= 1.1 * got["largest"] and not got["hf_mapped"] <= 1.1 * got["largest"]
    everything = got["model"] + got["ckpt"]
    loading_peak = max(peak for name, peak in got["acc_phases"] if name != "first forward")
    assert loading.within(loading_peak, got["acc_estimate"], 0.05)
    assert not loading.within(loading_peak, everything, 0.05)
    assert all(got["flight"])


@pytest.mark.slow
def test_turning_the_threads_off_changes_the_flag_not_the_peak(small_checkpoint):
    got = _fresh("""
_, threaded = loading.load_bmi_phases(path, dtype="float32", forward=False)
os.environ[threaded.loader.switch] = "1"
model, sequential = loading.load_bmi_phases(path, dtype="float32", forward=False)
print(json.dumps({"parallel": [threaded.loader.parallel, sequential.loader.parallel], "ckpt": sequential.checkpoint_bytes,
                  "seq_peak": sequential.peak_bytes, "mapped": [threaded.mapped_bytes, sequential.mapped_bytes],
                  "largest_shard": max(loading.shard_bytes(f) for f in loading.shard_files(path)),
                  "dtype": str(next(model.parameters()).dtype)}))
""", small_checkpoint)
    assert got["parallel"] == [True, False] and got["dtype"] == "torch.float32"
    # one tensor at a time in the main thread: the float32 model (2 x the bf16 checkpoint) plus every shard mapped
    assert loading.within(got["seq_peak"], 3 * got["ckpt"], 0.10)
    # Threads or not, more than one shard's pages are resident at once (a shard loop holds one). How many of the
    # mapped pages the kernel keeps resident varies on a busy machine (69-100 % of this small checkpoint measured),
    # so the test asks for more than the largest shard, not for the whole checkpoint (the lesson shows 358 of 360 MiB).
    assert all(mapped > 1.5 * got["largest_shard"] for mapped in got["mapped"]), (got["mapped"], got["largest_shard"])


def test_from_pretrained_phases_marks_and_restores(small_checkpoint):
    from transformers import AutoModelForCausalLM, modeling_utils

    before = (modeling_utils._get_device_map, modeling_utils.PreTrainedModel.__dict__["_load_pretrained_model"])
    seen = []
    with _compat.from_pretrained_phases(seen.append) as facts:
        AutoModelForCausalLM.from_pretrained(small_checkpoint, dtype="auto", device_map="cpu")
    assert seen == ["placement plan", "weights materialised"] and facts.hooked
    assert facts.threads == min(4, os.cpu_count() or 4) and facts.switch == "HF_DEACTIVATE_ASYNC_LOAD"
    after = (modeling_utils._get_device_map, modeling_utils.PreTrainedModel.__dict__["_load_pretrained_model"])
    assert after == before  # the library is left as it was


def test_loader_dtype_is_checked():
    with pytest.raises(LabError, match="dtype"):
        loading.compare_loaders("/nonexistent", dtype="int8")


# --- the slips of the lesson's checkers, each with its value -----------------------------------------------

def test_naive_peak_slips():
    params = bsl.count_parameters("bigsmall-small")
    fp32, bf16 = params * 4, params * 2
    right = fp32 + bf16
    untied = params + 8192 * 1024  # lm_head counted apart from the tied embeddings
    assert 2 * bf16 == fp32  # "two bfloat16 copies" is the float32 model's number: one explanation for it
    cases = {fp32: "float32 model alone", bf16: "weights once", 2 * fp32: "two float32 copies",
             untied * 6: "lm_head apart", right / GB: "in GB",
             right / GiB: "in GiB", right / MiB: "in MiB", right * 8: "in bits"}
    for value, words in cases.items():
        verdict = check_naive_peak(value, "bigsmall-small")
        assert not verdict.correct and verdict.slip and words in verdict.slip, (value, verdict)
    assert check_naive_peak(right, "bigsmall-small").correct


def test_meta_bytes_slips():
    bf16 = bsl.weights_bytes("llama-3.1-8b", "bfloat16")
    cases = {bf16: "bfloat16 once loaded", bsl.weights_bytes("llama-3.1-8b", "float32"): "float32",
             bsl.count_parameters("llama-3.1-8b"): "number of parameters", bf16 * 8: "in bits"}
    for value, words in cases.items():
        verdict = check_meta_bytes(value)
        assert verdict.slip and words in verdict.slip, (value, verdict)


def test_largest_shard_slips(small_checkpoint):
    sizes = [loading.shard_bytes(s) for s in loading.shard_files(small_checkpoint)]
    largest = max(sizes)
    cases = {sum(sizes): "whole checkpoint", min(sizes): "smallest shard", 2 * largest: "two shards",
             largest / GB: "in GB", largest / MiB: "in MiB", largest * 8: "in bits"}
    if abs(sum(sizes) / len(sizes) - largest) > 0.02 * largest:
        cases[sum(sizes) / len(sizes)] = "average shard"
    for value, words in cases.items():
        verdict = check_largest_shard(value, small_checkpoint)
        assert verdict.slip and words in verdict.slip, (value, verdict)
    assert check_largest_shard(largest, small_checkpoint).correct


def test_disk_layers_slips():
    right = placement.plan("bigsmall-small", "auto", {"cpu": "200MiB"})
    no_reserve = placement.plan("bigsmall-small", "auto",
                                {"cpu": right.budgets["cpu"] + right.largest_layer_bytes}).layers_on("disk")
    cases = {no_reserve: "largest layer", right.layers_on("cpu"): "layers the CPU keeps",
             right.n_blocks: "every decoder layer", right.weight_bytes_per_device["disk"]: "bytes that go to disk"}
    assert len(set(cases) | {right.layers_on("disk")}) == 5  # four slips, all apart from the answer
    for value, words in cases.items():
        verdict = check_disk_layers(value)
        assert verdict.slip and words in verdict.slip, (value, verdict)
    assert check_disk_layers(right.layers_on("disk")).correct


def test_shard_loop_peak_slips(small_checkpoint):
    # A loop into float32 over 4 shards of 25 bytes-units each (x 1 MiB): the model is 200, the checkpoint 100.
    u = MiB
    steps = _steps((25 * u, 50 * u, 75 * u, 50 * u), (25 * u, 100 * u, 125 * u, 100 * u),
                   (25 * u, 150 * u, 175 * u, 150 * u), (25 * u, 200 * u, 225 * u, 200 * u))
    right = steps.peak_bytes
    lesson_largest = max(loading.shard_bytes(s) for s in loading.shard_files(small_checkpoint))
    cases = {200 * u + 100 * u: "every shard in flight", 100 * u + 25 * u: "not the checkpoint's 2",
             200 * u + lesson_largest: "lesson's shards", right / GB: "in GB", right / MiB: "in MiB"}
    for value, words in cases.items():
        verdict = check_shard_loop_peak(value, steps, lesson_path=small_checkpoint)
        assert not verdict.correct and verdict.slip and words in verdict.slip, (value, verdict)
    assert check_shard_loop_peak(right * 1.02, steps).correct  # within the stated 3%
    assert not check_shard_loop_peak(right * 1.05, steps).correct
    with pytest.raises(LabError, match="is not a shard-by-shard run"):
        check_shard_loop_peak(1.0, {"peak": 1})


@pytest.mark.slow
def test_predict_then_run_on_a_real_loop(small_checkpoint):
    got = _fresh("""
steps = loading.shard_by_shard(path, dtype="float32", forward=True)
verdict = check_shard_loop_peak(steps.estimate_peak_bytes, steps)  # the lab's estimate, made before running
print(json.dumps({"correct": verdict.correct, "peak": steps.peak_bytes, "estimate": steps.estimate_peak_bytes}))
""", small_checkpoint)
    assert got["correct"], got  # within the stated 3%


def test_shard_loop_peak_on_a_gpu_takes_its_own_tolerance():
    # On a GPU the shard's pages are host memory: the GPU peak is the float32 model plus casting copies (an H200
    # measured 6.8% above the model). Built like a CUDA run: in flight 0, the run's peak 7% above the model.
    u = MiB
    rows = [(25 * u, 50 * u * i, 50 * u * i, 50 * u * i) for i in (1, 2, 3, 4)]
    steps = ShardSteps([ShardStep(f"s{i}", *row, seconds=0.0) for i, row in enumerate(rows, 1)],
                       MemoryReport("cuda", peak_bytes=214 * u, finished=True), [], "cuda")
    assert check_shard_loop_peak(200 * u, steps).correct  # the float32 model: within the GPU's 10%
    assert not check_shard_loop_peak(200 * u, steps, rel_tol=0.03).correct  # the CPU's 3% would refuse it
    assert "every shard in flight" in check_shard_loop_peak(300 * u, steps).slip


def test_loader_facts_without_a_hook():
    with _compat.from_pretrained_phases() as facts:  # nothing to mark: the facts alone
        assert facts.hooked and facts.parallel in (True, False) and facts.threads >= 1
