"""Execute the lessons on this machine and store their outputs for readers on GitHub (`make notebooks`).

Widget state is never stored (it embeds megabytes of JavaScript); outputs of a CPU run are, with a static
fallback for every chart and widget, since GitHub and nbviewer run no JavaScript (issue 18):

- each plotly output (``application/vnd.plotly.v1+json``) gets an ``image/png`` of its figure beside it;
- each widget output keeps a ``text/html`` snapshot of its first state (the lab's widgets write one, see
  ``bigsmall_lab/views/_snapshot.py``; their figure becomes a PNG inside it), any other widget its text.

The PNGs are drawn by the plotly.js that ships inside the installed ``plotly`` package, in Debian's Chromium
driven by Playwright (no kaleido, no network), all figures of a notebook in one browser session. The
notebook's metadata keeps a hash of its code cells (``metadata["bigsmall_lab"]["sources_sha256"]``), so
``tests/test_static_fallbacks.py`` can tell stored outputs from stale ones.

Usage: python tools/run_lessons.py [lessons/01_memory_maths.ipynb ...]
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# Written by the lab's widgets (bigsmall_lab/views/_snapshot.py): their figure as JSON, and the place in their
# html snapshot where its PNG goes. Kept as text here so that the tool needs no import of the package.
FIGURE_MIME = "application/vnd.bigsmall-lab.figure+json"
FIGURE_SLOT = "<!-- bigsmall-lab: figure -->"
#: The width of every PNG (a notebook column on GitHub is about this wide); the height is the figure's own.
PNG_WIDTH = 960
PLOTLY_DEFAULT_HEIGHT = 450  # plotly.js's own default when a layout sets none


def sources_sha256(nb: Any) -> str:
    """sha256 of the notebook's code cells, in order: what its stored outputs were computed from.

    Prose (markdown) is left out: a reworded sentence does not make an output stale.

    >>> a = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1"), nbformat.v4.new_markdown_cell("x")])
    >>> b = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    >>> sources_sha256(a) == sources_sha256(b), sources_sha256(a) == sources_sha256(nbformat.v4.new_notebook())
    (True, False)
    """
    digest = hashlib.sha256()
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            source = cell["source"]
            source = "".join(source) if isinstance(source, list) else source
            digest.update(source.encode() + b"\0")  # the separator: "ab" + "c" is not "a" + "bc"
    return digest.hexdigest()


def strip_widget_state(nb) -> None:
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", []):
            # keep the static fallbacks of widgets; drop the live-widget view that needs stored state, and say
            # that a widget was there (tests/test_static_fallbacks.py checks its snapshot is kept)
            if output.get("data", {}).pop(WIDGET_MIME, None) is not None:
                output.setdefault("metadata", {}).setdefault("bigsmall_lab", {})["widget"] = True


def _figure_size(figure: dict) -> tuple[int, int]:
    layout = figure.get("layout", {}) or {}
    width = layout.get("width") or PNG_WIDTH
    height = layout.get("height") or PLOTLY_DEFAULT_HEIGHT
    # a figure laid out for another width keeps its proportions at PNG_WIDTH
    return PNG_WIDTH, max(1, round(height * PNG_WIDTH / width))


def _compact_png(png: bytes) -> bytes:
    """A palette PNG (256 colours) when Pillow is there: a chart has few colours, and it is 2-3x smaller."""
    try:
        from PIL import Image
    except ImportError:  # Pillow comes with diffusers; without it the PNG stays as Chromium wrote it
        return png
    image = Image.open(io.BytesIO(png)).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, format="PNG", optimize=True)
    return out.getvalue() if out.tell() < len(png) else png


class FigureRenderer:
    """One Chromium page with plotly.js loaded; ``render(figure)`` returns the figure as PNG bytes.

    Used as ``with FigureRenderer() as r: png = r.render(figure_json)``; the browser lives for one notebook
    (Playwright's sync API keeps an event loop of its own, which must not be open while nbclient runs
    the kernel). tests/test_static_fallbacks.py renders with it.
    """

    def __enter__(self) -> FigureRenderer:
        from playwright.sync_api import sync_playwright

        import plotly

        sys.path.insert(0, str(ROOT))
        from tests._jupyter import CHROMIUM_ARGS, browser_env, chromium_path  # the lab's one set of Chromium flags

        executable = chromium_path()
        if executable is None:
            raise RuntimeError("drawing the notebooks' PNG fallbacks needs Debian's Chromium (apt install chromium); "
                               "Playwright's own browser download is not used")
        self._scratch = tempfile.TemporaryDirectory(prefix="bsl-render-")
        scratch = Path(self._scratch.name)
        self._playwright = sync_playwright().start()
        try:
            self._context = self._playwright.chromium.launch_persistent_context(
                str(scratch / "profile"), executable_path=executable, args=CHROMIUM_ARGS, headless=True,
                env=browser_env(scratch))
            self._page = self._context.new_page()
            self._page.set_content("<!doctype html><html><head><meta charset='utf-8'></head><body></body></html>")
            plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
            self._page.add_script_tag(content=plotly_js.read_text(encoding="utf-8"))  # inlined: no network
            self.plotly_js_version = self._page.evaluate("Plotly.version")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def render(self, figure: dict, width: int | None = None, height: int | None = None) -> bytes:
        """The figure (plotly JSON: data, layout, config) as a PNG, ``width`` x ``height`` pixels."""
        auto_width, auto_height = _figure_size(figure)
        figure = {"data": figure.get("data", []), "layout": dict(figure.get("layout", {}) or {})}
        url = self._page.evaluate(
            "([fig, w, h]) => Plotly.toImage(fig, {format: 'png', width: w, height: h})",
            [figure, width or auto_width, height or auto_height])
        prefix = "data:image/png;base64,"
        if not url.startswith(prefix):
            raise RuntimeError(f"plotly.js returned no PNG: {url[:60]!r}")
        return _compact_png(base64.b64decode(url[len(prefix):]))

    def __exit__(self, *exc: Any) -> None:
        for close in (getattr(self, "_context", None), getattr(self, "_playwright", None)):
            if close is not None:
                try:
                    close.close() if hasattr(close, "close") else close.stop()
                except Exception:  # closing must not hide the error that got us here
                    pass
        if getattr(self, "_scratch", None) is not None:
            self._scratch.cleanup()


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _title(figure: dict) -> str:
    """The chart's title as plain text (its alt text), tags such as <br> dropped."""
    title = (figure.get("layout") or {}).get("title") or {}
    text = title.get("text", "") if isinstance(title, dict) else str(title)
    return " ".join(re.sub(r"<[^>]+>", " ", str(text)).split()) or "a chart"


def add_static_fallbacks(nb: Any, renderer: FigureRenderer | None = None) -> dict[str, int]:
    """Give every plotly output an ``image/png`` and every widget output a ``text/html`` snapshot, in place.

    Run it on an executed notebook before :func:`strip_widget_state` (it looks for the widget view). Returns
    counts: ``{"plotly": n, "widget_figures": n, "widgets": n, "png_bytes": n}``.
    """
    jobs: list[tuple[dict, str, dict]] = []  # (output, what to fill, figure)
    counts = {"plotly": 0, "widget_figures": 0, "widgets": 0, "png_bytes": 0}
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data")
            if not data:
                continue
            if PLOTLY_MIME in data:
                jobs.append((output, "png", data[PLOTLY_MIME]))
            if WIDGET_MIME in data or FIGURE_MIME in data:
                counts["widgets"] += 1
                figure = data.pop(FIGURE_MIME, None)
                if figure is not None and FIGURE_SLOT in _text(data.get("text/html", "")):
                    jobs.append((output, "slot", figure))
                elif "text/html" not in data and "image/png" not in data:
                    # a widget that is not the lab's: keep its text, and say what is missing
                    shown = html.escape(_text(data.get("text/plain", "")) or "a widget")
                    data["text/html"] = (f"<pre>{shown}</pre><p><i>an interactive widget: run the notebook to "
                                         f"use it</i></p>")
    if not jobs:
        return counts
    own = renderer is None
    renderer = renderer or FigureRenderer().__enter__()
    try:
        for output, kind, figure in jobs:
            data = output["data"]
            png = renderer.render(figure)
            counts["png_bytes"] += len(png)
            title = _title(figure)
            if kind == "png":
                data["image/png"] = _b64(png)
                output.setdefault("metadata", {})["image/png"] = {"alt": title}  # nbconvert's alt text
                counts["plotly"] += 1
            else:
                width, _ = _figure_size(figure)
                img = f'<img src="data:image/png;base64,{_b64(png)}" width="{width}" alt="{html.escape(title)}"/>'
                data["text/html"] = _text(data["text/html"]).replace(FIGURE_SLOT, img)
                counts["widget_figures"] += 1
    finally:
        if own:
            renderer.__exit__(None, None, None)
    return counts


def stamp(nb: Any, sources_hash: str) -> None:
    """Record which code the stored outputs come from (checked by tests/test_static_fallbacks.py)."""
    nb.metadata.setdefault("bigsmall_lab", {})["sources_sha256"] = sources_hash


def execute(nb: Any, cwd: Path) -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}},
                   store_widget_state=False).execute()


def run(path: Path, renderer: FigureRenderer | None = None) -> tuple[float, dict[str, int]]:
    nb = nbformat.read(path, as_version=4)
    sources_hash = sources_sha256(nb)
    start = time.perf_counter()
    execute(nb, path.parent)
    try:
        counts = add_static_fallbacks(nb, renderer)
    except Exception as exc:  # keep the minutes of execution: store the outputs, the test names what is missing
        print(f"{path.name}: no static fallbacks ({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)
        counts = {"plotly": 0, "widget_figures": 0, "widgets": 0, "png_bytes": 0, "failed": 1}
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                output.get("data", {}).pop(FIGURE_MIME, None)
    strip_widget_state(nb)
    stamp(nb, sources_hash)
    nbformat.write(nb, path)
    return time.perf_counter() - start, counts


def main(argv: list[str]) -> int:
    paths = [Path(p) for p in argv] or sorted((ROOT / "lessons").glob("*.ipynb"))
    with FigureRenderer():  # fails now, before the first lesson runs, where there is no Chromium
        pass
    failed = 0
    for path in paths:
        seconds, counts = run(path)
        failed += counts.get("failed", 0)
        print(f"{path.name}: {seconds:.1f} s, {counts['plotly']} charts + {counts['widget_figures']} widget "
              f"charts as PNG ({counts['png_bytes'] / 1e3:,.0f} kB), {counts['widgets']} widgets, "
              f"{path.stat().st_size / 1e6:.2f} MB", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
