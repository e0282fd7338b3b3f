"""A lesson's exact claims are checks that fail (``bsl.claim``, one sentence instead of a traceback): flip one expected number in a copy of lesson 01 and
nbval (run lax, as CI runs it) reports the failure at that cell, while the unflipped copy passes.

The copies hold only the lesson's first cells (setup, imports, parameters, the parameter count by hand)
plus the KV-cache cell, so three kernels run in about half a minute on two busy cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
LESSON = ROOT / "lessons" / "01_memory_maths.ipynb"

# (text in the lesson, the same text with one expected number flipped, the message the check raises)
FLIPS = {
    "count": ('mlp = 3 * hidden * cfg["intermediate_size"]', 'mlp = 2 * hidden * cfg["intermediate_size"]',
              "the count by hand"),
    "kv": ("by_hand = 2 * layers * n_kv_heads * head_dim * SEQ_LEN * BATCH_SIZE * 2",
           "by_hand = 2 * layers * n_kv_heads * head_dim * SEQ_LEN * BATCH_SIZE * 4",
           "kv_cache_bytes"),
}


def _cell_with(cells, text: str) -> int:
    found = [i for i, c in enumerate(cells) if c.cell_type == "code" and text in c.source]
    assert len(found) == 1, f"lesson 01 should have exactly one cell with {text!r}; update FLIPS"
    return found[0]


def _short_copy(flip: str | None):
    """Lesson 01 up to its count by hand, plus its KV-cache check; ``flip`` changes one expected number."""
    nb = nbformat.read(LESSON, as_version=4)
    count = _cell_with(nb.cells, FLIPS["count"][0])
    kv = _cell_with(nb.cells, FLIPS["kv"][0])
    nb.cells = nb.cells[: count + 1] + [nb.cells[kv]]
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    if flip is not None:
        original, flipped, _ = FLIPS[flip]
        i = _cell_with(nb.cells, original)
        nb.cells[i].source = nb.cells[i].source.replace(original, flipped)
    return nb


@pytest.mark.slow
def test_flipping_an_expected_number_fails_the_lesson_under_nbval(tmp_path):
    names = {"unflipped": None, "flipped_count": "count", "flipped_kv": "kv"}
    for name, flip in names.items():
        nbformat.write(_short_copy(flip), tmp_path / f"{name}.ipynb")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # not the lab's pyproject: no doctests, no other paths
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q", "-rf", "-c",
         str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), *(f"{n}.ipynb" for n in names)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out[-3000:]
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert not any("unflipped.ipynb" in line for line in failed), out[-3000:]
    for name, flip in names.items():
        if flip is not None:
            assert sum(f"{name}.ipynb::" in line for line in failed) == 1, out[-3000:]
            assert "ClaimFailed" in out and FLIPS[flip][2] in out, out[-3000:]


def test_a_failed_claim_is_one_sentence_in_a_notebook():
    import bigsmall_lab as bsl

    with pytest.raises(bsl.ClaimFailed) as err:
        bsl.claim(1 > 2, "one is more than two", measured="1 and 2")
    assert isinstance(err.value, AssertionError)  # still a failure: Run All stops, nbval fails the cell
    assert err.value._render_traceback_() == ["ClaimFailed: this did not hold here: one is more than two; "
                                              "measured here: 1 and 2"]


def test_no_lesson_keeps_a_bare_assert():
    import ast
    import json

    for path in sorted((ROOT / "lessons").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            try:
                tree = ast.parse("".join(cell["source"]))
            except SyntaxError:  # the setup cell's %pip lines
                continue
            assert not any(isinstance(n, ast.Assert) for n in ast.walk(tree)), \
                f"{path.name}: use bsl.claim(...), which fails the cell with one sentence"
