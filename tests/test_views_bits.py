"""The bit-layout widget and the precision chart, tested without a browser: build them, read traits and figure data."""

from __future__ import annotations

import json
import math

import plotly.graph_objects as go
import pytest

from bigsmall_lab.bits import compose, decompose, spacing
from bigsmall_lab.views import DEFAULT_FORMATS, BitLayout, precision_chart


def row(widget: BitLayout, dtype: str) -> dict:
    return next(r for r in widget.rows if r["dtype"] == dtype)


# --- BitLayout ----------------------------------------------------------------------------------

def test_rows_show_70000_in_every_default_format():
    w = BitLayout(value="70000")
    assert [r["dtype"] for r in w.rows] == list(DEFAULT_FORMATS)
    assert row(w, "float16")["kind"] == "inf" and row(w, "float16")["value"] == "inf"
    assert float(row(w, "bfloat16")["value"]) == 70144.0
    assert row(w, "bfloat16")["error"].startswith("+144 ")
    assert row(w, "float32")["error"] == "exact" and row(w, "float32")["exact"]
    assert row(w, "float8_e4m3fn")["value"] == "448"  # saturates: no inf in e4m3fn
    assert w.error == ""


def test_note_says_why_a_value_changed_so_much():
    # 70000 is beyond fp16's 65504 (-> inf), e4m3fn's 448 and int8's 127 (neither has an inf: they clamp)
    w = BitLayout(value="70000")
    assert {r["dtype"]: r["note"] for r in w.rows} == {
        "float32": "", "float16": "overflow to inf", "bfloat16": "",
        "float8_e4m3fn": "saturated at the largest value", "float8_e5m2": "overflow to inf",
        "int8": "saturated at the largest value"}
    assert row(w, "float8_e4m3fn")["kind"] == "normal"  # the kind alone would not tell
    w.value = "-70000"
    assert row(w, "float16")["note"] == "overflow to -inf"
    assert row(w, "int8")["note"] == "saturated at the most negative value" and row(w, "int8")["value"] == "-128"
    w.value = "1e-8"  # below fp16's smallest subnormal 2**-24 / 2: rounds to 0
    assert row(w, "float16")["note"] == "underflow to 0" and row(w, "float32")["note"] == ""
    assert row(w, "int8")["note"] == "rounded to 0"  # an integer has no underflow, just rounding
    w.value = "-1e-8"
    assert row(w, "float16")["note"] == "underflow to -0"
    w.value = "65510"  # past fp16's largest value, but nearer to it than to inf: IEEE rounds down
    assert row(w, "float16")["value"] == "65504" and row(w, "float16")["note"] == "rounded to the largest value"
    w.value = "inf"  # inf kept as inf is exact; e4m3fn has none and saturates
    assert row(w, "float16")["note"] == "" and row(w, "float8_e4m3fn")["note"] == "saturated at the largest value"
    w.value = "nan"
    assert row(w, "float16")["note"] == "" and row(w, "int8")["note"] == "int8 has no nan: stored as 0"
    w.value = "1.1"  # an ordinary rounding error needs no note
    assert all(r["note"] == "" for r in w.rows)


def test_flipped_row_has_no_note_but_the_others_do():
    w = BitLayout(value="2", dtypes=["float16", "float8_e4m3fn", "int8"])  # fp16 2 = 0 10000 0000000000
    w.flip_bit("float16", 2)  # exponent 16 -> 24: 2 * 2**8
    assert w.value == "512"
    assert {r["dtype"]: r["note"] for r in w.rows} == {
        "float16": "",  # the clicked pattern holds exactly what it shows
        "float8_e4m3fn": "saturated at the largest value", "int8": "saturated at the largest value"}


def test_rows_are_what_decompose_says():
    w = BitLayout(value="0.1")
    for r in w.rows:
        b = decompose(0.1, r["dtype"])
        assert (r["bits"], r["kind"], r["sign"], r["exponent"], r["mantissa"]) == (
            b.bits, b.kind, b.sign, b.exponent, b.mantissa)
        assert float(r["value"]) == b.value
        assert len(r["fields"]) == len(r["bits"])


def test_field_colours_follow_the_layout():
    w = BitLayout(value="1", dtypes=["bfloat16", "int8", "uint8"])
    assert row(w, "bfloat16")["fields"] == ["sign"] + ["exponent"] * 8 + ["mantissa"] * 7
    assert row(w, "int8")["fields"] == ["sign"] + ["integer"] * 7
    assert row(w, "uint8")["fields"] == ["integer"] * 8


def test_rows_are_json_without_inf_or_nan():
    # the widget protocol is JSON: inf and nan must travel as text
    for text in ("inf", "-inf", "nan", "1e300", "-0.0"):
        json.dumps(BitLayout(value=text).rows, allow_nan=False)


def test_setting_value_recomputes_rows():
    w = BitLayout(value="70000")
    w.value = "1 + 2**-8"
    assert row(w, "bfloat16")["value"] == "1"
    assert float(row(w, "float16")["value"]) == 1 + 2**-8
    w.value = "-0.0"
    assert row(w, "float16")["bits"] == "1" + "0" * 15 and row(w, "float16")["value"] == "-0"


def test_flip_bit_uses_compose_and_updates_every_row():
    w = BitLayout(value="70000")
    before = row(w, "float16")["bits"]  # 0 11111 0000000000: inf
    w.flip_bit("float16", 1)  # clear the exponent's top bit
    after = "0" + "0" + before[2:]
    assert row(w, "float16")["bits"] == after
    assert float(w.value) == compose(after, "float16") == 1.0
    assert float(row(w, "bfloat16")["value"]) == 1.0  # other rows follow the new value
    w.flip_bit("fp16", 15)  # the lowest mantissa bit: one ULP
    assert float(w.value) == 1 + 2**-10


def test_flipped_nan_keeps_its_payload_bits():
    w = BitLayout(value="inf", dtypes=["float16"])
    w.flip_bit("float16", 15)
    assert row(w, "float16")["bits"] == "0111110000000001" and row(w, "float16")["kind"] == "nan"
    assert w.value == "nan"


def test_a_click_message_flips_and_a_bad_one_shows_an_error():
    w = BitLayout(value="1", dtypes=["int8"])
    w._on_msg(w, {"type": "flip", "dtype": "int8", "index": 0}, [])  # what the browser sends
    assert row(w, "int8")["bits"] == "10000001" and w.value == "-127"
    w._on_msg(w, {"type": "flip", "dtype": "int8", "index": 8}, [])
    assert w.error.startswith("index 8 is not a bit of int8")
    w._on_msg(w, {"type": "flip", "dtype": "float16", "index": 0}, [])
    assert w.error.startswith("dtype 'float16' is not shown")


def test_invalid_value_shows_an_error_and_keeps_the_rows():
    w = BitLayout(value="70000")
    rows = w.rows
    w.value = "7OOOO"  # no exception may come out of the observer
    assert w.error.startswith("text '7OOOO' is not a number")
    assert w.rows == rows
    w.value = "1"
    assert w.error == "" and row(w, "float32")["value"] == "1"


def test_format_selector_chooses_rows():
    w = BitLayout(value="3", dtypes=["bf16", "fp16"])
    assert w.dtypes == ["bfloat16", "float16"]
    assert [r["dtype"] for r in w.rows] == ["bfloat16", "float16"]
    w.dtypes = ["uint8"]
    assert [r["dtype"] for r in w.rows] == ["uint8"]
    assert set(DEFAULT_FORMATS) <= set(w.choices)
    with pytest.raises(ValueError, match=r"^dtypes 'bf32' is not known.*; use one of: float32"):
        w.dtypes = ["bf32"]


def test_flip_bit_errors_name_the_argument():
    w = BitLayout(value="1", dtypes=["float16"])
    with pytest.raises(ValueError, match="^index 16 is not a bit of float16; use 0"):
        w.flip_bit("float16", 16)
    with pytest.raises(ValueError, match="^dtype 'bf16' is not shown"):
        w.flip_bit("bf16", 0)
    with pytest.raises(ValueError, match="^dtype 'nf4' is not allowed here"):
        w.flip_bit("nf4", 0)


def test_widget_ships_its_javascript_and_css():
    w = BitLayout()
    assert "export default" in w._esm and "model.send" in w._esm
    assert "row.note" in w._esm  # the note is drawn next to the kind
    assert ".bsl-bit" in w._css and ".bsl-note" in w._css
    # a block per format, no wide grid: nothing may need a horizontal scroll in a ~700 px column
    assert "max-content" not in w._css and "overflow-x" not in w._css


# --- precision chart ----------------------------------------------------------------------------

def test_precision_chart_has_one_trace_per_format_log_axes_and_titles():
    fig = precision_chart()
    assert isinstance(fig, go.Figure)
    assert len(fig.data) == len(DEFAULT_FORMATS)
    assert [t.meta for t in fig.data] == list(DEFAULT_FORMATS)  # the trace's dtype, for code that reads the figure
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert fig.layout.title.text and fig.layout.xaxis.title.text == "magnitude |x|"
    assert fig.layout.yaxis.title.text.startswith("gap to next representable value")


def test_each_line_ends_at_the_largest_finite_value_with_a_marker():
    fig = precision_chart(["float16", "bfloat16", "float8_e4m3fn", "int8"])
    for trace, top in zip(fig.data, (65504.0, spacing("bf16", []).max_finite, 448.0, 127.0)):
        assert trace.x[-1] == top and max(trace.x) == top
        assert trace.marker.size[-1] > 0 and not any(trace.marker.size[:-1])
        assert trace.name.endswith(f"max {top:.0f}" if top < 1e6 else "max 3.39e+38")
        assert all(y > 0 and math.isfinite(y) for y in trace.y)


def test_chart_shows_bfloat16_trading_precision_for_range():
    fig = precision_chart(["float16", "bfloat16"])
    fp16, bf16 = ({x: y for x, y in zip(t.x, t.y)} for t in fig.data)
    shared = [x for x in fp16 if x in bf16 and x >= 2.0**-14]  # both normal there
    assert shared and all(bf16[x] == fp16[x] * 8 for x in shared)  # 10 - 7 = 3 fewer mantissa bits
    assert max(bf16) > 1e38 and max(fp16) == 65504.0


def test_chart_checks_its_dtypes():
    with pytest.raises(ValueError, match="^dtypes 'nf4' is not allowed here"):
        precision_chart(["float16", "nf4"])
    with pytest.raises(ValueError, match=r"^x_range \(10, 1\) is not a range of magnitudes"):
        precision_chart(x_range=(10, 1))


def test_chart_opens_on_the_small_formats_and_says_where_the_big_ones_go():
    fig = precision_chart()
    lo, hi = fig.layout.xaxis.range
    assert (lo, hi) == (-8.0, 6.0)  # log10: 1e-8 to 1e6
    ends = {t.meta: t.x[-1] for t in fig.data}
    # int8, fp8 and fp16 end inside the view; their diamonds at 127, 448, 57344, 65504 spread
    # over the right half instead of the first fifth of a 1e-9..1e39 axis
    assert all(lo < math.log10(ends[d]) < hi for d in ("float16", "float8_e4m3fn", "float8_e5m2", "int8"))
    assert all(math.log10(ends[d]) > hi for d in ("float32", "bfloat16"))  # these leave at the right edge
    (note,) = fig.layout.annotations
    assert note.text.startswith("fp32 and bf16 go on to 3.4 × 10³⁸ →")
    # the y axis fits the gaps drawn in view (bf16 at 1e6: 8192; fp32 at 1e-8: 2**-51), not fp32's 2e31
    y_lo, y_hi = fig.layout.yaxis.range
    for t in fig.data:
        shown = [g for m, g in zip(t.x, t.y) if 1e-8 <= m <= 1e6]
        assert shown and all(y_lo < math.log10(g) < y_hi for g in shown), t.meta
    assert y_hi < 5 and y_lo > -17


def test_chart_is_readable_in_a_notebook():
    fig = precision_chart()
    assert 400 <= fig.layout.height <= 500
    assert fig.layout.title.subtitle.text and fig.layout.title.subtitle.font.size >= 13
    assert fig.layout.xaxis.exponentformat == fig.layout.yaxis.exponentformat == "power"
    assert fig.layout.legend.orientation == "h"  # below the plot: the lines get the full width


def test_chart_without_x_range_shows_every_line_to_its_end():
    fig = precision_chart(["float16", "bfloat16"], x_range=None)
    assert fig.layout.xaxis.range is None and fig.layout.yaxis.range is None  # plotly autoranges
    assert not fig.layout.annotations
    fig = precision_chart(["float16", "int8"])  # nothing goes beyond 1e6: no note
    assert not fig.layout.annotations
