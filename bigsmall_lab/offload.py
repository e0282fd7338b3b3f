"""Offloading with Diffusers, run and measured: load a pipeline, apply a strategy with the library's
own calls, generate one image, and measure it against the plan.

What each strategy keeps on the compute device is planned in :mod:`bigsmall_lab.offload_plan`
(pure: module sizes in, bytes out; it works on the meta device). This module runs it.

Over 600 lines on purpose: :func:`run` and its siblings share the loading, the library calls, the
glibc settings that make disk offloading measurable and the image comparison; split apart, each
would import the others' private helpers.

On a CPU the "fast" and the "slow" memory are the same RAM: moving weights "to the CPU" moves
nothing, so model and group offloading to the CPU save nothing there (the hooks still run: the same
code a GPU uses). Offloading to disk does free RAM, and :func:`run` measures how much.
Sequential offload and CUDA streams need an accelerator; on a CPU they are planned, not run.

:func:`run` loads a pipeline afresh for each strategy, applies it with the library's own calls,
generates one image and measures the compute device's peak above what the process held before
loading (on a CPU the kernel's exact high-water mark, on CUDA ``max_memory_allocated``). On Linux it
first asks glibc to give every block of 1 MiB or more its own pages
(:func:`use_fresh_pages_for_big_tensors`; best called before anything big is loaded): without that, the empty placeholders that disk offloading
leaves in place of each weight reuse the weights' still-resident pages and hide the saving.
Every runner here takes the pipeline first, then the settings (as ``kvcache.generate(model, ids, cache)``):
``run(pipeline, settings, ...)``, :func:`compare_strategies`, :func:`planned`, :func:`measure_pinned`,
:func:`groups_built_by_diffusers`.

>>> from bigsmall_lab.offload_plan import OffloadSettings
>>> OffloadSettings("leaf_level", use_stream=True).needs_accelerator is not None
True
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ._compat import diffusers_dtype_kwarg
from ._errors import LabError, closest, whole_number
from ._paths import writing_into
from ._units import MiB
from .measure import MemoryReport, phase_hook, track
from .offload_plan import (ImageSettings, OffloadPlan, OffloadSettings, OffloadStrategy, PinnedPlan, PlannedGroup,
                           _group, _tensors, known_problems, pinned_memory_plan, plan_offload, tied_leaf_parameters)

# Planning names kept here for one release; they live in bigsmall_lab.offload_plan now (import them from there).
from .offload_plan import (  # noqa: F401
    FLUX_DEV_CONFIGS, FLUX_DEV_VAE_CONFIG, PUBLISHED, ComponentSize, PublishedFigure, block_modules_of, component_sizes,
    flux_dev_components, module_tensor_bytes, plan_groups, published, same_groups,
)
Strategy = OffloadStrategy  # old name, one release: offload_plan.OffloadStrategy (placement.Strategy is device_map's)
Generation = ImageSettings  # old name, one release: offload_plan.ImageSettings (loading.Generation: a timed run)
# estimates.weights_bytes(config) counts a config's weights; this one read a module's tensors.
weights_bytes = module_tensor_bytes  # old name, one release: offload_plan.module_tensor_bytes
plan = plan_offload  # old name, one release: offload_plan.plan_offload

__all__ = [
    "IMAGE_ATOL", "OffloadResult", "OffloadWarning", "PinnedMeasurement", "applied_groups", "check",
    "checkpoint_dtypes", "compare_strategies", "default_dtype", "default_offload_dir", "groups_built_by_diffusers",
    "measure_pinned", "pipeline_components", "pipeline_folder", "planned", "run", "same_image", "time_ratio",
    "use_fresh_pages_for_big_tensors",
]


class OffloadWarning(UserWarning):
    """A combination of settings known to give wrong output on this pipeline."""


def _looks_like_settings(value: Any) -> bool:
    return isinstance(value, (OffloadSettings, OffloadStrategy)) or (
        isinstance(value, str) and value.strip().lower() in {s.value for s in OffloadStrategy})


def _pipeline_first(pipeline: Any, settings: Any, name: str) -> tuple[Any, Any]:
    """(pipeline, settings), put back with a DeprecationWarning when a call still uses the old order
    (settings first): the strategy names and the pipeline sizes ('tiny', 'small') never overlap."""
    if not _looks_like_settings(pipeline):
        return pipeline, settings
    warnings.warn(f"offload.{name} takes the pipeline first, then the settings: {name}(pipeline, settings, ...)",
                  DeprecationWarning, stacklevel=3)
    # run(OffloadSettings("model")) in the old order leaves the settings at their default: the default pipeline.
    return ("small" if _looks_like_settings(settings) else settings), pipeline


def time_ratio(result: OffloadResult, baseline: OffloadResult) -> float:
    """How many times longer ``result`` took per image than ``baseline`` (medians; nan when either did not run)."""
    if not (result.seconds_per_image and baseline.seconds_per_image):
        return math.nan
    return result.seconds_per_image / baseline.seconds_per_image


@dataclass
class OffloadResult:
    """One strategy, planned and (where it can run here) run and measured.

    ``peak_bytes``: the compute device's peak while generating one image, above what the process
    held before the pipeline was loaded (the floor): weights + activations. ``held_bytes``: what it
    held just before generating. ``load_peak_bytes``: the peak while loading and applying the
    strategy. On CUDA, ``host_peak_bytes`` is the CPU RAM peak while generating (above its own floor).
    ``equal``: the image matches the baseline's within :data:`IMAGE_ATOL` (``bitwise``: bit for bit);
    ``max_abs_diff`` the largest difference (nan when the image holds nan). Not run here: ``ran`` is False and ``reason`` says why.
    """

    settings: OffloadSettings
    device: str
    dtype: str
    plan: OffloadPlan
    ran: bool = False
    reason: str = ""
    peak_bytes: int | None = None
    held_bytes: int | None = None
    load_peak_bytes: int | None = None
    host_peak_bytes: int | None = None
    seconds_per_image: float | None = None
    seconds_runs: tuple[float, ...] = ()
    setup_seconds: float | None = None
    pipeline: str = ""  # the folder it ran on
    equal: bool | None = None
    max_abs_diff: float | None = None
    bitwise: bool | None = None
    problems: tuple[str, ...] = ()
    note: str = ""
    floor_bytes: int = 0
    image: torch.Tensor | None = field(default=None, repr=False)
    report: MemoryReport | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return self.settings.label

    @property
    def timeline(self) -> tuple[list[float], list[int]]:
        """(seconds, bytes above the floor) of the compute device during the generation."""
        if self.report is None:
            return [], []
        cuda = self.report.device == "cuda"
        values = [(s.cuda_allocated or 0) if cuda else s.rss_bytes for s in self.report.samples]
        return [s.t_s for s in self.report.samples], [v - self.floor_bytes for v in values]

    def __repr__(self) -> str:
        if not self.ran:
            return f"OffloadResult({self.label}: not run here, {self.reason})"
        same = {True: "same image as the baseline", False: "DIFFERENT image", None: "no baseline"}[self.equal]
        return (f"OffloadResult({self.label} on {self.device}: peak {self.peak_bytes / MiB:,.1f} MiB, "
                f"{self.seconds_per_image:.2f} s per image, {same})")


def default_dtype(device: str | None = None) -> torch.dtype:
    """The dtype to load a pipeline in: bfloat16 on CUDA, float32 on a CPU.

    Diffusers loads float32 unless told (``dtype="auto"`` is not a dtype there: it falls back to
    float32), twice the bytes of FLUX's bfloat16 checkpoint. A CPU without bfloat16 hardware runs
    bfloat16 about 2.5x slower than float32 (measured on the lab's 2-core machine), so a CPU uses
    float32 on purpose.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def default_offload_dir() -> Path:
    """The folder inside the lab's cache where disk offloading writes (each run in its own subfolder)."""
    from ._paths import cache_dir

    return cache_dir() / "offload"


def _device(device: Any) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not isinstance(device, (str, torch.device)) or str(device) not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise LabError.bad("device", device, "use 'cpu', 'cuda' or 'cuda:N'")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise LabError.bad("device", str(device), "no CUDA GPU is attached; use device='cpu'", verb="asks for CUDA")
    return str(device)


def _dtype(dtype: Any, device: str) -> torch.dtype:
    from ._dtypes import dtype_name, torch_dtype

    if dtype is None:
        return default_dtype(device)
    if isinstance(dtype, str) and dtype.strip().lower() == "auto":
        raise LabError.bad("dtype", dtype, "diffusers reads it as float32 (with a logged warning); pass "
                           "torch.bfloat16 or torch.float32", verb="is not a dtype in diffusers")
    name = dtype_name(dtype, allowed=("float32", "float16", "bfloat16"))
    return torch_dtype(name)


def pipeline_folder(pipeline: str | os.PathLike = "small") -> Path:
    """The folder of ``pipeline``: a size of the lab's FLUX pipeline ("tiny", "small"; built once into
    the cache) or a folder holding a diffusers ``model_index.json``."""
    from .zoo import tiny_flux_pipeline
    from .zoo._flux import FLUX_SIZES

    if isinstance(pipeline, str) and pipeline in FLUX_SIZES:
        return Path(tiny_flux_pipeline(size=pipeline, load=False))
    if isinstance(pipeline, (str, os.PathLike)) and (Path(pipeline) / "model_index.json").is_file():
        return Path(pipeline)
    hint = closest(pipeline, FLUX_SIZES) if isinstance(pipeline, str) else ""
    raise LabError.bad("pipeline", pipeline, f"use one of: {', '.join(FLUX_SIZES)}, or a folder holding a "
                       f"diffusers model_index.json{hint}", verb="is not a pipeline")


def pipeline_components(pipeline: str | os.PathLike = "small",
                        dtype: torch.dtype | str = torch.float32) -> dict[str, torch.nn.Module]:
    """The pipeline's model components on the meta device, from the configs in its folder."""
    from ._dtypes import dtype_name

    folder = pipeline_folder(pipeline)
    stamp = (folder / "model_index.json").stat().st_mtime_ns  # a rebuilt folder is read again
    return dict(_meta_components(str(folder.resolve()), stamp, dtype_name(dtype)))


@lru_cache(maxsize=8)
def _meta_components(folder: str, stamp: int, dtype: str) -> tuple[tuple[str, torch.nn.Module], ...]:
    import json

    from ._dtypes import torch_dtype
    from .zoo import meta_model

    index = json.loads((Path(folder) / "model_index.json").read_text())
    components = []
    for name, entry in index.items():
        config = Path(folder) / name / "config.json"
        if isinstance(entry, list) and config.is_file():
            cfg = json.loads(config.read_text())
            if "_class_name" not in cfg and "model_type" not in cfg:
                continue  # a scheduler or a tokenizer: no weights
            components.append((name, meta_model(cfg, torch_dtype(dtype))))
    return tuple(components)


def checkpoint_dtypes(pipeline: str | os.PathLike = "small") -> dict[str, str]:
    """The dtype each component's weights are stored in, read from its safetensors headers (no loading).

    A component whose files mix dtypes reports the one most of its bytes are in.
    """
    from safetensors import safe_open

    folder = pipeline_folder(pipeline)
    stored = {}
    for component in sorted(p for p in folder.iterdir() if p.is_dir()):
        counts: dict[str, int] = {}
        for file in component.glob("*.safetensors"):
            with safe_open(file, framework="pt") as f:
                for key in f.keys():
                    part = f.get_slice(key)
                    numel = math.prod(part.get_shape())
                    name = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}.get(part.get_dtype(),
                                                                                      part.get_dtype().lower())
                    counts[name] = counts.get(name, 0) + numel
        if counts:
            stored[component.name] = max(counts, key=counts.get)
    return stored


def _writable(path: str | os.PathLike) -> None:
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="probe-", dir=folder):
            pass
    except OSError as err:
        text = str(path)
        text = text if len(text) <= 80 else "..." + text[-77:]  # the end of a path says the most
        raise LabError(f"offload_to_disk_path {text!r} is not writable ({err.strerror}); use a folder you can "
                       "write to, e.g. bsl.offload.default_offload_dir()") from None


def check(settings: OffloadSettings, device: str | None = None) -> None:
    """Raise one sentence when ``settings`` cannot run on ``device`` (checked before anything loads)."""
    device = _device(device)
    if device == "cpu" and settings.needs_accelerator:
        if settings.use_stream:
            raise LabError.bad("use_stream", True, "streams need a CUDA GPU and none is attached; "
                               "use use_stream=False on a CPU", verb="cannot run here")
        raise LabError(f"strategy 'sequential' needs a CUDA GPU ({settings.needs_accelerator}); "
                       "on a CPU use the plan from bsl.offload_plan.plan_offload(..., device='cuda')")
    if settings.disk:
        _writable(settings.offload_to_disk_path)


def _load(folder: Path, dtype: torch.dtype):
    from diffusers import DiffusionPipeline

    with contextlib.redirect_stderr(open(os.devnull, "w")):  # the loading progress bars
        pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                 **{diffusers_dtype_kwarg(): dtype})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _modules(pipe) -> dict[str, torch.nn.Module]:
    return {name: c for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)}


_M_PERTURB = -6  # glibc's malloc.h: fill new blocks with ~byte and freed blocks with byte
_PERTURB_BYTE = 0x55


@contextlib.contextmanager
def _same_garbage_every_run(enabled: bool):
    """While a known-broken component is offloaded to disk, glibc fills every new block with one byte.

    Diffusers leaves an empty (uninitialised) placeholder in place of each weight it writes to disk.
    Correct code never reads one, but a tied tensor saved by two leaf groups (see
    :func:`tied_leaf_parameters`) writes a placeholder to its second file. Its bytes are whatever
    the memory held before: usually garbage, once in a while a stale copy of the very weights, and
    then the image comes out right by luck. With the fill the garbage is the same every run, so the
    bug shows every time. Only that component's placeholders are filled (which makes them resident:
    its memory is not saved in such a run); the others keep untouched, non-resident pages.
    """
    libc = None
    if enabled:
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt(_M_PERTURB, _PERTURB_BYTE)
        except (OSError, AttributeError):  # no glibc: the placeholders keep whatever memory holds
            libc = None
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_PERTURB, 0)


def _apply(pipe, settings: OffloadSettings, device: str, disk_dir: Path | None) -> None:
    """The library calls of ``settings`` on a freshly loaded pipeline."""
    strategy = settings.strategy
    if strategy is OffloadStrategy.NONE:
        pipe.to(device)
    elif strategy is OffloadStrategy.MODEL:
        pipe.enable_model_cpu_offload(device=device)  # device= is required where no accelerator exists
    elif strategy is OffloadStrategy.SEQUENTIAL:
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        from diffusers.hooks import apply_group_offloading

        for name, component in _modules(pipe).items():
            if name in settings.exclude:
                component.to(device)
                continue
            # One folder per component: diffusers names a group's file after the group (e.g. a
            # leaf's module name), and two components may have layers of the same name.
            path = str(disk_dir / name) if disk_dir is not None else None
            broken = path is not None and strategy is OffloadStrategy.LEAF_LEVEL and bool(tied_leaf_parameters(component))
            guard = writing_into(path, f"diffusers offloaded {name} to disk") if path else contextlib.nullcontext()
            with _same_garbage_every_run(broken), guard:
                apply_group_offloading(component, onload_device=torch.device(device),
                                       offload_device=torch.device("cpu"), offload_type=strategy.value,
                                       num_blocks_per_group=settings.num_blocks_per_group,
                                       use_stream=settings.use_stream, offload_to_disk_path=path)


def applied_groups(module: torch.nn.Module) -> list[PlannedGroup]:
    """The groups diffusers really built on ``module`` (after ``apply_group_offloading``), read from its hooks.

    Each module with a group-offloading hook points to its ``ModuleGroup``; a group is named after
    its onload leader, the module whose forward brings it in (the first block of a group of blocks),
    as :func:`plan_groups` names it. Compare the two with :func:`same_groups`.
    """
    from diffusers.hooks.group_offloading import _GROUP_OFFLOADING

    names = {id(m): name for name, m in module.named_modules()}
    seen: dict[int, PlannedGroup] = {}
    for _, m in module.named_modules():
        registry = getattr(m, "_diffusers_hook", None)
        hook = registry.get_hook(_GROUP_OFFLOADING) if registry is not None else None
        if hook is None or id(hook.group) in seen:
            continue
        g = hook.group
        leader = g.onload_leader if g.onload_leader is not None else g.offload_leader
        tensors = [*(t for mod in g.modules for t in _tensors(mod)), *g.parameters, *g.buffers]
        if str(hook.config.offload_type.value) == OffloadStrategy.LEAF_LEVEL.value:
            kind = "leaf" if g.modules else "parameters"
        else:
            kind = "blocks" if any(mod is leader for mod in g.modules) else "unmatched"
        seen[id(g)] = _group(names[id(leader)], kind, tensors, g.stream is not None)
    return list(seen.values())



def groups_built_by_diffusers(pipeline: str | os.PathLike = "tiny", settings: OffloadSettings | str = "block_level",
                              dtype: torch.dtype | str = torch.float32) -> dict[str, list[PlannedGroup]]:
    """Load ``pipeline`` on the CPU, call ``apply_group_offloading`` on every component (onload and offload
    device both the CPU, no stream: nothing moves) and read back the groups diffusers built."""
    from diffusers.hooks import apply_group_offloading

    settings = settings if isinstance(settings, OffloadSettings) else OffloadSettings(settings)
    if not settings.strategy.is_group or settings.use_stream or settings.disk:
        raise LabError.bad("settings", settings.label, "use block_level or leaf_level without a stream or a disk "
                           "(the groups are the same; a CPU has no streams)", verb="cannot be built here")
    pipe = _load(pipeline_folder(pipeline), _dtype(dtype, "cpu"))
    try:
        built = {}
        for name, component in _modules(pipe).items():
            apply_group_offloading(component, onload_device=torch.device("cpu"), offload_device=torch.device("cpu"),
                                   offload_type=settings.strategy.value,
                                   num_blocks_per_group=settings.num_blocks_per_group)
            built[name] = applied_groups(component)
        return built
    finally:
        del pipe
        gc.collect()


@dataclass(frozen=True)
class PinnedMeasurement:
    """``use_stream=True`` applied for real on a CUDA machine: the plan, and what the CPU side measured.

    ``host_allocated_bytes``: what PyTorch's pinned-memory allocator handed out during the call
    (``torch.cuda.host_memory_stats``' ``allocated_bytes.current``, after minus before; None where
    this torch lacks it). ``rss_*``: the process's resident memory before, after and at the peak of
    ``apply_group_offloading`` (pinned pages count). Measured with tools/gpu_offload_check.py on an
    H200 (torch 2.11): the lab's tiny pipeline at block level + stream, 1,575,808 bytes planned and
    handed out; at leaf level + stream 2,057,944 handed out, between the 1,889,022 asked and the
    2,348,632 planned after rounding; FLUX.1-dev's transformer at leaf level + stream, 37,201,090,688
    planned (1.56x its 23,802,816,640 bytes of weights) and 37,197,755,392 handed out.
    """

    plan: PinnedPlan
    host_allocated_bytes: int | None
    rss_before_bytes: int
    rss_after_bytes: int
    rss_peak_bytes: int


def _host_stat(stats: Mapping[str, Any], what: str) -> int | None:
    for key in (f"{what}.current", f"{what}.all.current"):
        if key in stats:
            return int(stats[key])
    return None


def _host_allocated() -> int | None:
    """Bytes the pinned-memory allocator has handed out; 0 before its first use (its stats are then empty),
    None where this torch has no such stats."""
    if not hasattr(torch.cuda, "host_memory_stats"):
        return None
    stats = torch.cuda.host_memory_stats()
    return _host_stat(stats, "allocated_bytes") if stats else 0


def measure_pinned(pipeline: str | os.PathLike = "small", settings: OffloadSettings | str = "leaf_level",
                   dtype: torch.dtype | str | None = None) -> PinnedMeasurement:
    """Load ``pipeline`` in CPU RAM, apply ``settings`` (which use a stream) to every component with a CUDA
    GPU as the onload device, and measure the pinned copies next to :func:`pinned_memory_plan`.
    Needs a CUDA GPU (pinned memory belongs to it); raises one sentence without one."""
    from diffusers.hooks import apply_group_offloading

    pipeline, settings = _pipeline_first(pipeline, settings, "measure_pinned")
    settings = settings if isinstance(settings, OffloadSettings) else OffloadSettings(settings)
    if not settings.use_stream:
        raise LabError.bad("settings", settings.label, "pass settings with use_stream=True", verb="pin nothing")
    if not torch.cuda.is_available():
        raise LabError("pinned memory needs a CUDA GPU and none is attached; on a CPU use "
                       "bsl.offload_plan.pinned_memory_plan(...) for the bytes it would pin")
    torch_dtype = _dtype(dtype, "cuda")
    the_plan = pinned_memory_plan(pipeline_components(pipeline, torch_dtype), settings)
    pipe = _load(pipeline_folder(pipeline), torch_dtype)
    try:
        before = _host_allocated()
        with track(f"{settings.label}: apply", device="cpu") as applying:
            for name, component in _modules(pipe).items():
                if name in settings.exclude:
                    component.to("cuda")
                    continue
                apply_group_offloading(component, onload_device=torch.device("cuda"), offload_device=torch.device("cpu"),
                                       offload_type=settings.strategy.value,
                                       num_blocks_per_group=settings.num_blocks_per_group, use_stream=True)
            gc.collect()
        after = _host_allocated()
        handed_out = after - before if after is not None and before is not None else None
        return PinnedMeasurement(the_plan, handed_out, applying.start_bytes, applying.end_bytes,
                                 applying.start_bytes + applying.peak_bytes)
    finally:
        del pipe
        _release("cuda")


def _generate(pipe, image_settings: ImageSettings) -> torch.Tensor:
    # The pipeline runs under no_grad itself; inference_mode would turn weights that disk offloading
    # loads back into inference tensors.
    return pipe(**image_settings.kwargs()).images.detach().float().cpu()


# Two images are "the same" when no pixel differs by more than this (images are float32 in [0, 1]).
# Moving weights must not change the maths, but it may change where they sit in memory: safetensors
# 0.8's load_file can return tensors at unaligned addresses, and CPU kernels then sum in another order
# (measured: 5.4e-7 to 6.6e-7 on the small FLUX pipeline; a .clone() gives back bit equality). The
# tied-T5 leaf+disk bug lesson 05 catches differs by 0.0759: the threshold sits between, far from both.
IMAGE_ATOL = 1e-4


def _difference(image: torch.Tensor, reference: torch.Tensor) -> tuple[bool, bool, float]:
    """(within IMAGE_ATOL, bit for bit, largest difference: nan when either image holds nan)."""
    if image.shape != reference.shape:
        return False, False, math.nan
    diff = (image - reference).abs()
    largest = float("nan") if torch.isnan(diff).any() else float(diff.max())
    return (not math.isnan(largest) and largest <= IMAGE_ATOL), torch.equal(image, reference), largest


def same_image(image: torch.Tensor, reference: torch.Tensor) -> bool:
    """Whether two images match within :data:`IMAGE_ATOL` (see there why not bit for bit)."""
    return _difference(image, reference)[0]


_M_MMAP_THRESHOLD = -3  # the option's number in glibc's malloc.h
_MMAP_THRESHOLD_BYTES = MiB
_fresh_pages = False


def use_fresh_pages_for_big_tensors() -> bool:
    """Ask glibc to give every block of 1 MiB or more its own pages, returned to the OS when freed.

    By default glibc raises this threshold as big blocks are freed (up to 32 MiB) and serves later
    blocks from the freed ones. Disk offloading frees each weight and allocates an empty placeholder
    of the same size in its place: glibc hands the placeholder the pages the weight just left, still
    resident, and the process's memory hides most of what went to disk (FLUX.1-dev's biggest weights,
    over 32 MiB, always get their own pages). Process-wide and set once. Call it before anything big
    is loaded: blocks freed earlier stay in glibc's free lists and are handed out again whatever the
    threshold (:func:`run` calls it too, for every strategy alike). False where there is no glibc.
    """
    global _fresh_pages
    if not _fresh_pages:
        try:
            libc = ctypes.CDLL("libc.so.6")
            _fresh_pages = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))
        except (OSError, AttributeError):  # macOS, Windows, musl: the default allocator stays
            _fresh_pages = False
    return _fresh_pages


def _release(device: str) -> None:
    # A pipeline with hooks holds reference cycles: only the cycle collector frees it (about a second
    # in a process that imported torch, transformers and diffusers, so once per run).
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _phase_names(settings: OffloadSettings | str, device: str = "cpu", warmup: bool = False) -> list[str]:
    """The names :func:`run` gives ``on_phase``, in order: load, apply the strategy, (warm up), generate, free.

    The first names the strategy, so one live chart can hold several runs:

    >>> for name in _phase_names(OffloadSettings("block_level", num_blocks_per_group=2, offload_to_disk_path="/x")):
    ...     print(name)
    group offloading, block level (2 blocks per group) + disk: from_pretrained
    apply_group_offloading(...): write the groups to disk
    generate one image
    free the pipeline
    """
    settings = settings if isinstance(settings, OffloadSettings) else OffloadSettings(settings)
    call = settings.call(device)
    apply = call if len(call) <= 30 else call.split("(")[0] + "(...)"  # pipe.to("cpu") whole, the long ones cut
    if settings.disk:
        apply += ": write the groups to disk"
    return [f"{settings.label}: from_pretrained", apply, *(["warm-up image"] if warmup else []),
            "generate one image", "free the pipeline"]


def run(pipeline: str | os.PathLike = "small", settings: OffloadSettings | str = OffloadStrategy.NONE,
        dtype: torch.dtype | str | None = None, device: str | None = None, image_settings: ImageSettings | None = None,
        baseline: OffloadResult | None = None, warmup: bool = False,
        on_phase: Callable[[str], object] | None = None, repeats: int = 1) -> OffloadResult:
    """Load ``pipeline`` afresh, apply ``settings``, generate one image and measure it.

    The pipeline first, then what is done to it, as every runner of the lab takes them
    (``kvcache.generate(model, ids, cache)``); ``image_settings``: the image to make (None:
    :class:`ImageSettings`'s defaults).

    ``dtype``: None picks :func:`default_dtype` (bfloat16 on CUDA, float32 on a CPU). ``baseline``:
    an earlier result whose image this one is compared with. ``warmup``: generate once, unmeasured,
    before the measured image (the first image of a process pays one-time costs). Settings that
    cannot run on ``device`` raise one sentence before anything loads (see :func:`check`); settings
    known to give wrong output (:func:`known_problems`) warn with :class:`OffloadWarning`, run, and
    the result's ``note`` says what happened. ``on_phase(name)`` is called as each phase begins:
    loading (named after the strategy), applying it, the warm-up, generating, freeing the pipeline;
    pass a live chart's ``mark`` to see them on it. ``repeats``: how many images are generated and timed
    one after another (``seconds_per_image`` is their median, ``seconds_runs`` each one; the peak covers
    them all, the image kept is the last).
    """
    pipeline, settings = _pipeline_first(pipeline, settings, "run")
    settings = settings if isinstance(settings, OffloadSettings) else OffloadSettings(settings)
    repeats = whole_number(repeats, "repeats", 1)
    mark = phase_hook(on_phase) or (lambda name: None)
    device = _device(device)
    torch_dtype = _dtype(dtype, device)
    image_settings = image_settings if image_settings is not None else ImageSettings()
    if not isinstance(image_settings, ImageSettings):
        raise LabError.bad("image_settings", image_settings, "pass a bsl.offload_plan.ImageSettings(...)",
                           verb="is not an ImageSettings")
    check(settings, device)
    names = iter(_phase_names(settings, device, warmup))
    folder = pipeline_folder(pipeline)
    meta = pipeline_components(folder, torch_dtype)
    the_plan = plan_offload(meta, settings, "cuda" if device.startswith("cuda") else "cpu")
    problems = tuple(known_problems(meta, settings))
    for problem in problems:
        warnings.warn(problem, OffloadWarning, stacklevel=2)

    if device == "cpu":
        use_fresh_pages_for_big_tensors()
    if device != "cpu":
        torch.cuda.empty_cache()
    pipe = disk_dir = None
    try:
        if settings.disk:  # a fresh folder: diffusers reuses any group file it finds under the same name
            disk_dir = Path(tempfile.mkdtemp(prefix="run-", dir=Path(settings.offload_to_disk_path).expanduser()))
        with track(f"{settings.label}: load + generate", device=device) as whole:
            start = time.perf_counter()
            with track(f"{settings.label}: load", device=device) as loading:
                mark(next(names))
                pipe = _load(folder, torch_dtype)
                mark(next(names))
                _apply(pipe, settings, device, disk_dir)
            setup_s = time.perf_counter() - start
            if warmup:
                mark(next(names))
                _generate(pipe, image_settings)
            host = track(f"{settings.label}: CPU RAM", device="cpu") if device != "cpu" else contextlib.nullcontext()
            mark(next(names))
            with host as host_report, track(settings.label, device=device) as gen:
                runs = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    image = _generate(pipe, image_settings)
                    if device != "cpu":
                        torch.cuda.synchronize()
                    runs.append(time.perf_counter() - start)
                seconds = statistics.median(runs)
        mark(next(names))
    finally:
        del pipe
        if disk_dir is not None:
            shutil.rmtree(disk_dir, ignore_errors=True)
        _release(device)

    floor = whole.start_bytes
    result = OffloadResult(
        settings, device, str(torch_dtype).removeprefix("torch."), the_plan, ran=True,
        peak_bytes=gen.start_bytes + gen.peak_bytes - floor, held_bytes=gen.start_bytes - floor,
        load_peak_bytes=loading.start_bytes + loading.peak_bytes - floor,
        host_peak_bytes=host_report.peak_bytes if host_report is not None else None,
        seconds_per_image=seconds, seconds_runs=tuple(runs), setup_seconds=setup_s, pipeline=str(folder),
        problems=problems, floor_bytes=floor,
        image=image, report=gen)
    if baseline is not None and baseline.image is not None:
        result.equal, result.bitwise, result.max_abs_diff = _difference(image, baseline.image)
        result.note = _explain(result)
    elif settings.strategy is OffloadStrategy.NONE:
        result.equal, result.bitwise, result.max_abs_diff = True, True, 0.0
        result.note = "the baseline: every other image is compared with it"
    return result


def _explain(result: OffloadResult) -> str:
    diff = "nan" if math.isnan(result.max_abs_diff) else f"{result.max_abs_diff:.3g}"
    if result.bitwise:
        return "same image as the baseline, bit for bit"
    if result.equal:
        return (f"same image as the baseline within {IMAGE_ATOL:g} (largest difference {diff}: the weights came "
                "back at other memory addresses, and the CPU kernels rounded in another order)")
    if result.problems:
        return f"WRONG image (largest difference {diff}), as warned: {result.problems[0]}"
    return (f"the image differs from the baseline (largest difference {diff}) and no known problem explains "
            "it: report it")


def compare_strategies(pipeline: str | os.PathLike = "small", settings: Sequence[OffloadSettings | str] = (),
                       dtype: torch.dtype | str | None = None, device: str | None = None,
                       image_settings: ImageSettings | None = None,
                       on_phase: Callable[[str], object] | None = None, repeats: int = 1) -> list[OffloadResult]:
    """Run no offloading (after a warm-up image) and then each of ``settings``, comparing every image
    with the baseline's. Settings that need a CUDA GPU on a CPU come back planned and not run, with
    the reason. ``on_phase`` and ``repeats``: as in :func:`run`, for every run."""
    if not isinstance(pipeline, (str, os.PathLike)) and isinstance(settings, (str, os.PathLike)):
        warnings.warn("compare_strategies takes the pipeline first, then the settings: "
                      "compare_strategies(pipeline, settings, ...)", DeprecationWarning, stacklevel=2)
        pipeline, settings = settings, pipeline  # the old offload.compare(settings, pipeline) order
    if isinstance(settings, (str, OffloadSettings, OffloadStrategy)):
        raise LabError.bad("settings", settings, "pass a list of settings, e.g. [OffloadSettings('model')]",
                           verb="is not a list of settings")
    phase_hook(on_phase)
    device = _device(device)
    torch_dtype = _dtype(dtype, device)
    wanted = [s if isinstance(s, OffloadSettings) else OffloadSettings(s) for s in settings]
    kind = "cuda" if device.startswith("cuda") else "cpu"
    for s in wanted:  # every bad path or impossible combination is reported before the first run
        if not (kind == "cpu" and s.needs_accelerator):
            check(s, device)
    baseline = run(pipeline, OffloadSettings(), torch_dtype, device, image_settings, warmup=True, on_phase=on_phase,
                   repeats=repeats)
    results = [baseline]
    for s in wanted:
        if s.strategy is OffloadStrategy.NONE and not s.exclude:
            continue
        if kind == "cpu" and s.needs_accelerator:
            results.append(planned(pipeline, s, torch_dtype))
            continue
        results.append(run(pipeline, s, torch_dtype, device, image_settings, baseline=baseline, on_phase=on_phase,
                           repeats=repeats))
    return results


def planned(pipeline: str | os.PathLike = "small", settings: OffloadSettings | str = OffloadStrategy.NONE,
            dtype: torch.dtype | str | None = None) -> OffloadResult:
    """A result that did not run here: settings that need a CUDA GPU, planned for one, with the reason."""
    pipeline, settings = _pipeline_first(pipeline, settings, "planned")
    settings = settings if isinstance(settings, OffloadSettings) else OffloadSettings(settings)
    torch_dtype = _dtype(dtype, "cuda")
    components = pipeline_components(pipeline, torch_dtype)
    why = settings.needs_accelerator or "it was not run"
    return OffloadResult(settings, _device(None), str(torch_dtype).removeprefix("torch."),
                         plan_offload(components, settings, "cuda"), ran=False,
                         reason=f"needs a CUDA GPU: {why}; planned for a GPU")



def compare(settings: Sequence[OffloadSettings | str], pipeline: str | os.PathLike = "small", *args: Any,
            generation: ImageSettings | None = None, **kwargs: Any) -> list[OffloadResult]:
    """Old name and order of :func:`compare_strategies`, kept for one release (``quality.compare``
    compares two models; ``kvcache.compare_caches`` several caches)."""
    warnings.warn("offload.compare is now offload.compare_strategies(pipeline, settings, ...)", DeprecationWarning,
                  stacklevel=2)
    if generation is not None:
        kwargs["image_settings"] = generation
    return compare_strategies(pipeline, settings, *args, **kwargs)
