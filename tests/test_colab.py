"""Colab, emulated: a fresh Python 3.12 venv with Colab's own stack, the setup cell run as Colab runs it.

What Colab gives a notebook before its first cell: Python 3.12, a CUDA build of torch (here the lock's release: PyPI's
CUDA build, or a local CPU wheel), ipywidgets 7.7.1, notebook 6.5.7, ipykernel 6.17.1 and IPython 7.34.0, and
``google.colab`` imported by the kernel (here a fake module, imported by an IPython startup file). Then:

- the setup cell of ``_project.colab_setup_cell()`` runs in that kernel (IPython, as on Colab), installing from
  this checkout instead of GitHub: the release tag's URL becomes a wheel built from this checkout and the
  constraints URL the checkout's own Colab constraints file; the lessons 01 and 03 then run whole in the same
  venv (nbclient) with the widgets' ipywidgets-7 path and no error, and ipywidgets is still 7.7.1 at the end;
- a failed install (an unreachable constraints URL) stops the setup cell with one sentence and no traceback.

Not emulated: a GPU (the T4 path of the parameters cell is tested with faked GPUs in test_hardware.py), Colab's
front end (what it draws of an ipywidgets-7 widget), the packages Colab preinstalls beyond its kernel's stack,
and the GitHub tag itself (the release must be tagged ``v<version>`` for the real cell to find it).
Packages come from the package index (network needed; pip's cache makes a second run faster).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from bigsmall_lab import _project, check
from tests._require import missing

ROOT = Path(__file__).resolve().parent.parent
# Colab's kernel stack as it ships (checked against a Colab runtime's `pip list`).
COLAB_STACK = ("ipywidgets==7.7.1", "notebook==6.5.7", "ipykernel==6.17.1", "ipython==7.34.0", "traitlets==5.7.1",
               "jupyter-client==6.1.12", "tornado==6.4.2")
LESSONS = ("01_memory_maths", "03_dtypes")

pytestmark = pytest.mark.slow


def python312() -> str | None:
    """A Python 3.12 interpreter: on PATH, or pyenv's. BIGSMALL_COLAB_PYTHON names another (to try the emulation
    where no CPU torch for 3.12 can be had: not Colab's Python, so only for a dry run)."""
    chosen = os.environ.get("BIGSMALL_COLAB_PYTHON")
    if chosen:
        return chosen
    for candidate in (shutil.which("python3.12"), *sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python3.12"))):
        if candidate and subprocess.run([str(candidate), "-c", "import sys; assert sys.version_info[:2] == (3, 12)"],
                                        capture_output=True).returncode == 0:
            return str(candidate)
    return None


def install_torch(py: str) -> None:
    """The lock's torch release for Python 3.12: a local CPU wheel (pip's find-links) where one lies on disk, else
    PyPI's, which on Linux is the CUDA build (about 3 GB with its CUDA libraries) as Colab itself ships; the CPU
    kernels run either way. pip's cache makes the second run fast."""
    torch = check.lock_versions()["torch"].split("+")[0]
    if subprocess.run([py, "-m", "pip", "install", "-q", "--no-deps", f"torch=={torch}+cpu"],
                      capture_output=True).returncode != 0:
        done = subprocess.run([py, "-m", "pip", "install", "-q", f"torch=={torch}"], capture_output=True, text=True)
        if done.returncode != 0:
            missing(f"torch {torch} for Python 3.12 could not be installed from a local wheel or the package index "
                    f"({done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'no message'})")
    run(py, "-m", "pip", "install", "-q", f"torch=={torch}")  # its dependencies, after a --no-deps local wheel


def run(*args: str, **kwargs) -> None:
    done = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{' '.join(args[:6])} ...: {done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """A fresh venv dressed as a Colab runtime; the kernel name nbclient starts, and the local sources."""
    python = python312()
    if python is None:
        missing("Python 3.12 is not installed (Colab's Python; `pyenv install 3.12` or your system's python3.12)")
    started = time.monotonic()
    home = tmp_path_factory.mktemp("colab")
    venv = home / "venv"
    run(python, "-m", "venv", str(venv))
    py = str(venv / "bin" / "python")
    install_torch(py)
    run(py, "-m", "pip", "install", "-q", *COLAB_STACK)
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "google" / "colab").mkdir(parents=True)  # `google` stays a namespace package (protobuf shares it)
    (site / "google" / "colab" / "__init__.py").write_text('"""A stand-in for Colab\'s module."""\n')
    ipython_dir = home / "ipython"
    (ipython_dir / "profile_default" / "startup").mkdir(parents=True)
    (ipython_dir / "profile_default" / "startup" / "00-colab.py").write_text("import google.colab\n")
    kernels = home / "jupyter" / "kernels" / "colab"
    kernels.mkdir(parents=True)
    (kernels / "kernel.json").write_text(
        f'{{"argv": ["{py}", "-m", "ipykernel_launcher", "-f", "{{connection_file}}"], '
        f'"display_name": "Colab (emulated)", "language": "python"}}')
    wheels = home / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(ROOT))
    wheel = next(wheels.glob("bigsmall_lab-*.whl"))
    setup_s = time.monotonic() - started
    env = {"JUPYTER_PATH": str(home / "jupyter"), "IPYTHONDIR": str(ipython_dir),
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
           "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "MPLBACKEND": "Agg"}
    yield {"py": py, "wheel": wheel, "env": env, "setup_s": setup_s, "home": home}
    shutil.rmtree(home, ignore_errors=True)  # the venv holds torch's CUDA build: ~5 GB not to leave in pytest's tmp


def local(source: str, wheel: Path, constraints: str | None = None) -> str:
    """The setup cell with GitHub replaced by this checkout: its wheel, its constraints file."""
    tag_source = f"git+{_project.repo_url()}@v{_project.release()}"
    constraints_url = _project.raw_url(_project.COLAB_CONSTRAINTS)
    assert tag_source in source and constraints_url in source, "the setup cell no longer installs the release tag"
    source = source.replace(tag_source, wheel.as_uri())
    return source.replace(constraints_url, constraints or str(ROOT / _project.COLAB_CONSTRAINTS))


def execute(nb, colab, monkeypatch, timeout: int = 600):
    for name, value in colab["env"].items():
        monkeypatch.setenv(name, value)
    client = NotebookClient(nb, timeout=timeout, kernel_name="colab", resources={"metadata": {"path": str(ROOT / "lessons")}})
    client.execute()
    return nb


def test_the_setup_cell_installs_the_release_and_lessons_01_and_03_run_on_colabs_widgets(colab, monkeypatch):
    started = time.monotonic()
    probe = ("import sys, ipywidgets, bigsmall_lab; print(ipywidgets.__version__, 'google.colab' in sys.modules, "
             "bigsmall_lab.__file__.startswith(sys.prefix))")
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(local(_project.colab_setup_cell(), colab["wheel"])),
        nbformat.v4.new_code_cell(probe)])
    execute(nb, colab, monkeypatch)
    assert nb.cells[1].outputs[0]["text"].split() == ["7.7.1", "True", "True"], nb.cells[1].outputs
    install_s = time.monotonic() - started
    for lesson in LESSONS:
        started = time.monotonic()
        nb = nbformat.read(ROOT / "lessons" / f"{lesson}.ipynb", as_version=4)
        assert nb.cells[1].source == _project.colab_setup_cell()
        nb.cells[1].source = local(nb.cells[1].source, colab["wheel"])
        nb.cells.append(nbformat.v4.new_code_cell("import ipywidgets; print(ipywidgets.__version__)"))
        execute(nb, colab, monkeypatch)
        errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
        assert not errors, f"{lesson}: {errors[0]['ename']}: {errors[0]['evalue']}"
        assert nb.cells[-1].outputs[0]["text"].strip() == "7.7.1", f"{lesson} upgraded Colab's ipywidgets"
        print(f"{lesson} ran on the emulated Colab in {time.monotonic() - started:.0f} s")
    print(f"venv {colab['setup_s']:.0f} s, setup cell {install_s:.0f} s")


def test_a_failed_install_stops_the_setup_cell_with_one_sentence(colab, monkeypatch):
    unreachable = "http://127.0.0.1:9/colab-constraints.txt"  # nothing listens on port 9: pip fails at once
    cell = local(_project.colab_setup_cell(), colab["wheel"], constraints=unreachable)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    with pytest.raises(CellExecutionError):
        execute(nb, colab, monkeypatch, timeout=300)
    (error,) = [o for o in nb.cells[0].outputs if o.output_type == "error"]
    assert error.ename == "SetupFailed" and len(error.traceback) == 1, error.traceback
    sentence = error.traceback[0]
    assert sentence.startswith("SetupFailed: pip could not install the lab's dependencies (")
    assert sentence.endswith(f"run this cell again, or report it at {_project.repo_url()}/issues")
    assert "\n" not in sentence and sentence.count(". ") == 0, sentence
