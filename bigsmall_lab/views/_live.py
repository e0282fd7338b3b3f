"""A live memory chart for the notebook: :class:`LiveMemory` draws this process's memory while a cell runs.

It is a plotly ``FigureWidget`` fed by the lab's one sampler (:class:`bigsmall_lab.measure.Sampler`,
through its ``on_sample`` callback; no second sampling thread): on CUDA the device's used memory
from NVML and torch's allocated and reserved bytes, on a CPU the process's ``RssAnon`` (memory it
allocated: tensors, the heap) and ``RssFile`` (file pages mapped in: memory-mapped safetensors).
``mark(label)`` draws a labelled line at the moment an event happens (a shard loaded, a generation
step), so the chart shows *what the code did* when memory moved.

>>> live = LiveMemory(interval_s=0.05, device="cpu")
>>> with live:                        # samples while the block runs, then stops its thread
...     x = bytearray(50 * 2**20)     # 50 MiB
...     live.mark("50 MiB allocated")
>>> live.is_running, len(live.samples) >= 2, [label for _, label in live.marks]
(False, True, ['50 MiB allocated'])

Beside the tools a learner may know:

- jupyterlab-nvdashboard (RAPIDS) draws device-wide GPU charts in a JupyterLab side panel from NVML,
  refreshed on a timer (about once a second): every process on the GPU together, no view of one
  process or of torch's allocator, nothing on a machine without a GPU, and nothing in Colab;
- ipyexperiments (Stas Bekman) reports per-cell numbers (consumed and peaked CPU and GPU memory) as
  text after each cell: exact and useful, but no chart of what happened during the cell.

This chart works on a CPU and a GPU, in JupyterLab and Colab, shows this process only (and torch's
own figures on CUDA), updates while the cell is still running, and marks the events of the code
being taught. Its thread always stops: at :meth:`stop` or the end of a ``with`` block, when a cell
raises (an IPython hook), at interpreter exit (the sampler's ``atexit``). Each chart has its own
sampler, figure and lock, so several charts in one notebook do not interfere.

Redraws are throttled, samples are not: every sample is kept, and the figure is sent to the
browser at most every ``redraw_s`` seconds (default 0.1) in one ``batch_update`` message; with the
default ``interval_s=0.2`` each sample is drawn, about five updates a second. :meth:`to_figure` draws
the same chart afterwards from the samples held, as a plain ``go.Figure`` (for a notebook stored
with its outputs, and for tests without a browser).
"""

from __future__ import annotations

import math
import numbers
import sys
import threading
import time
import warnings
import weakref
from typing import Any

import plotly.graph_objects as go

from .._errors import LabError, shown
from .._units import MiB as _MiB
from ..measure import Sample, Sampler
from ..measure import trim_heap  # measure's one malloc_trim; track() calls it too
from ._snapshot import with_snapshot

__all__ = ["LiveMemory"]

_LAYOUT = dict(template="plotly_white", height=380, margin=dict(l=70, r=30, t=70, b=60),
               legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
_MAX_POINTS = 3000  # drawn per line; older points are thinned beyond that, never the samples kept


def _interval(interval: Any, name: str) -> float:
    allowed = "use a number of seconds > 0, e.g. 0.2 (five samples a second)"
    if isinstance(interval, bool) or not isinstance(interval, numbers.Real):
        raise LabError.bad(name, interval, allowed, verb="is not a number")
    value = float(interval)
    if not math.isfinite(value) or value <= 0:
        raise LabError.bad(name, interval, allowed, verb="is out of range")
    return value


_UNSET: Any = object()  # `interval` not given (None is a wrong value, refused like any other)


def _series(device: str, rss_split: bool, points: list[tuple[float, Sample] | None],
            relative: bool) -> dict[str, tuple[list, list]]:
    """Lines to draw, name -> (x seconds, y MiB), with None where one recording ends and the next
    begins (a gap, not a line across the pause). Relative lines start at 0 (what was added)."""
    if device.startswith("cuda"):
        fields = {"device used (NVML, all processes)": lambda s: s.nvml_used,
                  "torch reserved (cached by the allocator)": lambda s: s.cuda_reserved,
                  "torch allocated (tensors)": lambda s: s.cuda_allocated}
        first = next((p[1] for p in points if p is not None), None)
        if first is not None and first.nvml_used is None:
            fields.pop("device used (NVML, all processes)")
    elif not rss_split:
        fields = {"resident set (psutil; no RssAnon/RssFile here)": lambda s: s.rss_bytes}
    else:
        fields = {"RssAnon: allocated by the process": lambda s: s.rss_anon,
                  "RssFile: mapped files (safetensors)": lambda s: s.rss_file}
    first = next((p[1] for p in points if p is not None), None)
    out = {}
    for name, read in fields.items():
        base = (read(first) or 0) if (relative and first is not None) else 0
        xs, ys = [], []
        for p in points:
            if p is None:
                xs.append(None)
                ys.append(None)
                continue
            value = read(p[1])
            xs.append(round(p[0], 3))
            ys.append(None if value is None else round((value - base) / _MiB, 2))
        out[name] = (xs, ys)
    return out


class LiveMemory:
    """A live chart of this process's memory, drawn while code runs (see the module docstring).

    ``interval_s``: seconds between samples (default 0.2: five a second; the name :class:`~bigsmall_lab.measure.Sampler`
    uses; the old keyword ``interval`` still works, with a DeprecationWarning). ``device``: 'cpu' or
    'cuda[:N]' (default: CUDA when present). ``relative``: draw memory above the first sample
    (default: on a CPU, whose resident set starts at whatever the process already holds) or absolute
    (default on CUDA, where 0 is an empty GPU). ``redraw_s``: the fastest the figure is redrawn.
    ``trim``: on a CPU, give memory freed earlier back to the OS when a recording starts
    (``malloc_trim``), else new tensors reuse freed pages and the resident set does not show them.

    Use it as ``with live: ...`` (starts, stops at the end even when the block raises), or
    ``live.start()`` ... ``live.stop()`` across cells. Starting again continues the same chart
    after a gap. Display it by making it the last line of a cell.
    """

    def __init__(self, interval_s: float = 0.2, device: str | None = None, title: str | None = None,
                 relative: bool | None = None, redraw_s: float = 0.1, trim: bool = True, *, interval: Any = _UNSET):
        if interval is not _UNSET:
            if interval_s != 0.2:
                raise LabError("LiveMemory got both interval_s and interval (its old name); give interval_s alone")
            warnings.warn("LiveMemory(interval=...) is renamed interval_s=... (the name measure.Sampler uses); "
                          "interval will be removed", DeprecationWarning, stacklevel=2)
            self.interval_s = _interval(interval, "interval")
        else:
            self.interval_s = _interval(interval_s, "interval_s")
        self.redraw_s = _interval(redraw_s, "redraw_s")
        probe = Sampler(self.interval_s, device)  # checks interval and device now; never started
        self.device = probe.device
        self.rss_split = probe.rss_split
        self.relative = (not self.device.startswith("cuda")) if relative is None else bool(relative)
        if not isinstance(trim, bool):
            raise LabError.bad("trim", trim, "use True or False", verb="is not a bool")
        self.trim = trim
        if title is not None and not isinstance(title, str):
            raise LabError.bad("title", title, "use a short text or None", verb="is not a text")
        self.title = title
        self.samples: list[Sample] = []  # every sample of every recording, in order
        self.marks: list[tuple[float, str]] = []  # (seconds since the first start, label)
        self.redraws = 0
        self.error: BaseException | None = None
        self._points: list[tuple[float, Sample] | None] = []
        self._sampler: Sampler | None = None
        self._t0: float | None = None
        self._offset = 0.0
        self._last_draw = 0.0
        self._data_lock = threading.Lock()
        self._draw_lock = threading.Lock()
        self._hook = None
        _colab_widgets()
        # Built here, in the calling (main) thread: plotly's lazy imports must not race the sampler.
        self.figure = go.FigureWidget()
        for name, (x, y) in _series(self.device, self.rss_split, [], self.relative).items():
            self.figure.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name))
        self.figure.update_layout(title=self._title(), xaxis_title="time (s)", yaxis_title=self._y_title(),
                                  **_LAYOUT)

    # -- state ------------------------------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        return self._sampler is not None and self._sampler.is_alive

    def _title(self) -> str:
        where = "GPU " + self.device if self.device.startswith("cuda") else "CPU"
        return self.title or f"Memory of this process on the {where}, live (a sample every {self.interval_s:g} s)"

    def _y_title(self) -> str:
        return "MiB above the first sample" if self.relative else "MiB"

    # -- recording --------------------------------------------------------------------------------

    def start(self) -> LiveMemory:
        """Start (or continue) recording; returns once the first sample is in. Running already: no-op.

        In a notebook, running the same cell again first stops the charts its previous run started and
        left running (``live = LiveMemory().start()`` run twenty times records with one thread, not twenty).
        """
        if self.is_running:
            return self
        _remember_cell_of(self)
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
        offset = now - self._t0
        with self._data_lock:
            if self._points:
                self._points.append(None)  # a gap between two recordings
        if self.trim and not self.device.startswith("cuda"):
            # glibc keeps memory freed by earlier cells and hands it out again without the resident set
            # growing: give it back to the OS first, so what this block allocates shows as growth.
            trim_heap()
        sampler = Sampler(self.interval_s, self.device, on_sample=lambda s: self._on_sample(offset, s))
        self._sampler = sampler
        self._watch_cells()
        sampler.start()
        return self

    def stop(self) -> LiveMemory:
        """Stop recording (the thread is joined) and draw the last state; safe to call twice."""
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.stop()
            if sampler.error is not None:
                self.error = sampler.error
        self._unwatch_cells()
        self._draw()
        return self

    def mark(self, label: str) -> None:
        """A labelled vertical line at this moment ('shard 3 loaded', '256 tokens')."""
        if not isinstance(label, str) or not label.strip():
            raise LabError.bad("label", label, "use a short text such as 'model loaded'", verb="is not a text")
        if self._t0 is None:
            raise LabError("mark() needs a chart that has started: call live.start() or use `with live:` first")
        with self._data_lock:
            self.marks.append((time.perf_counter() - self._t0, label.strip()))
        if not self.is_running:
            self._draw()

    def _on_sample(self, offset: float, sample: Sample) -> None:
        # Called from the sampler's thread for every sample: keep it, redraw if it is time.
        with self._data_lock:
            self.samples.append(sample)
            self._points.append((offset + sample.t_s, sample))
        now = time.perf_counter()
        if now - self._last_draw >= self.redraw_s:
            self._draw()

    # -- drawing ----------------------------------------------------------------------------------

    def _snapshot(self) -> tuple[list, list]:
        with self._data_lock:
            points, marks = list(self._points), list(self.marks)
        real = [i for i, p in enumerate(points) if p is not None]
        if len(real) > _MAX_POINTS:  # thin evenly, keep every gap and the last point
            step = math.ceil(len(real) / _MAX_POINTS)
            keep = set(real[::step]) | {real[-1]} | {i for i, p in enumerate(points) if p is None}
            points = [p for i, p in enumerate(points) if i in keep]
        return points, marks

    def _decorations(self, marks: list[tuple[float, str]]) -> tuple[list[dict], list[dict]]:
        shapes = [dict(type="line", xref="x", yref="paper", x0=t, x1=t, y0=0, y1=1,
                       line=dict(color="#888", width=1, dash="dot")) for t, _ in marks]
        notes = [dict(x=t, xref="x", y=1.0 - 0.07 * (i % 4), yref="paper", text=label, showarrow=False,
                      xanchor="left", yanchor="top", font=dict(size=11), bgcolor="rgba(255,255,255,0.7)")
                 for i, (t, label) in enumerate(marks)]
        return shapes, notes

    def _draw(self) -> None:
        points, marks = self._snapshot()
        series = _series(self.device, self.rss_split, points, self.relative)
        shapes, notes = self._decorations(marks)
        with self._draw_lock:
            self._last_draw = time.perf_counter()
            with self.figure.batch_update():  # one message to the browser per redraw
                for trace, (x, y) in zip(self.figure.data, series.values()):
                    trace.x, trace.y = x, y
                self.figure.layout.shapes = shapes
                self.figure.layout.annotations = notes
            self.redraws += 1

    def to_figure(self, title: str | None = None) -> go.Figure:
        """The chart drawn afterwards from the samples held: a plain ``go.Figure`` (stored in notebooks)."""
        points, marks = self._snapshot()
        fig = go.Figure()
        for name, (x, y) in _series(self.device, self.rss_split, points, self.relative).items():
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=name))
        shapes, notes = self._decorations(marks)
        fig.update_layout(title=title or self._title().replace(", live", ""), xaxis_title="time (s)",
                          yaxis_title=self._y_title(), shapes=shapes, annotations=notes, **_LAYOUT)
        return fig

    # -- the cell around it -----------------------------------------------------------------------

    def _watch_cells(self) -> None:
        """In IPython: stop when a cell raises (a chart started with start() must not outlive an error)."""
        shell = _ipython()
        if shell is None or self._hook is not None:
            return

        def after_cell(result: Any) -> None:
            if getattr(result, "error_in_exec", None) is not None or getattr(result, "error_before_exec", None):
                self.stop()

        self._hook = (shell, after_cell)
        shell.events.register("post_run_cell", after_cell)

    def _unwatch_cells(self) -> None:
        hook, self._hook = self._hook, None
        if hook is not None:
            shell, after_cell = hook
            try:
                shell.events.unregister("post_run_cell", after_cell)
            except ValueError:  # already gone
                pass

    def __enter__(self) -> LiveMemory:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- display ----------------------------------------------------------------------------------

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, **kwargs: Any) -> dict:
        # The widget for a live kernel; a sentence (not plotly's repr with a random id) as the text.
        bundle = dict(self.figure._repr_mimebundle_(include=include, exclude=exclude, **kwargs) or {})
        bundle["text/plain"] = repr(self)
        # For a notebook stored without widget state: a sentence, and the chart once it holds samples
        # (tools/run_lessons.py turns it into a PNG). Shown before a recording, the live chart is still empty.
        where = "GPU " + self.device if self.device.startswith("cuda") else "CPU"
        text = (f"<p><b>LiveMemory</b>: a live chart of this process's memory on the {where} (a sample every "
                f"{self.interval_s:g} s), drawn while the code runs: run the notebook to watch it "
                f"(<code>to_figure()</code> draws the record afterwards).</p>")
        return with_snapshot(bundle, text, self.to_figure() if self.samples else None)

    def __repr__(self) -> str:
        state = "running" if self.is_running else "stopped"
        error = f", stopped by {shown(self.error)}" if self.error is not None else ""
        return (f"LiveMemory({self.device}, every {self.interval_s:g} s, {len(self.samples)} samples, "
                f"{len(self.marks)} marks, {state}{error}): a live chart; live.to_figure() draws it afterwards")


def _ipython():
    if "IPython" not in sys.modules:
        return None
    from IPython import get_ipython

    return get_ipython()


# Charts started by each notebook cell's last run (the cell's id, or its text where the front end sends no id),
# held weakly: running the cell again stops the ones still recording, whose variable the cell is about to rebind.
_STARTED_BY_CELL: dict[str, list[weakref.ref]] = {}
_running_cell: list[str | None] = [None]
_watched_shells: weakref.WeakSet = weakref.WeakSet()


def _before_cell(info: Any) -> None:
    key = getattr(info, "cell_id", None) or getattr(info, "raw_cell", None)
    _running_cell[0] = key
    for ref in _STARTED_BY_CELL.pop(key, []) if key else []:
        chart = ref()
        if chart is not None and chart.is_running:
            chart.stop()


def _watch_shell(shell: Any) -> bool:
    """Register the cell watcher once per shell; True when it was there before the cell now running."""
    if shell is None or shell in _watched_shells:
        return shell is not None
    shell.events.register("pre_run_cell", _before_cell)
    _watched_shells.add(shell)
    return False


def _remember_cell_of(chart: LiveMemory) -> None:
    if not _watch_shell(_ipython()):
        return  # registered during this cell: the cell running now was not seen, so nothing to remember
    key = _running_cell[0]
    if key is not None:
        refs = _STARTED_BY_CELL.setdefault(key, [])
        if not any(r() is chart for r in refs):
            refs.append(weakref.ref(chart))


def _colab_widgets() -> None:
    """Colab draws third-party widgets (plotly's FigureWidget) only with its custom widget manager."""
    if "google.colab" in sys.modules:
        try:
            from google.colab import output

            output.enable_custom_widget_manager()
        except (ImportError, AttributeError) as err:  # an older Colab without it: say so, the static chart works
            print(f"bigsmall_lab: Colab's custom widget manager is not available ({err}); the live chart may stay "
                  "blank, and live.to_figure() draws it after the run", file=sys.stderr)


_watch_shell(_ipython())  # imported in a notebook (the lessons' first cells): watch the cells from the next one on
