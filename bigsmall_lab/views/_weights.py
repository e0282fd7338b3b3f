"""A layer's real weights against the values each format can store."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..bits import RoundingStats, format_info, representable, rounding_stats
from ..quant import histogram
from ._estimates import html_table

__all__ = ["formats_table", "rounding_table", "weights_vs_formats"]


def weights_vs_formats(weights: torch.Tensor, dtypes: Sequence[str] = ("float8_e4m3fn", "float8_e5m2"),
                       title: str = "One layer's weights and the values each format can store",
                       bins: int = 160) -> go.Figure:
    """Histogram of ``weights`` with, below it, the grid of representable values of each format in
    the same range (one tick per value); the legend gives each format's RMSE and mean relative
    rounding error (the two can rank formats differently: see ``bits.rounding_stats``).

    The histogram is counted here (:func:`bigsmall_lab.quant.histogram`, ``bins`` equal bars from
    the smallest to the largest weight), so the figure holds ``bins`` counts, not every weight: for
    SmolLM2's 884,736-weight down_proj that is a few kB in the notebook instead of about 1 MB.

    >>> fig = weights_vs_formats(torch.linspace(-1, 1, 100_000), dtypes=["float8_e4m3fn"], bins=4)
    >>> fig.data[0].type, fig.data[0].y, len(fig.data[0].x)
    ('bar', (25000, 25000, 25000, 25000), 4)
    """
    values = weights.detach().reshape(-1).float().cpu()
    low, high = float(values.min()), float(values.max())
    h = histogram(values, bins=bins)
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.04)
    fig.add_trace(go.Bar(x=list(h.centres), y=list(h.counts), width=h.edges[1] - h.edges[0], name="weights",
                         marker=dict(color="#4C78A8", line=dict(width=0)), showlegend=False,
                         hovertemplate="weight %{x:.4g}: %{y:,} weights<extra></extra>"), row=1, col=1)
    for i, dtype in enumerate(dtypes):
        grid = representable(dtype, low, high)
        stats = rounding_stats(values, dtype)
        fig.add_trace(go.Scatter(
            x=list(grid), y=[dtype] * len(grid), mode="markers", marker=dict(symbol="line-ns-open", size=14),
            name=f"{dtype}: {len(grid)} values here, RMSE {stats.rmse:.2g}, "
                 f"mean rel. error {stats.mean_relative_error:.1%}"),
            row=2, col=1)
    fig.update_layout(title=title, template="plotly_white", height=480, bargap=0,
                      margin=dict(l=110, r=30, t=70, b=60),
                      legend=dict(orientation="h", yanchor="top", y=-0.16, x=0))
    fig.update_yaxes(title_text="number of weights", row=1, col=1)
    fig.update_xaxes(title_text="weight value", row=2, col=1)
    return fig


def formats_table(dtypes: Sequence[str] = ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "int8")):
    """Field widths, range and precision of each format, read from torch (``bits.format_info``)."""

    def num(x):
        return "–" if x is None else f"{x:.4g}"

    rows = []
    for dtype in dtypes:
        f = format_info(dtype)
        if f.is_float:
            fields = f"{f.sign_bits} / {f.exponent_bits} / {f.mantissa_bits}"
        elif f.sign_bits:  # no sign bit in the float sense: the top bit is worth -2**(bits - 1)
            fields = f"two's complement: top bit worth {-(2 ** (f.bits - 1)):,}, {f.bits - 1} value bits"
        else:
            fields = f"unsigned: {f.bits} value bits"
        rows.append([dtype, str(f.bits), fields, num(f.max), num(f.smallest_normal), num(f.eps),
                     "yes" if f.has_inf else "no"])
    return html_table(["format", "bits", "sign / exponent / mantissa", "largest finite", "smallest normal",
                       "epsilon (gap after 1.0)", "has inf"], rows)


def rounding_table(stats: Sequence[RoundingStats]):
    """``bits.rounding_stats`` results side by side, one row per format (a per-tensor scale is named
    in the format column); the matmul output error is a column when any row measured it."""
    outputs = any(s.output_relative_error is not None for s in stats)
    head = ["format", "distinct values left", "RMSE", "mean relative error"]
    head += ["matmul output error"] if outputs else []
    head += ["largest error", "became 0", "became inf/nan"]
    rows = []
    for s in stats:
        row = [s.dtype + (" + per-tensor scale" if s.scale != 1.0 else ""), f"{s.distinct_stored:,}",
               f"{s.rmse:.3g}", f"{s.mean_relative_error:.3%}"]
        if outputs:
            row.append("–" if s.output_relative_error is None else f"{s.output_relative_error:.3%}")
        row += [f"{s.max_abs_error:.3g}", f"{s.flushed_to_zero:.2%}", f"{s.non_finite:.2%}"]
        rows.append(row)
    return html_table(head, rows)
