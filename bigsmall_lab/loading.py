"""Load a sharded checkpoint the naive way and the Big Model Inference way, and measure both.

The naive way makes the model twice: PyTorch builds it with random float32 weights, then the
checkpoint is read into a second copy (the state dict) and copied over. For a 190M-parameter
bf16 checkpoint that is 760 MB of random weights + 380 MB of state dict before the first is freed.
``from_pretrained`` instead builds the model on the meta device (no data), plans where each
module goes (:mod:`bigsmall_lab.placement`), then reads the weights into place: transformers 5 maps
every shard at once and materialises the tensors with a pool of threads (:func:`load_bmi_phases`
measures each phase; ``_compat.from_pretrained_phases`` says how the installed version loads), where
accelerate's ``load_checkpoint_and_dispatch``, as the talk shows, loads one shard at a time
(:func:`shard_by_shard`; :func:`compare_loaders` runs both). On a CPU, safetensors shards are
memory-mapped: with the checkpoint's dtype the weights enter the process's memory as file pages
(``RssFile``) when a forward pass first touches them, never as a copy (``RssAnon``).

``compare_loads(bsl.checkpoint("bigsmall-small"))`` measures both on a 360 MiB checkpoint (lesson 02: the
naive load peaks near 2.9x the checkpoint, Big Model Inference near 1x; tests/test_loading.py checks the
order). The loads take ``on_phase``: a function called with each phase's name as the phase begins
(``"load_state_dict"``, ``"shard 2/4"``, ``"first forward"``). Pass a live chart's ``mark`` to see
the phases on it::

    live = LiveMemory()
    with live:
        cmp = compare_loads(path, on_phase=live.mark)

Runner functions here touch memory, files and devices; every number they report is measured. What to
expect is planned elsewhere (:mod:`bigsmall_lab.placement` the device map, :mod:`bigsmall_lab.estimates`
the bytes): nothing here plans.

Why one file of ~780 lines (the lab's rule is 600): every load here (naive, Big Model Inference, shard
by shard, with a device map) runs inside the same measuring frame (``_Phases``, the device and folder
checks, the release of a model between runs) and returns result types the views draw side by side;
lessons 02 and 07 call them as ``bsl.loading.*``, lines a learner copies and the talk's claims quote.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._compat import LoaderFacts, quiet_libraries
from ._errors import LabError, shown
from ._paths import cache_dir, check_name, writing_into
from .measure import MemoryReport, cpu_memory, peak, phase_hook, track, trim_heap
from .placement import Plan, Strategy, from_device_map, parse_budgets, plan

__all__ = ["BMI_PHASES", "Generation", "LoadComparison", "LoadRun", "LoaderComparison", "Phase", "PlacedLoad",
           "ShardStep", "ShardSteps", "compare_loaders", "compare_loads", "generate_timed", "load_bmi",
           "load_bmi_phases", "load_naive", "load_placed", "offload_dir",
           "placed_bytes", "shard_by_shard", "shard_bytes", "shard_files", "within"]


# --- results ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Phase:
    """One step of a load: its name, when it ran (seconds since the tracked block started) and the
    process's memory when it ended (CPU: RssAnon / RssFile; CUDA: torch's allocated bytes)."""

    name: str
    start_s: float
    end_s: float
    rss_anon_bytes: int
    rss_file_bytes: int
    cuda_allocated_bytes: int = 0
    peak_bytes: int | None = None  # the exact peak during the phase, above the load's start (None: not measured)


@dataclass
class LoadRun:
    """A measured load: the memory timeline (``report``), its phases, and the checkpoint's weight bytes."""

    label: str
    report: MemoryReport
    phases: list[Phase]
    checkpoint_bytes: int
    loader: LoaderFacts | None = None  # how the installed transformers loads (set by load_bmi_phases)

    @property
    def peak_bytes(self) -> int:
        """The peak above the start on the load's device (CPU: VmHWM, exact; CUDA: max_memory_allocated)."""
        return self.report.peak_bytes

    @property
    def host_peak_bytes(self) -> int:
        """The CPU side's peak above the start: where the naive load builds its copies even for a GPU.

        On a CPU this is :attr:`peak_bytes`; with CUDA it is the highest RssAnon + RssFile sampled.
        """
        if self.report.device == "cpu":
            return self.report.peak_bytes
        samples = self.report.samples
        return max(s.rss_anon + s.rss_file for s in samples) - (samples[0].rss_anon + samples[0].rss_file)

    @property
    def mapped_bytes(self) -> int:
        """The highest rise of file pages mapped into the process (``RssFile``, sampled) during the load: the
        safetensors shards' pages it held at once. Unlike the total, it cannot be hidden by freed heap memory
        that a later load reuses (which a second threaded load in one process does)."""
        return _mapped_rise(self.report)

    def agrees_with(self, estimate_bytes: float, rel_tol: float, host: bool = True) -> bool:
        """True when the measured peak (the host's with ``host``, else the load device's) is within ``rel_tol``
        of ``estimate_bytes``: a check that fails on either side, unlike "peak >= 0".

        >>> run = LoadRun("demo", MemoryReport("cpu", peak_bytes=1_080), [], 360)
        >>> run.agrees_with(1_080, 0.1), run.agrees_with(360, 0.1)   # two copies measured, not one
        (True, False)
        """
        return _agrees(self.host_peak_bytes if host else self.peak_bytes, estimate_bytes, rel_tol)

    def phase(self, name: str) -> Phase:
        """The phase called ``name`` (a LabError naming the phases there are, if none is)."""
        for phase in self.phases:
            if phase.name == name:
                return phase
        raise LabError.bad("name", name, "use one of: " + ", ".join(p.name for p in self.phases),
                           verb="is not a phase of this load")


@dataclass(frozen=True)
class LoadComparison:
    """The naive and the BMI load of one checkpoint, measured one after the other in this process."""

    naive: LoadRun
    bmi: LoadRun

    @property
    def ratio(self) -> float:
        """Naive / BMI peak of host memory (above the memory in use when each started): on a CPU the
        whole story; with a GPU, the GPU holds the weights once either way and the copies are on the host."""
        return self.naive.host_peak_bytes / max(self.bmi.host_peak_bytes, 1)


@dataclass(frozen=True)
class LoaderComparison:
    """The talk's loader (accelerate: one shard at a time) and the installed transformers' ``from_pretrained``
    on one checkpoint, into the same dtype on the same device, measured one after the other in this process."""

    accelerate: ShardSteps
    transformers: LoadRun

    @property
    def ratio(self) -> float:
        """transformers' peak / accelerate's shard loop's peak (each above its own start, first forward included)."""
        return self.transformers.peak_bytes / max(self.accelerate.peak_bytes, 1)


@dataclass(frozen=True)
class ShardStep:
    """Memory around loading one shard into the empty model (bytes above the memory in use once the
    empty model was built)."""

    shard: str
    shard_bytes: int
    loaded_bytes: int  # weights in the model after this shard
    peak_bytes: int  # highest memory while this shard was read and placed
    after_bytes: int  # memory once the shard's state dict was dropped
    seconds: float

    @property
    def in_flight_bytes(self) -> int:
        """The peak while this shard loaded above the weights held once it was placed: what the loader had in
        flight beyond the model (on a CPU the shard's mapped pages; on a GPU almost nothing, they stay on the host)."""
        return self.peak_bytes - self.loaded_bytes


@dataclass
class ShardSteps:
    """The shard-by-shard step-through: one :class:`ShardStep` per shard, and the timeline."""

    steps: list[ShardStep]
    report: MemoryReport
    phases: list[Phase]
    device: str
    model: Any = field(default=None, repr=False)

    @property
    def largest_shard_bytes(self) -> int:
        return max(s.shard_bytes for s in self.steps)

    @property
    def peak_bytes(self) -> int:
        """The whole run's exact peak above its start (VmHWM on a CPU, max_memory_allocated on a GPU)."""
        return self.report.peak_bytes

    @property
    def estimate_peak_bytes(self) -> int:
        """The loop's expected peak: the largest "weights placed once shard i is in + shard i's pages", over
        the shards (the last shard's moment unless an earlier shard is much bigger). Exact sums, no measurement.

        >>> a = ShardStep("s1", shard_bytes=90, loaded_bytes=180, peak_bytes=0, after_bytes=0, seconds=0)
        >>> b = ShardStep("s2", shard_bytes=20, loaded_bytes=220, peak_bytes=0, after_bytes=0, seconds=0)
        >>> ShardSteps([a, b], None, [], "cpu").estimate_peak_bytes   # 180 + 90 (first shard) > 220 + 20 (last)
        270
        """
        return max(s.loaded_bytes + s.shard_bytes for s in self.steps)

    @property
    def mapped_bytes(self) -> int:
        """The highest rise of file pages mapped in (``RssFile``, sampled) during the loop: one shard's pages."""
        return _mapped_rise(self.report)

    def agrees_with(self, estimate_bytes: float, rel_tol: float) -> bool:
        """True when the run's measured peak is within ``rel_tol`` of ``estimate_bytes`` (either side)."""
        return _agrees(self.peak_bytes, estimate_bytes, rel_tol)

    def one_shard_in_flight(self, rel_tol: float = 0.1) -> list[bool]:
        """Per shard: was at most that one shard in flight (``in_flight_bytes <= (1 + rel_tol) x shard_bytes``)?
        False where the loader held more: two shards, or the whole checkpoint mapped at once.

        >>> step = ShardStep("s1", shard_bytes=100, loaded_bytes=100, peak_bytes=200, after_bytes=100, seconds=0)
        >>> both = ShardStep("s1", shard_bytes=100, loaded_bytes=100, peak_bytes=300, after_bytes=100, seconds=0)
        >>> ShardSteps([step], None, [], "cpu").one_shard_in_flight(), ShardSteps([both], None, [], "cpu").one_shard_in_flight()
        ([True], [False])
        """
        return [s.in_flight_bytes <= (1 + rel_tol) * s.shard_bytes for s in self.steps]

    def holds_what_was_loaded(self, rel_tol: float = 0.05) -> list[bool]:
        """Per shard: does the memory after it match the weights placed so far, within ``rel_tol``? (True when
        the loader keeps its copies and drops each shard; False if it kept a shard or copied nothing.)"""
        return [abs(s.after_bytes - s.loaded_bytes) <= rel_tol * s.loaded_bytes for s in self.steps]


@dataclass
class PlacedLoad:
    """A model loaded with a device map: the plan made before, what ``from_pretrained`` chose, and what each
    device really holds (``placed_bytes``)."""

    model: Any = field(repr=False)
    plan: Plan
    hf_device_map: dict[str, Any] | None
    loaded: Plan  # the device map from_pretrained really used, counted like a plan (for the same chart)
    placed: dict[Any, int]
    report: MemoryReport
    offload_folder: Path | None
    offload_files: list[str]

    @property
    def matches_plan(self) -> bool:
        """The device map from_pretrained used is the one the planner predicted."""
        real = self.hf_device_map if self.hf_device_map is not None else {"": _single_device(self.model)}
        return {k: _norm(v) for k, v in real.items()} == {k: _norm(v) for k, v in self.plan.device_map.items()}


@dataclass(frozen=True)
class Generation:
    """Greedy generation, timed. ``step_s``: seconds between consecutive generated tokens (the decode
    steps, the prompt's forward pass excluded); ``logits``: the raw logits of each step, to compare runs."""

    tokens: list[int]
    seconds: float
    step_s: tuple[float, ...]
    logits: torch.Tensor = field(repr=False, default=None)  # (new tokens, vocab): the scores of each step

    @property
    def seconds_per_token(self) -> float:
        """The median decode step: robust to one slow step on a shared machine."""
        steps = sorted(self.step_s)
        if not steps:
            return self.seconds / max(len(self.tokens), 1)
        mid = len(steps) // 2
        return steps[mid] if len(steps) % 2 else (steps[mid - 1] + steps[mid]) / 2


def _mapped_rise(report: MemoryReport) -> int:
    if not report.samples:
        return 0
    return max(s.rss_file for s in report.samples) - report.samples[0].rss_file


def within(measured: float, estimate_bytes: float, rel_tol: float) -> bool:
    """``measured`` within ``rel_tol`` of ``estimate_bytes``, on either side (a claim that can fail both ways).

    >>> within(1_081, 1_080, 0.05), within(804, 1_080, 0.05)
    (True, False)
    """
    return _agrees(measured, estimate_bytes, rel_tol)


def _agrees(measured: float, estimate_bytes: float, rel_tol: float) -> bool:
    if not estimate_bytes > 0 or not 0 <= rel_tol < 1:
        raise LabError.bad("estimate_bytes / rel_tol", (estimate_bytes, rel_tol),
                           "give a positive estimate and a tolerance in [0, 1)", verb="cannot be compared")
    return abs(measured / estimate_bytes - 1) <= rel_tol


# --- helpers ------------------------------------------------------------------------------------

_PhaseHook = Callable[[str], object]


class _Phases:
    """Record named phases inside a tracked block, with the memory at the end of each; ``on_phase(name)``
    is called as each one begins (a live chart's mark). With the block's ``report``, each phase also gets
    its exact peak above the block's start.

    Phases are blocks (``with phase("name"):``) or, inside a library call that offers no block, marks:
    ``begin(name)`` ends the phase before and starts this one; ``end()`` ends the last."""

    def __init__(self, device: str, on_phase: _PhaseHook | None = None, report: MemoryReport | None = None):
        self.t0 = time.perf_counter()
        self.device = device
        self.on_phase = on_phase
        self.report = report
        self.items: list[Phase] = []
        self._open: tuple[str, float, contextlib.ExitStack, Any] | None = None

    def _start(self, name: str, mark: str | bool) -> tuple[float, contextlib.ExitStack, Any]:
        if self.on_phase is not None and mark:
            self.on_phase(name if mark is True else mark)
        stack = contextlib.ExitStack()
        high = stack.enter_context(peak(self.device)) if self.report is not None else None
        return time.perf_counter() - self.t0, stack, high

    def _finish(self, name: str, start: float, stack: contextlib.ExitStack, high) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
        stack.close()
        status = cpu_memory()
        allocated = torch.cuda.memory_allocated() if self.device == "cuda" else 0
        top = max(high.bytes - self.report.start_bytes, 0) if high is not None else None
        self.items.append(Phase(name, start, time.perf_counter() - self.t0, status["RssAnon"], status["RssFile"],
                                allocated, top))

    @contextlib.contextmanager
    def __call__(self, name: str, mark: str | bool = True) -> Iterator[None]:
        """``mark``: what ``on_phase`` gets: the phase's name (True), another text, or nothing (False)."""
        opened = self._start(name, mark)
        try:
            yield
        finally:
            self._finish(name, *opened)

    def begin(self, name: str) -> None:
        self.end()
        self._open = (name, *self._start(name, True))

    def end(self) -> None:
        if self._open is not None:
            opened, self._open = self._open, None
            self._finish(*opened)


def _device(device: str | int | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise LabError.bad("device", device, "use 'cpu', 'cuda' or 'cuda:N'", verb="is not a device") from None
    if dev.type not in ("cpu", "cuda"):
        raise LabError.bad("device", device, "use 'cpu', 'cuda' or 'cuda:N'", verb="is not supported")
    if dev.type == "cuda":
        _check_gpu_index(dev.index or 0, "device")
    return dev


def _check_gpu_index(index: int, argument: str) -> None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        allowed = f"GPU indices 0-{count - 1}" if count else "no GPU: this machine has none, use 'cpu' and 'disk'"
        raise LabError.bad(argument, index, f"this machine has {count} CUDA GPU(s); use {allowed}",
                           verb="names a GPU that does not exist")


def _norm(device: Any) -> Any:
    if isinstance(device, torch.device):
        return device.index or 0 if device.type == "cuda" else device.type
    if isinstance(device, str) and device.startswith("cuda"):
        return int(device.split(":")[1]) if ":" in device else 0
    return device


def _single_device(model) -> Any:
    return _norm(next(model.parameters()).device)


def _folder(path: str | os.PathLike) -> Path:
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise LabError.bad("path", str(folder), "give a checkpoint folder with config.json and *.safetensors, "
                           "e.g. bsl.checkpoint('bigsmall-small')", verb="is not a checkpoint folder")
    return folder


def shard_files(path: str | os.PathLike) -> list[Path]:
    """The checkpoint's safetensors shards, in the order of its index."""
    folder = _folder(path)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = dict.fromkeys(json.loads(index.read_text())["weight_map"].values())
        return [folder / n for n in sorted(names)]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise LabError.bad("path", str(folder),
                       "it holds no model.safetensors(.index.json); the lab loads safetensors only",
                       verb="has no safetensors weights")


def shard_bytes(shard: str | os.PathLike) -> int:
    """Bytes of the tensors stored in one safetensors file (its header aside)."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(shard), framework="pt") as f:
        for key in f.keys():
            sl = f.get_slice(key)
            total += _numel(sl.get_shape()) * _element_size(sl.get_dtype())
    return total


def _checkpoint_bytes(path: Path) -> int:
    """Bytes of the weights stored in the shards (the tensors, not the files' headers)."""
    return sum(shard_bytes(shard) for shard in shard_files(path))


def _element_size(safetensors_dtype: str) -> int:
    from ._dtypes import bytes_per_element

    names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "I8": "int8", "U8": "uint8",
             "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
    if safetensors_dtype in names:
        return int(bytes_per_element(names[safetensors_dtype]))
    return {"I64": 8, "F64": 8, "I32": 4, "I16": 2, "BOOL": 1}[safetensors_dtype]


def _forward_ids(config, n_tokens: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, min(config.vocab_size, 1000), (1, n_tokens), generator=generator)


def _release(*objects) -> None:
    del objects
    gc.collect()
    trim_heap()


# --- the two paths ------------------------------------------------------------------------------

def load_naive(path: str | os.PathLike, device: str = "cpu", forward: bool = True,
               on_phase: _PhaseHook | None = None) -> tuple[Any, LoadRun]:
    """The usual load before Big Model Inference, measured: the model twice.

    1. build the model from its config with PyTorch's defaults: random float32 weights;
    2. read every shard into one full state dict (a second copy of the weights);
    3. ``load_state_dict`` copies it into the model; 4. move to ``device`` in the checkpoint's dtype;
    5. a first forward pass. Returns (model, run). ``on_phase(name)`` is called as each phase begins.
    """
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    folder, dev, on_phase = _folder(path), _device(device), phase_hook(on_phase)
    config = AutoConfig.from_pretrained(folder)
    stored = config.dtype or torch.float32  # from_config below rewrites config.dtype
    ids = _forward_ids(config)
    shards = shard_files(folder)
    with quiet_libraries(progress_bars=False), track("naive load", device=dev.type) as report:
        phase = _Phases(dev.type, on_phase)
        with phase("init: random float32 model"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        state: dict[str, torch.Tensor] = {}
        for i, shard in enumerate(shards, 1):
            # load_file only maps each file (an instant): one mark for all the reads, not one per shard
            # (marks a few milliseconds apart would print their labels on top of each other)
            with phase(f"read shard {i}/{len(shards)}", mark=i == 1 and f"read {len(shards)} shards (load_file)"):
                state.update(load_file(str(shard)))
        with phase("load_state_dict"):
            missing, unexpected = model.load_state_dict(state, strict=False)
            del state
        with phase(f"move to {dev} in {str(stored).removeprefix('torch.')}"):
            model.tie_weights()
            model = model.to(dev, dtype=stored)
            gc.collect()
        if forward:
            with phase("first forward"), torch.no_grad():
                model(ids.to(dev), logits_to_keep=1)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"the checkpoint does not match its config: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    return model.eval(), LoadRun("naive: init, then load", report, phase.items, _checkpoint_bytes(folder))


def load_bmi(path: str | os.PathLike, device: str = "cpu", forward: bool = True,
             on_phase: _PhaseHook | None = None) -> tuple[Any, LoadRun]:
    """Big Model Inference, measured: ``from_pretrained(path, dtype="auto", device_map=device)``.

    Meta-device model (no data), a plan, then the weights from every shard, mapped at once; on a CPU the
    mapped tensors are kept as they are, so the weights enter memory when the first forward pass touches them.
    ``on_phase(name)`` is called as each phase begins.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    folder, dev, on_phase = _folder(path), _device(device), phase_hook(on_phase)
    ids = _forward_ids(AutoConfig.from_pretrained(folder))
    with quiet_libraries(progress_bars=False), track("Big Model Inference", device=dev.type) as report:
        phase = _Phases(dev.type, on_phase)
        with phase("from_pretrained: meta model, plan, shards"):
            model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto", device_map=dev)
        if forward:
            with phase("first forward"), torch.no_grad():
                model(ids.to(dev), logits_to_keep=1)
    return model, LoadRun("Big Model Inference: from_pretrained", report, phase.items, _checkpoint_bytes(folder))


# The phases of from_pretrained, in order (the first begins with the call; the others are marked from inside it).
BMI_PHASES = ("empty model on meta", "placement plan", "weights materialised", "first forward")


def load_bmi_phases(path: str | os.PathLike, device: str = "cpu", dtype: str = "auto", forward: bool = True,
                    on_phase: _PhaseHook | None = None) -> tuple[Any, LoadRun]:
    """``from_pretrained(path, dtype=dtype, device_map=device)`` with its phases measured one by one.

    The phases (:data:`BMI_PHASES`) are marked from inside the real call (``_compat.from_pretrained_phases``):
    the config read and the **empty model on meta**, the **placement plan** (``_get_device_map``), the
    **weights materialised** (transformers 5 maps every shard at once and a pool of threads reads, casts and
    places the tensors; tied weights settled), then the **first forward**. Each :class:`Phase` carries its
    exact peak above the start. ``dtype`` other than the checkpoint's (e.g. "float32" for a bf16 checkpoint)
    makes every weight a new tensor even on a CPU, as a load to a GPU does. The run's ``loader`` says how
    the installed transformers loads (its threads, whether they are on).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from ._compat import from_pretrained_phases

    folder, dev, on_phase = _folder(path), _device(device), phase_hook(on_phase)
    wanted = dtype if dtype == "auto" else getattr(torch, _dtype_name(dtype))
    ids = _forward_ids(AutoConfig.from_pretrained(folder))
    with quiet_libraries(progress_bars=False), track("from_pretrained, phase by phase", device=dev.type) as report:
        phase = _Phases(dev.type, on_phase, report)
        phase.begin(BMI_PHASES[0])
        with from_pretrained_phases(phase.begin) as facts:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=wanted, device_map=dev)
        phase.end()
        if forward:
            with phase(BMI_PHASES[3]), torch.no_grad():
                model(ids.to(dev), logits_to_keep=1)
    label = f"transformers {facts.version}: from_pretrained"
    return model, LoadRun(label, report, phase.items, _checkpoint_bytes(folder), facts)


def _dtype_name(dtype: str) -> str:
    from ._dtypes import dtype_name

    return dtype_name(dtype, allowed=("float32", "float16", "bfloat16"))


def compare_loads(path: str | os.PathLike, device: str = "cpu", on_phase: _PhaseHook | None = None) -> LoadComparison:
    """Both loads of ``path`` in this process, each model freed before the next.

    BMI runs first, so any one-time cost of the process (importing model code, first kernels)
    lands on it, not on the naive load: the ratio is, if anything, understated. ``on_phase(name)``
    is called as each phase begins, the name prefixed with the load ("BMI: first forward").
    """
    phase_hook(on_phase)
    model, bmi = load_bmi(path, device, on_phase=phase_hook(on_phase, "BMI: "))
    del model
    _release()
    model, naive = load_naive(path, device, on_phase=phase_hook(on_phase, "naive: "))
    del model
    _release()
    return LoadComparison(naive, bmi)


def compare_loaders(path: str | os.PathLike, device: str = "cpu", dtype: str = "float32",
                    on_phase: _PhaseHook | None = None) -> LoaderComparison:
    """accelerate's shard loop (:func:`shard_by_shard`, what the talk shows) and transformers'
    ``from_pretrained`` (:func:`load_bmi_phases`), both into ``dtype`` on ``device`` with a first forward
    pass, each model freed before the next. A ``dtype`` other than the checkpoint's makes both copy every
    weight, on a CPU too, so what differs is how much of the checkpoint each holds in flight.
    ``on_phase(name)`` gets each phase prefixed with the loader ("accelerate: shard 2/4").

    Lesson 02 runs it on bigsmall-small in float32: accelerate's loop peaks near 804 MiB, ``from_pretrained``
    near 1,081 MiB (tests/test_truth_lesson02.py checks the order on a small checkpoint).
    """
    phase_hook(on_phase)
    _dtype_name(dtype)
    steps = shard_by_shard(path, device, dtype=dtype, forward=True, on_phase=phase_hook(on_phase, "accelerate: "))
    _release(steps)
    model, run = load_bmi_phases(path, device, dtype=dtype, on_phase=phase_hook(on_phase, "transformers: "))
    del model
    _release()
    return LoaderComparison(steps, run)


# --- shard by shard with accelerate's utilities -------------------------------------------------

def shard_by_shard(path: str | os.PathLike, device: str = "cpu", copy: bool = True,
                   keep_model: bool = False, on_phase: _PhaseHook | None = None, dtype: str | None = None,
                   forward: bool = False) -> ShardSteps:
    """Load the checkpoint into an empty model one shard at a time, measuring memory after each.

    The calls are accelerate's: ``init_empty_weights()`` builds the model on the meta device;
    per shard, ``accelerate.utils.load_state_dict(shard)`` reads it and
    ``set_module_tensor_to_device(model, name, device, value=tensor)`` puts each tensor in place;
    then the shard's dict is dropped. (``load_checkpoint_and_dispatch`` does all of it in one call.)
    The peak while a shard loads stays near the weights loaded so far plus that shard.

    On a CPU the tensors of a safetensors shard are views of the memory-mapped file: placing them
    costs nothing until they are read. ``copy=True`` copies each one into the process's own
    memory (what loading to a GPU, or into another dtype, must do), so the weights held grow shard
    by shard; ``copy=False`` keeps the mapped views (what ``from_pretrained`` does on a CPU).
    ``on_phase(name)`` is called as each phase begins ("shard 2/4"). ``dtype`` (default: the checkpoint's)
    builds the model in another dtype: each tensor is then cast as it is placed (a copy either way).
    ``forward=True`` adds a first forward pass, as a phase.
    """
    from accelerate import init_empty_weights
    from accelerate.utils import load_state_dict, set_module_tensor_to_device
    from transformers import AutoConfig, AutoModelForCausalLM

    folder, dev, on_phase = _folder(path), _device(device), phase_hook(on_phase)
    config = AutoConfig.from_pretrained(folder)
    stored = config.dtype or torch.float32
    target = getattr(torch, _dtype_name(dtype)) if dtype is not None else stored
    cast = target != stored  # casting copies anyway: no clone before it
    ids = _forward_ids(config)
    shards = shard_files(folder)
    steps: list[ShardStep] = []
    loaded = 0
    with quiet_libraries(progress_bars=False), track("shard by shard", device=dev.type) as report:
        phase = _Phases(dev.type, on_phase, report)
        with phase("init_empty_weights: meta model"), init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=target)
        trim_heap()
        start = _now(dev)  # the empty model costs (almost) nothing: steps count from here
        for i, shard in enumerate(shards, 1):
            n_bytes = shard_bytes(shard)
            placed = n_bytes * target.itemsize // stored.itemsize  # its bytes once placed (cast) in the model
            t = time.perf_counter()
            with phase(f"shard {i}/{len(shards)}"), peak(dev.type) as step_peak:
                state = load_state_dict(str(shard))
                for name, tensor in state.items():
                    value = tensor.clone() if copy and not cast and dev.type == "cpu" else tensor
                    set_module_tensor_to_device(model, name, dev, value=value)
                del state, tensor, value
                gc.collect()
            loaded += placed
            steps.append(ShardStep(shard.name, n_bytes, loaded, step_peak.bytes - start,
                                   _now(dev) - start, time.perf_counter() - t))
        with phase("tie_weights"):
            model.tie_weights()
        if forward:
            with phase("first forward"), torch.no_grad():
                model(ids.to(dev), logits_to_keep=1)
    return ShardSteps(steps, report, phase.items, dev.type, model if keep_model else None)


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _now(dev: torch.device) -> int:
    return torch.cuda.memory_allocated(dev) if dev.type == "cuda" else cpu_memory()["VmRSS"]


# --- loading with a device map ------------------------------------------------------------------

def offload_dir(name: str = "offload") -> Path:
    """A folder for disk offload inside the lab's cache (created). ``name`` is one folder name: a path that
    climbs out of the cache ('../../etc') or an absolute one is refused in one sentence."""
    folder = cache_dir() / check_name(name)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def load_placed(path: str | os.PathLike, strategy: str | Strategy = "auto", max_memory: Mapping[Any, Any] | None = None,
                offload_folder: str | os.PathLike | None = None, dtype: str = "auto") -> PlacedLoad:
    """``from_pretrained(path, device_map=strategy, max_memory=..., offload_folder=...)``, planned first.

    The plan is made before loading, so bad inputs stop here in one sentence: a GPU index that
    this machine lacks, or a plan that puts modules on disk with no ``offload_folder``.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    strategy = Strategy.parse(strategy)
    folder = _folder(path)
    if max_memory is None:
        raise LabError.bad("max_memory", None, "give a dict of device -> size, e.g. {'cpu': '200MiB'}",
                           verb="is missing")
    budgets = parse_budgets(max_memory)
    for device in budgets:
        if isinstance(device, int):
            _check_gpu_index(device, "max_memory key")
    config = AutoConfig.from_pretrained(folder)
    plan_dtype = str(config.dtype).removeprefix("torch.") if dtype == "auto" and config.dtype else dtype
    predicted = plan(folder, strategy, budgets, dtype=plan_dtype)
    on_disk = [k for k, v in predicted.device_map.items() if v == "disk"]
    if on_disk and offload_folder is None:
        raise LabError(f"offload_folder is None but max_memory {shown(dict(max_memory))} sends {len(on_disk)} "
                       f"modules to disk; pass offload_folder=bsl.loading.offload_dir() or a folder of yours")
    target = Path(offload_folder).expanduser() if offload_folder is not None else None
    if target is not None:
        target.mkdir(parents=True, exist_ok=True)
    guard = writing_into(target, "from_pretrained offloaded layers to disk") if target is not None \
        else contextlib.nullcontext()
    with quiet_libraries(progress_bars=False), guard, \
            track("load with a device map", device="cuda" if predicted.gpus else "cpu") as report:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, device_map=strategy.value,
            max_memory=dict(budgets),  # from_pretrained rewrites the dict it gets: a copy
            offload_folder=str(target) if target is not None else None)
    hf_map = getattr(model, "hf_device_map", None)
    hf_map = dict(hf_map) if hf_map is not None else None
    files = sorted(p.name for p in target.iterdir()) if target is not None else []
    # One device for everything: from_pretrained sets no hf_device_map; the chart shows it as {"": device}.
    loaded = from_device_map(folder, hf_map or {"": _single_device(model)}, dtype=predicted.dtype,
                             max_memory=budgets)
    return PlacedLoad(model, predicted, hf_map, loaded, placed_bytes(model), report, target, files)


def placed_bytes(model: torch.nn.Module) -> dict[Any, int]:
    """Weight bytes each device really holds after loading: GPU indices, "cpu" and "disk".

    A parameter offloaded by accelerate's hooks sits on the meta device; its data lives in the
    hook's weights map: in CPU memory (``state_dict``) or read from disk on demand (``index``).
    """
    out: dict[Any, int] = {}
    seen: set[int] = set()
    offloaded: dict[str, str] = {}
    for name, module in model.named_modules():
        hook = getattr(module, "_hf_hook", None)
        weights = getattr(hook, "weights_map", None) if getattr(hook, "offload", False) else None
        if weights is None:
            continue
        loader = getattr(weights, "dataset", weights)
        prefix = getattr(weights, "prefix", "")
        in_ram = getattr(loader, "state_dict", {}) or {}
        for pname, _ in module.named_parameters(recurse=False):
            offloaded[f"{name}.{pname}" if name else pname] = "cpu" if f"{prefix}{pname}" in in_ram else "disk"
    for name, param in model.named_parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        device = offloaded.get(name) if param.device.type == "meta" else _norm(param.device)
        if device is None:
            device = "meta"
        out[device] = out.get(device, 0) + param.numel() * param.element_size()
    return out


# --- generation ---------------------------------------------------------------------------------

class _StepClock:
    """A logits processor that only notes the time: generate calls it once per new token."""

    def __init__(self):
        self.times: list[float] = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def generate_timed(model, ids: torch.Tensor, new_tokens: int = 4) -> Generation:
    """Greedy ``generate`` of exactly ``new_tokens`` tokens, with the time of each decode step."""
    from transformers import LogitsProcessorList

    if new_tokens < 2:
        raise LabError.bad("new_tokens", new_tokens,
                           "use 2 or more: the first token also pays the prompt's forward pass",
                           verb="is too few to time a decode step")
    clock = _StepClock()
    with quiet_libraries(progress_bars=False), torch.no_grad():
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             logits_processor=LogitsProcessorList([clock]), output_logits=True,
                             return_dict_in_generate=True,
                             pad_token_id=getattr(model.config, "pad_token_id", None) or 0)
        seconds = time.perf_counter() - start
    steps = tuple(b - a for a, b in zip(clock.times, clock.times[1:]))
    logits = torch.cat([step[:1].float().cpu() for step in out.logits])  # (new tokens, vocab)
    return Generation(out.sequences[0, ids.shape[1]:].tolist(), seconds, steps, logits)
