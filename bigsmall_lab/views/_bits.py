"""Views over :mod:`bigsmall_lab.bits`: the bit-layout widget and the range-and-precision chart.

Both only draw what ``bits.decompose`` / ``bits.from_bits`` / ``bits.spacing`` return; the
JavaScript of the widget never does float arithmetic, it sends clicks to Python.
"""

from __future__ import annotations

import html
import math
import numbers
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import anywidget
import plotly.graph_objects as go
import traitlets

from bigsmall_lab._dtypes import dtype_name
from bigsmall_lab._errors import LabError
from bigsmall_lab.bits import (
    FORMATS, FloatBits, decompose, format_info, from_bits, neighbours, parse_value, range_note, spacing, value_text,
)
from bigsmall_lab.views._snapshot import controls_html, with_snapshot

__all__ = ["DEFAULT_FORMATS", "BitLayout", "precision_chart"]

#: Rows the widget and the chart show unless told otherwise.
DEFAULT_FORMATS: tuple[str, ...] = ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "int8")

# The short names a learner meets in papers, shown next to torch's names.
_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16", "float8_e4m3fn": "fp8 e4m3",
          "float8_e5m2": "fp8 e5m2", "int8": "int8", "uint8": "uint8"}
# One colour per format, shared by the chart's lines (Okabe-Ito, readable by colour-blind eyes).
_COLOURS = {"float32": "#000000", "float16": "#0072B2", "bfloat16": "#D55E00", "float8_e4m3fn": "#009E73",
            "float8_e5m2": "#CC79A7", "int8": "#E69F00", "uint8": "#56B4E9"}
_HERE = pathlib.Path(__file__).parent


def _label(name: str) -> str:
    return name if _SHORT[name] == name else f"{name} ({_SHORT[name]})"


def _error_text(b: FloatBits) -> str:
    if b.error == 0:
        return "exact"
    if math.isnan(b.error) or math.isinf(b.error):
        return f"{b.error:+}"  # '+inf': the format lost the value (overflow, saturation from inf, nan)
    text = f"{b.error:+.3g}"
    if math.isfinite(b.given) and b.given != 0:
        text += f" ({100 * b.error / abs(b.given):+.3g}%)"
    return text


def _fields(name: str) -> list[str]:
    info = format_info(name)
    value_field = "mantissa" if info.is_float else "integer"
    return ["sign"] * info.sign_bits + ["exponent"] * info.exponent_bits + [value_field] * info.mantissa_bits


def _detail(b: FloatBits) -> str:
    info = format_info(b.dtype)
    if not info.is_float:
        if info.sign_bits:
            return f"sign bit {b.sign} (worth {-(2 ** info.mantissa_bits)}) + value bits {b.mantissa}"
        return f"value bits {b.mantissa}"
    return (f"sign {b.sign}, exponent {b.exponent} (bias {info.bias}), "
            f"mantissa {b.mantissa} of {2 ** info.mantissa_bits}")


def _near_text(x: float) -> str:
    """A neighbour as the widget prints it: '–' where the format has nothing there."""
    return "–" if math.isnan(x) else value_text(x)


def _row(b: FloatBits) -> dict[str, Any]:
    # Floats travel as text: JSON (the widget protocol) has no inf or nan.
    # below / above / gap / decimal: float.exposed's view of the stored value (bits.neighbours).
    near = neighbours(b.value, b.dtype)
    return {"dtype": b.dtype, "label": _label(b.dtype), "short": _SHORT[b.dtype], "bits": b.bits, "fields": _fields(b.dtype),
            "value": value_text(b.value), "error": _error_text(b), "exact": b.error == 0, "kind": b.kind,
            "note": range_note(b), "sign": b.sign, "exponent": b.exponent, "mantissa": b.mantissa, "detail": _detail(b),
            "below": _near_text(near.below), "above": _near_text(near.above), "gap": _near_text(near.gap),
            "decimal": near.exact}


class BitLayout(anywidget.AnyWidget):
    """One value, shown bit by bit in several formats side by side; click a bit to flip it.

    Everything is computed in Python by :mod:`bigsmall_lab.bits`; the browser only draws ``rows``
    and sends clicks back, so the widget also works (and is tested) without a browser:

    >>> w = BitLayout(value="70000")
    >>> [(r["dtype"], r["value"], r["kind"]) for r in w.rows][1:3]
    [('float16', 'inf', 'inf'), ('bfloat16', '70144', 'normal')]
    >>> w.flip_bit("float16", 1)  # clear the top exponent bit of float16's inf
    >>> w.value, w.rows[1]["bits"]
    ('1', '0011110000000000')
    >>> w.value = "7OOOO"
    >>> w.error.startswith("text '7OOOO' is not a number")
    True
    """

    _esm = _HERE / "_bitlayout.js"
    _css = _HERE / "_bitlayout.css"

    value = traitlets.Unicode("70000", help="the number as typed: 70000, 1 + 2**-8, -0.0, nan").tag(sync=True)
    dtypes = traitlets.List(traitlets.Unicode(), default_value=list(DEFAULT_FORMATS),
                            help="formats shown, one row each").tag(sync=True)
    choices = traitlets.List(traitlets.Unicode(), default_value=list(FORMATS),
                             help="formats the selector offers").tag(sync=True)
    rows = traitlets.List(traitlets.Dict(), help="one dict per shown format, computed by bits.decompose").tag(sync=True)
    error = traitlets.Unicode("", help="why the last value could not be shown; empty when all is well").tag(sync=True)

    def __init__(self, value: str | float = "70000", dtypes: Sequence[str] = DEFAULT_FORMATS, **kwargs: Any) -> None:
        if not isinstance(value, str):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise LabError.bad("value", value, "type a number or its text, e.g. 70000 or '1 + 2**-8'",
                                   verb="is not a number")
            try:
                value = value_text(float(value))
            except OverflowError:  # an int beyond float64 (10**400): every format sees an infinity
                value = "inf" if value > 0 else "-inf"
        if isinstance(dtypes, (str, bytes)) or not isinstance(dtypes, Iterable):
            raise LabError.bad("dtypes", dtypes, "use a list of formats, e.g. ['float16', 'bfloat16']",
                               verb="is not a list")
        self._refreshing = True  # the flip path sets value and rows itself
        super().__init__(value=value, dtypes=list(dtypes), **kwargs)
        self._refreshing = False
        self.on_msg(self._on_msg)
        self._refresh()

    @traitlets.validate("dtypes")
    def _check_dtypes(self, proposal: dict[str, Any]) -> list[str]:
        names = [dtype_name(d, allowed=FORMATS, argument="dtypes") for d in proposal["value"]]
        return list(dict.fromkeys(names))  # canonical names, each once, in the given order

    @traitlets.observe("value", "dtypes")
    def _on_change(self, change: dict[str, Any]) -> None:
        if not self._refreshing:
            self._refresh()

    def _refresh(self) -> None:
        try:
            number = parse_value(self.value)
        except ValueError as exc:  # a typo is shown in the widget, never raised out of an observer
            self.error = str(exc)
            return
        self.rows = [_row(decompose(number, name)) for name in self.dtypes]
        self.error = ""

    def flip_bit(self, dtype: str, index: int) -> None:
        """Flip bit ``index`` (0 = leftmost, the sign bit) of the ``dtype`` row.

        The flipped pattern's value becomes the widget's value and every row is recomputed from
        it; the clicked row keeps exactly the flipped pattern (a nan keeps its payload bits).
        """
        name = dtype_name(dtype, allowed=FORMATS)
        row = next((r for r in self.rows if r["dtype"] == name), None)
        if row is None:
            raise LabError.bad("dtype", dtype, f"add it to dtypes or use one of: {', '.join(self.dtypes)}",
                               verb="is not shown")
        width = len(row["bits"])
        if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index < width:
            raise LabError.bad("index", index, f"use 0 (the leftmost bit) to {width - 1}", verb=f"is not a bit of {name}")
        index = int(index)
        old = row["bits"]
        flipped = from_bits(old[:index] + ("1" if old[index] == "0" else "0") + old[index + 1:], name)
        rows = [_row(flipped) if name == other else _row(decompose(flipped.value, other)) for other in self.dtypes]
        self._refreshing = True
        try:
            self.value = value_text(flipped.value)
        finally:
            self._refreshing = False
        self.rows = rows
        self.error = ""

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        # The live widget, plus a static table of its rows for a notebook stored without widget state.
        return with_snapshot(super()._repr_mimebundle_(**kwargs), self._snapshot_html())

    def _snapshot_html(self) -> str:
        """The rows as an html table: each format's bits (fields apart), stored value and error."""
        head = "".join(f"<th>{h}</th>" for h in ("format", "bits (sign | exponent | mantissa)", "stored value",
                                                  "error", "note"))
        body = []
        for r in self.rows:
            groups: list[str] = []
            for bit, field in zip(r["bits"], r["fields"]):
                if groups and groups[-1][0] == field:
                    groups[-1] = (field, groups[-1][1] + bit)
                else:
                    groups.append((field, bit))
            bits = " | ".join(g for _, g in groups)
            cells = (r["label"], bits, r["value"], r["error"], r["note"])
            body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
        error = f"<p>{html.escape(self.error)}</p>" if self.error else ""
        return (controls_html("BitLayout", [("value", self.value)]) + error
                + f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")

    def _on_msg(self, widget: Any, content: dict[str, Any], buffers: list[bytes]) -> None:
        if not isinstance(content, dict) or content.get("type") != "flip":
            return
        try:
            self.flip_bit(content.get("dtype", ""), content.get("index"))
        except LabError as exc:  # a message from the page must not crash the kernel's comm
            self.error = str(exc)


def _max_text(x: float) -> str:
    return f"{x:.0f}" if x < 1e6 else f"{x:.3g}"


def _power_text(x: float) -> str:
    """3.4e38 -> '3.4 × 10³⁸': how the chart's axes write large numbers."""
    mantissa, exponent = f"{x:.2g}".split("e")
    return f"{mantissa} × 10" + str(int(exponent)).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))


def _is_range(x_range: Any) -> bool:
    if not isinstance(x_range, (tuple, list)) or len(x_range) != 2:
        return False
    low, high = x_range
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in (low, high)):
        return False
    return 0 < low < high and math.isfinite(high)


#: Magnitudes the chart shows until zoomed out: the small formats' whole range, subnormals included.
_X_RANGE: tuple[float, float] = (1e-8, 1e6)


def precision_chart(dtypes: Sequence[str] = DEFAULT_FORMATS, magnitudes: Sequence[float] | None = None,
                    x_range: tuple[float, float] | None = _X_RANGE) -> go.Figure:
    """Log-log chart of the gap between neighbouring values against magnitude, one line per format.

    Each line is a staircase from :func:`bigsmall_lab.bits.spacing` (the gap doubles at every power
    of two) that ends, with a marker, at the format's largest finite value. bfloat16's line runs
    2**16 times above float32's but just as far right: it trades precision for range.

    ``magnitudes`` defaults to every power of two from 2**-30 to 2**127. ``x_range`` is the part
    shown before zooming out, by default 1e-8 to 1e6, where int8, fp8 and fp16 end; lines that go
    further (fp32 and bf16 to 3.4e38) leave at the right edge with a note. ``None`` shows everything.

    >>> fig = precision_chart(["float16", "bfloat16"])
    >>> [t.name for t in fig.data], fig.layout.xaxis.type, fig.layout.yaxis.type
    (['float16 (fp16), max 65504', 'bfloat16 (bf16), max 3.39e+38'], 'log', 'log')
    >>> fig.data[0].x[-1], fig.data[0].y[-1]  # float16 ends at 65504, where neighbours are 32 apart
    (65504.0, 32.0)
    >>> fig.layout.xaxis.range  # log10 of 1e-8 and 1e6: bf16 leaves at the right edge, with a note
    (-8.0, 6.0)
    >>> fig.layout.annotations[0].text.split("<br>")[0]
    'bf16 goes on to 3.4 × 10³⁸ →'
    """
    if isinstance(dtypes, (str, bytes)) or not isinstance(dtypes, Iterable):
        raise LabError.bad("dtypes", dtypes, "use a list of formats, e.g. ['float16', 'bfloat16']", verb="is not a list")
    names = list(dict.fromkeys(dtype_name(d, allowed=FORMATS, argument="dtypes") for d in dtypes))
    if magnitudes is None:
        magnitudes = [2.0**k for k in range(-30, 128)]
    if x_range is not None and not _is_range(x_range):
        raise LabError.bad("x_range", x_range, f"use (low, high) with 0 < low < high, e.g. {_X_RANGE}, or None to "
                           "show every line to its end", verb="is not a range of magnitudes")
    fig = go.Figure()
    shown_gaps: list[float] = []  # the gaps drawn inside x_range, to fit the y axis to them
    beyond: list[tuple[str, float]] = []  # (name, largest value) of the lines that leave at the right
    for name in names:
        s = spacing(name, magnitudes)
        # keep what a log axis can draw and the format can hold, then end exactly at the largest value
        points = sorted({(m, g) for m, g in zip(s.magnitudes, s.gaps) if 0 < m < s.max_finite and not math.isnan(g)})
        points.append((s.max_finite, s.gap_at_max))
        x, y = [p[0] for p in points], [p[1] for p in points]
        if x_range is not None:
            # a step drawn at x runs right until the next point, so the last point left of the view counts too
            first = max([i for i, m in enumerate(x) if m <= x_range[0]], default=0)
            shown_gaps += [g for m, g in zip(x[first:], y[first:]) if m <= x_range[1]]
            if s.max_finite > x_range[1]:
                beyond.append((name, s.max_finite))
        # the largest value goes in the legend: text labels at the line ends would overlap
        fig.add_trace(go.Scatter(
            x=x, y=y, name=f"{_label(name)}, max {_max_text(s.max_finite)}", meta=name, mode="lines+markers",
            line={"shape": "hv", "color": _COLOURS[name], "width": 2.5},
            marker={"size": [0] * (len(x) - 1) + [12], "symbol": "diamond", "color": _COLOURS[name],
                    "line": {"width": 1, "color": "white"}},
            hovertemplate=f"{_label(name)}<br>|x| = %{{x:.4g}}<br>gap to next value = %{{y:.4g}}<extra></extra>",
        ))
    xaxis: dict[str, Any] = {"type": "log", "title": {"text": "magnitude |x|"}, "exponentformat": "power"}
    yaxis: dict[str, Any] = {"type": "log", "title": {"text": "gap to next representable value<br>(units of x)"},
                             "exponentformat": "power"}
    if x_range is not None:
        xaxis["range"] = (math.log10(x_range[0]), math.log10(x_range[1]))
        if shown_gaps:
            yaxis["range"] = (math.log10(min(shown_gaps)) - 0.5, math.log10(max(shown_gaps)) + 0.5)
        # a label every 2 (x) and 4 (y) decades: every decade would crowd a notebook-wide chart
        xaxis["dtick"], yaxis["dtick"] = 2, 4
    if beyond:  # bottom right, under fp32's line: the one corner no line reaches
        names_text = " and ".join(_SHORT[n] for n, _ in beyond)
        fig.add_annotation(
            text=f"{names_text} go{'es' if len(beyond) == 1 else ''} on to {_power_text(max(t for _, t in beyond))} →"
                 f"<br>(double-click the chart to see all)", x=1, xref="paper", xanchor="right", y=0.02,
            yref="paper", yanchor="bottom", align="right", showarrow=False, font={"size": 13})
    fig.update_layout(
        title={"text": "Range and precision: bf16 reaches fp32's range, with bigger gaps",
               "y": 0.98, "yanchor": "top",  # at the top, not mid-margin: the plot gets the space
               "subtitle": {"text": "higher line = coarser steps (less precision); longer line = larger numbers "
                                    "(more range);<br>each line ends, with a diamond, at the format's largest "
                                    "finite value", "font": {"size": 13}}},
        xaxis=xaxis, yaxis=yaxis,
        legend={"title": {"text": "format"}, "orientation": "h", "x": 0, "xanchor": "left",
                "y": -0.2, "yanchor": "top"},
        template="plotly_white", height=460, margin={"t": 90, "b": 10, "r": 20},
    )
    return fig
