"""A pytest plugin that changes one of the lab's exact quantities by 1 % for a whole test session.

``BSL_MUTATE=<name> pytest -p tests._mutate ...``: tests/test_mutations.py runs the pinning tests under each
mutation and expects them to fail, so a quantity nobody pins (a GPU size, bytes per parameter, the KV factor,
the CUDA context) shows up as a mutation that survives.
"""

from __future__ import annotations

import dataclasses
import os

FACTOR = 1.01


def _bytes_per_parameter() -> None:
    from bigsmall_lab import _dtypes

    for name, info in list(_dtypes.DTYPES.items()):
        _dtypes.DTYPES[name] = dataclasses.replace(info, bits=info.bits * FACTOR)


def _kv_factor() -> None:
    from bigsmall_lab import estimates

    estimates.KV_TENSORS = estimates.KV_TENSORS * FACTOR


def _cuda_context() -> None:
    from bigsmall_lab import estimates

    estimates.RUNTIME_OVERHEAD = dataclasses.replace(estimates.RUNTIME_OVERHEAD,
                                                     bytes=int(estimates.RUNTIME_OVERHEAD.bytes * FACTOR))


def _gpu_sizes() -> None:
    from bigsmall_lab import estimates

    for name, gpu in list(estimates.GPUS.items()):
        estimates.GPUS[name] = dataclasses.replace(gpu, torch_bytes=int(gpu.torch_bytes * FACTOR),
                                                   smi_mib=int(gpu.smi_mib * FACTOR))


MUTATIONS = {"bytes_per_parameter": _bytes_per_parameter, "kv_factor": _kv_factor, "cuda_context": _cuda_context,
             "gpu_sizes": _gpu_sizes}


def pytest_configure(config) -> None:
    name = os.environ.get("BSL_MUTATE")
    if name:
        MUTATIONS[name]()
