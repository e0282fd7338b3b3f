"""Which NVML device is torch's ``cuda:N``: matched by UUID (then PCI bus id), never by index.

torch numbers the GPUs it can see; NVML numbers every GPU in the machine. Under
``CUDA_VISIBLE_DEVICES=3,1`` torch's ``cuda:0`` is NVML's device 3, so ``nvmlDeviceGetHandleByIndex(0)``
would read another GPU's memory (possibly another user's job). Both sides report the board's UUID:
torch's ``get_device_properties(i).uuid`` prints it bare (``5a0b...-...``, a ``_CUuuid`` since torch 2.x),
NVML with NVIDIA's ``GPU-`` prefix (``GPU-5a0b...``; bytes in old bindings). Where no UUID matches
(a MIG slice reports ``MIG-...``, some old drivers none), the PCI address decides: torch's
``pci_domain_id`` / ``pci_bus_id`` / ``pci_device_id`` against NVML's ``busId`` ("00000000:0A:00.0").

Reading properties never creates a CUDA context (a context costs hundreds of MB per GPU); NVML never does.

>>> _canonical_uuid("GPU-5A0B1C2D-0000-1111-2222-333344445555") == _canonical_uuid("5a0b1c2d-0000-1111-2222-333344445555")
True
>>> _nvml_pci(type("PciInfo", (), {"busId": b"00000000:0A:00.0"})())
(0, 10, 0)
"""

from __future__ import annotations

import re

import torch

__all__ = ["nvml", "nvml_handle"]

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def nvml():
    """The ``pynvml`` module, initialised; None without the library or a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no library, no driver (a CPU machine, some containers): NVML figures are "unknown"
        return None
    return pynvml


def _text(value) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def _canonical_uuid(value) -> str | None:
    """The 36-character lower-case UUID inside torch's or NVML's spelling; None for anything else."""
    if value is None:
        return None
    text = _text(value).strip().strip("\0").lower()
    if text.startswith("gpu-"):
        text = text[4:]
    return text if _UUID.fullmatch(text) else None


def _torch_pci(props) -> tuple[int, int, int] | None:
    try:
        return int(props.pci_domain_id), int(props.pci_bus_id), int(props.pci_device_id)
    except (AttributeError, TypeError, ValueError):
        return None


def _nvml_pci(info) -> tuple[int, int, int] | None:
    """(domain, bus, device) from NVML's PciInfo: its integer fields, else its ``busId`` text."""
    try:
        return int(info.domain), int(info.bus), int(info.device)
    except (AttributeError, TypeError, ValueError):
        pass
    match = re.fullmatch(r"([0-9a-f]+):([0-9a-f]+):([0-9a-f]+)\.[0-9a-f]+", _text(getattr(info, "busId", "")).strip("\0").strip().lower())
    if match is None:
        return None
    return tuple(int(part, 16) for part in match.groups())


def nvml_handle(index: int, lib=None):
    """NVML's handle for torch's ``cuda:index`` (the same physical GPU), or None when NVML is absent or
    no NVML device has its UUID or PCI address. ``lib``: an initialised pynvml (default: :func:`nvml`)."""
    lib = nvml() if lib is None else lib
    if lib is None:
        return None
    try:
        props = torch.cuda.get_device_properties(index)
        handles = [lib.nvmlDeviceGetHandleByIndex(i) for i in range(lib.nvmlDeviceGetCount())]
    except Exception:  # the driver went away, or torch sees no such GPU
        return None
    wanted = _canonical_uuid(getattr(props, "uuid", None))
    if wanted is not None:
        for handle in handles:
            try:
                if _canonical_uuid(lib.nvmlDeviceGetUUID(handle)) == wanted:
                    return handle
            except Exception:  # noqa: S112  (a device that cannot report its UUID: try the next one)
                continue
    address = _torch_pci(props)
    if address is not None:
        for handle in handles:
            try:
                if _nvml_pci(lib.nvmlDeviceGetPciInfo(handle)) == address:
                    return handle
            except Exception:  # noqa: S112
                continue
    return None
