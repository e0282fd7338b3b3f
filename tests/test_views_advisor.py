"""Lesson 09's views: the advisor's options as a table with a memory bar per device, one option's code and cost,
the FitWidget, and the chart of planned against measured peaks. Each is checked against the advisor's own
numbers (the view computes nothing), and built without a browser."""

from __future__ import annotations

import html
import re

import pytest

from bigsmall_lab import advisor, views
from bigsmall_lab._errors import LabError
from bigsmall_lab.views import _advisor

GB = 10**9


@pytest.fixture(scope="module")
def t4() -> list[advisor.Option]:
    # Llama 3.1 8B on a T4 with no CPU RAM, at 8,192 tokens: bf16 (16.06 GB of weights) cannot fit 15.83 GB.
    return advisor.fit("llama-3.1-8b", advisor.machine("T4", cpu_ram=0), seq_len=8192)


def rows(table_html: str) -> list[str]:
    return re.findall(r"<tr>(.*?)</tr>", table_html.split("<tbody>")[1])


@pytest.mark.parametrize("used, capacity, width, bar", [
    (0, 100, 10, "░" * 10),          # nothing used: all free
    (1, 100, 10, "█" + "░" * 9),     # a little used still shows one cell
    (100, 100, 10, "█" * 10),        # exactly full fits
    (101, 100, 10, "█" * 10 + "▓"),  # one byte over shows one cell past the capacity
    (300, 100, 4, "████▓▓▓▓"),       # past twice the capacity: capped at twice the width
    (5, 0, 4, "▓" * 8),              # a device that holds nothing: all past it
])
def test_memory_bar(used, capacity, width, bar):
    assert _advisor.memory_bar(used, capacity, width) == bar


def test_fit_table_draws_each_option_from_its_own_bytes(t4):
    table = views.fit_table(t4).data
    body = rows(table)
    assert len(body) == len(t4)
    for row, option in zip(body, t4):
        assert html.escape(option.label) in row
        for device, used in option.bytes_per_device.items():
            capacity = option.capacity[device]
            assert _advisor.memory_bar(used, capacity) in row
            assert f"{used / GB:,.2f} / {capacity / GB:,.2f} GB" in row
        assert ("yes" in row) == option.fits
        assert f"{option.speed.time_ratio:.2f}x" in row
    # the bf16 option is short by exactly what the advisor says
    bf16 = next(o for o in t4 if o.quantization is None and o.placement == "gpu" and o.cache == "dynamic")
    assert f"short {bf16.short_by[0] / GB:,.2f} GB on GPU 0" in table
    # every measured cost names its model and where it was measured
    for option in t4:
        for part in option.quality.parts:
            assert html.escape(part.measured) in table and (not part.model or part.model in table)
    assert "Ranked:" in table


def test_fit_table_limit_and_unranked(t4):
    table = views.fit_table(t4, limit=3, ranked=False, title="three").data
    assert len(rows(table)) == 3 and f"{len(t4) - 3} more options not shown" in table
    assert "not ranked" in table and "<b>three</b>" in table


def test_small_models_are_drawn_in_mb():
    plan = advisor.fit("smollm2-135m-instruct", advisor.Machine((), 250 * 10**6), seq_len=128)
    table = views.fit_table(plan).data
    assert "memory per device (MB)" in table
    top = plan[0].bytes_per_device["cpu"]
    assert f"{top / 10**6:,.0f} / 250 MB" in table or f"{top / 10**6:,.2f} / 250" in table


@pytest.mark.parametrize("bad", ["llama-3.1-8b", None, 3, [], [1, 2]])
def test_fit_table_refuses_what_the_advisor_does_not_return(bad):
    with pytest.raises(LabError, match="options"):
        views.fit_table(bad)


def test_fit_option_shows_the_code_the_parts_and_each_cost(t4):
    best = next(o for o in t4 if o.fits)
    text = views.fit_option(best).data
    assert html.escape(best.code) in text
    for part in best.parts:
        assert html.escape(part.source) in text
    for cost in (*best.quality.parts, *best.speed.parts):
        assert html.escape(cost.measured) in text
    assert "measured on smollm2-135m-instruct" in text  # the quality figures name the model they were measured on
    with pytest.raises(LabError, match="option"):
        views.fit_option("int8")


def test_fit_run_chart_draws_planned_and_measured():
    fit_run = pytest.importorskip("bigsmall_lab.fit_run")
    runs = [fit_run.FitRun("int8 weights, dynamic cache, CPU", "cpu", 200 * 2**20, 210 * 2**20, 1.05, 0.02, 0.9,
                           1.0, 4, "code"),
            fit_run.FitRun("nf4 weights, dynamic cache, CPU", "cpu", 100 * 2**20, 95 * 2**20, 0.95, None, None,
                           1.0, 4, "code")]
    fig = views.fit_run_chart(runs)
    planned, measured = fig.data
    assert list(planned.y) == [200, 100] and list(measured.y) == [210, 95]
    assert list(planned.error_y.array) == pytest.approx([20, 10])  # the 10 % band
    assert list(measured.text) == ["x1.05", "x0.95"]
    with pytest.raises(LabError):
        views.fit_run_chart([])
    with pytest.raises(LabError, match="runs"):
        views.fit_run_chart("int8")


def test_widget_draws_the_advisors_answer_and_shows_a_picked_option():
    w = views.fit_widget("llama-3.1-8b", gpu="T4", seq_len=8192, cpu_ram_gb=0)
    expected = advisor.fit("llama-3.1-8b", advisor.machine("T4", cpu_ram=0), 8192)
    assert [o.label for o in w.options] == [o.label for o in expected]
    assert w.table.value == _advisor._table_html(expected, limit=w.limit, sources=False)
    assert w.option.label == expected[0].label and html.escape(expected[0].code) in w.detail.value
    picked = w.select(2)
    assert picked.label == expected[2].label and html.escape(expected[2].code) in w.detail.value
    # a control changes the machine: two GPUs of 24 GB for 70B, nothing fits, and the changes are named
    w.model.value = "llama-3.1-70b"
    w.gpu.value = "24GB"
    w.n_gpus.value = 2
    assert not any(o.fits for o in w.options) and "0 fit" in w.message.value
    for change in advisor.changes("llama-3.1-70b", advisor.machine("2x24GB", cpu_ram=0), 8192):
        assert html.escape(change.text) in w.message.value
    # the static snapshot names the controls and carries the table
    bundle = w._repr_mimebundle_()
    bundle = bundle[0] if isinstance(bundle, tuple) else bundle
    assert "llama-3.1-70b" in bundle["text/html"] and "<table>" in bundle["text/html"]
    with pytest.raises(LabError, match="index"):
        w.select(len(w.options))


def test_widget_shows_an_advisor_error_in_one_sentence(monkeypatch):
    w = views.fit_widget("llama-3.2-1b", gpu="L4", seq_len=1024)

    def refuse(*args, **kwargs):
        raise LabError("seq_len 1024 is past what the advisor plans")

    monkeypatch.setattr(_advisor, "fit", refuse)
    w.seq_len.value = 2048
    assert w.options == [] and w.option is None and w.table.value == ""
    assert "past what the advisor plans" in w.message.value


@pytest.mark.parametrize("kwargs, argument", [
    ({"model": "llama-9"}, "model"), ({"gpu": "T5"}, "gpu"), ({"n_gpus": 9}, "n_gpus"), ({"n_gpus": 0}, "n_gpus"),
    ({"seq_len": 1000}, "seq_len"), ({"batch_size": 3}, "batch_size"), ({"cpu_ram_gb": 20}, "cpu_ram_gb"),
])
def test_widget_refuses_a_value_no_control_offers(kwargs, argument):
    with pytest.raises(LabError, match=argument):
        views.fit_widget(**kwargs)
