"""Charts and tables of lesson 08 (KV cache): thin views over :mod:`bigsmall_lab.kvcache`'s results.

Every number drawn here comes from a ``KVPoint`` / ``RankPoint`` (planned bytes), a
``GenerationRun`` / ``CacheRun`` (measured on this machine) or a ``RecomputeResult``; the views only
convert bytes to MiB/GiB for reading.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .._units import GiB as _GiB
from .._units import MiB as _MiB
from ..kv_plan import CacheOffloadPlan, KVPoint, RankPoint
from ..kvcache import CacheRun, GenerationRun, RecomputeResult
from ._estimates import html_table

__all__ = ["bytes_per_token_chart", "cache_runs_chart", "cache_runs_table", "kv_context_chart", "kv_per_gpu_chart",
           "offload_chart", "recompute_chart", "residual_chart"]

_LAYOUT = dict(template="plotly_white", margin=dict(l=70, r=40, t=80, b=60),
               legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")


def kv_context_chart(points: Sequence[KVPoint], title: str = "KV cache against context length",
                     reference_lines: Mapping[str, float] | None = None, log: bool = True) -> go.Figure:
    """One line per config (and batch size): KV-cache GiB against tokens of context.

    ``reference_lines``: horizontal lines to compare with, label -> bytes (e.g. the weights in bf16).
    """
    fig = go.Figure()
    labels = list(dict.fromkeys(p.label for p in points))
    batches = sorted({p.batch_size for p in points})
    for label in labels:
        for j, batch in enumerate(batches):
            sel = sorted((p for p in points if p.label == label and p.batch_size == batch), key=lambda p: p.seq_len)
            if not sel:
                continue
            name = label if len(batches) == 1 or "batch" in label else f"{label}, batch {batch}"
            fig.add_trace(go.Scatter(
                x=[p.seq_len for p in sel], y=[p.kv_bytes / _GiB for p in sel], mode="lines+markers", name=name,
                line=dict(dash=_DASHES[j % len(_DASHES)]),
                hovertemplate="%{x:,} tokens: %{y:,.2f} GiB<extra>" + name + "</extra>"))
    for name, n_bytes in (reference_lines or {}).items():
        y = n_bytes / _GiB
        fig.add_hline(y=y, line_dash="dot", line_color="#888", line_width=1)
        # On a log axis plotly places annotations at log10(y): the label must follow its line there.
        fig.add_annotation(x=0, xref="paper", y=math.log10(y) if log else y, yref="y", text=name, showarrow=False,
                           xanchor="left", yanchor="bottom", font=dict(size=11, color="#555"))
    contexts = sorted({p.seq_len for p in points})
    fig.update_layout(title=title, xaxis_title="tokens of context" + (" (log scale)" if log else ""),
                      yaxis_title="KV cache (GiB" + (", log scale)" if log else ")"), height=480, **_LAYOUT)
    fig.update_layout(margin=dict(l=70, r=40, t=60, b=120), legend=dict(orientation="h", y=-0.22, x=0))
    fig.update_xaxes(tickvals=contexts, ticktext=[f"{n:,}" for n in contexts])
    if log:
        fig.update_xaxes(type="log")
        fig.update_yaxes(type="log", tickformat=",~g", exponentformat="none")
    return fig


def kv_per_gpu_chart(points: Sequence[RankPoint], title: str | None = None) -> go.Figure:
    """Per-GPU KV cache against tensor-parallel ranks: it halves with each doubling until the ranks
    outnumber the KV heads, then stays flat (heads are replicated, not split)."""
    fig = go.Figure()
    for label in dict.fromkeys(p.label for p in points):
        sel = sorted((p for p in points if p.label == label), key=lambda p: p.tp_size)
        # The value on each point until the line goes flat (the flat part repeats the same number).
        text = [f"{p.kv_bytes / _GiB:,.1f}" if not (i and sel[i - 1].replicated) else ""
                for i, p in enumerate(sel)]
        fig.add_trace(go.Scatter(
            x=[p.tp_size for p in sel], y=[p.kv_bytes / _GiB for p in sel], mode="lines+markers+text", name=label,
            text=text, textposition="top center",
            marker=dict(symbol=["x" if p.replicated else "circle" for p in sel], size=10),
            customdata=[[p.kv_heads_per_rank, "replicated" if p.replicated else "split"] for p in sel],
            hovertemplate="%{x} GPUs: %{y:,.2f} GiB per GPU, %{customdata[0]} KV head(s) each, "
                          "%{customdata[1]}<extra>" + label + "</extra>"))
    fig.update_layout(title=title or "KV cache per GPU under tensor parallelism (x: KV heads replicated)",
                      xaxis_title="GPUs (tensor-parallel ranks, log scale)",
                      yaxis_title="KV cache per GPU (GiB, log scale)", height=460, **_LAYOUT)
    # Both axes logarithmic: halving with each doubling is a straight line, and flat is flat.
    fig.update_xaxes(type="log", tickvals=sorted({p.tp_size for p in points}))
    fig.update_yaxes(type="log", dtick="D2", tickformat=",~g", exponentformat="none")  # 1, 2, 5, 10, 20 ...
    return fig


def _runs(runs: Sequence[CacheRun | GenerationRun]) -> list[tuple[str, GenerationRun | None, CacheRun | None]]:
    out = []
    for r in runs:
        if isinstance(r, CacheRun):
            out.append((r.label, r.generation, r))
        else:
            out.append((r.label, r, None))
    return out


def cache_runs_table(runs: Sequence[CacheRun | GenerationRun], part: str = "all", text_chars: int = 60):
    """One row per cache. ``part="bytes"``: bytes measured from the cache object next to
    ``kv_cache_bytes`` and to the implementation's own expected size; ``part="quality"`` (for
    :class:`CacheRun`): time to put the prompt in, decode speed, KL, top-1, perplexity and the
    generated text side by side; ``"all"``: both."""
    if part not in ("all", "bytes", "quality"):
        from .._errors import LabError

        raise LabError.bad("part", part, "use 'all', 'bytes' or 'quality'")
    items = _runs(runs)
    quality = part != "bytes" and any(c is not None for _, _, c in items)
    head = ["cache"]
    if part != "quality":
        head += ["measured (MiB)", "kv_cache_bytes (MiB)", "measured / kv_cache_bytes", "expected (MiB)", "exact"]
    head += ["decode tokens/s"]
    if quality:
        head += ["prompt into the cache (s)", "KL (nats/token)", "top-1 agreement", "perplexity", "generated text"]
    rows = []
    for label, g, c in items:
        row = [label]
        if part != "quality":
            row += ([f"{g.cache.total_bytes / _MiB:,.2f}", f"{g.estimate_bytes / _MiB:,.2f}", f"{g.ratio:.3f}",
                     f"{g.expected_bytes / _MiB:,.2f}", "yes" if g.matches_expected else "no"]
                    if g is not None else ["-"] * 5)
        row.append(f"{g.decode_tokens_per_s:,.1f}" if g is not None else "-")
        if quality:
            if c is not None:
                a = c.agreement
                text = (g.text or "") if g is not None else ""
                text = text if len(text) <= text_chars else text[:text_chars - 1] + "…"
                row += [f"{c.fill_s:,.2f}", f"{a.kl_nats:.4f}", f"{a.top1_agreement:.1%}", f"{a.candidate_ppl:,.2f}",
                        repr(text)]
            else:
                row += ["-"] * 5
        rows.append(row)
    return html_table(head, rows)


def cache_runs_chart(runs: Sequence[CacheRun | GenerationRun], title: str | None = None) -> go.Figure:
    """Three panels per cache: bytes held (measured, with ``kv_cache_bytes`` as a dotted marker),
    decode tokens per second, and (for :class:`CacheRun`) the KL divergence from the dynamic cache."""
    items = _runs(runs)
    labels = [label for label, _, _ in items]
    has_kl = any(c is not None for _, _, c in items)
    cols = 3 if has_kl else 2
    names = ["cache held (MiB)", "decode speed (tokens/s)"]
    names += ["KL from the dynamic cache (nats/token)"] if has_kl else []
    fig = make_subplots(rows=1, cols=cols, subplot_titles=names, horizontal_spacing=0.12)
    measured = [g.cache.total_bytes / _MiB if g else None for _, g, _ in items]
    fig.add_trace(go.Bar(y=labels, x=measured, orientation="h", name="measured from the cache object",
                         marker_color="#1f77b4", text=[f"{m:,.1f}" if m is not None else "" for m in measured],
                         textposition="auto"), 1, 1)
    fig.add_trace(go.Scatter(y=labels, x=[g.estimate_bytes / _MiB if g else None for _, g, _ in items],
                             mode="markers", marker=dict(symbol="line-ns-open", size=18, color="#d62728"),
                             name="kv_cache_bytes (full precision)"), 1, 1)
    fig.add_trace(go.Bar(y=labels, x=[g.decode_tokens_per_s if g else None for _, g, _ in items], orientation="h",
                         marker_color="#2ca02c", showlegend=False,
                         text=[f"{g.decode_tokens_per_s:,.1f}" if g else "" for _, g, _ in items],
                         textposition="auto"), 1, 2)
    if has_kl:
        kl = [c.agreement.kl_nats if c is not None else None for _, _, c in items]
        fig.add_trace(go.Bar(y=labels, x=kl, orientation="h", marker_color="#ff7f0e", showlegend=False,
                             text=[f"{k:.3g}" if k is not None else "" for k in kl], textposition="auto"), 1, 3)
    fig.update_yaxes(autorange="reversed")
    for col in range(2, cols + 1):
        fig.update_yaxes(showticklabels=False, row=1, col=col)
    fig.update_layout(title=title or "Each KV cache: what it holds, how fast it decodes, how much it changes the model",
                      height=120 + 42 * len(labels), **_LAYOUT)
    fig.update_layout(margin=dict(l=190, r=40, t=110, b=50), legend=dict(orientation="h", y=-0.15, x=0))
    return fig


def bytes_per_token_chart(runs: Sequence[GenerationRun], title: str | None = None) -> go.Figure:
    """Cache bytes after each generated token (runs made with ``trace_bytes=True``): the dynamic cache
    grows, the static one is full from the start, a quantized one grows in its full-precision window
    and drops each time the window is quantized."""
    fig = go.Figure()
    for run in runs:
        if not run.bytes_trace:
            continue
        fig.add_trace(go.Scatter(x=list(range(1, len(run.bytes_trace) + 1)), y=[b / _MiB for b in run.bytes_trace],
                                 mode="lines", name=run.label,
                                 hovertemplate="token %{x}: %{y:,.3f} MiB<extra>" + run.label + "</extra>"))
    fig.update_layout(title=title or "Cache held after each new token, weighed from the cache object",
                      xaxis_title="new tokens generated", yaxis_title="cache (MiB)", height=420, **_LAYOUT)
    return fig


def residual_chart(runs: Sequence[CacheRun], title: str | None = None) -> go.Figure:
    """Quantized caches that differ only in ``residual_length``: the most bytes each held, and its KL."""
    sel = [r for r in runs if r.settings.effective_residual_length is not None]
    sel.sort(key=lambda r: r.settings.effective_residual_length)
    x = [str(r.settings.effective_residual_length) for r in sel]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Bar(x=x, y=[r.peak_bytes / _MiB for r in sel], name="most the cache held (MiB)",
                         marker_color="#1f77b4", opacity=0.75), secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=[r.agreement.kl_nats for r in sel], name="KL from the dynamic cache",
                             mode="lines+markers", marker=dict(size=10, color="#ff7f0e")), secondary_y=True)
    backend = sel[0].settings.label.split(",")[0] if sel else ""
    fig.update_layout(title=title or f"{backend}: a longer full-precision window costs memory and saves accuracy",
                      xaxis_title="residual_length (tokens kept in full precision)", height=420, **_LAYOUT)
    fig.update_yaxes(title_text="most the cache held (MiB)", secondary_y=False)
    fig.update_yaxes(title_text="KL (nats/token)", secondary_y=True, rangemode="tozero")
    return fig


def recompute_chart(result: RecomputeResult, title: str | None = None) -> go.Figure:
    """Milliseconds per new token with the cache and without (``use_cache=False``)."""
    fig = go.Figure()
    for name, steps in (("with the KV cache", result.cached_step_s), ("use_cache=False (recompute)",
                                                                       result.recomputed_step_s)):
        fig.add_trace(go.Scatter(x=list(range(2, len(steps) + 2)), y=[s * 1000 for s in steps], mode="lines",
                                 name=name))
    fig.update_layout(title=title or (f"Each new token: recomputing the whole sequence vs reading the cache "
                                      f"({result.slowdown:.1f}x slower in total)"),
                      xaxis_title="new token", yaxis_title="milliseconds for this token", height=400, **_LAYOUT)
    return fig


def offload_chart(plans: Sequence[CacheOffloadPlan], title: str | None = None) -> go.Figure:
    """Where an offloaded cache keeps its bytes: two layers on the GPU, the rest in CPU memory,
    next to the whole cache a dynamic one keeps on the GPU."""
    labels = [p.label for p in plans]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=labels, y=[p.total_bytes / _GiB for p in plans], name="dynamic cache: all on the GPU",
                         offsetgroup="dynamic", text=[f"{p.total_bytes / _GiB:,.2f}" for p in plans]))
    fig.add_trace(go.Bar(x=labels, y=[p.gpu_bytes / _GiB for p in plans], name="offloaded: on the GPU (2 layers)",
                         offsetgroup="offloaded", text=[f"{p.gpu_bytes / _GiB:,.2f}" for p in plans]))
    fig.add_trace(go.Bar(x=labels, y=[p.cpu_bytes / _GiB for p in plans], name="offloaded: in CPU memory",
                         offsetgroup="offloaded", base=[p.gpu_bytes / _GiB for p in plans], opacity=0.5))
    fig.update_layout(title=title or "Offloaded KV cache: GPU memory for the cache drops to two layers",
                      yaxis_title="KV cache (GiB)", height=420, barmode="group", **_LAYOUT)
    return fig
