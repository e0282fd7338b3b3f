"""Measure a block's memory: its peak and a timeline, on a CUDA GPU or on the CPU.

>>> with track() as t:                                   # doctest: +SKIP
...     x = torch.ones(2**28)                             # 1 GiB of float32
>>> round(t.peak_bytes / 2**30, 2)                        # doctest: +SKIP
1.0

On CUDA the figures are torch's: allocated, reserved, ``max_memory_allocated`` (all exact), and the
device's used memory from NVML (which also counts the CUDA context and other processes).
On the CPU the peak is the kernel's own high-water mark of the process (``VmHWM``), reset at the
start of the block through ``/proc/self/clear_refs`` where allowed, so it is exact, not sampled. A
background thread samples ``RssAnon`` (memory the process allocated: tensors, the heap) and
``RssFile`` (file pages mapped in: memory-mapped safetensors shards) separately for the timeline:
loading a safetensors model moves RssFile, copying it into fresh tensors moves RssAnon.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

__all__ = ["MemoryReport", "Sample", "cpu_memory", "stored_weight_bytes", "track"]

_STATUS = "/proc/self/status"
_live_samplers: weakref.WeakSet = weakref.WeakSet()


@dataclass(frozen=True)
class Sample:
    """One point of the timeline, bytes at ``t_s`` seconds after the block started."""

    t_s: float
    rss_anon: int
    rss_file: int
    cuda_allocated: int = 0
    cuda_reserved: int = 0
    nvml_used: int = 0


@dataclass
class MemoryReport:
    """What :func:`track` measured. ``peak_bytes`` is above the memory in use when the block started.

    device: 'cuda' or 'cpu'. peak_source: how the peak was found: 'max_memory_allocated' (CUDA),
    'VmHWM' (exact CPU high-water mark) or 'sampled' (max of the timeline; may miss short spikes).
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
    cuda_reserved_peak_bytes: int = 0
    nvml_used_peak_bytes: int = 0
    samples: list[Sample] = field(default_factory=list)
    finished: bool = False

    @property
    def retained_bytes(self) -> int:
        """Memory still held after the block (e.g. a loaded model), above the start."""
        return self.end_bytes - self.start_bytes

    def __repr__(self) -> str:
        mib = 2**20
        state = "" if self.finished else " (running)"
        return (f"MemoryReport({self.label or self.device}{state}: peak +{self.peak_bytes / mib:,.1f} MiB "
                f"[{self.peak_source}], retained +{self.retained_bytes / mib:,.1f} MiB, {self.wall_s:.2f} s)")


def _read_status() -> dict[str, int]:
    fields = {}
    with open(_STATUS) as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(rest.split()[0]) * 1024
    return fields


def cpu_memory() -> dict[str, int]:
    """The process's memory now, bytes: VmRSS (resident), VmHWM (peak), RssAnon, RssFile, RssShmem."""
    return _read_status()


def _reset_cpu_peak() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim_heap() -> None:
    # glibc keeps freed memory in its arenas; give it back so the next measurement starts low.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _NvmlUsed:
    """Device-wide used memory from NVML; absent (returns 0) without a driver."""

    def __init__(self, index: int):
        self.handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self._info = pynvml.nvmlDeviceGetMemoryInfo
        except Exception:  # no driver, no library: the torch figures still stand
            self.handle = None

    def __call__(self) -> int:
        return int(self._info(self.handle).used) if self.handle is not None else 0


class _Sampler(threading.Thread):
    def __init__(self, report: MemoryReport, interval_s: float, cuda_index: int | None, t0: float):
        super().__init__(name="bigsmall_lab-memory-sampler", daemon=True)
        self.report, self.interval_s, self.cuda_index, self.t0 = report, interval_s, cuda_index, t0
        self.stop_event = threading.Event()
        self.nvml = _NvmlUsed(cuda_index) if cuda_index is not None else None

    def sample(self) -> Sample:
        status = _read_status()
        if self.cuda_index is None:
            return Sample(time.perf_counter() - self.t0, status["RssAnon"], status["RssFile"])
        return Sample(time.perf_counter() - self.t0, status["RssAnon"], status["RssFile"],
                      torch.cuda.memory_allocated(self.cuda_index), torch.cuda.memory_reserved(self.cuda_index),
                      self.nvml())

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.report.samples.append(self.sample())
            self.stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self.stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=2.0)


@atexit.register
def _stop_all() -> None:
    # A kernel shutting down mid-block: never leave a sampler running.
    for sampler in list(_live_samplers):
        sampler.stop()


@contextlib.contextmanager
def track(label: str = "", device: str | None = None, interval_s: float = 0.01) -> Iterator[MemoryReport]:
    """Measure the peak memory and a timeline of the block; yields a :class:`MemoryReport` filled at exit.

    ``device``: 'cuda' (or 'cuda:N') or 'cpu'; default: CUDA when present. ``interval_s``: the
    timeline's sampling period (10 ms: a few % overhead; the CPU peak does not depend on it).
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s {interval_s!r} must be > 0 seconds, e.g. 0.01")
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type not in ("cuda", "cpu"):
        raise ValueError(f"device {device!r} cannot be tracked; use 'cpu' or 'cuda[:N]'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asks for CUDA and no CUDA GPU is attached; use device='cpu'")
    cuda_index = (dev.index or 0) if dev.type == "cuda" else None
    report = MemoryReport(device=dev.type, label=label)

    _trim_heap()
    if cuda_index is not None:
        torch.cuda.synchronize(cuda_index)
        torch.cuda.reset_peak_memory_stats(cuda_index)
        report.start_bytes = torch.cuda.memory_allocated(cuda_index)
        report.peak_source = "max_memory_allocated"
    else:
        report.peak_source = "VmHWM" if _reset_cpu_peak() else "sampled"
        report.start_bytes = _read_status()["VmRSS"]
    t0 = time.perf_counter()
    sampler = _Sampler(report, interval_s, cuda_index, t0)
    # The first point is taken here, before the block runs: the thread may start only later.
    report.samples.append(sampler.sample())
    _live_samplers.add(sampler)
    sampler.start()
    try:
        yield report
    finally:
        sampler.stop()
        _live_samplers.discard(sampler)
        _finish(report, sampler, cuda_index, t0)


def _finish(report: MemoryReport, sampler: _Sampler, cuda_index: int | None, t0: float) -> None:
    if cuda_index is not None:
        torch.cuda.synchronize(cuda_index)
    report.samples.append(sampler.sample())
    report.wall_s = time.perf_counter() - t0
    samples = report.samples
    report.peak_rss_anon_bytes = max(s.rss_anon for s in samples)
    report.peak_rss_file_bytes = max(s.rss_file for s in samples)
    if cuda_index is not None:
        report.peak_bytes = torch.cuda.max_memory_allocated(cuda_index) - report.start_bytes
        report.end_bytes = torch.cuda.memory_allocated(cuda_index)
        report.cuda_reserved_peak_bytes = max(torch.cuda.max_memory_reserved(cuda_index),
                                              max(s.cuda_reserved for s in samples))
        report.nvml_used_peak_bytes = max(s.nvml_used for s in samples)
    else:
        status = _read_status()
        peak = status["VmHWM"] if report.peak_source == "VmHWM" else max(s.rss_anon + s.rss_file for s in samples)
        report.peak_bytes = max(peak - report.start_bytes, 0)
        report.end_bytes = status["VmRSS"]
    report.finished = True


def _quant_state_tensors(param) -> list[torch.Tensor]:
    """The tensors bitsandbytes keeps beside a quantized weight (not parameters, so not in footprints)."""
    tensors = []
    scb = getattr(param, "SCB", None)  # int8: one float32 scale per output row
    if isinstance(scb, torch.Tensor):
        tensors.append(scb)
    state = getattr(param, "quant_state", None)  # 4-bit: absmax per block, code book, nested state
    while state is not None:
        tensors += [t for t in (getattr(state, "absmax", None), getattr(state, "code", None),
                                getattr(state, "offset", None)) if isinstance(t, torch.Tensor)]
        state = getattr(state, "state2", None)
    return tensors


def stored_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes a loaded model really stores for its weights, each storage once.

    Parameters plus bitsandbytes' quantization state (int8 row scales; 4-bit absmax, code books,
    nested absmax), which ``get_memory_footprint()`` leaves out. Buffers (rotary tables) are not
    counted, as checkpoints do not store them.
    """
    seen: set[tuple[str, int]] = set()
    total = 0
    for param in model.parameters():
        for tensor in (param, *_quant_state_tensors(param)):
            key = (tensor.device.type, tensor.untyped_storage().data_ptr())
            if tensor.device.type == "meta" or key not in seen:
                seen.add(key)
                total += tensor.numel() * tensor.element_size()
    return total
