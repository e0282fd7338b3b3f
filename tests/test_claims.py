"""docs/claims.md lists every talk claim with the cell that computes or measures it, and is current."""

from __future__ import annotations

from pathlib import Path

import pytest

from bigsmall_lab import _project
from bigsmall_lab._talk import CLAIMS, TalkClaim, claims_markdown, find_figure

ROOT = Path(__file__).resolve().parent.parent


def test_every_lesson_reproduces_at_least_one_claim():
    assert {c.lesson for c in CLAIMS} == set(_project.LESSONS)


@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: f"{c.lesson}:{c.claim[:30]}")
def test_each_claim_has_one_cell_and_a_figure(claim):
    index, figure = find_figure(claim, ROOT / "lessons")
    assert index > 0 and figure


def test_docs_claims_is_current():
    assert (ROOT / "docs" / "claims.md").read_text() == claims_markdown(ROOT / "lessons"), (
        "docs/claims.md is stale: run `python tools/claims.py`")


def test_a_missing_cell_or_figure_is_named():
    with pytest.raises(LookupError, match="0 code cells"):
        find_figure(TalkClaim("01_memory_maths", "x", "no cell holds this text", "."), ROOT / "lessons")
    with pytest.raises(LookupError, match="nothing like"):
        find_figure(TalkClaim("01_memory_maths", "x", "bsl.count_parameters(PRESET)", "no such figure"),
                    ROOT / "lessons")
