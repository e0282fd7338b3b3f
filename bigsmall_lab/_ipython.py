"""``%load_ext bigsmall_lab``: after each cell, one line with the memory it consumed and peaked.

In the spirit of ipyexperiments' per-cell logger. Off until loaded; ``%unload_ext bigsmall_lab``
turns it off. On CPU the peak is the process high-water mark (VmHWM) reset before the cell (where
the kernel does not allow the reset, a sampler reads the resident size every 20 ms and the peak is
labelled 'sampled'); on CUDA, torch's ``max_memory_allocated`` above the cell's start. Before torch has
initialised CUDA nothing is reset (torch refuses to: "did you call init?") and nothing initialises it:
a cell that initialises CUDA starts from 0 bytes, and torch's counters start with it, so that first
cell's peak is read as it is; a cell that never touches CUDA reports no GPU figures. The cell's peak nests with
``track()`` the same way blocks nest: a ``track()`` inside a cell does not lose the cell's peak.
The numbers of the last cell are kept as a :class:`CellMemory` on ``_logger.last``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ._units import MiB
from .measure import Sampler, _close_peak, _open_peak, _open_peaks, _Peak, _peaks_lock, _read_status

__all__ = ["CellMemory", "CellMemoryLogger", "load_ipython_extension", "unload_ipython_extension"]

_SAMPLED_INTERVAL_S = 0.02


@dataclass(frozen=True)
class CellMemory:
    """What one cell did to memory, bytes (GPU figures None without CUDA)."""

    used_bytes: int  # resident size at the end minus at the start
    peak_bytes: int  # highest resident size during the cell, above the start
    peak_source: str  # 'VmHWM' (exact) or 'sampled'
    now_bytes: int
    wall_s: float
    gpu_used_bytes: int | None = None
    gpu_peak_bytes: int | None = None
    gpu_now_bytes: int | None = None

    def line(self) -> str:
        text = (f"[bigsmall_lab] RAM: used {self.used_bytes / MiB:+,.1f} MiB, peaked {self.peak_bytes / MiB:+,.1f} MiB "
                f"[{self.peak_source}] above the cell's start (now {self.now_bytes / MiB:,.0f} MiB)")
        if self.gpu_now_bytes is not None:
            text += (f" | GPU: used {self.gpu_used_bytes / MiB:+,.1f} MiB, peaked {self.gpu_peak_bytes / MiB:+,.1f} MiB "
                     f"(now {self.gpu_now_bytes / MiB:,.0f} MiB)")
        return text + f" | {self.wall_s:.2f} s"


class CellMemoryLogger:
    """Holds the state between IPython's pre_run_cell and post_run_cell events."""

    def __init__(self, out=print):
        self.out = out
        self.last: CellMemory | None = None
        self._cpu_peak = None
        self._cuda_peak = None
        self._sampler: Sampler | None = None
        self._start_rss = 0
        self._start_cuda = 0
        self._t0 = 0.0

    def pre_run_cell(self, info=None) -> None:
        self.close()  # a cell that never reached post_run_cell (an interrupt) leaves nothing open
        self._cpu_peak = _open_peak(None)
        self._start_rss = _read_status()["VmRSS"]
        if not self._cpu_peak.exact:
            self._sampler = Sampler(_SAMPLED_INTERVAL_S, "cpu").start()
        if torch.cuda.is_available():
            self._cuda_peak = _open_cuda_peak()
            self._start_cuda = torch.cuda.memory_allocated(0) if torch.cuda.is_initialized() else 0
        self._t0 = time.perf_counter()

    def measure(self) -> CellMemory | None:
        """The open cell's figures, closing it; None when no cell is open (the ``%load_ext`` cell itself)."""
        if self._cpu_peak is None:
            return None
        wall_s = time.perf_counter() - self._t0
        exact = self._cpu_peak.exact
        peak_abs = _close_peak(self._cpu_peak)
        status = _read_status()
        peak_abs = max(peak_abs, status["VmRSS"])  # read a moment later: the peak is never below it
        if not exact and self._sampler is not None:
            self._sampler.stop()
            peak_abs = max([s.rss_bytes for s in self._sampler.samples] + [status["VmRSS"]])
        gpu = {}
        if self._cuda_peak is not None and not torch.cuda.is_initialized():  # the cell never touched CUDA
            _close_peak(self._cuda_peak)
        elif self._cuda_peak is not None:
            now = torch.cuda.memory_allocated(0)
            gpu = dict(gpu_used_bytes=now - self._start_cuda,
                       gpu_peak_bytes=max(_close_peak(self._cuda_peak) - self._start_cuda, 0), gpu_now_bytes=now)
        cell = CellMemory(used_bytes=status["VmRSS"] - self._start_rss,
                          peak_bytes=max(peak_abs - self._start_rss, 0),
                          peak_source="VmHWM" if exact else "sampled", now_bytes=status["VmRSS"],
                          wall_s=wall_s, **gpu)
        self._cpu_peak = self._cuda_peak = self._sampler = None
        return cell

    def close(self) -> None:
        """Drop an open cell without reporting it."""
        if self._sampler is not None:
            self._sampler.stop()
        for peak in (self._cpu_peak, self._cuda_peak):
            if peak is not None:
                _close_peak(peak)
        self._cpu_peak = self._cuda_peak = self._sampler = None

    def post_run_cell(self, result=None) -> None:
        cell = self.measure()
        if cell is not None:
            self.last = cell
            self.out(cell.line())


def _open_cuda_peak() -> _Peak:
    """The cell's CUDA peak on GPU 0. With CUDA initialised: reset torch's counter (folding it into open
    blocks). Before: register the block without touching torch (a reset would raise or initialise CUDA);
    torch's counters start at 0 when CUDA starts, so its peak is the cell's, and a ``track()`` that
    resets it inside the cell folds it into this block first."""
    if torch.cuda.is_initialized():
        return _open_peak(0)
    with _peaks_lock:
        peak = _Peak(0)
        peak.exact = True
        _open_peaks.append(peak)
        return peak


_logger: CellMemoryLogger | None = None


def load_ipython_extension(ipython) -> None:
    global _logger
    if _logger is not None:
        return
    _logger = CellMemoryLogger()
    ipython.events.register("pre_run_cell", _logger.pre_run_cell)
    ipython.events.register("post_run_cell", _logger.post_run_cell)


def unload_ipython_extension(ipython) -> None:
    global _logger
    if _logger is None:
        return
    ipython.events.unregister("pre_run_cell", _logger.pre_run_cell)
    ipython.events.unregister("post_run_cell", _logger.post_run_cell)
    _logger.close()
    _logger = None
