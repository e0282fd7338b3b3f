"""Offloading with Diffusers: plan each strategy at any scale, run it on a pipeline and measure it.

Offloading keeps weights in a big, slow memory (CPU RAM, or a disk) and brings them to the compute
device (a GPU) only while they run. Diffusers offers it at three granularities:

===================  ==============================================  ===========================================
strategy             the call                                        weights on the compute device at the peak
===================  ==============================================  ===========================================
``none``             ``pipe.to("cuda")``                             every component
``model``            ``pipe.enable_model_cpu_offload()``             the largest component (FLUX: transformer)
``sequential``       ``pipe.enable_sequential_cpu_offload()``        one layer's weights (and its parents')
``block_level``      ``apply_group_offloading(component, ...,        one group of ``num_blocks_per_group``
                     offload_type="block_level")``                   blocks + the component's other layers
``leaf_level``       ``apply_group_offloading(component, ...,        one leaf layer (Linear, Conv, Embedding)
                     offload_type="leaf_level")``                    + the parameters no leaf owns
===================  ==============================================  ===========================================

Group offloading also takes ``use_stream=True`` (a CUDA stream copies the next group while the
current one computes: one more group on the device, and a pinned CPU copy of every streamed weight,
see :func:`pinned_memory_plan`) and ``offload_to_disk_path`` (the offloaded weights live in
safetensors files instead of CPU RAM). How much time each costs on a GPU is not planned here:
:data:`PUBLISHED` keeps diffusers' own published figures, with their source.

Planning is pure: :func:`plan` reads module sizes, so it works on the meta device. FLUX.1-dev in
bfloat16 (:func:`flux_dev_components`: the real configs, no weights) holds 33.74 GB without
offloading; with model offload the GPU holds its largest component, the 23.80 GB transformer.

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

>>> from bigsmall_lab.offload import OffloadSettings, Strategy
>>> OffloadSettings("block_level", num_blocks_per_group=2).label
'group offloading, block level (2 blocks per group)'
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import numbers
import os
import shutil
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ._compat import diffusers_dtype_kwarg
from ._errors import LabError, closest, whole_number
from ._paths import writing_into
from ._units import MiB
from .measure import MemoryReport, phase_hook, track

__all__ = [
    "FLUX_DEV_CONFIGS", "FLUX_DEV_VAE_CONFIG", "IMAGE_ATOL", "ComponentSize", "Generation", "OffloadPlan", "OffloadResult",
    "OffloadSettings", "OffloadWarning", "Strategy", "check", "checkpoint_dtypes", "compare", "component_sizes",
    "default_dtype", "default_offload_dir", "flux_dev_components", "known_problems", "pipeline_components",
    "pipeline_folder", "plan", "planned", "run", "same_image", "tied_leaf_parameters", "use_fresh_pages_for_big_tensors",
    "weights_bytes", "PUBLISHED", "PinnedPlan", "PlannedGroup", "PublishedFigure", "applied_groups", "block_modules_of",
    "groups_built_by_diffusers", "measure_pinned", "pinned_memory_plan", "plan_groups", "published", "same_groups",
    "time_ratio",
]


class Strategy(str, Enum):
    """How weights leave the compute device (diffusers' ``GroupOffloadingType`` is the model)."""

    NONE = "none"
    MODEL = "model"
    SEQUENTIAL = "sequential"
    BLOCK_LEVEL = "block_level"
    LEAF_LEVEL = "leaf_level"

    @property
    def is_group(self) -> bool:
        return self in (Strategy.BLOCK_LEVEL, Strategy.LEAF_LEVEL)


_STRATEGY_LABELS = {
    Strategy.NONE: "no offloading",
    Strategy.MODEL: "model offload",
    Strategy.SEQUENTIAL: "sequential offload",
    Strategy.BLOCK_LEVEL: "group offloading, block level",
    Strategy.LEAF_LEVEL: "group offloading, leaf level",
}


class OffloadWarning(UserWarning):
    """A combination of settings known to give wrong output on this pipeline."""


def _strategy(value: Any) -> Strategy:
    if isinstance(value, Strategy):
        return value
    names = [s.value for s in Strategy]
    if isinstance(value, str) and value.strip().lower() in names:
        return Strategy(value.strip().lower())
    hint = closest(value, names) if isinstance(value, str) else ""
    raise LabError.bad("strategy", value, f"use one of: {', '.join(names)}{hint}")


@dataclass(frozen=True)
class OffloadSettings:
    """One offloading strategy and its options (diffusers' ``GroupOffloadingConfig`` is the model).

    ``num_blocks_per_group``: block level only (default 1). ``use_stream``: group offloading only,
    needs CUDA. ``offload_to_disk_path``: group offloading only; :func:`run` writes into a fresh
    folder inside it and removes that folder afterwards. ``exclude``: components left out of the
    offloading (they stay on the compute device), as diffusers' ``exclude_modules``.

    >>> OffloadSettings("leaf_level", offload_to_disk_path="/tmp/x").label
    'group offloading, leaf level + disk'
    """

    strategy: Strategy | str = Strategy.NONE
    num_blocks_per_group: int | None = None
    use_stream: bool = False
    offload_to_disk_path: str | os.PathLike | None = None
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        strategy = _strategy(self.strategy)
        object.__setattr__(self, "strategy", strategy)
        blocks = self.num_blocks_per_group
        if strategy is Strategy.BLOCK_LEVEL:
            blocks = 1 if blocks is None else whole_number(blocks, "num_blocks_per_group", 1)
        elif blocks is not None:
            raise LabError.bad("num_blocks_per_group", blocks, "only block_level groups blocks; leave it None",
                               verb=f"does not apply to strategy {strategy.value!r}")
        object.__setattr__(self, "num_blocks_per_group", blocks)
        if not isinstance(self.use_stream, bool):
            raise LabError.bad("use_stream", self.use_stream, "use True or False", verb="is not a bool")
        if self.use_stream and not strategy.is_group:
            raise LabError.bad("use_stream", True, "streams belong to group offloading (block_level, leaf_level)",
                               verb=f"does not apply to strategy {strategy.value!r}")
        if self.use_stream and blocks not in (None, 1):
            raise LabError.bad("num_blocks_per_group", blocks, "with use_stream=True diffusers prefetches one "
                               "block at a time: use num_blocks_per_group=1", verb="does not work with streams")
        path = self.offload_to_disk_path
        if path is not None:
            if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)) or not str(path).strip():
                raise LabError.bad("offload_to_disk_path", path, "use a folder path (str or Path), or None",
                                   verb="is not a folder path")
            if not strategy.is_group:
                raise LabError.bad("offload_to_disk_path", str(path), "disk offloading belongs to group "
                                   "offloading (block_level, leaf_level)",
                                   verb=f"does not apply to strategy {strategy.value!r}")
        exclude = (self.exclude,) if isinstance(self.exclude, str) else self.exclude
        if not isinstance(exclude, Iterable) or not all(isinstance(e, str) for e in exclude):
            raise LabError.bad("exclude", self.exclude, "use a tuple of component names, e.g. ('text_encoder_2',)",
                               verb="is not a tuple of names")
        object.__setattr__(self, "exclude", tuple(exclude))

    @property
    def disk(self) -> bool:
        return self.offload_to_disk_path is not None

    @property
    def needs_accelerator(self) -> str | None:
        """What needs a CUDA GPU in these settings (None when a CPU runs them)."""
        if self.strategy is Strategy.SEQUENTIAL:
            return "sequential offload streams each layer's weights to an accelerator (accelerate's hooks fail on a CPU)"
        if self.use_stream:
            return "use_stream=True copies the next group on a CUDA stream while the current one computes"
        return None

    @property
    def label(self) -> str:
        text = _STRATEGY_LABELS[self.strategy]
        if self.strategy is Strategy.BLOCK_LEVEL:
            n = self.num_blocks_per_group
            text += f" ({n} block{'s' if n != 1 else ''} per group)"
        if self.use_stream:
            text += " + stream"
        if self.disk:
            text += " + disk"
        if self.exclude:
            text += f" (except {', '.join(self.exclude)})"
        return text

    def call(self, device: str = "cuda") -> str:
        """The library call these settings make, as a learner would type it."""
        if self.strategy is Strategy.NONE:
            return f'pipe.to("{device}")'
        if self.strategy is Strategy.MODEL:
            return f'pipe.enable_model_cpu_offload(device="{device}")'
        if self.strategy is Strategy.SEQUENTIAL:
            return f'pipe.enable_sequential_cpu_offload(device="{device}")'
        args = [f'onload_device="{device}"', 'offload_device="cpu"', f'offload_type="{self.strategy.value}"']
        if self.strategy is Strategy.BLOCK_LEVEL:
            args.append(f"num_blocks_per_group={self.num_blocks_per_group}")
        if self.use_stream:
            args.append("use_stream=True")
        if self.disk:
            args.append("offload_to_disk_path=...")
        return f"apply_group_offloading(component, {', '.join(args)})"


# ---------------------------------------------------------------------------------------------
# Planning: pure, from module sizes (meta modules work)

@lru_cache(maxsize=1)
def _leaf_types() -> tuple[type, ...]:
    """The layer types diffusers' leaf-level offloading makes one group each (imported lazily: diffusers
    takes seconds to import, and ``import bigsmall_lab`` should not)."""
    try:
        from diffusers.hooks._common import _GO_LC_SUPPORTED_PYTORCH_LAYERS

        return tuple(_GO_LC_SUPPORTED_PYTORCH_LAYERS)
    except ImportError:  # an older or newer layout: the same list, as diffusers 0.42 has it
        return (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose1d,
                torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d, torch.nn.Linear, torch.nn.Embedding)


# FLUX.1-dev's vae/config.json (black-forest-labs/FLUX.1-dev): 83,819,683 parameters.
FLUX_DEV_VAE_CONFIG: dict[str, Any] = {
    "_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "force_upcast": True, "in_channels": 3,
    "latent_channels": 16, "latents_mean": None, "latents_std": None, "layers_per_block": 2,
    "mid_block_add_attention": True, "norm_num_groups": 32, "out_channels": 3, "sample_size": 1024,
    "scaling_factor": 0.3611, "shift_factor": 0.1159, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": False, "use_quant_conv": False,
}

# FLUX.1-dev's components: the pipeline's name for each, and its config (a preset or the dict above).
FLUX_DEV_CONFIGS: dict[str, Any] = {"transformer": "flux.1-dev-transformer", "text_encoder_2": "t5-v1.1-xxl-encoder",
                                    "text_encoder": "clip-vit-l-14-text", "vae": FLUX_DEV_VAE_CONFIG}


def _tensors(module: torch.nn.Module) -> list[torch.Tensor]:
    """Parameters and buffers of ``module``, each tensor once (tied weights count once)."""
    return list({id(t): t for t in (*module.parameters(), *module.buffers())}.values())


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def weights_bytes(module: torch.nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers, each tensor once (meta modules work).

    >>> weights_bytes(torch.nn.Linear(1024, 1024, device="meta"))  # (1024 x 1024 + 1024) x 4 bytes
    4198400
    """
    return _nbytes(_tensors(module))


@dataclass(frozen=True)
class ComponentSize:
    """One component of a pipeline: its parameters (tied ones once) and their bytes in ``dtype``."""

    name: str
    parameters: int
    weights_bytes: int
    dtype: str


def component_sizes(configs: Mapping[str, Any] | None = None, dtype: str | torch.dtype = "bfloat16") -> list[ComponentSize]:
    """Each component's exact size from its config, counted on the meta device (default: FLUX.1-dev).

    >>> [(c.name, c.parameters) for c in component_sizes()][:2]
    [('transformer', 11901408320), ('text_encoder_2', 4762310656)]
    """
    from ._dtypes import bytes_per_element, dtype_name
    from .zoo import count_parameters

    name = dtype_name(dtype)
    if configs is None or configs is FLUX_DEV_CONFIGS:  # count the meta models the planner uses too
        counted = {c: sum(p.numel() for p in m.parameters()) for c, m in _flux_dev_meta("bfloat16")}
    else:
        counted = {c: count_parameters(config) for c, config in configs.items()}
    return [ComponentSize(c, n, int(n * bytes_per_element(name)), name) for c, n in counted.items()]


@lru_cache(maxsize=4)
def _flux_dev_meta(dtype_name: str) -> tuple[tuple[str, torch.nn.Module], ...]:
    from ._dtypes import torch_dtype
    from .zoo import meta_model

    return tuple((name, meta_model(config, torch_dtype(dtype_name))) for name, config in FLUX_DEV_CONFIGS.items())


def flux_dev_components(dtype: torch.dtype | str = torch.bfloat16) -> dict[str, torch.nn.Module]:
    """FLUX.1-dev's four components on the meta device, from their real configs (no weights, no hub).

    Parameters: transformer 11,901,408,320; text_encoder_2 (T5-XXL encoder, shared embedding
    counted once) 4,762,310,656; text_encoder (CLIP-L) 123,060,480; vae 83,819,683. Built once per
    dtype (meta modules hold no memory).
    """
    from ._dtypes import dtype_name

    return dict(_flux_dev_meta(dtype_name(dtype)))


def _direct(module: torch.nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(recurse=False), *module.buffers(recurse=False)]


def _leaf_names(module: torch.nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if isinstance(m, _leaf_types())]


def _path_peak(module: torch.nn.Module, groups: Mapping[str, int], stream: bool) -> int:
    """Peak bytes when each named group onloads at its module's forward and stays until it returns.

    ``groups`` maps module names to the bytes they bring in. While a module runs, its own group and
    those of all its ancestors are on the device; with a stream the next group (in module order, the
    order of the forward pass) is prefetched too.
    """
    names = list(groups)
    peak = 0
    for i, name in enumerate(names):
        ancestors = sum(groups.get(prefix, 0) for prefix in _prefixes(name))
        nxt = groups[names[i + 1]] if stream and i + 1 < len(names) else 0
        peak = max(peak, groups[name] + ancestors + nxt)
    return peak


def _prefixes(name: str) -> list[str]:
    """The names of a module's ancestors: 'a.b.c' -> ['', 'a', 'a.b'] ('' is the component itself)."""
    if not name:
        return []
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(len(parts))]


@dataclass(frozen=True)
class PlannedGroup:
    """One group that group offloading moves as a whole: what diffusers' ``ModuleGroup`` holds.

    ``name``: the module whose forward brings the group in ('' is the component itself; a group of
    blocks is named after its first block, e.g. ``transformer_blocks.0``). ``kind``: ``"blocks"``
    (``num_blocks_per_group`` children of a ModuleList/Sequential), ``"unmatched"`` (the rest of a
    module at block level: its other children and its own tensors, on the device during its whole
    forward), ``"leaf"`` (one Linear/Conv/Embedding) or ``"parameters"`` (tensors no leaf owns, at
    leaf level). ``streamed``: with ``use_stream=True`` this group is copied on the side stream, so
    diffusers keeps a pinned CPU copy of its tensors (block level leaves the unmatched groups on the
    default stream). ``tensor_bytes``: each tensor's bytes, for :func:`pinned_memory_plan`.
    """

    name: str
    kind: str
    weights_bytes: int
    n_tensors: int
    streamed: bool = False
    tensor_bytes: tuple[int, ...] = field(default=(), repr=False, compare=False)


def _group(name: str, kind: str, tensors: Iterable[torch.Tensor], streamed: bool) -> PlannedGroup:
    unique = list({id(t): t for t in tensors}.values())
    sizes = tuple(t.numel() * t.element_size() for t in unique)
    return PlannedGroup(name, kind, sum(sizes), len(unique), streamed, sizes)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _block_level_groups(module: torch.nn.Module, n: int, block_modules: frozenset[str], stream: bool,
                        prefix: str = "") -> list[PlannedGroup]:
    """Diffusers 0.42's ``_apply_group_offloading_block_level``, read and repeated on sizes.

    Each child of ``module`` is one of three things. A child named in ``block_modules`` (the model's
    ``_group_offload_block_modules``: AutoencoderKL names its ``encoder`` and ``decoder``) is split
    the same way, one level down. A ModuleList or Sequential child is cut into groups of ``n``
    blocks. Any other child is "unmatched": it joins one group with the module's own tensors, which
    comes to the device when the module's forward starts and leaves when it returns. That group is
    listed first here (it is the first on the device); diffusers builds it only if it holds a
    module or a tensor, and never gives it the side stream.
    """
    done: set[str] = set()  # children (and blocks) that have a group of their own, as diffusers tracks them
    unmatched: list[torch.nn.Module] = []
    inner: list[PlannedGroup] = []
    for name, child in module.named_children():
        if name in block_modules:
            inner += _block_level_groups(child, n, block_modules, stream, _join(prefix, name))
            done.add(name)
        elif isinstance(child, (torch.nn.ModuleList, torch.nn.Sequential)):
            blocks = list(child)
            for i in range(0, len(blocks), n):
                chunk = blocks[i:i + n]
                inner.append(_group(_join(prefix, f"{name}.{i}"), "blocks",
                                    (t for b in chunk for t in _tensors(b)), stream))
                done.update(f"{name}.{j}" for j in range(i, i + len(chunk)))
        else:
            unmatched.append(child)
    own = [t for key, t in (*module.named_parameters(), *module.named_buffers())
           if not any(".".join(key.split(".")[:k]) in done for k in range(1, key.count(".") + 1))]
    if unmatched or own:
        rest = _group(prefix, "unmatched", (*(t for m in unmatched for t in _tensors(m)), *own), False)
        return [rest, *inner]
    return inner


def _leaf_level_groups(module: torch.nn.Module, stream: bool) -> list[PlannedGroup]:
    """Diffusers 0.42's ``_apply_group_offloading_leaf_level`` on sizes: one group per leaf layer (in
    module order), one per module that owns tensors no leaf holds, and with a stream one empty group
    on the component (the hook that learns the execution order) unless the component owns tensors."""
    leaves = set(_leaf_names(module))
    groups: list[PlannedGroup] = []
    for name, m in module.named_modules():
        if name in leaves:
            groups.append(_group(name, "leaf", _tensors(m), stream))
        elif _direct(m) and not any(prefix in leaves for prefix in _prefixes(name)):
            groups.append(_group(name, "parameters", _direct(m), stream))
    if stream and not any(g.name == "" for g in groups):
        groups.insert(0, PlannedGroup("", "parameters", 0, 0, False))
    return groups


def block_modules_of(module: torch.nn.Module) -> tuple[str, ...]:
    """The children a model class asks block-level offloading to split one level down
    (``_group_offload_block_modules``; diffusers reads the same attribute). Empty for most models.

    >>> from diffusers import AutoencoderKL
    >>> block_modules_of(AutoencoderKL)
    ('quant_conv', 'post_quant_conv', 'encoder', 'decoder')
    """
    return tuple(getattr(module, "_group_offload_block_modules", None) or ())


def plan_groups(module: torch.nn.Module, settings: OffloadSettings | str) -> list[PlannedGroup]:
    """The groups group offloading cuts ``module`` into, as diffusers 0.42 builds them (pure: meta works).

    A module with two top-level block lists of 3 and 2 blocks, 2 blocks per group: ceil(3/2) +
    ceil(2/2) = 3 groups of blocks, plus the unmatched rest (here the ``proj`` layer):

    >>> lin = lambda: torch.nn.Linear(4, 4, device="meta")  # (16 + 4) x 4 bytes = 80 bytes
    >>> m = torch.nn.Module()
    >>> m.a, m.b = torch.nn.ModuleList([lin() for _ in range(3)]), torch.nn.ModuleList([lin(), lin()])
    >>> m.proj = lin()
    >>> [(g.name, g.weights_bytes) for g in plan_groups(m, OffloadSettings("block_level", num_blocks_per_group=2))]
    [('', 80), ('a.0', 160), ('a.2', 80), ('b.0', 160)]
    """
    settings = settings if isinstance(settings, OffloadSettings) else OffloadSettings(settings)
    if not settings.strategy.is_group:
        raise LabError.bad("settings", settings.strategy.value, "groups belong to group offloading: use "
                           "block_level or leaf_level", verb="makes no groups")
    if not isinstance(module, torch.nn.Module):
        raise LabError.bad("module", type(module).__name__, "pass a torch.nn.Module", verb="is not a module")
    if settings.strategy is Strategy.LEAF_LEVEL:
        return _leaf_level_groups(module, settings.use_stream)
    return _block_level_groups(module, settings.num_blocks_per_group or 1, frozenset(block_modules_of(module)),
                               settings.use_stream)


def _component_peak(module: torch.nn.Module, settings: OffloadSettings) -> tuple[int, int]:
    """(weights on the device at this component's peak, number of groups) under ``settings``."""
    if settings.strategy is Strategy.SEQUENTIAL:
        # accelerate's cpu_offload: each module brings its own (direct) tensors at its forward.
        groups = {name: _nbytes(_direct(m)) for name, m in module.named_modules() if _direct(m)}
        return _path_peak(module, groups, stream=False), len(groups)
    # Group offloading: each group comes in at its module's forward; an unmatched group stays for the
    # whole forward of its module, so it sits under every group inside it (``_path_peak``'s ancestors).
    planned = plan_groups(module, settings)
    return _path_peak(module, {g.name: g.weights_bytes for g in planned}, settings.use_stream), len(planned)


@dataclass(frozen=True)
class OffloadPlan:
    """What a strategy keeps on the compute device, from sizes alone (activations not included).

    ``device_bytes``: weights on the compute device at the peak. ``total_bytes``: all the weights.
    ``offloaded_to``: where the rest waits ("nothing", "CPU RAM" or "disk"). ``n_groups``: how
    many pieces the strategy moves (components, layers or groups). ``largest``: the component whose
    peak sets ``device_bytes``.
    """

    settings: OffloadSettings
    device: str
    total_bytes: int
    device_bytes: int
    offloaded_to: str
    n_groups: int
    largest: str
    by_component: dict[str, int] = field(default_factory=dict)

    @property
    def saved_bytes(self) -> int:
        return self.total_bytes - self.device_bytes


def plan(components: Mapping[str, torch.nn.Module], settings: OffloadSettings | str = Strategy.NONE,
         device: str = "cuda") -> OffloadPlan:
    """The weights ``settings`` keep on ``device`` at the peak of a generation (pure: sizes only).

    ``components``: name -> module (meta modules work), as :func:`flux_dev_components` returns.
    Components run one after another, so offloading strategies need the peak of one component at a
    time (plus any excluded ones). On ``device="cpu"`` the offload device is the same RAM, so only
    disk offloading lowers the figure.

    >>> m = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))  # 263,168 bytes each
    >>> plan({"model": m}, OffloadSettings("leaf_level"), device="cuda").device_bytes
    263168
    """
    settings = settings if isinstance(settings, OffloadSettings) else OffloadSettings(settings)
    if not isinstance(components, Mapping) or not components:
        raise LabError.bad("components", components, "pass a dict of name -> torch.nn.Module",
                           verb="is not a dict of modules")
    if device not in ("cpu", "cuda"):
        raise LabError.bad("device", device, "plan for 'cuda' (an accelerator) or 'cpu'")
    unknown = [e for e in settings.exclude if e not in components]
    if unknown:
        raise LabError.bad("exclude", unknown[0], f"name a component: {', '.join(components)}"
                           f"{closest(unknown[0], components)}", verb="is not a component")
    totals = {name: weights_bytes(m) for name, m in components.items()}
    total = sum(totals.values())
    strategy = settings.strategy
    moves_nothing = strategy is Strategy.NONE or (device == "cpu" and not settings.disk)
    if moves_nothing:
        largest = max(totals, key=totals.get)
        return OffloadPlan(settings, device, total, total, "nothing", len(components), largest, totals)
    kept = sum(totals[e] for e in settings.exclude)
    peaks, n_groups = {}, 0
    for name, module in components.items():
        if name in settings.exclude:
            continue
        if strategy is Strategy.MODEL:
            peaks[name], count = totals[name], 1
        else:
            peaks[name], count = _component_peak(module, settings)
        n_groups += count
    largest = max(peaks, key=peaks.get)
    where = "disk" if settings.disk else "CPU RAM"
    return OffloadPlan(settings, device, total, kept + peaks[largest], where, n_groups, largest, peaks)


def _pow2_ceil(n_bytes: int) -> int:
    return 0 if n_bytes <= 0 else 1 << (n_bytes - 1).bit_length()


@dataclass(frozen=True)
class PinnedPlan:
    """What ``use_stream=True`` pins in CPU RAM (diffusers 0.42, ``low_cpu_mem_usage=False``, the default).

    Diffusers makes a pinned (page-locked) CPU copy of every tensor of every group the side stream
    copies (``ModuleGroup._init_cpu_param_dict``: ``tensor.data.cpu().pin_memory()``), because only
    pinned memory can be copied to the GPU while it computes. ``offloaded_bytes``: the weights group
    offloading keeps in CPU RAM. ``pinned_bytes``: the copies asked for (a tensor in two streamed
    groups is pinned twice). ``reserved_bytes``: what PyTorch's pinned-memory allocator
    (``CachingHostAllocator``) takes for them: it rounds every block up to a power of two.
    ``released_bytes``: the unpinned originals the copies replace (each tensor once): once a group's
    weights point at their pinned copies the originals can be freed, so after the call the weights take
    ``ram_after_bytes`` of CPU RAM. (Measured on an H200 with FLUX.1-dev's transformer at leaf level +
    stream: resident memory grew by 13.41 GB; planned ``reserved_bytes - released_bytes`` = 13.40 GB.)
    """

    settings: OffloadSettings
    offloaded_bytes: int
    pinned_bytes: int
    reserved_bytes: int
    n_tensors: int
    released_bytes: int = 0

    @property
    def ram_after_bytes(self) -> int:
        """CPU RAM the offloaded weights take after the call: the unstreamed originals plus the pinned blocks."""
        return self.offloaded_bytes - self.released_bytes + self.reserved_bytes

    @property
    def rounding(self) -> float:
        """reserved / pinned: 1.0 when every tensor is a power of two bytes, up to (nearly) 2.0."""
        return self.reserved_bytes / self.pinned_bytes if self.pinned_bytes else 1.0


def pinned_memory_plan(components: Mapping[str, torch.nn.Module],
                       settings: OffloadSettings | str) -> PinnedPlan:
    """The CPU RAM that ``settings`` pin, from sizes alone (meta modules work). No stream: nothing pinned.

    A block list of two Linear(256, 256) at block level, one block per group: each group's weight
    (262,144 bytes, a power of two) and bias (1,024) are pinned as they are. A Linear(3, 100) at
    leaf level: 1,200 + 400 bytes asked, 2,048 + 512 reserved.

    >>> m = torch.nn.ModuleDict({"blocks": torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))})
    >>> p = pinned_memory_plan({"m": m}, OffloadSettings("block_level", use_stream=True))
    >>> p.offloaded_bytes, p.pinned_bytes, p.reserved_bytes
    (526336, 526336, 526336)
    >>> one = pinned_memory_plan({"m": torch.nn.Linear(3, 100)}, OffloadSettings("leaf_level", use_stream=True))
    >>> one.pinned_bytes, one.reserved_bytes  # 1,200 + 400 bytes, rounded up to 2,048 + 512
    (1600, 2560)
    """
    settings = settings if isinstance(settings, OffloadSettings) else OffloadSettings(settings)
    if not isinstance(components, Mapping) or not components:
        raise LabError.bad("components", components, "pass a dict of name -> torch.nn.Module",
                           verb="is not a dict of modules")
    kept = {name: m for name, m in components.items() if name not in settings.exclude}
    offloaded = sum(weights_bytes(m) for m in kept.values()) if settings.strategy is not Strategy.NONE else 0
    sizes: list[int] = []
    released = 0
    if settings.use_stream:
        for module in kept.values():
            groups = plan_groups(module, settings)
            sizes += [b for g in groups if g.streamed for b in g.tensor_bytes]
            # Every tensor outside the unstreamed groups gets a pinned copy in place of its original.
            released += weights_bytes(module) - sum(g.weights_bytes for g in groups if not g.streamed)
    return PinnedPlan(settings, offloaded, sum(sizes), sum(_pow2_ceil(b) for b in sizes), len(sizes), released)


@dataclass(frozen=True)
class PublishedFigure:
    """A GPU measurement published by others, kept with its source (the lab cannot measure it on a CPU).

    ``seconds``: one forward pass of the model; ``peak_gib``: ``torch.cuda.max_memory_allocated()``
    during it, in GiB (2**30 bytes).
    """

    model: str
    settings: OffloadSettings
    seconds: float
    peak_gib: float
    gpu: str
    what: str
    source: str


# The only published GPU figures lesson 05 quotes, with where they come from. diffusers' benchmarking
# workflow times the FLUX.1-dev transformer's forward pass alone (1024x1024 image latents, 512 text
# tokens, bf16) with torch.utils.benchmark after 5 warm-up passes, and records max_memory_allocated / 1024**3
# (a GiB figure in a column named "GB"). Its group-offload scenario is leaf level with use_stream=True and
# non_blocking=True.
_DIFFUSERS_BENCHMARKS = ("huggingface.co/datasets/diffusers/benchmarks (collated_results.csv, written by diffusers' "
                         "benchmarking workflow at github_sha 152f7ca357c066c4af3d1a58cdf17662ef5a2f87; scenarios in "
                         "github.com/huggingface/diffusers/blob/main/benchmarks/benchmarking_flux.py)")
_FLUX_FORWARD = "FLUX.1-dev transformer, one forward pass, bf16, 1024x1024 latents, 512 text tokens"
PUBLISHED: tuple[PublishedFigure, ...] = (
    PublishedFigure("FLUX.1-dev transformer", OffloadSettings("none"), 0.493, 22.64,
                    "L40 (diffusers' benchmarks/README.md: 'an L40 GPU with 128GB RAM')", _FLUX_FORWARD,
                    _DIFFUSERS_BENCHMARKS),
    PublishedFigure("FLUX.1-dev transformer", OffloadSettings("leaf_level", use_stream=True), 1.859, 0.56,
                    "L40 (diffusers' benchmarks/README.md: 'an L40 GPU with 128GB RAM')", _FLUX_FORWARD,
                    _DIFFUSERS_BENCHMARKS),
)


def published(settings: OffloadSettings | str) -> PublishedFigure | None:
    """The published GPU figure of ``settings`` in :data:`PUBLISHED`, or None when the lab keeps none.

    >>> f, base = published(OffloadSettings("leaf_level", use_stream=True)), published("none")
    >>> round(f.seconds / base.seconds, 2), round(f.peak_gib / base.peak_gib, 3)
    (3.77, 0.025)
    """
    settings = settings if isinstance(settings, OffloadSettings) else OffloadSettings(settings)
    return next((f for f in PUBLISHED if f.settings == settings), None)


def time_ratio(result: OffloadResult, baseline: OffloadResult) -> float:
    """How many times longer ``result`` took per image than ``baseline`` (medians; nan when either did not run)."""
    if not (result.seconds_per_image and baseline.seconds_per_image):
        return math.nan
    return result.seconds_per_image / baseline.seconds_per_image


def tied_leaf_parameters(module: torch.nn.Module) -> list[tuple[str, str]]:
    """Pairs of leaf-layer parameters that are one tensor (tied), e.g. T5's shared embedding.

    Leaf-level group offloading gives each leaf layer its own group; with ``offload_to_disk_path``
    each group is written to its own file and its tensors are then replaced by empty ones. A tensor
    two leaves share is written by the first, emptied, and written again by the second from the
    emptied storage: the second leaf later loads garbage.

    >>> emb = torch.nn.Embedding(10, 4); head = torch.nn.Linear(4, 10, bias=False); head.weight = emb.weight
    >>> tied_leaf_parameters(torch.nn.ModuleDict({"emb": emb, "head": head}))
    [('emb.weight', 'head.weight')]
    """
    owner: dict[int, str] = {}
    pairs = []
    for name, leaf in module.named_modules():
        if not isinstance(leaf, _leaf_types()):
            continue
        for pname, param in leaf.named_parameters(recurse=False):
            full = f"{name}.{pname}" if name else pname
            if id(param) in owner:
                pairs.append((owner[id(param)], full))
            else:
                owner[id(param)] = full
    return pairs


def known_problems(components: Mapping[str, torch.nn.Module], settings: OffloadSettings) -> list[str]:
    """One sentence for each component that ``settings`` are known to break (empty: none known)."""
    problems = []
    if settings.strategy is Strategy.LEAF_LEVEL and settings.disk:
        for name, module in components.items():
            if name in settings.exclude or not isinstance(module, torch.nn.Module):
                continue
            tied = tied_leaf_parameters(module)
            if tied:
                a, b = tied[0]
                problems.append(
                    f"leaf-level offloading to disk breaks {name}: its {a} and {b} are one tied tensor, saved "
                    f"by two leaf groups, and the second file is written after the first group emptied it, so "
                    f"{name} computes with garbage; use block_level, or exclude=({name!r},)")
    return problems


# ---------------------------------------------------------------------------------------------
# Running: load, apply, generate, measure


@dataclass(frozen=True)
class Generation:
    """What one image costs: the prompt and the pipeline call's settings (small, for a CPU).

    ``max_sequence_length`` is the T5 prompt length FLUX pads to (512 for FLUX.1-dev).
    """

    prompt: str = "a photo of a cat on a red gpu"
    height: int = 16
    width: int = 16
    num_inference_steps: int = 2
    guidance_scale: float = 3.5
    max_sequence_length: int = 16
    seed: int = 0

    def __post_init__(self):
        for name in ("height", "width"):
            value = whole_number(getattr(self, name), name, 16)
            if value % 16:  # FLUX's VAE shrinks 8x and its transformer packs 2x2 latent patches
                raise LabError.bad(name, value, "use a multiple of 16 pixels", verb="does not fit FLUX's patches")
        whole_number(self.num_inference_steps, "num_inference_steps", 1)
        whole_number(self.max_sequence_length, "max_sequence_length", 1)
        whole_number(self.seed, "seed", 0)
        guidance = self.guidance_scale
        if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) or not math.isfinite(guidance) \
                or guidance < 0:  # nan would give a nan image that compares unequal to everything, silently
            raise LabError.bad("guidance_scale", guidance, "use a finite number >= 0, e.g. 3.5 (FLUX.1-dev's)",
                               verb="is not a guidance scale")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise LabError.bad("prompt", self.prompt, "use a short text, e.g. 'a photo of a cat'", verb="is not a prompt")

    def kwargs(self) -> dict:
        """Keyword arguments of ``pipe(...)``; the seed drives a CPU generator, so every device starts
        from the same noise."""
        return dict(prompt=self.prompt, height=self.height, width=self.width,
                    num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                    max_sequence_length=self.max_sequence_length, output_type="pt",
                    generator=torch.Generator("cpu").manual_seed(self.seed))


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
                       "on a CPU use the plan from bsl.offload.plan(..., device='cuda')")
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
    if strategy is Strategy.NONE:
        pipe.to(device)
    elif strategy is Strategy.MODEL:
        pipe.enable_model_cpu_offload(device=device)  # device= is required where no accelerator exists
    elif strategy is Strategy.SEQUENTIAL:
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
            broken = path is not None and strategy is Strategy.LEAF_LEVEL and bool(tied_leaf_parameters(component))
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
        if str(hook.config.offload_type.value) == Strategy.LEAF_LEVEL.value:
            kind = "leaf" if g.modules else "parameters"
        else:
            kind = "blocks" if any(mod is leader for mod in g.modules) else "unmatched"
        seen[id(g)] = _group(names[id(leader)], kind, tensors, g.stream is not None)
    return list(seen.values())


def same_groups(planned: Sequence[PlannedGroup], built: Sequence[PlannedGroup]) -> bool:
    """Whether two lists hold the same groups: same names, same bytes, same tensor counts (order aside).

    >>> a = [PlannedGroup("", "unmatched", 80, 2), PlannedGroup("blocks.0", "blocks", 160, 4)]
    >>> same_groups(a, a[::-1]), same_groups(a, a[:1])
    (True, False)
    """
    def key(groups):
        return sorted((g.name, g.weights_bytes, g.n_tensors) for g in groups)

    return key(planned) == key(built)


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


def measure_pinned(settings: OffloadSettings | str, pipeline: str | os.PathLike = "small",
                   dtype: torch.dtype | str | None = None) -> PinnedMeasurement:
    """Load ``pipeline`` in CPU RAM, apply ``settings`` (which use a stream) to every component with a CUDA
    GPU as the onload device, and measure the pinned copies next to :func:`pinned_memory_plan`.
    Needs a CUDA GPU (pinned memory belongs to it); raises one sentence without one."""
    from diffusers.hooks import apply_group_offloading

    settings = settings if isinstance(settings, OffloadSettings) else OffloadSettings(settings)
    if not settings.use_stream:
        raise LabError.bad("settings", settings.label, "pass settings with use_stream=True", verb="pin nothing")
    if not torch.cuda.is_available():
        raise LabError("pinned memory needs a CUDA GPU and none is attached; on a CPU use "
                       "bsl.offload.pinned_memory_plan(...) for the bytes it would pin")
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


def _generate(pipe, generation: Generation) -> torch.Tensor:
    # The pipeline runs under no_grad itself; inference_mode would turn weights that disk offloading
    # loads back into inference tensors.
    return pipe(**generation.kwargs()).images.detach().float().cpu()


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


def run(settings: OffloadSettings | str = Strategy.NONE, pipeline: str | os.PathLike = "small",
        dtype: torch.dtype | str | None = None, device: str | None = None, generation: Generation | None = None,
        baseline: OffloadResult | None = None, warmup: bool = False,
        on_phase: Callable[[str], object] | None = None, repeats: int = 1) -> OffloadResult:
    """Load ``pipeline`` afresh, apply ``settings``, generate one image and measure it.

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
    settings = settings if isinstance(settings, OffloadSettings) else OffloadSettings(settings)
    repeats = whole_number(repeats, "repeats", 1)
    mark = phase_hook(on_phase) or (lambda name: None)
    device = _device(device)
    torch_dtype = _dtype(dtype, device)
    generation = generation if generation is not None else Generation()
    if not isinstance(generation, Generation):
        raise LabError.bad("generation", generation, "pass a bsl.offload.Generation(...)", verb="is not a Generation")
    check(settings, device)
    names = iter(_phase_names(settings, device, warmup))
    folder = pipeline_folder(pipeline)
    meta = pipeline_components(folder, torch_dtype)
    the_plan = plan(meta, settings, "cuda" if device.startswith("cuda") else "cpu")
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
                _generate(pipe, generation)
            host = track(f"{settings.label}: CPU RAM", device="cpu") if device != "cpu" else contextlib.nullcontext()
            mark(next(names))
            with host as host_report, track(settings.label, device=device) as gen:
                runs = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    image = _generate(pipe, generation)
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
    elif settings.strategy is Strategy.NONE:
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


def compare(settings: Sequence[OffloadSettings | str], pipeline: str | os.PathLike = "small",
            dtype: torch.dtype | str | None = None, device: str | None = None,
            generation: Generation | None = None,
            on_phase: Callable[[str], object] | None = None, repeats: int = 1) -> list[OffloadResult]:
    """Run no offloading (after a warm-up image) and then each of ``settings``, comparing every image
    with the baseline's. Settings that need a CUDA GPU on a CPU come back planned and not run, with
    the reason. ``on_phase`` and ``repeats``: as in :func:`run`, for every run."""
    phase_hook(on_phase)
    device = _device(device)
    torch_dtype = _dtype(dtype, device)
    wanted = [s if isinstance(s, OffloadSettings) else OffloadSettings(s) for s in settings]
    kind = "cuda" if device.startswith("cuda") else "cpu"
    for s in wanted:  # every bad path or impossible combination is reported before the first run
        if not (kind == "cpu" and s.needs_accelerator):
            check(s, device)
    baseline = run(OffloadSettings(), pipeline, torch_dtype, device, generation, warmup=True, on_phase=on_phase,
                   repeats=repeats)
    results = [baseline]
    for s in wanted:
        if s.strategy is Strategy.NONE and not s.exclude:
            continue
        if kind == "cpu" and s.needs_accelerator:
            results.append(planned(s, pipeline, torch_dtype))
            continue
        results.append(run(s, pipeline, torch_dtype, device, generation, baseline=baseline, on_phase=on_phase,
                           repeats=repeats))
    return results


def planned(settings: OffloadSettings | str, pipeline: str | os.PathLike = "small",
            dtype: torch.dtype | str | None = None) -> OffloadResult:
    """A result that did not run here: settings that need a CUDA GPU, planned for one, with the reason."""
    settings = settings if isinstance(settings, OffloadSettings) else OffloadSettings(settings)
    torch_dtype = _dtype(dtype, "cuda")
    components = pipeline_components(pipeline, torch_dtype)
    why = settings.needs_accelerator or "it was not run"
    return OffloadResult(settings, _device(None), str(torch_dtype).removeprefix("torch."),
                         plan(components, settings, "cuda"), ran=False, reason=f"needs a CUDA GPU: {why}; planned for a GPU")
