"""Mutation check: change one of the lessons' exact quantities by 1 % and some test must fail.

The quantities: bytes per parameter (the one dtype table), the KV factor (keys and values), the assumed CUDA
context, the GPUs' memory sizes. Each run (a subprocess, with tests/_mutate.py applying the change) runs the tests
that pin these quantities to an independent source: safetensors' published total sizes, the cache transformers
allocates, the assumption's own stated source, nvidia-smi's figures. The unmutated run must pass, so each failure
comes from the mutation.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ._mutate import MUTATIONS

ROOT = Path(__file__).resolve().parent.parent
# the test that pins each quantity to an independent source
PINS = {
    "bytes_per_parameter": "tests/test_estimate.py::test_weights_are_parameters_times_bytes",
    "kv_factor": "tests/test_estimate.py::test_kv_cache_matches_what_transformers_allocates",
    "cuda_context": "tests/test_estimate.py::test_the_assumed_cuda_context_is_the_figure_its_source_states",
    "gpu_sizes": "tests/test_estimate.py::test_gpu_sizes_are_the_figures_their_sources_report",
}


def _run(mutation: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "BSL_MUTATE": mutation or ""}
    pins = list(PINS.values()) if mutation is None else [PINS[mutation]]
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "tests._mutate", "-p", "no:randomly",
                           "-o", "addopts=-p no:cacheprovider", *pins],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_every_mutation_has_its_pin():
    assert set(PINS) == set(MUTATIONS)


@pytest.mark.slow
@pytest.mark.parametrize("mutation", [None, *MUTATIONS])
def test_a_one_percent_change_fails_a_test(mutation):
    run = _run(mutation)
    if mutation is None:
        assert run.returncode == 0, f"the pinning tests fail without any mutation:\n{run.stdout[-3000:]}"
    else:
        assert run.returncode == 1 and " failed" in run.stdout, (
            f"changing {mutation} by 1 % fails no pinning test (rc {run.returncode}):\n{run.stdout[-3000:]}")
