"""A preset's facts: the numbers the planners read of it, computed by those planners, shipped as data.

``bigsmall-lab fit llama-3.1-70b --gpu T4`` should answer at once, and building Llama 3.1 70B on the meta
device (torch, transformers, a few seconds) only to read its sizes again is what made it slow. Everything
the advisor reads of a preset that depends neither on the machine nor on the context length is computed
here once, by the same functions the lab runs on a meta model, and shipped in
``bigsmall_lab/data/preset_facts.json.gz`` (``tools/presets_data.py`` writes it):

==========================  ==================================================================
fact                        computed by
==========================  ==================================================================
parameters, class, head     the meta model (``count_parameters``, ``can_generate``,
                            ``get_output_embeddings``)
text config sizes           ``spec.text_config`` (:data:`TEXT_FIELDS`, transformers' defaults applied)
module bytes                ``estimates.module_bytes(dtype, quantization)`` for the advisor's
                            dtypes x weight formats
module trees                ``placement.tree(...)``: what ``placement_rule.plan`` places
                            (transformers' own sizes, no-split classes, tied weights)
tensor-parallel ranks       ``tp_plan.plan(nproc, dtype).rank_bytes`` for nproc <= :data:`MAX_TP`
diffusers offloading        ``offload_plan.plan_offload`` / ``pinned_memory_plan`` on FLUX.1-dev
==========================  ==================================================================

What depends on the context (KV cache, activations) stays a formula over the text config sizes.

The facts hold for one config and one set of library versions: each preset's record keeps its
config's sha256 and the file the versions of :data:`LIBRARIES` it was computed with. :func:`preset_facts`
returns None when either differs from what is installed (a newer transformers the morning of a
workshop), and the lab builds the meta model as before; ``bigsmall-lab fit`` then computes the facts once
into the lab's cache folder, atomically, for the next call (``zoo._facts_cache``, a runner: it writes files). Tests recompute every
record from the meta models (tests/test_facts.py) and compare the advisor's answers from facts and from
meta models, option by option.

This module imports no torch: :func:`compute` (which builds the meta models) imports the planners when called.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from collections.abc import Callable

__all__ = ["FACTS_FILE", "LIBRARIES", "MAX_TP", "TEXT_FIELDS", "Facts", "compute", "installed_versions",
           "file_bytes", "file_data", "preset_facts", "read_file", "register_source"]

FACTS_FILE = Path(__file__).resolve().parent.parent / "data" / "preset_facts.json.gz"
_CONFIGS = Path(__file__).resolve().parent / "configs"
LIBRARIES = ("transformers", "accelerate", "diffusers")  # whose code decides the sizes and the plans
# The text config's sizes the planners read (estimates, kv_plan, tp_plan, AttentionLayout), transformers'
# defaults applied; a field the config class does not have is stored as None, as getattr(text, f, None) reads it.
TEXT_FIELDS = ("hidden_size", "intermediate_size", "vocab_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "max_position_embeddings", "sliding_window", "layer_types")
DTYPES = ("bfloat16", "float16")  # the advisor's weights dtypes
WEIGHTS = (None, "int8", "nf4", "nf4-double")  # the advisor's weight formats
MAX_TP = 8  # tensor-parallel degrees stored: one machine's GPUs
_FILE_FORMAT = 1


def installed_versions() -> dict[str, str | None]:
    """The installed version of each of :data:`LIBRARIES` (None when not installed), read without importing them."""
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def config_sha256(name: str) -> str:
    return hashlib.sha256((_CONFIGS / f"{name}.json").read_bytes()).hexdigest()


def _quant_key(quantization: str | None) -> str:
    return quantization or "none"


@dataclass(frozen=True, eq=False)
class Facts:
    """One preset's facts (see the module's table); read them through the spec (``resolve(name).facts``)."""

    name: str
    kind: str  # "transformers" or "diffusers"
    class_name: str
    parameters: int
    generates: bool
    has_output_embeddings: bool
    text: dict | None  # TEXT_FIELDS -> value (transformers); None for diffusers
    module_names: tuple[str, ...] = ()
    sizes: dict = field(default_factory=dict, repr=False)  # dtype -> weight format -> bytes per module_names
    trees: dict = field(default_factory=dict, repr=False)  # dtype -> weight format -> ModuleTree as data
    tp: dict = field(default_factory=dict, repr=False)  # dtype -> str(nproc) -> rank bytes, or None: no TP plan
    offload: dict = field(default_factory=dict, repr=False)  # dtype -> device -> strategy -> bytes

    @property
    def text_config(self) -> SimpleNamespace | None:
        return None if self.text is None else SimpleNamespace(**self.text)

    def module_bytes(self, dtype: str, quantization: str | None) -> dict[str, int] | None:
        """``estimates.module_bytes(dtype, quantization)`` as computed when the facts were written; None if not stored."""
        values = self.sizes.get(dtype, {}).get(_quant_key(quantization))
        return None if values is None else dict(zip(self.module_names, values))

    def tree(self, dtype: str, quantization: str | None):
        """``placement.tree(name, dtype, quantization)`` as a ``placement_rule.ModuleTree``; None if not stored."""
        data = self.trees.get(dtype, {}).get(_quant_key(quantization))
        if data is None:
            return None
        from ..placement_rule import ModuleTree

        return ModuleTree.from_dict(data)

    def tp_rank_bytes(self, dtype: str, nproc: int) -> list[int] | None:
        """``tp_plan.plan(name, nproc, dtype).rank_bytes``; None when the model has no tensor-parallel plan.
        KeyError when not stored (more than :data:`MAX_TP` GPUs, another dtype)."""
        return self.tp[dtype][str(nproc)]

    def offload_bytes(self, dtype: str, device: str, strategy: str) -> dict[str, int] | None:
        return self.offload.get(dtype, {}).get(device, {}).get(strategy)

    def as_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "class_name": self.class_name, "parameters": self.parameters,
                "generates": self.generates, "has_output_embeddings": self.has_output_embeddings, "text": self.text,
                "module_names": list(self.module_names), "sizes": self.sizes, "trees": self.trees, "tp": self.tp,
                "offload": self.offload}

    @classmethod
    def from_dict(cls, data: dict) -> Facts:
        data = dict(data)
        data["module_names"] = tuple(data.get("module_names", ()))
        return cls(**data)


# --- computing them (the planners on the meta model: imports torch) --------------------------------

def compute(name: str) -> Facts:
    """The facts of preset ``name``, computed now by the planners on its meta model (torch, a few seconds)."""
    from .. import estimates, placement
    from ._configs import _resolve

    spec = _resolve(name)  # the meta-model spec, never one read from facts
    text = None
    if spec.kind == "transformers":
        config = spec.text_config
        values = {f: getattr(config, f, None) for f in TEXT_FIELDS}
        text = {f: list(v) if isinstance(v, tuple) else v for f, v in values.items()}  # as JSON reads it back
    sizes: dict = {}
    trees: dict = {}
    names: tuple[str, ...] = ()
    formats = WEIGHTS if spec.kind == "transformers" else (None,)
    for dtype in DTYPES:
        for quant in formats:
            table = estimates.module_bytes(spec, dtype, quant)
            if not names:
                names = tuple(table)
            if tuple(table) != names:
                raise AssertionError(f"{name}: module_bytes keys differ between formats; the facts store one list")
            sizes.setdefault(dtype, {})[_quant_key(quant)] = [table[k] for k in names]
            if spec.kind == "transformers":
                trees.setdefault(dtype, {})[_quant_key(quant)] = placement.tree(name, dtype, quant).as_dict()
    return Facts(name, spec.kind, type(spec.meta).__name__, spec.parameters, spec.generates,
                 spec.has_output_embeddings, text, names, sizes, trees, _tp_facts(spec), _offload_facts(spec))


def _tp_facts(spec) -> dict:
    if spec.kind != "transformers" or not spec.generates or spec.attention is None:
        return {}
    from .. import tp_plan
    from .._errors import LabError

    out: dict = {}
    for dtype in DTYPES:
        per: dict = {}
        for nproc in tp_plan.valid_nproc(spec, up_to=MAX_TP):
            if nproc < 2:
                continue
            try:
                per[str(nproc)] = list(tp_plan.plan(spec, nproc, dtype, name=spec.name).rank_bytes)
            except LabError:
                per[str(nproc)] = None  # the model has no tensor-parallel plan
        out[dtype] = per
    return out


def _offload_facts(spec) -> dict:
    if spec.kind != "diffusers":
        return {}
    from .. import offload_plan

    if spec.name != offload_plan.FLUX_DEV_CONFIGS["transformer"]:
        return {}
    out: dict = {}
    for dtype in DTYPES:
        components = offload_plan.flux_dev_components(dtype)
        for device in ("cuda", "cpu"):
            for strategy, settings in offload_plan.NAMED_SETTINGS.items():
                p = offload_plan.plan_offload(components, settings, device=device)
                row = {"device_bytes": p.device_bytes, "total_bytes": p.total_bytes}
                if settings.use_stream and p.total_bytes > p.device_bytes:
                    row["pinned_ram_after_bytes"] = offload_plan.pinned_memory_plan(components, settings).ram_after_bytes
                out.setdefault(dtype, {}).setdefault(device, {})[strategy] = row
    return out


# --- reading them --------------------------------------------------------------------------------

def file_data(facts: dict[str, Facts] | None = None,
              source: str = "written by tools/presets_data.py") -> dict:
    """A facts file's data: the versions, and each preset's config hash and facts (every preset's, computed now,
    when ``facts`` is None: what ``tools/presets_data.py`` writes; ``source`` says who wrote it)."""
    from ._configs import PRESETS

    facts = facts if facts is not None else {name: compute(name) for name in PRESETS}
    return {"format": _FILE_FORMAT, "source": f"bigsmall_lab.zoo._facts.compute() on each preset's meta model, {source}",
            "versions": installed_versions(),
            "presets": {name: {"config_sha256": config_sha256(name), **f.as_dict()} for name, f in facts.items()}}


def read_file(path: Path) -> dict | None:
    """File data at ``path`` (gzipped JSON), or None when it is missing, damaged or of another format."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError, EOFError):
        return None
    return data if isinstance(data, dict) and data.get("format") == _FILE_FORMAT else None


@lru_cache(maxsize=4)
def _shipped(path: str) -> dict | None:
    return read_file(Path(path))


def _record(data: dict | None, name: str, versions: dict) -> Facts | None:
    if not data or data.get("versions") != versions:
        return None
    record = data.get("presets", {}).get(name)
    if not record or record.get("config_sha256") != config_sha256(name):
        return None
    try:
        return Facts.from_dict({k: v for k, v in record.items() if k != "config_sha256"})
    except TypeError:
        return None


# Other places facts may come from (the lab's cache folder: zoo._facts_cache registers its reader, a runner
# touching files, so that this planner reads shipped data only).
_SOURCES: list[Callable[[str, dict], dict | None]] = []


def register_source(source: Callable[[str, dict], dict | None]) -> None:
    """Let :func:`preset_facts` also look in ``source(name, versions)``, which returns file data or None."""
    if source not in _SOURCES:
        _SOURCES.append(source)


def preset_facts(name: str) -> Facts | None:
    """Preset ``name``'s facts, shipped (or from a registered source, e.g. the lab's cache folder), when they were
    computed from this config with the installed libraries; None otherwise (the lab then builds the meta model).
    Never computes."""
    if os.environ.get("BIGSMALL_LAB_NO_FACTS"):  # tests compare both paths
        return None
    versions = installed_versions()
    found = _record(_shipped(str(FACTS_FILE)), name, versions)
    sources = iter(_SOURCES)
    while found is None and (source := next(sources, None)) is not None:
        found = _record(source(name, versions), name, versions)
    return found


def file_bytes(data: dict) -> bytes:
    """``data`` as the gzipped JSON the facts files hold; the same bytes for the same data (no time stamp)."""
    return gzip.compress(json.dumps(data, separators=(",", ":")).encode("utf-8"), mtime=0)
