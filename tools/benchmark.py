"""Benchmarks (`make benchmark`): speed and memory figures, printed and written to benchmarks/<machine>.json.

Tests assert correctness and ordering; the figures a timing depends on live here. Each figure is
measured in this process, after imports, with bsl.track() for memory.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(fn, repeat: int = 3) -> dict:
    """The first call (what a learner waits for after import) and the best of ``repeat``, with peaks."""
    import bigsmall_lab as bsl
    from bigsmall_lab._units import MiB

    runs = []
    for _ in range(repeat):
        with bsl.track(device="cpu") as t:
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
        runs.append((elapsed, t.peak_bytes))  # the report is complete once the block has exited
    return {"first_seconds": round(runs[0][0], 3), "first_peak_mib": round(runs[0][1] / MiB, 1),
            "best_seconds": round(min(r[0] for r in runs), 3)}


_FRESH = """
import time
t0 = time.perf_counter()
import bigsmall_lab as bsl
t1 = time.perf_counter()
bsl.load_model()
t2 = time.perf_counter()
print(round(t1 - t0, 3), round(t2 - t1, 3))
"""


def _fresh_load() -> dict:
    """A new Python process: import the lab, then load the embedded model (the first cell of a lesson)."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True, check=True)
    import_s, load_s = map(float, out.stdout.split()[-2:])
    return {"import_seconds": import_s, "load_seconds": load_s, "target": "load under 2 s"}


def _loading_and_placement() -> dict:
    """Lessons 02 and 07: naive vs BMI peaks on the lesson's checkpoint, shard by shard, disk offload per
    token, and the planner's speed (405B cold and warm, the widget's redraw for 70B)."""
    import torch
    from transformers import AutoModelForCausalLM

    import bigsmall_lab as bsl
    from bigsmall_lab import loading, placement, views

    mib = 2**20
    out: dict = {}
    path = bsl.checkpoint("bigsmall-small", shard_size="100MB")
    loads = loading.compare_loads(path)
    out["load_naive_vs_bmi_bigsmall_small"] = {
        "naive_peak_mib": round(loads.naive.peak_bytes / mib, 1), "bmi_peak_mib": round(loads.bmi.peak_bytes / mib, 1),
        "ratio": round(loads.ratio, 2), "naive_seconds": round(loads.naive.report.wall_s, 2),
        "bmi_seconds": round(loads.bmi.report.wall_s, 2), "target": "naive peak >= 1.8x the BMI peak"}
    steps = loading.shard_by_shard(path)
    out["shard_by_shard_bigsmall_small"] = {
        "largest_shard_mib": round(steps.largest_shard_bytes / mib, 1),
        "after_each_shard_mib": [round(s.after_bytes / mib, 1) for s in steps.steps],
        "peak_during_each_shard_mib": [round(s.peak_bytes / mib, 1) for s in steps.steps],
        "loaded_so_far_mib": [round(s.loaded_bytes / mib, 1) for s in steps.steps]}
    full = AutoModelForCausalLM.from_pretrained(path, dtype="auto")
    placed = loading.load_placed(path, "auto", {"cpu": "200MiB"}, offload_folder=loading.offload_dir("benchmark"))
    ids = torch.randint(0, 1000, (1, 8), generator=torch.Generator().manual_seed(0))
    a, b = loading.generate_timed(full, ids, 6), loading.generate_timed(placed.model, ids, 6)
    out["disk_offload_bigsmall_small_cpu_200mib"] = {
        "disk_mib": round(placed.plan.weight_bytes_per_device.get("disk", 0) / mib, 1),
        "seconds_per_token_full": round(a.seconds_per_token, 3),
        "seconds_per_token_offloaded": round(b.seconds_per_token, 3),
        "ratio": round(b.seconds_per_token / a.seconds_per_token, 2), "same_tokens": a.tokens == b.tokens}
    del full, placed

    budgets = {**dict.fromkeys(range(8), "80GB"), "cpu": "512GB"}

    def plan_405b_cold():
        placement._cached_meta.cache_clear()  # the first plan of a preset builds its meta model
        placement.plan("llama-3.1-405b", "auto", budgets)

    out["plan_405b_cold"] = {**timed(plan_405b_cold), "target": "under 3 s"}
    out["plan_405b_warm"] = timed(lambda: placement.plan("llama-3.1-405b", "auto", budgets))
    out["fewest_gpus_405b_80gb"] = {**timed(lambda: placement.fewest_gpus("llama-3.1-405b", "80GB")),
                                    "gpus": len(placement.fewest_gpus("llama-3.1-405b", "80GB").gpus)}
    planner = views.PlacementPlanner(preset="llama-3.1-70b", n_gpus=8, gpu="L4")
    redraws = []
    for strategy in ("sequential", "balanced_low_0", "auto"):
        planner.strategy.value = strategy
        redraws.append(planner.redraw_s)
    out["planner_widget_redraw_70b"] = {"seconds": [round(r, 3) for r in redraws], "target": "well under 1 s"}
    return out


def _offloading() -> dict:
    """Lesson 05: each Diffusers offloading strategy on the lab's "small" FLUX pipeline (one image of
    16 x 16 pixels, 2 steps), as the lesson runs them (one CPU thread), and bfloat16 vs float32."""
    import torch

    import bigsmall_lab as bsl
    from bigsmall_lab.offload import Generation, OffloadSettings

    mib = 2**20
    bsl.offload.use_fresh_pages_for_big_tensors()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        disk = bsl.offload.default_offload_dir()
        settings = [OffloadSettings("model"), OffloadSettings("sequential"),
                    OffloadSettings("block_level", num_blocks_per_group=2), OffloadSettings("leaf_level"),
                    OffloadSettings("block_level", use_stream=True), OffloadSettings("leaf_level", use_stream=True),
                    OffloadSettings("block_level", num_blocks_per_group=2, offload_to_disk_path=disk),
                    OffloadSettings("leaf_level", offload_to_disk_path=disk, exclude=("text_encoder_2",))]
        rows = {}
        for r in bsl.offload.compare(settings, "small"):
            row = {"plan_mib": round(r.plan.device_bytes / mib, 1), "ran": r.ran}
            if r.ran:
                row.update(peak_mib=round(r.peak_bytes / mib, 1), held_mib=round(r.held_bytes / mib, 1),
                           load_peak_mib=round(r.load_peak_bytes / mib, 1),
                           seconds_per_image=round(r.seconds_per_image, 3), same_image=r.equal)
            rows[r.label] = row
        out = {"offload_small_flux_cpu_1_thread": rows}
        times = {}
        for dtype in ("float32", "bfloat16"):
            r = bsl.offload.run(OffloadSettings("none"), "small", dtype, "cpu", Generation(), warmup=True)
            times[dtype] = round(r.seconds_per_image, 3)
        out["offload_small_flux_bf16_vs_fp32_seconds_per_image"] = {
            **times, "ratio": round(times["bfloat16"] / times["float32"], 2),
            "note": "a CPU without bfloat16 hardware; the lesson runs float32 on a CPU"}
        return out
    finally:
        torch.set_num_threads(threads)


def main() -> int:
    import transformers  # noqa: F401  (import time is not what is measured)

    import bigsmall_lab as bsl

    results = {"machine": bsl.banner(), "python": platform.python_version()}
    config_405b = bsl.zoo.config_dict("llama-3.1-405b")

    def count_405b():
        # A dict is resolved afresh each call (preset names are cached): the first-count cost each time.
        bsl.count_parameters(dict(config_405b))

    def import_modeling_code():
        from transformers import LlamaForCausalLM  # noqa: F401  (transformers imports model code lazily)

    # One-time library cost a learner pays on the first count of a Llama in a fresh kernel.
    results["import_llama_modeling_code"] = timed(import_modeling_code, repeat=1)
    results["count_parameters_405b"] = {**timed(count_405b), "target": "under 2 s and 50 MB after import"}
    results["load_embedded_model_fresh_process"] = _fresh_load()
    results["load_embedded_model"] = {**timed(lambda: bsl.load_model()), "target": "under 2 s"}
    results["estimate_8b_nf4"] = timed(lambda: bsl.estimate("llama-3.1-8b", quantization="nf4"))
    # Lesson 06: tensor parallelism with torchrun, one process vs N (per-token times, per-rank bytes).
    results["tensor_parallel_tiny_2_ranks_cpu"] = bsl.parallel.run_tp(nproc=2, max_new_tokens=16,
                                                                      device="cpu").summary()
    results["tensor_parallel_smollm2_3_ranks_cpu"] = bsl.parallel.run_tp(
        "smollm2-135m-instruct", nproc=3, prompt="To open a file in Python, you", max_new_tokens=12,
        device="cpu").summary()
    if bsl.has_cuda() and bsl.describe().gpus[1:]:  # 2 or more GPUs: nccl, one rank per GPU
        results["tensor_parallel_tiny_2_ranks_gpu"] = bsl.parallel.run_tp(nproc=2, max_new_tokens=16,
                                                                          device="cuda").summary()
    results.update(_loading_and_placement())  # lessons 02 and 07
    results.update(_offloading())  # lesson 05
    kind = "gpu" if bsl.has_cuda() else "cpu"
    out = ROOT / "benchmarks" / f"{kind}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
