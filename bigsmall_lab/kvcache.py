"""The KV cache, run and measured: generate with each cache implementation of transformers, weigh
the cache object, time it, and compare its next-token predictions with the default cache's.

A decoder writes one token at a time, and each new token attends to the keys and values of every
token before it. Keeping them (the *KV cache*) saves recomputing them at every step; it costs
2 (K and V) x layers x KV heads x head dim x tokens x batch x bytes per value, so it grows linearly
with the context. SmolLM2-135M (30 layers, 3 KV heads of 64 dims) in float32 keeps
2 x 30 x 3 x 64 x 4 = 46,080 bytes per token: 45 MiB at 1,024 tokens.

The implementations (:class:`CacheImplementation`, chosen with :class:`CacheSettings`):

==========  ====================================================================================
dynamic     the default: grows by one token per step (``torch.cat``), holds exactly what was seen
static      allocated once for ``max_cache_len`` tokens, filled in place (what ``torch.compile``
            needs: fixed shapes); it holds its full size from the first step
quantized   stores K and V in 4 or 2 bits (quanto, hqq) or fp8; the newest ``residual_length``
            tokens wait in full precision and are quantized with the rest when the window fills
offloaded   keeps one layer's cache on the GPU (and prefetches the next), the rest in CPU memory:
            needs CUDA streams, so a GPU
==========  ====================================================================================

``residual_length`` exactly as transformers 5.24 implements it (measured here, not assumed): the
prompt is quantized at once at the first step; each new token then joins a full-precision window,
and when the window reaches ``residual_length`` tokens the whole cache is re-quantized with them and
the window empties. So with the default 128 a short run keeps most new tokens in full precision and
saves little memory, and a small window means more of the recent context is quantized.

Planner side (pure: configs in, bytes out, built on :func:`bigsmall_lab.estimates.kv_cache_bytes`):
:func:`expected_cache_bytes` (what each implementation should hold, quantization scales included),
:func:`kv_curve`, :func:`attention_variants`, :func:`kv_bytes_per_rank`, :func:`offload_plan`.
They live here, beside the runner that checks them, because they only rephrase ``kv_cache_bytes``
for one implementation each; the general estimate stays in ``estimates``.

Runner side: :func:`generate` (one real ``model.generate`` call with a cache object, timed per
step, weighed from the cache object by :func:`cache_bytes`), :func:`compare` (several caches on one
shared prompt: teacher-forced KL / top-1 against the dynamic cache, then free generation),
:func:`recompute_vs_cache` (``use_cache=False``, timed).

>>> s = CacheSettings.parse("quanto-int4", residual_length=32)
>>> s.label
'quanto int4, residual 32'
>>> s.generate_kwargs()
{'cache_implementation': 'quantized', 'cache_config': {'backend': 'quanto', 'nbits': 4, 'residual_length': 32}}
>>> expected_cache_bytes("bigsmall-tiny", "dynamic", seq_len=1024, dtype="float32")  # 2 x 6 x 4 x 32 x 1024 x 4
6291456
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import math
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import torch

from . import _compat
from ._dtypes import bytes_per_element, dtype_name
from ._errors import LabError, closest, enum_value, shown, token_ids, whole_number
from ._units import MiB
from .estimates import kv_cache_bytes, resolve
from .quality import Agreement, agreement

__all__ = [
    "EXTRA_INSTALL", "NAMED_CACHES", "CacheBytes", "CacheImplementation", "CacheRun", "CacheSettings", "GenerationRun",
    "KVPoint", "OffloadPlan", "Prefill", "QuantBackend", "RankPoint", "RecomputeResult", "attention_variants",
    "cache_bytes", "compare", "expected_cache_bytes", "generate", "kv_bytes_per_rank", "kv_curve", "kv_per_rank_curve",
    "make_cache", "offload_plan", "positions_processed", "prefill", "recompute_vs_cache", "residual_tokens_after",
    "runnable",
]

EXTRA_INSTALL = 'pip install "bigsmall-lab[kvcache]"'


class CacheImplementation(str, Enum):
    """transformers' ``cache_implementation`` values the lab runs (``generate(..., cache_implementation=...)``)."""

    DYNAMIC = "dynamic"
    STATIC = "static"
    QUANTIZED = "quantized"
    OFFLOADED = "offloaded"


class QuantBackend(str, Enum):
    """Backends of ``QuantizedCache``: optimum-quanto and HQQ store integers in groups, fp8 one float8 per value."""

    QUANTO = "quanto"
    HQQ = "hqq"
    FP8 = "fp8"


# nbits each backend accepts (transformers' own checks, stated once here so a learner gets one sentence).
_NBITS = {QuantBackend.QUANTO: (2, 4), QuantBackend.HQQ: (1, 2, 3, 4, 8), QuantBackend.FP8: (8,)}
# Python module and pip name of each backend; fp8 needs only torch.
_PACKAGES = {QuantBackend.QUANTO: ("optimum.quanto", "optimum-quanto"), QuantBackend.HQQ: ("hqq", "hqq")}


@functools.cache
def _library_default(name: str) -> int:
    """A default of transformers' group-wise quantized cache (``residual_length`` 128, ``q_group_size``
    64 in 5.x), read from its signature so the lab follows the library."""
    from transformers import QuantizedCache, cache_utils

    for owner in (getattr(cache_utils, "QuantizedLayer", None), QuantizedCache):
        param = inspect.signature(owner.__init__).parameters.get(name) if owner is not None else None
        if param is not None and isinstance(param.default, int) and not isinstance(param.default, bool):
            return param.default
    raise LabError(f"this transformers has no default for the quantized cache's {name}; pass {name}= explicitly")

# Names a learner can pass instead of building CacheSettings by hand.
NAMED_CACHES: dict[str, dict] = {
    "dynamic": dict(implementation=CacheImplementation.DYNAMIC),
    "static": dict(implementation=CacheImplementation.STATIC),
    "offloaded": dict(implementation=CacheImplementation.OFFLOADED),
    "quanto-int4": dict(implementation=CacheImplementation.QUANTIZED, backend=QuantBackend.QUANTO, nbits=4),
    "quanto-int2": dict(implementation=CacheImplementation.QUANTIZED, backend=QuantBackend.QUANTO, nbits=2),
    "hqq-int4": dict(implementation=CacheImplementation.QUANTIZED, backend=QuantBackend.HQQ, nbits=4),
    "hqq-int2": dict(implementation=CacheImplementation.QUANTIZED, backend=QuantBackend.HQQ, nbits=2),
    "fp8": dict(implementation=CacheImplementation.QUANTIZED, backend=QuantBackend.FP8),
}


def _installed(module: str) -> bool:
    """Whether a backend's Python package can be imported (find_spec: nothing is imported yet)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing
        return False


@dataclass(frozen=True)
class CacheSettings:
    """Which KV cache to generate with, checked when built (one sentence for a bad value).

    ``backend`` / ``nbits`` / ``residual_length`` / ``q_group_size`` are for the quantized cache only
    (defaults: quanto, 4 bits, transformers' 128 and 64; fp8 takes none of them); ``max_cache_len``
    is for the static cache only (default: prompt + new tokens, as ``generate`` sizes it).

    >>> CacheSettings("quantized", backend="hqq", nbits=2).label
    'hqq int2, residual 128'
    >>> CacheSettings("quantized", backend="quanto", nbits=3)
    Traceback (most recent call last):
    ...
    bigsmall_lab._errors.LabError: nbits 3 is not supported by the quanto backend; use 2 or 4
    """

    implementation: CacheImplementation | str = CacheImplementation.DYNAMIC
    backend: QuantBackend | str | None = None
    nbits: int | None = None
    residual_length: int | None = None
    q_group_size: int | None = None
    max_cache_len: int | None = None

    def __post_init__(self) -> None:
        kind = enum_value(CacheImplementation, self.implementation, "implementation", extra=list(NAMED_CACHES)[3:])
        object.__setattr__(self, "implementation", kind)
        if kind is not CacheImplementation.QUANTIZED:
            for name in ("backend", "nbits", "residual_length", "q_group_size"):
                if getattr(self, name) is not None:
                    raise LabError(f"{name} {shown(getattr(self, name))} is only for the quantized cache; "
                                   f"the {kind.value} cache takes none (use CacheSettings('quantized', ...))")
        if self.max_cache_len is not None:
            if kind is not CacheImplementation.STATIC:
                raise LabError(f"max_cache_len {shown(self.max_cache_len)} is only for the static cache; the "
                               f"{kind.value} cache grows as it needs")
            object.__setattr__(self, "max_cache_len", whole_number(self.max_cache_len, "max_cache_len"))
        if kind is CacheImplementation.QUANTIZED:
            self._check_quantized()

    def _check_quantized(self) -> None:
        backend = enum_value(QuantBackend, self.backend if self.backend is not None else QuantBackend.QUANTO, "backend")
        object.__setattr__(self, "backend", backend)
        if backend.value not in _compat.quantized_cache_backends():
            import transformers

            raise LabError(f"backend {backend.value!r} is not in transformers {transformers.__version__}'s "
                           f"QuantizedCache (it has: {', '.join(_compat.quantized_cache_backends())}); upgrade "
                           "transformers or pick another backend")
        if backend in _PACKAGES and not _installed(_PACKAGES[backend][0]):
            raise LabError(f"backend {backend.value!r} needs the package {_PACKAGES[backend][1]}, which is not "
                           f"installed; install the lab's KV-cache extra: {EXTRA_INSTALL}")
        allowed = _NBITS[backend]
        if backend is QuantBackend.FP8:
            for name in ("residual_length", "q_group_size"):
                if getattr(self, name) is not None:
                    raise LabError(f"{name} {shown(getattr(self, name))} is not used by the fp8 backend: it stores "
                                   "every token in float8 at once with one scale per tensor; use quanto or hqq")
            if self.nbits not in (None, 8):
                raise LabError(f"nbits {shown(self.nbits)} is not supported by the fp8 backend; it stores 8 bits "
                               "(leave nbits out, or use quanto/hqq for 4 or 2 bits)")
            object.__setattr__(self, "nbits", None)
            return
        nbits = 4 if self.nbits is None else self.nbits
        if isinstance(nbits, bool) or nbits not in allowed:
            choices = " or ".join(map(str, allowed)) if len(allowed) == 2 else "one of: " + ", ".join(map(str, allowed))
            raise LabError(f"nbits {shown(nbits)} is not supported by the {backend.value} backend; use {choices}")
        object.__setattr__(self, "nbits", int(nbits))
        for name in ("residual_length", "q_group_size"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, whole_number(getattr(self, name), name))

    # -- reading the settings --------------------------------------------------------------------

    @classmethod
    def parse(cls, cache: str | CacheSettings | CacheImplementation, **overrides: Any) -> CacheSettings:
        """Settings from a name in :data:`NAMED_CACHES` ('quanto-int4', 'fp8', 'static' ...), an
        implementation name, or settings (returned with ``overrides`` applied)."""
        if isinstance(cache, CacheSettings):
            return replace(cache, **overrides) if overrides else cache
        if isinstance(cache, CacheImplementation):
            return cls(cache, **overrides)
        if isinstance(cache, str):
            key = cache.strip().lower().replace("_", "-").replace(" ", "-")
            if key in NAMED_CACHES:
                return cls(**{**NAMED_CACHES[key], **overrides})
            if key == CacheImplementation.QUANTIZED.value:
                return cls(CacheImplementation.QUANTIZED, **overrides)
        names = [*NAMED_CACHES, "quantized"]
        hint = closest(cache, names) if isinstance(cache, str) else ""
        raise LabError(f"cache {shown(cache)} is not a cache implementation{hint}; use one of: {', '.join(names)}")

    @property
    def name(self) -> str:
        """The short name: 'dynamic', 'static', 'offloaded', 'quanto-int4', 'hqq-int2', 'fp8' ..."""
        if not self.is_quantized:
            return self.implementation.value
        if self.backend is QuantBackend.FP8:
            return "fp8"
        return f"{self.backend.value}-int{self.nbits}"

    @property
    def is_quantized(self) -> bool:
        return self.implementation is CacheImplementation.QUANTIZED

    @property
    def effective_residual_length(self) -> int | None:
        """The full-precision window of a group-wise quantized cache (None for others, fp8 included)."""
        if not self.is_quantized or self.backend is QuantBackend.FP8:
            return None
        return self.residual_length if self.residual_length is not None else _library_default("residual_length")

    @property
    def effective_group_size(self) -> int | None:
        if not self.is_quantized or self.backend is QuantBackend.FP8:
            return None
        return self.q_group_size if self.q_group_size is not None else _library_default("q_group_size")

    @property
    def label(self) -> str:
        if self.implementation is CacheImplementation.STATIC and self.max_cache_len:
            return f"static ({self.max_cache_len:,} tokens)"
        if not self.is_quantized:
            return self.implementation.value
        if self.backend is QuantBackend.FP8:
            return "fp8 (e4m3)"
        text = f"{self.backend.value} int{self.nbits}, residual {self.effective_residual_length}"
        if self.q_group_size is not None:
            text += f", groups of {self.q_group_size}"
        return text

    def generate_kwargs(self) -> dict:
        """The ``generate()`` keywords that ask for this cache: the one library call a lesson shows."""
        kwargs: dict[str, Any] = {"cache_implementation": self.implementation.value}
        if self.is_quantized:
            config: dict[str, Any] = {"backend": self.backend.value}
            for name in ("nbits", "residual_length", "q_group_size"):
                if getattr(self, name) is not None:
                    config[name] = getattr(self, name)
            kwargs["cache_config"] = config
        return kwargs


def _settings(cache: Any) -> CacheSettings:
    return CacheSettings.parse(cache)


def runnable(caches: Sequence[Any]) -> list[CacheSettings]:
    """The caches of ``caches`` this installation can run, as settings; for each one it cannot (a
    backend this transformers lacks, like fp8 before 5.2x; a backend package not installed) one
    sentence is printed instead of an error deep inside a comparison.

    >>> [s.name for s in runnable(["dynamic", "quanto-int4"])]
    ['dynamic', 'quanto-int4']
    """
    kept = []
    for cache in caches:
        try:
            kept.append(CacheSettings.parse(cache))
        except LabError as err:
            print(f"skipped {cache!r}: {err}")
    return kept


# =============================================================================================
# Planner side: what each cache should hold (pure, from configs)


def _layout(config: Any) -> tuple[int, int, int, int]:
    """(layers, attention heads, KV heads, head dim) of a config."""
    text = resolve(config).text_config
    if text is None:
        raise LabError(f"config {shown(config)} is a diffusers model: it keeps no KV cache")
    n_heads = text.num_attention_heads
    n_kv = getattr(text, "num_key_value_heads", None) or n_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // n_heads
    return int(text.num_hidden_layers), int(n_heads), int(n_kv), int(head_dim)


def residual_tokens_after(updates: Sequence[int], residual_length: int) -> int:
    """Tokens left in the full-precision window of a group-wise quantized cache after ``updates``
    (tokens added per step, the prompt first), as transformers 5.24 runs it: the first update is
    quantized whole; later ones join the window, and a window that reaches ``residual_length`` is
    quantized with everything else and emptied.

    >>> residual_tokens_after([1023] + [1] * 40, residual_length=32)   # 40 new tokens: flushed once at 32
    8
    """
    residual_length = whole_number(residual_length, "residual_length")
    window = 0
    for i, n in enumerate(updates):
        n = whole_number(n, "updates")
        if i == 0:
            continue  # the first update (the prompt) is quantized at once
        window = 0 if window + n >= residual_length else window + n
    return window


def expected_cache_bytes(config: Any, cache: str | CacheSettings = "dynamic", seq_len: int = 1024,
                         batch_size: int = 1, dtype: str | torch.dtype = "bfloat16",
                         residual_tokens: int | None = None) -> int:
    """Bytes the cache object of ``cache`` holds after ``seq_len`` tokens, from :func:`kv_cache_bytes`.

    - dynamic, offloaded (all layers, wherever they sit): ``kv_cache_bytes(config, seq_len)``;
    - static: ``kv_cache_bytes(config, max_cache_len)``: allocated whole at the first step;
    - quanto / hqq: the quantized tokens at ``nbits`` per value, plus a scale and a zero point in
      ``dtype`` per group of ``q_group_size`` values, plus ``residual_tokens`` in full precision;
    - fp8: one byte per value plus one float32 scale per K and per V tensor of each layer.

    bigsmall-tiny (6 layers, 4 KV heads x 32 dims = 128 values per token for K, as many for V) in
    float32, quanto int4, 204 tokens of which 4 wait in the window: 2 x 6 x 128 x 200 values at half
    a byte (153,600) + a scale and a zero point of 4 bytes per 64 of them (38,400) + the window,
    2 x 6 x 128 x 4 x 4 bytes (24,576):

    >>> expected_cache_bytes("bigsmall-tiny", "quanto-int4", seq_len=204, dtype="float32", residual_tokens=4)
    216576
    """
    settings = _settings(cache)
    seq_len = whole_number(seq_len, "seq_len")
    dtype = dtype_name(dtype)
    kind = settings.implementation
    if kind is CacheImplementation.STATIC:
        if settings.max_cache_len is None:
            raise LabError("cache 'static' needs max_cache_len to be sized: pass CacheSettings('static', "
                           "max_cache_len=N) (generate uses prompt + new tokens)")
        return kv_cache_bytes(config, settings.max_cache_len, batch_size, dtype)
    if not settings.is_quantized:
        return kv_cache_bytes(config, seq_len, batch_size, dtype)
    if settings.backend is QuantBackend.FP8:
        layers = _layout(config)[0]
        scales = 2 * layers * int(bytes_per_element("float32"))  # one float32 scale per K and per V tensor
        return kv_cache_bytes(config, seq_len, batch_size, "float8_e4m3fn") + scales
    if residual_tokens is None:
        raise LabError("residual_tokens is needed for a quanto/hqq cache: how many of the seq_len tokens wait in "
                       "full precision (residual_tokens_after(...) works it out)")
    residual = whole_number(residual_tokens, "residual_tokens", minimum=0)
    if residual > seq_len:
        raise LabError(f"residual_tokens {residual} is more than seq_len {seq_len}")
    layers, _, n_kv, head_dim = _layout(config)
    group = settings.effective_group_size
    if (n_kv * head_dim) % group:
        raise LabError(f"q_group_size {group} does not divide this model's {n_kv} KV heads x {head_dim} dims = "
                       f"{n_kv * head_dim} values per token; pick a divisor of {n_kv * head_dim}")
    quantized = seq_len - residual
    total = 0
    if quantized:
        tensors = 2 * layers  # one K and one V tensor per layer, each quantized on its own
        values = kv_cache_bytes(config, quantized, batch_size, "int8") // tensors  # int8: one byte = one value
        total += tensors * _packed_bytes(settings.backend, settings.nbits, values, group)
        total += kv_cache_bytes(config, quantized, batch_size, dtype) * 2 // group  # a scale + a zero per group
    if residual:
        total += kv_cache_bytes(config, residual, batch_size, dtype)
    return int(total)


def _packed_bytes(backend: QuantBackend, nbits: int, values: int, group: int) -> int:
    """Bytes of ``values`` integers of ``nbits`` as each backend packs them (groups of ``group``).

    quanto lays the groups out as rows of ``group`` values and packs 8 / nbits rows into each row of
    bytes, padding the last one; hqq packs inside each group (a group of 64 4-bit values is 32
    bytes), 3-bit values ten to an int32.
    """
    rows = values // group
    if backend is QuantBackend.QUANTO:
        return math.ceil(rows * nbits / 8) * group
    if nbits == 3:
        return rows * math.ceil(group / 10) * 4
    return rows * math.ceil(group * nbits / 8)


@dataclass(frozen=True)
class KVPoint:
    """One point of a KV-cache curve: ``label``'s cache after ``seq_len`` tokens x ``batch_size``."""

    label: str
    seq_len: int
    batch_size: int
    kv_bytes: int
    n_kv_heads: int


def attention_variants(config: Any = "llama-3.1-8b") -> dict[str, dict]:
    """``config`` as multi-head (every query head has its own K and V), as published (grouped-query,
    if it is) and as multi-query (one K/V head): the same config dict with ``num_key_value_heads``
    changed. Only the cache differs; a config with its KV heads changed is still just a config.

    >>> {k: v["num_key_value_heads"] for k, v in attention_variants("llama-3.1-8b").items()}
    {'multi-head (MHA, 32 KV heads)': 32, 'grouped-query (GQA, 8 KV heads)': 8, 'multi-query (MQA, 1 KV head)': 1}
    """
    from .zoo import config_dict

    cfg = config_dict(config)
    _, n_heads, n_kv, head_dim = _layout(config)
    base = {**cfg, "head_dim": head_dim}  # keep the head size when the head count changes
    out = {f"multi-head (MHA, {n_heads} KV heads)": {**base, "num_key_value_heads": n_heads}}
    if 1 < n_kv < n_heads:
        out[f"grouped-query (GQA, {n_kv} KV heads)"] = {**base, "num_key_value_heads": n_kv}
    out["multi-query (MQA, 1 KV head)"] = {**base, "num_key_value_heads": 1}
    return out


def kv_curve(configs: Mapping[str, Any] | Sequence[Any], seq_lens: Sequence[int], batch_sizes: Sequence[int] = (1,),
             dtype: str | torch.dtype = "bfloat16", within_context: bool = True) -> list[KVPoint]:
    """:func:`kv_cache_bytes` for every config x context length x batch size (the points a chart draws).

    ``within_context``: leave out the context lengths beyond what a model was trained for (its config's
    ``max_position_embeddings``: Gemma 2 9B 8,192, Mistral 7B v0.3 32,768): a cache there is computable,
    but the model does not work there.

    >>> [p.kv_bytes for p in kv_curve(["llama-3.1-8b"], [1024, 2048])]   # linear in the context
    [134217728, 268435456]
    >>> [p.seq_len for p in kv_curve(["gemma-2-9b"], [4096, 8192, 16384])]
    [4096, 8192]
    """
    if not isinstance(within_context, bool):
        raise LabError.bad("within_context", within_context, "use True or False", verb="is not a flag")
    items = configs.items() if isinstance(configs, Mapping) else [(str(c), c) for c in configs]
    points = []
    for label, config in items:
        config = resolve(config)  # once: a config dict would be rebuilt on the meta device per point
        n_kv = _layout(config)[2]
        trained = getattr(config.text_config, "max_position_embeddings", None) if within_context else None
        for batch in batch_sizes:
            for n in seq_lens:
                if trained and int(n) > trained:
                    continue
                points.append(KVPoint(label, int(n), int(batch), kv_cache_bytes(config, n, batch, dtype), n_kv))
    return points


def kv_bytes_per_rank(config: Any, seq_len: int, tp_size: int, batch_size: int = 1,
                      dtype: str | torch.dtype = "bfloat16") -> int:
    """KV-cache bytes on one GPU when tensor parallelism splits ``config`` over ``tp_size`` ranks.

    Each rank keeps the K and V of the heads it computes: KV heads / ``tp_size`` of them while there
    are at least as many KV heads as ranks. With more ranks than KV heads, a KV head cannot be split:
    each is replicated on several ranks and every rank still holds one, so the per-GPU cache stops
    shrinking (vLLM does this; the first published Llama 3.1 405B config said 16 KV heads, later 8).

    >>> [kv_bytes_per_rank("llama-3.1-405b", 131072, tp) // 2**30 for tp in (1, 8, 16)]
    [63, 7, 7]
    """
    from .zoo import config_dict

    tp_size = whole_number(tp_size, "tp_size")
    _, _, n_kv, head_dim = _layout(config)
    per_rank = math.ceil(n_kv / tp_size)
    cfg = {**config_dict(config), "num_key_value_heads": per_rank, "head_dim": head_dim}
    return kv_cache_bytes(cfg, seq_len, batch_size, dtype)


@dataclass(frozen=True)
class RankPoint:
    """One GPU's KV cache when ``label`` is split over ``tp_size`` ranks (:func:`kv_bytes_per_rank`)."""

    label: str
    tp_size: int
    kv_bytes: int
    kv_heads_per_rank: int
    replicated: bool  # more ranks than KV heads: each head is held by several ranks


def kv_per_rank_curve(configs: Mapping[str, Any] | Sequence[Any], seq_len: int, tp_sizes: Sequence[int],
                      batch_size: int = 1, dtype: str | torch.dtype = "bfloat16") -> list[RankPoint]:
    """:func:`kv_bytes_per_rank` for every config x tensor-parallel size (the points a chart draws).

    >>> [(p.tp_size, p.kv_heads_per_rank, p.replicated) for p in kv_per_rank_curve(["llama-3.1-8b"], 1024, [4, 16])]
    [(4, 2, False), (16, 1, True)]
    """
    items = configs.items() if isinstance(configs, Mapping) else [(str(c), c) for c in configs]
    points = []
    for label, config in items:
        n_kv = _layout(config)[2]
        for tp in tp_sizes:
            tp = whole_number(tp, "tp_sizes")
            points.append(RankPoint(label, tp, kv_bytes_per_rank(config, seq_len, tp, batch_size, dtype),
                                    math.ceil(n_kv / tp), tp > n_kv))
    return points


@dataclass(frozen=True)
class OffloadPlan:
    """Where an offloaded dynamic cache keeps its bytes at the peak: the layer being computed and the
    next one (prefetched on a side CUDA stream) on the GPU, every other layer in CPU memory."""

    label: str
    seq_len: int
    total_bytes: int
    layers: int
    gpu_bytes: int
    cpu_bytes: int

    @property
    def gpu_fraction(self) -> float:
        return self.gpu_bytes / self.total_bytes


def offload_plan(config: Any, seq_len: int, batch_size: int = 1, dtype: str | torch.dtype = "bfloat16",
                 label: str | None = None) -> OffloadPlan:
    """The GPU/CPU split of ``DynamicCache(offloading=True)`` (``cache_implementation="offloaded"``).

    >>> p = offload_plan("llama-3.1-8b", 131072)
    >>> p.gpu_bytes // 2**20, p.cpu_bytes // 2**30     # 2 of 32 layers on the GPU
    (1024, 15)
    """
    total = kv_cache_bytes(config, seq_len, batch_size, dtype)
    layers = _layout(config)[0]
    on_gpu = total * min(2, layers) // layers
    return OffloadPlan(label or str(config), int(seq_len), total, layers, on_gpu, total - on_gpu)


# =============================================================================================
# Runner side: caches built, filled, weighed, timed


def _config_of(model_or_config: Any):
    config = getattr(model_or_config, "config", model_or_config)
    if not hasattr(config, "get_text_config"):
        raise LabError.bad("model", model_or_config, "pass a loaded transformers model (or its config object)",
                           verb="is not a model")
    return config


def _needs_cuda(settings: CacheSettings, model_or_config: Any = None, warn_race: bool = True) -> None:
    """The offloaded cache moves each layer's K/V between the MODEL's GPU and the CPU over CUDA streams: a GPU
    in the machine is not enough, the model must be on it (a config alone is checked for CUDA only).
    ``warn_race``: warn where transformers lacks the prefetch stream's wait (once per cache built: the
    runners check early without it, then :func:`make_cache` warns)."""
    if settings.implementation is not CacheImplementation.OFFLOADED:
        return
    if not torch.cuda.is_available():
        raise LabError("the offloaded cache needs a CUDA GPU (it moves each layer's cache over CUDA streams); on "
                       "this CPU, kvcache.offload_plan(config, seq_len) shows where its bytes would go")
    if isinstance(model_or_config, torch.nn.Module) and _device(model_or_config).type != "cuda":
        raise LabError(f"the offloaded cache needs the model on a CUDA GPU (it moves each layer's cache between "
                       f"the model's GPU and the CPU); this model is on {_device(model_or_config)}: move it with "
                       f"model.to('cuda') or load it with device_map='cuda'")
    if warn_race:
        _compat.offloaded_cache_race()  # transformers < 5.20: one warning sentence, the run goes on (its tokens are compared)


def make_cache(model_or_config: Any, cache: str | CacheSettings = "dynamic", max_cache_len: int | None = None):
    """A fresh cache object of transformers for ``cache`` (what ``generate`` builds from
    ``cache_implementation``). ``max_cache_len`` sizes a static cache that has none in its settings."""
    from transformers import DynamicCache, QuantizedCache, StaticCache

    settings = _settings(cache)
    config = _config_of(model_or_config)
    kind = settings.implementation
    _needs_cuda(settings, model_or_config)
    if kind is CacheImplementation.DYNAMIC:
        return DynamicCache(config=config)
    if kind is CacheImplementation.OFFLOADED:
        return DynamicCache(config=config, offloading=True)
    if kind is CacheImplementation.STATIC:
        length = settings.max_cache_len or max_cache_len
        if length is None:
            raise LabError("cache 'static' needs max_cache_len (the tokens it allocates at once); pass "
                           "max_cache_len= or CacheSettings('static', max_cache_len=N)")
        return StaticCache(config=config, max_cache_len=whole_number(length, "max_cache_len"))
    if settings.backend is QuantBackend.FP8:
        return QuantizedCache(backend="fp8", config=config)
    text = config.get_text_config(decoder=True)
    n_kv = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    group = settings.effective_group_size
    if (n_kv * head_dim) % group:
        raise LabError(f"q_group_size {group} does not divide this model's {n_kv} KV heads x {head_dim} dims = "
                       f"{n_kv * head_dim} values per token; pick a divisor of {n_kv * head_dim}")
    kwargs = {k: getattr(settings, k) for k in ("nbits", "residual_length", "q_group_size") if getattr(settings, k)}
    return QuantizedCache(backend=settings.backend.value, config=config, **kwargs)


@dataclass(frozen=True)
class CacheBytes:
    """What a cache object holds, weighed tensor by tensor (each storage once).

    ``full_precision_bytes``: keys/values in the model's dtype (all of a dynamic or static cache; the
    window of a quantized one); ``quantized_bytes``: packed integers or float8 values;
    ``scale_bytes``: the scales and zero points (shifts) that dequantize them.
    """

    total_bytes: int
    full_precision_bytes: int
    quantized_bytes: int
    scale_bytes: int
    seq_len: int
    residual_tokens: int | None
    by_device: dict[str, int] = field(default_factory=dict)

    @property
    def total_mib(self) -> float:
        return self.total_bytes / MiB


def _leaves(obj: Any, role: str) -> list[tuple[str, torch.Tensor]]:
    """(role, tensor) for every plain tensor inside a quantized state: a quanto QTensor (its
    ``_data`` holds the values, the rest are scales and shifts), an HQQ (data, meta) pair, an fp8
    (data, scale) pair."""
    if isinstance(obj, torch.Tensor):
        flatten = getattr(obj, "__tensor_flatten__", None)
        if type(obj) is not torch.Tensor and callable(flatten):
            names, _ = flatten()
            out = []
            for name in names:
                out += _leaves(getattr(obj, name), role if name == "_data" else "scale")
            return out
        return [(role, obj)]
    if isinstance(obj, (tuple, list)):
        out = []
        for i, item in enumerate(obj):
            out += _leaves(item, role if i == 0 else "scale")
        return out
    if isinstance(obj, dict):
        return [leaf for value in obj.values() for leaf in _leaves(value, "scale")]
    return []


def cache_bytes(cache: Any) -> CacheBytes:
    """Weigh a transformers cache object (or the one a ``generate(..., return_dict_in_generate=True)``
    output holds: ``out.cache``, ``out.past_key_values`` before transformers 5.2x): every tensor its
    layers hold, by role and by device.

    >>> from transformers import DynamicCache
    >>> c = DynamicCache()
    >>> _ = c.update(torch.zeros(1, 2, 10, 8), torch.zeros(1, 2, 10, 8), 0)   # 2 x 160 float32
    >>> cache_bytes(c).total_bytes
    1280
    """
    if getattr(cache, "layers", None) is None and _compat.generated_cache(cache) is not None:
        cache = _compat.generated_cache(cache)  # a generate(..., return_dict_in_generate=True) output
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise LabError.bad("cache", cache, "pass a transformers Cache object (DynamicCache, StaticCache, "
                                           "QuantizedCache) or a generate output that holds one", verb="is not a cache")
    seen: set[tuple[str, int]] = set()
    totals = {"full": 0, "data": 0, "scale": 0}
    by_device: dict[str, int] = {}
    residual: int | None = None
    for layer in layers:
        tensors = [("full", getattr(layer, "keys", None)), ("full", getattr(layer, "values", None))]
        for name in ("_quantized_keys", "_quantized_values"):
            state = getattr(layer, name, None)
            if state is not None:
                tensors += _leaves(state, "data")
        for role, tensor in tensors:
            if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta":
                continue
            storage = tensor.untyped_storage()
            key = (str(tensor.device), storage.data_ptr())
            if key in seen or storage.nbytes() == 0:
                continue
            seen.add(key)
            totals[role] += storage.nbytes()
            by_device[str(tensor.device)] = by_device.get(str(tensor.device), 0) + storage.nbytes()
        if hasattr(layer, "residual_length") and isinstance(getattr(layer, "keys", None), torch.Tensor):
            keys = layer.keys
            residual = max(residual or 0, int(keys.shape[-2]) if keys.dim() == 4 else 0)
    seq_len = cache.get_seq_length()
    return CacheBytes(sum(totals.values()), totals["full"], totals["data"], totals["scale"],
                      int(seq_len), residual, by_device)


@dataclass(frozen=True)
class Prefill:
    """The prompt run once: its keys and values, copied into each cache under comparison, and the
    logits of its last position (which pick the first new token).

    A cache's first update receives exactly these tensors whatever its kind (attention over the
    prompt uses the fresh, unquantized states, and nothing is cached yet), so copying them into a
    fresh cache gives the cache ``generate`` would build, and the first new token is the one it
    would pick; done once instead of once per cache. ``keys_values``: per layer
    (batch, KV heads, prompt tokens, head dim).
    """

    ids: torch.Tensor
    keys_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] = field(repr=False)
    next_logits: torch.Tensor = field(repr=False)  # (batch, vocab), float32
    seconds: float

    @property
    def cached_tokens(self) -> int:
        return int(self.ids.shape[1])


def _device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters())
    return param.device if param.device.type != "meta" else torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def prefill(model: torch.nn.Module, ids: torch.Tensor) -> Prefill:
    """Run the prompt ``ids`` once through a dynamic cache; keep its K/V and its last position's logits."""
    from transformers import DynamicCache

    ids = token_ids(ids, minimum=1).to(_device(model))
    cache = DynamicCache(config=model.config)
    _sync(ids.device)
    start = time.perf_counter()
    out = model(ids, **{_compat.cache_argument(model): cache}, use_cache=True, logits_to_keep=1)
    _sync(ids.device)
    seconds = time.perf_counter() - start
    keys_values = tuple((layer.keys, layer.values) for layer in cache.layers)
    return Prefill(ids, keys_values, out.logits[:, -1].float(), seconds)


def _fill(cache: Any, pre: Prefill) -> Any:
    positions = torch.arange(pre.cached_tokens, device=pre.ids.device)
    for index, (keys, values) in enumerate(pre.keys_values):
        # The dict is what transformers <= 5.17 layers read the positions from; 5.2x ignores it.
        cache.update(keys, values, index, {"cache_position": positions})
    return cache


class _StepClock:
    """A stopping criterion that never stops: it records when each new token arrives (and lets a
    caller look at the cache then). ``generate`` calls it once per generated token."""

    def __init__(self, cache: Any = None, on_step: Callable[[int, Any], None] | None = None,
                 trace_bytes: bool = False, first_step: int = 1):
        self.cache, self.on_step, self.trace_bytes = cache, on_step, trace_bytes
        self.first_step = first_step
        self.times: list[float] = []
        self.bytes_trace: list[int] = []

    def tick(self) -> None:
        self.times.append(time.perf_counter())
        if self.trace_bytes and self.cache is not None:
            self.bytes_trace.append(cache_bytes(self.cache).total_bytes)
        if self.on_step is not None:
            self.on_step(self.first_step + len(self.times) - 1, self.cache)

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        self.tick()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _stopping(clock: _StepClock):
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Clock(StoppingCriteria):  # transformers checks the type
        def __call__(self, input_ids, scores, **kwargs):
            return clock(input_ids, scores, **kwargs)

    return StoppingCriteriaList([_Clock()])


@dataclass
class GenerationRun:
    """One greedy generation with one cache, measured.

    ``decode_tokens_per_s``: new tokens per second after the first one (batch x (n - 1) / time), the
    rate the cache decides; ``first_token_s``: the prompt's pass (shared between caches when
    ``prefill_shared``). ``estimate_bytes``: :func:`kv_cache_bytes` for the tokens held, in the
    model's dtype (the full-precision cache); ``expected_bytes``: :func:`expected_cache_bytes` for
    this implementation.
    """

    settings: CacheSettings
    prompt_tokens: int
    new_tokens: int
    batch_size: int
    token_ids: list[list[int]]
    text: str | None
    wall_s: float
    first_token_s: float
    decode_tokens_per_s: float
    step_s: list[float]
    cache: CacheBytes
    estimate_bytes: int
    expected_bytes: int
    bytes_trace: list[int] = field(default_factory=list)
    cuda_peak_bytes: int | None = None
    prefill_shared: bool = False

    @property
    def label(self) -> str:
        return self.settings.label

    @property
    def ratio(self) -> float:
        """Measured cache bytes / the full-precision estimate (1.0 dynamic; < 1 quantized; > 1 static)."""
        return self.cache.total_bytes / self.estimate_bytes

    @property
    def matches_expected(self) -> bool:
        return self.cache.total_bytes == self.expected_bytes


_specs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _spec(model: torch.nn.Module):
    """The model's config resolved once (a config object would be rebuilt on the meta device per call)."""
    if model not in _specs:
        _specs[model] = resolve(model.config)
    return _specs[model]


def _sized(settings: CacheSettings, length: int) -> CacheSettings:
    """A static cache's settings with the length ``generate`` gives it when none is set."""
    if settings.implementation is CacheImplementation.STATIC and settings.max_cache_len is None:
        return replace(settings, max_cache_len=length)
    return settings


def _expected(model: torch.nn.Module, settings: CacheSettings, cache: CacheBytes, batch: int,
              updates: Sequence[int]) -> int:
    residual = None
    if settings.effective_residual_length is not None:
        residual = residual_tokens_after(updates, settings.effective_residual_length)
    return expected_cache_bytes(_spec(model), settings, cache.seq_len, batch, model.dtype, residual)


def _special_ids(model: torch.nn.Module) -> tuple[int | None, list[int]]:
    """(pad id, end-of-text ids) of the model's generation config."""
    generation = model.generation_config
    eos = generation.eos_token_id
    eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
    pad = generation.pad_token_id if generation.pad_token_id is not None else (eos[0] if eos else None)
    return pad, eos


def _greedy_kwargs(model: torch.nn.Module, n_new: int) -> dict:
    # Exactly n_new tokens (end-of-text is held back, as min_new_tokens does) so runs compare;
    # sampling settings of the checkpoint's generation config are switched off: greedy decoding.
    pad, _ = _special_ids(model)
    return dict(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=pad, top_p=None,
                top_k=None, temperature=None)


def _first_token(model: torch.nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """The greedy next token from the prompt's last logits, end-of-text held back (batch, 1)."""
    logits = logits.clone()
    _, eos = _special_ids(model)
    if eos:
        logits[:, eos] = -math.inf
    return logits.argmax(-1, keepdim=True)


def _marker(settings: CacheSettings, live: Any, mark_every: int | None) -> Callable[[int, Any], None] | None:
    if live is None:
        return None

    def on_step(step: int, cache_obj: Any) -> None:
        if step == 1:
            live.mark(f"{settings.label}: first token")
        elif mark_every and step % mark_every == 0:
            live.mark(f"{step} tokens: cache {cache_bytes(cache_obj).total_bytes / MiB:,.1f} MiB")

    return on_step


def _run(model, settings, prompt_ids, cache_obj, n_new, tokenizer, clock, updates, *, start, first_token_s,
         new, shared) -> GenerationRun:
    device = prompt_ids.device
    _sync(device)
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    weighed = cache_bytes(cache_obj)
    batch = int(prompt_ids.shape[0])
    times = clock.times
    steps = [b - a for a, b in zip(times, times[1:])]
    decode = batch * len(steps) / sum(steps) if steps and sum(steps) > 0 else float("nan")
    text = tokenizer.decode(new[0], skip_special_tokens=True) if tokenizer is not None else None
    estimate = kv_cache_bytes(_spec(model), weighed.seq_len, batch, model.dtype)
    return GenerationRun(settings, int(prompt_ids.shape[1]), n_new, batch, new.tolist(), text, wall, first_token_s,
                         decode, steps, weighed, estimate, _expected(model, settings, weighed, batch, updates),
                         clock.bytes_trace, peak, shared)


def _start_clock(cache_obj: Any, settings: CacheSettings, live: Any, mark_every: int | None, trace_bytes: bool,
                 device: torch.device) -> tuple[_StepClock, float]:
    """The per-token clock of one generation and its start time, with the device's peak counter reset."""
    clock = _StepClock(cache_obj, _marker(settings, live, mark_every), trace_bytes)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    return clock, time.perf_counter()


def _continue(model: torch.nn.Module, settings: CacheSettings, prompt_ids: torch.Tensor, cache_obj: Any,
              next_logits: torch.Tensor, n_new: int, tokenizer: Any, updates_before: Sequence[int],
              first_token_s: float, live: Any = None, mark_every: int | None = None,
              trace_bytes: bool = False) -> GenerationRun:
    """Greedy generation from a cache that already holds ``prompt_ids``: the first token from the
    prompt's last logits (what ``generate`` picks), then ``generate`` for the rest."""
    clock, start = _start_clock(cache_obj, settings, live, mark_every, trace_bytes, prompt_ids.device)
    first = _first_token(model, next_logits.to(prompt_ids.device))
    clock.tick()  # the first new token is in
    new = first
    if n_new > 1:
        clock_rest = _stopping(clock)
        out = model.generate(torch.cat([prompt_ids, first], dim=1), **{_compat.cache_argument(model): cache_obj},
                             stopping_criteria=clock_rest, return_dict_in_generate=True,
                             **_greedy_kwargs(model, n_new - 1))
        new = out.sequences[:, prompt_ids.shape[1]:]
    updates = [*updates_before] + [1] * (n_new - 1)
    return _run(model, settings, prompt_ids, cache_obj, n_new, tokenizer, clock, updates, start=start,
                first_token_s=first_token_s, new=new, shared=True)


def _new_tokens(model: torch.nn.Module, ids: torch.Tensor, max_new_tokens: Any) -> int:
    """``max_new_tokens`` as an int, refused in one sentence (with what it would need) when it is more than the
    model's whole trained context, or when the KV cache it grows would not fit the memory free now."""
    import psutil

    n_new = whole_number(max_new_tokens, "max_new_tokens")
    config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    trained = getattr(config, "max_position_embeddings", None)
    if isinstance(trained, int) and n_new > trained:
        raise LabError.bad("max_new_tokens", n_new, f"use at most {trained:,}, the model's max_position_embeddings "
                           "(its whole trained context)", verb="is more new tokens than the model has positions")
    total = int(ids.shape[1]) + n_new
    need = kv_cache_bytes(model.config, total, batch_size=int(ids.shape[0]), dtype=model.dtype)
    device = _device(model)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else psutil.virtual_memory().available
    if need > free:
        raise LabError.bad("max_new_tokens", n_new, f"{total:,} tokens need a KV cache of about {need / MiB:,.1f} MiB "
                           f"and {free / MiB:,.1f} MiB is free on {device.type}; ask for fewer tokens",
                           verb="cannot fit")
    return n_new


@torch.no_grad()
def generate(model: torch.nn.Module, ids: torch.Tensor, cache: str | CacheSettings = "dynamic",
             max_new_tokens: int = 32, tokenizer: Any = None, shared: Prefill | None = None,
             live: Any = None, mark_every: int | None = None, trace_bytes: bool = False) -> GenerationRun:
    """Greedy ``model.generate`` with the cache ``cache`` (a name or :class:`CacheSettings`), measured.

    ``shared``: a :class:`Prefill` of ``ids``: its K/V are copied into the new cache and its last
    logits give the first token, instead of running the prompt again (the same cache and tokens;
    not for the offloaded cache, whose point is the transfers of the whole run).
    ``live``: a chart with ``mark(label)`` (``views.LiveMemory``), marked at the first token and
    every ``mark_every`` tokens; ``trace_bytes``: weigh the cache after every token.
    Exactly ``max_new_tokens`` tokens are generated (end-of-text is held back) so runs compare.
    """
    settings = _settings(cache)
    _needs_cuda(settings, model, warn_race=False)
    ids = token_ids(ids, minimum=1).to(_device(model))
    n_new = _new_tokens(model, ids, max_new_tokens)
    prompt = int(ids.shape[1])
    settings = _sized(settings, prompt + n_new)
    if mark_every is not None:
        mark_every = whole_number(mark_every, "mark_every")
    if shared is not None and settings.implementation is not CacheImplementation.OFFLOADED:
        if shared.ids.shape != ids.shape or not torch.equal(shared.ids.to(ids.device), ids):
            raise LabError("shared is the prefill of another prompt; build it with kvcache.prefill(model, ids) "
                           "of these same ids")
        cache_obj = _fill(make_cache(model, settings), shared)
        return _continue(model, settings, ids, cache_obj, shared.next_logits, n_new, tokenizer, [prompt],
                         shared.seconds, live, mark_every, trace_bytes)
    cache_obj = make_cache(model, settings)
    clock, start = _start_clock(cache_obj, settings, live, mark_every, trace_bytes, ids.device)
    out = model.generate(ids, **{_compat.cache_argument(model): cache_obj}, stopping_criteria=_stopping(clock),
                         return_dict_in_generate=True, **_greedy_kwargs(model, n_new))
    held = _compat.generated_cache(out)
    first_token_s = (clock.times[0] - start) if clock.times else float("nan")
    return _run(model, settings, ids, held if held is not None else cache_obj, n_new, tokenizer, clock,
                [prompt] + [1] * (n_new - 1), start=start, first_token_s=first_token_s,
                new=out.sequences[:, prompt:], shared=False)


# ---------------------------------------------------------------------------------------------
# Quality through the cache


@dataclass
class CacheRun:
    """One cache on the shared prompt: its teacher-forced predictions against the dynamic cache's
    (``agreement``), then a free greedy continuation (``generation``, None when none was asked)."""

    settings: CacheSettings
    agreement: Agreement
    scoring_s: float
    generation: GenerationRun | None
    peak_bytes: int = 0  # the most the cache held, weighed after each scored chunk (and after generating)
    fill_s: float = 0.0  # putting the prompt's K/V into this cache (quantizing it, for a quantized one)

    @property
    def label(self) -> str:
        return self.settings.label


@torch.no_grad()
def _score(model: torch.nn.Module, cache_obj: Any, tokens: torch.Tensor, chunk_tokens: int,
           weigh: bool = False) -> tuple[torch.Tensor, list[int], int]:
    """Feed ``tokens`` through the cache ``chunk_tokens`` at a time: float32 log-probs of each next
    token, the chunk sizes, and (``weigh``) the most bytes the cache held after a chunk."""
    pieces, sizes, peak = [], [], 0
    name = _compat.cache_argument(model)
    for start in range(0, tokens.shape[1], chunk_tokens):
        chunk = tokens[:, start:start + chunk_tokens]
        logits = model(chunk, **{name: cache_obj}, use_cache=True).logits
        pieces.append(torch.log_softmax(logits.float(), dim=-1).cpu())
        sizes.append(int(chunk.shape[1]))
        if weigh:
            peak = max(peak, cache_bytes(cache_obj).total_bytes)
    return torch.cat(pieces, dim=1), sizes, peak


@torch.no_grad()
def compare(model: torch.nn.Module, ids: torch.Tensor, caches: Sequence[str | CacheSettings],
            prompt_tokens: int, scored_tokens: int = 48, chunk_tokens: int = 16, new_tokens: int = 12,
            tokenizer: Any = None, shared: Prefill | None = None) -> list[CacheRun]:
    """Several caches on one text. The first ``prompt_tokens`` of ``ids`` are the prompt, run once
    (:func:`prefill`) and copied into each cache; the next ``scored_tokens`` are fed teacher-forced
    through each cache ``chunk_tokens`` at a time, and their next-token predictions are compared
    with the dynamic cache's (KL, top-1, perplexity of the following tokens); then ``new_tokens``
    are generated greedily from that state (0: none). ``ids`` needs prompt + scored + 1 tokens.

    With a chunk of 1 this is exactly decoding; a chunk of 16 runs a sixteenth of the forward
    passes on the same positions (a chunk's tokens see each other in full precision).
    """
    ids = token_ids(ids)
    settings = [_settings(c) for c in caches]
    prompt_tokens = whole_number(prompt_tokens, "prompt_tokens")
    scored_tokens = whole_number(scored_tokens, "scored_tokens")
    chunk_tokens = whole_number(chunk_tokens, "chunk_tokens")
    new_tokens = whole_number(new_tokens, "new_tokens", minimum=0)
    if ids.shape[1] < prompt_tokens + scored_tokens + 1:
        raise LabError(f"ids hold {ids.shape[1]} tokens, fewer than prompt_tokens + scored_tokens + 1 = "
                       f"{prompt_tokens + scored_tokens + 1} (the last scored token's next one is the target)")
    total = prompt_tokens + scored_tokens + new_tokens
    settings = [_sized(s, total) for s in settings]
    for s in settings:
        _needs_cuda(s, model, warn_race=False)
    ids = ids.to(_device(model))
    pre = shared if shared is not None else prefill(model, ids[:, :prompt_tokens])
    if pre.cached_tokens != prompt_tokens or not torch.equal(pre.ids.to(ids.device), ids[:, :prompt_tokens]):
        raise LabError(f"shared is not the prefill of these ids' first {prompt_tokens} tokens; build it with "
                       "kvcache.prefill(model, ids[:, :prompt_tokens])")
    fed = ids[:, prompt_tokens:prompt_tokens + scored_tokens]
    scored_ids = ids[:, prompt_tokens:prompt_tokens + scored_tokens + 1].cpu()  # fed tokens + each one's next
    scored: list[tuple[CacheSettings, torch.Tensor, float, GenerationRun | None, int, float]] = []
    for s in settings:
        _sync(ids.device)
        start = time.perf_counter()
        cache_obj = _fill(make_cache(model, s), pre)
        _sync(ids.device)
        fill_s = time.perf_counter() - start
        start = time.perf_counter()
        logprobs, sizes, peak = _score(model, cache_obj, fed, chunk_tokens, weigh=True)
        scoring_s = time.perf_counter() - start  # weighing included: a few ms per chunk
        run = None
        if new_tokens:
            run = _continue(model, s, ids[:, :prompt_tokens + scored_tokens], cache_obj, logprobs[:, -1],
                            new_tokens, tokenizer, [pre.cached_tokens, *sizes], pre.seconds)
            peak = max(peak, run.cache.total_bytes)
        scored.append((s, logprobs, scoring_s, run, peak, fill_s))
    # The reference is the default cache's predictions: scored above when it was asked for, else now.
    reference = next((lp for s, lp, *_ in scored if s == CacheSettings()), None)
    if reference is None:
        reference, _, _ = _score(model, _fill(make_cache(model, CacheSettings()), pre), fed, chunk_tokens)
    return [CacheRun(s, agreement(reference, lp, scored_ids), t, run, peak, fill)
            for s, lp, t, run, peak, fill in scored]


# ---------------------------------------------------------------------------------------------
# Recomputation against the cache


@dataclass
class RecomputeResult:
    """The same greedy generation with the cache and with ``use_cache=False`` (everything recomputed)."""

    prompt_tokens: int
    new_tokens: int
    cached_s: float
    recomputed_s: float
    cached_step_s: list[float]
    recomputed_step_s: list[float]
    identical: bool

    @property
    def slowdown(self) -> float:
        """Recomputing time / cached time for the whole call."""
        return self.recomputed_s / self.cached_s

    @property
    def cached_positions(self) -> int:
        return positions_processed(self.prompt_tokens, self.new_tokens, use_cache=True)

    @property
    def recomputed_positions(self) -> int:
        return positions_processed(self.prompt_tokens, self.new_tokens, use_cache=False)


def positions_processed(prompt_tokens: int, new_tokens: int, use_cache: bool = True) -> int:
    """Token positions the model runs through to generate ``new_tokens`` after a prompt of ``prompt_tokens``.

    With the cache: the prompt once, then one new position per step: P + n - 1 (the last token is
    never fed back). With ``use_cache=False`` every step runs the whole sequence so far:
    P + (P + 1) + ... + (P + n - 1) = n x P + n (n - 1) / 2, growing with the square of the length.

    >>> positions_processed(256, 64), positions_processed(256, 64, use_cache=False)
    (319, 18400)
    """
    p = whole_number(prompt_tokens, "prompt_tokens")
    n = whole_number(new_tokens, "new_tokens")
    return p + n - 1 if use_cache else n * p + n * (n - 1) // 2


@torch.no_grad()
def recompute_vs_cache(model: torch.nn.Module, ids: torch.Tensor, max_new_tokens: int = 64) -> RecomputeResult:
    """Generate ``max_new_tokens`` greedily twice: with the default cache and with ``use_cache=False``."""
    ids = token_ids(ids, minimum=1).to(_device(model))
    n_new = _new_tokens(model, ids, max_new_tokens)
    results = []
    for use_cache in (True, False):
        clock = _StepClock()
        _sync(ids.device)
        start = time.perf_counter()
        out = model.generate(ids, use_cache=use_cache, stopping_criteria=_stopping(clock),
                             **_greedy_kwargs(model, n_new))
        _sync(ids.device)
        wall = time.perf_counter() - start
        results.append((out, wall, [b - a for a, b in zip(clock.times, clock.times[1:])]))
    (cached, cached_s, cached_steps), (again, recomputed_s, recomputed_steps) = results
    return RecomputeResult(int(ids.shape[1]), n_new, cached_s, recomputed_s, cached_steps, recomputed_steps,
                           bool(torch.equal(cached, again)))
