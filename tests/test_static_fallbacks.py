"""Static fallbacks of the stored lessons (issue 18): GitHub and nbviewer run no JavaScript.

Every committed lesson must show its charts and widgets without a kernel: each plotly output carries an
``image/png`` beside its JSON, each widget output a ``text/html`` (or ``image/png``) snapshot; its stored
outputs must come from its current code (``metadata["bigsmall_lab"]["sources_sha256"]``, written by
``tools/run_lessons.py``); and it must stay under 2 MB. The checker is proved on a small notebook executed
here by ``tools/run_lessons.py``: it passes, and each way of breaking it is caught.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import json
import re
import struct
from pathlib import Path

import nbformat
import pytest

from ._jupyter import chromium_path, missing

ROOT = Path(__file__).resolve().parent.parent
LESSONS = sorted((ROOT / "lessons").glob("*.ipynb"))
MAX_NOTEBOOK_BYTES = 2 * 10**6  # a notebook GitHub still renders quickly; lesson 03 was 1.2 MB with one chart


def _tool():
    spec = importlib.util.spec_from_file_location("run_lessons", ROOT / "tools" / "run_lessons.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run_lessons = _tool()

# A widget stored without its snapshot shows only its repr: the lab's widgets by name, any ipywidget by its own.
_WIDGET_REPR = re.compile(r"^(<bigsmall_lab\.views\.\S+ object at|(BitLayout|QuantMap|PlacementPlanner|LiveMemory)\(|"
                          r"FigureWidget\(|\w+\(children=|<ipywidgets\.)")


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def problems(nb: dict, size_bytes: int | None = None) -> list[str]:
    """What a reader without a kernel would miss in ``nb`` (the notebook's JSON), one sentence each."""
    found = []
    for i, cell in enumerate(nb["cells"]):
        for output in cell.get("outputs", []):
            data = output.get("data") or {}
            where = f"cell {i}"
            if run_lessons.PLOTLY_MIME in data and "image/png" not in data:
                found.append(f"{where}: a plotly chart without its image/png (blank on GitHub)")
            widget = (run_lessons.WIDGET_MIME in data or run_lessons.FIGURE_MIME in data
                      or (output.get("metadata") or {}).get("bigsmall_lab", {}).get("widget")
                      or _WIDGET_REPR.match(_text(data.get("text/plain", ""))))
            if widget and "text/html" not in data and "image/png" not in data:
                found.append(f"{where}: a widget without a text/html or image/png snapshot (GitHub shows its repr)")
            if run_lessons.FIGURE_SLOT in _text(data.get("text/html", "")):
                found.append(f"{where}: a widget snapshot whose chart was never drawn as a PNG")
            if run_lessons.FIGURE_MIME in data:
                found.append(f"{where}: a widget's figure JSON left in the notebook (run tools/run_lessons.py)")
    stored = nb.get("metadata", {}).get("bigsmall_lab", {}).get("sources_sha256")
    if stored is None:
        found.append("no sources_sha256 in the metadata: outputs not stored by tools/run_lessons.py")
    elif stored != run_lessons.sources_sha256(nb):
        found.append("stale outputs: the code cells changed since tools/run_lessons.py stored them")
    if size_bytes is not None and size_bytes > MAX_NOTEBOOK_BYTES:
        found.append(f"{size_bytes:,} bytes, over {MAX_NOTEBOOK_BYTES:,}")
    return found


@pytest.mark.parametrize("path", LESSONS, ids=[p.stem for p in LESSONS])
def test_a_committed_lesson_shows_its_charts_without_javascript(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    found = problems(nb, path.stat().st_size)
    assert not found, f"{path.name} (re-run it: python tools/run_lessons.py {path.relative_to(ROOT)}):\n" + \
        "\n".join(found)


# --- the checker and the tool, on a small notebook executed here ---------------------------------------------

SAMPLE_CELLS = [
    ("markdown", "A chart and two of the lab's widgets."),
    ("code", "import plotly.graph_objects as go\nfrom bigsmall_lab import views"),
    ("code", "go.Figure(go.Bar(x=['fp32', 'bf16'], y=[4, 2]), layout=dict(title='bytes per weight', height=300))"),
    ("code", "views.PlacementPlanner(preset='llama-3.2-1b', n_gpus=1, gpu='T4')"),
    ("code", "views.BitLayout(value='70000', dtypes=['float16', 'bfloat16'])"),
]


def _needs_chromium():
    if chromium_path() is None:
        missing("Debian's chromium is not installed: apt install chromium (tools/run_lessons.py draws PNGs with it)")
    if importlib.util.find_spec("playwright") is None:
        missing("playwright is not installed: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """A notebook executed and stored by tools/run_lessons.py, in a scratch folder."""
    _needs_chromium()
    path = tmp_path_factory.mktemp("static") / "sample.ipynb"
    cells = [nbformat.v4.new_code_cell(s) if kind == "code" else nbformat.v4.new_markdown_cell(s)
             for kind, s in SAMPLE_CELLS]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    seconds, counts = run_lessons.run(path)
    assert counts == {"plotly": 1, "widget_figures": 1, "widgets": 2, "png_bytes": counts["png_bytes"]}
    return path


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _outputs(nb: dict, cell: int) -> list[dict]:
    return [o for o in nb["cells"][cell]["outputs"] if o.get("data")]


def _png_size(b64: str) -> tuple[int, int]:
    png = base64.b64decode(b64)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])  # the IHDR chunk: width, height


def test_the_stored_sample_passes(sample):
    nb = _load(sample)
    assert problems(nb, sample.stat().st_size) == []
    (chart,) = _outputs(nb, 2)
    assert set(chart["data"]) >= {run_lessons.PLOTLY_MIME, "image/png"}
    assert _png_size(chart["data"]["image/png"]) == (run_lessons.PNG_WIDTH, 300)  # the layout's height
    (planner,) = _outputs(nb, 3)
    assert run_lessons.WIDGET_MIME not in planner["data"] and run_lessons.FIGURE_MIME not in planner["data"]
    snapshot = _text(planner["data"]["text/html"])
    assert '<img src="data:image/png;base64,' in snapshot and "llama-3.2-1b" in snapshot
    (bits,) = _outputs(nb, 4)
    table = _text(bits["data"]["text/html"])
    assert "70144" in table and "overflow to inf" in table  # bf16's stored value, fp16's overflow
    assert nb["metadata"]["bigsmall_lab"]["sources_sha256"] == run_lessons.sources_sha256(nb)
    assert sample.stat().st_size < 200_000


@pytest.mark.parametrize("break_it, expected", [
    (lambda nb: _outputs(nb, 2)[0]["data"].pop("image/png"), "plotly chart without its image/png"),
    (lambda nb: _outputs(nb, 3)[0]["data"].pop("text/html"), "widget without a text/html"),
    (lambda nb: _outputs(nb, 4)[0]["data"].pop("text/html"), "widget without a text/html"),
    (lambda nb: _outputs(nb, 4)[0].pop("metadata"), None),  # the repr alone still betrays a widget ...
    (lambda nb: _outputs(nb, 3)[0]["data"].update({"text/html": run_lessons.FIGURE_SLOT}), "never drawn"),
    (lambda nb: nb["cells"][2].update(source=nb["cells"][2]["source"] + "  # changed"), "stale outputs"),
    (lambda nb: nb["metadata"].pop("bigsmall_lab"), "no sources_sha256"),
])
def test_each_way_of_breaking_the_sample_is_caught(sample, break_it, expected):
    nb = _load(sample)
    if isinstance(nb["cells"][2]["source"], list):
        nb["cells"][2]["source"] = "".join(nb["cells"][2]["source"])
    break_it(nb)
    if expected is None:  # ... once its snapshot is gone too
        assert problems(nb) == []
        _outputs(nb, 4)[0]["data"].pop("text/html")
        expected = "widget without a text/html"
    found = problems(nb)
    assert len(found) == 1 and expected in found[0], found


def test_a_markdown_change_is_not_stale(sample):
    nb = _load(sample)
    nb["cells"][0]["source"] = "Reworded prose."
    assert problems(nb) == []


def test_a_notebook_over_2_mb_is_caught(sample, tmp_path):
    nb = _load(sample)
    nb["cells"][2]["outputs"].append({"output_type": "stream", "name": "stdout", "text": "x" * MAX_NOTEBOOK_BYTES})
    big = tmp_path / "big.ipynb"
    big.write_text(json.dumps(nb, indent=1), encoding="utf-8")
    assert problems(_load(big), big.stat().st_size) == [f"{big.stat().st_size:,} bytes, over 2,000,000"]


def test_nbconvert_html_shows_every_chart_as_an_image(sample):
    """nbconvert (what nbviewer runs) draws the stored notebook with an <img> for each chart and widget."""
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(sample, as_version=4))
    images = re.findall(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', body)
    assert len(images) == 2  # the bar chart and the planner's chart
    assert _png_size(images[0])[0] == run_lessons.PNG_WIDTH
    classic, _ = HTMLExporter(template_name="classic").from_notebook_node(nbformat.read(sample, as_version=4))
    assert 'alt="bytes per weight"' in classic  # the chart's title as alt text (the lab template has none to set)
    assert "70144" in body and "bsl-snapshot" in body  # BitLayout's table, as html


def test_the_renderer_draws_the_figure_it_is_given():
    _needs_chromium()
    with run_lessons.FigureRenderer() as renderer:
        small = renderer.render({"data": [{"type": "bar", "y": [1, 2]}], "layout": {"height": 200}})
        wide = renderer.render({"data": [], "layout": {"width": 1920, "height": 600}})  # drawn at PNG_WIDTH
    assert _png_size(base64.b64encode(small).decode()) == (run_lessons.PNG_WIDTH, 200)
    assert _png_size(base64.b64encode(wide).decode()) == (run_lessons.PNG_WIDTH, 300)


def test_add_static_fallbacks_leaves_outputs_without_charts_alone():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1", outputs=[
        nbformat.v4.new_output("execute_result", data={"text/plain": "1"}, execution_count=1)])])
    before = copy.deepcopy(nb)
    assert run_lessons.add_static_fallbacks(nb) == {"plotly": 0, "widget_figures": 0, "widgets": 0, "png_bytes": 0}
    assert nb == before


def test_a_foreign_widget_keeps_its_text_as_html():
    data = {"text/plain": "IntSlider(value=3)", run_lessons.WIDGET_MIME: {"model_id": "abc"}}
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("w", outputs=[
        nbformat.v4.new_output("display_data", data=data)])])
    run_lessons.add_static_fallbacks(nb)
    run_lessons.strip_widget_state(nb)
    (output,) = nb.cells[0].outputs
    assert "IntSlider(value=3)" in output.data["text/html"] and output.metadata["bigsmall_lab"]["widget"]


def test_weights_vs_formats_stores_counts_not_weights():
    """Lesson 03's chart of 884,736 weights (issue 18: 1 MB in the notebook) holds 160 counts."""
    import torch

    from bigsmall_lab import views

    weights = torch.randn(576, 1536, generator=torch.Generator().manual_seed(0)) * 0.02
    fig = views.weights_vs_formats(weights)
    bars = fig.data[0]
    assert bars.type == "bar" and len(bars.y) == 160 and sum(bars.y) == weights.numel()
    assert len(fig.to_json()) < 50_000


def test_each_widget_keeps_its_live_view_and_adds_a_snapshot():
    """The lab's four widgets: the live view and text as before, plus text/html (and the figure to draw as PNG)."""
    import time

    import torch

    from bigsmall_lab import views

    bits = views.BitLayout(value="1 + 2**-8", dtypes=["bfloat16"])
    data, _ = bits._repr_mimebundle_()
    assert data["text/plain"] == repr(bits) and run_lessons.WIDGET_MIME in data
    assert "<td>1</td>" in data["text/html"] and run_lessons.FIGURE_MIME not in data  # bf16 rounds 1 + 2**-8 to 1

    planner = views.PlacementPlanner(preset="llama-3.2-1b", n_gpus=1, gpu="T4")
    quant_map = views.QuantMap({"demo": torch.linspace(-1, 1, 256).reshape(4, 64)}, bits=2, scheme="symmetric")
    for widget, shown in ((planner, "llama-3.2-1b"), (quant_map, "symmetric")):
        data = widget._repr_mimebundle_()
        assert data["text/plain"] == repr(widget)[:110] + ("…" if len(repr(widget)) > 110 else "")
        assert run_lessons.WIDGET_MIME in data and shown in data["text/html"]
        assert run_lessons.FIGURE_SLOT in data["text/html"]
        assert data[run_lessons.FIGURE_MIME]["data"] == json.loads(widget.figure.to_json())["data"]

    live = views.LiveMemory(interval_s=0.02, device="cpu")
    data = live._repr_mimebundle_()
    assert run_lessons.WIDGET_MIME in data and "LiveMemory" in data["text/html"]
    assert run_lessons.FIGURE_MIME not in data  # nothing recorded yet: no empty chart as a PNG
    with live:
        time.sleep(0.1)
    assert run_lessons.FIGURE_MIME in live._repr_mimebundle_()


def test_a_failed_drawing_keeps_the_executed_outputs(tmp_path, monkeypatch):
    """Minutes of execution are not lost when Chromium fails: the outputs are stored, the test names the gap."""
    path = tmp_path / "one.ipynb"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import plotly.graph_objects as go\ngo.Figure(go.Bar(y=[1, 2]))")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)

    def no_browser(*args, **kwargs):
        raise RuntimeError("no Chromium here")

    monkeypatch.setattr(run_lessons.FigureRenderer, "__enter__", no_browser)
    _, counts = run_lessons.run(path)
    stored = _load(path)
    assert counts["failed"] == 1 and run_lessons.PLOTLY_MIME in _outputs(stored, 0)[0]["data"]
    assert problems(stored) == ["cell 0: a plotly chart without its image/png (blank on GitHub)"]
