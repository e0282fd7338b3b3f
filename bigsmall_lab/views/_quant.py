"""Views of lessons 04a and 04b: the quantization map widget, and charts and tables of what quantization does.

Every number drawn here comes from :mod:`bigsmall_lab.quant` (the maths) or from the results of
:mod:`bigsmall_lab.quantized` (the measurements); these functions only lay them out.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from .. import quant
from .._errors import LabError, closest
from .._units import MiB
from ..quant import Granularity, MappingReport, Scheme, SchemeResult
from ..quantized import LinearTiming, OutlierRow, VariantResult
from ._estimates import html_table
from ._snapshot import controls_html, with_snapshot

__all__ = ["QuantMap", "codebook_chart", "mapping_figure", "outlier_table", "scheme_table", "texts_table",
           "timings_chart", "variants_chart", "variants_table"]

_BLUE, _ORANGE, _GREY, _DARK, _RED, _GREEN = "#4C78A8", "#F58518", "#9D9D9D", "#333333", "#E45756", "#54A24B"
_TEMPLATE = "plotly_white"
_GROUP_SIZES = (16, 32, 64, 128, 256)
_OUTLIER_FACTOR = 20.0
_WIDGET_WIDTH_PX = 980  # plotly's FigureWidget does not follow the notebook's width: fit a laptop's notebook


def _num(x: float, digits: int = 4) -> str:
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return "∞" if x > 0 else "-∞"
    return f"{x:.{digits}g}"


def _where(r: MappingReport) -> str:
    g = r.focus
    if r.spec.granularity is Granularity.TENSOR:
        return "the whole tensor"
    if r.spec.granularity is Granularity.CHANNEL:
        return f"row {g.row}"
    return f"row {g.row}, values {g.start}–{g.start + g.size - 1}"


def _which(r: MappingReport) -> str:
    """'the widest group: row 3, values 64–127' for panel titles."""
    if r.spec.granularity is Granularity.TENSOR:
        return "the whole tensor"
    kind = "row" if r.spec.granularity is Granularity.CHANNEL else "group"
    widest = r.focus.scale == float(r.quantized.scales.max())
    return f"{'the widest' if widest else 'a typical'} {kind}: {_where(r)}"


def _code_label(r: MappingReport, code: int) -> str:
    return format(code, "04b") if r.spec.scheme is Scheme.FP4 else str(code)


def _mapping_parts(r: MappingReport) -> tuple[list[dict], list[dict]]:
    """(traces, annotations) of the float -> integer panel for the focus group."""
    g = r.focus
    levels, codes, bounds = list(g.levels), list(g.codes), list(g.boundaries)
    (x_min, code_min), (x_max, code_max) = r.focus_min, r.focus_max
    uniform = r.spec.scheme in (Scheme.ASYMMETRIC, Scheme.SYMMETRIC, Scheme.MIN)
    # code books: the y axis lists codes in the order of their levels (FP4's codes are bit patterns)
    rank = {c: k for k, c in enumerate(codes)}
    y_of = (lambda c: c) if uniform else (lambda c: rank[c])
    # staircase: the k-th level's code covers [boundary k-1, boundary k], drawn over the group's values
    edges = [min(x_min, levels[0])] + bounds + [max(x_max, levels[-1])]
    xs, ys = [], []
    for k, code in enumerate(codes):
        xs += [edges[k], edges[k + 1], None]
        ys += [y_of(code), y_of(code), None]
    stair = dict(x=xs, y=ys, name="float → integer (rounding)", mode="lines", line=dict(color=_ORANGE, width=3),
                 hoverinfo="skip")
    ideal: dict[str, Any] = dict(x=[], y=[])
    if uniform:  # the exact linear map before rounding: x / scale + zero-point, or (x - min) / scale
        ends = [edges[0], edges[-1]]
        if g.minimum is not None:
            ideal = dict(x=ends, y=[(v - g.minimum) / g.scale for v in ends])
        else:
            ideal = dict(x=ends, y=[v / g.scale + g.zero_point for v in ends])
    label = (lambda c: str(c)) if uniform else (lambda c: f"code {_code_label(r, c)}")
    marks_x, marks_y = [x_min, x_max], [y_of(code_min), y_of(code_max)]
    marks_text = [f"min {_num(x_min)} → {label(code_min)}", f"max {_num(x_max)} → {label(code_max)}"]
    if g.zero_point is not None:
        marks_x.append(0.0)
        marks_y.append(g.zero_point)
        marks_text.append(f"0.0 → zero-point {g.zero_point}")
    marks = dict(x=marks_x, y=marks_y, text=marks_text, name="min, max, zero-point", mode="markers+text",
                 marker=dict(color=_DARK, size=9, symbol="circle"),
                 textposition=["middle right", "middle left", "top left"][:len(marks_x)], textfont=dict(size=11),
                 hovertemplate="%{text}<extra></extra>")
    gaps = [b - a for a, b in zip(levels, levels[1:])]
    step_text = (f"scale = one step = {_num(g.scale)}" if uniform
                 else f"absmax = {_num(g.scale)}; steps from {_num(min(gaps), 3)} to {_num(max(gaps), 3)}")
    # bottom right: the staircase rises from bottom left to top right, this corner stays empty
    note = dict(text=step_text, xref="x2 domain", yref="y2 domain", x=0.98, y=0.03, showarrow=False,
                xanchor="right", yanchor="bottom", font=dict(size=12), bgcolor="rgba(255,255,255,0.85)")
    return [stair, dict(ideal, name="x / scale + zero-point (before rounding)", mode="lines",
                        line=dict(color=_GREY, dash="dash", width=1.5), hoverinfo="skip"), marks], [note]


def _parts(r: MappingReport, name: str, titled: bool = True) -> tuple[list[dict], dict]:
    """The traces (always 8, in a fixed order, so a widget can update them in place) and layout of the map."""
    h = r.histogram
    width = (h.edges[1] - h.edges[0]) if len(h.edges) > 1 else 1.0
    peak = max(h.counts) or 1
    # the focus group's levels as vertical lines over the histogram
    lx, ly = [], []
    for v in r.focus.levels:
        lx += [v, v, None]
        ly += [0, peak * 1.05, None]
    # per tensor the "group" is everything: its values are the histogram itself
    rug = [] if r.spec.granularity is Granularity.TENSOR else r.focus_values.tolist()
    traces = [
        dict(type="bar", x=list(h.centres), y=list(h.counts), width=width, name="weights (histogram)",
             marker=dict(color=_BLUE, line=dict(width=0)), hovertemplate="%{x:.4g}: %{y:,} weights<extra></extra>",
             xaxis="x", yaxis="y"),
        dict(type="scatter", x=lx, y=ly, mode="lines", name=f"the {len(r.focus.levels)} levels of {_where(r)}",
             line=dict(color=_ORANGE, width=1), opacity=0.85, hoverinfo="skip", xaxis="x", yaxis="y"),
        dict(type="scatter", x=rug, y=[0] * len(rug), mode="markers", name=f"values of {_where(r)}",
             marker=dict(symbol="line-ns-open", size=10, color=_DARK, line=dict(width=1)),
             visible=r.spec.granularity is not Granularity.TENSOR, hoverinfo="skip", xaxis="x", yaxis="y"),
    ]
    mapping, notes = _mapping_parts(r)
    for t in mapping:
        traces.append(dict(type="scatter", xaxis="x2", yaxis="y2", **t))
    so, sd = r.sample_original.tolist(), r.sample_dequantized.tolist()
    lo, hi = (min(so), max(so)) if so else (0.0, 1.0)
    traces += [
        dict(type="scatter", x=so, y=sd, mode="markers", name="a sample of weights: original → dequantized",
             marker=dict(color=_BLUE, size=4, opacity=0.5), xaxis="x3", yaxis="y3",
             hovertemplate="original %{x:.5g}<br>dequantized %{y:.5g}<extra></extra>"),
        dict(type="scatter", x=[lo, hi], y=[lo, hi], mode="lines", name="no error (y = x)",
             line=dict(color=_GREY, dash="dot", width=1.5), xaxis="x3", yaxis="y3", hoverinfo="skip"),
    ]
    e = r.error
    bound = ""
    if r.spec.scheme in (Scheme.ASYMMETRIC, Scheme.SYMMETRIC, Scheme.MIN):
        bound = f" (half the largest step: {_num(r.largest_step / 2, 3)})"
    title = (f"<b>{html.escape(name)}</b>: {html.escape(r.spec.label)}<br>"
             f"<span style='font-size:13px'>SQNR {e.sqnr_db:.1f} dB · max error {_num(e.max_abs_error, 3)}{bound} · "
             f"{r.bits_per_value:.2f} bits per weight with its scales</span>")
    uniform = r.spec.scheme in (Scheme.ASYMMETRIC, Scheme.SYMMETRIC, Scheme.MIN)
    if uniform:
        yaxis2 = dict(title=dict(text="integer code"))
    else:
        levels = list(range(len(r.focus.codes)))
        yaxis2 = dict(title=dict(text="stored 4-bit code"), tickmode="array", tickvals=levels,
                      ticktext=[_code_label(r, c) for c in r.focus.codes], tickfont=dict(size=9))
    sub = dict(showarrow=False, xanchor="left", yanchor="bottom", font=dict(size=14), align="left")
    small = "<br><span style='font-size:12px;color:#555'>{}</span>"
    notes += [
        dict(sub, text="Where the weights are, and the levels they can become" + small.format(f"levels of {_which(r)}"),
             xref="x domain", yref="y domain", x=0, y=1.01),
        dict(sub, text="Float → integer" + small.format(_which(r)), xref="x2 domain", yref="y2 domain", x=0, y=1.01),
        dict(sub, text="Round trip: original → dequantized" + small.format(f"{len(so):,} weights of the tensor"),
             xref="x3 domain", yref="y3 domain", x=0, y=1.01),
    ]
    layout = dict(
        # the widget writes its headline above the chart (the chart's own toolbar would cover it)
        title=dict(text=title if titled else "", x=0.01, xanchor="left", y=0.99, yanchor="top"),
        template=_TEMPLATE, height=720 if titled else 650, margin=dict(l=70, r=20, t=110 if titled else 45, b=60),
        showlegend=True,
        legend=dict(orientation="h", x=0, y=-0.09, xanchor="left", yanchor="top", font=dict(size=11)),
        bargap=0, annotations=notes,
        xaxis=dict(title=dict(text="weight value"), domain=[0, 1], anchor="y"),
        yaxis=dict(title=dict(text="number of weights"), domain=[0.64, 0.97 if titled else 1.0], anchor="x",
                   rangemode="tozero"),
        xaxis2=dict(title=dict(text="float value"), domain=[0, 0.46], anchor="y2", zeroline=True),
        yaxis2=dict(domain=[0, 0.42], anchor="x2", **yaxis2),
        xaxis3=dict(title=dict(text="original weight"), domain=[0.56, 1], anchor="y3"),
        yaxis3=dict(title=dict(text="after quantize → dequantize"), domain=[0, 0.42], anchor="x3"),
    )
    return traces, layout


def mapping_figure(report: MappingReport, name: str = "weights") -> go.Figure:
    """The quantization map as a static figure: histogram with one group's levels, the float -> integer
    mapping of that group (min, max, scale, zero-point marked) and original vs dequantized values.

    >>> r = quant.mapping_report(torch.tensor([-3.5, 0.0, 10.2]), bits=4)
    >>> fig = mapping_figure(r, "worked example")
    >>> len(fig.data), fig.data[5].text[-1]
    (8, '0.0 → zero-point -4')
    """
    traces, layout = _parts(report, name)
    return go.Figure(data=[_trace(t) for t in traces], layout=layout)


def _trace(spec: dict) -> Any:
    spec = dict(spec)
    kind = spec.pop("type")
    return go.Bar(**spec) if kind == "bar" else go.Scatter(**spec)


def _as_weights(weights: Any) -> dict[str, torch.Tensor]:
    if isinstance(weights, torch.nn.Module):
        found = quant.weight_matrices(weights)
        if not found:
            raise LabError("weights is a model with no nn.Linear weight in its decoder layers; pass a dict "
                           "{name: tensor} instead")
        return found
    if isinstance(weights, torch.Tensor):
        return {"tensor": weights}
    if isinstance(weights, Mapping) and weights and all(isinstance(v, torch.Tensor) for v in weights.values()):
        return dict(weights)
    if isinstance(weights, Mapping) and weights and all(isinstance(v, torch.nn.Module) for v in weights.values()):
        # several models: {"smollm2": model, "bigsmall-tiny": tiny} -> "smollm2 · model.layers.0.mlp.up_proj", ...
        return {f"{label} · {name}": w for label, model in weights.items() for name, w in _as_weights(model).items()}
    raise LabError(f"weights must be a model, a dict of models, a tensor or a dict of tensors, not "
                   f"{type(weights).__name__}")


_SCHEME_OPTIONS = [(s.label, s.value) for s in Scheme]


class QuantMap(widgets.VBox):
    """The quantization map: pick a weight matrix and a setting; see its levels, mapping and error.

    ``weights``: a model (its decoder layers' linear weights), a dict of models (``{"smollm2": model,
    "bigsmall-tiny": tiny}``: every model's matrices, prefixed with its name), a tensor or a dict of tensors.

    A thin view over :func:`bigsmall_lab.quant.mapping_report`: each change of a control quantizes
    the chosen matrix again and redraws the figure in place (``redraw_s``: the last redraw's seconds).

    >>> w = QuantMap({"demo": torch.linspace(-1, 1, 256).reshape(4, 64)}, bits=2, scheme="symmetric")
    >>> len(w.report.focus.levels), w.bits.disabled
    (3, False)
    >>> w.scheme.value = "nf4"   # a code book of 16 levels: bits is fixed at 4
    >>> w.bits.value, w.bits.disabled, len(w.report.focus.levels)
    (4, True, 16)
    """

    def __init__(self, weights: Any, layer: str | None = None, bits: int = 4, scheme: str = "asymmetric",
                 granularity: str = "tensor", group_size: int = 64, outlier: bool = False) -> None:
        self._weights = _as_weights(weights)
        self._cache: dict[tuple[str, bool], torch.Tensor] = {}
        names = list(self._weights)
        if layer is None:
            layer = names[0]
        elif layer not in self._weights:  # a layer name without its model's prefix picks the first model's
            found = next((n for n in names if isinstance(layer, str) and n.endswith(f" · {layer}")), None)
            if found is None:
                shown_names = ", ".join(names[:4]) + (f", ... ({len(names)} in all)" if len(names) > 4 else "")
                raise LabError.bad("layer", layer, f"use None or one of: {shown_names}",
                                   verb="is not a layer of these weights"
                                   + (closest(layer, names) if isinstance(layer, str) else ""))
            layer = found
        spec = quant.QuantSpec(bits=bits, scheme=scheme, granularity=granularity)  # one sentence for a bad value
        if group_size not in _GROUP_SIZES:
            raise LabError.bad("group_size", group_size, f"use one of: {', '.join(map(str, _GROUP_SIZES))}",
                               verb="is not a choice")
        style = {"description_width": "80px"}
        self.layer = widgets.Dropdown(options=names, value=layer,
                                      description="weights", style=style, layout=widgets.Layout(width="520px"))
        self.scheme = widgets.Dropdown(options=_SCHEME_OPTIONS, value=spec.scheme.value,
                                       description="mapping", style=style, layout=widgets.Layout(width="380px"))
        self.bits = widgets.IntSlider(value=spec.bits, min=quant.MIN_BITS, max=quant.MAX_BITS, description="bits",
                                      style=style, continuous_update=False, layout=widgets.Layout(width="300px"))
        self.granularity = widgets.ToggleButtons(
            options=[("per tensor", "tensor"), ("per row", "channel"), ("per group", "group")],
            value=spec.granularity.value,
            tooltips=["one scale for the whole matrix", "one scale per row (output feature)",
                      "one scale per group of consecutive values of a row"],
            style={"button_width": "88px"}, layout=widgets.Layout(width="auto"))
        self.group_size = widgets.Dropdown(options=list(_GROUP_SIZES), value=group_size, description="group size",
                                           style=style,
                                           layout=widgets.Layout(width="170px"))
        self.focus = widgets.ToggleButtons(options=[("widest", "widest"), ("typical", "typical")], value="widest",
                                           tooltips=["the row or group with the largest scale (where an outlier lands)",
                                                     "a row or group with the median scale"],
                                           style={"button_width": "70px"}, layout=widgets.Layout(width="auto"))
        self.outlier = widgets.Checkbox(value=bool(outlier), description=f"add one outlier (largest weight × "
                                        f"{_OUTLIER_FACTOR:g})", indent=False, layout=widgets.Layout(width="290px"))
        self.message = widgets.HTML()
        self.figure = go.FigureWidget()
        self.report: MappingReport | None = None
        self.redraw_s = 0.0
        for control, css in ((self.layer, "layer"), (self.scheme, "scheme"), (self.bits, "bits"),
                             (self.granularity, "granularity"), (self.group_size, "group-size"),
                             (self.focus, "focus"), (self.outlier, "outlier")):
            control.add_class(f"bsl-quantmap-{css}")
            control.observe(self._changed, names="value")
        self.message.add_class("bsl-quantmap-message")

        def label(text: str, width: str = "80px") -> widgets.HTML:
            return widgets.HTML(f'<div style="text-align:right;padding-right:8px">{text}</div>',
                                layout=widgets.Layout(width=width))

        rows = [widgets.HBox([self.layer, self.scheme]),
                widgets.HBox([self.bits, self.outlier]),
                widgets.HBox([label("one scale"), self.granularity, self.group_size, label("show", "60px"),
                              self.focus], layout=widgets.Layout(align_items="center")),
                self.message, self.figure]
        super().__init__(rows)
        self.add_class("bsl-quantmap")
        self._drawn = False
        self.redraw()

    def __repr__(self) -> str:
        spec = self.report.spec.label if self.report else "not drawn"
        return f"QuantMap({self.layer.value!r}: {spec})"

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        # The live widget, plus its controls, summary and figure as first drawn for a notebook stored without
        # widget state (tools/run_lessons.py turns the figure into a PNG).
        scale = {"tensor": "per tensor", "channel": "per row"}.get(self.granularity.value,
                                                                   f"per group of {self.group_size.value}")
        controls = [("weights", self.layer.value), ("mapping", self.scheme.value), ("bits", self.bits.value),
                    ("one scale", scale), ("outlier added", "yes" if self.outlier.value else "no")]
        return with_snapshot(super()._repr_mimebundle_(**kwargs),
                             controls_html("QuantMap", controls, self.message.value), self.figure)

    def _values(self) -> torch.Tensor:
        key = (self.layer.value, self.outlier.value)
        if key not in self._cache:
            w = self._weights[self.layer.value].detach().float().cpu()
            self._cache[key] = quant.add_outlier(w, _OUTLIER_FACTOR) if self.outlier.value else w
        return self._cache[key]

    def _changed(self, change: dict) -> None:
        self.redraw()

    def redraw(self) -> None:
        start = time.perf_counter()
        scheme = Scheme(self.scheme.value)
        if scheme.is_codebook and self.bits.value != 4:
            self.bits.unobserve(self._changed, names="value")
            self.bits.value = 4
            self.bits.observe(self._changed, names="value")
        self.bits.disabled = scheme.is_codebook
        self.group_size.disabled = self.granularity.value != Granularity.GROUP.value
        self.focus.disabled = self.granularity.value == Granularity.TENSOR.value
        values = self._values()
        try:
            report = quant.mapping_report(values, self.bits.value, scheme, self.granularity.value,
                                          self.group_size.value, focus=self.focus.value)
        except ValueError as err:  # e.g. a group size that does not divide this layer's rows: say so, keep the chart
            self.message.value = f'<span style="color:#b00">{html.escape(str(err))}</span>'
            return
        self.report = report
        traces, layout = _parts(report, self.layer.value, titled=False)
        layout["width"] = _WIDGET_WIDTH_PX
        with self.figure.batch_update():
            if not self._drawn:
                self.figure.add_traces([_trace(t) for t in traces])
                self._drawn = True
            else:
                for target, t in zip(self.figure.data, traces):
                    t = {k: v for k, v in t.items() if k != "type"}
                    t.setdefault("visible", True)
                    target.update(t)
            self.figure.layout.annotations = ()
            self.figure.update_layout(layout)
        self.message.value = self._summary(report, values)
        self.redraw_s = time.perf_counter() - start

    def _summary(self, r: MappingReport, values: torch.Tensor) -> str:
        e, g = r.error, r.focus
        shape = " × ".join(str(s) for s in values.shape)
        saved = r.bfloat16_bytes / r.storage_bytes
        if g.zero_point is not None:
            mapping = f"scale {_num(g.scale)}, zero-point {g.zero_point}"
        elif g.minimum is not None:
            mapping = f"scale {_num(g.scale)}, min {_num(g.minimum)}"
        else:
            mapping = f"absmax {_num(g.scale)}"
        groups = r.quantized.scales.numel()
        cards = [
            ("SQNR", f"{e.sqnr_db:.1f} dB", "signal / error power; ~6 dB per bit"),
            ("max |error|", _num(e.max_abs_error, 3), f"MSE {_num(e.mse, 3)}"),
            ("levels", f"{r.levels}", f"{r.focus_codes_used} used by {_where(r)}"),
            ("scales", f"{groups:,}", f"{_where(r)}: {mapping}"),
            ("storage", f"{r.bits_per_value:.2f} bits/weight",
             f"{r.storage_bytes / MiB:.2f} MiB vs {r.bfloat16_bytes / MiB:.2f} MiB in bf16 ({saved:.1f}× smaller)"),
        ]
        body = "".join(
            f'<div style="border:1px solid #ddd;border-radius:6px;padding:4px 10px;min-width:120px">'
            f'<div style="font-size:11px;color:#666">{html.escape(k)}</div>'
            f'<div style="font-size:18px;font-weight:600">{html.escape(v)}</div>'
            f'<div style="font-size:11px;color:#666">{html.escape(n)}</div></div>' for k, v, n in cards)
        head = (f'<div style="font-size:15px;font-weight:600">{html.escape(r.spec.label)}</div>'
                f'<div style="font-size:12px;color:#555">{html.escape(self.layer.value)}: {shape} = '
                f'{values.numel():,} weights{", one of them made an outlier" if self.outlier.value else ""}</div>')
        return f'{head}<div style="display:flex;gap:8px;flex-wrap:wrap;margin:4px 0">{body}</div>'


# --- static charts and tables -------------------------------------------------------------------

def codebook_chart(weights: torch.Tensor, blocksize: int = 64, bins: int = 100) -> go.Figure:
    """Weights divided by their block's absmax (what the 4-bit formats see, always within [-1, 1]) and
    where uniform int4, NF4 and FP4 put their levels; the legend gives each format's SQNR on these weights."""
    values = weights.detach().float().reshape(-1, blocksize)
    scaled = values / values.abs().amax(dim=1, keepdim=True).clamp(min=1e-38)
    h = quant.histogram(scaled, bins=bins, low=-1.0, high=1.0)
    results = quant.evaluate(weights, [dict(bits=4, scheme=s, granularity="group", group_size=blocksize)
                                       for s in ("symmetric", "nf4", "fp4")])
    sqnr = {r.spec.scheme.value: r.error.sqnr_db for r in results}
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.04)
    fig.add_trace(go.Bar(x=list(h.centres), y=list(h.counts), width=2 / bins, marker_color=_BLUE, showlegend=False,
                         name="weights / block absmax", hovertemplate="%{x:.3f}: %{y:,}<extra></extra>"), row=1, col=1)
    qmax = 7  # symmetric int4: -7 .. 7 times absmax / 7
    rows = [("int4 (uniform)", [k / qmax for k in range(-qmax, qmax + 1)], "symmetric", _GREY),
            ("NF4", quant.nf4_code().tolist(), "nf4", _ORANGE), ("FP4", quant.fp4_code().tolist(), "fp4", _GREEN)]
    for label, levels, key, colour in rows:
        fig.add_trace(go.Scatter(x=sorted(set(levels)), y=[label] * len(set(levels)), mode="markers",
                                 marker=dict(symbol="line-ns-open", size=18, color=colour, line=dict(width=2.5)),
                                 name=f"{label}: {len(set(levels))} levels, SQNR {sqnr[key]:.1f} dB here"),
                      row=2, col=1)
    fig.update_layout(template=_TEMPLATE, height=440, bargap=0, margin=dict(l=110, r=20, t=80, b=50),
                      title=dict(text=f"After dividing each block of {blocksize} by its absmax: where the weights "
                                      f"are, and where each 4-bit format puts its 16 levels"),
                      legend=dict(orientation="h", y=-0.18, x=0, yanchor="top"))
    fig.update_yaxes(title_text="weights", row=1, col=1)
    fig.update_xaxes(title_text="weight / absmax of its block", range=[-1.05, 1.05], row=2, col=1)
    return fig


def scheme_table(results: Sequence[SchemeResult], names: Sequence[str] | None = None):
    """:func:`bigsmall_lab.quant.evaluate` results as a table: setting, bits per weight, SQNR, errors."""
    head = ["weights"] if names else []
    rows = []
    for i, r in enumerate(results):
        rows.append(([names[i]] if names else []) + [
            r.spec.label, f"{r.bits_per_value:.2f}", f"{r.error.sqnr_db:.1f}", _num(r.error.max_abs_error, 3),
            _num(r.error.rmse, 3)])
    return html_table(head + ["setting", "bits per weight (with scales)", "SQNR (dB)", "max |error|", "RMS error"],
                      rows)


def variants_table(results: Sequence[VariantResult]):
    """One row per loaded variant: footprint (with quant state), the estimate beside it, quality, speed."""
    rows = []
    for r in results:
        a = r.agreement
        ratio = f"{r.estimate_ratio:.4f}" if r.estimate_ratio is not None else "–"
        rows.append([
            r.name, f"{r.footprint.memory_footprint_bytes / MiB:,.1f}", f"{r.footprint.quant_state_bytes / MiB:,.2f}",
            f"{r.footprint.total_bytes / MiB:,.1f}",
            f"{r.estimate_bytes / MiB:,.1f}" if r.estimate_bytes else "–", ratio,
            f"{r.stored_after_forward_bytes / MiB:,.2f}", r.four_bit_path.value, f"{r.perplexity:.2f}",
            "reference" if a is None else f"{a.kl_nats:.4f}", "reference" if a is None else f"{a.top1_agreement:.1%}",
            f"{r.tokens_per_s:.1f}"])
    return html_table(["variant", "get_memory_footprint() (MiB)", "+ quant state (MiB)", "= footprint (MiB)",
                       "estimate (MiB)", "stored / estimate", "stored after 1st forward (MiB)", "4-bit path",
                       "perplexity", "KL vs reference (nats/token)",
                       "top-1 agreement", "tokens/s"], rows)


def texts_table(results: Sequence[VariantResult], prompt: str):
    """What each variant wrote after ``prompt`` (greedy), side by side, left-aligned; a new line shows as ⏎."""
    from IPython.display import HTML

    cell = "padding:4px 10px;text-align:left;vertical-align:top"
    rows = "".join(f'<tr><td style="{cell};font-weight:600">{html.escape(r.name)}</td>'
                   f'<td style="{cell};font-family:monospace">{html.escape(prompt)}<b>'
                   f'{html.escape(r.text).replace(chr(10), " ⏎ ")}</b></td></tr>' for r in results)
    return HTML(f'<table><thead><tr><th style="{cell}">variant</th><th style="{cell}">the prompt, then '
                f'<b>what it wrote</b> (greedy, {results[0].new_tokens if results else 0} tokens)</th></tr></thead>'
                f'<tbody>{rows}</tbody></table>')


def variants_chart(results: Sequence[VariantResult],
                   title: str = "Memory against damage: each bitsandbytes format") -> go.Figure:
    """Two panels: footprint (MiB, get_memory_footprint() + quant state) and KL vs the reference."""
    names = [r.name for r in results]
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.12,
                        subplot_titles=("footprint (MiB), with the quant state", "KL vs reference (nats/token)"))
    fig.add_trace(go.Bar(x=names, y=[r.footprint.memory_footprint_bytes / MiB for r in results],
                         name="get_memory_footprint()", marker_color=_BLUE), row=1, col=1)
    fig.add_trace(go.Bar(x=names, y=[r.footprint.quant_state_bytes / MiB for r in results], name="+ quant state",
                         marker_color=_ORANGE, text=[f"{r.footprint.total_bytes / MiB:,.0f}" for r in results],
                         textposition="outside"), row=1, col=1)
    kl = [0.0 if r.agreement is None else r.agreement.kl_nats for r in results]
    fig.add_trace(go.Bar(x=names, y=kl, name="KL", marker_color=_RED, showlegend=False,
                         text=[f"{v:.3f}" for v in kl], textposition="outside"), row=1, col=2)
    fig.update_layout(template=_TEMPLATE, barmode="stack", height=400, title=title,
                      margin=dict(l=60, r=20, t=90, b=50),
                      legend=dict(orientation="h", y=-0.12, x=0, yanchor="top", traceorder="normal"))
    fig.update_yaxes(title_text="MiB", row=1, col=1)
    fig.update_yaxes(title_text="nats per token", row=1, col=2)
    return fig


def timings_chart(rows: Sequence[LinearTiming], title: str = "One layer's matmul, taken apart") -> go.Figure:
    """Horizontal bars of milliseconds per call, one panel per input size; the steps inside an
    operation (dequantizing the weight, quantizing the activations) are grey, under it."""
    sizes = list(dict.fromkeys(r.tokens for r in rows))
    fig = make_subplots(rows=1, cols=len(sizes), shared_yaxes=True, horizontal_spacing=0.1,
                        subplot_titles=[f"input of {t} token{'s' if t > 1 else ''}" for t in sizes])
    for i, tokens in enumerate(sizes, start=1):
        sel = [r for r in rows if r.tokens == tokens]
        fig.add_trace(go.Bar(y=[("↳ " if r.part_of else "") + r.operation for r in sel],
                             x=[r.seconds * 1e3 for r in sel], orientation="h", showlegend=False,
                             marker=dict(color=[_GREY if r.part_of else _BLUE for r in sel]),
                             text=[f"{r.seconds * 1e3:.2f}" for r in sel], textposition="outside", cliponaxis=False,
                             hovertemplate="%{y}: %{x:.3f} ms<extra></extra>"), row=1, col=i)
        fig.update_xaxes(title_text="ms per call (median)", row=1, col=i)
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(template=_TEMPLATE, title=title, height=330, margin=dict(l=230, r=50, t=90, b=50))
    return fig


def outlier_table(experiments: Mapping[str, Sequence[OutlierRow]]):
    """Each int8 method (rows) on each input (columns): the median token's relative output error."""
    names = list(experiments)
    methods = list(dict.fromkeys((r.method, r.by) for rows in experiments.values() for r in rows))
    table = []
    for method, by in methods:
        cells = []
        for name in names:
            row = next((r for r in experiments[name] if (r.method, r.by) == (method, by)), None)
            cells.append("–" if row is None else f"{row.token_error:.1%}"
                         + (f" ({row.outlier_columns} col. in float)" if row.outlier_columns else ""))
        table.append([method, by] + cells)
    return html_table(["x @ W.T computed as", "by"] + [f"typical token's error: {n}" for n in names], table)
