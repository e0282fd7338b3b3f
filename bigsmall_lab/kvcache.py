"""The KV cache, run and measured: generate with each cache implementation of transformers, weigh
the cache object, time it, and compare its next-token predictions with the default cache's.

What each cache should hold is planned in :mod:`bigsmall_lab.kv_plan` (pure: configs in, bytes
out); this module runs the caches on a real model and checks those numbers against the bytes it
weighs. :func:`generate` (one real ``model.generate`` call with a cache object, timed per step,
weighed from the cache object by :func:`cache_bytes`), :func:`compare_caches` (several caches on
one shared prompt: teacher-forced KL / top-1 against the dynamic cache, then free generation),
:func:`recompute_vs_cache` (``use_cache=False``, timed).

Over 600 lines on purpose: the three runners share one machinery (the prefill copied into each
cache, the per-token clock, the weighing, the greedy settings), and splitting it would make each
runner import the others' private helpers.

>>> from bigsmall_lab.kv_plan import CacheSettings
>>> CacheSettings.parse("fp8").generate_kwargs()
{'cache_implementation': 'quantized', 'cache_config': {'backend': 'fp8'}}
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from . import _compat
from ._errors import LabError, token_ids, whole_number
from ._progress import Progress
from ._units import MiB
from .estimates import kv_cache_bytes, resolve
from .kv_plan import CacheImplementation, CacheSettings, QuantBackend, expected_cache_bytes, residual_tokens_after
from .quality import Agreement, agreement

# Planning names kept here for one release; they live in bigsmall_lab.kv_plan now (import them from there).
from .kv_plan import (  # noqa: F401
    EXTRA_INSTALL, NAMED_CACHES, CacheOffloadPlan, KVPoint, RankPoint, attention_variants, kv_bytes_per_rank, kv_curve,
    kv_per_rank_curve, plan_cache_offload, positions_processed, runnable,
)
# offload_plan.OffloadPlan is the weights' plan; the cache's is kv_plan.CacheOffloadPlan.
OffloadPlan = CacheOffloadPlan  # old name, one release: kv_plan.CacheOffloadPlan
offload_plan = plan_cache_offload  # old name, one release: kv_plan.plan_cache_offload

__all__ = [
    "CacheBytes", "CacheRun", "GenerationRun", "Prefill", "RecomputeResult", "cache_bytes", "compare_caches",
    "generate", "make_cache", "prefill", "recompute_vs_cache",
]


def _settings(cache: Any) -> CacheSettings:
    return CacheSettings.parse(cache)


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
                       "this CPU, kv_plan.plan_cache_offload(config, seq_len) shows where its bytes would go")
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
def compare_caches(model: torch.nn.Module, ids: torch.Tensor, caches: Sequence[str | CacheSettings],
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
    doing = f"scoring {scored_tokens} tokens" + (f", generating {new_tokens}" if new_tokens else "")
    # Each cache takes seconds on a CPU (a whole comparison, minutes): one line says which one runs.
    with Progress("comparing KV caches", total=len(settings) + (CacheSettings() not in settings), unit="cache") as bar:
        for s in settings:
            bar.note(f"{s.label}: {doing}")
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
            bar.advance(detail=f"{s.label} done")
        # The reference is the default cache's predictions: scored above when it was asked for, else now.
        reference = next((lp for s, lp, *_ in scored if s == CacheSettings()), None)
        if reference is None:
            bar.note("the dynamic cache's predictions, the reference")
            reference, _, _ = _score(model, _fill(make_cache(model, CacheSettings()), pre), fed, chunk_tokens)
            bar.advance(detail="reference done")
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



@torch.no_grad()
def recompute_vs_cache(model: torch.nn.Module, ids: torch.Tensor, max_new_tokens: int = 64) -> RecomputeResult:
    """Generate ``max_new_tokens`` greedily twice: with the default cache and with ``use_cache=False``."""
    ids = token_ids(ids, minimum=1).to(_device(model))
    n_new = _new_tokens(model, ids, max_new_tokens)
    results = []
    with Progress("greedy generation with and without the cache", total=2, unit="run") as bar:
        for use_cache in (True, False):
            bar.note(f"{n_new} tokens {'with the cache' if use_cache else 'recomputing everything (use_cache=False)'}")
            clock = _StepClock()
            _sync(ids.device)
            start = time.perf_counter()
            out = model.generate(ids, use_cache=use_cache, stopping_criteria=_stopping(clock),
                                 **_greedy_kwargs(model, n_new))
            _sync(ids.device)
            wall = time.perf_counter() - start
            results.append((out, wall, [b - a for a, b in zip(clock.times, clock.times[1:])]))
            bar.advance(detail=f"{'cached' if use_cache else 'recomputed'}: {wall:.1f} s")
    (cached, cached_s, cached_steps), (again, recomputed_s, recomputed_steps) = results
    return RecomputeResult(int(ids.shape[1]), n_new, cached_s, recomputed_s, cached_steps, recomputed_steps,
                           bool(torch.equal(cached, again)))


def compare(*args: Any, **kwargs: Any) -> list[CacheRun]:
    """Old name of :func:`compare_caches`, kept for one release (``quality.compare`` compares two models)."""
    import warnings

    warnings.warn("kvcache.compare is now kvcache.compare_caches (same arguments)", DeprecationWarning, stacklevel=2)
    return compare_caches(*args, **kwargs)
