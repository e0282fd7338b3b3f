"""``%load_ext bigsmall_lab``: after each cell, one line with the memory it consumed and peaked.

In the spirit of ipyexperiments' per-cell logger. Off until loaded; ``%unload_ext bigsmall_lab``
turns it off. On CPU the peak is the process high-water mark (VmHWM) reset before the cell; on
CUDA, torch's ``max_memory_allocated``. A ``track()`` block inside a cell resets the same CPU
high-water mark, so that cell's reported peak starts at the block.
"""

from __future__ import annotations

import time

import torch

from .measure import _read_status, _reset_cpu_peak

__all__ = ["CellMemoryLogger", "load_ipython_extension", "unload_ipython_extension"]

_MiB = 2**20


class CellMemoryLogger:
    """Holds the state between IPython's pre_run_cell and post_run_cell events."""

    def __init__(self, out=print):
        self.out = out
        self.start_rss = 0
        self.start_cuda = 0
        self.exact_peak = False
        self.t0 = 0.0

    def pre_run_cell(self, info=None) -> None:
        self.exact_peak = _reset_cpu_peak()
        self.start_rss = _read_status()["VmRSS"]
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            self.start_cuda = torch.cuda.memory_allocated()
        self.t0 = time.perf_counter()

    def line(self) -> str:
        status = _read_status()
        used = status["VmRSS"] - self.start_rss
        peak = (status["VmHWM"] if self.exact_peak else status["VmRSS"]) - self.start_rss
        text = (f"[bigsmall_lab] RAM: used {used / _MiB:+,.1f} MiB, peaked {max(peak, 0) / _MiB:+,.1f} MiB "
                f"above the cell's start (now {status['VmRSS'] / _MiB:,.0f} MiB)")
        if torch.cuda.is_available():
            now = torch.cuda.memory_allocated()
            text += (f" | GPU: used {(now - self.start_cuda) / _MiB:+,.1f} MiB, peaked "
                     f"{(torch.cuda.max_memory_allocated() - self.start_cuda) / _MiB:+,.1f} MiB "
                     f"(now {now / _MiB:,.0f} MiB)")
        return text + f" | {time.perf_counter() - self.t0:.2f} s"

    def post_run_cell(self, result=None) -> None:
        self.out(self.line())


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
    _logger = None
