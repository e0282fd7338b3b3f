"""The KV cache, planned: what each cache implementation of transformers holds, for any config
(pure: configs in, bytes and dataclasses out; nothing is loaded, no device is touched).

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

Built on :func:`bigsmall_lab.estimates.kv_cache_bytes` (the general estimate stays there), each
function rephrases it for one question: :func:`expected_cache_bytes` (what each implementation
should hold, quantization scales included), :func:`kv_curve`, :func:`attention_variants`,
:func:`kv_bytes_per_rank`, :func:`plan_cache_offload` (where an offloaded cache keeps its bytes),
:func:`positions_processed` (the work the cache saves). :mod:`bigsmall_lab.kvcache` runs the caches
on a real model and checks these numbers against the cache objects it weighs. Importing this module
imports no torch (``torch.dtype`` is only a type hint; transformers is read inside the functions that
ask it): the CLI plans presets without torch.

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
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import TYPE_CHECKING, Any

from . import _compat
from ._dtypes import bytes_per_element, dtype_name
from ._errors import LabError, closest, enum_value, shown, whole_number
from .estimates import kv_cache_bytes, resolve

if TYPE_CHECKING:
    import torch

__all__ = [
    "EXTRA_INSTALL", "NAMED_CACHES", "CacheImplementation", "CacheOffloadPlan", "CacheSettings", "KVPoint",
    "QuantBackend", "RankPoint", "attention_variants", "expected_cache_bytes", "kv_bytes_per_rank", "kv_curve",
    "kv_per_rank_curve", "plan_cache_offload", "positions_processed", "residual_tokens_after", "runnable",
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
    64 in 5.x), read from its signature (``_compat.quantized_cache_default``) so the lab follows the library."""
    value = _compat.quantized_cache_default(name)
    if value is None:
        raise LabError(f"this transformers has no default for the quantized cache's {name}; pass {name}= explicitly")
    return value


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



# ---------------------------------------------------------------------------------------------
# What each cache should hold


def _layout(config: Any) -> tuple[int, int, int, int]:
    """(layers, attention heads, KV heads, head dim) of a config."""
    layout = resolve(config).attention  # derived once, in the zoo (ModelSpec.attention)
    if layout is None:
        raise LabError(f"config {shown(config)} is a diffusers model: it keeps no KV cache")
    return layout.layers, layout.heads, layout.kv_heads, layout.head_dim


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
    from .zoo._configs import config_dict

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
    from .zoo._configs import config_dict

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
class CacheOffloadPlan:
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


def plan_cache_offload(config: Any, seq_len: int, batch_size: int = 1, dtype: str | torch.dtype = "bfloat16",
                       label: str | None = None) -> CacheOffloadPlan:
    """The GPU/CPU split of ``DynamicCache(offloading=True)`` (``cache_implementation="offloaded"``).

    >>> p = plan_cache_offload("llama-3.1-8b", 131072)
    >>> p.gpu_bytes // 2**20, p.cpu_bytes // 2**30     # 2 of 32 layers on the GPU
    (1024, 15)
    """
    total = kv_cache_bytes(config, seq_len, batch_size, dtype)
    layers = _layout(config)[0]
    on_gpu = total * min(2, layers) // layers
    return CacheOffloadPlan(label or str(config), int(seq_len), total, layers, on_gpu, total - on_gpu)



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
