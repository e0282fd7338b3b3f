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

:func:`tree` hands what those calls read of a transformers model (its modules, transformers' sizes, no-split
classes, tied weights) over as data; :func:`bigsmall_lab.placement_rule.plan` replays the calls on it without
torch (``bigsmall-lab fit``) and makes the same :class:`Plan`.

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
from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ._compat import quiet_libraries
from ._dtypes import dtype_name, torch_dtype
from ._errors import LabError, shown, whole_number
from .bnb_formats import Quantization, bnb_config
# The plan's types and its description live in placement_rule (no torch there: bigsmall-lab fit plans from data);
# every name is re-exported so `from bigsmall_lab.placement import Plan` keeps working.
from .placement_rule import (_NUMBERED, DEVICE_ORDER, TRANSFORMERS_ENGINE, Device, LayerRange,  # noqa: F401
                             ModuleTree, Plan, Strategy, _blocks_in, _check_low_zero, _check_room, _describe,
                             _device_key, _device_label, _ranges, parse_budgets)
from .zoo._configs import PRESETS, config_dict, meta_model

__all__ = ["DEVICE_ORDER", "Device", "LayerRange", "Plan", "Strategy", "fewest_gpus", "from_device_map", "plan",
           "tree"]

_PLAN_DTYPES = ("float32", "float16", "bfloat16")


# --- the meta model, cached per config + dtype + quantization (the widget redraws from here) -----

def _quantizer(quantization: Quantization):
    from transformers.quantizers import AutoHfQuantizer

    # the config from_pretrained would get (compute dtype left at transformers' default: sizes do not depend on it)
    return AutoHfQuantizer.from_config(bnb_config(quantization, compute_dtype=None), pre_quantized=False)


@lru_cache(maxsize=16)
def _cached_meta(config_json: str, dtype: str, quantization: Quantization | None):
    """(meta model, quantizer or None, its ModuleTree); the same objects for the same inputs (planning never
    mutates them)."""
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
    return model, quantizer, _tree(model, quantizer, "config", dtype, quantization)


def _model_and_tree(config_or_model: Any, dtype: str, quantization: Quantization | None):
    """(model, quantizer or None, ModuleTree named as the plan shows it: the preset, the folder or "config")."""
    if isinstance(config_or_model, torch.nn.Module):
        if quantization is not None:
            raise LabError.bad("quantization", quantization.value, "pass the config (a preset name, dict or path) "
                               "so the planner builds the quantized model itself",
                               verb="needs a config, not a built model")
        params = list(config_or_model.parameters())
        own = dtype_name(params[0].dtype) if params else dtype
        # A built model may change between calls: its tree is read each time.
        return config_or_model, None, _tree(config_or_model, None, type(config_or_model).__name__, own, None)
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
    model, quantizer, module_tree = _cached_meta(json.dumps(cfg, sort_keys=True, default=str), dtype, quantization)
    return model, quantizer, module_tree if module_tree.model == name else replace(module_tree, model=name)


def _tree(model: torch.nn.Module, quantizer, name: str, dtype: str, quantization: Quantization | None) -> ModuleTree:
    """What the planner reads of ``model``, as data: modules as ``named_modules()`` lists them (a submodule
    registered twice is listed once; no preset has one), transformers' sizes, the tied groups."""
    sizes, buffers, no_split, engine = _sizes(model, quantizer, dtype)
    tied_keys = dict(getattr(model, "all_tied_weights_keys", None) or {})
    # The groups as transformers' _init_infer_auto_device_map builds them (one per target), sorted: it builds them
    # from a set, in an order that varies with Python's hash seed
    tied = tuple(sorted(tuple(sorted([k for k, v in tied_keys.items() if v == target] + [target]))
                        for target in set(tied_keys.values())))
    no_placement = getattr(model, "_no_placement_params", None)
    modules = tuple((n, type(m).__name__, tuple(p for p, _ in m.named_parameters(recurse=False)),
                     tuple(b for b, _ in m.named_buffers(recurse=False))) for n, m in model.named_modules())
    return ModuleTree(name, engine, dtype, quantization.value if quantization else None, modules, sizes, buffers,
                      no_split, tied, None if no_placement is None else tuple(no_placement))


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
    quant = _quantization(quantization)
    model, quantizer, module_tree = _model_and_tree(config_or_model, dtype, quant)
    _check_room(module_tree, budgets, max_memory)
    _check_low_zero(module_tree, strategy, budgets, max_memory)
    with quiet_libraries():
        device_map, planned = _infer(model, quantizer, strategy, budgets, module_tree.dtype, module_tree.no_split)
    return _describe(module_tree, strategy, dict(device_map), budgets, planned)


def tree(config_or_model: Any, dtype: str | torch.dtype = "bfloat16",
         quantization: str | Quantization | None = None) -> ModuleTree:
    """What :func:`plan` reads of the model, as data: ``placement_rule.plan(tree(...), strategy, max_memory)``
    makes the same :class:`Plan` as ``plan(config_or_model, strategy, max_memory, dtype, quantization)``,
    without torch; ``tree(...).as_dict()`` is JSON.

    >>> t = tree("llama-3.2-1b", "bfloat16")
    >>> t.no_split, t.tied, t.sizes[""]   # 1.24 B parameters x 2 bytes, the tied head counted once
    (('LlamaDecoderLayer',), (('lm_head.weight', 'model.embed_tokens.weight'),), 2471629056)
    """
    dtype = dtype_name(dtype, allowed=_PLAN_DTYPES)
    return _model_and_tree(config_or_model, dtype, _quantization(quantization))[2]


def _quantization(quantization: str | Quantization | None) -> Quantization | None:
    try:
        return Quantization.parse(quantization)
    except ValueError as err:
        raise LabError(str(err)) from None


def from_device_map(config_or_model: Any, device_map: Mapping[str, Any], dtype: str | torch.dtype = "bfloat16",
                    quantization: str | Quantization | None = None,
                    max_memory: Mapping[Any, Any] | None = None) -> Plan:
    """A :class:`Plan` for a device map given by hand or read from a loaded model (``model.hf_device_map``).

    Bytes per device and layer ranges are counted as :func:`plan` counts them, so a real
    ``hf_device_map`` draws with the same chart as a prediction.
    """
    dtype = dtype_name(dtype, allowed=_PLAN_DTYPES)
    quant = _quantization(quantization)
    if not isinstance(device_map, Mapping) or not device_map:
        raise LabError.bad("device_map", device_map, "give a dict of module name -> device, e.g. model.hf_device_map",
                           verb="is not a device map")
    model, _, module_tree = _model_and_tree(config_or_model, dtype, quant)
    dm = {str(k): _device_key(v) if not isinstance(v, torch.device) else _torch_device_key(v)
          for k, v in device_map.items()}
    known = {n for n, _ in model.named_modules()} | {n for n, _ in model.named_parameters(remove_duplicate=False)} \
        | {n for n, _ in model.named_buffers()}
    missing = [k for k in dm if k not in known]
    if missing:
        raise LabError.bad("device_map", missing[0], "use module names of this model (model.hf_device_map)",
                           verb="names no module of the model")
    budgets = parse_budgets(max_memory) if max_memory else {}
    return _describe(module_tree, None, dm, budgets, dict(budgets),
                     engine="a device map given by hand or read from a loaded model")


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
        # sorted: a set in some models (CLIP's three classes), so its order varies from process to process
        return dict(sizes), dict(buffers), tuple(sorted(model._no_split_modules or ())), TRANSFORMERS_ENGINE
    from accelerate.utils import compute_module_sizes

    if _is_diffusers(model):
        no_split = tuple(sorted(model._get_no_split_modules("auto")))
        return (dict(compute_module_sizes(model, dtype=torch_dtype(dtype))),
                dict(compute_module_sizes(model, dtype=torch_dtype(dtype), buffers_only=True)), no_split,
                "planned as diffusers' from_pretrained does (accelerate's functions)")
    return (dict(compute_module_sizes(model)), dict(compute_module_sizes(model, buffers_only=True)),
            tuple(sorted(getattr(model, "_no_split_modules", None) or ())),
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
