"""Execute the lessons on this machine and store their outputs for readers on GitHub (`make notebooks`).

Widget state is never stored (it embeds megabytes of JavaScript); outputs of a CPU run are.
Usage: python tools/run_lessons.py [lessons/01_memory_maths.ipynb ...]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


def strip_widget_state(nb) -> None:
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", []):
            # keep the text fallback of widgets; drop the live-widget view that needs stored state
            output.get("data", {}).pop("application/vnd.jupyter.widget-view+json", None)


def run(path: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}},
                   store_widget_state=False).execute()
    strip_widget_state(nb)
    nbformat.write(nb, path)
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    paths = [Path(p) for p in argv] or sorted((ROOT / "lessons").glob("*.ipynb"))
    for path in paths:
        print(f"{path.name}: {run(path):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
