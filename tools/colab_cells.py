"""Write every lesson's Colab cells from pyproject: the setup cell (cells[1]) and the model line of the parameters cell.

    python tools/colab_cells.py           # rewrite the cells that differ, print which
    python tools/colab_cells.py --check   # exit 1 when a lesson's cells differ from what would be written

The setup cell is ``bigsmall_lab._project.colab_setup_cell()`` (the repository URL, the release and the
requirements come from pyproject, the versions from the Colab constraints). A parameters cell whose first
line sets ``MODEL = None`` (the embedded model) starts instead from ``bsl.hardware.default_model()``: a
real open checkpoint on a GPU that holds it with a network (a Colab T4), else the embedded model. Each
notebook is read, changed and written back at once; outputs are left alone (re-run the lessons after).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bigsmall_lab import _project  # noqa: E402

MODEL_LINES = (
    "CHOICE = bsl.hardware.default_model()  # a GPU that holds a real open checkpoint, with a network (a Colab T4)\n"
    "MODEL = CHOICE.model                   # its hub id; else None: the embedded bigsmall-tiny (or set a hub id / folder)"
)
_EMBEDDED = re.compile(r"^MODEL = None\b.*$", re.M)
_CHOSEN = re.compile(r"^CHOICE = bsl\.hardware\.default_model\(\).*\nMODEL = CHOICE\.model.*$", re.M)
_REASON = "print(CHOICE.reason)"


def parameters_source(source: str) -> str:
    """The parameters cell with its ``MODEL = None`` line chosen by ``default_model`` (unchanged otherwise)."""
    if _CHOSEN.search(source):
        source = _CHOSEN.sub(MODEL_LINES, source, count=1)
    elif _EMBEDDED.search(source):
        source = _EMBEDDED.sub(MODEL_LINES, source, count=1)
    else:
        return source
    return source if source.rstrip().endswith(_REASON) else source.rstrip() + "\n" + _REASON


def lesson_cells(nb) -> list[tuple[int, str]]:
    """[(cell index, source it should have)] for the cells this tool owns."""
    wanted = [(1, _project.colab_setup_cell())]
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            wanted.append((index, parameters_source(cell.source)))
    return wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when a lesson differs")
    args = parser.parse_args(argv)
    stale = []
    for path in sorted((ROOT / "lessons").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)  # read, change, write back at once: other tools write these too
        changed = [i for i, source in lesson_cells(nb) if nb.cells[i].source != source]
        if not changed:
            continue
        stale.append(path.name)
        if not args.check:
            for i, source in lesson_cells(nb):
                nb.cells[i].source = source
            nbformat.write(nb, path)
        print(f"{'differs' if args.check else 'wrote'}: {path.name} cells {changed}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
