"""Shared test setup: quiet libraries, a scratch cache folder when a test asks for one."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def lab_cache(tmp_path, monkeypatch):
    """An empty lab cache folder for this test only."""
    cache = tmp_path / "lab-cache"
    monkeypatch.setenv("BIGSMALL_LAB_CACHE", str(cache))
    return cache


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is attached (the CPU path is tested instead)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
