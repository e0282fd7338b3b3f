"""Exercises of lesson 02 (Big Model Inference): predict the memory of each way to load, then check.

Every expected value comes from the lab's planners (``weights_bytes``, ``placement.plan``) or from
the checkpoint's own files; the slips are the numbers a learner reaches by a known mistake.
"""

from __future__ import annotations

import os
from typing import Any

from .._units import GB, GiB
from ..estimates import weights_bytes
from ..placement import plan
from ..zoo import count_parameters
from ._core import Exercise, Slip, Verdict, ask

__all__ = ["check_disk_layers", "check_largest_shard", "check_meta_bytes", "check_naive_peak"]


def _unit_slips(expected: float) -> tuple[Slip, ...]:
    if expected == 0:
        return ()
    return (Slip(expected / GB, "that number is in GB; the question asks for bytes"),
            Slip(expected / GiB, "that number is in GiB; the question asks for bytes"))


def check_naive_peak(answer: float | None, config: Any = "bigsmall-small", dtype: str = "bfloat16") -> Verdict:
    """Bytes the naive load holds at its peak: PyTorch's random float32 model plus the checkpoint's
    state dict in ``dtype``, both alive while ``load_state_dict`` copies one into the other.

    >>> print(check_naive_peak(2 * 188_777_472 * 3, "bigsmall-small"))  # doctest: +ELLIPSIS
    [correct] ...
    """
    fp32, stored = weights_bytes(config, "float32"), weights_bytes(config, dtype)
    params = count_parameters(config)
    expected = fp32 + stored

    def build() -> Exercise:
        return Exercise(
            "naive_peak", expected=expected, rel_tol=0.01,
            why=f"{params:,} parameters x 4 bytes (the random float32 model) + x {stored // params} bytes (the "
                f"{dtype} state dict) = {expected:,} bytes, both alive while load_state_dict copies",
            hint="two copies exist at once: the model PyTorch builds (in its default dtype) and the state dict read "
                 "from the checkpoint (in the checkpoint's dtype)",
            slips=(Slip(fp32, "that is the float32 model alone; the state dict read from the shards is alive at the "
                              "same time"),
                   Slip(stored, f"that is the {dtype} weights once: the naive load holds two copies"),
                   Slip(2 * fp32, "two float32 copies: the state dict stays in the checkpoint's dtype until it is "
                                  "copied into the model"),
                   Slip(2 * stored, f"two {dtype} copies: PyTorch builds the model in float32, its default dtype, "
                                    "unless told otherwise"),
                   *_unit_slips(expected)))

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
                   Slip(params, "that is the number of parameters; each takes 0 bytes on meta")))

    return ask(("meta_bytes", str(config)), build).check(answer)


def check_largest_shard(answer: float | None, path: str | os.PathLike) -> Verdict:
    """Bytes the loader needs beyond the weights already placed, when it loads one shard at a time:
    the largest shard (within 2%: the files' headers are small).
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
            slips=(Slip(total, "that is the whole checkpoint: BMI never reads it all at once"),
                   Slip(total / len(sizes), "that is the average shard; the bound is the largest one"),
                   *_unit_slips(largest)),
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
        return Exercise(
            "disk_layers", expected=expected,
            why=f"the CPU's {budget:,} bytes minus the largest layer kept free ({right.largest_layer_bytes:,}) "
                f"hold the embeddings and {right.layers_on('cpu')} layers; the other {expected} go to disk",
            hint="budget minus the largest layer (kept free), minus the embeddings, divided by one layer's bytes",
            slips=tuple(slips))

    return ask(("disk_layers", str(config), str(cpu_memory), dtype), build).check(answer)
