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

from .._dtypes import bytes_per_element, dtype_name, torch_dtype
from .._errors import LabError, closest, shown, whole_number
from .._paths import atomic_dir, cache_dir, check_name
from .._units import MB, format_bytes, parse_size
from ._configs import LAB_MODELS, PRESETS, TINY_DIR, instantiate, meta_model, presets, resolve
from ._smollm2 import REAL_MODELS, real_model_path


__all__ = ["HubUnreachableError", "Weights", "build", "checkpoint", "load_model", "load_tokenizer", "model_path"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


class Weights(str, Enum):
    """What ``build`` fills the parameters with."""

    RANDOM = "random"  # normal(0, 0.02) matrices, ones for norms: real memory, meaningless outputs
    EMPTY = "empty"  # the meta device: shapes and dtypes only, no memory at all


class HubUnreachableError(OSError):
    """A hub id was asked for and the Hugging Face Hub cannot be reached."""


_BUILD_DTYPES = ("float32", "float16", "bfloat16")  # what random weights are drawn in (normal_ needs a float)


def _device(device: str | torch.device) -> torch.device:
    allowed = "use 'cpu', 'cuda', 'cuda:N' or 'meta'"
    if isinstance(device, bool) or not isinstance(device, (str, torch.device)):
        raise LabError.bad("device", device, allowed, verb="is not a device")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise LabError.bad("device", device, allowed, verb="is not a device") from None
    if dev.type not in ("cpu", "cuda", "meta"):
        raise LabError.bad("device", device, allowed, verb="is not supported by the lab")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LabError.bad("device", device, "none is attached; use device='cpu'", verb="asks for a CUDA GPU")
    return dev


def _free_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device`` now (None for meta: nothing is allocated there)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device.index or 0)[0]
    if device.type == "cpu":
        import psutil

        return psutil.virtual_memory().available
    return None


def _needed_bytes(model: torch.nn.Module, dtype: str) -> int:
    """Bytes the parameters of a meta ``model`` take in ``dtype`` (tied tensors once), from the dtype table."""
    return int(sum(p.numel() for p in model.parameters()) * bytes_per_element(dtype))


def build(config: Any, weights: str = "random", dtype: str | torch.dtype = "bfloat16",
          device: str | torch.device = "cpu", seed: int = 0) -> torch.nn.Module:
    """The real architecture of ``config`` with random weights, created directly on ``device``.

    Parameters are allocated empty on the device and filled once (no CPU round trip, no init
    twice); tied weights stay tied, so memory equals parameters x bytes per parameter.
    ``weights="empty"`` returns the model on the meta device instead.
    """
    try:
        kind = Weights(weights)
    except (ValueError, TypeError):
        raise LabError.bad("weights", weights, f"use one of: {', '.join(w.value for w in Weights)}",
                           verb="is not known") from None
    dtype = dtype_name(dtype, allowed=_BUILD_DTYPES)
    seed = whole_number(seed, "seed", minimum=0)
    if kind is Weights.EMPTY:
        return meta_model(config, dtype)
    dev = _device(device)
    spec = resolve(config)  # validates the config and sizes it on the meta device, before allocating
    needed, free = _needed_bytes(spec.meta, dtype), _free_bytes(dev)
    if free is not None and needed > free:
        raise LabError(f"config {shown(spec.name)} in {dtype} needs {format_bytes(needed)} and {dev} has "
                       f"{format_bytes(free)} free; use weights='empty' (the meta device), a smaller dtype or preset")
    model = instantiate(spec.config, dtype, dev)
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
    return f"{name}-{dtype}-shard{shard_bytes / MB:g}MB-seed{seed}"


def checkpoint(model: str | torch.nn.Module = "bigsmall-small", dtype: str | torch.dtype | None = None,
               shard_size: str | int = "100MB", seed: int = 0, name: str | None = None,
               progress: bool = True) -> Path:
    """Write ``model`` (a preset / lab model name, or a transformers model) as sharded safetensors.

    The folder goes under ``cache_dir()/checkpoints`` and is built atomically: a temporary folder
    renamed into place when complete. A name already built is returned as is. ``dtype``: what a
    preset's random weights are drawn in (None: bfloat16); a module is saved in its own dtype (None, or
    the same dtype), and its folder records a fingerprint of the module (config, tensor names, shapes,
    dtypes and leading values), so ``name=`` given to another module rebuilds the folder instead of
    returning the first module's.

    >>> path = checkpoint("bigsmall-tiny", shard_size="5MB", progress=False)  # 13.6 MB of bf16, 5 MB shards
    >>> path.name, len(list(path.glob("*.safetensors")))
    ('bigsmall-tiny-bfloat16-shard5MB-seed0', 3)
    """
    from tqdm.auto import tqdm

    if isinstance(model, torch.nn.Module) and isinstance(getattr(model, "dtype", None), torch.dtype):
        own = dtype_name(model.dtype, allowed=_BUILD_DTYPES)
        if dtype is not None and dtype_name(dtype, allowed=_BUILD_DTYPES) != own:
            raise LabError(f"dtype {shown(dtype)} differs from the model's own {own}; the lab saves a module as it "
                           f"is: cast it first (model.to(torch.{dtype_name(dtype)})) or leave dtype out")
        dtype = own
    dtype = dtype_name("bfloat16" if dtype is None else dtype, allowed=_BUILD_DTYPES)
    shard_bytes = parse_size(shard_size, argument="shard_size")
    if shard_bytes < MB:
        raise LabError.bad("shard_size", shard_size, "use e.g. '100MB' or '2GB'", verb="is below 1MB")
    seed = whole_number(seed, "seed", minimum=0)
    if name is not None:
        check_name(name)
    if isinstance(model, torch.nn.Module):
        if not callable(getattr(model, "save_pretrained", None)):
            raise LabError.bad("model", model, "pass a transformers model (it has save_pretrained) or a preset name",
                               verb="cannot be saved as a checkpoint")
        if not name:
            raise LabError("name is required when model is a module: it names the checkpoint folder")
        label, source = name, None
        fingerprint = _fingerprint(model)
    elif isinstance(model, str) and model.strip().lower() in (*PRESETS, *LAB_MODELS, *REAL_MODELS):
        label = source = model.strip().lower()
        fingerprint = None
    else:
        names = (*LAB_MODELS, *REAL_MODELS, *presets())
        raise LabError(f"model {shown(model)} is not a preset or lab model{closest(str(model), names)}; use a "
                       "name from bsl.presets(), 'bigsmall-small', or pass a transformers model with name=")
    target = cache_dir() / "checkpoints" / _checkpoint_name(label, dtype, shard_bytes, seed)

    def complete(folder: Path) -> bool:
        if not (folder / "config.json").is_file():
            return False
        return fingerprint is None or (folder / _FINGERPRINT).is_file() and \
            (folder / _FINGERPRINT).read_text().strip() == fingerprint

    if complete(target):
        return target
    steps = tqdm(total=2, desc=f"checkpoint {label}", disable=not progress, unit="step")
    with atomic_dir(target, complete=complete) as tmp:
        if complete(target):  # another process built it while this one waited
            steps.close()
            return target
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
        if fingerprint is not None:
            (tmp / _FINGERPRINT).write_text(fingerprint + "\n")
        if source in LAB_MODELS:
            _copy_tokenizer(tmp)
        elif source in REAL_MODELS:
            _copy_tokenizer(tmp, real_model_path(source))
        steps.update()
    steps.close()
    return target


_FINGERPRINT = "lab-fingerprint.txt"
_LEADING_VALUES = 64  # of each tensor: enough to tell two trained or random modules apart, cheap for any size


def _fingerprint(model: torch.nn.Module) -> str:
    """A digest of a module: its config, and each tensor's name, shape, dtype and leading values."""
    import hashlib

    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    digest.update((config.to_json_string() if hasattr(config, "to_json_string") else type(model).__name__).encode())
    for key, tensor in model.state_dict().items():
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        if tensor.device.type != "meta":
            lead = tensor.detach().reshape(-1)[:_LEADING_VALUES].to("cpu")
            digest.update(lead.view(torch.uint8).numpy().tobytes() if lead.numel() else b"")
    return digest.hexdigest()


def _copy_tokenizer(folder: Path, source: Path = TINY_DIR) -> None:
    for file in _TOKENIZER_FILES:
        if (source / file).is_file():
            shutil.copy2(source / file, folder / file)


def _resolve(name_or_path: str | os.PathLike | None) -> tuple[str, bool]:
    """(what to give from_pretrained, whether it is a hub id)."""
    if name_or_path is None or (isinstance(name_or_path, str) and name_or_path.strip().lower() == "bigsmall-tiny"):
        return str(TINY_DIR), False
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise LabError.bad("name_or_path", name_or_path, "use a lab model or preset name, a folder or a hub id",
                           verb="is not a name or a path")
    key = str(name_or_path)
    if not key.strip():  # Path("") is the current folder: never load whatever happens to be there
        raise LabError.bad("name_or_path", name_or_path, "use None for the embedded model, a lab model or preset "
                           "name, a folder or a hub id", verb="is empty")
    if key.strip().lower() in REAL_MODELS:
        return str(real_model_path(key.strip().lower())), False
    if key.lower() in (*PRESETS, "bigsmall-small"):
        return str(checkpoint(key.lower())), False
    path = Path(key).expanduser()
    if path.exists():
        return str(path), False
    if key.count("/") == 1 and not key.startswith((".", "/", "~")):
        return key, True
    names = (*LAB_MODELS, *REAL_MODELS, *presets())
    raise LabError(f"name_or_path {shown(key)} is not a preset, a lab model, an existing folder or a hub id "
                   f"(owner/name){closest(key, names)}; lab models: {', '.join((*LAB_MODELS, *REAL_MODELS))}")


def model_path(name_or_path: str | os.PathLike | None = None) -> Path:
    """The local folder (config.json, *.safetensors, tokenizer where there is one) behind a name:
    None or 'bigsmall-tiny' the embedded model, 'smollm2-135m-instruct' the real model (converted
    once), a preset or 'bigsmall-small' its random-weight checkpoint (built once), or a folder.

    >>> model_path().name
    'tiny'
    """
    source, is_hub = _resolve(name_or_path)
    if is_hub:
        raise LabError(f"name_or_path {shown(str(name_or_path))} is a hub id, not a local model; download it with "
                       "huggingface_hub.snapshot_download first, or use a lab model or a preset")
    return Path(source)


def _from_pretrained(cls, name_or_path, kwargs: dict):
    source, is_hub = _resolve(name_or_path)
    # Safe by default: never run code that comes with a repository.
    if kwargs.get("trust_remote_code"):
        raise LabError("trust_remote_code=True is refused by the lab: it runs code downloaded with a model")
    if not is_hub:
        kwargs.setdefault("local_files_only", True)
    elif not _hub_reachable():
        # Without this, huggingface_hub retries for ~25 s before failing; a cached copy still works.
        kwargs["local_files_only"] = True
    try:
        return cls.from_pretrained(source, **kwargs)
    except Exception as err:
        if not is_hub:
            _name_a_broken_file(Path(source), err)
        if not isinstance(err, OSError):
            raise
        if is_hub and (kwargs.get("local_files_only") or _looks_offline(err)):
            raise HubUnreachableError(
                f"name_or_path {shown(source)} is a hub id and the Hugging Face Hub cannot be reached from here "
                "(nor is it cached); use load_model() for the embedded model, a preset such as 'llama-3.2-1b' "
                "(random weights) or a local folder with config.json and *.safetensors") from None
        raise


def _name_a_broken_file(folder: Path, err: BaseException) -> None:
    """After a failed load of a local folder: one sentence naming a safetensors file that cannot be read."""
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():  # reading every tensor's bytes finds a truncated file too
                    f.get_slice(key)
        except Exception as broken:  # noqa: BLE001  (the file is named; the library's words follow)
            raise LabError(f"file {shown(str(file), 120)} is not a readable safetensors file "
                           f"({shown(str(broken), 80)}); delete the folder and build or download it again") from err


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
    dtype = kwargs.get("dtype")
    if dtype is not None and not (isinstance(dtype, str) and dtype == "auto"):
        # The lab's own names ("bf16", "fp32") work here as everywhere else in the lab. float8 weights
        # cannot be loaded as a dtype (torch has no float8 storage for from_pretrained to fill).
        kwargs["dtype"] = torch_dtype(dtype_name(dtype, allowed=_BUILD_DTYPES))
    if "device_map" in kwargs:
        _check_device_map(kwargs["device_map"])
    _check_compute_dtype(kwargs.get("quantization_config"))
    kwargs.setdefault("use_safetensors", True)
    return _from_pretrained(AutoModelForCausalLM, name_or_path, kwargs)


def _check_compute_dtype(config: Any) -> None:
    """bitsandbytes multiplies 4-bit weights in ``bnb_4bit_compute_dtype``; an integer dtype there loads without a
    word and computes wrong numbers, so it is refused in one sentence."""
    compute = getattr(config, "bnb_4bit_compute_dtype", None)
    if isinstance(compute, str):
        compute = getattr(torch, compute, compute)
    if isinstance(compute, torch.dtype) and not compute.is_floating_point:
        raise LabError.bad("bnb_4bit_compute_dtype", compute, "use torch.bfloat16, torch.float16 or torch.float32 "
                           "(the dtype the 4-bit weights are multiplied in)", verb="is not a float dtype")


_DEVICE_MAP_WORDS = ("auto", "balanced", "balanced_low_0", "sequential")


def _check_device_map(device_map: Any) -> None:
    """One sentence for a device_map naming a device this machine lacks (else transformers asserts deep inside)."""
    allowed = f"use 'cpu', {', '.join(repr(w) for w in _DEVICE_MAP_WORDS)}, 'cuda[:N]' on a CUDA machine, or a dict"
    if device_map is None or isinstance(device_map, (int, torch.device)) and not isinstance(device_map, bool):
        devices = [] if device_map is None else [device_map]
    elif isinstance(device_map, str):
        devices = [] if device_map in _DEVICE_MAP_WORDS else [device_map]
    elif isinstance(device_map, dict):
        devices = list(device_map.values())
    else:
        raise LabError.bad("device_map", device_map, allowed, verb="is not a device map")
    for device in devices:
        if device in ("disk", "meta") or isinstance(device, int) and not isinstance(device, bool):
            if isinstance(device, int) and not (torch.cuda.is_available() and 0 <= device < torch.cuda.device_count()):
                raise LabError.bad("device_map", device_map, allowed, verb=f"names GPU {device}, which is not here")
            continue
        try:
            kind = torch.device(device).type
        except (RuntimeError, TypeError):
            raise LabError.bad("device_map", device_map, allowed, verb="is not a device map") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise LabError.bad("device_map", device_map, allowed, verb="asks for a CUDA GPU and none is attached")
        if kind == "mps" and not (torch.backends.mps.is_available()):
            raise LabError.bad("device_map", device_map, allowed, verb="asks for Apple's mps and it is not here")
        if kind not in ("cpu", "cuda", "mps"):
            raise LabError.bad("device_map", device_map, allowed, verb=f"names a {kind} device the lab does not use")


def load_tokenizer(name_or_path: str | os.PathLike | None = None, **kwargs):
    """The tokenizer that goes with :func:`load_model`'s model (the embedded one by default)."""
    from transformers import AutoTokenizer

    if isinstance(name_or_path, str) and name_or_path.strip().lower() in PRESETS:
        raise LabError(f"name_or_path {name_or_path!r} is a preset with random weights and no tokenizer; "
                       "feed it token ids, or use load_tokenizer() for the embedded model's")
    return _from_pretrained(AutoTokenizer, name_or_path, dict(kwargs))
