"""One updating line for work that takes more than a few seconds: what runs, how far, how long so far.

>>> with Progress("tensor-parallel launch", total=2, unit="rank") as bar:   # doctest: +SKIP
...     for rank in range(2):
...         start(rank)
...         bar.advance(detail=f"rank {rank} ready")
tensor-parallel launch: done in 41.3 s (2 ranks)

In Jupyter (and Colab) the line is a display handle updated in place (plain text, so it shows in any
front end and in a stored notebook without a widget manager); in a terminal it is a carriage-return
line on stderr, so stdout stays clean for ``--json``. Redrawn at most every ``MIN_INTERVAL_S`` seconds:
a loop of 10,000 steps costs 10,000 cheap counter updates, not 10,000 redraws. On exit one last line:
``label: done in X s (N units)``, or ``label: failed after X s (...)`` when the block raised (the
exception still propagates).

This module imports nothing of the lab beyond the base layer and never imports IPython itself: it draws
a notebook line only when IPython is already loaded and its shell runs in a kernel, so the CLI (which
must not load IPython) can use it too.
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any, TextIO

from ._errors import LabError, whole_number

__all__ = ["MIN_INTERVAL_S", "Progress"]

MIN_INTERVAL_S = 0.25  # at most ~4 redraws a second: a display update is a message to the front end
_clock = time.monotonic  # tests replace it to make time pass


def _in_kernel() -> bool:
    """True inside a Jupyter/Colab kernel (a shell with a kernel attached), False in a terminal or a
    plain IPython console; never imports IPython."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class _NotebookLine:
    """A text/plain output updated in place through an IPython display handle."""

    def __init__(self) -> None:
        self._handle: Any = None

    def draw(self, text: str, final: bool = False) -> None:
        from IPython.display import display  # loaded already: _in_kernel() said so

        bundle = {"text/plain": text}
        if self._handle is None:
            self._handle = display(bundle, raw=True, display_id=True)
        else:
            self._handle.update(bundle, raw=True)


class _TerminalLine:
    """A line on ``stream`` rewritten with a carriage return; the final draw ends it with a newline."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._width = 0

    def draw(self, text: str, final: bool = False) -> None:
        columns = shutil.get_terminal_size((100, 20)).columns
        if not final and len(text) >= columns:  # a wrapped line cannot be rewritten by "\r"
            text = text[: max(columns - 2, 10)] + "…"
        padding = " " * max(self._width - len(text), 0)
        self._stream.write("\r" + text + padding + ("\n" if final else ""))
        self._stream.flush()
        self._width = 0 if final else len(text)


def _units(count: int, unit: str) -> str:
    """'1 step', '3 steps', '2 MiB': a lowercase word gets an s, a symbol does not."""
    plural = count != 1 and unit.isalpha() and unit.islower() and not unit.endswith("s")
    return f"{count:,} {unit}{'s' if plural else ''}"


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 600 else f"{value / 60:.1f} min"


class Progress:
    """A context manager that shows one updating line for a long piece of work.

    ``label`` names the work, ``total`` is how many ``unit``s it has when known (None: a count only).
    ``advance(n, detail)`` counts ``n`` more done and shows ``detail`` (what is happening now);
    ``note(detail)`` changes the detail only. ``count`` and ``elapsed_s`` can be read at any time.
    """

    def __init__(self, label: str, total: int | None = None, unit: str = "step") -> None:
        if not isinstance(label, str) or not label.strip():
            raise LabError.bad("label", label, "name the work in a few words, e.g. 'loading shards'")
        if total is not None:
            total = whole_number(total, "total", minimum=0)
        if not isinstance(unit, str) or not unit.strip():
            raise LabError.bad("unit", unit, "use a short word such as 'step', 'shard' or 'run'")
        self.label, self.total, self.unit = label.strip(), total, unit.strip()
        self.count = 0
        self.detail = ""
        self._started: float | None = None
        self._ended: float | None = None
        self._last_draw = -float("inf")
        self._line: _NotebookLine | _TerminalLine | None = None

    # -- the context manager -------------------------------------------------------------------
    def __enter__(self) -> Progress:
        self._started = _clock()
        self._line = _NotebookLine() if _in_kernel() else _TerminalLine(sys.stderr)
        self._draw(force=True)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._ended = _clock()
        if exc_type is None:
            text = f"{self.label}: done in {_seconds(self.elapsed_s)} ({_units(self.count, self.unit)})"
        else:
            so_far = self._so_far()
            text = f"{self.label}: failed after {_seconds(self.elapsed_s)} ({so_far})"
        self._line.draw(text, final=True)

    # -- what the work calls -------------------------------------------------------------------
    def advance(self, n: int = 1, detail: str = "") -> None:
        """``n`` more units done; ``detail`` (when given) says what is happening now."""
        self._check_open("advance")
        self.count += whole_number(n, "n", minimum=0)
        if detail:
            self.detail = self._checked_detail(detail)
        self._draw()

    def note(self, detail: str) -> None:
        """Show ``detail`` (e.g. 'waiting for rank 1') without counting anything done."""
        self._check_open("note")
        self.detail = self._checked_detail(detail)
        self._draw()

    @property
    def elapsed_s(self) -> float:
        """Seconds since the block began (until it ended, once it has); 0 before it begins."""
        if self._started is None:
            return 0.0
        return (self._ended if self._ended is not None else _clock()) - self._started

    # -- drawing -------------------------------------------------------------------------------
    def line(self) -> str:
        """The running line as drawn now, e.g. 'loading shards: 2/4 shards (50%), 3.1 s, ~3.1 s left: shard 3'."""
        elapsed = self.elapsed_s
        if self.total:
            text = f"{self.label}: {self.count:,}/{_units(self.total, self.unit)} ({100 * self.count / self.total:.0f}%), "
            text += _seconds(elapsed)
            if 0 < self.count < self.total:
                text += f", ~{_seconds(elapsed / self.count * (self.total - self.count))} left"
        else:
            text = f"{self.label}: {_units(self.count, self.unit)}, {_seconds(elapsed)}"
        return f"{text}: {self.detail}" if self.detail else text

    def _so_far(self) -> str:
        done = f"{self.count:,}/{_units(self.total, self.unit)}" if self.total else _units(self.count, self.unit)
        return f"{done} done" + (f"; last: {self.detail}" if self.detail else "")

    def _draw(self, force: bool = False) -> None:
        now = _clock()
        if force or now - self._last_draw >= MIN_INTERVAL_S:
            self._last_draw = now
            self._line.draw(self.line())

    def _check_open(self, method: str) -> None:
        if self._started is None or self._ended is not None:
            raise LabError(f"Progress.{method}() works inside its `with Progress(...) as bar:` block only")

    @staticmethod
    def _checked_detail(detail: Any) -> str:
        if not isinstance(detail, str):
            raise LabError.bad("detail", detail, "pass a short text saying what is happening now")
        return " ".join(detail.split())[:200] if detail else ""
