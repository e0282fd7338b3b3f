"""Charts of measured memory: thin plotly views over :class:`bigsmall_lab.measure.MemoryReport`."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

from .._units import MiB as _MiB
from ..measure import MemoryReport

__all__ = ["memory_timeline", "peaks_bar"]

_LAYOUT = dict(template="plotly_white", height=380, margin=dict(l=70, r=30, t=60, b=60),
               legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))


def memory_timeline(report: MemoryReport, title: str | None = None, widget: bool = False) -> go.Figure:
    """Memory over time for one tracked block: RssAnon and RssFile on CPU; allocated/reserved on CUDA.

    ``widget=True`` returns a ``go.FigureWidget`` that a sampler thread can update live.
    """
    t = [s.t_s for s in report.samples]
    fig = go.FigureWidget() if widget else go.Figure()
    if report.device == "cuda":
        series = {"torch allocated": [s.cuda_allocated for s in report.samples],
                  "torch reserved": [s.cuda_reserved for s in report.samples]}
        if all(s.nvml_used is not None for s in report.samples):
            series["device used (NVML)"] = [s.nvml_used for s in report.samples]
    elif not report.rss_split:  # psutil's resident set (no /proc): one line, not split
        series = {"resident set (psutil)": [s.rss_bytes for s in report.samples]}
    else:
        series = {"total resident (anon + file)": [s.rss_bytes for s in report.samples],
                  "RssAnon: allocated by the process": [s.rss_anon for s in report.samples],
                  "RssFile: mapped files (safetensors)": [s.rss_file for s in report.samples]}
    for i, (name, values) in enumerate(series.items()):
        # Everything relative to the block's start: the lines read directly as "what this block added".
        base = values[0] if values else 0
        fig.add_trace(go.Scatter(x=t, y=[(v - base) / _MiB for v in values], mode="lines", name=name,
                                 line=dict(width=3 if i == 0 else 2, dash=None if i == 0 else "dot")))
    label = report.label or "tracked block"
    peak = f"peak +{report.peak_bytes / _MiB:,.0f} MiB ({report.peak_source})"
    fig.update_layout(title=title or f"Memory during {label} on {report.device.upper()}: {peak}",
                      xaxis_title="time since the block started (s)", yaxis_title="memory above the start (MiB)",
                      **_LAYOUT)
    return fig


def peaks_bar(reports: Sequence[MemoryReport], title: str = "Peak memory of each step",
              estimates_bytes: Sequence[float] | None = None) -> go.Figure:
    """One bar per report (peak above its start, MiB), with an estimate beside each when given."""
    names = [r.label or f"block {i + 1}" for i, r in enumerate(reports)]
    fig = go.Figure(go.Bar(x=names, y=[r.peak_bytes / _MiB for r in reports], name="measured peak",
                           text=[f"{r.peak_bytes / _MiB:,.0f}" for r in reports], textposition="outside"))
    if estimates_bytes is not None:
        fig.add_trace(go.Bar(x=names, y=[e / _MiB for e in estimates_bytes], name="estimate",
                             text=[f"{e / _MiB:,.0f}" for e in estimates_bytes], textposition="outside"))
    fig.update_layout(title=title, yaxis_title="memory (MiB)", barmode="group", **_LAYOUT)
    return fig
