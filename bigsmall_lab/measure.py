"""Measure memory: one sampler (a thread reading the memory counters, with a callback), and
``track()``, a block's exact peak plus the sampler's timeline, on a CUDA GPU or on the CPU.

>>> with track(device="cpu") as t:
...     x = torch.ones(2**26)                             # 256 MiB of float32
>>> 0.95 <= t.peak_bytes / 2**28 < 1.5                    # the tensor, and a little of the runtime's
True

On CUDA the figures are torch's: allocated, reserved, ``max_memory_allocated`` (all exact), and the
device's used memory from NVML (which also counts the CUDA context and other processes).
On the CPU the peak is the kernel's own high-water mark of the process (``VmHWM``), reset at the
start of the block through ``/proc/self/clear_refs`` where allowed, so it is exact, not sampled.
Blocks nest: an inner block resets the high-water mark only after folding the peak so far into
every open outer block, so an outer block keeps its own peak.

:class:`Sampler` reads ``RssAnon`` (memory the process allocated: tensors, the heap) and ``RssFile``
(file pages mapped in: memory-mapped safetensors shards) separately: loading a safetensors model
moves RssFile, copying it into fresh tensors moves RssAnon. Where ``/proc/self/status`` does not
exist (macOS, Windows) it reads psutil's resident set instead, which cannot be split, and a peak
found from samples is labelled 'sampled'. A live chart passes ``on_sample``:

>>> with Sampler(interval_s=0.05, on_sample=lambda s: None) as sampler:
...     pass
>>> len(sampler.samples) >= 2, sampler.is_alive, sampler.error
(True, False, None)
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import math
import numbers
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psutil
import torch

from ._errors import LabError, shown
from ._nvml import nvml, nvml_handle
from ._units import MiB

__all__ = ["READER_ENV", "UNSPLIT_NOTE", "MemoryReport", "Peak", "Sample", "Sampler", "cpu_memory", "rss_split", "peak", "phase_hook", "quant_state_tensors",
           "sample_now", "stored_weight_bytes", "track", "trim_heap", "unique_bytes"]

_STATUS = "/proc/self/status"
_MIN_INTERVAL_S = 0.001  # below a millisecond the thread only burns a core
_JOIN_TIMEOUT_S = 5.0
_live_samplers: weakref.WeakSet = weakref.WeakSet()


@dataclass(frozen=True)
class Sample:
    """One point of a timeline: bytes at ``t_s`` seconds after the sampler started.

    ``rss_anon`` / ``rss_file``: the process's anonymous and file-backed resident memory (where the
    kernel does not split them, ``rss_anon`` holds the whole resident set and ``rss_file`` is 0;
    see :attr:`Sampler.rss_split`). The CUDA figures are None when the sampler watches the CPU,
    ``nvml_used`` is None where NVML is not available.
    """

    t_s: float
    rss_anon: int
    rss_file: int
    cuda_allocated: int | None = None
    cuda_reserved: int | None = None
    nvml_used: int | None = None

    @property
    def rss_bytes(self) -> int:
        """The process's whole resident set (anon + file)."""
        return self.rss_anon + self.rss_file


@dataclass
class MemoryReport:
    """What :func:`track` measured. ``peak_bytes`` is above the memory in use when the block started.

    device: 'cuda' or 'cpu'. peak_source: how the peak was found: 'max_memory_allocated' (CUDA),
    'VmHWM' (exact CPU high-water mark) or 'sampled' (max of the timeline; may miss short spikes).
    ``rss_split``: False where the CPU figures are psutil's unsplit resident set (no RssAnon/RssFile).
    """

    device: str
    label: str = ""
    start_bytes: int = 0
    peak_bytes: int = 0
    end_bytes: int = 0
    wall_s: float = 0.0
    peak_source: str = ""
    peak_rss_anon_bytes: int = 0
    peak_rss_file_bytes: int = 0
    cuda_reserved_peak_bytes: int | None = None
    nvml_used_peak_bytes: int | None = None
    samples: list[Sample] = field(default_factory=list)
    finished: bool = False
    rss_split: bool = True

    @property
    def retained_bytes(self) -> int:
        """Memory still held after the block (e.g. a loaded model), above the start."""
        return self.end_bytes - self.start_bytes

    def __repr__(self) -> str:
        state = "" if self.finished else " (running)"
        return (f"MemoryReport({self.label or self.device}{state}: peak +{self.peak_bytes / MiB:,.1f} MiB "
                f"[{self.peak_source}], retained +{self.retained_bytes / MiB:,.1f} MiB, {self.wall_s:.2f} s)")


# ---------------------------------------------------------------------------------------------
# Reading the counters


# "psutil" makes the lab read memory the way it must on macOS and Windows (one resident set, no
# high-water mark to reset): how the tests, and anyone curious, run those platforms' code paths on Linux.
READER_ENV = "BIGSMALL_LAB_MEMORY_READER"

# What a lesson prints where the split below cannot be read.
UNSPLIT_NOTE = ("This system reports one resident set per process (macOS and Windows do; Linux's /proc also splits "
                "it into allocated memory, RssAnon, and mapped file pages, RssFile), so the lab shows the whole "
                "resident set here and cannot say which part is file pages.")


def _has_proc_status() -> bool:
    return os.environ.get(READER_ENV, "").strip().lower() != "psutil" and os.path.exists(_STATUS)


def rss_split() -> bool:
    """Whether this system splits the resident set into RssAnon and RssFile (Linux: yes)."""
    return "RssFile" in _read_status(raw=True)


def _read_status(raw: bool = False) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile, RssShmem in bytes; psutil's resident set where /proc is absent
    (then VmHWM is the current resident size: no high-water mark to read, and RssAnon holds the whole
    resident set with RssFile 0; ``raw=True`` leaves those two out instead)."""
    if _has_proc_status():
        try:
            fields = {}
            with open(_STATUS) as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                        fields[key] = int(rest.split()[0]) * 1024
            if "RssAnon" in fields:
                return fields
        except OSError:
            pass
    rss = int(psutil.Process().memory_info().rss)
    if raw:
        return {"VmRSS": rss, "VmHWM": rss}
    return {"VmRSS": rss, "VmHWM": rss, "RssAnon": rss, "RssFile": 0, "RssShmem": 0}


def cpu_memory() -> dict[str, int]:
    """The process's memory now, bytes: VmRSS (resident), VmHWM (peak), RssAnon, RssFile, RssShmem."""
    return _read_status()


def _reset_cpu_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it (or has no /proc)."""
    if not _has_proc_status():
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def trim_heap() -> None:
    """Give freed memory back to the OS (glibc's ``malloc_trim``), so the next measurement starts low.

    glibc keeps freed blocks in its arenas: without this, a tensor freed by an earlier cell is
    still resident and a new one silently reuses its pages (no growth shows). No-op elsewhere.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


_trim_heap = trim_heap


class _NvmlUsed:
    """Device-wide used memory from NVML of the GPU that is torch's ``cuda:index`` (matched by UUID, so
    right under ``CUDA_VISIBLE_DEVICES``); returns None without a driver or library."""

    def __init__(self, index: int):
        lib = nvml()
        self.handle = nvml_handle(index, lib) if lib is not None else None
        if self.handle is not None:  # no driver, no library, no match: the torch figures still stand
            self._info = lib.nvmlDeviceGetMemoryInfo

    def __call__(self) -> int | None:
        if self.handle is None:
            return None
        try:
            return int(self._info(self.handle).used)
        except Exception:  # the driver went away mid-run: report "not available", not a number
            return None


def _cuda_index(device, argument: str = "device") -> int | None:
    """None for the CPU, the GPU index for CUDA; one sentence for anything else."""
    if device is None:
        return 0 if torch.cuda.is_available() else None
    if isinstance(device, bool) or not isinstance(device, (str, torch.device)):
        raise LabError.bad(argument, device, "use 'cpu', 'cuda' or 'cuda:N'")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise LabError.bad(argument, device, "use 'cpu', 'cuda' or 'cuda:N'", verb="is not a device") from None
    if dev.type not in ("cuda", "cpu"):
        raise LabError.bad(argument, device, "memory can be measured on 'cpu' or 'cuda[:N]'",
                           verb="cannot be measured")
    if dev.type == "cpu":
        return None
    if not torch.cuda.is_available():
        raise LabError.bad(argument, device, "no CUDA GPU is attached; use device='cpu'", verb="asks for CUDA")
    index = dev.index or 0
    if index >= torch.cuda.device_count():
        raise LabError.bad(argument, device, f"this machine has {torch.cuda.device_count()} CUDA GPU(s)",
                           verb="names a GPU that is not there")
    return index


def _interval(interval_s) -> float:
    allowed = f"use a number of seconds >= {_MIN_INTERVAL_S}, e.g. 0.01"
    if isinstance(interval_s, bool) or not isinstance(interval_s, numbers.Real):
        raise LabError.bad("interval_s", interval_s, allowed, verb="is not a number")
    value = float(interval_s)
    if not math.isfinite(value) or value < _MIN_INTERVAL_S:
        raise LabError.bad("interval_s", interval_s, allowed, verb="is out of range")
    return value


def _take(cuda_index: int | None, t_s: float, nvml: _NvmlUsed | None) -> Sample:
    status = _read_status()
    if cuda_index is None:
        return Sample(t_s, status["RssAnon"], status["RssFile"])
    return Sample(t_s, status["RssAnon"], status["RssFile"], torch.cuda.memory_allocated(cuda_index),
                  torch.cuda.memory_reserved(cuda_index), nvml() if nvml is not None else None)


def sample_now(device: str | torch.device | None = None) -> Sample:
    """One reading of the counters now (``t_s`` is 0.0: a lone sample has no start to count from).

    ``device``: 'cpu', 'cuda' or 'cuda:N' (default: CUDA when present). On CUDA the sample also holds
    torch's allocated and reserved bytes and NVML's used bytes (None without NVML).

    >>> sample_now("cpu").rss_anon > 0
    True
    """
    index = _cuda_index(device)
    return _take(index, 0.0, _NvmlUsed(index) if index is not None else None)


# ---------------------------------------------------------------------------------------------
# The sampler


class Sampler:
    """A background thread that reads the memory counters every ``interval_s`` seconds.

    ``samples`` grows while it runs (the first sample is in by the time :meth:`start` returns; a
    last one is taken when it stops). ``on_sample(sample)`` is called from the sampler's thread
    for each sample: a live chart updates itself there. If the callback (or a reading) raises, the
    sampler stops cleanly and keeps the exception on :attr:`error`; the process goes on.
    :meth:`stop` is idempotent, joins the thread and may be called from any thread, the callback
    included. Every sampler still running at interpreter exit is stopped.

    Sampling at 10 ms costs a few % of one core; at 200 ms a short spike may fall between two
    samples (``track`` reads the kernel's exact peak beside the timeline).

    >>> seen = []
    >>> with Sampler(interval_s=0.01, device="cpu", on_sample=seen.append) as s:
    ...     time.sleep(0.05)
    >>> len(seen) == len(s.samples) >= 2
    True
    """

    def __init__(self, interval_s: float = 0.2, device: str | torch.device | None = None,
                 on_sample: Callable[[Sample], object] | None = None):
        self.interval_s = _interval(interval_s)
        self.cuda_index = _cuda_index(device)
        if on_sample is not None and not callable(on_sample):
            raise LabError.bad("on_sample", on_sample, "pass a function that takes one Sample, or None",
                               verb="is not callable")
        self.device = "cpu" if self.cuda_index is None else f"cuda:{self.cuda_index}"
        self.on_sample = on_sample
        self.samples: list[Sample] = []
        self.error: BaseException | None = None
        self.rss_split = rss_split()
        self._nvml = _NvmlUsed(self.cuda_index) if self.cuda_index is not None else None
        self._stop = threading.Event()
        self._first = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._lock = threading.Lock()

    @property
    def is_alive(self) -> bool:
        """True while the sampling thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Sampler:
        """Start sampling; returns once the first sample is in ``samples``. A sampler runs once."""
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                raise LabError("this Sampler has already run; make a new Sampler(...) to sample again")
            self._t0 = time.perf_counter()
            self._thread = threading.Thread(target=self._run, name="bigsmall_lab-memory-sampler", daemon=True)
            _live_samplers.add(self)
            self._thread.start()
        self._first.wait(timeout=_JOIN_TIMEOUT_S)
        return self

    def stop(self) -> Sampler:
        """Stop sampling (a last sample is taken); safe to call twice, before start, or from any thread."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and threading.current_thread() is not thread:
            thread.join(timeout=_JOIN_TIMEOUT_S + self.interval_s)
        _live_samplers.discard(self)
        return self

    def _sample(self) -> None:
        sample = _take(self.cuda_index, time.perf_counter() - self._t0, self._nvml)
        self.samples.append(sample)
        self._first.set()
        if self.on_sample is not None:
            self.on_sample(sample)

    def _run(self) -> None:
        try:
            self._sample()
            # Wait until the next deadline, not a full interval after the sample: 0.2 s gives 5 samples
            # a second, however long reading memory (and the callback) takes.
            deadline = time.perf_counter() + self.interval_s
            while not self._stop.wait(max(deadline - time.perf_counter(), 0.0)):
                self._sample()
                deadline = max(deadline + self.interval_s, time.perf_counter())
            self._sample()  # the last point, when stop() was asked
        except BaseException as err:  # noqa: BLE001  (kept on .error: a chart's bug never kills the kernel)
            self.error = err
            self._stop.set()
        finally:
            self._first.set()
            _live_samplers.discard(self)

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_alive else ("failed: " + shown(self.error) if self.error else "stopped")
        return f"Sampler({self.device}, every {self.interval_s:g} s, {len(self.samples)} samples, {state})"


@atexit.register
def _stop_all() -> None:
    # A kernel shutting down mid-block: never leave a sampler running.
    for sampler in list(_live_samplers):
        sampler.stop()


# ---------------------------------------------------------------------------------------------
# Peaks that nest


class _Peak:
    """An open block's peak on one counter (the CPU's VmHWM or one GPU's max_memory_allocated)."""

    def __init__(self, cuda_index: int | None):
        self.cuda_index = cuda_index
        self.folded = 0  # the highest absolute reading taken before an inner block reset the counter
        self.exact = False


_open_peaks: list[_Peak] = []
_peaks_lock = threading.Lock()


def _high_water(cuda_index: int | None) -> int:
    if cuda_index is None:
        return _read_status()["VmHWM"]
    return torch.cuda.max_memory_allocated(cuda_index)


def _reset_high_water(cuda_index: int | None) -> bool:
    if cuda_index is None:
        return _reset_cpu_peak()
    if not torch.cuda.is_initialized():  # torch refuses to reset before its allocator exists ("did you call init?")
        torch.cuda.init()
    torch.cuda.reset_peak_memory_stats(cuda_index)
    return True


def _open_peak(cuda_index: int | None) -> _Peak:
    """Start a block's peak: fold the high-water mark so far into the open blocks, then reset it."""
    with _peaks_lock:
        now = _high_water(cuda_index)
        for outer in _open_peaks:
            if outer.cuda_index == cuda_index:
                outer.folded = max(outer.folded, now)
        peak = _Peak(cuda_index)
        peak.exact = _reset_high_water(cuda_index)
        _open_peaks.append(peak)
        return peak


def _close_peak(peak: _Peak) -> int:
    """The block's absolute peak (bytes): the counter now, or a higher one an inner block folded in."""
    with _peaks_lock:
        with contextlib.suppress(ValueError):
            _open_peaks.remove(peak)
        return max(_high_water(peak.cuda_index), peak.folded)


@dataclass
class Peak:
    """The absolute high-water mark of one block, filled at its exit (see :func:`peak`)."""

    device: str
    bytes: int = 0
    exact: bool = False  # False where the counter could not be reset (the figure may include earlier peaks)


@contextlib.contextmanager
def peak(device: str | torch.device | None = None) -> Iterator[Peak]:
    """A block's peak, cheaply and nestably, without a timeline: the CPU's VmHWM or CUDA's
    ``max_memory_allocated``, reset at entry; an enclosing :func:`track` keeps its own peak.

    >>> with peak("cpu") as p:
    ...     x = torch.ones(2**26)                    # 256 MiB of float32
    >>> p.bytes >= 0.95 * 2**28
    True
    """
    cuda_index = _cuda_index(device)
    result = Peak("cpu" if cuda_index is None else f"cuda:{cuda_index}")
    handle = _open_peak(cuda_index)
    result.exact = handle.exact
    try:
        yield result
    finally:
        result.bytes = _close_peak(handle)


def phase_hook(on_phase: Callable[[str], object] | None, prefix: str = "") -> Callable[[str], object] | None:
    """A runner's ``on_phase(name)`` argument (called as each phase begins, e.g. a live chart's ``mark``),
    checked at the public function; with ``prefix``, every name it gets starts with it. None stays None."""
    if on_phase is None:
        return None
    if not callable(on_phase):
        raise LabError.bad("on_phase", on_phase, "pass a function that takes the phase's name (e.g. a live "
                           "chart's mark), or None", verb="is not callable")
    if not prefix:
        return on_phase
    return lambda name: on_phase(f"{prefix}{name}")




# ---------------------------------------------------------------------------------------------
# track()


@contextlib.contextmanager
def track(label: str = "", device: str | torch.device | None = None,
          interval_s: float = 0.01) -> Iterator[MemoryReport]:
    """Measure the peak memory and a timeline of the block; yields a :class:`MemoryReport` filled at exit.

    ``device``: 'cuda' (or 'cuda:N') or 'cpu'; default: CUDA when present. ``interval_s``: the
    timeline's sampling period (10 ms: a few % overhead; the CPU peak does not depend on it).
    Blocks nest: an outer block's peak includes what its inner blocks reached.
    """
    if not isinstance(label, str):
        raise LabError.bad("label", label, "use a short text such as 'load in bf16'", verb="is not a text")
    sampler = Sampler(interval_s, device)  # validates interval_s and device
    cuda_index = sampler.cuda_index
    report = MemoryReport(device="cpu" if cuda_index is None else "cuda", label=label,
                          rss_split=sampler.rss_split)
    _trim_heap()
    if cuda_index is not None:
        torch.cuda.synchronize(cuda_index)
    peak = _open_peak(cuda_index)
    if cuda_index is not None:
        report.start_bytes = torch.cuda.memory_allocated(cuda_index)
        report.peak_source = "max_memory_allocated"
    else:
        report.peak_source = "VmHWM" if peak.exact else "sampled"
        report.start_bytes = _read_status()["VmRSS"]
    report.samples = sampler.samples  # the same list: a report is readable while the block runs
    sampler.start()
    try:
        yield report
    finally:
        if cuda_index is not None:
            torch.cuda.synchronize(cuda_index)
        sampler.stop()
        _finish(report, sampler, _close_peak(peak))


def _finish(report: MemoryReport, sampler: Sampler, peak_abs: int) -> None:
    report.wall_s = time.perf_counter() - sampler._t0
    samples = report.samples
    if not samples:  # the sampler failed before its first reading
        samples.append(_take(sampler.cuda_index, report.wall_s, sampler._nvml))
    report.peak_rss_anon_bytes = max(s.rss_anon for s in samples)
    report.peak_rss_file_bytes = max(s.rss_file for s in samples)
    index = sampler.cuda_index
    if index is not None:
        report.peak_bytes = max(peak_abs - report.start_bytes, 0)
        report.end_bytes = torch.cuda.memory_allocated(index)
        report.cuda_reserved_peak_bytes = max(torch.cuda.max_memory_reserved(index),
                                              max(s.cuda_reserved or 0 for s in samples))
        used = [s.nvml_used for s in samples if s.nvml_used is not None]
        report.nvml_used_peak_bytes = max(used) if used else None
    else:
        status = _read_status()
        peak = peak_abs if report.peak_source == "VmHWM" else max(s.rss_bytes for s in samples)
        # VmRSS is read a moment after the peak: a page touched in between must not put the end above the peak
        report.end_bytes = status["VmRSS"]
        report.peak_bytes = max(peak, report.end_bytes) - report.start_bytes
        report.peak_bytes = max(report.peak_bytes, 0)
    report.finished = True


# ---------------------------------------------------------------------------------------------
# Weights as stored


def quant_state_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """The tensors bitsandbytes keeps beside quantized weights, which are not parameters (so
    ``get_memory_footprint()`` leaves them out).

    int8: ``SCB`` (one float32 scale per output row), on the weight until the first forward pass,
    then on the module's ``state`` (bitsandbytes moves it there). 4-bit: the ``quant_state``'s
    absmax, code book and offset, and those of its nested state (double quantization).
    """
    found = []
    for module in model.modules():
        weight = getattr(module, "weight", None)
        scb = getattr(weight, "SCB", None)
        if scb is None:
            scb = getattr(getattr(module, "state", None), "SCB", None)
        if isinstance(scb, torch.Tensor):
            found.append(scb)
        state = getattr(weight, "quant_state", None)
        while state is not None:
            found += [t for t in (getattr(state, "absmax", None), getattr(state, "code", None),
                                  getattr(state, "offset", None)) if isinstance(t, torch.Tensor)]
            state = getattr(state, "state2", None)
    return found


def unique_bytes(tensors) -> int:
    """Bytes of ``tensors``, each storage once (a tied weight counts once; meta tensors each count)."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for t in tensors:
        key = (t.device.type, t.untyped_storage().data_ptr())
        if t.device.type == "meta" or key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def stored_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a loaded model really stores for its weights, each storage once.

    Parameters plus bitsandbytes' quantization state (int8 row scales; 4-bit absmax, code books,
    nested absmax), which ``get_memory_footprint()`` leaves out. Buffers (rotary tables) are not
    counted, as checkpoints do not store them.
    """
    if not isinstance(model, torch.nn.Module):
        raise LabError.bad("model", model, "pass a torch.nn.Module (a loaded model)", verb="is not a model")
    return unique_bytes([*model.parameters(), *quant_state_tensors(model)])
