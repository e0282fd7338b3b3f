"""Views draw exactly what the planners return; exercises judge answers with the planners' numbers."""

from __future__ import annotations

import math

import pytest
import torch

import bigsmall_lab as bsl
from bigsmall_lab import bits, views
from bigsmall_lab.estimates import Comparison


def test_weights_bars_draw_the_table():
    rows = bsl.weights_table(["llama-3.2-1b", "llama-3.1-8b"], dtypes=["float32", "bfloat16"])
    fig = views.weights_bars(rows)
    assert [t.name for t in fig.data] == ["float32", "bfloat16"]
    assert list(fig.data[1].y) == [r.weights_bytes / 1e9 for r in rows if r.dtype == "bfloat16"]
    assert fig.layout.title.text and "GB" in fig.layout.yaxis.title.text and fig.layout.yaxis.type == "log"
    t4 = next(a for a in fig.layout.annotations if "T4" in a.text)
    # on a log axis plotly places annotations at log10(y): the T4's line sits at what torch sees on it
    assert t4.y == pytest.approx(math.log10(bsl.hardware.GPUS["T4"].usable_bytes / 1e9))


def test_weights_table_crosses_dtypes_and_quantizations():
    rows = bsl.weights_table(["llama-3.2-1b"], dtypes=["bfloat16"], quantizations=[None, "nf4"])
    assert [(r.quantization, r.weights_bytes) for r in rows] == [
        (None, bsl.weights_bytes("llama-3.2-1b")), ("nf4", bsl.weights_bytes("llama-3.2-1b", quantization="nf4"))]
    # the table shows the planner's verdict: 1B in bf16 (2.47 GB) fits a T4's 15.83 GB, 405B (811 GB) does not
    html = views.weights_table_html(bsl.weights_table(["llama-3.2-1b", "llama-3.1-405b"], dtypes=["bfloat16"])).data
    cells = [row.split("<td>")[1:] for row in html.split("<tr>")[2:]]
    assert [c[-1].split("<")[0] for c in cells] == ["yes", "no"]


def test_estimate_stack_stacks_the_four_parts():
    ests = [bsl.estimate("llama-3.1-8b", seq_len=n) for n in (1024, 131072)]
    fig = views.estimate_stack(ests)
    bars = [t for t in fig.data if t.type == "bar"]
    assert [t.name for t in bars][:2] == ["weights", "KV cache"]
    assert bars[1].y[1] == ests[1].kv_cache_bytes / 1e9
    assert fig.layout.barmode == "stack" and fig.layout.yaxis.title.text == "memory (GB)"


def test_comparison_table_and_ratio():
    c = Comparison("weights", 1000, 1100, "track()")
    assert c.ratio == 1.1 and c.matches(0.1) and not c.matches(0.05)
    html = views.comparison_table([c], tolerance=0.05).data
    assert "1.100" in html and "<td>no</td>" in html


def test_weights_vs_formats_grid_is_the_representable_values():
    w = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 0.02
    fig = views.weights_vs_formats(w, dtypes=["float8_e4m3fn"])
    grid = fig.data[1]
    low, high = float(w.min()), float(w.max())
    assert tuple(grid.x) == bits.representable("float8_e4m3fn", low, high)
    assert "mean rel. error" in grid.name and fig.layout.title.text


def test_rounding_stats_int8_without_a_scale_zeroes_small_weights():
    w = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 0.02
    assert bits.rounding_stats(w, "int8").flushed_to_zero == 1.0
    assert bits.rounding_stats(w, "float32").changed == 0.0
    bf16, e4m3 = bits.rounding_stats(w, "bfloat16"), bits.rounding_stats(w, "float8_e4m3fn")
    assert bf16.mean_relative_error < e4m3.mean_relative_error
    with pytest.raises(ValueError, match="too many to list"):
        bits.representable("float32", 0, 1)


def test_formats_and_rounding_tables():
    assert "<td>1 / 8 / 7</td>" in views.formats_table(["bfloat16"]).data  # sign / exponent / mantissa of bf16
    # 0.3 and 0.7 round to 0 and 1 in int8 (no scale): 2 distinct values left, one of two non-zeros became 0
    stats = bits.rounding_stats(torch.tensor([0.3, 0.7]), "int8")
    row = views.rounding_table([stats]).data.split("<tbody>")[1]
    assert [c.split("<")[0] for c in row.split("<td>")[1:]][:2] == ["int8", "2"]
    assert "<td>50.00%</td>" in row


def test_check_weights_bytes_recognises_common_mistakes():
    # the full set of slips, hints and reveals is in tests/test_exercises.py
    check = bsl.exercises.check_weights_bytes
    exact = bsl.weights_bytes("llama-3.2-1b")
    assert check(exact, "llama-3.2-1b").correct
    unanswered = check(None, "llama-3.2-1b")
    assert not unanswered.answered and f"{exact:,}" not in unanswered.message  # a hint, not the answer
    untied = check(exact + 128256 * 2048 * 2, "llama-3.2-1b")
    assert not untied.correct and "ties it to the input embedding" in untied.slip
    no_gqa = check(exact + 16 * 2 * 2048 * (32 - 8) * 64 * 2, "llama-3.2-1b")
    assert "grouped-query attention" in no_gqa.slip
    assert "4 bytes per parameter" in check(exact * 2, "llama-3.2-1b").slip
    assert check("2.4e9", "llama-3.2-1b").slip == "not a number"


def test_check_value():
    gap = bits.spacing("bfloat16", [256]).gaps[0]
    assert gap == 2.0
    assert bsl.exercises.check_value(2, gap, why="w", hint="h").correct
    assert not bsl.exercises.check_value(0.5, gap, why="w", hint="h").correct
    assert "Hint: h" in str(bsl.exercises.check_value(None, gap, why="w", hint="h"))
