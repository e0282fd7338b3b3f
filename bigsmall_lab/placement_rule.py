"""transformers' device-map planner, ported to plain Python over a module tree stored as data: plans with no torch.

``bigsmall-lab fit llama-3.1-405b --gpu T4`` must answer at once; building the model on the meta device
to plan it imports torch and transformers (seconds) before the first number. What ``from_pretrained``'s
planner reads of a model is small: the module tree (names, classes, direct parameters and buffers),
transformers' byte count of every module and tensor, the no-split classes and the tied weights. A
:class:`ModuleTree` holds exactly that (``placement.tree(...)`` reads it off the meta model;
``as_dict`` / ``from_dict`` ship it as JSON), and :func:`plan` replays, step by step, what
``from_pretrained(..., device_map=strategy, max_memory=...)`` does with it:

==========================  ==========================================================================
step                        the function ported (transformers 5.25, accelerate 1.16)
==========================  ==========================================================================
budgets                     ``get_max_memory`` ("sequential") or ``get_balanced_memory`` (low_zero for
                            "balanced_low_0"), both in ``transformers.integrations.accelerate``
bitsandbytes                the quantizer's ``adjust_max_memory``: every budget x 0.90
placement                   ``infer_auto_device_map`` (tied weights, no-split classes, the largest
                            layer kept free on the main devices, splitting, ``no_placement_params``),
                            accelerate's ``get_max_layer_size`` and ``clean_device_map``
==========================  ==========================================================================

The :class:`Plan` comes out of the one :func:`_describe` that :func:`bigsmall_lab.placement.plan` (the
real library calls on the meta model) also uses, so the two can be compared field by field:
tests/test_placement_rule.py asserts ``plan(placement.tree(p, dtype, q), s, mm) == placement.plan(p, s, mm,
dtype, q)`` for every transformers preset, weight format and strategy over budgets that reach every
branch, in both CI lanes (the locked releases and the newest ones, so a change upstream shows there first).

A tiny tree, in bytes: an embedding of 100, two no-split blocks of 60 and a head tied to the embedding (its weight
is the embedding's, counted once). GPU 0 (200) keeps 60 free for the largest block: 140 take the embedding and its
head; embedding + a block (160) would not fit, so the blocks go to the CPU (the map lists modules in the model's
order, which accelerate's own map does not promise):

>>> t = ModuleTree("toy", "planned as transformers' from_pretrained does", "float32", None,
...     modules=(("", "Toy", (), ()), ("embed", "Embedding", ("weight",), ()), ("blocks", "ModuleList", (), ()),
...              ("blocks.0", "Block", ("weight",), ()), ("blocks.1", "Block", ("weight",), ()),
...              ("head", "Linear", ("weight",), ())),
...     sizes={"": 220, "embed": 100, "embed.weight": 100, "blocks": 120, "blocks.0": 60, "blocks.0.weight": 60,
...            "blocks.1": 60, "blocks.1.weight": 60}, buffers={}, no_split=("Block",),
...     tied=(("embed.weight", "head.weight"),))
>>> plan(t, "sequential", {0: 200, "cpu": 1000}).device_map
{'embed': 0, 'blocks': 'cpu', 'head': 0}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import Any

from ._errors import LabError, closest, shown
from ._units import parse_size

__all__ = ["DEVICE_ORDER", "Device", "LayerRange", "ModuleTree", "Plan", "Strategy", "parse_budgets", "plan"]

Device = int | str  # a GPU index, "cpu" or "disk"
DEVICE_ORDER = ("cpu", "disk")  # after the GPUs, in the order the planner fills them
# The engine text of a plan made as transformers' from_pretrained makes it: the only kind this port replays.
TRANSFORMERS_ENGINE = "planned as transformers' from_pretrained does"
_BNB_BUDGET_FACTOR = 0.90  # bitsandbytes' adjust_max_memory: room for the buffers quantization creates
_FORMAT = 1  # version of ModuleTree.as_dict's layout


class Strategy(str, Enum):
    """The ``device_map`` strings ``from_pretrained`` plans by itself."""

    AUTO = "auto"  # transformers: the same as "balanced"
    BALANCED = "balanced"  # every GPU but the last capped near total / number of GPUs
    BALANCED_LOW_0 = "balanced_low_0"  # balanced over GPUs 1..n-1, GPU 0 takes only what is left
    SEQUENTIAL = "sequential"  # fill GPU 0 to its budget, then GPU 1, ...; the last may stay empty

    @classmethod
    def parse(cls, value: str | Strategy) -> Strategy:
        if isinstance(value, Strategy):
            return value
        names = [s.value for s in cls]
        try:
            return cls(str(value).strip().lower()) if isinstance(value, str) else cls(value)
        except ValueError:
            raise LabError.bad("strategy", value, f"use one of: {', '.join(names)}{closest(str(value), names)}",
                               verb="is not a device_map strategy") from None


@dataclass(frozen=True)
class LayerRange:
    """Consecutive entries of the device map that went to the same device, e.g. layers 0-13 on GPU 0."""

    device: Device
    label: str  # "model.layers.0-13", "model.embed_tokens"
    names: tuple[str, ...]  # the device-map keys it covers
    n_bytes: int
    n_blocks: int  # how many no-split blocks (whole decoder layers) it holds


@dataclass(frozen=True)
class Plan:
    """Where every module goes and how many bytes each device holds.

    ``device_map`` is what ``from_pretrained`` would use (and show as ``model.hf_device_map``);
    ``budgets`` the ``max_memory`` given, in bytes; ``planned_budgets`` what the strategy turned
    them into before placing (the budgets ``infer_auto_device_map`` really used);
    ``bytes_per_device`` has every budgeted device, GPUs first, then "cpu" and "disk" (0 when empty).
    Sizes count parameters and buffers in the planned dtype (for bitsandbytes: packed weights, as
    transformers counts them, without the quantization scales).
    """

    model: str
    strategy: Strategy | None  # None: a device map given by hand or read from a loaded model
    dtype: str
    quantization: str | None
    engine: str  # which library's functions made the plan
    device_map: dict[str, Device]
    budgets: dict[Device, int]
    planned_budgets: dict[Device, int]
    bytes_per_device: dict[Device, int]
    weight_bytes_per_device: dict[Device, int]  # parameters only: what the checkpoint holds (no buffers)
    ranges: tuple[LayerRange, ...]
    total_bytes: int
    largest_layer_bytes: int  # what GPU 0 and the CPU keep free while anything may spill
    largest_layer: str
    smallest_block_bytes: int  # the smallest no-split block: no device can take less
    no_split_modules: tuple[str, ...]
    n_blocks: int
    split_blocks: tuple[str, ...] = ()  # no-split blocks whose parts went to different entries: none, by design
    notes: tuple[str, ...] = field(default=())

    @property
    def gpus(self) -> list[int]:
        return [d for d in self.bytes_per_device if isinstance(d, int)]

    def bytes_on(self, device: Device) -> int:
        return self.bytes_per_device.get(device, 0)

    def layers_on(self, device: Device) -> int:
        """Whole no-split blocks (decoder layers) placed on ``device``."""
        return sum(r.n_blocks for r in self.ranges if r.device == device)

    def layers_run_on(self, device: Device) -> int:
        """Blocks ``device`` computes in a forward pass. accelerate's ``dispatch_model`` runs the layers offloaded
        to the CPU or disk on the first GPU (their weights are copied in), so GPU 0 computes those too."""
        gpus = [d for d in self.gpus if self.bytes_on(d) > 0] or self.gpus
        if not gpus:
            return self.n_blocks if device == "cpu" else 0
        if device == gpus[0]:
            return self.layers_on(device) + self.layers_on("cpu") + self.layers_on("disk")
        return self.layers_on(device) if isinstance(device, int) else 0

    @property
    def spilled_bytes(self) -> int:
        """Bytes that went to the CPU or the disk although GPUs were budgeted (0 on a CPU-only plan's CPU)."""
        disk = self.bytes_on("disk")
        return disk + (self.bytes_on("cpu") if self.gpus else 0)

    @property
    def fits_on_gpus(self) -> bool:
        return bool(self.gpus) and self.spilled_bytes == 0

    @property
    def devices_used(self) -> list[Device]:
        return [d for d, n in self.bytes_per_device.items() if n > 0]

    def __repr__(self) -> str:
        per = ", ".join(f"{_device_label(d)} {n / 2**30:.2f} GiB ({self.layers_on(d)} blocks)"
                        for d, n in self.bytes_per_device.items())
        how = self.strategy.value if self.strategy else "given map"
        quant = f" {self.quantization}" if self.quantization else ""
        return f"Plan({self.model}, {self.dtype}{quant}, {how}: {per})"


def _device_label(device: Device) -> str:
    return f"GPU {device}" if isinstance(device, int) else str(device).upper() if device == "cpu" else str(device)


# --- inputs --------------------------------------------------------------------------------------

def parse_budgets(max_memory: Mapping[Any, Any]) -> dict[Device, int]:
    """``max_memory`` with every size in bytes and devices in planning order (GPUs, "cpu", "disk").

    >>> parse_budgets({"cpu": "2GiB", 1: "10GB", 0: 10_000_000})
    {0: 10000000, 1: 10000000000, 'cpu': 2147483648}
    """
    if not isinstance(max_memory, Mapping) or not max_memory:
        raise LabError.bad("max_memory", max_memory, "give a dict of device -> size, e.g. {0: '10GiB', 'cpu': '30GiB'}",
                           verb="is not a dict of budgets")
    out: dict[Device, int] = {}
    for key, value in max_memory.items():
        device = _device_key(key)
        try:
            out[device] = parse_size(value, argument=f"max_memory[{key!r}]")
        except (ValueError, TypeError):
            raise LabError.bad(f"max_memory[{key!r}]", value, "write a size such as '10GB', '10GiB' or "
                               "10_000_000 (bytes)", verb="is not a memory size") from None
    gpus = sorted(d for d in out if isinstance(d, int))
    return {d: out[d] for d in (*gpus, *[k for k in DEVICE_ORDER if k in out])}


def _device_key(key: Any) -> Device:
    if isinstance(key, str) and key.strip().lower() in DEVICE_ORDER:
        return key.strip().lower()
    if isinstance(key, str) and re.fullmatch(r"\s*cuda:\d+\s*", key):
        return int(key.split(":")[1])
    if isinstance(key, bool) or not isinstance(key, int) or key < 0:
        raise LabError.bad("max_memory key", key, "use GPU indices 0, 1, ... and 'cpu' or 'disk'",
                           verb="is not a device")
    return int(key)


def _check_room(tree: ModuleTree, budgets: dict[Device, int], max_memory: Mapping[Any, Any]) -> None:
    """One sentence when no GPU and no CPU budget can hold even the smallest layer."""
    smallest = _smallest_block(tree)
    usable = {d: b for d, b in budgets.items() if d != "disk"}
    if smallest and usable and all(b < smallest[1] for b in usable.values()):
        raise LabError(f"max_memory {shown(dict(max_memory))} is too small for even one layer: the smallest "
                       f"({smallest[0]}) takes {smallest[1]:,} bytes; give a GPU or the CPU at least that")


def _check_low_zero(tree: ModuleTree, strategy: Strategy, budgets: dict[Device, int],
                    max_memory: Mapping[Any, Any]) -> None:
    """transformers' balanced_low_0 reads GPUs 0 .. n-1 by index (n: GPUs with a budget above 0) and fails with a
    bare KeyError when one is missing, so say it first. (accelerate's own, for diffusers, reads only GPU 0 so.)"""
    n_gpus = sum(1 for d, b in budgets.items() if isinstance(d, int) and b > 0)
    missing = [i for i in range(n_gpus) if i not in budgets]
    if tree.engine == TRANSFORMERS_ENGINE and strategy is Strategy.BALANCED_LOW_0 and n_gpus > 1 and missing:
        raise LabError.bad("max_memory", dict(max_memory), f"transformers' balanced_low_0 reads GPUs 0 to {n_gpus - 1} "
                           f"by index ({n_gpus} GPUs have room): number them 0, 1, ... or use 'auto'",
                           verb=f"has no GPU {missing[0]} for balanced_low_0")


# --- the module tree -----------------------------------------------------------------------------

# (name, class name, direct parameter names, direct buffer names), as named_modules() lists them.
Module = tuple[str, str, tuple[str, ...], tuple[str, ...]]


@dataclass(frozen=True)
class ModuleTree:
    """What transformers' planner reads of one model in one dtype and weight format, as plain data.

    ``modules``: every module in ``named_modules()`` order (the root "" first; a module's children are the
    modules one dot below it, in registration order). ``sizes``: transformers'
    ``compute_module_sizes(model, quantizer, only_modules=False)``, bytes of every module and every counted
    tensor (tied copies are not counted; 4-bit bitsandbytes weights count 0.5 byte a value, so those sizes
    are floats); ``buffers``: ``compute_module_sizes(model, quantizer, buffers_only=True)``, the buffers' bytes
    of every module (no entry per tensor). ``no_split``: ``model._no_split_modules``.
    ``tied``: the groups of tied parameter names as ``_init_infer_auto_device_map`` builds them from
    ``model.all_tied_weights_keys``. ``no_placement_params``: ``model._no_placement_params``.

    >>> t = ModuleTree.from_dict({"format": 1, "model": "toy", "engine": "e", "dtype": "float32",
    ...     "quantization": None, "no_split": [], "tied": [], "no_placement_params": None, "classes": ["Toy", "Linear"],
    ...     "modules": [[-1, "", 0], [0, "fc", 1, ["weight", "bias"]]], "tensor_bytes": [32, 8]})
    >>> t.sizes
    {'': 40, 'fc': 40, 'fc.weight': 32, 'fc.bias': 8}
    """

    model: str
    engine: str
    dtype: str
    quantization: str | None  # None, "int8", "nf4", "nf4-double" or "fp4" (bitsandbytes)
    modules: tuple[Module, ...] = field(repr=False)
    sizes: dict[str, int | float] = field(repr=False)
    buffers: dict[str, int | float] = field(repr=False)
    no_split: tuple[str, ...]
    tied: tuple[tuple[str, ...], ...] = ()
    no_placement_params: tuple[str, ...] | None = None

    @property
    def bnb_quantizer(self) -> bool:
        """Whether a bitsandbytes quantizer plans this model (every format here is one): its
        ``adjust_max_memory`` lowers each budget to 90 %, and from_pretrained refuses its CPU spills."""
        return self.quantization is not None

    @cached_property
    def _children(self) -> dict[str, list[str]]:
        """Module name -> its children's names, in registration order."""
        out: dict[str, list[str]] = {name: [] for name, *_ in self.modules}
        for name, *_ in self.modules[1:]:
            out[name.rpartition(".")[0]].append(name)
        return out

    @cached_property
    def _rank(self) -> dict[str, int]:
        """Each module's and tensor's place in ``named_modules()`` order (a module before its children)."""
        rank: dict[str, int] = {}
        for name, _cls, params, buffers in self.modules:
            rank.setdefault(name, len(rank))
            for tensor in (*params, *buffers):
                rank.setdefault(_join(name, tensor), len(rank))
        return rank

    @cached_property
    def _module(self) -> dict[str, Module]:
        return {m[0]: m for m in self.modules}

    def _class(self, name: str) -> str:
        return self._module[name][1]

    def _blocks(self) -> list[str]:
        return [name for name, cls, *_ in self.modules if cls in self.no_split]

    def _tensors_under(self, name: str, kind: int) -> list[str]:
        """``module.named_parameters()`` (kind 2) or ``named_buffers()`` (kind 3) names, relative to ``name``."""
        prefix = name + "." if name else ""
        out = []
        for m in self.modules:
            if m[0] == name or m[0].startswith(prefix):
                rel = m[0][len(prefix):] if m[0] != name else ""
                out += [f"{rel}.{t}" if rel else t for t in m[kind]]
        return out

    # --- as data ---

    def as_dict(self) -> dict[str, Any]:
        """JSON-able and compact: each module as ``[parent index, own name, class index]`` plus its direct
        parameter and buffer names when it has any; ``tensor_bytes`` lists every module's parameters then
        buffers in that order (None: not counted, a tied copy); module sizes are sums, rebuilt by
        :meth:`from_dict`."""
        classes: dict[str, int] = {}
        index = {name: i for i, (name, *_) in enumerate(self.modules)}
        modules, tensor_bytes = [], []
        for name, cls, params, buffers in self.modules:
            parent, _, own = name.rpartition(".")
            entry: list[Any] = [index[parent] if name else -1, own, classes.setdefault(cls, len(classes))]
            if params or buffers:
                entry.append(list(params))
            if buffers:
                entry.append(list(buffers))
            modules.append(entry)
            tensor_bytes += [self.sizes.get(_join(name, t)) for t in (*params, *buffers)]
        return {"format": _FORMAT, "model": self.model, "engine": self.engine, "dtype": self.dtype,
                "quantization": self.quantization, "no_split": list(self.no_split),
                "tied": [list(g) for g in self.tied],
                "no_placement_params": None if self.no_placement_params is None else list(self.no_placement_params),
                "classes": list(classes), "modules": modules, "tensor_bytes": tensor_bytes}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModuleTree:
        """The tree :meth:`as_dict` wrote; sizes summed as ``compute_module_sizes`` sums them."""
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise LabError.bad("data", data, f"pass what ModuleTree.as_dict() wrote (format {_FORMAT})",
                               verb="is not a module tree")
        try:
            classes, names, modules = data["classes"], [], []
            for parent, own, class_index, *tensors in data["modules"]:
                name = own if parent < 1 else f"{names[parent]}.{own}"
                names.append(name)
                params, buffers = (tuple(tensors[0]) if tensors else ()), (tuple(tensors[1]) if len(tensors) > 1 else ())
                modules.append((name, classes[class_index], params, buffers))
            sizes: dict[str, int | float] = {}
            buffer_sizes: dict[str, int | float] = {}
            counted = iter(data["tensor_bytes"])
            for name, _, params, buffers in modules:
                for kind, tensor in [(0, t) for t in params] + [(1, t) for t in buffers]:
                    n_bytes = next(counted)
                    if n_bytes is None:
                        continue
                    _count(sizes, _join(name, tensor), n_bytes, itself=True)
                    if kind:  # buffers_only=True keeps the default only_modules=True: no entries for the tensors
                        _count(buffer_sizes, _join(name, tensor), n_bytes, itself=False)
            npp = data["no_placement_params"]
            return cls(model=data["model"], engine=data["engine"], dtype=data["dtype"],
                       quantization=data["quantization"], modules=tuple(modules), sizes=sizes, buffers=buffer_sizes,
                       no_split=tuple(data["no_split"]), tied=tuple(tuple(g) for g in data["tied"]),
                       no_placement_params=None if npp is None else tuple(npp))
        except (KeyError, IndexError, TypeError, ValueError, StopIteration):
            raise LabError.bad("data", data, f"pass what ModuleTree.as_dict() wrote (format {_FORMAT})",
                               verb="is not a whole module tree") from None


def _join(module: str, tensor: str) -> str:
    return f"{module}.{tensor}" if module else tensor


def _count(sizes: dict[str, int | float], tensor: str, n_bytes: int | float, itself: bool) -> None:
    """compute_module_sizes' sum: the tensor's bytes go to every module above it (the root "" included) and, with
    only_modules=False (``itself``), to the tensor's own entry."""
    parts = tensor.split(".")
    for i in range(len(parts)):
        key = ".".join(parts[:i])
        sizes[key] = sizes.get(key, 0) + n_bytes
    if itself:
        sizes[tensor] = sizes.get(tensor, 0) + n_bytes


# --- the plan ------------------------------------------------------------------------------------

def plan(tree: ModuleTree, strategy: str | Strategy = "auto", max_memory: Mapping[Any, Any] | None = None) -> Plan:
    """Where ``from_pretrained(..., device_map=strategy, max_memory=max_memory)`` puts each module of ``tree``.

    The same :class:`Plan` as :func:`bigsmall_lab.placement.plan` on the model the tree was read from
    (``placement.tree(config, dtype, quantization)``), computed without torch. ``max_memory``: device ->
    size, devices GPU indices (which need not exist), "cpu" and "disk"; sizes like "10GB", "10GiB" or bytes.
    """
    strategy = Strategy.parse(strategy)
    if max_memory is None:
        raise LabError.bad("max_memory", None, "give a dict of device -> size, e.g. {0: '10GiB', 'cpu': '30GiB'}",
                           verb="is missing")
    budgets = parse_budgets(max_memory)
    if not isinstance(tree, ModuleTree):
        raise LabError.bad("tree", tree, "pass placement.tree(config, dtype, quantization) or "
                           "ModuleTree.from_dict(data)", verb="is not a ModuleTree")
    if tree.engine != TRANSFORMERS_ENGINE:
        raise LabError(f"tree of {tree.model!r} is {tree.engine}, not by transformers' from_pretrained; "
                       "placement_rule replays transformers only: plan it with placement.plan")
    _check_room(tree, budgets, max_memory)
    _check_low_zero(tree, strategy, budgets, max_memory)
    # transformers' _get_device_map. get_max_memory(max_memory) with a dict given only converts its sizes (already
    # bytes here): its CUDA/XPU branch adds the caching allocator's reserved-but-unused memory of each GPU and then
    # takes min(given, given + unused), which is the given budget on any machine; only max_memory=None reads the
    # hardware, and this port always has a dict.
    if strategy is Strategy.SEQUENTIAL:
        planned: dict[Device, int | float] = dict(budgets)
    else:
        planned = _balanced_memory(tree, dict(budgets), low_zero=strategy is Strategy.BALANCED_LOW_0)
    if tree.bnb_quantizer:
        planned = {d: v * _BNB_BUDGET_FACTOR for d, v in planned.items()}
    device_map = _infer_auto_device_map(tree, planned)
    return _describe(tree, strategy, dict(device_map), budgets, {d: int(v) for d, v in planned.items()})


def _balanced_memory(tree: ModuleTree, max_memory: dict[Device, int | float], low_zero: bool) -> dict[Device, Any]:
    """transformers' get_balanced_memory with max_memory given (never None here: no 90 % of a lone GPU)."""
    sizes = tree.sizes
    num_devices = len([d for d, v in max_memory.items() if d not in ("cpu", "disk") and v > 0])
    if num_devices == 0:
        return max_memory
    if num_devices == 1:
        low_zero = False  # cannot keep GPU 0 light with one GPU
    total = sizes.get("", 0)
    per_gpu = total // (num_devices - 1 if low_zero else num_devices)
    # The margin: the biggest no-split block (all of them: one class may differ in size by layer) or the biggest
    # leaf (module with tensors of its own), x 1.25.
    biggest_no_split = 0
    if tree.no_split:
        blocks = tree._blocks()
        if not blocks:
            raise LabError(f"tree of {tree.model!r} has no module of its no-split classes {list(tree.no_split)}; "
                           "transformers' get_balanced_memory fails on such a model: plan it with 'sequential'")
        biggest_no_split = max(sizes.get(k, 0) for k in blocks)
    leaves: dict[str, int | float] = {}
    for name, _, params, buffers in tree.modules:
        for tensor in (*params, *buffers):
            full = _join(name, tensor)
            if "." in full and full in sizes:
                leaves[name] = leaves.get(name, 0) + sizes[full]
    biggest_leaf = max(leaves.values(), default=0)
    per_gpu += int(1.25 * max(biggest_no_split, biggest_leaf))
    gpus = sorted(d for d, v in max_memory.items() if isinstance(d, int) and v > 0)
    for idx in gpus[:-1]:  # the last GPU keeps its whole budget, in case the margin is not enough
        max_memory[idx] = min(max_memory[0] if low_zero and idx == 0 else per_gpu, max_memory[idx])
    if low_zero:
        min_zero = max(0, total - sum(max_memory[i] for i in range(1, num_devices)))
        max_memory[0] = min(min_zero, max_memory[0])
    return max_memory


Entry = tuple[str, bool]  # (name, is a module): what infer_auto_device_map's modules_to_treat holds


def _max_layer_size(tree: ModuleTree, entries: list[Entry]) -> tuple[int | float, list[str]]:
    """accelerate's get_max_layer_size: the biggest module that is not split (no children, or a no-split class)."""
    max_size: int | float = 0
    names: list[str] = []
    todo = list(entries)
    while todo:
        name, is_module = todo.pop(0)
        children = tree._children[name] if is_module else []
        if not children or tree._class(name) in tree.no_split:
            size = tree.sizes.get(name, 0)
            if size > max_size:
                max_size, names = size, [name]
            elif size == max_size:
                names.append(name)
        else:
            todo = [(c, True) for c in children] + todo
    return max_size, names


def _module_size_with_ties(tied_params: list[str], module_size, sizes, todo: list[Entry]):
    """transformers' get_module_size_with_ties: the module plus the entries holding the weights tied to it."""
    if not tied_params:
        return module_size, []
    names: list[str] = []
    for tied_param in tied_params:
        holder = [n for n, _ in todo if tied_param.startswith(n + ".")][0]
        if holder not in names:
            names.append(holder)
            module_size += sizes.get(holder, 0)
    return module_size, names


def _infer_auto_device_map(tree: ModuleTree, max_memory: dict[Device, Any]) -> dict[str, Device]:
    """transformers' infer_auto_device_map (with its _init_infer_auto_device_map), line for line; the buffer-size
    warning and the log of devices left empty change nothing in the map and are left out."""
    sizes, no_split, npp = tree.sizes, tree.no_split, tree.no_placement_params
    devices: list[Device] = list(max_memory)
    if "disk" not in devices:
        devices.append("disk")
    gpus = [d for d in devices if d not in ("cpu", "disk")]
    main_devices = [gpus[0], "cpu"] if gpus else ["cpu"]  # keep room for an offloaded layer ("mps" never a key here)
    tied = [list(g) for g in tree.tied] or [[]]
    root = tree.modules[0]
    todo: list[Entry] = ([(t, False) for t in root[2]] + [(c, True) for c in tree._children[""]]
                         + [(t, False) for t in root[3]])

    device_map: dict[str, Device] = {}
    current = 0
    used = dict.fromkeys(devices, 0)
    max_layer_size, max_layer_names = _max_layer_size(tree, todo)
    while todo:
        name, is_module = todo.pop(0)
        # The largest remaining layer may have changed now that one is taken.
        max_layer_names = [n for n in max_layer_names if n != name and not n.startswith(name + ".")]
        if not max_layer_names:
            max_layer_size, max_layer_names = _max_layer_size(tree, [e for e in todo if e[1]])
        module_size = sizes.get(name, 0)
        # Tied groups with one member inside this entry and another outside (a substring test, as upstream).
        groups = [g for g in tied if any(name + "." in k + "." for k in g) and not all(name + "." in k + "." for k in g)]
        tied_params = sum(([p for p in g if name + "." not in p + "."] for g in groups), [])

        device = devices[current]
        current_max_size = max_memory[device] if device != "disk" else None
        reserved = 0
        if device in main_devices:
            current_max_size = current_max_size - max_layer_size
            reserved = max_layer_size
        size_with_ties, tied_names = _module_size_with_ties(tied_params, module_size, sizes, todo)

        if current_max_size is None or used[device] + size_with_ties <= current_max_size:
            used[device] += size_with_ties
            device_map[name] = device
            for tied_name in tied_names:
                if tied_name in [n for n, _ in todo]:
                    todo.pop(next(i for i, (n, _) in enumerate(todo) if n == tied_name))
                device_map[tied_name] = device
            continue

        # The module fits without its tied partners: split one of those (the first that can be) and retry.
        if tied_params and used[device] + module_size <= current_max_size:
            split = False
            for tied_name in tied_names:
                children = tree._children.get(tied_name, [])
                if not children or tree._class(tied_name) in no_split:
                    continue
                parts = [(_join(tied_name, t), False) for t in tree._module[tied_name][2]] + [(c, True) for c in children]
                at = [i for i, (n, _) in enumerate(todo) if n == tied_name][0]
                todo = [(name, is_module)] + todo[:at] + parts + todo[at + 1:]
                max_layer_size, max_layer_names = _max_layer_size(tree, [e for e in todo if e[1]])
                split = True
                break
            if split:
                continue

        children = tree._children[name] if is_module else []
        cls = tree._class(name) if is_module else "Parameter"
        if not children or cls in no_split:
            # A no-split block holding a no_placement_params weight that would not fit even an empty next GPU: place
            # its other tensors one by one and leave that weight out of the map.
            next_device = devices[current + 1]
            next_max_size = max_memory[next_device] if next_device != "disk" else float("inf")
            fits_on_next = used[next_device] + size_with_ties <= next_max_size
            if (npp is not None and cls in no_split and any(p in npp for p in tree._tensors_under(name, 2))
                    and next_device in gpus and not fits_on_next):
                todo = ([(_join(name, t), False) for t in tree._tensors_under(name, 2) if t not in npp]
                        + [(_join(name, t), False) for t in tree._tensors_under(name, 3) if t not in npp] + todo)
                continue
        else:
            # Split: the module's own parameters, then its children (its own buffers are not placed on their own).
            todo = [(_join(name, t), False) for t in tree._module[name][2]] + [(c, True) for c in children] + todo
            max_layer_size, max_layer_names = _max_layer_size(tree, [e for e in todo if e[1]])
            continue

        # Nothing left to split: this device is full; the next one takes the module.
        used[device] += reserved
        current += 1
        todo = [(name, is_module)] + todo

    if npp is None:
        _clean_device_map(device_map)
    for group in tied:  # check_tied_parameters_on_same_device: every tied weight must be in the map
        for param in group:
            _param_device(param, device_map)
    return device_map


def _clean_device_map(device_map: dict[str, Device], module_name: str = "") -> dict[str, Device]:
    """accelerate's clean_device_map: a module whose entries all went to one device becomes one entry. Its
    children are visited in the order of a set, as upstream: the order of the map's keys (not its contents)
    follows that set when two sibling modules are both regrouped."""
    prefix = "" if module_name == "" else f"{module_name}."
    values = [v for k, v in device_map.items() if k.startswith(prefix)]
    if len(set(values)) == 1 and len(values) > 1:
        for k in [k for k in device_map if k.startswith(prefix)]:
            del device_map[k]
        device_map[module_name] = values[0]
    children_modules = [k for k in device_map.keys() if k.startswith(prefix) and len(k) > len(module_name)]
    idx = len(module_name.split(".")) + 1 if len(module_name) > 0 else 1
    for child in set(".".join(k.split(".")[:idx]) for k in children_modules):
        _clean_device_map(device_map, module_name=child)
    return device_map


def _param_device(param: str, device_map: dict[str, Device]) -> Device:
    name = param
    while name not in device_map:
        parent = ".".join(name.split(".")[:-1])
        if parent == name:
            raise LabError(f"the device map places no module holding the tied weight {param!r}; "
                           "transformers' infer_auto_device_map fails the same way on this model")
        name = parent
    return device_map[name]


# --- the plan, described (placement.plan and the port both end here) ----------------------------

def _smallest_block(tree: ModuleTree) -> tuple[str, int] | None:
    blocks = tree._blocks()
    if not blocks:
        blocks = [n for n, *_ in tree.modules if not tree._children[n] and tree.sizes.get(n, 0) > 0]
    if not blocks:
        return None
    name = min(blocks, key=lambda n: tree.sizes.get(n, 0))
    return name, tree.sizes.get(name, 0)


def _describe(tree: ModuleTree, strategy: Strategy | None, device_map: dict[str, Device], budgets: dict[Device, int],
              planned: dict[Device, int], engine: str | None = None) -> Plan:
    """The :class:`Plan` of ``device_map`` on ``tree``: bytes per device, layer ranges, the largest and smallest
    layers, notes. ``engine``: the text that says who made the map (the tree's by default).

    The map's entries are put in the model's module order: accelerate's ``clean_device_map`` walks children from a
    set, so the order it returns varies with Python's hash seed from one process to the next (the same entries)."""
    device_map = _in_module_order(tree, device_map)
    blocks = set(tree._blocks())
    sizes, buffers = tree.sizes, tree.buffers
    per_device: dict[Device, int] = {d: 0 for d in budgets}
    weights: dict[Device, int] = {d: 0 for d in budgets}
    for key, device in device_map.items():
        per_device[device] = per_device.get(device, 0) + sizes.get(key, 0)
        weights[device] = weights.get(device, 0) + sizes.get(key, 0) - buffers.get(key, 0)
    gpus = sorted(d for d in per_device if isinstance(d, int))
    order = (*gpus, *[k for k in DEVICE_ORDER if k in per_device])
    per_device = {d: per_device[d] for d in order}
    weights = {d: weights[d] for d in order}
    largest_bytes, largest_names = _max_layer_size(tree, [(c, True) for c in tree._children[""]])
    smallest = _smallest_block(tree)
    notes = []
    for device, budget in budgets.items():
        if device != "disk" and per_device.get(device, 0) == 0 and smallest and budget < smallest[1]:
            notes.append(f"{_device_label(device)}'s budget ({budget:,} bytes) is below one layer "
                         f"({smallest[1]:,} bytes): it stays empty")
    values = set(device_map.values())
    if tree.bnb_quantizer and values != {"cpu"} and values & {"cpu", "disk"}:
        notes.append("from_pretrained refuses this plan: bitsandbytes keeps quantized layers on GPUs; spilling to "
                     "the CPU needs llm_int8_enable_fp32_cpu_offload=True and a device_map written by hand")
    return Plan(
        model=tree.model, strategy=strategy, dtype=tree.dtype, quantization=tree.quantization,
        engine=tree.engine if engine is None else engine, device_map=device_map, budgets=dict(budgets),
        planned_budgets=dict(planned), bytes_per_device=per_device, weight_bytes_per_device=weights,
        ranges=_ranges(device_map, sizes, blocks), total_bytes=sizes.get("", 0),
        largest_layer_bytes=int(largest_bytes), largest_layer=largest_names[0] if largest_names else "",
        smallest_block_bytes=smallest[1] if smallest else 0, no_split_modules=tree.no_split, n_blocks=len(blocks),
        split_blocks=tuple(b for b in sorted(blocks) if any(k.startswith(b + ".") for k in device_map)),
        notes=tuple(notes))


def _in_module_order(tree: ModuleTree, device_map: dict[str, Device]) -> dict[str, Device]:
    rank = tree._rank
    return {k: device_map[k] for k in sorted(device_map, key=lambda k: rank.get(k, len(rank)))}


_NUMBERED = re.compile(r"^(.*)\.(\d+)$")


def _blocks_in(name: str, blocks: set[str]) -> int:
    """No-split blocks inside the device-map entry ``name`` ("" is the whole model)."""
    return len(blocks) if not name else sum(1 for b in blocks if b == name or b.startswith(name + "."))


def _ranges(device_map: dict[str, Device], sizes: dict[str, int], blocks: set[str]) -> tuple[LayerRange, ...]:
    """Group runs of numbered siblings on one device ("model.layers.3", "model.layers.4" ...) into ranges."""
    groups: list[list[str]] = []
    for key, device in device_map.items():
        match = _NUMBERED.match(key)
        if groups:
            last = groups[-1][-1]
            prev = _NUMBERED.match(last)
            if (match and prev and prev.group(1) == match.group(1) and int(match.group(2)) == int(prev.group(2)) + 1
                    and device_map[last] == device):
                groups[-1].append(key)
                continue
        groups.append([key])
    out = []
    for names in groups:
        first, last = names[0], names[-1]
        if len(names) == 1:
            label = first or "(whole model)"
        else:
            head, tail = _NUMBERED.match(first), _NUMBERED.match(last)
            label = f"{head.group(1)}.{head.group(2)}-{tail.group(2)}"
        n_blocks = sum(_blocks_in(n, blocks) for n in names)
        out.append(LayerRange(device_map[first], label, tuple(names), sum(sizes.get(n, 0) for n in names), n_blocks))
    return tuple(out)
