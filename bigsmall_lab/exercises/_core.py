"""Predict-then-check exercises: the learner writes a number, a check says whether it is right and why.

An :class:`Exercise` holds the right answer (computed by the lab, never typed in), why it is right,
a hint, and the *slips*: numbers a learner gets by making a known mistake (forgot the 2 bytes of
bf16, answered in GB instead of bytes, counted all heads for k and v, ...). ``check`` names the slip
when the answer equals one, gives the hint on the first wrong try and reveals the answer only on
the second; an unanswered exercise (``None``) gets the hint, never the answer; a string or another
non-number gets one sentence saying to write a number.

>>> ex = Exercise("demo", expected=16e9, why="8e9 parameters x 2 bytes", hint="bytes per parameter?",
...               slips=(Slip(8e9, "you forgot the 2 bytes per bfloat16 parameter"),))
>>> print(ex.check(8e9))
[not quite] You wrote 8e+09: you forgot the 2 bytes per bfloat16 parameter. Hint: bytes per parameter?
>>> print(ex.check("16e9"))
[not a number] Write the answer as a number (e.g. 16e9 or 16_000_000_000), not as text ('16e9').
>>> print(ex.check(16_000_000_000))
[correct] 1.6e+10 is right: 8e9 parameters x 2 bytes.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

__all__ = ["Exercise", "Slip", "Verdict"]


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check. ``slip`` names the recognised mistake, if any."""

    correct: bool
    answered: bool
    message: str
    slip: str | None = None
    revealed: bool = False

    @property
    def mark(self) -> str:
        if self.correct:
            return "correct"
        if not self.answered:
            return "not answered yet"
        return "not a number" if self.slip == "not a number" else "not quite"

    def __str__(self) -> str:
        return f"[{self.mark}] {self.message}"

    def _repr_markdown_(self) -> str:
        icon = "✅" if self.correct else ("✏️" if not self.answered else "❌")
        return f"{icon} {self.message}"


@dataclass(frozen=True)
class Slip:
    """A wrong answer a learner reaches by a known mistake, and the sentence that names the mistake."""

    value: float
    why: str


def _close(a: float, b: float, rel_tol: float) -> bool:
    return abs(a - b) <= rel_tol * abs(b) or a == b


def _as_number(answer) -> float | None:
    """The answer as a float, or None when it is not a real number (str, list, complex, nan)."""
    if isinstance(answer, bool) or not isinstance(answer, numbers.Real):
        try:  # numpy and torch scalars
            answer = answer.item()
        except (AttributeError, ValueError, RuntimeError):
            return None
        if isinstance(answer, bool) or not isinstance(answer, numbers.Real):
            return None
    value = float(answer)
    return value if math.isfinite(value) else None


@dataclass
class Exercise:
    """One predict-then-check question. ``expected`` comes from the lab's own functions.

    ``rel_tol`` is the relative tolerance of a right answer (0: exact). ``tries`` counts wrong
    answers, so the second wrong try reveals the answer.
    """

    key: str
    expected: float
    why: str
    hint: str
    slips: tuple[Slip, ...] = ()
    rel_tol: float = 0.0
    slip_tol: float | None = None  # tolerance for recognising a slip (default: rel_tol, at least 1e-9)
    tries: int = field(default=0, compare=False)

    def check(self, answer) -> Verdict:
        if answer is None:
            return Verdict(False, False, f"Write your answer in the cell above and run this cell again. Hint: {self.hint}")
        value = _as_number(answer)
        if value is None:
            text = repr(answer) if len(repr(answer)) <= 40 else repr(answer)[:37] + "..."
            return Verdict(False, True, f"Write the answer as a number (e.g. 16e9 or 16_000_000_000), not as "
                                        f"{'text' if isinstance(answer, str) else type(answer).__name__} ({text}).",
                           slip="not a number")
        if _close(value, self.expected, self.rel_tol):
            self.tries = 0
            return Verdict(True, True, f"{value:g} is right: {self.why}.")
        self.tries += 1
        tol = max(self.slip_tol if self.slip_tol is not None else self.rel_tol, 1e-9)
        slip = next((s for s in self.slips if _close(value, s.value, tol)), None)
        said = f"You wrote {value:g}: {slip.why}." if slip else f"You wrote {value:g}, which is not it."
        if self.tries == 1:
            return Verdict(False, True, f"{said} Hint: {self.hint}", slip=slip.why if slip else None)
        return Verdict(False, True, f"{said} The answer is {self.expected:g}: {self.why}.",
                       slip=slip.why if slip else None, revealed=True)
