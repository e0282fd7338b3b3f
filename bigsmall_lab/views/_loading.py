"""Charts of measured loads: timelines with their phases, peaks side by side, shard by shard, device maps.

Thin plotly views over the results of :mod:`bigsmall_lab.loading` (``LoadRun``, ``LoadComparison``,
``ShardSteps``, ``PlacedLoad``); the device map of a real load is drawn by the planner's chart.
"""

from __future__ import annotations

import plotly.graph_objects as go

from ..loading import LoadComparison, LoaderComparison, LoadRun, PlacedLoad, ShardSteps
from ._placement import placement_chart

__all__ = ["device_map_chart", "loaders_chart", "loading_peaks", "loading_timeline", "shard_steps_chart"]

_MiB = 2**20
_LAYOUT = dict(template="plotly_white", legend=dict(orientation="h", yanchor="top", y=-0.18, x=0))
_SHADES = ("rgba(0,114,178,0.08)", "rgba(230,159,0,0.10)")
_ANON, _FILE, _TOTAL = "#D55E00", "#0072B2", "#000000"


def _series(run: LoadRun | ShardSteps) -> dict[str, tuple[list[float], str, str]]:
    samples = run.report.samples
    t0 = samples[0] if samples else None
    if run.report.device == "cuda":
        return {"GPU: torch allocated": ([(s.cuda_allocated - t0.cuda_allocated) / _MiB for s in samples], _TOTAL,
                                         "solid"),
                "host: RssAnon + RssFile": ([(s.rss_anon + s.rss_file - t0.rss_anon - t0.rss_file) / _MiB
                                             for s in samples], _ANON, "dot")}
    return {"total resident": ([(s.rss_anon + s.rss_file - t0.rss_anon - t0.rss_file) / _MiB for s in samples],
                               _TOTAL, "solid"),
            "RssAnon: the process's own memory (copies)": ([(s.rss_anon - t0.rss_anon) / _MiB for s in samples], _ANON,
                                                           "dot"),
            "RssFile: mapped files (safetensors shards)": ([(s.rss_file - t0.rss_file) / _MiB for s in samples], _FILE,
                                                           "dash")}


def _is_wide(phase, span: float) -> bool:
    return (phase.end_s - phase.start_s) / span > 0.12


def loading_timeline(run: LoadRun | ShardSteps, title: str | None = None, height: int = 420) -> go.Figure:
    """Memory over time of one load (MiB above its start), each phase shaded and named above the chart."""
    t = [s.t_s for s in run.report.samples]
    fig = go.Figure()
    for name, (values, colour, dash) in _series(run).items():
        fig.add_trace(go.Scatter(x=t, y=values, mode="lines", name=name,
                                 line=dict(color=colour, dash=dash, width=3 if dash == "solid" else 2)))
    levels = 2  # names of neighbouring phases alternate between two heights
    span = max(t[-1] if t else 0.0, max((p.end_s for p in run.phases), default=0.0), 1e-9)
    narrow: list[str] = []
    runs: list[list[int]] = []  # consecutive phases too short for their name share one number label
    for i, phase in enumerate(run.phases):
        fig.add_vrect(x0=phase.start_s, x1=max(phase.end_s, phase.start_s + 1e-3), fillcolor=_SHADES[i % 2],
                      line_width=0, layer="below")
        if _is_wide(phase, span):
            runs.append([i])
            continue
        narrow.append(f"{i + 1}. {phase.name} ({phase.end_s - phase.start_s:.2f} s)")
        if runs and runs[-1][-1] == i - 1 and not _is_wide(run.phases[i - 1], span):
            runs[-1].append(i)  # joins the short phase just before it
        else:
            runs.append([i])
    for level, group in enumerate(runs):
        first, last = run.phases[group[0]], run.phases[group[-1]]
        if len(group) == 1 and _is_wide(first, span):
            text = f"{group[0] + 1}. {first.name}"
        else:
            text = f"{group[0] + 1}" if len(group) == 1 else f"{group[0] + 1}-{group[-1] + 1}"
        fig.add_annotation(x=(first.start_s + last.end_s) / 2, y=1.0 + 0.07 * (level % levels), xref="x",
                           yref="paper", text=text, showarrow=False, font=dict(size=10), yanchor="bottom")
    if narrow:
        fig.add_annotation(x=0, y=-0.36, xref="paper", yref="paper", showarrow=False, xanchor="left",
                           text="short phases: " + " · ".join(narrow), font=dict(size=10, color="#555"))
    label = getattr(run, "label", "shard by shard")
    peak = f"peak +{run.report.peak_bytes / _MiB:,.0f} MiB"
    fig.update_layout(title=dict(text=title or f"{label}: {peak}", y=0.98, yanchor="top"),
                      xaxis_title="seconds since the load started", yaxis_title="memory above the start (MiB)",
                      height=height, margin=dict(l=70, r=30, t=60 + 22 * levels, b=110), **_LAYOUT)
    return fig


def loading_peaks(comparison: LoadComparison, title: str | None = None) -> go.Figure:
    """The two loads' peaks side by side (MiB above their start), split into RssAnon and RssFile on a CPU,
    with the checkpoint's size as a line."""
    runs = (comparison.naive, comparison.bmi)
    names = [r.label for r in runs]
    on_gpu = runs[0].report.device == "cuda"
    fig = go.Figure(go.Bar(x=names, y=[r.peak_bytes / _MiB for r in runs],
                           name="GPU peak (torch allocated)" if on_gpu else "peak (all resident memory)",
                           marker_color=_TOTAL, text=[f"{r.peak_bytes / _MiB:,.0f} MiB" for r in runs],
                           textposition="outside"))
    if on_gpu:
        fig.add_trace(go.Bar(x=names, y=[r.host_peak_bytes / _MiB for r in runs], name="host peak (RssAnon + RssFile)",
                             marker_color=_ANON, text=[f"{r.host_peak_bytes / _MiB:,.0f}" for r in runs],
                             textposition="outside"))
    else:
        for name, attr, colour in (("peak RssAnon (copies)", "rss_anon", _ANON),
                                   ("peak RssFile (mapped shards)", "rss_file", _FILE)):
            values = [(getattr(r.report, f"peak_{attr}_bytes") - getattr(r.report.samples[0], attr)) / _MiB
                      for r in runs]
            fig.add_trace(go.Bar(x=names, y=values, name=name, marker_color=colour,
                                 text=[f"{v:,.0f}" for v in values], textposition="outside"))
    size = runs[0].checkpoint_bytes / _MiB
    fig.add_hline(y=size, line_dash="dot", line_color="#555")
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=dict(dash="dot", color="#555"),
                             name=f"the checkpoint's weights: {size:,.0f} MiB"))  # the line's legend entry
    where = "host " if on_gpu else ""
    fig.update_layout(title=title or f"Peak {where}memory while loading: naive / BMI = {comparison.ratio:.2f}x",
                      yaxis_title="memory above the start (MiB)", barmode="group", height=420,
                      margin=dict(l=70, r=30, t=60, b=90), **_LAYOUT)
    return fig


def shard_steps_chart(steps: ShardSteps, title: str | None = None) -> go.Figure:
    """After each shard: memory held and the peak while it loaded, beside the weights loaded so far and the
    bound "loaded so far + largest shard" (MiB above the empty model)."""
    names = [f"shard {i + 1}/{len(steps.steps)}" for i in range(len(steps.steps))]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=names, y=[s.after_bytes / _MiB for s in steps.steps], name="memory after the shard",
                         marker_color=_ANON))
    fig.add_trace(go.Bar(x=names, y=[s.peak_bytes / _MiB for s in steps.steps], name="peak while it loaded",
                         marker_color="#E69F00"))
    fig.add_trace(go.Scatter(x=names, y=[s.loaded_bytes / _MiB for s in steps.steps], mode="lines+markers",
                             name="weights loaded so far", line=dict(color=_TOTAL)))
    fig.add_trace(go.Scatter(x=names, y=[(s.loaded_bytes + steps.largest_shard_bytes) / _MiB for s in steps.steps],
                             mode="lines", name="loaded so far + largest shard", line=dict(color=_FILE, dash="dash")))
    fig.update_layout(title=title or "Loading one shard at a time: memory never holds the checkpoint twice",
                      yaxis_title="memory above the empty model (MiB)", barmode="group", height=420,
                      margin=dict(l=70, r=30, t=60, b=120), **_LAYOUT)
    return fig


def device_map_chart(placed: PlacedLoad, title: str | None = None) -> go.Figure:
    """The device map ``from_pretrained`` really used (``model.hf_device_map``), drawn like a plan."""
    return placement_chart(placed.loaded, title=title or f"{placed.loaded.model}: model.hf_device_map after loading")


def loaders_chart(comparison: LoaderComparison, title: str | None = None) -> go.Figure:
    """The exact peak of every phase of both loaders (MiB above each load's start), one bar group per loader:
    accelerate's shard loop (what the talk shows) beside transformers' ``from_pretrained``."""
    fig = go.Figure()
    for run, colour in ((comparison.accelerate, _FILE), (comparison.transformers, _ANON)):
        label = getattr(run, "label", "accelerate: one shard at a time")
        phases = [p for p in run.phases if p.peak_bytes is not None]
        fig.add_trace(go.Bar(x=[p.name for p in phases], y=[p.peak_bytes / _MiB for p in phases], name=label,
                             marker_color=colour, text=[f"{p.peak_bytes / _MiB:,.0f}" for p in phases],
                             textposition="outside"))
    fig.update_layout(title=title or f"Peak per phase: from_pretrained / shard loop = {comparison.ratio:.2f}x",
                      yaxis_title="peak above the load's start (MiB)", height=440,
                      margin=dict(l=70, r=30, t=60, b=150), **_LAYOUT)
    return fig
