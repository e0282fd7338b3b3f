"""Numbers in a lesson's prose come from its outputs: a figure written in a markdown cell (a number with a
decimal point, or four digits and more) must be printed by one of the notebook's cells, be a value of a
shipped config, or be an input the notebook sets in code. A figure that only the prose knows was typed in
by hand, and goes stale the day a library or the machine changes.

What is not a figure: years (1990-2035), issue numbers (#6303), version and model names (Llama 3.1,
Python 3.11, SmolLM2), numbers inside links and inline code (a call's inputs: `height=1024`), and powers written as 2³⁰ or 10⁹.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LESSON_FILES = sorted((ROOT / "lessons").glob("*.ipynb"))

_NUMBER = re.compile(r"(?<![\w.#/-])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\w.]\d|[\w])")
# a name, then a version or a size: "Llama 3.1", "Python 3.11", "transformers 5.25", "3.2 1B"
_NAMED = re.compile(r"(?:llama|python|transformers|torch|diffusers|accelerate|bitsandbytes|safetensors|cuda|"
                    r"mistral|gemma|qwen|smollm2?|flux\.1|phi|version|v|ipywidgets|numpy|nbval|t5|clip)[\s-]*$",
                    re.IGNORECASE)
_LINK = re.compile(r"\]\([^)]*\)|https?://\S+|<[^>]+>|`[^`]*`")  # links, tags, inline code (a call's inputs)


def _normal(text: str) -> str:
    return text.replace(",", "").replace("_", "")


def _cell_text(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


_DATA_URI = re.compile(r"data:[\w/+.-]+;base64,[A-Za-z0-9+/=]+")  # a picture's bytes are no figure


def _output_text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(_cell_text({"source": output.get("text", "")}))
        for kind in ("text/plain", "text/html", "text/markdown"):
            data = output.get("data", {}).get(kind)
            if data:
                parts.append(_cell_text({"source": data}))
        figure = output.get("data", {}).get("application/vnd.plotly.v1+json")
        if figure:  # titles and labels of a chart are outputs too
            parts.append(json.dumps(figure.get("layout", {})))
    return _DATA_URI.sub(" ", " ".join(parts))


@lru_cache(maxsize=1)
def _config_values() -> frozenset[str]:
    values: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            values.add(f"{node:g}" if isinstance(node, float) else str(node))

    for path in (ROOT / "bigsmall_lab" / "zoo" / "configs").rglob("*.json"):
        walk(json.loads(path.read_text()))
    return frozenset(values)


def prose_figures(text: str) -> list[str]:
    """The figures in a markdown text, as written without thousands separators.

    >>> prose_figures("Llama 3.1 8B: 8,030,261,248 x 2 bytes = 16.06 GB (2024, #6303, 2³⁰, 64 layers)")
    ['8030261248', '16.06']
    """
    text = _LINK.sub(" ", text)
    found = []
    for m in _NUMBER.finditer(text):
        whole = _normal(m.group(0))
        if "." not in whole and len(whole) < 4:
            continue  # small counts: layers, heads, bits
        if "." not in whole and 1990 <= int(whole) <= 2035:
            continue  # a year
        if _NAMED.search(text[max(0, m.start() - 20): m.start()]):
            continue  # a version or a model's name
        if m.end() < len(text) and text[m.end()] in "⁰¹²³⁴⁵⁶⁷⁸⁹":
            continue  # a power: 10⁹
        found.append(whole)
    return found


def unproduced_figures(nb: dict) -> list[tuple[int, str]]:
    """(cell index, figure) of each prose figure that no output, config or code input of ``nb`` holds."""
    produced = " ".join(_normal(_output_text(c)) for c in nb["cells"] if c["cell_type"] == "code")
    inputs = " ".join(_normal(_cell_text(c)) for c in nb["cells"] if c["cell_type"] == "code")
    known = set(re.findall(r"\d+(?:\.\d+)?", produced)) | set(re.findall(r"\d+(?:\.\d+)?", inputs))
    known |= _config_values()
    return [(i, figure) for i, cell in enumerate(nb["cells"]) if cell["cell_type"] == "markdown"
            for figure in prose_figures(_cell_text(cell)) if figure not in known]


@pytest.mark.parametrize("path", LESSON_FILES, ids=lambda p: p.name)
def test_every_figure_in_the_prose_is_produced_by_the_notebook(path):
    nb = json.loads(path.read_text())
    missing = unproduced_figures(nb)
    assert not missing, (f"{path.name}: figures in the prose that no output, config or input produces "
                         f"(cell, figure): {missing}; print them from a cell or drop them")


def test_a_typed_in_figure_is_caught():
    nb = {"cells": [
        {"cell_type": "code", "source": "print(f'{16060522496 / 1e9:.2f} GB')",
         "outputs": [{"output_type": "stream", "text": "16.06 GB\n"}]},
        {"cell_type": "markdown", "source": "The weights take 16.06 GB, and a T4 holds 15.84 GB."},
    ]}
    assert unproduced_figures(nb) == [(1, "15.84")]
