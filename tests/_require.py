"""Something a test needs is missing: skip with the reason on a learner's machine, fail with it in CI.

A required dependency (bitsandbytes, the real model's wheel, Chromium for the browser tests) that is absent in
CI must fail the run, not quietly skip tens of tests. ``.ci/run`` sets CI=true; so do GitHub Actions and most CI
systems.
"""

from __future__ import annotations

import importlib.util
import os


def in_ci() -> bool:
    """True under continuous integration (CI=true, 1 or yes)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip with ``reason`` for a user; fail with it in CI."""
    import pytest

    if in_ci():
        pytest.fail(f"{reason}; CI=true, so this must run here", pytrace=False)
    pytest.skip(reason)


def require_module(name: str, install: str) -> None:
    """``missing`` unless module ``name`` can be imported; ``install`` says how to get it."""
    if importlib.util.find_spec(name.split(".")[0]) is None:
        missing(f"{name} is not installed ({install})")
