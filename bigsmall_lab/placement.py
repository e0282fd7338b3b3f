"""Plan where every layer of a model goes (GPUs, CPU, disk) exactly as ``from_pretrained`` would, with no GPU.

``from_pretrained(path, device_map="auto", max_memory={0: "10GiB", 1: "10GiB", "cpu": "100GiB"})``
builds the model on the meta device (shapes and dtypes, no data) and hands it to two functions
before it reads a single weight. :func:`plan` makes the same calls on the same kind of meta model:

=====================  ======================================================================
model                  the calls (what ``from_pretrained`` makes for ``device_map=<strategy>``)
=====================  ======================================================================
transformers           ``transformers.integrations.accelerate``: ``get_balanced_memory(model,
                       max_memory, no_split_module_classes=model._no_split_modules,
                       low_zero=strategy == "balanced_low_0")`` (``get_max_memory`` for
                       "sequential"), the quantizer's ``adjust_max_memory``, then
                       ``infer_auto_device_map``: transformers 5's own copies of accelerate's
                       functions (its ``_get_device_map``)
diffusers              ``diffusers.models.model_loading_utils._determine_device_map``, which
                       calls ``accelerate.utils.get_balanced_memory`` / ``infer_auto_device_map``
any other nn.Module    accelerate's ``get_balanced_memory`` + ``infer_auto_device_map``, as
                       ``accelerate.load_checkpoint_and_dispatch(device_map="auto")`` does
=====================  ======================================================================

So "balanced" here is transformers' balanced for transformers models (the map a learner gets from
``from_pretrained``); accelerate's own ``get_balanced_memory`` splits a little differently (it
is what diffusers and ``load_checkpoint_and_dispatch`` use). In transformers, "auto" and
"balanced" are the same thing. GPU indices in ``max_memory`` need not exist: a fake GPU is just a
budget, so a CPU-only laptop plans Llama 3.1 70B on eight 24 GB cards.

The rules the planner follows (all from accelerate's ``infer_auto_device_map``):

- modules are placed in order, fastest device first: GPU 0, 1, ..., then "cpu", then "disk";
- a block listed in ``model._no_split_modules`` (a whole decoder layer: its residual connection
  needs all of it on one device) is never split across devices;
- while anything may still spill over, GPU 0 and the CPU keep room for the largest layer, so that
  an offloaded layer can be brought in to run;
- "balanced" lowers every GPU's budget but the last to about total / number of GPUs (plus a
  margin of 1.25 x the largest layer); "balanced_low_0" also keeps GPU 0 nearly empty, for
  ``generate``'s outputs; "sequential" fills GPU 0 to its budget, then GPU 1, ...

Llama 3.1 8B in bfloat16 on two fake 10 GiB GPUs:

>>> p = plan("llama-3.1-8b", "sequential", {0: "10GiB", 1: "10GiB", "cpu": "100GiB"})
>>> p.layers_on(0), p.layers_on(1), p.bytes_on("cpu")   # GPU 0 first, to its budget; nothing spills
(19, 13, 0)
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ._compat import quiet_libraries
from ._dtypes import dtype_name, torch_dtype
from ._errors import LabError, closest, shown, whole_number
from ._units import parse_size
from .bnb_formats import Quantization, bnb_config
from .zoo._configs import PRESETS, config_dict, meta_model

__all__ = ["DEVICE_ORDER", "Device", "LayerRange", "Plan", "Strategy", "fewest_gpus", "from_device_map", "plan"]

Device = int | str  # a GPU index, "cpu" or "disk"
DEVICE_ORDER = ("cpu", "disk")  # after the GPUs, in the order the planner fills them
_PLAN_DTYPES = ("float32", "float16", "bfloat16")


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


# --- the meta model, cached per config + dtype + quantization (the widget redraws from here) -----

def _quantizer(quantization: Quantization):
    from transformers.quantizers import AutoHfQuantizer

    # the config from_pretrained would get (compute dtype left at transformers' default: sizes do not depend on it)
    return AutoHfQuantizer.from_config(bnb_config(quantization, compute_dtype=None), pre_quantized=False)


@lru_cache(maxsize=16)
def _cached_meta(config_json: str, dtype: str, quantization: Quantization | None):
    """(meta model, quantizer or None); the same objects for the same inputs (planning never mutates them)."""
    cfg = json.loads(config_json)
    with quiet_libraries():
        model = meta_model(cfg, dtype)
        quantizer = None
        if quantization is not None:
            if not _is_transformers(model):
                raise LabError.bad("quantization", quantization.value, "plan bitsandbytes for transformers models; "
                                   "use quantization=None here", verb="is not planned for a diffusers model")
            quantizer = _quantizer(quantization)
            # Swaps nn.Linear for bitsandbytes' Linear8bitLt / Linear4bit on meta, as from_pretrained does.
            quantizer.preprocess_model(model=model, dtype=torch_dtype(dtype), device_map="auto",
                                       checkpoint_files=None, use_kernels=False)
    return model, quantizer


def _model_and_name(config_or_model: Any, dtype: str, quantization: Quantization | None):
    if isinstance(config_or_model, torch.nn.Module):
        if quantization is not None:
            raise LabError.bad("quantization", quantization.value, "pass the config (a preset name, dict or path) "
                               "so the planner builds the quantized model itself",
                               verb="needs a config, not a built model")
        params = list(config_or_model.parameters())
        own = dtype_name(params[0].dtype) if params else dtype
        return config_or_model, None, type(config_or_model).__name__, own
    if isinstance(config_or_model, str) and config_or_model.strip().lower() in PRESETS:
        name = config_or_model.strip().lower()
    elif isinstance(config_or_model, (str, os.PathLike)):
        name = Path(config_or_model).name or str(config_or_model)  # a checkpoint folder: its name
    else:
        name = "config"
    try:
        cfg = config_dict(config_or_model)
    except LabError:
        raise
    except (ValueError, TypeError) as err:
        raise LabError(str(err)) from None
    model, quantizer = _cached_meta(json.dumps(cfg, sort_keys=True, default=str), dtype, quantization)
    return model, quantizer, name, dtype


def _is_transformers(model: torch.nn.Module) -> bool:
    from transformers import PreTrainedModel

    return isinstance(model, PreTrainedModel)


def _is_diffusers(model: torch.nn.Module) -> bool:
    try:
        from diffusers import ModelMixin
    except ImportError:
        return False
    return isinstance(model, ModelMixin)


# --- the plan ------------------------------------------------------------------------------------

def plan(config_or_model: Any, strategy: str | Strategy = "auto", max_memory: Mapping[Any, Any] | None = None,
         dtype: str | torch.dtype = "bfloat16", quantization: str | Quantization | None = None) -> Plan:
    """Where ``from_pretrained(..., device_map=strategy, max_memory=max_memory)`` puts each module.

    ``config_or_model``: a preset name (``bsl.presets()``), a config dict / path, or a model (built
    on the meta device or not: only shapes and dtypes are read). ``max_memory``: device -> size,
    devices GPU indices (which need not exist), "cpu" and "disk"; sizes like "10GB", "10GiB" or
    bytes. ``dtype``: the dtype the weights are loaded in (a built model keeps its own).
    ``quantization``: None, "int8", "nf4", "fp4" or "nf4-double" (bitsandbytes, transformers models).

    Nothing is allocated and no device is touched.
    """
    strategy = Strategy.parse(strategy)
    if max_memory is None:
        raise LabError.bad("max_memory", None, "give a dict of device -> size, e.g. {0: '10GiB', 'cpu': '30GiB'}",
                           verb="is missing")
    budgets = parse_budgets(max_memory)
    dtype = dtype_name(dtype, allowed=_PLAN_DTYPES)
    try:
        quant = Quantization.parse(quantization)
    except ValueError as err:
        raise LabError(str(err)) from None
    model, quantizer, name, dtype = _model_and_name(config_or_model, dtype, quant)
    sizes, buffers, no_split, engine = _sizes(model, quantizer, dtype)
    smallest = _smallest_block(model, sizes, no_split)
    usable = {d: b for d, b in budgets.items() if d != "disk"}
    if smallest and usable and all(b < smallest[1] for b in usable.values()):
        raise LabError(f"max_memory {shown(dict(max_memory))} is too small for even one layer: the smallest "
                       f"({smallest[0]}) takes {smallest[1]:,} bytes; give a GPU or the CPU at least that")
    with quiet_libraries():
        device_map, planned = _infer(model, quantizer, strategy, budgets, dtype, no_split)
    return _describe(model, name, strategy, dtype, quant, engine, dict(device_map), budgets, planned, sizes, buffers,
                     no_split, quantizer)


def from_device_map(config_or_model: Any, device_map: Mapping[str, Any], dtype: str | torch.dtype = "bfloat16",
                    quantization: str | Quantization | None = None,
                    max_memory: Mapping[Any, Any] | None = None) -> Plan:
    """A :class:`Plan` for a device map given by hand or read from a loaded model (``model.hf_device_map``).

    Bytes per device and layer ranges are counted as :func:`plan` counts them, so a real
    ``hf_device_map`` draws with the same chart as a prediction.
    """
    dtype = dtype_name(dtype, allowed=_PLAN_DTYPES)
    quant = Quantization.parse(quantization)
    if not isinstance(device_map, Mapping) or not device_map:
        raise LabError.bad("device_map", device_map, "give a dict of module name -> device, e.g. model.hf_device_map",
                           verb="is not a device map")
    model, quantizer, name, dtype = _model_and_name(config_or_model, dtype, quant)
    sizes, buffers, no_split, _ = _sizes(model, quantizer, dtype)
    dm = {str(k): _device_key(v) if not isinstance(v, torch.device) else _torch_device_key(v)
          for k, v in device_map.items()}
    known = {n for n, _ in model.named_modules()} | {n for n, _ in model.named_parameters(remove_duplicate=False)} \
        | {n for n, _ in model.named_buffers()}
    missing = [k for k in dm if k not in known]
    if missing:
        raise LabError.bad("device_map", missing[0], "use module names of this model (model.hf_device_map)",
                           verb="names no module of the model")
    budgets = parse_budgets(max_memory) if max_memory else {}
    return _describe(model, name, None, dtype, quant, "a device map given by hand or read from a loaded model", dm,
                     budgets, dict(budgets), sizes, buffers, no_split, quantizer)


def _torch_device_key(device: torch.device) -> Device:
    return device.index or 0 if device.type == "cuda" else _device_key(device.type)


def _sizes(model: torch.nn.Module, quantizer,
           dtype: str) -> tuple[dict[str, int], dict[str, int], tuple[str, ...], str]:
    """(bytes of every module and parameter, bytes of their buffers, no-split classes, engine), counted as the
    library that plans this model counts them."""
    if _is_transformers(model):
        from transformers.integrations.accelerate import compute_module_sizes

        sizes, _ = compute_module_sizes(model, quantizer, only_modules=False)
        buffers, _ = compute_module_sizes(model, quantizer, buffers_only=True)
        return (dict(sizes), dict(buffers), tuple(model._no_split_modules or ()),
                "planned as transformers' from_pretrained does")
    from accelerate.utils import compute_module_sizes

    if _is_diffusers(model):
        no_split = tuple(model._get_no_split_modules("auto"))
        return (dict(compute_module_sizes(model, dtype=torch_dtype(dtype))),
                dict(compute_module_sizes(model, dtype=torch_dtype(dtype), buffers_only=True)), no_split,
                "planned as diffusers' from_pretrained does (accelerate's functions)")
    return (dict(compute_module_sizes(model)), dict(compute_module_sizes(model, buffers_only=True)),
            tuple(getattr(model, "_no_split_modules", None) or ()),
            "planned as accelerate's load_checkpoint_and_dispatch does")


def _infer(model, quantizer, strategy: Strategy, budgets: dict[Device, int], dtype: str, no_split: tuple[str, ...]):
    """(device map, budgets the placement used): the calls of from_pretrained for this kind of model."""
    max_memory = dict(budgets)  # accelerate converts and may rewrite the dict it gets: always a copy
    low_zero = strategy is Strategy.BALANCED_LOW_0
    if _is_transformers(model):
        from transformers.integrations.accelerate import get_balanced_memory, get_max_memory, infer_auto_device_map

        # transformers' _get_device_map, step by step, so that the budgets it used can be shown.
        if strategy is Strategy.SEQUENTIAL:
            planned = get_max_memory(max_memory)
        else:
            planned = get_balanced_memory(model, max_memory=max_memory, no_split_module_classes=list(no_split),
                                          hf_quantizer=quantizer, low_zero=low_zero)
        if quantizer is not None:
            planned = quantizer.adjust_max_memory(planned)
        device_map = infer_auto_device_map(model, max_memory=dict(planned), no_split_module_classes=list(no_split),
                                           hf_quantizer=quantizer,
                                           no_placement_params=getattr(model, "_no_placement_params", None))
        return device_map, {d: int(v) for d, v in planned.items()}
    from accelerate.utils import get_balanced_memory, get_max_memory, infer_auto_device_map

    # diffusers' _determine_device_map and accelerate's load_checkpoint_and_dispatch make these calls.
    kwargs = dict(no_split_module_classes=list(no_split))
    if _is_diffusers(model):
        kwargs["dtype"] = torch_dtype(dtype)
    if strategy is Strategy.SEQUENTIAL:
        planned = get_max_memory(max_memory)
    else:
        planned = get_balanced_memory(model, max_memory=max_memory, low_zero=low_zero, **kwargs)
    device_map = infer_auto_device_map(model, max_memory=dict(planned), **kwargs)
    return device_map, {d: int(v) for d, v in planned.items()}


def _blocks(model: torch.nn.Module, no_split: tuple[str, ...]) -> list[str]:
    return [n for n, m in model.named_modules() if type(m).__name__ in no_split]


def _smallest_block(model, sizes: dict[str, int], no_split: tuple[str, ...]) -> tuple[str, int] | None:
    blocks = _blocks(model, no_split)
    if not blocks:
        leaves = [n for n, m in model.named_modules() if not list(m.children()) and sizes.get(n, 0) > 0]
        blocks = leaves
    if not blocks:
        return None
    name = min(blocks, key=lambda n: sizes.get(n, 0))
    return name, sizes.get(name, 0)


def _describe(model, name: str, strategy: Strategy | None, dtype: str, quant: Quantization | None, engine: str,
              device_map: dict[str, Device], budgets: dict[Device, int], planned: dict[Device, int],
              sizes: dict[str, int], buffers: dict[str, int], no_split: tuple[str, ...], quantizer) -> Plan:
    from accelerate.utils.modeling import get_max_layer_size

    blocks = set(_blocks(model, no_split))
    per_device: dict[Device, int] = {d: 0 for d in budgets}
    weights: dict[Device, int] = {d: 0 for d in budgets}
    for key, device in device_map.items():
        per_device[device] = per_device.get(device, 0) + sizes.get(key, 0)
        weights[device] = weights.get(device, 0) + sizes.get(key, 0) - buffers.get(key, 0)
    gpus = sorted(d for d in per_device if isinstance(d, int))
    order = (*gpus, *[k for k in DEVICE_ORDER if k in per_device])
    per_device = {d: per_device[d] for d in order}
    weights = {d: weights[d] for d in order}
    top = list(model.named_children()) + list(model.named_parameters(recurse=False))
    largest_bytes, largest_names = get_max_layer_size([(n, m) for n, m in top if isinstance(m, torch.nn.Module)],
                                                      defaultdict(int, sizes), list(no_split))
    smallest = _smallest_block(model, sizes, no_split)
    notes = []
    for device, budget in budgets.items():
        if device != "disk" and per_device.get(device, 0) == 0 and smallest and budget < smallest[1]:
            notes.append(f"{_device_label(device)}'s budget ({budget:,} bytes) is below one layer "
                         f"({smallest[1]:,} bytes): it stays empty")
    values = set(device_map.values())
    if quantizer is not None and values != {"cpu"} and values & {"cpu", "disk"}:
        notes.append("from_pretrained refuses this plan: bitsandbytes keeps quantized layers on GPUs; spilling to "
                     "the CPU needs llm_int8_enable_fp32_cpu_offload=True and a device_map written by hand")
    return Plan(
        model=name, strategy=strategy, dtype=dtype, quantization=quant.value if quant else None, engine=engine,
        device_map=device_map, budgets=dict(budgets), planned_budgets=dict(planned), bytes_per_device=per_device,
        weight_bytes_per_device=weights,
        ranges=_ranges(device_map, sizes, blocks), total_bytes=sizes.get("", 0),
        largest_layer_bytes=int(largest_bytes), largest_layer=largest_names[0] if largest_names else "",
        smallest_block_bytes=smallest[1] if smallest else 0, no_split_modules=no_split, n_blocks=len(blocks),
        split_blocks=tuple(b for b in sorted(blocks) if any(k.startswith(b + ".") for k in device_map)),
        notes=tuple(notes))


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


# --- what one machine cannot hold ----------------------------------------------------------------

def fewest_gpus(config_or_model: Any, gpu_memory: str | int, dtype: str | torch.dtype = "bfloat16",
                quantization: str | Quantization | None = None, strategy: str | Strategy = "auto",
                max_gpus: int = 1024) -> Plan:
    """The plan on the fewest GPUs of ``gpu_memory`` each that holds the whole model (nothing on CPU or disk).

    Starts at ceil(total bytes / gpu_memory) and adds GPUs until the planner spills nothing. More
    than the division says: whole layers only, and GPU 0 keeps room for the largest layer while
    anything may spill. ``len(plan.gpus)`` is the answer; past 8 it is more than one machine holds.

    >>> len(fewest_gpus("llama-3.1-405b", "80GB").gpus)   # 811.7 GB / 80 GB = 10.15, and whole layers
    11
    """
    gpu_bytes = parse_budgets({0: gpu_memory})[0]
    max_gpus = whole_number(max_gpus, "max_gpus")
    # Sizes first, on one GPU as big as anything: the model's total and its largest layer.
    probe = plan(config_or_model, strategy, {0: 2**62}, dtype, quantization)
    if probe.largest_layer_bytes > gpu_bytes:
        raise LabError(f"gpu_memory {shown(gpu_memory)} is smaller than the largest layer ({probe.largest_layer}, "
                       f"{probe.largest_layer_bytes:,} bytes): no number of such GPUs holds this model whole")
    n = max(1, math.ceil(probe.total_bytes / gpu_bytes))
    while n <= max_gpus:
        candidate = plan(config_or_model, strategy, dict.fromkeys(range(n), gpu_bytes), dtype, quantization)
        if candidate.fits_on_gpus:
            return candidate
        n += 1
    raise LabError(f"max_gpus {max_gpus} GPUs of {shown(gpu_memory)} do not hold this model whole; "
                   "raise max_gpus or gpu_memory")
