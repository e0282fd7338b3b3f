"""Exercises of lesson 07 (device_map): predict where the planner puts the layers, then check.

Expected values come from :func:`bigsmall_lab.placement.plan` / ``fewest_gpus``; each slip is the
planner's own answer under the mistaken assumption (no room kept free on GPU 0, an even split,
bytes divided without whole layers), so it stays right when the library changes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .._units import GB, GiB, MiB
from ..placement import fewest_gpus, parse_budgets, plan
from ._core import Exercise, Slip, Verdict, ask, distinct_slips

__all__ = ["check_bytes_on_gpu", "check_fewest_gpus", "check_layers_on_cpu", "check_layers_on_gpu0"]


def _key(max_memory: Mapping[Any, Any]) -> tuple:
    return tuple(sorted((str(k), str(v)) for k, v in max_memory.items()))


def check_layers_on_gpu0(answer: float | None, config: Any, strategy: str, max_memory: Mapping[Any, Any],
                         dtype: str = "bfloat16") -> Verdict:
    """Decoder layers (no-split blocks) that ``device_map=strategy`` puts on GPU 0.

    >>> print(check_layers_on_gpu0(19, "llama-3.1-8b", "sequential", {0: "10GiB", 1: "10GiB"}))  # doctest: +ELLIPSIS
    [correct] 19 is right: ...
    """
    right = plan(config, strategy, max_memory, dtype=dtype)
    expected = right.layers_on(0)
    budgets = parse_budgets(max_memory)
    n_gpus = max(len(right.gpus), 1)
    # The planner's answer if GPU 0 kept no room for the largest layer.
    roomy = dict(budgets)
    roomy[0] = budgets.get(0, 0) + right.largest_layer_bytes
    no_reserve = plan(config, strategy, roomy, dtype=dtype).layers_on(0)
    even = right.n_blocks / n_gpus

    def build() -> Exercise:
        slips = []
        if no_reserve != expected:
            slips.append(Slip(no_reserve, f"GPU 0 keeps room for the largest layer ({right.largest_layer}, "
                                          f"{right.largest_layer_bytes / GiB:.2f} GiB) while anything may spill"))
        if even not in (expected, no_reserve):
            slips.append(Slip(even, f"{right.n_blocks} layers / {n_gpus} GPUs is an even split; "
                                    f"{strategy} does not split evenly by count"))
            slips.append(Slip(math.ceil(even), "an even split by count is not what the planner does"))
        per_block = right.smallest_block_bytes
        by_budget = budgets.get(0, 0) // per_block if per_block else 0
        if by_budget not in (expected, no_reserve, even, math.ceil(even)):
            slips.append(Slip(by_budget, "budget / one layer forgets the embeddings placed first and the room kept "
                                         "for the largest layer"))
        return Exercise(
            "layers_on_gpu0", expected=expected,
            why=f"{strategy} on these budgets gives GPU 0 {right.bytes_on(0) / GiB:.2f} GiB: "
                f"{expected} whole layers (plus what comes before them)",
            hint="what does this strategy do to GPU 0's budget? Then: the embeddings go first, and GPU 0 keeps "
                 "room for the largest layer",
            slips=tuple(slips))

    return ask(("layers_on_gpu0", str(config), strategy, _key(max_memory), dtype), build).check(answer)


def check_fewest_gpus(answer: float | None, config: Any, gpu_memory: str | int, dtype: str = "bfloat16",
                      quantization: str | None = None) -> Verdict:
    """The fewest GPUs of ``gpu_memory`` each that hold the whole model under ``device_map="auto"``."""
    right = fewest_gpus(config, gpu_memory, dtype=dtype, quantization=quantization)
    expected = len(right.gpus)
    gpu_bytes = parse_budgets({0: gpu_memory})[0]
    divided = right.total_bytes / gpu_bytes

    def build() -> Exercise:
        slips = [Slip(divided, "that is total / GPU size as a fraction: GPUs come whole, and whole layers too")]
        if math.ceil(divided) != expected:
            slips.append(Slip(math.ceil(divided), "total / GPU size rounded up forgets that layers are never split "
                                                  "and that GPU 0 keeps room for the largest layer"))
        if expected > 8:
            slips.append(Slip(8, "eight GPUs is what one machine usually holds, and not enough here"))
        return Exercise(
            "fewest_gpus", expected=expected,
            why=f"{right.total_bytes / GB:,.1f} GB in whole layers on {gpu_bytes / GB:g} GB GPUs needs {expected} "
                f"GPUs{' (more than one 8-GPU machine)' if expected > 8 else ''}",
            hint="start from total / GPU size, rounded up, then remember whole layers and GPU 0's reserved room",
            slips=tuple(slips), slip_tol=0.02)

    return ask(("fewest_gpus", str(config), str(gpu_memory), dtype, quantization), build).check(answer)


def check_bytes_on_gpu(answer: float | None, config: Any, strategy: str, max_memory: Mapping[Any, Any],
                       gpu: int = 0, dtype: str = "bfloat16") -> Verdict:
    """Bytes ``device_map=strategy`` places on GPU ``gpu`` (within 5%: a prediction, not a count)."""
    right = plan(config, strategy, max_memory, dtype=dtype)
    expected = right.bytes_on(gpu)
    n_gpus = max(len(right.gpus), 1)

    def build() -> Exercise:
        slips = [Slip(right.total_bytes / n_gpus, f"an even split by bytes ({n_gpus} GPUs) is not what {strategy} "
                                                  "does"),
                 Slip(right.budgets.get(gpu, 0), "that is the whole budget; the planner stops before it (whole layers, "
                                                 "and GPU 0 keeps room for the largest)"),
                 Slip(expected / GB, "that is in GB; write bytes"), Slip(expected / GiB, "that is in GiB; write bytes")]
        if right.planned_budgets.get(gpu) != right.budgets.get(gpu):
            slips.append(Slip(right.planned_budgets.get(gpu, 0), f"that is the budget {strategy} planned with; "
                                                                 "whole layers stop below it"))
        return Exercise(
            "bytes_on_gpu", expected=expected, rel_tol=0.05, slip_tol=0.01,
            why=f"{strategy} puts {right.layers_on(gpu)} layers on GPU {gpu}: {expected:,} bytes",
            hint=f"first work out the budget {strategy} gives GPU {gpu}, then fit whole layers into it",
            slips=tuple(s for s in slips if s.value and abs(s.value - expected) > 0.05 * expected))

    return ask(("bytes_on_gpu", str(config), strategy, _key(max_memory), gpu, dtype), build).check(answer)


def _mb_for_mib(max_memory: Mapping[Any, Any]) -> dict:
    """``max_memory`` with every "MiB"/"GiB" read as "MB"/"GB" (the slip of 2**20 for 10**6)."""
    return {k: v.replace("MiB", "MB").replace("GiB", "GB") if isinstance(v, str) else v for k, v in max_memory.items()}


def check_layers_on_cpu(answer: float | None, measured: int, config: Any, max_memory: Mapping[Any, Any],
                        dtype: str = "bfloat16") -> Verdict:
    """Decoder layers (no-split blocks) that ``device_map="auto"`` put on the CPU under ``max_memory``, as
    ``measured`` on the loaded model (``model.hf_device_map``); a count, so exact (tolerance 0). The
    rest of the layers goes to disk (or to the GPUs, when ``max_memory`` names some).

    Slips, each the planner's own answer under the learner's mistake: the budget divided by one layer
    (the embeddings and lm_head go first, and the CPU keeps room for the largest layer while anything
    may spill), no room kept free, "MiB" read as "MB", every layer, the layers that went to disk.

    >>> from bigsmall_lab.zoo import checkpoint
    >>> path = checkpoint("bigsmall-small")
    >>> print(check_layers_on_cpu(16, 12, path, {"cpu": "300MiB"}))  # doctest: +ELLIPSIS
    [not quite] You wrote 16: that is every layer; ... Hint: ...
    """
    right = plan(config, "auto", max_memory, dtype=dtype)
    expected = measured

    def build() -> Exercise:
        budgets = parse_budgets(max_memory)
        cpu = budgets.get("cpu", 0)
        layer = right.smallest_block_bytes
        firsts = [r for r in right.ranges if r.n_blocks == 0 and r.device == "cpu" and r.n_bytes]
        first = sum(r.n_bytes for r in firsts)  # placed before the layers: the embeddings (and an untied lm_head)
        named = " and ".join(r.label for r in firsts) or "nothing"
        roomy = dict(budgets)
        roomy["cpu"] = cpu + right.largest_layer_bytes
        on_disk = right.layers_on("disk")
        slips = [Slip(cpu // layer if layer else 0, f"the budget / one layer forgets what is placed first ({named}) "
                                                    "and the room the CPU keeps free for "
                                                    "the largest layer"),
                 Slip(plan(config, "auto", roomy, dtype=dtype).layers_on("cpu"),
                      f"the CPU keeps room for the largest layer ({right.largest_layer}, "
                      f"{right.largest_layer_bytes / MiB:,.1f} MiB) while anything may spill to disk"),
                 Slip((cpu - first) // layer if layer else 0, f"after {named}, the CPU still keeps "
                                                             "room for the largest layer free"),
                 Slip(plan(config, "auto", _mb_for_mib(max_memory), dtype=dtype).layers_on("cpu"),
                      "that reads MiB (2**20 bytes) as MB (10**6 bytes)"),
                 Slip(right.n_blocks, f"that is every layer; the budget holds only part of the {right.n_blocks}"),
                 Slip(on_disk, "that is the number of layers that went to disk")]
        return Exercise(
            "layers_on_cpu", expected=expected, example="5",
            why=(f"measured in hf_device_map: {expected} of {right.n_blocks} layers on the CPU (the planner said "
                 f"{right.layers_on('cpu')}); {named} ({first / MiB:,.1f} MiB) go first, each "
                 f"layer takes {layer / MiB:,.1f} MiB, and {right.largest_layer_bytes / MiB:,.1f} MiB stay free "
                 f"for the largest layer"),
            hint="the budget, minus what goes first (the embeddings, and lm_head unless it is tied), minus the room kept for the largest "
                 "layer, in whole layers",
            slips=distinct_slips(expected, slips))

    return ask(("layers_on_cpu", str(config), _key(max_memory), dtype, measured), build).check(answer)
