"""Runners of the zoo: random-weight models of real architectures, sharded checkpoints, loading.

``build`` materialises a config's model directly on the target device with random weights (on a GPU
the 8B preset appears in seconds, at its true 16 GB); ``checkpoint`` writes a model as sharded
safetensors into the lab's cache folder; ``load_model`` loads the embedded model, a preset's
checkpoint, a local folder or (with network, e.g. on Colab) a hub id.
"""

from __future__ import annotations

import os
import shutil
import socket
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from .._dtypes import dtype_name, torch_dtype
from .._paths import atomic_dir, cache_dir
from .._units import parse_size
from ._configs import LAB_MODELS, PRESETS, TINY_DIR, instantiate, meta_model, presets
from ._smollm2 import REAL_MODELS, real_model_path

__all__ = ["HubUnreachableError", "Weights", "build", "checkpoint", "load_model", "load_tokenizer", "model_path"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class Weights(str, Enum):
    """What ``build`` fills the parameters with."""

    RANDOM = "random"  # normal(0, 0.02) matrices, ones for norms: real memory, meaningless outputs
    EMPTY = "empty"  # the meta device: shapes and dtypes only, no memory at all


class HubUnreachableError(OSError):
    """A hub id was asked for and the Hugging Face Hub cannot be reached."""


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r} is not a device; use 'cpu', 'cuda', 'cuda:N' or 'meta'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asks for a CUDA GPU and none is attached; use device='cpu'")
    return dev


def build(config: Any, weights: str = "random", dtype: str | torch.dtype = "bfloat16",
          device: str | torch.device = "cpu", seed: int = 0) -> torch.nn.Module:
    """The real architecture of ``config`` with random weights, created directly on ``device``.

    Parameters are allocated empty on the device and filled once (no CPU round trip, no init
    twice); tied weights stay tied, so memory equals parameters x bytes per parameter.
    ``weights="empty"`` returns the model on the meta device instead.
    """
    try:
        kind = Weights(weights)
    except ValueError:
        raise ValueError(f"weights {weights!r} is not known; use one of: "
                         f"{', '.join(w.value for w in Weights)}") from None
    if kind is Weights.EMPTY:
        return meta_model(config, dtype)
    model = instantiate(config, dtype, _device(device))
    _fill_random(model, seed)
    return model.eval()


@torch.no_grad()
def _fill_random(model: torch.nn.Module, seed: int) -> None:
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    for name, param in model.named_parameters():
        if param.ndim == 1:
            # Norm weights 1 and biases 0 keep activations in range, so a forward pass is well defined.
            param.fill_(1.0 if name.endswith("weight") else 0.0)
        elif param.dtype.is_floating_point and param.element_size() >= 2:
            param.normal_(0.0, 0.02, generator=generator)
        else:
            param.zero_()


def _checkpoint_name(name: str, dtype: str, shard_bytes: int, seed: int) -> str:
    return f"{name}-{dtype}-shard{shard_bytes / 1e6:g}MB-seed{seed}"


def checkpoint(model: str | torch.nn.Module = "bigsmall-small", dtype: str | torch.dtype = "bfloat16",
               shard_size: str | int = "100MB", seed: int = 0, name: str | None = None,
               progress: bool = True) -> Path:
    """Write ``model`` (a preset / lab model name, or a transformers model) as sharded safetensors.

    The folder goes under ``cache_dir()/checkpoints`` and is built atomically: a temporary folder
    renamed into place when complete. A name already built is returned as is.

    >>> path = checkpoint("bigsmall-small", shard_size="100MB")  # doctest: +SKIP
    >>> sorted(p.name for p in path.glob("*.safetensors"))[:2]  # doctest: +SKIP
    ['model-00001-of-00004.safetensors', 'model-00002-of-00004.safetensors']
    """
    from tqdm.auto import tqdm

    dtype = dtype_name(dtype, allowed=("float32", "float16", "bfloat16"))
    shard_bytes = parse_size(shard_size, argument="shard_size")
    if shard_bytes < 10**6:
        raise ValueError(f"shard_size {shard_size!r} is below 1MB; use e.g. '100MB' or '2GB'")
    if isinstance(model, torch.nn.Module):
        if not name:
            raise ValueError("name is required when model is a module: it names the checkpoint folder")
        label, source = name, None
    elif isinstance(model, str) and model.lower() in (*PRESETS, *LAB_MODELS, *REAL_MODELS):
        label, source = model.lower(), model.lower()
    else:
        raise ValueError(f"model {model!r} is not a preset or lab model; use one of: "
                         f"{', '.join((*LAB_MODELS, *presets()))}, or pass a model with name=")
    target = cache_dir() / "checkpoints" / _checkpoint_name(label, dtype, shard_bytes, seed)
    if (target / "config.json").is_file():
        return target
    steps = tqdm(total=2, desc=f"checkpoint {label}", disable=not progress, unit="step")
    with atomic_dir(target) as tmp:
        if source in REAL_MODELS:
            # The real model re-sharded: its trained weights, not random ones.
            steps.set_postfix_str("trained weights")
            model = load_model(source, dtype=torch_dtype(dtype))
        elif source is not None:
            steps.set_postfix_str("random weights")
            model = build(source, dtype=dtype, device="cpu", seed=seed)
        steps.update()
        steps.set_postfix_str("writing shards")
        model.save_pretrained(tmp, max_shard_size=shard_bytes, safe_serialization=True)
        if source in LAB_MODELS:
            _copy_tokenizer(tmp)
        elif source in REAL_MODELS:
            _copy_tokenizer(tmp, real_model_path(source))
        steps.update()
    steps.close()
    return target


def _copy_tokenizer(folder: Path, source: Path = TINY_DIR) -> None:
    for file in _TOKENIZER_FILES:
        if (source / file).is_file():
            shutil.copy2(source / file, folder / file)


def _resolve(name_or_path: str | os.PathLike | None) -> tuple[str, bool]:
    """(what to give from_pretrained, whether it is a hub id)."""
    if name_or_path is None or str(name_or_path).lower() == "bigsmall-tiny":
        return str(TINY_DIR), False
    key = str(name_or_path)
    if key.strip().lower() in REAL_MODELS:
        return str(real_model_path(key.strip().lower())), False
    if key.lower() in (*PRESETS, "bigsmall-small"):
        return str(checkpoint(key.lower())), False
    path = Path(key).expanduser()
    if path.exists():
        return str(path), False
    if key.count("/") == 1 and not key.startswith((".", "/", "~")):
        return key, True
    raise ValueError(f"name_or_path {key!r} is not a preset, a lab model, an existing folder or a hub id "
                     f"(owner/name); presets: {', '.join(presets())}; lab models: "
                     f"{', '.join((*LAB_MODELS, *REAL_MODELS))}")


def model_path(name_or_path: str | os.PathLike | None = None) -> Path:
    """The local folder (config.json, *.safetensors, tokenizer where there is one) behind a name:
    None or 'bigsmall-tiny' the embedded model, 'smollm2-135m-instruct' the real model (converted
    once), a preset or 'bigsmall-small' its random-weight checkpoint (built once), or a folder.

    >>> model_path().name
    'tiny'
    """
    source, is_hub = _resolve(name_or_path)
    if is_hub:
        raise ValueError(f"name_or_path {str(name_or_path)!r} is a hub id, not a local model; download it with "
                         "huggingface_hub.snapshot_download first, or use a lab model or a preset")
    return Path(source)


def _from_pretrained(cls, name_or_path, kwargs: dict):
    source, is_hub = _resolve(name_or_path)
    # Safe by default: never run code that comes with a repository.
    if kwargs.get("trust_remote_code"):
        raise ValueError("trust_remote_code=True is refused by the lab: it runs code downloaded with a model")
    if not is_hub:
        kwargs.setdefault("local_files_only", True)
    elif not _hub_reachable():
        # Without this, huggingface_hub retries for ~25 s before failing; a cached copy still works.
        kwargs["local_files_only"] = True
    try:
        return cls.from_pretrained(source, **kwargs)
    except OSError as err:
        if is_hub and (kwargs.get("local_files_only") or _looks_offline(err)):
            raise HubUnreachableError(
                f"name_or_path {source!r} is a hub id and the Hugging Face Hub cannot be reached from here "
                "(and it is not in the local Hugging Face cache); on this machine use load_model() for the "
                "embedded model, a preset such as load_model('llama-3.2-1b') (random weights, real "
                "architecture) or a local folder that holds config.json and *.safetensors") from None
        raise


def _hub_reachable(timeout_s: float = 2.0) -> bool:
    """A quick TCP connect to the hub endpoint (HF_ENDPOINT honoured); False offline or when HF_HUB_OFFLINE=1."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _looks_offline(err: BaseException) -> bool:
    text = f"{type(err).__name__} {err}".lower()
    return any(s in text for s in ("offline", "connection", "resolve", "couldn't connect", "network",
                                   "localentrynotfound", "cannot find the requested files", "timed out"))


def load_model(name_or_path: str | os.PathLike | None = None, **from_pretrained_kwargs) -> torch.nn.Module:
    """Load a causal LM: None = the embedded ``bigsmall-tiny``; a preset or ``bigsmall-small`` = its
    random-weight checkpoint in the cache (built once); a local folder; or a hub id (needs network).

    Keyword arguments go to ``AutoModelForCausalLM.from_pretrained`` unchanged (``dtype``,
    ``device_map``, ``quantization_config``, ...). Only safetensors are loaded.
    """
    from transformers import AutoModelForCausalLM

    from .._compat import from_pretrained_kwargs as current_names

    kwargs = current_names(from_pretrained_kwargs)
    kwargs.setdefault("use_safetensors", True)
    return _from_pretrained(AutoModelForCausalLM, name_or_path, kwargs)


def load_tokenizer(name_or_path: str | os.PathLike | None = None, **kwargs):
    """The tokenizer that goes with :func:`load_model`'s model (the embedded one by default)."""
    from transformers import AutoTokenizer

    if name_or_path is not None and str(name_or_path).lower() in PRESETS:
        raise ValueError(f"name_or_path {name_or_path!r} is a preset with random weights and no tokenizer; "
                         "feed it token ids, or use load_tokenizer() for the embedded model's")
    return _from_pretrained(AutoTokenizer, name_or_path, dict(kwargs))
