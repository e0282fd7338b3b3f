"""The talk's claims, each tied to the lesson cell that computes or measures it.

One :class:`TalkClaim` per claim of the talk ("Big parameters, small GPUs"): the lesson (a stem of
``_project.LESSONS``), the claim in a few words, ``cell``: text that only one code cell of that lesson holds,
and ``figure``: a regular expression that finds, in that cell's outputs, the figure it produced on the machine
that last ran the lessons. ``tools/claims.py`` writes ``docs/claims.md`` from these, reading the committed
notebooks; ``tests/test_claims.py`` checks that every cell and figure is there and that the file is current.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CLAIMS", "TalkClaim", "claims_markdown", "find_figure"]


@dataclass(frozen=True)
class TalkClaim:
    lesson: str
    claim: str
    cell: str
    figure: str


CLAIMS: tuple[TalkClaim, ...] = ()


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else (value or "")


def _outputs(cell: dict) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(_text(output.get("text")))
        data = output.get("data", {})
        parts.append(_text(data.get("text/plain")))
        if "text/html" in data:  # a table: its cells' text, without the tags
            parts.append(re.sub(r"<[^>]+>", " ", _text(data["text/html"])))
    return "\n".join(parts)


def find_figure(claim: TalkClaim, lessons: Path) -> tuple[int, str]:
    """(index of the one code cell holding ``claim.cell``, the figure its outputs show).

    Raises LookupError naming the lesson and what is missing: no such cell, several, or no figure.
    """
    nb = json.loads((lessons / f"{claim.lesson}.ipynb").read_text())
    cells = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and claim.cell in _text(c["source"])]
    if len(cells) != 1:
        raise LookupError(f"{claim.lesson}: {len(cells)} code cells hold {claim.cell!r}, not one")
    match = re.search(claim.figure, _outputs(nb["cells"][cells[0]]))
    if match is None:
        raise LookupError(f"{claim.lesson} cell {cells[0]}: its outputs show nothing like {claim.figure!r}")
    return cells[0], " ".join(match.group(0).split())


def claims_markdown(lessons: Path) -> str:
    """docs/claims.md: every talk claim, the cell that computes or measures it, the figure it produced."""
    rows = ["| lesson | the talk's claim | cell | figure on the machine that last ran the lessons |",
            "|---|---|---|---|"]
    for claim in CLAIMS:
        index, figure = find_figure(claim, lessons)
        rows.append(f"| {claim.lesson} | {claim.claim} | {index} (`{claim.cell}`) | {figure} |")
    return ("# The talk's claims, where each is computed or measured\n\n"
            "Written by `python tools/claims.py` from the committed lessons' outputs (`make notebooks` runs it);\n"
            "`tests/test_claims.py` fails when a cell or figure has moved. Cells are counted from 0.\n\n"
            + "\n".join(rows) + "\n")
