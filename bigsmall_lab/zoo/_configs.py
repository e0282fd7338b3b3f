"""Real architectures without a hub: shipped configs, models on the meta device, exact parameter counts.

The JSON files in ``configs/`` are the published ``config.json`` of each model (the numbers are
facts). Building a model on the meta device gives every tensor its shape and dtype and no data,
so even Llama 3.1 405B "exists" in a fraction of a second and no memory:

>>> count_parameters("llama-3.1-8b")
8030261248
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._errors import LabError, closest, shown, whole_number

if TYPE_CHECKING:  # torch is imported where a model is built, so that planning a preset from its facts needs none
    import torch

__all__ = ["LAB_MODELS", "PRESETS", "AttentionLayout", "ModelSpec", "Preset", "config_dict", "count_parameters", "instantiate",
           "meta_model", "presets", "register_config_source", "resolve", "transformers_config"]

_CONFIGS = Path(__file__).parent / "configs"
TINY_DIR = Path(__file__).parent / "tiny"


@dataclass(frozen=True)
class Preset:
    """A real model whose config ships with the lab: where it comes from and its published size."""

    name: str
    hub_id: str
    config_file: str  # path of the config inside the hub repository
    published: str  # the size its model card / safetensors index states


# The model table is data: bigsmall_lab/data/models.json (the presets' hub ids and published sizes, the lab's own
# models and the sizes of the "small" rung of the scale ladder).
_MODELS = json.loads((Path(__file__).parent.parent / "data" / "models.json").read_text())
PRESETS: dict[str, Preset] = {name: Preset(name, **fields) for name, fields in _MODELS["presets"].items()}
# The lab's own models: the trained embedded one, and a random-weight "small" rung of the scale ladder
# that shares its tokenizer.
LAB_MODELS = tuple(_MODELS["lab_models"])
_TOKEN_KEYS = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")


def _lab_config(name: str) -> dict:
    tiny = json.loads((TINY_DIR / "config.json").read_text())
    if name == "bigsmall-tiny":
        return tiny
    small = {k: tiny[k] for k in _TOKEN_KEYS if k in tiny}  # the tiny model's tokenizer, so its vocabulary
    small.update(_MODELS["lab_models"][name]["config"])
    return small


# Lab models whose config.json exists only once a runner has made their checkpoint (the real model is
# converted from a GGUF on first use). That runner registers a function returning the config, so this
# module (a planner: configs in, meta models and counts out) never imports it.
_CONFIG_SOURCES: dict[str, Callable[[], dict]] = {}


def register_config_source(name: str, source: Callable[[], dict]) -> None:
    """Let :func:`config_dict` resolve ``name`` by calling ``source()`` (used by the zoo's runners)."""
    _CONFIG_SOURCES[name.lower()] = source


def presets() -> list[str]:
    """Names of the real models whose configs ship with the lab, e.g. 'llama-3.1-8b'."""
    return list(PRESETS)


def _known_names() -> list[str]:
    return [*PRESETS, *LAB_MODELS, *_CONFIG_SOURCES]


def _unknown(name: str) -> LabError:
    hint = closest(name, _known_names()) or f" (the {len(PRESETS)} presets are listed by bsl.presets())"
    return LabError(f"config {shown(name)} is not a preset, a lab model or an existing config.json path{hint}; "
                    f"lab models: {', '.join([*LAB_MODELS, *_CONFIG_SOURCES])}")


def _read_json(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LabError(f"config file {shown(str(path))} is not UTF-8 text; a config.json is JSON text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise LabError(f"config file {shown(str(path))} is not valid JSON ({err.msg} at line {err.lineno})") from None
    except RecursionError:  # thousands of nested brackets: no config is built like that
        raise LabError(f"config file {shown(str(path))} nests its JSON too deeply to be a config; a config.json is "
                       "one object of settings like {\"model_type\": \"llama\", ...}") from None
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), "a number")
        raise LabError(f"config file {shown(str(path))} holds {kind}, not a JSON object of settings like "
                       "{\"model_type\": \"llama\", ...}")
    return data


def config_dict(config: Any) -> dict:
    """The config as a plain dict, from a preset name, a dict, a path to a config.json or a config object."""
    if isinstance(config, ModelSpec):
        return dict(config.config)
    if isinstance(config, dict):
        if not all(isinstance(k, str) for k in config):
            raise LabError.bad("config", config, "a config dict has text keys, as in config.json",
                               verb="has keys that are not text")
        return dict(config)
    if isinstance(config, (str, os.PathLike)):
        key = str(config).strip()
        if key.lower() in PRESETS:
            return json.loads((_CONFIGS / f"{key.lower()}.json").read_text())
        if key.lower() in LAB_MODELS:
            return _lab_config(key.lower())
        if key.lower() in _CONFIG_SOURCES:
            return dict(_CONFIG_SOURCES[key.lower()]())
        if not key or len(key) > 4096 or "\0" in key:
            raise _unknown(key)
        path = Path(key).expanduser()
        if path.is_dir() and (path / "config.json").is_file():
            path = path / "config.json"
        if path.is_file():
            return _read_json(path)
        raise _unknown(key)
    if hasattr(config, "to_dict"):  # transformers PretrainedConfig
        return config.to_dict()
    if hasattr(config, "items"):  # diffusers FrozenDict
        return dict(config.items())
    raise LabError.bad("config", config, "use a preset name, a dict, a path to a config.json or a config object",
                       verb="is not a config")


def _config_fields(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in ("model_type", "transformers_version", "torch_dtype", "dtype")}


def transformers_config(config: Any):
    """The transformers config object of a transformers config.json (a dict with ``model_type``)."""
    import transformers

    cfg = _validated(config_dict(config))
    if "model_type" not in cfg:
        raise LabError("config has no 'model_type', so it is not a transformers config (a diffusers model config "
                       "names its '_class_name' instead)")
    return transformers.AutoConfig.for_model(cfg["model_type"], **_config_fields(cfg))


def _transformers_model(cfg: dict, dtype: torch.dtype) -> torch.nn.Module:
    import transformers

    config = transformers_config(cfg)
    architectures = cfg.get("architectures") or []
    cls = getattr(transformers, architectures[0], None) if architectures and isinstance(architectures[0], str) else None
    if cls is not None:
        return cls._from_config(config, dtype=dtype)
    try:
        return transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    except ValueError:  # not a causal LM (an encoder, say)
        return transformers.AutoModel.from_config(config, dtype=dtype)


# Sizes a config must state: a missing one would silently take the library's default (a wrong model).
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
# Sizes that, when present, must be whole numbers >= 1 (T5 and CLIP spell some of them differently).
_SIZES = (*_REQUIRED, "num_key_value_heads", "intermediate_size", "head_dim", "max_position_embeddings",
          "d_model", "d_ff", "d_kv", "num_layers", "num_heads")


def _validated(cfg: dict) -> dict:
    """``cfg`` checked before anything is built from it: one sentence for the first thing wrong.

    A transformers config needs a ``model_type`` transformers knows and its sizes as whole numbers
    (a missing one would silently take the library's default: a different model); a diffusers model
    config needs a ``_class_name``.
    """
    if "model_type" not in cfg and "_class_name" not in cfg:
        raise LabError("config is missing the key 'model_type' (a transformers config.json) or '_class_name' "
                       "(a diffusers model config.json); one of them says which model to build")
    if "model_type" not in cfg:
        if not isinstance(cfg["_class_name"], str):
            raise LabError.bad("config _class_name", cfg["_class_name"], "name a diffusers model class, e.g. "
                               "'FluxTransformer2DModel'", verb="is not a class name")
        return cfg
    from transformers import CONFIG_MAPPING

    model_type = cfg["model_type"]
    if not isinstance(model_type, str):
        raise LabError.bad("config model_type", model_type, "use a text such as 'llama'", verb="is not a text")
    if model_type not in CONFIG_MAPPING:
        import transformers

        raise LabError(f"config model_type {shown(model_type)} is not known to transformers "
                       f"{transformers.__version__}{closest(model_type, CONFIG_MAPPING.keys())}")
    config_class = CONFIG_MAPPING[model_type]
    attribute_map = getattr(config_class, "attribute_map", {}) or {}
    nested = any(isinstance(v, dict) and k.endswith("config") for k, v in cfg.items())
    for key in _SIZES:
        if key in cfg and cfg[key] is not None and not (key == "head_dim" and cfg[key] == 0):
            whole_number(cfg[key], f"config {key}", minimum=1)
    if not nested:  # multimodal configs hold their sizes in a text sub-config: transformers checks those
        for key in _REQUIRED:
            names = [key] + ([attribute_map[key]] if key in attribute_map else [])
            if not any(name in cfg for name in names):
                raise LabError(f"config is missing the key {' or '.join(map(repr, names))}; a {model_type} "
                               "config.json states it")
    heads, kv_heads = cfg.get("num_attention_heads"), cfg.get("num_key_value_heads")
    if isinstance(heads, int) and isinstance(kv_heads, int) and heads % kv_heads:
        raise LabError(f"config num_key_value_heads {kv_heads} does not divide num_attention_heads {heads}; "
                       "each KV head serves a whole group of query heads")
    return cfg


def _diffusers_model(cfg: dict, dtype: torch.dtype) -> torch.nn.Module:
    import diffusers
    import torch

    cls = getattr(diffusers, cfg["_class_name"], None)
    if not isinstance(cls, type) or not hasattr(cls, "from_config"):
        raise LabError(f"config _class_name {shown(cfg['_class_name'])} is not a diffusers model class")
    # Create the parameters in the target dtype (diffusers' from_config takes no dtype argument).
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return cls.from_config(cfg)
    finally:
        torch.set_default_dtype(default)


def instantiate(config: Any, dtype: torch.dtype | str, device: torch.device) -> torch.nn.Module:
    """``config``'s model with parameters allocated on ``device`` and NOT initialised (except on meta).

    Buffers (rotary frequencies, position ids) are computed as usual; tied weights are tied.
    The config is validated first (:func:`_validated`); an error raised while building after that
    is a bug of the lab or the library, and surfaces as one.
    """
    import torch

    from .._compat import no_init_weights
    from .._dtypes import torch_dtype

    cfg = _validated(config_dict(config))
    dtype = torch_dtype(dtype)
    is_diffusers = "model_type" not in cfg
    # Building prints notices (e.g. "Instantiating ... on meta"): they teach nothing here.
    with contextlib.redirect_stdout(io.StringIO()):
        if is_diffusers:
            with torch.device("meta"):
                model = _diffusers_model(cfg, dtype)
            if device.type != "meta":
                # diffusers models hold no buffers to compute, so allocating empty is enough.
                model = model.to_empty(device=device)
        else:
            with torch.device(device), no_init_weights():
                model = _transformers_model(cfg, dtype)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


@dataclass(frozen=True)
class AttentionLayout:
    """A decoder's attention, read once from its config with transformers' defaults: every planner that needs
    layers, heads, KV heads, head dim or sliding windows (the KV cache, tensor parallelism, the exercises) reads
    this, so they cannot disagree. KV heads default to the attention heads (no grouped-query attention), head dim
    to hidden_size / heads; ``windows`` has one entry per layer: its sliding window in tokens, None for full attention.

    >>> a = resolve("gemma-2-9b").attention
    >>> a.layers, a.heads, a.kv_heads, a.head_dim, a.windows[:2]   # alternating 4096-token windows
    (42, 16, 8, 256, (4096, None))
    """

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    windows: tuple[int | None, ...]

    @classmethod
    def of(cls, text) -> AttentionLayout:
        """The layout of a transformers text config (``spec.text_config``)."""
        n_heads = text.num_attention_heads
        n_kv_heads = getattr(text, "num_key_value_heads", None) or n_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_heads
        layer_types = getattr(text, "layer_types", None)
        window = getattr(text, "sliding_window", None)
        if layer_types is None:
            layer_types = ["sliding_attention" if window is not None else "full_attention"] * text.num_hidden_layers
        windows = tuple(window if t in ("sliding_attention", "chunked_attention") and window is not None else None
                        for t in layer_types)
        return cls(int(text.num_hidden_layers), int(n_heads), int(n_kv_heads), int(head_dim), windows)


class ModelSpec:
    """A config resolved once: the dict, its model on the meta device (float32) and its parameter count.

    Every estimate reads one of these instead of resolving the config again, and so can a planner of
    device placement (``module_bytes`` in :mod:`bigsmall_lab.estimates`, the idea of accelerate's
    ``compute_module_sizes``). Make one with :func:`resolve`; functions that take a ``config`` accept it.

    The meta model is built on first use. A preset resolved by name carries its :class:`~bigsmall_lab.zoo._facts.Facts`
    (``facts``): the numbers the planners read of it, computed by those planners and shipped with the lab, so that
    planning a preset (``bigsmall-lab fit``) builds no model and imports no torch; ``facts`` is None otherwise.

    >>> spec = resolve("llama-3.2-1b")
    >>> spec.name, spec.kind, spec.parameters          # tied embeddings counted once
    ('llama-3.2-1b', 'transformers', 1235814400)
    """

    def __init__(self, name: str, config: dict, meta: torch.nn.Module | None = None, kind: str = "transformers",
                 facts: Any = None) -> None:
        self.name, self.config, self.kind, self.facts, self._meta = name, config, kind, facts, meta

    def __repr__(self) -> str:
        return f"ModelSpec(name={self.name!r}, kind={self.kind!r}{', from facts' if self.facts else ''})"

    @property
    def meta(self) -> torch.nn.Module:
        """The model on the meta device (float32), built the first time it is asked for."""
        if self._meta is None:
            import torch

            self._meta = instantiate(self.config, torch.float32, torch.device("meta"))
        return self._meta

    @property
    def parameters(self) -> int:
        return self.facts.parameters if self.facts else _count(self.meta)

    @property
    def text_config(self):
        """The transformers config whose layers hold the KV cache (decoder side); None for diffusers.
        From facts: the sizes the planners read (``Facts.TEXT_FIELDS``), as attributes."""
        if self.kind != "transformers":
            return None
        if self.facts:
            return self.facts.text_config
        return self.meta.config.get_text_config(decoder=True)

    @property
    def generates(self) -> bool:
        """Whether the model generates token by token (a decoder with a KV cache), not an encoder."""
        if self.facts:
            return self.facts.generates
        can_generate = getattr(self.meta, "can_generate", None)
        return not callable(can_generate) or bool(can_generate())

    @property
    def has_output_embeddings(self) -> bool:
        """Whether the model ends in logits over a vocabulary (an LM head)."""
        if self.facts:
            return self.facts.has_output_embeddings
        get = getattr(self.meta, "get_output_embeddings", None)
        return callable(get) and get() is not None

    @property
    def class_name(self) -> str:
        return self.facts.class_name if self.facts else type(self.meta).__name__

    @cached_property
    def attention(self) -> AttentionLayout | None:
        """The attention layout every planner reads (:class:`AttentionLayout`); None for a diffusers model or a
        model without attention heads."""
        text = self.text_config
        if text is None or not getattr(text, "num_attention_heads", None):
            return None  # a diffusers model, or a decoder without attention heads
        return AttentionLayout.of(text)


def resolve(config: Any) -> ModelSpec:
    """``config`` (a preset or lab model name, a dict, a path, a config object) validated and built once
    on the meta device; preset names are cached. A :class:`ModelSpec` is returned as is."""
    if isinstance(config, ModelSpec):
        return config
    if isinstance(config, str) and config.strip().lower() in (*PRESETS, *LAB_MODELS):
        return _resolve_name(config.strip().lower())
    return _resolve(config)


@lru_cache(maxsize=32)
def _resolve_name(name: str) -> ModelSpec:
    if name in PRESETS:
        from ._facts import preset_facts

        facts = preset_facts(name)  # None when the shipped facts are not this config's or this library's
        if facts is not None:
            return ModelSpec(name, config_dict(name), None, facts.kind, facts)
    return _resolve(name)


def _resolve(config: Any) -> ModelSpec:
    import torch

    cfg = config_dict(config)
    model = instantiate(cfg, torch.float32, torch.device("meta"))
    if isinstance(config, (str, os.PathLike)):
        name = str(config).strip()
    else:
        name = str(cfg.get("_name_or_path") or cfg.get("model_type") or cfg.get("_class_name") or "config")
    return ModelSpec(name, cfg, model, "transformers" if "model_type" in cfg else "diffusers")


def meta_model(config: Any, dtype: torch.dtype | str = "bfloat16") -> torch.nn.Module:
    """The model of ``config`` on the meta device: real shapes and dtypes, no weight memory.

    A transformers config needs ``model_type``; a diffusers model config needs ``_class_name``.
    """
    import torch

    return instantiate(config_dict(config), dtype, torch.device("meta"))


def count_parameters(config: Any) -> int:
    """Exact number of parameters of ``config``'s model, built on the meta device; tied tensors count once.

    ``config``: a preset name (see :func:`presets`), a dict holding a transformers config.json
    (has ``model_type``) or a diffusers model config.json (has ``_class_name``), a path to such a
    file, or a config object.

    >>> count_parameters("t5-v1.1-xxl-encoder")  # the shared embedding is counted once
    4762310656
    """
    return resolve(config).parameters


def _count(model: torch.nn.Module) -> int:
    # parameters() yields each Parameter object once, so a tied embedding/lm_head is counted once.
    return sum(p.numel() for p in model.parameters())
