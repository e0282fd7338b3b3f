"""Pictures of a tensor-parallel run: thin views over :class:`bigsmall_lab.parallel.TPResult`.

Every rectangle, band and number is read from the result: the shapes and local slices come from the
DTensors each rank reported, the counts of collectives from ``_compat.count_collectives``, the bytes and times from
the ranks' own measurements. Nothing here is typed in.
"""

from __future__ import annotations

import plotly.graph_objects as go

from ..parallel import TPResult
from ..tp_plan import TPPlan
from ._estimates import html_table

__all__ = ["tp_memory_chart", "tp_placement_table", "tp_split_figure", "tp_speed_chart"]

_MiB = 2**20
_RANK_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
_REPLICATED = "#b0b0b0"
_ALLREDUCE = "#d62728"
_LAYOUT = dict(template="plotly_white", legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0))
_SHORT = {"Shard(0)": "Shard(0)", "Shard(1)": "Shard(1)", "Replicate()": "all ranks"}
# Modules after which a layer's partial sums are all-reduced (the row-wise ones), in forward order.
_FORWARD_ORDER = ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                  "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _colour(rank: int) -> str:
    return _RANK_COLOURS[rank % len(_RANK_COLOURS)]


def _layer_weights(result: TPResult, layer: int):
    """(short name, full shape, placement, per-rank local shapes) of the layer's weights, in forward order."""
    rows = []
    for w in sorted(result.plan.layer(layer), key=lambda w: _order(w.module)):
        on_ranks = [r.weights[w.name] for r in result.ranks]
        rows.append((w.module.split(".")[-1], w.shape, on_ranks[0].placement, [o.local_shape for o in on_ranks]))
    return rows


def _order(module: str) -> int:
    return _FORWARD_ORDER.index(module) if module in _FORWARD_ORDER else len(_FORWARD_ORDER)


# What runs between two weights, on each rank's own slice (no communication needed there).
_BETWEEN = {"v_proj": "attention<br>on its own<br>heads", "up_proj": "act(gate)<br>× up on its<br>own rows"}


def tp_split_figure(result: TPResult, layer: int = 0) -> go.Figure:
    """Each weight of one decoder layer drawn to scale (height: output features, width: input features),
    coloured by the rank that holds each slice (grey: every rank holds all of it), with the all-reduces
    marked where they happen. Shapes and slices are the ones the ranks reported.
    """
    weights = _layer_weights(result, layer)
    biggest = max(max(shape) for _, shape, _, _ in weights)
    gap = biggest * 0.42
    fig = go.Figure()
    x = 0.0
    for short, shape, placement, locals_ in weights:
        # A matrix (out, in) is drawn `out` high and `in` wide; a norm's vector as a thin grey bar.
        height, width = (shape[0], shape[1]) if len(shape) == 2 else (shape[0], biggest * 0.06)
        start = 0.0
        for rank, local in enumerate(locals_):
            if placement == "Shard(0)":  # rows (output features) split: horizontal bands, rank 0 on top
                y1 = height - start
                y0, x0, x1 = y1 - local[0], x, x + width
                start += local[0]
                thick = local[0]
            elif placement == "Shard(1)":  # columns (input features) split: vertical bands, rank 0 on the left
                x0, x1, y0, y1 = x + start, x + start + local[-1], 0.0, height
                start += local[-1]
                thick = local[-1]
            else:
                x0, x1, y0, y1, thick = x, x + width, 0.0, height, 0
            fig.add_shape(type="rect", x0=x0, x1=x1, y0=y0, y1=y1, opacity=0.9, line=dict(color="white", width=2),
                          fillcolor=_REPLICATED if placement == "Replicate()" else _colour(rank))
            if placement == "Replicate()":
                break
            if thick >= biggest * 0.09:  # room for a label
                fig.add_annotation(x=(x0 + x1) / 2, y=(y0 + y1) / 2, text=f"rank {rank}", showarrow=False,
                                   font=dict(color="white", size=11), textangle=-90 if placement == "Shard(1)" else 0)
        name = "norm" if short.endswith("layernorm") else short
        fig.add_annotation(x=x + width / 2, y=height, yshift=4, yanchor="bottom", showarrow=False,
                           text=f"<b>{name}</b><br>{'×'.join(map(str, shape))}<br>{_SHORT.get(placement, placement)}",
                           font=dict(size=11))
        x += width + gap
        if short in _BETWEEN:
            fig.add_annotation(x=x - gap / 2, y=biggest * 0.15, showarrow=False, text=_BETWEEN[short],
                               font=dict(size=10, color="#555"))
        if placement == "Shard(1)":  # a row-wise layer leaves partial sums: all ranks add them up here
            fig.add_vline(x=x - gap / 2, line=dict(color=_ALLREDUCE, width=4, dash="dot"))
            fig.add_annotation(x=x - gap / 2, y=0, yshift=-6, yanchor="top", showarrow=False,
                               text="<b>all-reduce</b><br>sum of the<br>partial outputs", bgcolor="white",
                               font=dict(color=_ALLREDUCE, size=11))
    for rank in range(result.nproc):  # legend entries
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=f"rank {rank}",
                                 marker=dict(size=14, color=_colour(rank), symbol="square")))
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name="every rank (replicated)",
                             marker=dict(size=14, color=_REPLICATED, symbol="square")))
    fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=dict(color=_ALLREDUCE, width=4, dash="dot"),
                             name="all-reduce: every rank waits for all"))
    counted = result.collectives
    fig.update_layout(
        title=dict(text=(f"Decoder layer {layer} of {result.model} split over {result.nproc} ranks, as the ranks "
                         f"reported it<br><sup>Measured in one forward pass: {counted.get('all_reduce', 0)} "
                         f"all-reduces ({result.plan.n_layers} layers × 2 + 1 for the vocabulary-split embedding), "
                         f"{counted.get('all_gather', 0)} all-gather of the logits<br>Shard(0) = column-wise "
                         f"(rows of W, the output features, split); Shard(1) = row-wise (columns, the input "
                         f"features, split)</sup>")),
        xaxis=dict(visible=False, range=[-gap / 2, x + gap / 4]),
        yaxis=dict(visible=False, scaleanchor="x", range=[-biggest * 0.3, biggest * 1.3]),
        height=480, margin=dict(l=10, r=10, t=90, b=40), template="plotly_white",
        legend=dict(orientation="h", yanchor="top", y=0.0, x=0))
    return fig


def tp_placement_table(result: TPResult, layer: int = 0):
    """An HTML table of one layer's parameters: planned placement, each rank's real slice, and whether they match."""
    rows = []
    for w in result.plan.layer(layer):
        real = [r.weights[w.name] for r in result.ranks]
        same = all(o.placement == w.placement.value and o.local_shape == w.local_shapes[i] for i, o in enumerate(real))
        rows.append([w.module, "×".join(map(str, w.shape)), w.style or "(no rule)", w.placement.value,
                     " | ".join("×".join(map(str, o.local_shape)) for o in real),
                     "DTensor" if real[0].dtensor else "plain tensor", "yes" if same else "NO"])
    return html_table(["weight", "full shape", "transformers style", "planned", "each rank holds",
                       "on the ranks", "as planned"], rows)


def tp_memory_chart(result: TPResult) -> go.Figure:
    """Parameter bytes per rank, predicted by the planner beside measured from the DTensors, and each
    process's measured peak, with the single process for comparison (MiB)."""
    plan: TPPlan = result.plan
    names = [f"rank {r.rank}" for r in result.ranks]
    predicted = list(plan.rank_bytes)
    measured = list(result.rank_bytes)
    peaks = [r.peak_bytes for r in result.ranks]
    if result.reference is not None:
        names = ["one process (no TP)"] + names
        predicted = [plan.total_bytes] + predicted
        measured = [result.reference.param_bytes] + measured
        peaks = [result.reference.peak_bytes] + peaks
    fig = go.Figure()
    for label, values, colour in (("parameters: planner's prediction", predicted, "#9ecae1"),
                                  ("parameters: measured on the rank", measured, "#1f77b4"),
                                  (f"peak memory above the start ({result.ranks[0].peak_source})", peaks, "#ff7f0e")):
        fig.add_trace(go.Bar(x=names, y=[v / _MiB for v in values], name=label, marker_color=colour,
                             text=[f"{v / _MiB:,.1f}" for v in values], textposition="outside"))
    fig.update_layout(title=(f"Memory per process: {result.model} in {result.dtype} on {result.nproc} ranks "
                             f"({result.device.upper()})"), yaxis_title="MiB", barmode="group", height=420,
                      margin=dict(l=70, r=30, t=90, b=50), **_LAYOUT)
    return fig


def tp_speed_chart(result: TPResult, gpu: TPResult | None = None) -> go.Figure:
    """Seconds per generated token: one process beside the tensor-parallel ranks, the ranks' bar split into
    the time the measured all-reduces account for and the rest. ``gpu``: a run on GPUs to show beside."""
    rows: list[tuple[str, float, float]] = []  # (label, all-reduce seconds, other seconds)
    for run, where in ((result, result.device.upper()), (gpu, "GPU")):
        if run is None:
            continue
        if run.reference is not None:
            ref = run.reference
            threads = f", {ref.threads} thread{'s' if ref.threads > 1 else ''}" if ref.device == "cpu" else ""
            rows.append((f"1 process{threads} ({where})", 0.0, run.reference_seconds_per_token))
        comm = min(run.allreduce_s_per_token, run.seconds_per_token)
        rows.append((f"{run.nproc} processes, tensor parallel ({where}, {run.backend})", comm,
                     run.seconds_per_token - comm))
    labels = [r[0] for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Bar(y=labels, x=[r[2] * 1000 for r in rows], orientation="h", name="compute and the rest",
                         marker_color="#1f77b4"))
    fig.add_trace(go.Bar(y=labels, x=[r[1] * 1000 for r in rows], orientation="h", marker_color=_ALLREDUCE,
                         name=f"all-reduces: {result.allreduces_per_token} per token × measured latency"))
    totals = [(r[1] + r[2]) * 1000 for r in rows]
    fig.add_trace(go.Scatter(y=labels, x=totals, mode="text", text=[f"  {t:,.0f} ms" for t in totals],
                             textposition="middle right", showlegend=False, hoverinfo="skip"))
    fig.update_layout(title=f"Time per generated token: {result.model}, {result.ranks[0].new_tokens} tokens",
                      xaxis_title="milliseconds per token", barmode="stack", height=140 + 60 * len(rows),
                      margin=dict(l=330, r=80, t=80, b=50), xaxis=dict(range=[0, max(totals) * 1.2]),
                      yaxis=dict(autorange="reversed"), **_LAYOUT)
    return fig
