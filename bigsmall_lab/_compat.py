"""Version differences of the libraries, kept in one small place.

transformers 5 renamed and moved things a learner meets in older posts and in the talk:

==========================  ==========================================  =====================================
what                        transformers >= 5 (taught here)             older name (talk, blog posts)
==========================  ==========================================  =====================================
weights dtype               ``from_pretrained(..., dtype=...)``         ``torch_dtype=...``
default dtype               ``"auto"`` (the checkpoint's dtype)         float32
tensor parallelism          ``distributed_config=DistributedConfig(     ``tp_plan="auto"``
                            tp_plan="auto")``
int8 / 4-bit loading        ``quantization_config=BitsAndBytesConfig``  ``load_in_8bit=True``
offloaded KV cache          ``cache_implementation="offloaded"`` /      ``OffloadedCache()``
                            ``DynamicCache(offloading=True)``
quantized KV cache          ``QuantizedCache(backend="quanto")``        ``QuantoQuantizedCache``,
                                                                        ``QuantizedCacheConfig``
==========================  ==========================================  =====================================

Version facts are read from the installed packages' metadata, and transformers, diffusers and torch are
imported inside the functions that use them: the CLI plans presets without importing any of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import warnings
from importlib import metadata
from pathlib import Path

from packaging.version import Version

__all__ = ["OLD_NAMES", "TRANSFORMERS_5", "diffusers_dtype_kwarg", "from_pretrained_kwargs", "quiet_libraries", "model_tp_plan", "no_init_weights",
           "tensor_parallel_kwargs"]



def transformers_version() -> str:
    """The installed transformers' version, from its package metadata (transformers is not imported)."""
    return metadata.version("transformers")


TRANSFORMERS_5 = Version(transformers_version()).major >= 5

# Current keyword -> the name older code uses for it.
OLD_NAMES = {
    "dtype": "torch_dtype",
    "quantization_config": "load_in_8bit / load_in_4bit",
    "distributed_config": "tp_plan",
}


def __getattr__(name: str):
    """``no_init_weights``, transformers' own context manager, imported when first asked for (PEP 562)."""
    if name != "no_init_weights":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:  # transformers >= 5
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights  # type: ignore[no-redef]
    globals()["no_init_weights"] = no_init_weights  # later lookups find it without this hook
    return no_init_weights


def from_pretrained_kwargs(kwargs: dict) -> dict:
    """``kwargs`` for ``from_pretrained`` in the installed version's names.

    Older names are translated with a one-line note instead of a deprecation warning from deep
    inside transformers: ``torch_dtype`` becomes ``dtype``, ``load_in_8bit=True`` becomes a
    ``BitsAndBytesConfig``.

    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")  # the one-line note, a UserWarning
    ...     from_pretrained_kwargs({"torch_dtype": "auto"})
    {'dtype': 'auto'}
    """
    kwargs = dict(kwargs)
    if not TRANSFORMERS_5:
        if "dtype" in kwargs:
            kwargs["torch_dtype"] = kwargs.pop("dtype")
        return kwargs
    if "torch_dtype" in kwargs:
        old = kwargs.pop("torch_dtype")
        warnings.warn("torch_dtype is the older name of dtype (transformers >= 5); using dtype", stacklevel=3)
        kwargs.setdefault("dtype", old)
    for flag in ("load_in_8bit", "load_in_4bit"):
        if kwargs.pop(flag, False):
            from transformers import BitsAndBytesConfig

            warnings.warn(f"{flag}=True is the older spelling of quantization_config=BitsAndBytesConfig({flag}=True)",
                          stacklevel=3)
            kwargs.setdefault("quantization_config", BitsAndBytesConfig(**{flag: True}))
    return kwargs


def tensor_parallel_kwargs(tp_plan: str | dict = "auto") -> dict:
    """``from_pretrained`` keywords that ask for tensor parallelism, in the installed version's names.

    transformers >= 5 takes ``distributed_config=DistributedConfig(tp_plan="auto")`` (the bare
    ``tp_plan=`` still works there, with a FutureWarning); older versions know only ``tp_plan="auto"``.
    Call it inside a torchrun worker: ``DistributedConfig`` reads ``WORLD_SIZE`` when it is built.

    >>> sorted(tensor_parallel_kwargs())
    ['distributed_config']
    """
    import dataclasses

    try:
        from transformers import DistributedConfig
    except ImportError:  # older transformers: no DistributedConfig at all
        return {"tp_plan": tp_plan}
    is_dataclass = dataclasses.is_dataclass(DistributedConfig)
    fields = {f.name for f in dataclasses.fields(DistributedConfig)} if is_dataclass else set()
    if "tp_plan" not in fields:  # transformers 4.x: a DistributedConfig for expert parallelism only
        return {"tp_plan": tp_plan}
    return {"distributed_config": DistributedConfig(tp_plan=tp_plan)}


def model_tp_plan(model) -> dict[str, str]:
    """The model's tensor-parallel plan, ``{module pattern: style}`` with ``*`` for layer numbers.

    transformers >= 5 merges the class's, the config's and the embedding's rules into ``model.tp_plan``;
    4.x kept them in ``model._tp_plan``. An empty dict: the model has no plan (GPT-2, T5, BERT ...).
    """
    plan = getattr(model, "tp_plan", None)
    if not isinstance(plan, dict) or not plan:
        plan = getattr(model, "_tp_plan", None)
    return dict(plan) if isinstance(plan, dict) else {}


# --- KV cache (lesson 08) ------------------------------------------------------------------------
# transformers 5.2x renamed the cache argument of forward() and generate() from ``past_key_values``
# to ``cache`` (the old name still works there, with a deprecation warning until 6.0), and added an
# fp8 backend to ``QuantizedCache``; 5.17 (the GPU image) has neither. The cache classes themselves
# (``DynamicCache(config=, offloading=)``, ``StaticCache(config=, max_cache_len=)``,
# ``QuantizedCache(backend=, config=, nbits=, residual_length=, q_group_size=)``) are the same in both.

__all__ += ["cache_argument", "generated_cache", "quantized_cache_backends"]


def cache_argument(model) -> str:
    """The keyword ``model.forward`` / ``model.generate`` take a cache object under: ``"cache"`` in
    transformers >= 5.2x, ``"past_key_values"`` before (and in every 4.x)."""
    import inspect

    try:
        parameters = inspect.signature(type(model).forward).parameters
    except (TypeError, ValueError):  # not a model with a Python forward
        parameters = {}
    return "cache" if "cache" in parameters else "past_key_values"


def generated_cache(output):
    """The cache object of a ``generate(..., return_dict_in_generate=True)`` or forward output (None if absent)."""
    cache = getattr(output, "cache", None)
    if cache is None:
        cache = getattr(output, "past_key_values", None)
    return cache


# What the quantized KV cache of the locked transformers offers, recorded by tools/presets_data.py so that the
# advisor plans quanto caches for a preset without importing transformers; read only while the installed
# version is the recorded one (tests/test_compat.py compares the record with the library's own answer).
_TRANSFORMERS_FACTS = Path(__file__).resolve().parent / "data" / "transformers_facts.json"


@functools.lru_cache(maxsize=1)
def _recorded_facts() -> dict | None:
    try:
        data = json.loads(_TRANSFORMERS_FACTS.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("transformers") == transformers_version() else None


def transformers_facts() -> dict:
    """What the installed transformers' quantized cache offers, asked of the library (imports it): its backends
    and its group-wise defaults. ``tools/presets_data.py`` records this in ``data/transformers_facts.json``."""
    import inspect

    from transformers import QuantizedCache, cache_utils

    names = ("quanto", "hqq")
    backends = names + ("fp8",) if hasattr(cache_utils, "Fp8QuantizedLayer") else names
    defaults = {}
    for name in ("residual_length", "q_group_size"):
        for owner in (getattr(cache_utils, "QuantizedLayer", None), QuantizedCache):
            param = inspect.signature(owner.__init__).parameters.get(name) if owner is not None else None
            if param is not None and isinstance(param.default, int) and not isinstance(param.default, bool):
                defaults[name] = param.default
                break
    return {"transformers": transformers_version(), "quantized_cache_backends": list(backends),
            "quantized_cache_defaults": defaults}


def _facts() -> dict:
    return _recorded_facts() or transformers_facts()


def quantized_cache_backends() -> tuple[str, ...]:
    """The ``QuantizedCache`` backends this transformers knows: quanto and hqq, plus fp8 where it exists."""
    return tuple(_facts()["quantized_cache_backends"])


def quantized_cache_default(name: str) -> int | None:
    """A default of transformers' group-wise quantized cache (``residual_length`` 128, ``q_group_size`` 64 in
    5.x), read from its signature so the lab follows the library; None when this version has none."""
    return _facts()["quantized_cache_defaults"].get(name)


# The offloaded cache (``DynamicCache(offloading=True)``) prefetches the next layer's K/V on a side stream.
# Read in the wheels' ``cache_utils.py``: 5.17.0, 5.18.0 and 5.19.0 make the default stream wait for the
# prefetch stream but not the prefetch stream wait for the default stream, so a prefetch may start before
# the previous layer's offload copy to the CPU has finished and reuse memory still being read; 5.20.0,
# 5.21.0 and 5.25.0 add ``self.prefetch_stream.wait_stream(torch.cuda.default_stream(...))``. (The pull
# request was not found in the searchable issue and code corpora; the versions come from the wheels.)
OFFLOADED_CACHE_STREAM_FIX = Version("5.20.0")

__all__ += ["OFFLOADED_CACHE_STREAM_FIX", "offloaded_cache_race"]


def offloaded_cache_race(version: str | None = None, warn: bool = True) -> bool:
    """True (and one warning sentence) when this transformers' offloaded KV cache lacks the stream wait.

    >>> offloaded_cache_race("5.17.0", warn=False), offloaded_cache_race("5.25.0", warn=False)
    (True, False)
    """
    installed = transformers_version() if version is None else version
    racy = Version(Version(installed).base_version) < OFFLOADED_CACHE_STREAM_FIX
    if racy and warn:
        warnings.warn(f"transformers {installed}'s offloaded KV cache can prefetch a layer before the previous "
                      f"layer's copy to the CPU has finished (fixed in {OFFLOADED_CACHE_STREAM_FIX}): compare its "
                      f"tokens with the dynamic cache's, or upgrade transformers.", RuntimeWarning, stacklevel=3)
    return racy


def diffusers_dtype_kwarg() -> str:
    """The keyword diffusers' ``from_pretrained`` takes the weights' dtype under.

    diffusers 0.42 renamed ``torch_dtype`` to ``dtype``, as transformers 5 did (``torch_dtype`` still
    works there, with a deprecation warning); older versions know only ``torch_dtype``. Either way,
    ``"auto"`` is not a dtype to diffusers 0.42.1: it falls back to float32 with a warning. Read from
    the installed version (0.42 added ``deprecation_utils._resolve_dtype``, which maps the old name),
    so diffusers is not imported.
    """
    try:
        installed = Version(metadata.version("diffusers"))
    except metadata.PackageNotFoundError:
        return "torch_dtype"
    return "dtype" if Version(installed.base_version) >= Version("0.42") else "torch_dtype"


@contextlib.contextmanager
def quiet_libraries(progress_bars: bool = True):
    """Silence the notices accelerate, transformers and diffusers log inside a lesson's output
    ("Device 1 is not available" for every fake GPU a plan names, offload notices) and, with
    ``progress_bars=False``, transformers' loading bars; the lesson says what happens instead.
    Everything is restored on exit."""
    import logging

    import transformers

    loggers = [logging.getLogger(n) for n in ("accelerate", "transformers", "diffusers")]
    levels = [lg.level for lg in loggers]
    verbosity = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    if not progress_bars:
        transformers.utils.logging.disable_progress_bar()
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        transformers.logging.set_verbosity(verbosity)
        if bars and not progress_bars:
            transformers.utils.logging.enable_progress_bar()


# --- Counting collectives (lesson 06) ------------------------------------------------------------
# torch's ``CommDebugMode`` counts collectives and also tracks modules; under transformers 5.25 its
# module tracker sees more module exits than entries and raises IndexError inside torch
# (``debug/_comm_mode.py``, ``self.parent_list[-1]``). The lab counts with its own dispatch mode,
# which tracks no modules: every op that reaches the dispatcher in a collective namespace is counted
# once, after DTensor has turned its redistributions into such ops (DTensor goes first, as in
# CommDebugMode).

__all__ += ["count_collectives", "collective_kind"]

_COLLECTIVE_NAMESPACES = ("_c10d_functional", "c10d_functional", "_c10d_functional_autograd", "c10d")
_COLLECTIVE_WORDS = {"allreduce": "all_reduce", "all_reduce": "all_reduce", "allgather": "all_gather",
                     "all_gather": "all_gather", "reduce_scatter": "reduce_scatter", "alltoall": "all_to_all",
                     "all_to_all": "all_to_all", "broadcast": "broadcast"}


def collective_kind(op_name: str) -> str | None:
    """'all_reduce', 'all_gather', 'reduce_scatter', 'all_to_all', 'broadcast', or None for an op that is
    no collective (a barrier, a wait, send/recv).

    >>> collective_kind("c10d.allreduce_"), collective_kind("_c10d_functional.all_gather_into_tensor")
    ('all_reduce', 'all_gather')
    >>> collective_kind("_c10d_functional.wait_tensor") is None
    True
    """
    name = op_name.lower()
    for word, kind in _COLLECTIVE_WORDS.items():
        if word in name:
            return kind
    return None


@contextlib.contextmanager
def count_collectives():
    """Count the collectives run inside the block: ``with count_collectives() as counts: ...`` leaves
    ``{'all_reduce': n, 'all_gather': n}`` in ``counts`` (kinds that did not occur are absent)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch without distributed
        DTensor = None  # noqa: N806

    counts: dict[str, int] = {}

    class _Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if isinstance(func, torch._ops.HigherOrderOperator):
                return func(*args, **kwargs)
            if DTensor is not None and any(t is DTensor for t in types):
                return NotImplemented  # let DTensor turn itself into plain ops (and collectives) first
            out = func(*args, **kwargs)
            if getattr(func, "namespace", "") in _COLLECTIVE_NAMESPACES:
                kind = collective_kind(str(func.name()))
                if kind is not None:
                    counts[kind] = counts.get(kind, 0) + 1
            return out

    with _Counter():
        yield counts


# --- How from_pretrained loads (lesson 02) -------------------------------------------------------
# transformers 5 (read in 5.25's ``modeling_utils.py`` and ``core_model_loading.py``) does not load
# "one shard at a time" as accelerate's ``load_checkpoint_and_dispatch`` and the talk do. It opens EVERY
# safetensors shard at once (``safe_open(..., backend="mmap")``; ``pread`` on Windows and MPS), keeps a
# lazy slice per tensor, sorts the tensors by name across all shards, and materialises them (read,
# cast, copy to the target device) with a ``ThreadPoolExecutor`` of ``GLOBAL_WORKERS = min(4, cpu_count)``
# threads, a module constant (no argument, no environment variable sets it). It loads sequentially
# instead when ``HF_DEACTIVATE_ASYNC_LOAD`` is true, when the device map holds "disk", or when it
# quantizes on the fly. Inside ``from_pretrained`` the steps are: the model built on the meta device,
# ``_get_device_map`` (the placement plan), ``_load_pretrained_model`` (the weights) and
# ``_finalize_model_loading`` (tied weights, missing keys), then dispatch hooks where needed.
# transformers 4.x named the switches differently (``HF_ENABLE_PARALLEL_LOADING``, off by default);
# the lab reports those as unknown rather than guess.

__all__ += ["LoaderFacts", "from_pretrained_phases"]

ASYNC_LOAD_OFF_ENV = "HF_DEACTIVATE_ASYNC_LOAD"


@dataclasses.dataclass(frozen=True)
class LoaderFacts:
    """What the installed transformers' loader does, read from its code. ``threads``: the loader's pool
    (None where the installed version has no such pool); ``parallel``: whether a plain load (no disk, no
    on-the-fly quantization) uses it now; ``all_shards_at_once``: every shard mapped before any tensor is
    read; ``hooked``: the phases of ``from_pretrained`` could be marked (its internals were found)."""

    version: str
    threads: int | None
    parallel: bool | None
    all_shards_at_once: bool
    hooked: bool
    switch: str | None  # the environment variable that turns the pool off


def _wrap_before(owner, name: str, before) -> tuple | None:
    """Replace ``owner.name`` by a function that calls ``before()`` first; (owner, name, original) to undo."""
    raw = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
    if raw is None:
        return None
    kind = type(raw) if isinstance(raw, (staticmethod, classmethod)) else None
    func = raw.__func__ if kind is not None else raw

    def wrapped(*args, **kwargs):
        before()
        return func(*args, **kwargs)

    setattr(owner, name, kind(wrapped) if kind is not None else wrapped)
    return owner, name, raw


@contextlib.contextmanager
def from_pretrained_phases(on_phase=None):
    """Mark the phases of every ``from_pretrained`` call inside the block, and say how the loader works.

    ``on_phase(name)`` is called as each phase begins: ``"placement plan"`` (``_get_device_map``, only when
    a ``device_map`` is given) and ``"weights materialised"`` (``_load_pretrained_model``: the shards are
    read into the model, then tied weights and missing keys are settled). What runs before them (config,
    the model built on the meta device) is the caller's first phase. Yields :class:`LoaderFacts`; where
    the installed transformers lacks these internals nothing is marked and ``hooked`` is False.

    >>> with from_pretrained_phases() as facts:
    ...     facts.all_shards_at_once, facts.hooked, facts.switch
    (True, True, 'HF_DEACTIVATE_ASYNC_LOAD')
    """
    import os

    import transformers
    from transformers import modeling_utils

    try:
        from transformers import core_model_loading
    except ImportError:  # transformers 4.x: no thread pool of this kind
        core_model_loading = None
    threads = getattr(core_model_loading, "GLOBAL_WORKERS", None)
    switch = ASYNC_LOAD_OFF_ENV if threads is not None else None
    parallel = None if threads is None else os.getenv(switch, "false").lower() not in ("true", "1", "y", "yes", "on")
    points = ((modeling_utils, "_get_device_map", "placement plan"),
              (modeling_utils.PreTrainedModel, "_load_pretrained_model", "weights materialised"))
    found = all(name in (vars(owner) if isinstance(owner, type) else owner.__dict__) for owner, name, _ in points)
    undo = []
    if on_phase is not None and found:
        for owner, name, phase in points:
            undo.append(_wrap_before(owner, name, lambda phase=phase: on_phase(phase)))
    facts = LoaderFacts(transformers.__version__, threads, parallel, all_shards_at_once=threads is not None,
                        hooked=found, switch=switch)
    try:
        yield facts
    finally:
        for owner, name, raw in reversed(undo):
            setattr(owner, name, raw)
