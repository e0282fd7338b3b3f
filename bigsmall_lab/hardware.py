"""What is attached: CUDA GPUs (name, total and free memory) or else the CPU (cores and RAM).

Every lesson prints :func:`banner` first, so a reader of a notebook knows which machine the numbers
come from. Cells that truly need CUDA ask :func:`needs_cuda`, which on a CPU prints one plain
sentence saying what the cell would do and what runs instead, and returns False.

>>> GPUS["T4"].usable_bytes
15000000000
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import psutil
import torch

from ._units import format_bytes

__all__ = ["GPUS", "GpuInfo", "GpuModel", "Hardware", "banner", "describe", "has_cuda", "needs_cuda"]


@dataclass(frozen=True)
class GpuModel:
    """A GPU people rent or own, with the memory a model can really use on it (bytes)."""

    name: str
    usable_bytes: int
    note: str = ""


# Usable memory, decimal GB as the cards are sold; the T4's 16 GB shows ~15 GB usable on Colab.
GPUS: dict[str, GpuModel] = {
    g.name: g
    for g in (
        GpuModel("T4", 15 * 10**9, "free Colab: 16 GB card, ~15 GB usable"),
        GpuModel("L4", 24 * 10**9),
        GpuModel("RTX 4090", 24 * 10**9),
        GpuModel("A100 40GB", 40 * 10**9),
        GpuModel("A100 80GB", 80 * 10**9),
        GpuModel("H100", 80 * 10**9),
    )
}


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class Hardware:
    """The machine a lesson runs on."""

    gpus: tuple[GpuInfo, ...]
    cpu_cores: int
    ram_total_bytes: int
    ram_available_bytes: int

    @property
    def kind(self) -> str:
        """'cuda' when a CUDA GPU is attached, else 'cpu'."""
        return "cuda" if self.gpus else "cpu"

    def summary(self) -> str:
        if self.gpus:
            gpus = ", ".join(
                f"GPU {g.index} {g.name} ({format_bytes(g.total_bytes, 'GiB', 1)}, "
                f"{format_bytes(g.free_bytes, 'GiB', 1)} free)" for g in self.gpus)
            return f"{gpus}; {self.cpu_cores} CPU cores, {format_bytes(self.ram_total_bytes, 'GiB', 1)} RAM"
        return (f"CPU only: {self.cpu_cores} cores, {format_bytes(self.ram_total_bytes, 'GiB', 1)} RAM "
                f"({format_bytes(self.ram_available_bytes, 'GiB', 1)} available), no CUDA GPU")


def has_cuda() -> bool:
    """True when torch sees at least one CUDA GPU."""
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def describe() -> Hardware:
    """Read what is attached now (free memory changes as models load)."""
    gpus = []
    if has_cuda():
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            gpus.append(GpuInfo(index, torch.cuda.get_device_name(index), total, free))
    vm = psutil.virtual_memory()
    return Hardware(tuple(gpus), _cpu_cores(), vm.total, vm.available)


def _cpu_cores() -> int:
    # Cores this process may use (a container's limit), not the host's count.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def banner() -> str:
    """One line naming the hardware and library versions, printed first by every lesson."""
    import transformers

    return (f"bigsmall_lab on {describe().summary()} | Python {platform.python_version()}, "
            f"torch {torch.__version__}, transformers {transformers.__version__}")


def needs_cuda(what: str, instead: str) -> bool:
    """For a cell that truly needs CUDA: True when a GPU is here; else print why and what runs instead.

    >>> if needs_cuda("streams prefetch the next group of layers", instead="the plan is shown"):
    ...     pass  # doctest: +SKIP
    """
    if has_cuda():
        return True
    print(f"This cell needs a CUDA GPU ({what}); on this CPU {instead}.")
    return False
