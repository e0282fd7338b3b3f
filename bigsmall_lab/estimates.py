"""Memory estimates: pure functions, numbers in, numbers out.

The talk's rule: memory to load a model ~ parameters x bytes per parameter. For Llama 3.1 8B in
bfloat16 that is 8,030,261,248 x 2 = 16.06 GB, more than a free Colab T4's ~15 GB usable:

>>> weights_bytes("llama-3.1-8b", dtype="bfloat16")
16060522496
>>> kv_cache_bytes("llama-3.1-8b", seq_len=8192)      # 2 x 32 layers x 8 KV heads x 128 x 8192 x 2 B
1073741824

Every byte count goes through the lab's one dtype table (``bigsmall_lab._dtypes``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import torch

from ._dtypes import bytes_per_element, dtype_name
from ._units import parse_size
from .hardware import GPUS, describe
from .zoo._configs import config_dict, meta_model, transformers_config

__all__ = ["CUDA_CONTEXT_BYTES", "Comparison", "MemoryEstimate", "Quantization", "WeightsRow", "activation_bytes",
           "estimate", "kv_cache_bytes", "largest_layer_bytes", "weights_bytes", "weights_table"]

# Float formats a model's weights (and KV cache) can be loaded in.
WEIGHT_DTYPES = ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
# What the CUDA context and cuBLAS workspaces of one process typically take before any tensor:
# ~0.3-0.6 GB depending on GPU and driver. The lab's GPU check measures it on the attached GPU.
CUDA_CONTEXT_BYTES = 500 * 10**6


class Quantization(str, Enum):
    """bitsandbytes formats for nn.Linear weights, as ``BitsAndBytesConfig`` makes them."""

    INT8 = "int8"  # load_in_8bit: int8 weight + one float32 scale per output row (SCB)
    NF4 = "nf4"  # load_in_4bit, nf4: two 4-bit codes per byte + one float32 absmax per 64 weights
    FP4 = "fp4"  # load_in_4bit, fp4: same storage as nf4, another 16-value code book
    NF4_DOUBLE = "nf4-double"  # nf4 + bnb_4bit_use_double_quant: absmax itself stored in 8 bits

    @classmethod
    def parse(cls, value: str | Quantization | None) -> Quantization | None:
        if value is None or isinstance(value, Quantization):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            allowed = ", ".join(q.value for q in cls)
            raise ValueError(f"quantization {value!r} is not known; use None or one of: {allowed}") from None


_BLOCK = 64  # bitsandbytes' 4-bit weight blocksize
_NESTED_BLOCK = 256  # double quantization: one float32 absmax per 256 first-level absmax values
_CODE_4BIT = 16  # float32 entries of the nf4/fp4 code book (quant_map), one per layer
_CODE_NESTED = 256  # float32 entries of the 8-bit dynamic map of nested absmax (+ one float32 offset)


def _linear_bytes(weight_numel: int, out_features: int, quantization: Quantization) -> int:
    """Bytes bitsandbytes stores for one nn.Linear weight (bias excluded: it stays in the compute dtype)."""
    if quantization is Quantization.INT8:
        return weight_numel + 4 * out_features  # int8 weight + float32 SCB per row
    blocks = math.ceil(weight_numel / _BLOCK)
    packed = math.ceil(weight_numel / 2) + 4 * _CODE_4BIT
    if quantization is Quantization.NF4_DOUBLE:
        return packed + blocks + 4 * math.ceil(blocks / _NESTED_BLOCK) + 4 * _CODE_NESTED + 4
    return packed + 4 * blocks


def _matches(name: str, patterns) -> bool:
    from transformers.quantizers.quantizers_utils import should_convert_module

    return bool(patterns) and not should_convert_module(name, list(patterns))


def _param_bytes(model: torch.nn.Module, name: str, numel: int, dtype: str) -> int:
    """Bytes of one parameter in ``dtype``, honouring the modules transformers keeps in float32."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or ()
    strict = getattr(model, "_keep_in_fp32_modules_strict", None) or ()
    module = name.rsplit(".", 1)[0]
    if (dtype == "float16" and _matches(module, keep)) or (dtype in ("float16", "bfloat16") and _matches(module, strict)):
        return numel * 4
    return int(numel * bytes_per_element(dtype))


def weights_bytes(config: Any, dtype: str | torch.dtype = "bfloat16", quantization: str | None = None) -> int:
    """Bytes of the weights as loaded: parameters x bytes per parameter, each tied tensor once.

    ``quantization`` (None, "int8", "nf4", "fp4", "nf4-double") counts what bitsandbytes really
    stores: every nn.Linear except the ones transformers leaves alone (the output embedding
    ``lm_head``, tied weights and ``_keep_in_fp32_modules``) becomes int8 + a float32 scale per row,
    or packed 4-bit + a float32 absmax per 64 weights (8-bit with double quantization) + the code
    book; embeddings, norms and biases stay in ``dtype``. ``get_memory_footprint()`` leaves the 4-bit
    absmax and code books out; this function counts them. Buffers (rotary tables) are not counted:
    checkpoints do not store them.

    >>> weights_bytes("llama-3.1-8b", "bfloat16", "int8")   # embeddings + lm_head stay bf16: 2.1 GB
    9086705664
    >>> weights_bytes("llama-3.1-8b", "bfloat16", "nf4")
    6027761664
    """
    return sum(size for _, size in _parameter_bytes(meta_model(config, dtype=torch.float32), config, dtype, quantization))


def largest_layer_bytes(config: Any, dtype: str | torch.dtype = "bfloat16", quantization: str | None = None) -> int:
    """Bytes of the biggest piece that must stay whole on one device: a module the model lists in
    ``_no_split_modules`` (a decoder layer, with its residual connection) or a lone module such as
    the embedding. Big Model Inference needs this much free on a device to place anything there.
    """
    model = meta_model(config, dtype=torch.float32)
    no_split = set(getattr(model, "_no_split_modules", None) or ())
    classes = {name: type(module).__name__ for name, module in model.named_modules()}
    groups: dict[str, int] = {}
    for name, size in _parameter_bytes(model, config, dtype, quantization):
        parts = name.split(".")[:-1]
        prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
        group = next((p for p in prefixes if classes.get(p) in no_split), ".".join(parts))
        groups[group] = groups.get(group, 0) + size
    return max(groups.values())


def _parameter_bytes(model: torch.nn.Module, config: Any, dtype: str | torch.dtype, quantization: str | None):
    """(parameter name, bytes as loaded) for each parameter of ``config``'s meta ``model``, tied tensors once."""
    dtype = dtype_name(dtype, allowed=WEIGHT_DTYPES)
    quant = Quantization.parse(quantization)
    if quant is not None and "_class_name" in config_dict(config):
        raise ValueError("quantization is counted for transformers models only; this config is a diffusers model")
    skip: set[str] = set()
    if quant is not None:
        from transformers.quantizers.base import get_keys_to_not_convert

        skip = set(get_keys_to_not_convert(model)) | set(getattr(model, "_keep_in_fp32_modules", None) or ())
    counted: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in counted:
                continue
            counted.add(id(param))
            full = f"{module_name}.{param_name}" if module_name else param_name
            quantized = (quant is not None and type(module) is torch.nn.Linear and param_name == "weight"
                         and not _matches(module_name, skip))
            if quantized:
                yield full, _linear_bytes(param.numel(), module.out_features, quant)
            else:
                yield full, _param_bytes(model, full, param.numel(), dtype)


def _text_config(config: Any):
    """The transformers config object whose layers hold the KV cache."""
    cfg = config_dict(config)
    if "model_type" not in cfg:
        raise ValueError("config has no KV cache: it is missing the key 'model_type' (a transformers "
                         "decoder config.json states it)")
    return transformers_config(cfg).get_text_config(decoder=True)


def _kv_layout(config: Any) -> tuple[int, int, list[int | None]]:
    """(KV heads, head dim, per layer: sliding window or None for full attention)."""
    text = _text_config(config)
    for key in ("num_hidden_layers", "num_attention_heads", "hidden_size"):
        if getattr(text, key, None) is None:
            raise ValueError(f"config is missing the key {key!r}, needed to size the KV cache")
    n_heads = text.num_attention_heads
    n_kv_heads = getattr(text, "num_key_value_heads", None) or n_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_heads
    layer_types = getattr(text, "layer_types", None)
    window = getattr(text, "sliding_window", None)
    if layer_types is None:
        layer_types = ["sliding_attention" if window is not None else "full_attention"] * text.num_hidden_layers
    windows = [window if t in ("sliding_attention", "chunked_attention") and window is not None else None
               for t in layer_types]
    return n_kv_heads, head_dim, windows


def kv_cache_bytes(config: Any, seq_len: int, batch_size: int = 1, dtype: str | torch.dtype = "bfloat16") -> int:
    """Bytes of the KV cache after ``seq_len`` tokens: 2 (K and V) x layers x KV heads x head dim x
    tokens x batch x bytes per element.

    Grouped-query attention is honoured (KV heads, not query heads) and an explicit ``head_dim``
    wins over hidden_size / heads. Models with sliding-window layers (Gemma 2 alternates 4096-token
    windows with full attention) are counted as transformers' ``DynamicCache`` allocates them:
    a sliding layer keeps only its last ``sliding_window - 1`` tokens.

    >>> kv_cache_bytes("gemma-2-9b", seq_len=8192) // 2**20   # 21 full + 21 sliding layers
    2015
    """
    for name, value in (("seq_len", seq_len), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} {value!r} must be a positive whole number of tokens / sequences")
    dtype = dtype_name(dtype, allowed=WEIGHT_DTYPES + ("int8", "int4"))
    n_kv_heads, head_dim, windows = _kv_layout(config)
    tokens = sum(seq_len if w is None else min(seq_len, w - 1) for w in windows)
    return int(2 * n_kv_heads * head_dim * tokens * batch_size * bytes_per_element(dtype))


def activation_bytes(config: Any, seq_len: int, batch_size: int = 1, dtype: str | torch.dtype = "bfloat16",
                     all_logits: bool = False) -> int:
    """A forward pass's transient peak, estimated: one MLP block's hidden states
    (batch x seq x (2 x intermediate + hidden)) plus the float32 logits over the vocabulary, for the
    last position only (what ``generate`` computes, ``logits_to_keep=1``) or, with ``all_logits``,
    for every position (a plain ``model(ids)`` call, or training).

    It is an estimate (kernels add workspaces, attention may materialise seq x seq scores); the
    lessons measure the real peak beside it.
    """
    text = _text_config(config)
    dtype = dtype_name(dtype, allowed=WEIGHT_DTYPES)
    intermediate = getattr(text, "intermediate_size", None) or 4 * text.hidden_size
    hidden_states = batch_size * seq_len * (2 * intermediate + text.hidden_size) * bytes_per_element(dtype)
    logits = batch_size * (seq_len if all_logits else 1) * text.vocab_size * 4
    return int(hidden_states + logits)


@dataclass(frozen=True)
class MemoryEstimate:
    """What running a model needs, in bytes; ``total_bytes`` is their sum."""

    config: str
    dtype: str
    quantization: str | None
    seq_len: int
    batch_size: int
    parameters: int
    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    overhead_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.activation_bytes + self.overhead_bytes

    def fits(self, gpu: str | int | float) -> bool:
        """Whether the total fits ``gpu``: a name from ``hardware.GPUS`` ("T4"), a size ("24GB") or bytes."""
        return self.total_bytes <= _capacity(gpu)

    def fits_attached(self) -> bool:
        """Whether it fits what is attached now: the first GPU's free memory, else the available RAM."""
        hw = describe()
        free = hw.gpus[0].free_bytes if hw.gpus else hw.ram_available_bytes
        return self.total_bytes <= free

    def fits_table(self) -> dict[str, bool]:
        return {name: self.fits(name) for name in GPUS}

    def as_dict(self) -> dict:
        return {**asdict(self), "total_bytes": self.total_bytes, "fits": self.fits_table()}


def _capacity(gpu: str | int | float) -> int:
    if isinstance(gpu, str) and gpu in GPUS:
        return GPUS[gpu].usable_bytes
    try:
        return parse_size(gpu, argument="gpu")
    except ValueError:
        raise ValueError(f"gpu {gpu!r} is neither a GPU name ({', '.join(GPUS)}) nor a memory size like '24GB'") from None


def estimate(config: Any, dtype: str | torch.dtype = "bfloat16", quantization: str | None = None,
             seq_len: int = 4096, batch_size: int = 1, overhead_bytes: int = CUDA_CONTEXT_BYTES) -> MemoryEstimate:
    """Weights + KV cache (in ``dtype``) + a forward pass's activations + runtime overhead.

    >>> e = estimate("llama-3.1-8b", seq_len=4096)
    >>> e.fits("T4"), e.fits("L4")
    (False, True)
    """
    from .zoo import count_parameters

    label = config if isinstance(config, str) else str(config_dict(config).get("_name_or_path") or "config")
    quant = Quantization.parse(quantization)
    kv_dtype = dtype_name(dtype, allowed=WEIGHT_DTYPES)
    return MemoryEstimate(
        config=label, dtype=kv_dtype, quantization=quant.value if quant else None, seq_len=seq_len,
        batch_size=batch_size, parameters=count_parameters(config),
        weights_bytes=weights_bytes(config, dtype, quant),
        kv_cache_bytes=kv_cache_bytes(config, seq_len, batch_size, kv_dtype),
        activation_bytes=activation_bytes(config, seq_len, batch_size, kv_dtype),
        overhead_bytes=overhead_bytes,
    )


@dataclass(frozen=True)
class WeightsRow:
    config: str
    dtype: str
    quantization: str | None
    parameters: int
    weights_bytes: int


def weights_table(configs, dtypes=("float32", "bfloat16"), quantizations=(None,)) -> list[WeightsRow]:
    """Weights' bytes of each config in each dtype (x each quantization), exact.

    >>> [r.weights_bytes for r in weights_table(["llama-3.2-1b"], ["float32", "bfloat16"])]
    [4943257600, 2471628800]
    """
    from .zoo import count_parameters

    rows = []
    for config in configs:
        for dtype in dtypes:
            for quant in quantizations:
                rows.append(WeightsRow(str(config), dtype_name(dtype, allowed=WEIGHT_DTYPES),
                                       quant, count_parameters(config), weights_bytes(config, dtype, quant)))
    return rows


@dataclass(frozen=True)
class Comparison:
    """An estimate next to a measurement of the same thing, in bytes.

    >>> Comparison("weights", 100, 102).ratio
    1.02
    """

    label: str
    estimate_bytes: int
    measured_bytes: int
    measured_how: str = ""

    @property
    def ratio(self) -> float:
        """measured / estimate (1.0: the estimate was exact)."""
        return self.measured_bytes / self.estimate_bytes if self.estimate_bytes else math.inf

    def matches(self, tolerance: float = 0.0) -> bool:
        """True when the measurement is within ``tolerance`` (a fraction) of the estimate."""
        return abs(self.measured_bytes - self.estimate_bytes) <= tolerance * abs(self.estimate_bytes)
