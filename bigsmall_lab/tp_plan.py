"""What tensor parallelism should do to a model, worked out before anything is launched.

A planner (pure: a config in, numbers and dataclasses out). It builds the model on the meta device
(shapes, no data), reads the model's own tensor-parallel plan (the rules transformers applies with
``tp_plan="auto"``) and says, for ``nproc`` processes:

- where each weight goes: **column-wise** ``Shard(0)`` (each rank holds some output features: the rows
  of ``W``; q, k, v, gate, up), **row-wise** ``Shard(1)`` (each rank holds some input features: the
  columns of ``W``; o, down), embeddings split on the vocabulary (``Shard(0)``), everything else
  (the norms) **replicated**;
- how many bytes each rank holds: 1/N of every sharded weight plus all of the replicated ones;
- which collectives one forward pass needs: a row-wise layer ends with partial sums, so its output is
  all-reduced (two per decoder layer: after ``o_proj`` and after ``down_proj``), the vocabulary-split
  embedding is all-reduced once, and the head's split logits are all-gathered once;
- whether ``nproc`` divides the attention heads and the KV heads (each rank computes whole heads).

It lives in the planner layer because it touches no process, device or file: ``bigsmall_lab.parallel``
(the runner) launches torchrun, reads the real DTensor placements and compares them with this plan.
torch is imported only where the meta model is built (``_meta``): the CLI plans presets without torch.

The embedded model (6 layers, 8 heads, 4 KV heads, tied embeddings) on 2 processes in float32:

>>> p = plan("bigsmall-tiny", nproc=2)
>>> p.rank_bytes, p.replicated_bytes                  # 13 norms of 256 float32 values stay whole
((13644800, 13644800), 13312)
>>> p.collectives                                     # 2 per layer + the embedding; the head gathers
{'all_reduce': 13, 'all_gather': 1}
>>> valid_nproc("bigsmall-tiny")
[1, 2, 4]
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ._compat import model_tp_plan
from ._dtypes import bytes_per_element, dtype_name
from ._errors import LabError, whole_number
from .zoo._configs import meta_model, resolve, transformers_config

if TYPE_CHECKING:
    import torch

__all__ = ["Placement", "TPPlan", "WeightPlan", "check_nproc", "heads", "plan", "shard_sizes", "valid_nproc"]

_DTYPES = ("float32", "bfloat16", "float16")


class Placement(str, Enum):
    """Where one weight lives across the ranks, as DTensor names it."""

    COLUMN = "Shard(0)"  # column-wise: rows of W (output features) split across ranks
    ROW = "Shard(1)"  # row-wise: columns of W (input features) split across ranks
    REPLICATED = "Replicate()"  # every rank holds all of it

    @property
    def meaning(self) -> str:
        return {"Shard(0)": "column-wise: each rank holds some output features (rows of W)",
                "Shard(1)": "row-wise: each rank holds some input features (columns of W)",
                "Replicate()": "replicated: every rank holds all of it"}[self.value]


# transformers' style name -> (placement of a 2-D weight, placement of a 1-D bias); see
# transformers.distributed.tensor_parallel (ColwiseParallel, RowwiseParallel, EmbeddingParallel).
_SHARDING = {
    "colwise": (Placement.COLUMN, Placement.COLUMN),
    "colwise_rep": (Placement.COLUMN, Placement.COLUMN),
    "colwise_gather_output": (Placement.COLUMN, Placement.COLUMN),
    "packed_colwise": (Placement.COLUMN, Placement.COLUMN),
    "rowwise": (Placement.ROW, Placement.REPLICATED),  # the bias is added once, after the sum
    "rowwise_rep": (Placement.ROW, Placement.REPLICATED),
    "rowwise_split_input": (Placement.ROW, Placement.REPLICATED),
    "packed_rowwise": (Placement.ROW, Placement.REPLICATED),
    "embedding_rowwise": (Placement.COLUMN, Placement.COLUMN),  # the vocabulary (rows) is split
    "embedding_colwise": (Placement.ROW, Placement.ROW),
}
# What a module of each style does to its output in a forward pass: partial sums are all-reduced,
# split outputs that the next layer needs whole are all-gathered.
_COLLECTIVE = {
    "rowwise": "all_reduce", "rowwise_rep": "all_reduce", "rowwise_split_input": "all_reduce",
    "embedding_rowwise": "all_reduce", "all_reduce": "all_reduce",
    "colwise_gather_output": "all_gather", "colwise_rep": "all_gather", "embedding_colwise": "all_gather",
}


def shard_sizes(size: int, nproc: int) -> tuple[int, ...]:
    """How ``size`` rows (or columns) split over ``nproc`` ranks: torch's chunk rule, ceil(size / nproc)
    each, the last rank taking what is left (so it may hold fewer).

    >>> shard_sizes(768, 2), shard_sizes(9, 2), shard_sizes(49152, 3)
    ((384, 384), (5, 4), (16384, 16384, 16384))
    """
    size = whole_number(size, "size", minimum=0)
    nproc = whole_number(nproc, "nproc", minimum=1)
    if nproc > max(size, 1):
        raise LabError.bad("nproc", nproc, f"use 1 to {max(size, 1):,} ranks for {size:,} rows: more ranks than rows "
                           "leaves ranks with nothing", verb="is more than the rows")
    return _chunk_sizes(size, nproc)


def _chunk_sizes(size: int, nproc: int) -> tuple[int, ...]:
    chunk = -(-size // nproc)
    return tuple(max(0, min(chunk, size - rank * chunk)) for rank in range(nproc))


@dataclass(frozen=True)
class WeightPlan:
    """One parameter: its full shape, the rule that places it and what each rank holds."""

    name: str
    shape: tuple[int, ...]
    style: str | None  # transformers' tensor-parallel style, None when no rule names it
    placement: Placement
    local_shapes: tuple[tuple[int, ...], ...]  # per rank
    local_bytes: tuple[int, ...]  # per rank
    full_bytes: int

    @property
    def module(self) -> str:
        """'self_attn.q_proj' for 'model.layers.0.self_attn.q_proj.weight'."""
        return re.sub(r"^.*?layers\.\d+\.", "", self.name).removesuffix(".weight").removesuffix(".bias")


@dataclass(frozen=True)
class TPPlan:
    """The expected outcome of ``from_pretrained(..., tp_plan="auto")`` on ``nproc`` processes."""

    model: str
    nproc: int
    dtype: str
    n_heads: int
    n_kv_heads: int
    n_layers: int
    hidden_size: int
    rules: dict[str, str]  # the model's plan: module pattern -> style
    weights: tuple[WeightPlan, ...]
    collectives: dict[str, int]  # per forward pass: {'all_reduce': n, 'all_gather': n}
    unknown_styles: tuple[str, ...] = field(default=())  # styles this planner cannot size (counted whole)

    @property
    def rank_bytes(self) -> tuple[int, ...]:
        """Parameter bytes each rank holds (tied weights once)."""
        return tuple(sum(w.local_bytes[r] for w in self.weights) for r in range(self.nproc))

    @property
    def total_bytes(self) -> int:
        """Parameter bytes of the whole model in one process."""
        return sum(w.full_bytes for w in self.weights)

    @property
    def sharded_bytes(self) -> int:
        """Bytes (whole model) of the weights that are split."""
        return sum(w.full_bytes for w in self.weights if w.placement is not Placement.REPLICATED)

    @property
    def replicated_bytes(self) -> int:
        """Bytes every rank holds in full (norms, and anything the plan does not split)."""
        return sum(w.full_bytes for w in self.weights if w.placement is Placement.REPLICATED)

    def placements(self) -> dict[str, str]:
        """``{parameter name: 'Shard(0)' | 'Shard(1)' | 'Replicate()'}``."""
        return {w.name: w.placement.value for w in self.weights}

    def layer(self, index: int = 0) -> tuple[WeightPlan, ...]:
        """The parameters of decoder layer ``index``, in the model's order."""
        index = whole_number(index, "layer", minimum=0)
        if index >= self.n_layers:
            raise LabError.bad("layer", index, f"this model has layers 0 to {self.n_layers - 1}",
                               verb="is out of range")
        return tuple(w for w in self.weights if re.search(rf"(^|\.)layers\.{index}\.", w.name))


def heads(config: Any) -> tuple[int, int]:
    """(attention heads, KV heads) of a transformers config; KV heads = heads without grouped-query attention.

    >>> heads("llama-3.1-8b")
    (32, 8)
    """
    spec = resolve(config)
    if spec.kind != "transformers":
        transformers_config(spec)  # refuses a diffusers config in its own sentence
    layout = spec.attention  # derived once, in the zoo (ModelSpec.attention)
    if layout is None or not layout.heads:
        raise LabError.bad("model", _label(config), "tensor parallelism splits attention heads; "
                           "use a decoder with num_attention_heads in its config", verb="has no attention heads")
    return layout.heads, layout.kv_heads


def valid_nproc(config: Any, up_to: int = 16) -> list[int]:
    """The process counts (<= ``up_to``) that split both the attention heads and the KV heads evenly.

    >>> valid_nproc("llama-3.1-8b")
    [1, 2, 4, 8]
    """
    n_heads, n_kv = heads(config)
    up_to = min(whole_number(up_to, "up_to", minimum=1), n_kv)  # a divisor of the KV heads is at most their count
    return [n for n in range(1, up_to + 1) if n_heads % n == 0 and n_kv % n == 0]


def check_nproc(config: Any, nproc: int, name: str | None = None) -> int:
    """``nproc`` as an int when each rank gets whole heads; one sentence otherwise.

    >>> check_nproc({"model_type": "llama", "num_attention_heads": 9, "num_key_value_heads": 3,
    ...              "hidden_size": 576, "vocab_size": 10, "num_hidden_layers": 1}, 2)
    Traceback (most recent call last):
    ...
    bigsmall_lab._errors.LabError: nproc 2 does not divide the model's 9 attention heads and 3 KV heads; use one of: 1, 3
    """
    nproc = whole_number(nproc, "nproc", minimum=1)
    n_heads, n_kv = heads(config)
    if n_heads % nproc or n_kv % nproc:
        allowed = ", ".join(map(str, valid_nproc(config, up_to=max(16, nproc))))
        raise LabError.bad("nproc", nproc, f"use one of: {allowed}",
                           verb=(f"does not divide {name or 'the model'}'s {n_heads} attention heads "
                                 f"and {n_kv} KV heads"))
    return nproc


def plan(config: Any, nproc: int = 2, dtype: str | torch.dtype = "float32", name: str | None = None) -> TPPlan:
    """What each of ``nproc`` ranks holds, and the collectives of one forward pass, for ``config``'s model.

    ``config``: a preset or lab model name, a config dict, a folder or config.json path (``name``
    labels it in messages and results; default: the name or path given). Raises
    :class:`LabError` when the model has no tensor-parallel plan or ``nproc`` does not divide its heads.
    """
    dtype = dtype_name(dtype, allowed=_DTYPES)
    label = name or _label(config)
    spec = resolve(config)  # once: the heads below read its layout
    cfg = spec.config
    rules, params, modules = _meta(_key(cfg))
    if not rules:
        raise LabError.bad("model", label, "transformers has no tensor-parallel plan for its architecture "
                           f"({cfg.get('model_type')}); split it with device_map instead (lesson 07)",
                           verb="cannot be split by tensor parallelism")
    nproc = check_nproc(spec, nproc, name=label)
    nbytes = bytes_per_element(dtype)
    weights, unknown = [], set()
    for name, shape in params:
        style = _rule(name, rules, is_param=True)
        if style is not None and style not in _SHARDING and style != "replicate":
            unknown.add(style)
        weight_p, bias_p = _SHARDING.get(style, (Placement.REPLICATED, Placement.REPLICATED))
        placement = weight_p if len(shape) >= 2 else bias_p
        if nproc == 1:
            placement = Placement.REPLICATED
        local = _local_shapes(shape, placement, nproc)
        weights.append(WeightPlan(name, shape, style, placement, local,
                                  tuple(int(math.prod(s) * nbytes) for s in local), int(math.prod(shape) * nbytes)))
    collectives = {"all_reduce": 0, "all_gather": 0}
    if nproc > 1:
        for name in modules:
            kind = _COLLECTIVE.get(_rule(name, rules, is_param=False))
            if kind:
                collectives[kind] += 1
    n_heads, n_kv = heads(spec)
    text = transformers_config(cfg).get_text_config()
    return TPPlan(label, nproc, dtype, n_heads, n_kv, int(text.num_hidden_layers), int(text.hidden_size),
                  dict(rules), tuple(weights), collectives, tuple(sorted(unknown)))


def _label(config: Any) -> str:
    if isinstance(config, str):
        return config
    if isinstance(config, dict):
        return str(config.get("_name_or_path") or config.get("model_type") or "the model")
    return str(getattr(config, "name", None) or config)


def _local_shapes(shape: tuple[int, ...], placement: Placement, nproc: int) -> tuple[tuple[int, ...], ...]:
    if placement is Placement.REPLICATED:
        return (tuple(shape),) * nproc
    # Shard(0) splits the first axis; Shard(1) the last axis of a matrix (a 1-D tensor only has one).
    dim = 0 if placement is Placement.COLUMN or len(shape) == 1 else len(shape) - 1
    return tuple(tuple(n if i == dim else s for i, s in enumerate(shape)) for n in _chunk_sizes(shape[dim], nproc))


def _generic(name: str) -> str:
    # 'model.layers.3.mlp.up_proj' -> 'model.layers.*.mlp.up_proj', as transformers matches its rules.
    return re.sub(r"\.\d+(\.|$)", lambda m: ".*" + m.group(1), name)


def _rule(name: str, rules: dict[str, str], is_param: bool) -> str | None:
    generic = _generic(name)
    if generic in rules:
        return rules[generic]
    if is_param and "." in generic:  # a weight or bias follows its module's rule
        return rules.get(generic.rsplit(".", 1)[0])
    return None


def _key(cfg: dict) -> str:
    import json

    return json.dumps(cfg, sort_keys=True, default=str)


@lru_cache(maxsize=16)
def _meta(key: str) -> tuple[dict[str, str], tuple[tuple[str, tuple[int, ...]], ...], tuple[str, ...]]:
    """(the model's tp plan, (parameter name, shape) with tied tensors once, module names) from the meta device."""
    import json

    import torch

    model = meta_model(json.loads(key), torch.bfloat16)
    params = tuple((name, tuple(p.shape)) for name, p in model.named_parameters())
    modules = tuple(name for name, _ in model.named_modules() if name)
    return model_tp_plan(model), params, modules
