"""Charts and tables of offloading (lesson 05): thin views over :mod:`bigsmall_lab.offload`'s results."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

import math

from .._units import GB, GiB, MiB
from ..offload import OffloadResult, time_ratio
from ..offload_plan import ComponentSize, OffloadPlan, PinnedPlan, PlannedGroup, PublishedFigure
from ._estimates import _gpu_lines, html_table

__all__ = ["components_table", "groups_table", "offload_table", "offload_timelines", "pinned_table", "plan_bars",
           "speed_table", "tradeoff_scatter"]

_LAYOUT = dict(template="plotly_white", margin=dict(l=80, r=40, t=70, b=70),
               legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0))
_WRONG = "#d62828"
# Colour-blind-safe colours for the strategies (red is kept for a wrong image).
_PALETTE = ("#1d3557", "#457b9d", "#2a9d8f", "#e9c46a", "#f4a261", "#6a4c93", "#8ab17d", "#264653", "#a8dadc")


def _mib(n_bytes: float | None) -> str:
    return "–" if n_bytes is None else f"{n_bytes / MiB:,.1f}"


def components_table(rows: Sequence[ComponentSize]):
    """Each component's parameters and weights (GB and GiB), and the total, as an HTML table."""
    total_params = sum(r.parameters for r in rows)
    total_bytes = sum(r.weights_bytes for r in rows)
    body = [[r.name, f"{r.parameters:,}", r.dtype, f"{r.weights_bytes / GB:,.2f}", f"{r.weights_bytes / GiB:,.2f}"]
            for r in rows]
    body.append(["all together", f"{total_params:,}", rows[0].dtype if rows else "",
                 f"{total_bytes / GB:,.2f}", f"{total_bytes / GiB:,.2f}"])
    return html_table(["component", "parameters (meta device)", "dtype", "weights (GB)", "weights (GiB)"], body)


def plan_bars(plans: Sequence[OffloadPlan], title: str = "Weights on the GPU at the peak, by strategy") -> go.Figure:
    """One bar per strategy: the weights its plan keeps on the compute device (GB), GPU sizes as lines."""
    names = [p.settings.label for p in plans]
    fig = go.Figure(go.Bar(
        x=names, y=[p.device_bytes / GB for p in plans], marker_color="#457b9d",
        text=[f"{p.device_bytes / GB:,.2f} GB" for p in plans], textposition="outside",
        customdata=[[p.largest, p.n_groups, p.offloaded_to] for p in plans],
        hovertemplate="%{x}<br>%{y:,.2f} GB on the GPU (peak set by %{customdata[0]})<br>"
                      "%{customdata[1]} pieces moved; the rest waits in %{customdata[2]}<extra></extra>"))
    _gpu_lines(fig)
    fig.update_layout(title=title, yaxis_title="weights on the GPU at the peak (GB)", xaxis_title="strategy",
                      height=480, showlegend=False, **{**_LAYOUT, "margin": dict(l=80, r=150, t=70, b=150)})
    fig.update_xaxes(tickangle=-25)
    return fig


def offload_table(results: Sequence[OffloadResult]):
    """The measured results next to their plans: peak, time per image, and whether the image is right."""
    base = next((r for r in results if r.ran and r.settings.strategy.value == "none"), None)
    rows = []
    for r in results:
        if not r.ran:
            rows.append([r.label, r.settings.call(), "planned only", _mib(r.plan.device_bytes), "–", "–", "–",
                         "–", "–", r.reason])
            continue
        ratio = f"{r.peak_bytes / r.plan.device_bytes:.2f}" if r.plan.device_bytes else "–"
        slower = (f"{r.seconds_per_image / base.seconds_per_image:.1f}x"
                  if base is not None and base.seconds_per_image else "–")
        same = {True: "yes", False: "NO", None: "–"}[r.equal]
        if r.equal and r.bitwise is False:  # within the offload module's tolerance, not bit for bit
            same = f"yes (within {r.max_abs_diff:.1g})"
        rows.append([r.label, r.settings.call(r.device.split(":")[0]), r.device, _mib(r.plan.device_bytes),
                     _mib(r.peak_bytes), ratio, _mib(r.load_peak_bytes), f"{r.seconds_per_image:.2f} ({slower})",
                     same, r.note])
    return html_table(["strategy", "the call", "ran on", "plan: weights on the device (MiB)",
                       "measured peak while generating (MiB)", "peak / plan", "peak while loading (MiB)",
                       "seconds per image, median (vs none)", "same image as no offloading?", "note"], rows)


def tradeoff_scatter(results: Sequence[OffloadResult], title: str | None = None) -> go.Figure:
    """Memory against time per image, one point per strategy that ran: the trade-off at a glance.

    Circles: the same image as no offloading; a red cross: a different (wrong) image.
    """
    ran = [r for r in results if r.ran]
    fig = go.Figure()
    for i, r in enumerate(ran):
        wrong = r.equal is False
        fig.add_trace(go.Scatter(
            x=[r.seconds_per_image], y=[r.peak_bytes / MiB], mode="markers",
            name=r.label + (" (WRONG image)" if wrong else ""),
            marker=dict(size=16 if wrong else 14, symbol="x" if wrong else "circle", line=dict(width=1, color="#333"),
                        color=_WRONG if wrong else _PALETTE[i % len(_PALETTE)]),
            hovertemplate=f"{r.label}<br>%{{x:.2f}} s per image<br>peak %{{y:,.1f}} MiB<extra></extra>"))
    device = ran[0].device.upper() if ran else ""
    fig.update_layout(title=title or f"The trade-off on {device}: memory while generating vs time per image",
                      xaxis_title="seconds per image (lower is faster)",
                      yaxis_title="peak while generating, above the memory before loading (MiB)", height=480,
                      **{**_LAYOUT, "legend": dict(orientation="v", x=1.02, y=1.0),
                         "margin": dict(l=80, r=360, t=70, b=70)})
    fig.update_yaxes(rangemode="tozero")
    fig.update_xaxes(rangemode="tozero")
    return fig


def offload_timelines(results: Sequence[OffloadResult], title: str | None = None) -> go.Figure:
    """The compute device's memory during one generation, one line per strategy that ran."""
    fig = go.Figure()
    ran = [r for r in results if r.ran and r.report is not None]
    for r in ran:
        t, values = r.timeline
        fig.add_trace(go.Scatter(x=t, y=[v / MiB for v in values], mode="lines", name=r.label,
                                 line=dict(width=2, dash=None if r.equal is not False else "dot"),
                                 hovertemplate="%{x:.2f} s: %{y:,.1f} MiB<extra>" + r.label + "</extra>"))
    device = ran[0].device.upper() if ran else ""
    what = "resident memory (RSS)" if device == "CPU" else "torch allocated"
    fig.update_layout(title=title or f"Memory during one generation on {device}, by strategy",
                      xaxis_title="time since the generation started (s)",
                      yaxis_title=f"{what} above the memory before loading (MiB)", height=460,
                      **{**_LAYOUT, "legend": dict(orientation="v", x=1.02, y=1.0)})
    fig.update_layout(margin=dict(l=80, r=320, t=70, b=70))
    return fig


def groups_table(planned: Sequence[PlannedGroup], built: Sequence[PlannedGroup] | None = None):
    """The groups the lab plans for one component, next to those diffusers built (when given): name, kind, MiB."""
    real = {g.name: g for g in built or ()}
    rows = []
    for g in planned:
        other = real.get(g.name)
        seen = "–" if built is None else ("not built" if other is None else
                                         "same" if (other.weights_bytes, other.n_tensors) == (g.weights_bytes,
                                                                                              g.n_tensors) else
                                         f"{other.weights_bytes / MiB:,.3f} MiB")
        rows.append([g.name or "(the component itself)", g.kind, f"{g.n_tensors:,}", f"{g.weights_bytes / MiB:,.3f}",
                     seen])
    for name in real.keys() - {g.name for g in planned}:
        rows.append([name, real[name].kind, f"{real[name].n_tensors:,}", "–", "built, not planned"])
    return html_table(["group (the module whose forward brings it in)", "kind", "tensors", "planned (MiB)",
                       "diffusers built"], rows)


def pinned_table(plans: dict[str, PinnedPlan]):
    """What ``use_stream=True`` pins, per model: the weights, the pinned copies asked, what the allocator takes."""
    rows = []
    for name, p in plans.items():
        rows.append([name, p.settings.label, f"{p.offloaded_bytes / GiB:,.3f}", f"{p.pinned_bytes / GiB:,.3f}",
                     f"{p.reserved_bytes / GiB:,.3f}", f"{p.rounding:.2f}",
                     f"{p.ram_after_bytes / GiB:,.3f}", f"{p.ram_after_bytes / max(p.offloaded_bytes, 1):.2f}"])
    return html_table(["model", "settings", "weights in CPU RAM (GiB)", "pinned copies asked (GiB)",
                       "pinned, rounded up to powers of two (GiB)", "rounded / asked",
                       "weights' RAM after the call (GiB)", "after / before"], rows)


def speed_table(results: Sequence[OffloadResult], published: Sequence[PublishedFigure] = ()):
    """Time per image measured here (median, ratio to no offloading) beside the published GPU figures and their source."""
    base = next((r for r in results if r.ran and r.settings.strategy.value == "none" and not r.settings.exclude), None)
    rows = []
    for r in results:
        if not r.ran:
            rows.append([r.label, "this machine", "not run here", "–", "–", r.reason])
            continue
        ratio = time_ratio(r, base) if base is not None else math.nan
        rows.append([r.label, f"this machine ({r.device})", f"{r.seconds_per_image:.3f} (median of {len(r.seconds_runs)})",
                     "–" if math.isnan(ratio) else f"{ratio:.2f}x", f"{r.peak_bytes / MiB:,.1f} MiB", "measured here"])
    pub_base = next((f for f in published if f.settings.strategy.value == "none"), None)
    for f in published:
        ratio = f.seconds / pub_base.seconds if pub_base is not None else math.nan
        rows.append([f.settings.label, f"{f.gpu}: {f.what}", f"{f.seconds:.3f}",
                     "–" if math.isnan(ratio) else f"{ratio:.2f}x", f"{f.peak_gib:,.2f} GiB", f.source])
    return html_table(["strategy", "where", "seconds", "vs no offloading", "peak", "source"], rows)
