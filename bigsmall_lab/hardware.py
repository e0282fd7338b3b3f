"""What is attached: CUDA GPUs (name, total and free memory) or else the CPU (cores and RAM).

Every lesson prints :func:`banner` first, so a reader of a notebook knows which machine the numbers
come from. Cells that truly need CUDA ask :func:`needs_cuda`, which on a CPU prints one plain
sentence saying what the cell would do and what runs instead, and returns False.

The table of GPUs people rent or own (``GPUS``: each card's memory as sold, as nvidia-smi prints it
and as torch sees it, with its source) is planner data and lives in :mod:`bigsmall_lab.estimates`;
it is re-exported here. A "16 GB" T4 holds 16 GiB; with ECC on nvidia-smi shows 15,360 MiB and torch
less again, before this process's own CUDA context (:func:`cuda_context_bytes`):

>>> t4 = GPUS["T4"]
>>> t4.marketed, t4.smi_mib, t4.usable_bytes
('16 GB', 15360, 15828254720)
"""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import Sequence
from dataclasses import dataclass

import psutil
import torch

from ._errors import LabError
from ._nvml import nvml, nvml_handle
from ._units import format_bytes
from .estimates import GPUS, GpuModel

__all__ = ["GPUS", "OPEN_CHECKPOINT", "GpuInfo", "GpuModel", "Hardware", "ModelChoice", "banner", "cuda_context_bytes",
           "default_model", "describe", "has_cuda", "hub_reachable", "needs_cuda"]


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as torch numbers it (``index``), its memory read without creating a CUDA context.

    ``memory_source``: 'NVML' (total and free as nvidia-smi shows them, from the NVML device with the
    same UUID) or 'torch' (``get_device_properties().total_memory``, 1-2 % below NVML's total; free
    unknown, None: reading it through torch would create a context of hundreds of MB on that GPU).
    """

    index: int
    name: str
    total_bytes: int
    free_bytes: int | None
    memory_source: str = "NVML"


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
                + ("free unknown" if g.free_bytes is None else f"{format_bytes(g.free_bytes, 'GiB', 1)} free")
                + ")" for g in self.gpus)
            return f"{gpus}; {self.cpu_cores} CPU cores, {format_bytes(self.ram_total_bytes, 'GiB', 1)} RAM"
        return (f"CPU only: {self.cpu_cores} cores, {format_bytes(self.ram_total_bytes, 'GiB', 1)} RAM "
                f"({format_bytes(self.ram_available_bytes, 'GiB', 1)} available), no CUDA GPU")


def has_cuda() -> bool:
    """True when torch sees at least one CUDA GPU."""
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


_context_bytes: dict[int, int | None] = {}


def cuda_context_bytes(index: int = 0) -> int | None:
    """Bytes GPU ``index`` holds for this process's CUDA context (and cuBLAS workspace), measured; None
    without CUDA or NVML.

    Measured the way tools/gpu_check.py does: NVML's used memory before and after the first CUDA call
    of this process, minus what torch reserved for tensors. When CUDA was initialised earlier in the
    process, NVML's per-process figure minus torch's reserved memory is used instead. Cached per GPU.
    The estimator takes it as ``estimate(..., overhead_bytes=cuda_context_bytes())``.
    """
    if not has_cuda():
        return None
    if index not in _context_bytes:
        _context_bytes[index] = _measure_context(index)
    return _context_bytes[index]


def _context_exists(index: int) -> bool:
    """Whether this process already holds a CUDA context on GPU ``index`` (torch's CUDA state can be
    initialised, by reading device properties, with no context on any GPU yet)."""
    probe = getattr(torch._C, "_cuda_hasPrimaryContext", None)
    if probe is not None:
        try:
            return bool(probe(index))
        except Exception:  # noqa: BLE001  (fall back to torch's coarser flag)
            pass
    return torch.cuda.is_initialized()


def _measure_context(index: int) -> int | None:
    fresh = not _context_exists(index)  # asked first: finding the NVML device reads torch's properties
    pynvml = nvml()
    handle = nvml_handle(index, pynvml) if pynvml is not None else None
    if handle is None:  # no NVML library or driver, or no NVML device with this GPU's UUID: not measurable
        return None
    if fresh:
        before = pynvml.nvmlDeviceGetMemoryInfo(handle).used
        torch.empty(1, device=f"cuda:{index}")
        torch.cuda.synchronize(index)
        after = pynvml.nvmlDeviceGetMemoryInfo(handle).used
        return max(int(after - before) - torch.cuda.memory_reserved(index), 0)
    try:
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                return max(int(proc.usedGpuMemory) - torch.cuda.memory_reserved(index), 0)
    except Exception:  # NVML without per-process accounting (containers, some drivers)
        return None
    return None


def describe() -> Hardware:
    """Read what is attached now (free memory changes as models load)."""
    gpus = []
    if has_cuda():
        lib = nvml()
        for index in range(torch.cuda.device_count()):
            gpus.append(_gpu_info(index, lib))
    vm = psutil.virtual_memory()
    return Hardware(tuple(gpus), _cpu_cores(), vm.total, vm.available)


def _gpu_info(index: int, lib) -> GpuInfo:
    # Never torch.cuda.mem_get_info here: it creates a CUDA context on every GPU it asks (hundreds of MB each).
    props = torch.cuda.get_device_properties(index)
    handle = nvml_handle(index, lib) if lib is not None else None
    if handle is not None:
        try:
            memory = lib.nvmlDeviceGetMemoryInfo(handle)
            return GpuInfo(index, props.name, int(memory.total), int(memory.free), "NVML")
        except Exception:  # noqa: BLE001  (the driver refused: torch's total, free unknown)
            pass
    return GpuInfo(index, props.name, int(props.total_memory), None, "torch")


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

    A cell that needs a GPU reads::

        if needs_cuda("streams prefetch the next group of layers", instead="the plan above is shown"):
            run_with_streams()
    """
    for argument, value in (("what", what), ("instead", instead)):
        if not isinstance(value, str) or not value.strip():
            raise LabError.bad(argument, value, "say it in a few words, e.g. 'the plan is shown'", verb="is not a text")
    if has_cuda():
        return True
    print(f"This cell needs a CUDA GPU ({what}); on this CPU {instead}.")
    return False


# A real, trained checkpoint for a GPU the size of Colab's free T4: Apache-2.0, not gated (no token), safetensors.
# Its architecture is the lab's "smollm2-1.7b" preset (the base model's config): 1,711,376,384 parameters.
OPEN_CHECKPOINT = "HuggingFaceTB/SmolLM2-1.7B-Instruct"
_OPEN_PRESET = "smollm2-1.7b"
_HEADROOM = 1.25  # float32 weights (lesson 03 loads that dtype) x 1.25 for activations, the KV cache and the context


@dataclass(frozen=True)
class ModelChoice:
    """The model a lesson's parameters cell starts with, and why: ``model`` is a hub id, or None (the
    embedded bigsmall-tiny), or the lesson's own fallback."""

    model: str | None
    reason: str


def hub_reachable(timeout_s: float = 2.0) -> bool:
    """Whether huggingface.co answers on port 443 within ``timeout_s`` (False when HF_HUB_OFFLINE is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def default_model(gpus: Sequence[GpuInfo] | None = None, online: bool | None = None,
                  fallback: str | None = None) -> ModelChoice:
    """The model to start a lesson with: the real open checkpoint :data:`OPEN_CHECKPOINT` when a GPU holds it
    and the hub can be reached (a Colab T4), else ``fallback`` (None: the embedded bigsmall-tiny, which needs
    neither). ``gpus`` and ``online`` default to what is attached (:func:`describe`) and :func:`hub_reachable`;
    the network is asked only when a GPU would hold the checkpoint.

    SmolLM2-1.7B in float32 is 6.85 GB; with 25 % headroom 8.56 GB, so a T4 (15.8 GB as torch sees it) holds it:

    >>> t4 = GpuInfo(0, "Tesla T4", GPUS["T4"].usable_bytes, None, "torch")
    >>> default_model([t4], online=True).model
    'HuggingFaceTB/SmolLM2-1.7B-Instruct'
    >>> print(default_model([t4], online=False).reason)
    no network to download HuggingFaceTB/SmolLM2-1.7B-Instruct: the embedded bigsmall-tiny instead
    """
    from .zoo._configs import count_parameters

    if fallback is not None and (not isinstance(fallback, str) or not fallback.strip()):
        raise LabError.bad("fallback", fallback, "pass None (the embedded bigsmall-tiny) or a lab model's name")
    instead = "the embedded bigsmall-tiny" if fallback is None else f"the lab's {fallback}"
    gpus = describe().gpus if gpus is None else tuple(gpus)
    if not all(isinstance(g, GpuInfo) for g in gpus):
        raise LabError.bad("gpus", gpus, "pass a list of hardware.GpuInfo, e.g. describe().gpus")
    needed = int(count_parameters(_OPEN_PRESET) * 4 * _HEADROOM)
    if not gpus:
        return ModelChoice(fallback, f"no CUDA GPU: {instead} (a GPU with {format_bytes(needed, 'GB', 1)} "
                                     f"would take {OPEN_CHECKPOINT})")
    best = max(gpus, key=lambda g: g.total_bytes)
    if best.total_bytes < needed:
        return ModelChoice(fallback, f"GPU {best.index} {best.name} has {format_bytes(best.total_bytes, 'GB', 1)}, "
                                     f"less than the {format_bytes(needed, 'GB', 1)} {OPEN_CHECKPOINT} needs: {instead}")
    if online is None:
        online = hub_reachable()
    if not online:
        return ModelChoice(fallback, f"no network to download {OPEN_CHECKPOINT}: {instead} instead")
    return ModelChoice(OPEN_CHECKPOINT,
                       f"GPU {best.index} {best.name} ({format_bytes(best.total_bytes, 'GB', 1)}) holds "
                       f"{OPEN_CHECKPOINT} (Apache-2.0, no token needed; {format_bytes(needed, 'GB', 1)} with "
                       f"float32 weights and headroom): downloading it from the hub")
