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
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ._smollm2 import REAL_MODELS, real_model_path

__all__ = ["LAB_MODELS", "PRESETS", "Preset", "config_dict", "count_parameters", "instantiate", "meta_model", "presets",
           "transformers_config"]

_CONFIGS = Path(__file__).parent / "configs"
TINY_DIR = Path(__file__).parent / "tiny"


@dataclass(frozen=True)
class Preset:
    """A real model whose config ships with the lab: where it comes from and its published size."""

    name: str
    hub_id: str
    config_file: str  # path of the config inside the hub repository
    published: str  # the size its model card / safetensors index states


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("llama-3.1-8b", "meta-llama/Llama-3.1-8B", "config.json", "8.03B"),
        Preset("llama-3.1-70b", "meta-llama/Llama-3.1-70B", "config.json", "70.6B"),
        Preset("llama-3.1-405b", "meta-llama/Llama-3.1-405B", "config.json", "406B"),
        Preset("llama-3.2-1b", "meta-llama/Llama-3.2-1B", "config.json", "1.24B"),
        Preset("llama-3.2-3b", "meta-llama/Llama-3.2-3B", "config.json", "3.21B"),
        Preset("mistral-7b-v0.3", "mistralai/Mistral-7B-v0.3", "config.json", "7.25B"),
        Preset("qwen2.5-7b", "Qwen/Qwen2.5-7B", "config.json", "7.62B"),
        Preset("gemma-2-9b", "google/gemma-2-9b", "config.json", "9.24B"),
        Preset("smollm2-1.7b", "HuggingFaceTB/SmolLM2-1.7B", "config.json", "1.71B"),
        Preset("flux.1-dev-transformer", "black-forest-labs/FLUX.1-dev", "transformer/config.json", "11.9B"),
        Preset("t5-v1.1-xxl-encoder", "black-forest-labs/FLUX.1-dev", "text_encoder_2/config.json", "4.76B"),
        Preset("clip-vit-l-14-text", "black-forest-labs/FLUX.1-dev", "text_encoder/config.json", "123M"),
    )
}


# The lab's own models: the trained embedded one, and a random-weight "small" rung of the scale ladder
# that shares its tokenizer (~190M parameters, ~380 MB in bf16: big enough that loading it moves
# a CPU's memory visibly, small enough for a laptop).
LAB_MODELS = ("bigsmall-tiny", "bigsmall-small")


def _lab_config(name: str) -> dict:
    tiny = json.loads((TINY_DIR / "config.json").read_text())
    if name == "bigsmall-tiny":
        return tiny
    small = {k: tiny[k] for k in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id") if k in tiny}
    small.update(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=1024,
                 intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=4,
                 head_dim=64, tie_word_embeddings=True, max_position_embeddings=2048, rms_norm_eps=1e-5,
                 rope_theta=10000.0, torch_dtype="bfloat16")
    return small


def presets() -> list[str]:
    """Names of the real models whose configs ship with the lab, e.g. 'llama-3.1-8b'."""
    return list(PRESETS)


def _unknown(name: str) -> ValueError:
    return ValueError(f"config {name!r} is not a preset, a lab model, a config dict or an existing config.json "
                      f"path; presets are: {', '.join(presets())}; lab models: {', '.join(LAB_MODELS)}")


def config_dict(config: Any) -> dict:
    """The config as a plain dict, from a preset name, a dict, a path to a config.json or a config object."""
    if isinstance(config, dict):
        return dict(config)
    if isinstance(config, (str, os.PathLike)):
        key = str(config).strip()
        if key.lower() in PRESETS:
            return json.loads((_CONFIGS / f"{key.lower()}.json").read_text())
        if key.lower() in LAB_MODELS:
            return _lab_config(key.lower())
        if key.lower() in REAL_MODELS:  # the real model's config, from its converted checkpoint
            return json.loads((real_model_path(key.lower()) / "config.json").read_text())
        path = Path(key).expanduser()
        if path.is_dir() and (path / "config.json").is_file():
            path = path / "config.json"
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"config file {str(path)!r} is not valid JSON ({err.msg} at line {err.lineno})") from None
        raise _unknown(key)
    if hasattr(config, "to_dict"):  # transformers PretrainedConfig
        return config.to_dict()
    if hasattr(config, "items"):  # diffusers FrozenDict
        return dict(config.items())
    raise TypeError(f"config must be a preset name, a dict, a path or a config object, not {type(config).__name__}")


def _config_fields(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in ("model_type", "transformers_version", "torch_dtype", "dtype")}


def transformers_config(config: Any):
    """The transformers config object of a transformers config.json (a dict with ``model_type``)."""
    import transformers

    cfg = config_dict(config)
    try:
        return transformers.AutoConfig.for_model(cfg["model_type"], **_config_fields(cfg))
    except ValueError as err:
        raise ValueError(f"config model_type {cfg['model_type']!r} is not known to transformers "
                         f"{transformers.__version__} ({err})") from None


def _transformers_model(cfg: dict, dtype: torch.dtype) -> torch.nn.Module:
    import transformers

    config = transformers_config(cfg)
    fields = _config_fields(cfg)
    _check_required(config, fields)
    architectures = cfg.get("architectures") or []
    cls = getattr(transformers, architectures[0], None) if architectures else None
    if cls is not None:
        return cls._from_config(config, dtype=dtype)
    try:
        return transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    except ValueError:  # not a causal LM (an encoder, say)
        return transformers.AutoModel.from_config(config, dtype=dtype)


# Sizes a config must state: a missing one would silently take the library's default (a wrong model).
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")


def _check_required(config, fields: dict) -> None:
    if config.get_text_config() is not config:  # multimodal: the sizes live in a text sub-config
        return
    for key in _REQUIRED:
        # attribute_map maps the common name to a model's own (T5: hidden_size -> d_model).
        names = [key] + ([config.attribute_map[key]] if key in config.attribute_map else [])
        if not any(name in fields for name in names):
            raise ValueError(f"config is missing the key {' or '.join(map(repr, names))}; "
                             f"a {config.model_type} config.json states it")


def _diffusers_model(cfg: dict, dtype: torch.dtype) -> torch.nn.Module:
    import diffusers

    cls = getattr(diffusers, cfg["_class_name"], None)
    if cls is None:
        raise ValueError(f"config _class_name {cfg['_class_name']!r} is not a diffusers model class")
    # Create the parameters in the target dtype (diffusers' from_config takes no dtype argument).
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return cls.from_config(cfg)
    finally:
        torch.set_default_dtype(default)


def meta_model(config: Any, dtype: torch.dtype | str = torch.bfloat16) -> torch.nn.Module:
    """The model of ``config`` on the meta device: real shapes and dtypes, no weight memory.

    A transformers config needs ``model_type``; a diffusers model config needs ``_class_name``.
    """
    return instantiate(config, dtype, torch.device("meta"))


def instantiate(config: Any, dtype: torch.dtype | str, device: torch.device) -> torch.nn.Module:
    """``config``'s model with parameters allocated on ``device`` and NOT initialised (except on meta).

    Buffers (rotary frequencies, position ids) are computed as usual; tied weights are tied.
    """
    from .._compat import no_init_weights
    from .._dtypes import torch_dtype

    cfg = config_dict(config)
    dtype = torch_dtype(dtype)
    if "model_type" not in cfg and "_class_name" not in cfg:
        raise ValueError("config is missing the key 'model_type' (a transformers config.json) or "
                         "'_class_name' (a diffusers model config.json); one of them says which model to build")
    is_diffusers = "_class_name" in cfg
    # Building prints notices (e.g. "Instantiating ... on meta"): they teach nothing here.
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            if is_diffusers:
                with torch.device("meta"):
                    model = _diffusers_model(cfg, dtype)
                if device.type != "meta":
                    # diffusers models hold no buffers to compute, so allocating empty is enough.
                    model = model.to_empty(device=device)
            else:
                with torch.device(device), no_init_weights():
                    model = _transformers_model(cfg, dtype)
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"config cannot build its model: {err!r}; check that it is a complete config.json") from None
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


def count_parameters(config: Any) -> int:
    """Exact number of parameters of ``config``'s model, built on the meta device; tied tensors count once.

    ``config``: a preset name (see :func:`presets`), a dict holding a transformers config.json
    (has ``model_type``) or a diffusers model config.json (has ``_class_name``), a path to such a
    file, or a config object.

    >>> count_parameters("t5-v1.1-xxl-encoder")  # the shared embedding is counted once
    4762310656
    """
    if isinstance(config, str) and config.strip().lower() in PRESETS:
        return _count_preset(config.strip().lower())
    return _count(meta_model(config))


@lru_cache(maxsize=None)
def _count_preset(name: str) -> int:
    return _count(meta_model(name))


def _count(model: torch.nn.Module) -> int:
    # parameters() yields each Parameter object once, so a tied embedding/lm_head is counted once.
    return sum(p.numel() for p in model.parameters())
