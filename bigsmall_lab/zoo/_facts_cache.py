"""A preset's facts kept in the lab's cache folder, for library versions the shipped facts were not computed with.

The shipped facts (``bigsmall_lab/data/preset_facts.json.gz``, see :mod:`bigsmall_lab.zoo._facts`) hold for the
locked library versions. On a machine with other versions, :func:`ensure` computes a preset's facts once (the
planners on its meta model: torch, seconds) and writes them into the cache folder atomically (a temporary file
renamed into place, so a crash leaves no half file); importing this module lets ``preset_facts`` read them, so
the next ``bigsmall-lab fit`` of that preset imports no torch. Nothing outside the cache folder is touched.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .._paths import cache_dir
from . import _facts

__all__ = ["cached_path", "ensure"]


def cached_path(name: str, versions: dict, create: bool = False) -> Path:
    """Where preset ``name``'s facts for ``versions`` live in the cache folder (the key: config hash + versions)."""
    key = json.dumps([name, _facts.config_sha256(name), versions, _facts._FILE_FORMAT]).encode()
    return cache_dir(create) / "facts" / f"{name}-{hashlib.sha256(key).hexdigest()[:16]}.json.gz"


def _read_cached(name: str, versions: dict) -> dict | None:
    try:
        path = cached_path(name, versions)
    except OSError:  # no cache folder can be made (a read-only home): plan from the meta model
        return None
    return _facts.read_file(path) if path.is_file() else None


def ensure(name: str) -> _facts.Facts:
    """Preset ``name``'s facts: shipped or cached when they hold for the installed libraries, else computed now
    and written to the cache folder for the next call."""
    found = _facts.preset_facts(name)
    if found is not None:
        return found
    facts = _facts.compute(name)
    try:
        path = cached_path(name, _facts.installed_versions(), create=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(_facts.file_bytes(_facts.file_data({name: facts}, "cached by zoo._facts_cache")))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError:  # a read-only or full cache folder: this call has its facts, the next computes them again
        pass
    return facts


_facts.register_source(_read_cached)
