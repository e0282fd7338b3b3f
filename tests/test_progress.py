"""Progress: one line, throttled, updated in place in a notebook and rewritten with "\\r" in a terminal.

No browser and no kernel: the notebook path runs against a fake IPython (a shell with a kernel and a
``display`` that records what it is given), and time is a counter the test moves by hand.
"""

from __future__ import annotations

import sys
import types

import pytest

from bigsmall_lab import _progress
from bigsmall_lab._errors import LabError
from bigsmall_lab._progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(_progress, "_clock", fake)
    return fake


class Captured:
    def __init__(self, capsys) -> None:
        self.capsys, self.err, self.out = capsys, "", ""

    def getvalue(self) -> str:
        captured = self.capsys.readouterr()
        self.err, self.out = self.err + captured.err, self.out + captured.out
        return self.err


@pytest.fixture
def terminal(monkeypatch, capsys):
    """What went to stderr (and stdout), and no IPython shell (a terminal)."""
    monkeypatch.setattr(_progress, "_in_kernel", lambda: False)
    return Captured(capsys)


class FakeHandle:
    def __init__(self, log: list) -> None:
        self.log = log

    def update(self, obj, raw=False) -> None:
        self.log.append(("update", obj, raw))


@pytest.fixture
def notebook(monkeypatch):
    """A fake IPython: a shell with a kernel, and IPython.display.display recording its calls."""
    log: list = []
    shell = types.SimpleNamespace(kernel=object())
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell
    display_module = types.ModuleType("IPython.display")

    def display(obj, raw=False, display_id=None):
        log.append(("display", obj, raw))
        assert display_id is True
        return FakeHandle(log)

    display_module.display = display
    ipython.display = display_module
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display_module)
    return log


def test_notebook_draws_one_display_then_updates_it_in_place(clock, notebook):
    with Progress("loading shards", total=4, unit="shard") as bar:
        for i in range(4):
            clock.now += 1.0
            bar.advance(detail=f"shard {i + 1}")
    kinds = [entry[0] for entry in notebook]
    assert kinds[0] == "display" and set(kinds[1:]) == {"update"}, kinds
    assert all(set(obj) == {"text/plain"} and raw for _, obj, raw in notebook)  # plain text, no widget
    texts = [obj["text/plain"] for _, obj, _ in notebook]
    assert texts[0] == "loading shards: 0/4 shards (0%), 0.0 s"
    assert texts[2] == "loading shards: 2/4 shards (50%), 2.0 s, ~2.0 s left: shard 2"
    assert texts[-1] == "loading shards: done in 4.0 s (4 shards)"


def test_terminal_rewrites_one_line_on_stderr_and_ends_it(clock, terminal):
    with Progress("warm-up", unit="run") as bar:
        clock.now += 0.5
        bar.advance(detail="first")
        clock.now += 0.5
        bar.advance(2, detail="a longer detail text")
        clock.now += 0.5
        bar.note("x")
    out = terminal.getvalue()
    assert out.count("\n") == 1 and out.endswith("warm-up: done in 1.5 s (3 runs)\n")
    frames = out.rstrip("\n").split("\r")[1:]
    assert frames[0] == "warm-up: 0 runs, 0.0 s"
    assert frames[2].startswith("warm-up: 3 runs, 1.0 s: a longer detail text")
    # a shorter line blanks what is left of the longer one before it
    assert frames[3].startswith("warm-up: 3 runs, 1.5 s: x") and len(frames[3]) >= len(frames[2])
    assert terminal.out == ""  # stdout stays clean (a --json caller reads it)


def test_redraws_are_throttled_to_about_four_a_second(clock, notebook):
    with Progress("tokens", total=10_000, unit="token") as bar:
        for _ in range(10_000):
            clock.now += 0.001  # 10 s of work in 10,000 steps
            bar.advance()
    draws = len(notebook)
    assert 10 <= draws <= 10 / _progress.MIN_INTERVAL_S + 3, draws
    assert notebook[-1][1]["text/plain"] == "tokens: done in 10.0 s (10,000 tokens)"


def test_a_failure_is_reported_and_propagates(clock, terminal):
    with pytest.raises(RuntimeError, match="rank 1 died"):
        with Progress("tensor-parallel launch", total=2, unit="rank") as bar:
            clock.now += 3.0
            bar.advance(detail="rank 0 ready")
            clock.now += 2.0
            raise RuntimeError("rank 1 died")
    assert terminal.getvalue().endswith(
        "tensor-parallel launch: failed after 5.0 s (1/2 ranks done; last: rank 0 ready)\n")


def test_elapsed_and_count_are_readable(clock, terminal):
    bar = Progress("x", unit="MiB")
    assert bar.elapsed_s == 0.0
    with bar:
        clock.now += 2.0
        bar.advance(3)
        assert bar.elapsed_s == 2.0
    clock.now += 5.0
    assert bar.elapsed_s == 2.0 and bar.count == 3  # frozen at exit
    assert terminal.getvalue().endswith("x: done in 2.0 s (3 MiB)\n")  # a symbol gets no plural s


def test_in_kernel_needs_a_shell_with_a_kernel(monkeypatch):
    monkeypatch.delitem(sys.modules, "IPython", raising=False)
    assert _progress._in_kernel() is False  # and it did not import IPython to find out
    assert "IPython" not in sys.modules
    console = types.ModuleType("IPython")
    console.get_ipython = lambda: types.SimpleNamespace()  # a terminal IPython: no kernel
    monkeypatch.setitem(sys.modules, "IPython", console)
    assert _progress._in_kernel() is False
    console.get_ipython = lambda: None
    assert _progress._in_kernel() is False


@pytest.mark.parametrize("kwargs, argument", [
    ({"label": ""}, "label"), ({"label": 3}, "label"), ({"label": "x", "total": -1}, "total"),
    ({"label": "x", "total": 2.5}, "total"), ({"label": "x", "unit": ""}, "unit"),
])
def test_bad_arguments_are_refused_in_one_sentence(kwargs, argument):
    with pytest.raises(LabError, match=f"^{argument} "):
        Progress(**kwargs)


def test_advance_outside_the_block_and_bad_steps_are_refused(clock, terminal):
    bar = Progress("x")
    with pytest.raises(LabError, match="inside its `with Progress"):
        bar.advance()
    with bar:
        with pytest.raises(LabError, match="^n "):
            bar.advance(-1)
        with pytest.raises(LabError, match="^detail "):
            bar.note(42)
    with pytest.raises(LabError, match="inside its `with Progress"):
        bar.note("late")
