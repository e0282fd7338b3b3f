"""The advisor drawn: its ranked options as a table with a memory bar per device, one option's code and
cost, a widget to ask it again, and a chart of planned against measured peaks.

Thin views over :func:`bigsmall_lab.advisor.fit` (the options, their bytes per device, costs and code)
and over the runner's :class:`~bigsmall_lab.fit_run.FitRun` (what running the top option measured). Nothing
here computes a byte or a cost: each figure is read off an ``Option`` or a ``FitRun`` and formatted.

The bars are text (``█`` for used memory, ``░`` for free room, as wide as the device's capacity), so a
table stored in a notebook reads the same on GitHub, where inline styles and scripts are dropped.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import plotly.graph_objects as go

from .._errors import LabError, closest, whole_number
from .._units import GB, MiB
from ..advisor import Machine, Option, changes, fit, machine
from ..estimates import GPUS
from ._snapshot import controls_html, with_snapshot

if TYPE_CHECKING:  # a result type only: the view draws what the runner returns
    from ..fit_run import FitRun

__all__ = ["FIT_MODELS", "FitWidget", "fit_option", "fit_run_chart", "fit_table", "fit_widget"]

BAR_WIDTH = 20  # characters of a full device's bar
_FULL, _FREE, _OVER = "█", "░", "▓"
_OK, _BAD = "#009E73", "#D55E00"  # Okabe-Ito green and vermillion

#: The widget's models: the shipped presets, then the lab's own models.
FIT_MODELS: dict[str, str] = {
    "Llama 3.1 8B": "llama-3.1-8b", "Llama 3.1 70B": "llama-3.1-70b", "Llama 3.1 405B": "llama-3.1-405b",
    "Llama 3.2 1B": "llama-3.2-1b", "Llama 3.2 3B": "llama-3.2-3b", "Mistral 7B v0.3": "mistral-7b-v0.3",
    "Qwen2.5 7B": "qwen2.5-7b", "Gemma 2 9B": "gemma-2-9b", "SmolLM2 1.7B": "smollm2-1.7b",
    "FLUX.1-dev (pipeline)": "flux.1-dev-transformer", "T5-v1.1-XXL encoder": "t5-v1.1-xxl-encoder",
    "SmolLM2-135M-Instruct (the lab's real model)": "smollm2-135m-instruct",
}
_GPU_CHOICES = ("none (CPU only)", *GPUS, "16GB", "24GB", "48GB")
# None: the RAM a named GPU's usual host has (advisor.HOST_RAM; none for a GPU given as a size); 0: none at all
_RAM_CHOICES: dict[str, int | None] = {"the GPU's usual host": None, "none": 0,
                                      **{f"{n} GB": n * GB for n in (16, 32, 64, 128, 256, 512)}}
_CONTEXTS = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
_BATCHES = (1, 2, 4, 8, 16, 32, 64)
_MAX_GPUS = 8


def _device_name(device: Any) -> str:
    return f"GPU {device}" if isinstance(device, int) else {"cpu": "CPU RAM", "disk": "disk"}.get(device, str(device))


def _size(n_bytes: float, unit: str) -> str:
    scale = {"GB": GB, "MB": 10**6, "MiB": MiB, "GiB": 2**30}[unit]
    value = n_bytes / scale
    return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"


def _unit(options: Sequence[Option]) -> str:
    """GB for models of a GB and more, MB below (SmolLM2 under a budget of a few hundred MB)."""
    largest = max((n for o in options for n in o.bytes_per_device.values()), default=0)
    return "GB" if largest >= GB else "MB"


def memory_bar(used: int, capacity: int, width: int = BAR_WIDTH) -> str:
    """A text bar: ``█`` for what is used, ``░`` for free room, ``▓`` past the capacity (one cell per
    ``capacity / width`` bytes, at most twice as wide as a full bar; no capacity: all past it).

    >>> memory_bar(11_500, 15_828, 10), memory_bar(20_000, 10_000, 4), memory_bar(5, 0, 4)
    ('███████░░░', '████▓▓▓▓', '▓▓▓▓▓▓▓▓')
    """
    if capacity <= 0:
        return _OVER * (2 * width)
    cells = round(min(used / capacity, 2.0) * width)
    if used > capacity:
        return _FULL * width + _OVER * max(cells - width, 1)
    cells = min(max(cells, 1 if used else 0), width)
    return _FULL * cells + _FREE * (width - cells)


def _bars_html(option: Option, unit: str) -> str:
    lines = []
    for device, used in option.bytes_per_device.items():
        capacity = option.capacity.get(device, 0)
        colour = _OK if used <= capacity else _BAD
        lines.append(f'<span style="font-family:monospace;white-space:pre;color:{colour}">'
                     f"{html.escape(f'{_device_name(device):8s}')} {memory_bar(used, capacity)}</span> "
                     f"{_size(used, unit)} / {_size(capacity, unit)} {unit}")
    return "<br>".join(lines)


def _quality_text(option: Option) -> str:
    q = option.quality
    if not q.parts or not q.kl_nats:
        return "none (the same weights)" if q.parts else "none"
    text = f"KL {q.kl_nats:.3f}"
    return text + (f", top-1 {q.top1:.0%}" if q.top1 is not None else "")


def _speed_text(option: Option) -> str:
    s = option.speed
    return f"{s.time_ratio:.2f}x" + (" + not timed: " + "; ".join(s.unmeasured) if s.unmeasured else "")


def _sources(options: Sequence[Option]) -> list[str]:
    """One line per distinct measurement the rows' costs come from: what, the model, where it was measured."""
    seen: dict[tuple[str, str], str] = {}
    for o in options:
        for part in (*o.quality.parts, *o.speed.parts):
            on = f" on {part.model}" if part.model else ""
            seen.setdefault((part.what, part.measured), f"<b>{html.escape(part.what)}</b>{html.escape(on)}: "
                                                         f"{html.escape(part.measured)}")
    return list(seen.values())


def _table_html(options: Sequence[Option], ranked: bool = True, limit: int | None = None,
                title: str | None = None, sources: bool = True) -> str:
    shown = list(options)[:limit] if limit else list(options)
    unit = _unit(shown)
    head = ["#" if ranked else "option", "how it runs", "fits", f"memory per device ({unit}): used / capacity",
            "quality lost (KL nats/token, top-1 agreement)", "time per token (x bf16 weights on one device)"]
    rows = []
    for i, o in enumerate(shown, 1):
        fits = f'<b style="color:{_OK}">yes</b>' if o.fits else \
            f'<b style="color:{_BAD}">no</b>: short ' + ", ".join(
                f"{_size(n, unit)} {unit} on {_device_name(d)}" for d, n in o.short_by.items())
        rows.append([str(i), html.escape(o.label), fits, _bars_html(o, unit), html.escape(_quality_text(o)),
                     html.escape(_speed_text(o))])
    th = "".join(f'<th style="text-align:left">{html.escape(h)}</th>' for h in head)
    body = "".join("<tr>" + "".join(f'<td style="text-align:left">{c}</td>' for c in row) + "</tr>" for row in rows)
    more = len(options) - len(shown)
    caption = f"<p><b>{html.escape(title)}</b></p>" if title else ""
    foot = []
    if more > 0:
        foot.append(f"<p>{more} more option{'s' if more != 1 else ''} not shown.</p>")
    if sources and _sources(shown):
        foot.append("<details><summary>where each cost was measured</summary><ul>"
                    + "".join(f"<li>{s}</li>" for s in _sources(shown)) + "</ul></details>")
    order = ("Ranked: options that fit first, then least quality lost, then fastest." if ranked
             else "In alphabetical order, not ranked.")
    return (f"{caption}<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"
            f"<p>{order}</p>" + "".join(foot))


def _checked_options(options: Any, argument: str = "options") -> list[Option]:
    if isinstance(options, Option):
        return [options]
    if isinstance(options, (str, bytes)) or not isinstance(options, Sequence) or \
            not all(isinstance(o, Option) for o in options):
        raise LabError(f"{argument} {options!r:.60} is not what the advisor returns; pass the list that "
                       "bigsmall_lab.advisor.fit(model, machine, seq_len) returns, or some of its options")
    if not options:
        raise LabError(f"{argument} is empty; pass at least one option of bigsmall_lab.advisor.fit(...)")
    return list(options)


def fit_table(options: Sequence[Option], ranked: bool = True, limit: int | None = None, title: str | None = None):
    """The options as an HTML table: how each runs, whether it fits (and how short it is), a memory bar per
    device (used against what the device holds), the quality it costs and its time per token; below it, where
    each cost was measured (the model and the file).

    ``ranked``: numbered in the order given, read as the advisor's ranking (False: the numbers only name the
    rows, as in an exercise that asks which one the advisor ranks first). ``limit``: the first so many rows.
    """
    from IPython.display import HTML

    shown = _checked_options(options)
    if limit is not None:
        limit = whole_number(limit, "limit", minimum=1)
    return HTML(_table_html(shown, ranked, limit, title))


def _option_html(option: Option) -> str:
    unit = _unit([option])
    parts = "".join(f"<li>{html.escape(_device_name(p.device))}: {html.escape(p.what)} {_size(p.bytes, unit)} {unit} "
                    f"<small>({html.escape(p.source)})</small></li>" for p in option.parts)
    costs = []
    for c in option.quality.parts:
        value = f"KL {c.value:.4f} nats/token" if c.value is not None else "not measured"
        top1 = f", top-1 {c.top1:.1%}" if c.top1 is not None else ""
        on = f", measured on {c.model}" if c.model else ""
        costs.append(f"<li>quality, {html.escape(c.what)}: {value}{top1}{html.escape(on)} "
                     f"<small>({html.escape(c.measured)})</small></li>")
    for c in option.speed.parts:
        costs.append(f"<li>speed, {html.escape(c.what)}: x{c.value:.3f} <small>({html.escape(c.measured)})</small></li>")
    costs += [f"<li>speed, {html.escape(u)}: counted x1</li>" for u in option.speed.unmeasured]
    if not costs:
        costs.append("<li>no cost: the reference plan (full-precision weights, a dynamic cache, one device)</li>")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in option.notes)
    return (f"<p><b>{html.escape(option.label)}</b>: {'fits' if option.fits else 'does not fit'}; "
            f"quality lost {html.escape(_quality_text(option))}, time per token {option.speed.time_ratio:.2f}x</p>"
            f"<pre>{html.escape(option.code)}</pre>"
            f"<p>memory, part by part:</p><ul>{parts}</ul><p>what it costs:</p><ul>{''.join(costs)}</ul>"
            + (f"<p>notes:</p><ul>{notes}</ul>" if notes else ""))


def fit_option(option: Option):
    """One option: its code (what to paste), its memory part by part with the planner call behind each, and
    its costs, each with the model it was measured on and where."""
    from IPython.display import HTML

    return HTML(_option_html(_checked_options(option, "option")[0]))


def fit_run_chart(runs: Sequence[FitRun], title: str | None = None, tolerance: float = 0.10) -> go.Figure:
    """Planned against measured peak (MiB) for each run of :func:`bigsmall_lab.fit_run.run`: a bar pair per
    run, the plan's ``tolerance`` band drawn on the planned bar, the ratio written above."""
    runs = list(runs)
    if not runs:
        raise LabError("runs is empty; pass the FitRun results of bigsmall_lab.fit_run.run(...)")
    labels = [f"{r.label}<br>({r.device})" for r in runs]
    planned = [r.planned_bytes / MiB for r in runs]
    peak = [r.peak_bytes / MiB for r in runs]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=labels, y=planned, name="planned (advisor.fit)", marker_color="#56B4E9",
                         error_y=dict(type="data", array=[tolerance * p for p in planned],
                                      arrayminus=[tolerance * p for p in planned], color="#333"),
                         hovertemplate="%{x}: planned %{y:,.1f} MiB<extra></extra>"))
    fig.add_trace(go.Bar(x=labels, y=peak, name="measured peak", marker_color="#E69F00",
                         text=[f"x{r.ratio:.2f}" for r in runs], textposition="outside",
                         hovertemplate="%{x}: measured %{y:,.1f} MiB<extra></extra>"))
    fig.update_layout(template="plotly_white", barmode="group", height=440,
                      title=title or f"The plan against the run: peak memory (bars: ±{tolerance:.0%} of the plan)",
                      yaxis_title="memory (MiB)", margin=dict(l=70, r=30, t=70, b=110),
                      legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
    return fig


# --- the widget ---------------------------------------------------------------------------------------------

def _gpu_text(gpu: str, n_gpus: int) -> str | None:
    """The advisor's machine text for the controls: None for no GPU, "2xL4", "24GB"."""
    if gpu.startswith("none"):
        return None
    return gpu if n_gpus == 1 else f"{n_gpus}x{gpu}"


def _widget_inputs(model: Any, gpu: Any, n_gpus: Any, seq_len: Any, batch_size: Any, cpu_ram_gb: Any):
    models = {v.lower(): v for v in FIT_MODELS.values()}
    if not isinstance(model, str) or model.strip().lower() not in models:
        raise LabError.bad("model", model, f"use one of: {', '.join(FIT_MODELS.values())}",
                           verb="is not a model of the widget" + (closest(model, models.values())
                                                                  if isinstance(model, str) else ""))
    gpus = {g.lower(): g for g in _GPU_CHOICES}
    key = "none (cpu only)" if gpu is None or (isinstance(gpu, str) and gpu.strip().lower() in ("none", "cpu")) \
        else gpu.strip().lower() if isinstance(gpu, str) else gpu
    if key not in gpus:
        raise LabError.bad("gpu", gpu, f"use one of: {', '.join(_GPU_CHOICES[1:])}, or None", verb="is not a GPU of "
                           "the widget" + (closest(gpu, _GPU_CHOICES) if isinstance(gpu, str) else ""))
    n_gpus = whole_number(n_gpus, "n_gpus", minimum=1)
    if n_gpus > _MAX_GPUS:
        raise LabError.bad("n_gpus", n_gpus, f"use 1 to {_MAX_GPUS} (one machine)", verb="is more than the slider holds")
    seq_len = whole_number(seq_len, "seq_len", minimum=1)
    if seq_len not in _CONTEXTS:
        raise LabError.bad("seq_len", seq_len, f"use one of: {', '.join(f'{c:,}' for c in _CONTEXTS)}",
                           verb="is not a context of the widget")
    batch_size = whole_number(batch_size, "batch_size", minimum=1)
    if batch_size not in _BATCHES:
        raise LabError.bad("batch_size", batch_size, f"use one of: {', '.join(map(str, _BATCHES))}",
                           verb="is not a batch of the widget")
    number = isinstance(cpu_ram_gb, (int, float)) and not isinstance(cpu_ram_gb, bool)
    ram = next((label for label, v in _RAM_CHOICES.items()
                if (v is None and cpu_ram_gb is None) or (number and v is not None and v == cpu_ram_gb * GB)), None)
    if ram is None:
        raise LabError.bad("cpu_ram_gb", cpu_ram_gb, "use None (the GPU's usual host), 0 (none) or one of: "
                           + ", ".join(str(v // GB) for v in _RAM_CHOICES.values() if v), verb="is not a choice")
    return models[model.strip().lower()], gpus[key], n_gpus, seq_len, batch_size, ram


class FitWidget(widgets.VBox):
    """Pick a model, GPUs, CPU RAM, a context and a batch; see the advisor's ranked options with a memory
    bar per device; pick an option to see its code and cost.

    ``widget.options`` holds the current ranked options (empty after bad input, which ``widget.message``
    explains); ``widget.option`` the one picked; ``widget.redraw_s`` the last redraw's seconds.
    """

    def __init__(self, model: str = "llama-3.1-8b", gpu: str | None = "T4", n_gpus: int = 1, seq_len: int = 8192,
                 batch_size: int = 1, cpu_ram_gb: int | None = None, limit: int = 8):
        model, gpu, n_gpus, seq_len, batch_size, ram = _widget_inputs(model, gpu, n_gpus, seq_len, batch_size,
                                                                      cpu_ram_gb)
        self.limit = whole_number(limit, "limit", minimum=1)
        style = {"description_width": "90px"}
        layout = widgets.Layout(width="340px")
        self.model = widgets.Dropdown(options=list(FIT_MODELS.items()), value=model, description="model",
                                      style=style, layout=layout)
        self.gpu = widgets.Dropdown(options=list(_GPU_CHOICES), value=gpu, description="GPU", style=style,
                                    layout=layout)
        self.n_gpus = widgets.IntSlider(value=n_gpus, min=1, max=_MAX_GPUS, description="how many",
                                        style=style, layout=layout, continuous_update=False)
        self.cpu_ram = widgets.Dropdown(options=list(_RAM_CHOICES), value=ram, description="CPU RAM",
                                        style=style, layout=layout)
        self.seq_len = widgets.Dropdown(options=[(f"{c:,} tokens", c) for c in _CONTEXTS], value=seq_len,
                                        description="context", style=style, layout=layout)
        self.batch_size = widgets.Dropdown(options=list(_BATCHES), value=batch_size, description="batch",
                                           style=style, layout=layout)
        self.pick = widgets.Dropdown(options=[], description="option", style=style,
                                     layout=widgets.Layout(width="700px"))
        self.message, self.table, self.detail = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.options: list[Option] = []
        self.option: Option | None = None
        self.redraw_s = 0.0
        self._picking = False
        for control, css in ((self.model, "model"), (self.gpu, "gpu"), (self.n_gpus, "gpus"),
                             (self.cpu_ram, "ram"), (self.seq_len, "context"), (self.batch_size, "batch")):
            control.add_class(f"bsl-fit-{css}")
            control.observe(self._changed, names="value")
        self.pick.add_class("bsl-fit-option")
        self.pick.observe(self._picked, names="value")
        left = widgets.VBox([self.model, self.seq_len, self.batch_size])
        right = widgets.VBox([self.gpu, self.n_gpus, self.cpu_ram])
        super().__init__([widgets.HBox([left, right]), self.message, self.table, self.pick, self.detail])
        self.add_class("bsl-fit")
        self.redraw()

    def machine(self) -> Machine:
        """The machine the controls describe (the advisor's :func:`~bigsmall_lab.advisor.machine`)."""
        return machine(_gpu_text(self.gpu.value, self.n_gpus.value), cpu_ram=_RAM_CHOICES[self.cpu_ram.value])

    def __repr__(self) -> str:
        return (f"FitWidget({self.model.value}, {self.machine().label}, {self.seq_len.value:,} tokens, batch "
                f"{self.batch_size.value}): run the notebook to use the controls")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        # The live widget, plus its controls, table and picked option as first drawn, for a notebook stored
        # without widget state (GitHub, nbviewer).
        controls = [("model", self.model.value), ("machine", self.machine().label),
                    ("context", f"{self.seq_len.value:,} tokens"), ("batch", self.batch_size.value),
                    ("option", self.option.label if self.option else "none")]
        return with_snapshot(super()._repr_mimebundle_(**kwargs),
                             controls_html("fit_widget", controls, self.message.value + self.table.value
                                           + self.detail.value))

    def _changed(self, change: dict) -> None:
        self.redraw()

    def _picked(self, change: dict) -> None:
        if self._picking or change["new"] is None:
            return
        self.option = self.options[change["new"]]
        self.detail.value = _option_html(self.option)

    def redraw(self) -> None:
        start = time.perf_counter()
        model, m = self.model.value, None
        try:
            m = self.machine()
            self.options = fit(model, m, self.seq_len.value, self.batch_size.value)
        except ValueError as err:  # the advisor's one-sentence LabError: show it, keep nothing stale
            self.options, self.option = [], None
            self.message.value = f'<span style="color:{_BAD}">{html.escape(str(err))}</span>'
            self.table.value = self.detail.value = ""
            self._set_picks()
            return
        fitting = sum(o.fits for o in self.options)
        text = f"{model} on {html.escape(m.label)} at {self.seq_len.value:,} tokens, batch {self.batch_size.value}: " \
               f"{len(self.options)} options, <b>{fitting} fit</b>"
        if not fitting:
            found = changes(model, m, self.seq_len.value, self.batch_size.value)
            text += ("; what would make one fit: " + "; ".join(html.escape(c.text) for c in found)) if found else \
                "; no change the advisor tries makes one fit"
        self.message.value = text
        self.table.value = _table_html(self.options, limit=self.limit, sources=False)
        self._set_picks()
        self.option = self.options[0] if self.options else None
        self.detail.value = _option_html(self.option) if self.option else ""
        self.redraw_s = time.perf_counter() - start

    def _set_picks(self) -> None:
        self._picking = True  # the options change under the dropdown: not a pick by the learner
        try:
            self.pick.options = [(f"{i + 1}. {'✓' if o.fits else '✗'} {o.label}", i) for i, o in enumerate(self.options)]
            self.pick.value = 0 if self.options else None
        finally:
            self._picking = False

    def select(self, index: int) -> Option:
        """Pick option ``index`` (0: the top one), as the dropdown does; returns it."""
        index = whole_number(index, "index", minimum=0)
        if index >= len(self.options):
            raise LabError.bad("index", index, f"use 0 to {len(self.options) - 1}", verb="is past the options")
        self.pick.value = index
        return self.options[index]


def fit_widget(model: str = "llama-3.1-8b", gpu: str | None = "T4", n_gpus: int = 1, seq_len: int = 8192,
               batch_size: int = 1, cpu_ram_gb: int | None = None) -> FitWidget:
    """A :class:`FitWidget` starting from these values: ``gpu`` a name of the advisor's table ("T4", "L4",
    "H100", ...), a size ("24GB") or None for a CPU; ``cpu_ram_gb``: None for the RAM a named GPU's usual host has
    (``advisor.HOST_RAM``), 0 for none (nothing spills), else GB."""
    return FitWidget(model, gpu, n_gpus, seq_len, batch_size, cpu_ram_gb)
