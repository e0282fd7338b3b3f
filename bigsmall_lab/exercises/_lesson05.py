"""Exercises of lesson 05 (offloading): predict what a strategy keeps on the GPU, then check.

Every expected value comes from :mod:`bigsmall_lab.offload`'s planner on FLUX.1-dev's real configs
(meta device) or on the lab's pipeline; each slip is the planner's own answer under the mistaken
assumption (no offloading, the wrong component, float32, blocks instead of groups), so it stays
right when a config or the library changes.
"""

from __future__ import annotations

import math

import torch

from .._dtypes import bytes_per_element, dtype_name
from .._units import GB, MiB
from ..offload import OffloadResult, pipeline_components
from ..offload_plan import OffloadSettings, component_sizes, flux_dev_components, plan_groups, plan_offload
from ._core import Exercise, Slip, Verdict, ask, byte_unit_slips, distinct_slips

__all__ = ["DISK_PEAK_TOLERANCE", "check_cpu_offload_saving", "check_disk_peak", "check_flux_transformer_bytes",
           "check_group_count", "check_model_offload_bytes"]

_BYTES = dict(fmt=",.0f", unit=" bytes", example="24e9 or 24_000_000_000")


def _sizes(dtype: str) -> dict[str, int]:
    return {c.name: c.weights_bytes for c in component_sizes(dtype=dtype)}


def check_flux_transformer_bytes(answer: float | None, dtype: str = "bfloat16") -> Verdict:
    """Bytes of FLUX.1-dev's transformer weights in ``dtype`` (parameters x bytes per parameter).

    >>> print(check_flux_transformer_bytes(23_802_816_640))
    [correct] 23,802,816,640 bytes is right: 11,901,408,320 parameters x 2 bytes (bfloat16) = 23.80 GB.
    """
    dtype = dtype_name(dtype)

    def build() -> Exercise:
        sizes = _sizes(dtype)
        expected = sizes["transformer"]
        params = expected / bytes_per_element(dtype)
        slips = [Slip(params, "that is the number of parameters; multiply by the bytes per parameter"),
                 Slip(sum(sizes.values()), "that is the whole pipeline (text encoders and VAE too); "
                                           "the question is the transformer alone"),
                 Slip(expected * 8, "that is bits (8 per byte); the question asks for bytes"),
                 *byte_unit_slips(expected)]
        for other in ("float32", "bfloat16"):
            if bytes_per_element(other) != bytes_per_element(dtype):
                slips.append(Slip(params * bytes_per_element(other),
                                  f"that is {other} ({bytes_per_element(other):g} bytes per parameter); {dtype} "
                                  f"takes {bytes_per_element(dtype):g}"))
        return Exercise("flux_transformer_bytes", expected=expected,
                        why=f"{params:,.0f} parameters x {bytes_per_element(dtype):g} bytes ({dtype}) = "
                            f"{expected / GB:.2f} GB",
                        hint="count_parameters('flux.1-dev-transformer') gives the parameters; then bytes per "
                             "parameter of the dtype",
                        slips=tuple(slips), rel_tol=0.01, slip_tol=0.01, **_BYTES)

    return ask(("lesson05", "flux_transformer_bytes", dtype), build).check(answer)


def check_model_offload_bytes(answer: float | None, dtype: str = "bfloat16") -> Verdict:
    """Bytes of FLUX.1-dev's weights on the GPU at the peak with ``pipe.enable_model_cpu_offload()``.

    >>> print(check_model_offload_bytes(23_802_816_640))
    [correct] 23,802,816,640 bytes is right: model offloading moves one whole component at a time, so the GPU needs the largest: the transformer (23.80 GB).
    """
    dtype = dtype_name(dtype)

    def build() -> Exercise:
        components = flux_dev_components(dtype)
        right = plan_offload(components, OffloadSettings("model"), device="cuda")
        sizes = {name: b for name, b in right.by_component.items()}
        none = plan_offload(components, OffloadSettings("none"), device="cuda").device_bytes
        text = sizes["text_encoder"] + sizes["text_encoder_2"]
        slips = [Slip(none, "that is every component at once: no offloading"),
                 Slip(text, "that is both text encoders together; they run one after the other, and the "
                            "transformer is bigger than both"),
                 Slip(sizes["text_encoder_2"], "that is the T5 encoder, the largest text encoder; one component "
                                               "is bigger still"),
                 Slip(none - right.device_bytes, "that is what waits on the CPU; the question is what is on the GPU"),
                 Slip(right.device_bytes - text, "that leaves out the text encoders, but they are not part of the "
                                                 "transformer: the GPU holds the transformer whole"),
                 Slip(right.device_bytes * 8, "that is bits (8 per byte); the question asks for bytes"),
                 *byte_unit_slips(right.device_bytes)]
        if dtype != "float32":
            slips.append(Slip(right.device_bytes * bytes_per_element("float32") / bytes_per_element(dtype),
                              "that is float32; the weights are in " + dtype))
        return Exercise("model_offload_bytes", expected=right.device_bytes,
                        why=f"model offloading moves one whole component at a time, so the GPU needs the largest: "
                            f"the {right.largest} ({right.device_bytes / GB:.2f} GB)",
                        hint="components run one after another (text encoders, then the transformer at every "
                             "step, then the VAE); which one is largest?",
                        slips=tuple(slips), rel_tol=0.01, slip_tol=0.01, **_BYTES)

    return ask(("lesson05", "model_offload_bytes", dtype), build).check(answer)


def check_group_count(answer: float | None, num_blocks_per_group: int = 2) -> Verdict:
    """How many groups block-level offloading cuts FLUX.1-dev's transformer into.

    >>> print(check_group_count(30))
    [correct] 30 is right: ceil(19 / 2) + ceil(38 / 2) groups of blocks + 1 group for the rest = 30.
    """
    def build() -> Exercise:
        transformer = flux_dev_components(torch.bfloat16)["transformer"]
        settings = OffloadSettings("block_level", num_blocks_per_group=num_blocks_per_group)
        expected = plan_offload({"transformer": transformer}, settings, device="cuda").n_groups
        lists = [len(c) for c in transformer.children() if isinstance(c, (torch.nn.ModuleList, torch.nn.Sequential))]
        blocks = sum(lists)
        per_list = sum(math.ceil(n / num_blocks_per_group) for n in lists)
        slips = [Slip(per_list, "those are the groups of blocks; everything outside the block lists (the "
                                "embedders, the final norm and projection) is one more group"),
                 Slip(blocks, "that counts blocks, not groups of blocks"),
                 Slip(blocks + 1, "that counts blocks (plus the rest), not groups of blocks"),
                 Slip(blocks / num_blocks_per_group, "each block list is cut on its own, and a last, shorter "
                                                     "group still counts"),
                 Slip(blocks // num_blocks_per_group, "each block list is cut on its own (round up per list), "
                                                      "and the rest of the transformer is one more group")]
        return Exercise("group_count", expected=expected,
                        why=f"{' + '.join(f'ceil({n} / {num_blocks_per_group})' for n in lists)} groups of blocks "
                            f"+ 1 group for the rest = {expected}",
                        hint=f"FLUX's transformer has two block lists ({' and '.join(map(str, lists))} blocks); "
                             "each is cut into groups on its own, and what is not in a list forms one more group",
                        slips=tuple(s for s in slips if s.value != expected), example="12")

    return ask(("lesson05", "group_count", num_blocks_per_group), build).check(answer)


def check_cpu_offload_saving(answer: float | None, pipeline: str = "small") -> Verdict:
    """Bytes of RAM that ``enable_model_cpu_offload()`` saves on a CPU-only machine (the plan).

    >>> print(check_cpu_offload_saving(0, pipeline="tiny"))
    [correct] 0 bytes is right: on a CPU the fast and the slow memory are the same RAM: 'offloading to the CPU' moves each weight from RAM to RAM, so nothing is saved.
    """
    def build() -> Exercise:
        components = pipeline_components(pipeline, torch.float32)
        none = plan_offload(components, OffloadSettings("none"), device="cpu").device_bytes
        on_cpu = plan_offload(components, OffloadSettings("model"), device="cpu").device_bytes
        on_gpu = plan_offload(components, OffloadSettings("model"), device="cuda")
        expected = none - on_cpu
        text = sum(b for name, b in on_gpu.by_component.items() if name.startswith("text_encoder"))
        slips = [Slip(none - on_gpu.device_bytes, "that is what it saves on a GPU; on a CPU the offload device is "
                                                  "the same RAM"),
                 Slip(on_gpu.device_bytes, f"that is the {on_gpu.largest}; on a CPU it never leaves, there is "
                                           "nowhere else to put it"),
                 Slip(none, "that is every weight; they all stay in RAM"),
                 Slip(text, "that is the text encoders: on a GPU they leave after encoding the prompt, on a CPU they "
                            "stay in the same RAM")]
        return Exercise("cpu_offload_saving", expected=expected,
                        why="on a CPU the fast and the slow memory are the same RAM: 'offloading to the CPU' moves "
                            "each weight from RAM to RAM, so nothing is saved",
                        hint="where is the 'CPU' that the weights are offloaded to, on a machine with no GPU?",
                        slips=tuple(s for s in slips if s.value != expected), slip_tol=0.05, **_BYTES)

    return ask(("lesson05", "cpu_offload_saving", str(pipeline)), build).check(answer)


# A prediction of a measured peak counts as right within 10 %: the plan counts weights only, and the
# measurement adds activations and the runtime (3 % more than the plan at 2 blocks per group on the lab's
# small pipeline, lesson 05); 10 % leaves room for that and for the allocator, and still tells 1 block per
# group from 2 (the planned peak grows by about 85 % from 1 to 2 there).
DISK_PEAK_TOLERANCE = 0.10


def check_disk_peak(answer: float | None, result: OffloadResult) -> Verdict:
    """The learner's prediction (MiB) of ``result``'s measured peak while generating: block level to disk
    with the ``num_blocks_per_group`` the learner chose. Right within :data:`DISK_PEAK_TOLERANCE`.

    The slips are the plans under a mistaken assumption: the other group size of the lesson (2 blocks),
    one block per group, no offloading, the largest group of blocks without the transformer's other
    layers, and the measured figure in bytes or GB.
    """
    if not isinstance(result, OffloadResult) or not result.ran or result.peak_bytes is None or not result.pipeline:
        from .._errors import LabError

        raise LabError.bad("result", result, "pass what bsl.offload.run(...) returned for your settings",
                           verb="is not a measured run")
    settings = result.settings
    n = settings.num_blocks_per_group
    if settings.strategy.value != "block_level" or not settings.disk:
        from .._errors import LabError

        raise LabError.bad("result", settings.label, "run OffloadSettings('block_level', num_blocks_per_group=N, "
                           "offload_to_disk_path=...)", verb="is not block level to disk")
    expected = result.peak_bytes / MiB
    device = "cuda" if result.device.startswith("cuda") else "cpu"

    def build() -> Exercise:
        components = pipeline_components(result.pipeline, result.dtype)

        def planned(**kw) -> float:
            return plan_offload(components, OffloadSettings("block_level", offload_to_disk_path=settings.offload_to_disk_path,
                                                    **kw), device).device_bytes / MiB

        largest = result.plan.largest
        chunks = [g.weights_bytes for g in plan_groups(components[largest], settings) if g.kind == "blocks"]
        slips = [Slip(planned(num_blocks_per_group=2), "that is about the peak with 2 blocks per group (the run "
                                                       f"above); this run has {n}"),
                 Slip(planned(num_blocks_per_group=1), f"that is about one block per group; this run has {n}"),
                 Slip(plan_offload(components, OffloadSettings("none"), device).device_bytes / MiB,
                      "that is every weight: with disk offloading only the groups in use stay in memory"),
                 Slip(max(chunks, default=0) / MiB, f"that is the largest group of blocks alone; the {largest}'s "
                                                    "other layers (its unmatched group) stay in memory during its "
                                                    "whole forward pass, under every group"),
                 Slip(result.peak_bytes, "that is in bytes; the question asks for MiB (2**20 bytes)"),
                 Slip(result.peak_bytes / GB, "that is in GB; the question asks for MiB (2**20 bytes)")]
        return Exercise("disk_peak", expected=expected,
                        why=f"measured {expected:,.1f} MiB while generating; the plan said "
                            f"{result.plan.device_bytes / MiB:,.1f} MiB of weights ({largest} sets it), and "
                            "activations come on top",
                        hint=f"plan the {largest}: one group of {n} blocks plus the layers outside its block lists, "
                             "which stay in memory during its whole forward; add a few MiB of activations",
                        slips=distinct_slips(expected, slips, gap=DISK_PEAK_TOLERANCE), rel_tol=DISK_PEAK_TOLERANCE,
                        slip_tol=0.05, fmt=",.1f", unit=" MiB", example="150")

    return ask(("lesson05", "disk_peak", n, result.peak_bytes), build).check(answer)

