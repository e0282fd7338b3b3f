"""Load a sharded checkpoint the naive way and the Big Model Inference way, and measure both.

The naive way makes the model twice: PyTorch builds it with random float32 weights, then the
checkpoint is read into a second copy (the state dict) and copied over. For a 190M-parameter
bf16 checkpoint that is 760 MB of random weights + 380 MB of state dict before the first is freed.
``from_pretrained`` instead builds the model on the meta device (no data), plans where each
module goes (:mod:`bigsmall_lab.placement`), and loads the shards one at a time. On a CPU,
safetensors shards are memory-mapped: the weights enter the process's memory as file pages
(``RssFile``) when a forward pass first touches them, never as a copy (``RssAnon``).

>>> cmp = compare_loads(bsl.checkpoint("bigsmall-small"))   # doctest: +SKIP
>>> round(cmp.ratio, 1)                                      # doctest: +SKIP
2.9

The loads take ``on_phase``: a function called with each phase's name as the phase begins
(``"load_state_dict"``, ``"shard 2/4"``, ``"first forward"``). Pass a live chart's ``mark`` to see
the phases on it:

>>> from bigsmall_lab.views import LiveMemory                # doctest: +SKIP
>>> live = LiveMemory()                                      # doctest: +SKIP
>>> with live:                                               # doctest: +SKIP
...     cmp = compare_loads(path, on_phase=live.mark)

Runner functions here touch memory, files and devices; every number they report is measured.
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

from ._compat import quiet_libraries
from ._errors import LabError, shown
from ._paths import cache_dir
from .measure import MemoryReport, cpu_memory, peak, phase_hook, track, trim_heap
from .placement import Plan, Strategy, from_device_map, parse_budgets, plan

__all__ = ["Generation", "LoadComparison", "LoadRun", "Phase", "PlacedLoad", "ShardStep", "ShardSteps",
           "compare_loads", "generate_timed", "load_bmi", "load_naive", "load_placed", "offload_dir",
           "placed_bytes", "shard_by_shard", "shard_bytes", "shard_files"]


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


@dataclass
class LoadRun:
    """A measured load: the memory timeline (``report``), its phases, and the checkpoint's weight bytes."""

    label: str
    report: MemoryReport
    phases: list[Phase]
    checkpoint_bytes: int

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
class ShardStep:
    """Memory around loading one shard into the empty model (bytes above the memory in use once the
    empty model was built)."""

    shard: str
    shard_bytes: int
    loaded_bytes: int  # weights in the model after this shard
    peak_bytes: int  # highest memory while this shard was read and placed
    after_bytes: int  # memory once the shard's state dict was dropped
    seconds: float


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


# --- helpers ------------------------------------------------------------------------------------

_PhaseHook = Callable[[str], object]


class _Phases:
    """Record named phases inside a tracked block, with the memory at the end of each; ``on_phase(name)``
    is called as each one begins (a live chart's mark)."""

    def __init__(self, device: str, on_phase: _PhaseHook | None = None):
        self.t0 = time.perf_counter()
        self.device = device
        self.on_phase = on_phase
        self.items: list[Phase] = []

    @contextlib.contextmanager
    def __call__(self, name: str, mark: str | bool = True) -> Iterator[None]:
        """``mark``: what ``on_phase`` gets: the phase's name (True), another text, or nothing (False)."""
        if self.on_phase is not None and mark:
            self.on_phase(name if mark is True else mark)
        start = time.perf_counter() - self.t0
        yield
        if self.device == "cuda":
            torch.cuda.synchronize()
        status = cpu_memory()
        allocated = torch.cuda.memory_allocated() if self.device == "cuda" else 0
        self.items.append(Phase(name, start, time.perf_counter() - self.t0, status["RssAnon"], status["RssFile"],
                                allocated))


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

    Meta-device model (no data), a plan, then the shards one at a time; on a CPU the shards are
    memory-mapped, so the weights enter memory when the first forward pass touches them.
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


# --- shard by shard with accelerate's utilities -------------------------------------------------

def shard_by_shard(path: str | os.PathLike, device: str = "cpu", copy: bool = True,
                   keep_model: bool = False, on_phase: _PhaseHook | None = None) -> ShardSteps:
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
    ``on_phase(name)`` is called as each phase begins ("shard 2/4").
    """
    from accelerate import init_empty_weights
    from accelerate.utils import load_state_dict, set_module_tensor_to_device
    from transformers import AutoConfig, AutoModelForCausalLM

    folder, dev, on_phase = _folder(path), _device(device), phase_hook(on_phase)
    config = AutoConfig.from_pretrained(folder)
    shards = shard_files(folder)
    steps: list[ShardStep] = []
    loaded = 0
    with quiet_libraries(progress_bars=False), track("shard by shard", device=dev.type) as report:
        phase = _Phases(dev.type, on_phase)
        with phase("init_empty_weights: meta model"), init_empty_weights():
            model = AutoModelForCausalLM.from_config(config, dtype=config.dtype)
        trim_heap()
        start = _now(dev)  # the empty model costs (almost) nothing: steps count from here
        for i, shard in enumerate(shards, 1):
            n_bytes = shard_bytes(shard)
            t = time.perf_counter()
            with phase(f"shard {i}/{len(shards)}"), peak(dev.type) as step_peak:
                state = load_state_dict(str(shard))
                for name, tensor in state.items():
                    value = tensor.clone() if copy and dev.type == "cpu" else tensor
                    set_module_tensor_to_device(model, name, dev, value=value)
                del state, tensor, value
                gc.collect()
            loaded += n_bytes
            steps.append(ShardStep(shard.name, n_bytes, loaded, step_peak.bytes - start,
                                   _now(dev) - start, time.perf_counter() - t))
        with phase("tie_weights"):
            model.tie_weights()
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
    """A folder for disk offload inside the lab's cache (created)."""
    folder = cache_dir() / name
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
    with quiet_libraries(progress_bars=False), track("load with a device map", device="cuda" if predicted.gpus else "cpu") as report:
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
