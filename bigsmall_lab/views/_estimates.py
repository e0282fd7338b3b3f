"""Charts and tables of estimates: thin views over :mod:`bigsmall_lab.estimate`'s results."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import plotly.graph_objects as go

from .._units import GB as _GB
from .._units import MiB as _MiB
from ..estimates import GPUS, Comparison, MemoryEstimate, WeightsRow

__all__ = ["comparison_table", "estimate_stack", "weights_bars", "weights_table_html"]

_LAYOUT = dict(template="plotly_white", margin=dict(l=70, r=150, t=70, b=90),
               legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
# GPU sizes drawn as reference lines (what torch sees on each card, from the one table); cards within a
# few hundred MB of each other share a line at the smaller one.
_LINE_GROUPS = (("T4",), ("L4",), ("A100 40GB",), ("A100 80GB", "H100"))
_GPU_LINES = {" / ".join(group) + f" ({min(GPUS[n].usable_bytes for n in group) / _GB:.1f} GB)":
              min(GPUS[n].usable_bytes for n in group) for group in _LINE_GROUPS}


def _gpu_lines(fig: go.Figure, log_y: bool = False) -> None:
    for name, size in _GPU_LINES.items():
        y = size / _GB
        fig.add_hline(y=y, line_dash="dot", line_color="#888", line_width=1)
        # On a log axis plotly places annotations at log10(y): the line's label must follow it there.
        fig.add_annotation(x=1.0, xref="paper", y=math.log10(y) if log_y else y, yref="y", text=name,
                           showarrow=False, xanchor="left", font_size=11)


def weights_bars(rows: Sequence[WeightsRow], title: str = "Memory for the weights alone, by dtype",
                 log_y: bool = True) -> go.Figure:
    """Grouped bars: one group per model, one bar per dtype (GB), with common GPU sizes as lines."""
    fig = go.Figure()
    for dtype in dict.fromkeys(r.dtype + (f" + {r.quantization}" if r.quantization else "") for r in rows):
        sel = [r for r in rows if r.dtype + (f" + {r.quantization}" if r.quantization else "") == dtype]
        fig.add_trace(go.Bar(x=[r.config for r in sel], y=[r.weights_bytes / _GB for r in sel], name=dtype,
                             hovertemplate="%{x}: %{y:,.2f} GB<extra>" + dtype + "</extra>"))
    _gpu_lines(fig, log_y)
    fig.update_layout(title=title, yaxis_title="weights (GB, log scale)" if log_y else "weights (GB)",
                      xaxis_title="model", barmode="group", height=460, **_LAYOUT)
    if log_y:
        # "1,000" rather than plotly's "1k" / "100B" (B would read as bytes)
        fig.update_yaxes(type="log", tickformat=",~g", exponentformat="none")
    return fig


def estimate_stack(estimates: Sequence[MemoryEstimate], labels: Sequence[str] | None = None,
                   title: str = "What comes on top of the weights") -> go.Figure:
    """Stacked bars: weights, KV cache, activations and runtime overhead of each estimate (GB)."""
    labels = list(labels) if labels is not None else [f"{e.seq_len:,} tokens x {e.batch_size}" for e in estimates]
    assumed = any(e.overhead_source.startswith("assumed") for e in estimates)
    parts = {"weights": "weights_bytes", "KV cache": "kv_cache_bytes", "activations (forward pass)": "activation_bytes",
             "runtime overhead (CUDA context" + (", assumed)" if assumed else ")"): "overhead_bytes"}
    fig = go.Figure()
    for name, field in parts.items():
        values = [getattr(e, field) / _GB for e in estimates]
        fig.add_trace(go.Bar(x=labels, y=values, name=name, hovertemplate="%{x}: %{y:,.2f} GB<extra>" + name + "</extra>"))
    fig.add_trace(go.Scatter(x=labels, y=[e.total_bytes / _GB for e in estimates], mode="text",
                             text=[f"{e.total_bytes / _GB:,.1f} GB" for e in estimates], textposition="top center",
                             showlegend=False, hoverinfo="skip"))
    _gpu_lines(fig)
    fig.update_layout(title=title, yaxis_title="memory (GB)", xaxis_title="context length x batch size",
                      barmode="stack", height=460, **_LAYOUT)
    return fig


def comparison_table(rows: Sequence[Comparison], tolerance: float = 0.05):
    """An HTML table: estimate, measurement, their ratio and whether they match within ``tolerance``."""
    return html_table(
        ["what", "estimate (MiB)", "measured (MiB)", "measured / estimate", f"within {tolerance:.0%}",
         "how it was measured"],
        [[c.label, f"{c.estimate_bytes / _MiB:,.1f}", f"{c.measured_bytes / _MiB:,.1f}", f"{c.ratio:.3f}",
          "yes" if c.matches(tolerance) else "no", c.measured_how] for c in rows])


def html_table(head: Sequence[str], rows: Sequence[Sequence[str]]):
    """The one HTML table of the views: a header row and rows of text cells, escaped."""
    from IPython.display import HTML

    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return HTML(f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>")


def weights_table_html(rows: Sequence[WeightsRow]):
    """The rows of ``estimates.weights_table`` as an HTML table (GB, and whether the weights alone fit a
    T4: running the model needs more, which ``estimate(...).fits("T4")`` counts)."""
    t4 = f"{GPUS['T4'].usable_bytes / _GB:.2f} GB"
    return html_table(
        ["model", "parameters", "format", "weights (GB)", f"fits a T4 ({t4})? weights alone"],
        [[r.config, f"{r.parameters:,}", r.dtype + (f" + {r.quantization}" if r.quantization else ""),
          f"{r.weights_bytes / _GB:,.2f}", "yes" if r.fits("T4") else "no"] for r in rows])
