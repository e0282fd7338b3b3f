"""The device_map planner drawn: one bar per device, stacked by the layer ranges it holds.

Thin views over :func:`bigsmall_lab.placement.plan`: the chart draws a :class:`~bigsmall_lab.placement.Plan`;
the :class:`PlacementPlanner` widget asks the planner again whenever a control changes and redraws
the same chart in place. Meta models are cached by the planner (per preset, dtype and
quantization), so a redraw for Llama 3.1 70B takes a few hundredths of a second.
"""

from __future__ import annotations

import html
import time
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from .._errors import LabError
from ..hardware import GPUS
from ..placement import Plan, Strategy, fewest_gpus, plan
from ._snapshot import controls_html, with_snapshot

__all__ = ["PLANNER_PRESETS", "PlacementPlanner", "placement_chart"]

_MiB, _GiB = 2**20, 2**30
# Okabe-Ito colours (readable by colour-blind eyes): decoder blocks alternate two blues so that
# neighbouring ranges stay apart; embeddings, head and the rest get their own.
_BLOCKS = ("#0072B2", "#56B4E9")
_EMBED, _HEAD, _OTHER = "#E69F00", "#D55E00", "#999999"

#: The planner widget's models: label -> preset (the talk's models first).
PLANNER_PRESETS: dict[str, str] = {
    "Llama 3.1 8B": "llama-3.1-8b",
    "Llama 3.1 70B": "llama-3.1-70b",
    "Llama 3.1 405B": "llama-3.1-405b",
    "FLUX.1-dev transformer": "flux.1-dev-transformer",
    "Mistral 7B v0.3": "mistral-7b-v0.3",
    "Qwen2.5 7B": "qwen2.5-7b",
    "Gemma 2 9B": "gemma-2-9b",
    "Llama 3.2 3B": "llama-3.2-3b",
    "Llama 3.2 1B": "llama-3.2-1b",
    "bigsmall-small (the lab's 190M)": "bigsmall-small",
}
_GPU_CHOICES = {f"{g.name} · {g.usable_bytes / 1e9:.1f} GB": g.usable_bytes for g in GPUS.values()}
_CPU_CHOICES = {"none": 0, **{f"{n} GB": n * 10**9 for n in (16, 32, 64, 128, 256, 512, 1024)}}


def _device_name(device: Any) -> str:
    return f"GPU {device}" if isinstance(device, int) else {"cpu": "CPU", "disk": "disk"}.get(device, str(device))


def _short(label: str) -> str:
    """'model.layers.0-15' -> 'layers 0-15'; 'model.embed_tokens' -> 'embed_tokens'."""
    return label.removeprefix("model.").replace(".", " ", 1) if "-" in label else label.rsplit(".", 1)[-1]


def _colour(label: str, n_blocks: int, i_block_range: int) -> str:
    if n_blocks:
        return _BLOCKS[i_block_range % 2]
    name = label.lower()
    if "embed" in name:
        return _EMBED
    if "head" in name or "proj_out" in name or "norm_out" in name:
        return _HEAD
    return _OTHER


def _unit(plan: Plan, unit: str | None) -> tuple[float, str]:
    if unit is not None:
        return {"GB": 1e9, "GiB": _GiB, "MB": 1e6, "MiB": _MiB}[unit], unit
    return (_GiB, "GiB") if max([plan.total_bytes, *plan.budgets.values()], default=0) >= _GiB else (_MiB, "MiB")


def _title(plan: Plan) -> str:
    how = f'device_map="{plan.strategy.value}"' if plan.strategy else "the device map from_pretrained used"
    quant = f" + {plan.quantization}" if plan.quantization else ""
    return f"{plan.model} in {plan.dtype}{quant}: {how}"


def placement_chart(plan: Plan, title: str | None = None, widget: bool = False, height: int = 440,
                    unit: str | None = None) -> go.Figure:
    """One bar per device (GPUs, CPU, disk), stacked by the layer ranges placed there, with budgets.

    ``unit``: "GB", "GiB", "MB" or "MiB" (default: GiB, or MiB for a model under 1 GiB).
    A dash marks each device's budget (``max_memory``); a dotted dash the budget the strategy
    planned with when it differs (balanced strategies lower every GPU's but the last).
    """
    fig = go.FigureWidget() if widget else go.Figure()
    if unit not in (None, "GB", "GiB", "MB", "MiB"):
        raise LabError.bad("unit", unit, "use 'GB', 'GiB', 'MB' or 'MiB'")
    _draw(fig, plan, title, unit)
    fig.update_layout(template="plotly_white", height=height, barmode="stack", showlegend=False,
                      margin=dict(l=70, r=30, t=105, b=50), uniformtext=dict(minsize=9, mode="hide"),
                      bargap=0.35)
    return fig


def _draw(fig: go.Figure, plan: Plan, title: str | None, unit: str | None = None) -> None:
    scale, unit = _unit(plan, unit)
    devices = [_device_name(d) for d in plan.bytes_per_device]
    traces: list[Any] = []
    i_blocks = 0
    for r in plan.ranges:
        name = _device_name(r.device)
        if name not in devices:
            devices.append(name)
        colour = _colour(r.label, r.n_blocks, i_blocks)
        i_blocks += bool(r.n_blocks)
        what = _short(r.label) + (f" ({r.n_blocks} blocks)" if r.n_blocks > 1 else "")
        traces.append(go.Bar(
            x=[name], y=[r.n_bytes / scale], marker=dict(color=colour, line=dict(color="white", width=1)),
            text=[f"{_short(r.label)}<br>{r.n_bytes / scale:,.2f} {unit}"], textposition="inside",
            insidetextanchor="middle", textfont=dict(color="white"), name=what,
            hovertemplate=f"{name}: {what}<br>{r.n_bytes:,} bytes<extra></extra>"))
    totals = {d: plan.bytes_per_device.get(d, 0) / scale for d in plan.bytes_per_device}
    budgets = {d: b / scale for d, b in plan.budgets.items() if d != "disk"}
    # The axis follows what was placed and the GPUs' budgets; a far larger CPU budget (100 GiB
    # beside 10 GiB GPUs) would flatten every bar, so it is written at the top instead of drawn.
    top = max([*totals.values(), *(b for d, b in budgets.items() if isinstance(d, int)), 1e-9])
    top = max([top, *(b for d, b in budgets.items() if d == "cpu" and b <= 1.5 * top)])
    drawn = {d: b for d, b in budgets.items() if b <= top}
    label_y = {d: max(t, drawn.get(d, 0.0)) + 0.025 * top for d, t in totals.items()}  # clear of the dash
    many = len(devices) > 5  # narrower columns: smaller labels and budget dashes
    dash = 46 if not many else max(14, 320 // len(devices))
    traces.append(go.Scatter(
        x=[_device_name(d) for d in totals], y=list(label_y.values()), mode="text",
        text=[f"<b>{t:,.1f} {unit}</b><br>{plan.layers_on(d)} block{'s' if plan.layers_on(d) != 1 else ''}"
              + (f"<br>budget {budgets[d]:,.0f} {unit} ↑" if d in budgets and d not in drawn else "")
              for d, t in totals.items()],
        textposition="top center", textfont=dict(size=10 if many else 12), hoverinfo="skip", name="total"))
    traces.append(go.Scatter(x=[_device_name(d) for d in drawn], y=list(drawn.values()), mode="markers",
                             name="budget (max_memory)",
                             marker=dict(symbol="line-ew", size=dash, line=dict(width=3, color="#333")),
                             hovertemplate="%{x}: budget %{y:,.2f} " + unit + "<extra></extra>"))
    lowered = [(d, p / scale) for d, p in plan.planned_budgets.items() if d in drawn and p != plan.budgets[d]]
    if lowered:
        traces.append(go.Scatter(
            x=[_device_name(d) for d, _ in lowered], y=[p for _, p in lowered], mode="markers",
            name="budget the strategy planned with",
            marker=dict(symbol="line-ew", size=dash, line=dict(width=2, color="#CC79A7", dash="dot")),
            hovertemplate="%{x}: planned with %{y:,.2f} " + unit + "<extra></extra>"))
    key = " ".join(f'<span style="color:{c}">■</span> {n}' for n, c in
                   (("decoder blocks", _BLOCKS[0]), ("embeddings", _EMBED), ("output head", _HEAD),
                    ("other", _OTHER)))
    marks = "— budget given" + (" · <span style='color:#CC79A7'>┄</span> budget the strategy planned with"
                                if lowered else "")
    with fig.batch_update():
        fig.data = []
        fig.add_traces(traces)
        fig.update_layout(title=dict(text=title or _title(plan), font=dict(size=15)),
                          yaxis=dict(title=f"bytes placed ({unit})", range=[0, top * 1.3]),
                          xaxis=dict(categoryorder="array", categoryarray=devices, title=None))
        fig.layout.annotations = [
            dict(text=f"{key} · {marks}", x=0, xref="paper", y=1.1, yref="paper", showarrow=False,
                 xanchor="left", font=dict(size=11, color="#555")),
            dict(text=plan.engine, x=0, xref="paper", y=1.03, yref="paper", showarrow=False, xanchor="left",
                 font=dict(size=10, color="#888"))]


_PLANNER_DTYPES = ("bfloat16", "float16", "float32")
_MAX_GPUS = 8


def _planner_inputs(preset: Any, gpu: Any, n_gpus: Any, cpu_memory_gb: Any, dtype: Any,
                    quantization: Any) -> tuple[str, str, int, str, str, str]:
    """The planner's starting values as its controls hold them; one sentence naming a value no control offers
    (a widget that silently showed another model or GPU would teach the wrong plan)."""
    from .._dtypes import dtype_name
    from .._errors import LabError, closest, whole_number

    presets = {v.lower(): v for v in PLANNER_PRESETS.values()}
    key = preset.strip().lower() if isinstance(preset, str) else preset
    if key not in presets:
        raise LabError.bad("preset", preset, f"use one of: {', '.join(PLANNER_PRESETS.values())}",
                           verb="is not a model of the planner" + (closest(str(preset), presets.values())
                                                                   if isinstance(preset, str) else ""))
    gpus = {label.split(" · ")[0].lower(): label for label in _GPU_CHOICES}
    if not isinstance(gpu, str) or gpu.strip().lower() not in gpus:
        names = [label.split(" · ")[0] for label in _GPU_CHOICES]
        raise LabError.bad("gpu", gpu, f"use one of: {', '.join(names)}",
                           verb="is not a GPU of the planner" + (closest(gpu, names) if isinstance(gpu, str) else ""))
    n_gpus = whole_number(n_gpus, "n_gpus", minimum=1)
    if n_gpus > _MAX_GPUS:
        raise LabError.bad("n_gpus", n_gpus, f"use 1 to {_MAX_GPUS} (one machine)", verb="is more than the slider holds")
    cpu = next((label for label, v in _CPU_CHOICES.items() if isinstance(cpu_memory_gb, (int, float))
                and not isinstance(cpu_memory_gb, bool) and v == cpu_memory_gb * 10**9), None)
    if cpu is None:
        sizes = ", ".join(str(v // 10**9) for v in _CPU_CHOICES.values())
        raise LabError.bad("cpu_memory_gb", cpu_memory_gb, f"use one of: {sizes} (GB)", verb="is not a choice")
    dtype = dtype_name(dtype, allowed=_PLANNER_DTYPES)
    if quantization not in (None, "none", "int8", "nf4"):
        raise LabError.bad("quantization", quantization, "use None, 'int8' or 'nf4'", verb="is not a choice")
    return presets[key], gpus[gpu.strip().lower()], n_gpus, cpu, dtype, quantization or "none"


class PlacementPlanner(widgets.VBox):
    """Pick a model, dtype, GPUs, CPU memory and a strategy; see where ``from_pretrained`` puts each layer.

    ``planner.plan`` is the current :class:`Plan` (None after bad input, which ``planner.message``
    explains); ``planner.figure`` the chart, redrawn in place; ``planner.redraw_s`` the last redraw's
    seconds.
    """

    def __init__(self, preset: str = "llama-3.1-70b", n_gpus: int = 8, gpu: str = "L4", cpu_memory_gb: int = 64,
                 strategy: str = "auto", dtype: str = "bfloat16", quantization: str | None = None):
        preset, gpu_label, n_gpus, cpu_label, dtype, quantization = _planner_inputs(
            preset, gpu, n_gpus, cpu_memory_gb, dtype, quantization)
        style = {"description_width": "120px"}
        layout = widgets.Layout(width="330px")
        self.preset = widgets.Dropdown(options=[(k, v) for k, v in PLANNER_PRESETS.items()], value=preset,
                                       description="model", style=style, layout=layout)
        self.dtype = widgets.Dropdown(options=list(_PLANNER_DTYPES), value=dtype, description="dtype",
                                      style=style, layout=layout)
        # "none" rather than None: ipywidgets shows a Dropdown whose value is None as empty.
        self.quantization = widgets.Dropdown(options=[("none", "none"), ("int8 (bitsandbytes)", "int8"),
                                                      ("nf4 (bitsandbytes)", "nf4")], value=quantization,
                                             description="quantization", style=style, layout=layout)
        self.gpu = widgets.Dropdown(options=list(_GPU_CHOICES), value=gpu_label, description="memory per GPU",
                                    style=style, layout=layout)
        self.n_gpus = widgets.IntSlider(value=n_gpus, min=1, max=_MAX_GPUS, description="number of GPUs",
                                        style=style, layout=layout, continuous_update=False)
        self.cpu = widgets.Dropdown(options=list(_CPU_CHOICES), value=cpu_label, description="CPU memory",
                                    style=style, layout=layout)
        self.strategy = widgets.ToggleButtons(options=[s.value for s in Strategy if s is not Strategy.BALANCED],
                                              value=Strategy.parse(strategy).value, description="device_map",
                                              style={"description_width": "120px", "button_width": "140px"})
        self.message = widgets.HTML()
        self.plan: Plan | None = None
        self.redraw_s = 0.0
        self.figure = go.FigureWidget()
        for control, css in ((self.preset, "model"), (self.dtype, "dtype"), (self.quantization, "quantization"),
                             (self.gpu, "gpu"), (self.n_gpus, "gpus"), (self.cpu, "cpu"), (self.strategy, "strategy")):
            control.add_class(f"bsl-placement-{css}")
            control.observe(self._changed, names="value")
        left = widgets.VBox([self.preset, self.dtype, self.quantization])
        right = widgets.VBox([self.n_gpus, self.gpu, self.cpu])
        super().__init__([widgets.HBox([left, right]), self.strategy, self.message, self.figure])
        self.add_class("bsl-placement")
        self.redraw()

    def __repr__(self) -> str:
        # What a notebook stored without widget state shows in place of the controls.
        return (f"PlacementPlanner({self.preset.value}, {self.dtype.value}, {self.n_gpus.value} x {self.gpu.value}, "
                f"CPU {self.cpu.value}, device_map={self.strategy.value!r}): run the notebook to use the controls")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        # The live widget, plus its controls, summary and chart as first drawn for a notebook stored without
        # widget state (tools/run_lessons.py turns the chart into a PNG).
        controls = [("model", self.preset.value), ("dtype", self.dtype.value),
                    ("quantization", self.quantization.value), ("GPUs", f"{self.n_gpus.value} × {self.gpu.value}"),
                    ("CPU memory", self.cpu.value), ("device_map", self.strategy.value)]
        return with_snapshot(super()._repr_mimebundle_(**kwargs),
                             controls_html("PlacementPlanner", controls, self.message.value), self.figure)

    def max_memory(self) -> dict[Any, int]:
        """The budgets the controls describe, as ``from_pretrained``'s ``max_memory``."""
        budgets: dict[Any, int] = dict.fromkeys(range(self.n_gpus.value), _GPU_CHOICES[self.gpu.value])
        if _CPU_CHOICES[self.cpu.value]:
            budgets["cpu"] = _CPU_CHOICES[self.cpu.value]
        return budgets

    def _quantization(self) -> str | None:
        return None if self.quantization.value == "none" else self.quantization.value

    def _changed(self, change: dict) -> None:
        self.redraw()

    def redraw(self) -> None:
        start = time.perf_counter()
        try:
            self.plan = plan(self.preset.value, self.strategy.value, self.max_memory(), dtype=self.dtype.value,
                             quantization=self._quantization())
        except ValueError as err:  # the planner's one-sentence LabError: show it, keep the last chart
            self.plan = None
            self.message.value = f'<span style="color:#b00">{html.escape(str(err))}</span>'
            return
        _draw(self.figure, self.plan, None, unit="GB")  # the controls speak GB, as GPUs are sold
        self.figure.update_layout(template="plotly_white", height=460, width=920, barmode="stack",
                                  showlegend=False, margin=dict(l=70, r=30, t=105, b=50),
                                  uniformtext=dict(minsize=9, mode="hide"), bargap=0.35)
        self.message.value = self._summary(self.plan)
        self.redraw_s = time.perf_counter() - start

    def _summary(self, p: Plan) -> str:
        gb = 1e9
        parts = [f"model {p.total_bytes / gb:,.1f} GB in {p.n_blocks} blocks"]
        if p.fits_on_gpus:
            idle = [d for d in p.gpus if p.bytes_on(d) == 0]
            parts.append("<b>fits on the GPUs</b>" + (f" ({', '.join(f'GPU {d}' for d in idle)} left empty)"
                                                      if idle else ""))
        else:
            parts.append(f"<b>{p.bytes_on('cpu') / gb:,.1f} GB spill to the CPU, {p.bytes_on('disk') / gb:,.1f} GB to "
                         f"disk</b> (each forward pass copies them in)")
            try:
                need = fewest_gpus(self.preset.value, _GPU_CHOICES[self.gpu.value], dtype=self.dtype.value,
                                   quantization=self._quantization(), strategy=self.strategy.value)
                n = len(need.gpus)
                parts.append(f"whole on GPUs: {n} × {self.gpu.value.split(' · ')[0]}"
                             + (" (more than one machine of 8: lesson 06)" if n > 8 else ""))
            except ValueError as err:
                parts.append(html.escape(str(err)))
        parts += [html.escape(n) for n in p.notes]
        return " · ".join(parts)
