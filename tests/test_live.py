"""The live memory chart, tested without a browser: its thread always stops, its figure holds the
samples, several charts do not interfere, an exception in a cell stops it, bad input is one sentence.

Timing is never asserted: tests wait for a number of samples (with a generous deadline), not a time.
"""

from __future__ import annotations

import threading
import time

import pytest

from bigsmall_lab._errors import LabError
from bigsmall_lab.views import LiveMemory

SAMPLER_THREAD = "bigsmall_lab-memory-sampler"


def sampler_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name == SAMPLER_THREAD and t.is_alive())


def wait_for_samples(live: LiveMemory, n: int, deadline_s: float = 30.0) -> None:
    end = time.monotonic() + deadline_s
    while len(live.samples) < n and time.monotonic() < end:
        time.sleep(0.01)
    assert len(live.samples) >= n, f"only {len(live.samples)} samples after {deadline_s} s"


def test_started_and_stopped_many_times_leaves_no_thread_alive():
    before = sampler_threads()
    live = LiveMemory(interval_s=0.01, device="cpu")
    for i in range(10):
        live.start()
        assert live.is_running
        live.start()  # a second start while running is a no-op, not a second thread
        assert sampler_threads() == before + 1
        wait_for_samples(live, 2 * (i + 1))
        live.stop()
        assert not live.is_running and sampler_threads() == before
    live.stop()  # twice is fine
    assert sampler_threads() == before


def test_the_figure_holds_every_sampled_point_relative_to_the_first():
    live = LiveMemory(interval_s=0.01, device="cpu")
    with live:
        wait_for_samples(live, 5)
        block = bytearray(32 * 2**20)  # touched below: RssAnon grows by about 32 MiB
        block[::4096] = b"\x01" * len(block[::4096])
        live.mark("32 MiB touched")
        wait_for_samples(live, len(live.samples) + 3)
    anon, file = live.figure.data
    assert anon.name.startswith("RssAnon") and file.name.startswith("RssFile")
    assert len(anon.x) == len(live.samples) == len(file.y)
    first = live.samples[0]
    assert list(anon.y) == [round((s.rss_anon - first.rss_anon) / 2**20, 2) for s in live.samples]
    assert anon.y[0] == 0.0 and max(anon.y) >= 16  # the block shows (at least half of it, allocator aside)
    assert [a.text for a in live.figure.layout.annotations] == ["32 MiB touched"]
    assert len(live.figure.layout.shapes) == 1
    static = live.to_figure()
    assert [list(t.y) for t in static.data] == [list(t.y) for t in live.figure.data]
    assert static.layout.annotations[0].text == "32 MiB touched"
    del block


def test_a_second_recording_continues_the_chart_after_a_gap():
    live = LiveMemory(interval_s=0.01, device="cpu")
    with live:
        wait_for_samples(live, 3)
    first = len(live.samples)
    with live:
        wait_for_samples(live, first + 3)
    x = list(live.figure.data[0].x)
    assert x.count(None) == 1 and len(x) == len(live.samples) + 1
    gap = x.index(None)
    assert x[gap + 1] > x[gap - 1]  # time runs on across the pause


def test_redraws_are_throttled_samples_are_not():
    live = LiveMemory(interval_s=0.01, device="cpu", redraw_s=3600)
    with live:
        wait_for_samples(live, 6)
    # the first sample draws, then nothing until stop() draws the last state
    assert live.redraws == 2 and len(live.samples) >= 6
    assert len(live.figure.data[0].x) == len(live.samples)


def test_the_block_raising_stops_the_chart():
    live = LiveMemory(interval_s=0.01, device="cpu")
    with pytest.raises(ZeroDivisionError):
        with live:
            wait_for_samples(live, 2)
            1 / 0
    assert not live.is_running


def test_an_exception_in_a_notebook_cell_stops_a_started_chart():
    # IPython's shared test shell: creating another InteractiveShell singleton would clash with the one
    # other tests (the per-cell logger's) get from the same helper.
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    before = sampler_threads()
    shell.user_ns["LiveMemory"] = LiveMemory
    shell.run_cell("live = LiveMemory(interval_s=0.01, device='cpu').start()")
    live = shell.user_ns["live"]
    shell.run_cell("x = 1")  # a cell that succeeds: the chart keeps running across cells
    assert live.is_running
    result = shell.run_cell("raise ValueError('a mistake')")
    assert result.error_in_exec is not None
    assert not live.is_running and sampler_threads() == before
    assert live._hook is None  # its hook is gone with it
    shell.run_cell("live.start()")
    result = shell.run_cell("print('unterminated)")  # a cell that does not even parse stops it too
    assert result.error_before_exec is not None and not live.is_running


def test_two_charts_do_not_interfere():
    a = LiveMemory(interval_s=0.01, device="cpu")
    b = LiveMemory(interval_s=0.01, device="cpu")
    with a:
        with b:
            wait_for_samples(a, 3)
            wait_for_samples(b, 3)
            a.mark("only on a")
        assert not b.is_running and a.is_running
        n = len(a.samples)
        wait_for_samples(a, n + 2)  # a goes on after b stopped
    assert [label for _, label in a.marks] == ["only on a"] and b.marks == []
    assert a.figure is not b.figure and len(b.figure.layout.annotations) == 0


def test_a_failing_redraw_stops_only_that_chart_and_is_kept():
    live = LiveMemory(interval_s=0.01, device="cpu")
    other = LiveMemory(interval_s=0.01, device="cpu").start()

    def broken() -> None:
        raise RuntimeError("figure broke")

    live._draw = broken  # what a frontend bug in the sampler thread would do
    live.start()
    end = time.monotonic() + 30
    while live.is_running and time.monotonic() < end:
        time.sleep(0.01)
    assert not live.is_running and other.is_running
    del live._draw  # the real one again, for stop()'s last draw
    live.stop()
    assert isinstance(live.error, RuntimeError) and "figure broke" in repr(live)
    other.stop()


@pytest.mark.parametrize("interval", [0, -0.2, float("nan"), "fast", True, None])
def test_an_interval_that_is_not_a_positive_number_is_one_sentence(interval):
    with pytest.raises(LabError) as err:
        LiveMemory(interval_s=interval)
    text = str(err.value)
    assert text.startswith("interval_s ") and "seconds > 0" in text and len(text) < 300 and "\n" not in text
    with pytest.raises(LabError) as err, pytest.warns(DeprecationWarning):
        LiveMemory(interval=interval)  # the old name: refused the same way, named as given
    assert str(err.value).startswith("interval ") and "seconds > 0" in str(err.value)


def test_the_old_keyword_interval_still_works_with_a_deprecation_warning():
    # One name across the package: interval_s, as measure.Sampler spells it; lessons written before keep running.
    with pytest.warns(DeprecationWarning, match="interval_s"):
        live = LiveMemory(interval=0.05, device="cpu")
    assert live.interval_s == 0.05 and not hasattr(live, "interval")
    assert LiveMemory(0.05, device="cpu").interval_s == 0.05  # the first positional argument is the same
    with pytest.raises(LabError, match="both interval_s and interval"):
        LiveMemory(interval_s=0.1, interval=0.05)


def test_a_device_that_cannot_be_measured_and_a_mark_before_start():
    with pytest.raises(LabError) as err:
        LiveMemory(device="tpu")
    assert "device" in str(err.value) and len(str(err.value)) < 300
    with pytest.raises(LabError, match="trim"):
        LiveMemory(trim="yes")
    live = LiveMemory(device="cpu")
    with pytest.raises(LabError, match="start"):
        live.mark("too early")
    with pytest.raises(LabError):
        live.start().mark("")
    live.stop()


def test_its_text_output_is_a_sentence_not_a_random_widget_id():
    live = LiveMemory(interval_s=0.05, device="cpu")
    bundle = live._repr_mimebundle_()
    assert bundle["text/plain"].startswith("LiveMemory(cpu, every 0.05 s, 0 samples")
    assert "application/vnd.jupyter.widget-view+json" in bundle


def test_running_the_same_cell_twenty_times_records_with_one_thread():
    # A learner re-runs `live = LiveMemory(...).start()`: each run rebinds `live`; the chart the previous run
    # left recording is stopped (its thread and its cell hook gone), not leaked.
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    before = sampler_threads()
    hooks_before = len(shell.events.callbacks["post_run_cell"])
    shell.user_ns["LiveMemory"] = LiveMemory
    shell.run_cell("import bigsmall_lab.views._live")  # as a lesson's first cell imports the views
    cell = "live = LiveMemory(interval_s=0.01, device='cpu').start()"
    charts = []
    for _ in range(20):
        shell.run_cell(cell)
        charts.append(shell.user_ns["live"])
    assert sampler_threads() == before + 1
    assert len(shell.events.callbacks["post_run_cell"]) == hooks_before + 1
    assert [c.is_running for c in charts] == [False] * 19 + [True]
    shell.run_cell("live.stop()")
    assert sampler_threads() == before
    with LiveMemory(interval_s=0.01, device="cpu") as a, LiveMemory(interval_s=0.01, device="cpu") as b:
        assert a.is_running and b.is_running  # two charts of one cell still record side by side


def test_an_older_colab_without_the_widget_manager_is_said_not_hidden(monkeypatch, capsys):
    import sys
    import types

    from bigsmall_lab.views import _live

    colab = types.ModuleType("google.colab")
    colab.output = types.SimpleNamespace()  # no enable_custom_widget_manager: an older Colab
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    _live._colab_widgets()
    assert "custom widget manager is not available" in capsys.readouterr().err
