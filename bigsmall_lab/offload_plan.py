"""Offloading with Diffusers, planned: what each strategy keeps on the compute device, at any scale
(pure: module sizes in, bytes and dataclasses out; meta-device modules work, nothing is loaded).

Over 600 lines on purpose: :func:`plan_groups` repeats diffusers 0.42's group-offloading builder
(block level, leaf level, the unmatched rest, the streamed groups) step by step, and every other
planner here (:func:`plan_offload`, :func:`pinned_memory_plan`) reads the groups it cuts; split
apart they would import each other's private helpers.

Offloading keeps weights in a big, slow memory (CPU RAM, or a disk) and brings them to the compute
device (a GPU) only while they run. Diffusers offers it at three granularities
(:class:`OffloadStrategy`, chosen with :class:`OffloadSettings`):

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

:func:`plan_offload` reads module sizes, so it works on the meta device. FLUX.1-dev in bfloat16
(:func:`flux_dev_components`: the real configs, no weights) holds 33.74 GB without offloading; with
model offload the GPU holds its largest component, the 23.80 GB transformer. :mod:`bigsmall_lab.offload`
runs each strategy on a real pipeline and measures it against these plans. torch is imported inside the
functions that touch modules or tensors, never at import: the CLI plans presets without torch.

>>> OffloadSettings("block_level", num_blocks_per_group=2).label
'group offloading, block level (2 blocks per group)'
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ._errors import LabError, closest, whole_number

if TYPE_CHECKING:
    import torch

__all__ = [
    "FLUX_DEV_CONFIGS", "FLUX_DEV_VAE_CONFIG", "NAMED_SETTINGS", "PUBLISHED", "ComponentSize", "ImageSettings", "OffloadPlan",
    "OffloadSettings", "OffloadStrategy", "PinnedPlan", "PlannedGroup", "PublishedFigure", "block_modules_of",
    "component_sizes", "flux_dev_components", "known_problems", "module_tensor_bytes", "pinned_memory_plan",
    "plan_groups", "plan_offload", "published", "same_groups", "tied_leaf_parameters",
]


class OffloadStrategy(str, Enum):
    """How weights leave the compute device (diffusers' ``GroupOffloadingType`` is the model)."""

    NONE = "none"
    MODEL = "model"
    SEQUENTIAL = "sequential"
    BLOCK_LEVEL = "block_level"
    LEAF_LEVEL = "leaf_level"

    @property
    def is_group(self) -> bool:
        return self in (OffloadStrategy.BLOCK_LEVEL, OffloadStrategy.LEAF_LEVEL)


_STRATEGY_LABELS = {
    OffloadStrategy.NONE: "no offloading",
    OffloadStrategy.MODEL: "model offload",
    OffloadStrategy.SEQUENTIAL: "sequential offload",
    OffloadStrategy.BLOCK_LEVEL: "group offloading, block level",
    OffloadStrategy.LEAF_LEVEL: "group offloading, leaf level",
}



def _strategy(value: Any) -> OffloadStrategy:
    if isinstance(value, OffloadStrategy):
        return value
    names = [s.value for s in OffloadStrategy]
    if isinstance(value, str) and value.strip().lower() in names:
        return OffloadStrategy(value.strip().lower())
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

    strategy: OffloadStrategy | str = OffloadStrategy.NONE
    num_blocks_per_group: int | None = None
    use_stream: bool = False
    offload_to_disk_path: str | os.PathLike | None = None
    exclude: tuple[str, ...] = ()

    def __post_init__(self):
        strategy = _strategy(self.strategy)
        object.__setattr__(self, "strategy", strategy)
        blocks = self.num_blocks_per_group
        if strategy is OffloadStrategy.BLOCK_LEVEL:
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
        if self.strategy is OffloadStrategy.SEQUENTIAL:
            return "sequential offload streams each layer's weights to an accelerator (accelerate's hooks fail on a CPU)"
        if self.use_stream:
            return "use_stream=True copies the next group on a CUDA stream while the current one computes"
        return None

    @property
    def label(self) -> str:
        text = _STRATEGY_LABELS[self.strategy]
        if self.strategy is OffloadStrategy.BLOCK_LEVEL:
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
        if self.strategy is OffloadStrategy.NONE:
            return f'pipe.to("{device}")'
        if self.strategy is OffloadStrategy.MODEL:
            return f'pipe.enable_model_cpu_offload(device="{device}")'
        if self.strategy is OffloadStrategy.SEQUENTIAL:
            return f'pipe.enable_sequential_cpu_offload(device="{device}")'
        args = [f'onload_device="{device}"', 'offload_device="cpu"', f'offload_type="{self.strategy.value}"']
        if self.strategy is OffloadStrategy.BLOCK_LEVEL:
            args.append(f"num_blocks_per_group={self.num_blocks_per_group}")
        if self.use_stream:
            args.append("use_stream=True")
        if self.disk:
            args.append("offload_to_disk_path=...")
        return f"apply_group_offloading(component, {', '.join(args)})"


# One setting per strategy, by the names the advisor's options carry (zoo._facts stores each one's bytes for
# FLUX.1-dev under the same names).
NAMED_SETTINGS: dict[str, OffloadSettings] = {
    "none": OffloadSettings("none"),
    "model": OffloadSettings("model"),
    "block_level": OffloadSettings("block_level"),
    "leaf_level+stream": OffloadSettings("leaf_level", use_stream=True),
    "sequential": OffloadSettings("sequential"),
}


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
        import torch

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


def module_tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers, each tensor once (meta modules work).

    >>> import torch
    >>> module_tensor_bytes(torch.nn.Linear(1024, 1024, device="meta"))  # (1024 x 1024 + 1024) x 4 bytes
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
    from .zoo._configs import count_parameters

    name = dtype_name(dtype)
    if configs is None or configs is FLUX_DEV_CONFIGS:  # count the meta models the planner uses too
        counted = {c: sum(p.numel() for p in m.parameters()) for c, m in _flux_dev_meta("bfloat16")}
    else:
        counted = {c: count_parameters(config) for c, config in configs.items()}
    return [ComponentSize(c, n, int(n * bytes_per_element(name)), name) for c, n in counted.items()]


@lru_cache(maxsize=4)
def _flux_dev_meta(dtype_name: str) -> tuple[tuple[str, torch.nn.Module], ...]:
    from ._dtypes import torch_dtype
    from .zoo._configs import meta_model

    return tuple((name, meta_model(config, torch_dtype(dtype_name))) for name, config in FLUX_DEV_CONFIGS.items())


def flux_dev_components(dtype: torch.dtype | str = "bfloat16") -> dict[str, torch.nn.Module]:
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
    import torch

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

    >>> import torch
    >>> lin = lambda: torch.nn.Linear(4, 4, device="meta")  # (16 + 4) x 4 bytes = 80 bytes
    >>> m = torch.nn.Module()
    >>> m.a, m.b = torch.nn.ModuleList([lin() for _ in range(3)]), torch.nn.ModuleList([lin(), lin()])
    >>> m.proj = lin()
    >>> [(g.name, g.weights_bytes) for g in plan_groups(m, OffloadSettings("block_level", num_blocks_per_group=2))]
    [('', 80), ('a.0', 160), ('a.2', 80), ('b.0', 160)]
    """
    import torch

    settings = settings if isinstance(settings, OffloadSettings) else OffloadSettings(settings)
    if not settings.strategy.is_group:
        raise LabError.bad("settings", settings.strategy.value, "groups belong to group offloading: use "
                           "block_level or leaf_level", verb="makes no groups")
    if not isinstance(module, torch.nn.Module):
        raise LabError.bad("module", type(module).__name__, "pass a torch.nn.Module", verb="is not a module")
    if settings.strategy is OffloadStrategy.LEAF_LEVEL:
        return _leaf_level_groups(module, settings.use_stream)
    return _block_level_groups(module, settings.num_blocks_per_group or 1, frozenset(block_modules_of(module)),
                               settings.use_stream)


def _component_peak(module: torch.nn.Module, settings: OffloadSettings) -> tuple[int, int]:
    """(weights on the device at this component's peak, number of groups) under ``settings``."""
    if settings.strategy is OffloadStrategy.SEQUENTIAL:
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


def plan_offload(components: Mapping[str, torch.nn.Module], settings: OffloadSettings | str = OffloadStrategy.NONE,
         device: str = "cuda") -> OffloadPlan:
    """The weights ``settings`` keep on ``device`` at the peak of a generation (pure: sizes only).

    ``components``: name -> module (meta modules work), as :func:`flux_dev_components` returns.
    Components run one after another, so offloading strategies need the peak of one component at a
    time (plus any excluded ones). On ``device="cpu"`` the offload device is the same RAM, so only
    disk offloading lowers the figure.

    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))  # 263,168 bytes each
    >>> plan_offload({"model": m}, OffloadSettings("leaf_level"), device="cuda").device_bytes
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
    totals = {name: module_tensor_bytes(m) for name, m in components.items()}
    total = sum(totals.values())
    strategy = settings.strategy
    moves_nothing = strategy is OffloadStrategy.NONE or (device == "cpu" and not settings.disk)
    if moves_nothing:
        largest = max(totals, key=totals.get)
        return OffloadPlan(settings, device, total, total, "nothing", len(components), largest, totals)
    kept = sum(totals[e] for e in settings.exclude)
    peaks, n_groups = {}, 0
    for name, module in components.items():
        if name in settings.exclude:
            continue
        if strategy is OffloadStrategy.MODEL:
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

    >>> import torch
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
    offloaded = sum(module_tensor_bytes(m) for m in kept.values()) if settings.strategy is not OffloadStrategy.NONE else 0
    sizes: list[int] = []
    released = 0
    if settings.use_stream:
        for module in kept.values():
            groups = plan_groups(module, settings)
            sizes += [b for g in groups if g.streamed for b in g.tensor_bytes]
            # Every tensor outside the unstreamed groups gets a pinned copy in place of its original.
            released += module_tensor_bytes(module) - sum(g.weights_bytes for g in groups if not g.streamed)
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



def tied_leaf_parameters(module: torch.nn.Module) -> list[tuple[str, str]]:
    """Pairs of leaf-layer parameters that are one tensor (tied), e.g. T5's shared embedding.

    Leaf-level group offloading gives each leaf layer its own group; with ``offload_to_disk_path``
    each group is written to its own file and its tensors are then replaced by empty ones. A tensor
    two leaves share is written by the first, emptied, and written again by the second from the
    emptied storage: the second leaf later loads garbage.

    >>> import torch
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
    if settings.strategy is OffloadStrategy.LEAF_LEVEL and settings.disk:
        import torch

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



@dataclass(frozen=True)
class ImageSettings:
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
        import torch

        return dict(prompt=self.prompt, height=self.height, width=self.width,
                    num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                    max_sequence_length=self.max_sequence_length, output_type="pt",
                    generator=torch.Generator("cpu").manual_seed(self.seed))


def same_groups(planned: Sequence[PlannedGroup], built: Sequence[PlannedGroup]) -> bool:
    """Whether two lists hold the same groups: same names, same bytes, same tensor counts (order aside).

    >>> a = [PlannedGroup("", "unmatched", 80, 2), PlannedGroup("blocks.0", "blocks", 160, 4)]
    >>> same_groups(a, a[::-1]), same_groups(a, a[:1])
    (True, False)
    """
    def key(groups):
        return sorted((g.name, g.weights_bytes, g.n_tensors) for g in groups)

    return key(planned) == key(built)
