"""Exercises of lesson 02 (Big Model Inference): predict the memory of each way to load, then check.

Every expected value comes from the lab's planners (``weights_bytes``, ``placement.plan``) or from
the checkpoint's own files; the slips are the numbers a learner reaches by a known mistake.
"""

from __future__ import annotations

import os
from typing import Any

from .._units import MiB
from ..estimates import weights_bytes
from ..placement import plan
from ..zoo import count_parameters
from ._core import Exercise, Slip, Verdict, ask, byte_unit_slips, config_layout, distinct_slips

__all__ = ["SHARD_LOOP_TOLERANCE", "check_disk_layers", "check_largest_shard", "check_meta_bytes", "check_naive_peak",
           "check_shard_loop_peak"]


def _unit_slips(expected: float) -> tuple[Slip, ...]:
    """GB, GiB or MiB where bytes were asked (2 % for rounding), and bits (x 8) for bytes."""
    if expected == 0:
        return ()
    return (*byte_unit_slips(expected),
            Slip(expected / MiB, "that number is in MiB (2**20 bytes); the question asks for bytes", 0.02),
            Slip(expected * 8, "that is in bits (x 8); the question asks for bytes"))


def _untied_params(config: Any) -> int:
    """Parameters counted with ``lm_head`` apart from the embeddings it is tied to (0 if untied)."""
    cfg, *_ = config_layout(config)
    if not cfg.get("tie_word_embeddings", False):
        return 0
    return count_parameters(config) + cfg["vocab_size"] * cfg["hidden_size"]


def check_naive_peak(answer: float | None, config: Any = "bigsmall-small", dtype: str = "bfloat16") -> Verdict:
    """Bytes the naive load holds at its peak: PyTorch's random float32 model plus the checkpoint's
    state dict in ``dtype``, both alive while ``load_state_dict`` copies one into the other.

    >>> print(check_naive_peak(2 * 188_777_472 * 3, "bigsmall-small"))  # doctest: +ELLIPSIS
    [correct] ...
    """
    fp32, stored = weights_bytes(config, "float32"), weights_bytes(config, dtype)
    params = count_parameters(config)
    expected = fp32 + stored
    untied = _untied_params(config)
    tied_slip = (Slip(untied * (fp32 + stored) / params, "you counted lm_head apart from the embeddings; they are "
                      "tied (one tensor), so the parameter count above already holds them once"),) if untied else ()

    def build() -> Exercise:
        return Exercise(
            "naive_peak", expected=expected, rel_tol=0.01,
            why=f"{params:,} parameters x 4 bytes (the random float32 model) + x {stored // params} bytes (the "
                f"{dtype} state dict) = {expected:,} bytes, both alive while load_state_dict copies",
            hint="two copies exist at once: the model PyTorch builds (in its default dtype) and the state dict read "
                 "from the checkpoint (in the checkpoint's dtype)",
            # 2 x bf16 equals the float32 model: distinct_slips keeps the first explanation of a number
            slips=distinct_slips(expected, (
                Slip(fp32, "that is the float32 model alone; the state dict read from the shards is alive at the same "
                           "time"),
                Slip(stored, f"that is the {dtype} weights once: the naive load holds two copies"),
                Slip(2 * fp32, "two float32 copies: the state dict stays in the checkpoint's dtype until it is copied "
                               "into the model"),
                Slip(2 * stored, f"two {dtype} copies: PyTorch builds the model in float32, its default dtype, unless "
                                 "told otherwise"),
                *tied_slip,
                *_unit_slips(expected)), gap=0.01))

    return ask(("naive_peak", str(config), dtype), build).check(answer)


def check_meta_bytes(answer: float | None, config: Any = "llama-3.1-8b") -> Verdict:
    """Bytes of memory the model of ``config`` uses when built on the meta device: none.

    >>> print(check_meta_bytes(0))  # doctest: +ELLIPSIS
    [correct] 0 is right: ...
    """
    params = count_parameters(config)

    def build() -> Exercise:
        return Exercise(
            "meta_bytes", expected=0,
            why="meta tensors carry a shape and a dtype and no data: the model exists, its weights take no memory",
            hint="what does a tensor on the meta device store?",
            slips=(Slip(weights_bytes(config, "bfloat16"), "that is what its weights take in bfloat16 once loaded; "
                                                           "on meta nothing is allocated"),
                   Slip(weights_bytes(config, "float32"), "that is float32 (meta models default to it) once loaded; on "
                                                          "meta nothing is allocated"),
                   Slip(params, "that is the number of parameters; each takes 0 bytes on meta"),
                   Slip(weights_bytes(config, "bfloat16") * 8, "that is its bfloat16 weights in bits once loaded; "
                                                               "on meta nothing is allocated")))

    return ask(("meta_bytes", str(config)), build).check(answer)


def check_largest_shard(answer: float | None, path: str | os.PathLike) -> Verdict:
    """Bytes accelerate's shard loop needs beyond the weights already placed, loading one shard at a time:
    the largest shard (within 2%: the files' headers are small).

    >>> import bigsmall_lab as bsl
    >>> from bigsmall_lab.loading import shard_bytes, shard_files
    >>> path = bsl.checkpoint("bigsmall-tiny", shard_size="5MB", progress=False)  # 3 shards
    >>> check_largest_shard(sum(map(shard_bytes, shard_files(path))), path).slip
    'that is the whole checkpoint: every shard at once is what transformers 5 maps, not the shard loop'
    """
    from ..loading import shard_bytes, shard_files

    sizes = [shard_bytes(p) for p in shard_files(path)]
    largest, total = max(sizes), sum(sizes)

    def build() -> Exercise:
        return Exercise(
            "largest_shard", expected=largest, rel_tol=0.02,
            why=f"one shard at a time is read, placed and dropped: at most the largest of the {len(sizes)} shards "
                f"({largest:,} bytes) is in flight",
            hint="look at the sizes of the *.safetensors files: how many are read at once?",
            slips=distinct_slips(largest, (
                Slip(total, "that is the whole checkpoint: every shard at once is what transformers 5 maps, not the "
                            "shard loop"),
                Slip(total / len(sizes), "that is the average shard; the bound is the largest one"),
                Slip(min(sizes), "that is the smallest shard; the bound is the largest one"),
                Slip(2 * largest, "two shards: the loop drops each shard before it reads the next"),
                *_unit_slips(largest)), gap=0.02),
            slip_tol=0.02)

    return ask(("largest_shard", str(path)), build).check(answer)


def check_disk_layers(answer: float | None, config: Any = "bigsmall-small", cpu_memory: str | int = "200MiB",
                      dtype: str = "bfloat16") -> Verdict:
    """Decoder layers ``from_pretrained(device_map="auto", max_memory={"cpu": cpu_memory})`` sends to disk."""
    right = plan(config, "auto", {"cpu": cpu_memory}, dtype=dtype)
    budget = right.budgets["cpu"]
    expected = right.layers_on("disk")
    embed = sum(r.n_bytes for r in right.ranges if r.device == "cpu" and not r.n_blocks)
    # Each slip is the planner's own answer for the budget the mistaken reasoning assumes.
    no_reserve = plan(config, "auto", {"cpu": budget + right.largest_layer_bytes}, dtype=dtype).layers_on("disk")
    no_embed = plan(config, "auto", {"cpu": budget + embed}, dtype=dtype).layers_on("disk")

    def build() -> Exercise:
        slips = []
        if no_reserve != expected:
            slips.append(Slip(no_reserve, f"the CPU keeps room for the largest layer ({right.largest_layer}, "
                                          f"{right.largest_layer_bytes:,} bytes) to bring an offloaded one in: "
                                          "subtract it from the budget first"))
        if no_embed not in (expected, no_reserve):
            slips.append(Slip(no_embed, f"the embeddings ({embed:,} bytes) go first and use part of the budget"))
        if right.layers_on("cpu") not in (expected, no_reserve, no_embed):
            slips.append(Slip(right.layers_on("cpu"), "that is the number of layers the CPU keeps; the question "
                                                      "asks how many go to disk"))
        if right.n_blocks not in (expected, no_reserve, no_embed, right.layers_on("cpu")):
            slips.append(Slip(right.n_blocks, "that is every decoder layer of the model; the CPU keeps some"))
        disk_bytes = right.weight_bytes_per_device.get("disk", 0)
        if disk_bytes:
            slips.append(Slip(disk_bytes, "that is the bytes that go to disk; the question asks how many decoder "
                                          "layers", 0.02))
        return Exercise(
            "disk_layers", expected=expected,
            why=f"the CPU's {budget:,} bytes minus the largest layer kept free ({right.largest_layer_bytes:,}) "
                f"hold the embeddings and {right.layers_on('cpu')} layers; the other {expected} go to disk",
            hint="budget minus the largest layer (kept free), minus the embeddings, divided by one layer's bytes",
            slips=tuple(slips))

    return ask(("disk_layers", str(config), str(cpu_memory), dtype), build).check(answer)


# How close a prediction of the loop's peak must be: on a CPU the peak is the kernel's exact high-water mark of
# sums of whole tensors (0.1% off the estimate, measured); on a GPU torch's allocator holds more than the placed
# weights while tensors are cast and the first forward runs (an H200 with transformers 5.17 measured the loop's
# peak 6.3-6.8% above the float32 model: benchmarks/lesson02_gpu_h200.json).
SHARD_LOOP_TOLERANCE = {"cpu": 0.03, "cuda": 0.10}


def check_shard_loop_peak(answer: float | None, measured: Any, lesson_path: str | os.PathLike | None = None,
                          rel_tol: float | None = None) -> Verdict:
    """Predict-then-run: the peak (bytes above its start) of accelerate's shard loop into float32, checked
    against the run that ``measured`` holds (:class:`~bigsmall_lab.loading.ShardSteps`), within ``rel_tol``
    (default :data:`SHARD_LOOP_TOLERANCE` for the run's device: 3% on a CPU, 10% on a GPU).

    The lab's estimate is the float32 model plus the largest shard's mapped pages in flight at the last
    shard; the slips are that sum with a known mistake (every shard in flight, the cast forgotten, the
    shards of ``lesson_path`` (the lesson's checkpoint) instead of yours, no shard at all), each the lab's
    own numbers for the checkpoint.
    """
    from ..loading import ShardSteps, shard_bytes, shard_files

    if not isinstance(measured, ShardSteps):
        from .._errors import LabError

        raise LabError.bad("measured", measured, "pass the ShardSteps that bsl.loading.shard_by_shard returned",
                           verb="is not a shard-by-shard run")
    shards = [s.shard_bytes for s in measured.steps]
    placed = measured.steps[-1].loaded_bytes  # the model's weights once placed (float32)
    stored = sum(shards)  # the checkpoint on disk (bfloat16)
    expected = measured.peak_bytes
    key = ("shard_loop_peak", measured.device, expected, len(shards), rel_tol)

    on_gpu = measured.device == "cuda"  # the shard's pages stay in host memory: the GPU holds the copies only
    rel_tol = SHARD_LOOP_TOLERANCE[measured.device] if rel_tol is None else rel_tol

    def build() -> Exercise:
        slips = [Slip(placed + stored, "that is every shard in flight at once (what from_pretrained's mapped shards "
                                       "cost); the loop holds one shard at a time"),
                 Slip(stored + max(shards), "the model is float32 here: 4 bytes per weight, not the checkpoint's 2")]
        if not on_gpu:
            slips.append(Slip(placed, "that is the float32 model alone; the largest shard's pages are in flight on top "
                                      "of it at the last shard"))
        if lesson_path is not None:
            old = max(shard_bytes(p) for p in shard_files(lesson_path))
            slips.append(Slip(placed + old, "that is the peak with the lesson's shards; with your shard size the "
                                            "largest shard is another size"))
        slips.extend(_unit_slips(expected))
        if on_gpu:
            why = (f"measured on the GPU: {expected:,} bytes; the float32 model is {placed:,}: each shard is read in "
                   "host memory and only its copies reach the GPU; casting and the first forward add a little")
            hint = "the model in float32 (4 bytes per parameter); where does the shard being read live?"
        else:
            why = (f"measured: {expected:,} bytes; the float32 model ({placed:,}) plus the shard in flight at the worst "
                   f"moment (your largest of {len(shards)} is {max(shards):,}) is {measured.estimate_peak_bytes:,}")
            hint = ("the model in float32 (4 bytes per parameter) plus what is in flight while the last shards load: "
                    "how big is your largest shard?")
        return Exercise(
            "shard_loop_peak", expected=expected, rel_tol=rel_tol, fmt=",.0f", unit=" bytes", why=why, hint=hint,
            slips=distinct_slips(expected, slips, gap=rel_tol))

    return ask(key, build).check(answer)
