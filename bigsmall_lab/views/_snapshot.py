"""Static snapshots of the lab's widgets, for a notebook stored without widget state (GitHub, nbviewer).

A widget's live view needs a kernel and the widget's state; a notebook on GitHub has neither and showed
``<bigsmall_lab.views._bits.BitLayout object at 0x...>``. So each widget's mime bundle also carries a
``text/html`` snapshot of what it shows when displayed (its controls' values and its message) and, for
widgets drawn with a plotly ``FigureWidget``, that figure as JSON under :data:`FIGURE_MIME`.

Front ends draw the live widget (its mime type ranks first) and ignore the rest. ``tools/run_lessons.py``
turns the figure into a PNG, puts it in the html where :data:`FIGURE_SLOT` stands, and drops the JSON.

>>> data = with_snapshot({"text/plain": "W()"}, "<p>one</p>")
>>> sorted(data), data["text/html"]
(['text/html', 'text/plain'], '<div class="bsl-snapshot"><p>one</p></div>')
"""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["FIGURE_MIME", "FIGURE_SLOT", "controls_html", "with_snapshot"]

#: The widget's figure as plotly JSON; no front end renders this type, tools/run_lessons.py replaces it by a PNG.
FIGURE_MIME = "application/vnd.bigsmall-lab.figure+json"
#: Where in the snapshot's html the figure's PNG goes (an html comment: invisible until filled).
FIGURE_SLOT = "<!-- bigsmall-lab: figure -->"

_NOTE = "a static copy of the widget as first displayed: run the notebook to use it"


def controls_html(title: str, controls: list[tuple[str, Any]], message: str = "") -> str:
    """One line naming the widget and its controls' values, then its message (html the widget wrote)."""
    values = " · ".join(f"{html.escape(name)}: <b>{html.escape(str(value))}</b>" for name, value in controls)
    text = f"<p><b>{html.escape(title)}</b> ({_NOTE}) {values}</p>"
    return text + (f"<div>{message}</div>" if message else "")


def with_snapshot(bundle: Any, snapshot_html: str, figure: Any = None) -> Any:
    """``bundle`` (a widget's mime bundle, or ``(bundle, metadata)`` as anywidget returns it) plus the
    ``text/html`` snapshot and, when ``figure`` is given, the figure's JSON under :data:`FIGURE_MIME`."""
    metadata = None
    if isinstance(bundle, tuple):
        bundle, metadata = bundle
    if not bundle:  # a closed widget has no view: nothing to add to
        return bundle if metadata is None else (bundle, metadata)
    data = dict(bundle)
    slot = FIGURE_SLOT if figure is not None else ""
    data["text/html"] = f'<div class="bsl-snapshot">{snapshot_html}{slot}</div>'
    if figure is not None:
        data[FIGURE_MIME] = json.loads(figure.to_json())  # plain JSON: plotly encodes numpy arrays itself
    return data if metadata is None else (data, metadata)
