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

A lesson's check functions keep one :class:`Exercise` per question with :func:`ask`, so the second
wrong try of the same question reveals the answer; :func:`byte_unit_slips` recognises an answer in
GB or GiB where bytes were asked. ``fmt`` and ``unit`` say how numbers are written back:

>>> ex = Exercise("bytes", expected=2_000_000, why="1e6 x 2", hint="x 2 bytes", fmt=",.0f", unit=" bytes",
...               slips=byte_unit_slips(2_000_000))
>>> print(ex.check(0.002))
[not quite] You wrote 0.002: that number is in GB (10**9 bytes); the question asks for bytes. Hint: x 2 bytes
>>> print(ex.check(0.002))
[not quite] You wrote 0.002: that number is in GB (10**9 bytes); the question asks for bytes. The answer is 2,000,000 bytes: 1e6 x 2.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from .._errors import LabError
from .._units import GB, GiB

__all__ = ["Exercise", "Slip", "Verdict", "ask", "byte_unit_slips", "config_layout", "distinct_slips"]


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
    """A wrong answer a learner reaches by a known mistake, and the sentence that names the mistake.

    ``rel_tol``: how close an answer must be to count as this slip (None: the exercise's
    ``slip_tol``); an answer in GB is usually rounded, so its slip takes a looser tolerance.
    """

    value: float
    why: str
    rel_tol: float | None = None


def _close(a: float, b: float, rel_tol: float) -> bool:
    if math.isinf(a) or math.isinf(b):  # inf is only close to itself
        return a == b
    return a == b or abs(a - b) <= rel_tol * abs(b)


def _as_number(answer) -> float | None:
    """The answer as a float, or None when it is not a real number (str, list, complex, nan).

    Infinities are numbers (float16 stores 65,520 as inf), so ``math.inf`` is an answer.
    """
    if isinstance(answer, bool) or not isinstance(answer, numbers.Real):
        try:  # numpy and torch scalars
            answer = answer.item()
        except (AttributeError, ValueError, RuntimeError, TypeError):
            return None
        if isinstance(answer, bool) or not isinstance(answer, numbers.Real):
            return None
    try:
        value = float(answer)
    except OverflowError:  # an int beyond float64
        return math.inf if answer > 0 else -math.inf
    return None if math.isnan(value) else value


@dataclass
class Exercise:
    """One predict-then-check question. ``expected`` comes from the lab's own functions.

    ``rel_tol`` is the relative tolerance of a right answer (0: exact). ``tries`` counts wrong
    answers, so the second wrong try reveals the answer. ``example`` shows how to write a number
    when the learner wrote something else; ``fmt`` (a format spec) and ``unit`` write numbers back.
    """

    key: str
    expected: float
    why: str
    hint: str
    slips: tuple[Slip, ...] = ()
    rel_tol: float = 0.0
    slip_tol: float | None = None  # tolerance for recognising a slip (default: rel_tol, at least 1e-9)
    tries: int = field(default=0, compare=False)
    example: str = "16e9 or 16_000_000_000"
    fmt: str = "g"
    unit: str = ""

    def _text(self, value: float, unit: bool = True, exact: bool = False) -> str:
        """``value`` written back with ``fmt``; a learner's number that is not whole (16.06 in GB) with
        ``g`` so it does not read as 16; the unit only where the number is in it."""
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        spec = self.fmt if exact or value == int(value) else "g"
        try:
            text = f"{value:{spec}}"
        except ValueError:
            text = f"{value:g}"
        return text + (self.unit if unit else "")

    def _slip(self, value: float) -> Slip | None:
        default = max(self.slip_tol if self.slip_tol is not None else self.rel_tol, 1e-9)
        for slip in self.slips:
            if _close(value, slip.value, slip.rel_tol if slip.rel_tol is not None else default):
                return slip
        return None

    def check(self, answer) -> Verdict:
        if answer is None:
            return Verdict(False, False, f"Write your answer in the cell above and run this cell again. Hint: {self.hint}")
        value = _as_number(answer)
        if value is None:
            text = repr(answer) if len(repr(answer)) <= 40 else repr(answer)[:37] + "..."
            kind = "text" if isinstance(answer, str) else type(answer).__name__
            return Verdict(False, True, f"Write the answer as a number (e.g. {self.example}), not as {kind} ({text}).",
                           slip="not a number")
        if _close(value, self.expected, self.rel_tol):
            self.tries = 0
            return Verdict(True, True, f"{self._text(value)} is right: {self.why}.")
        self.tries += 1
        slip = self._slip(value)
        wrote = self._text(value, unit=slip is None)  # a slip's number may be in another unit (GB)
        said = f"You wrote {wrote}: {slip.why}." if slip else f"You wrote {wrote}, which is not it."
        if self.tries == 1:
            return Verdict(False, True, f"{said} Hint: {self.hint}", slip=slip.why if slip else None)
        return Verdict(False, True, f"{said} The answer is {self._text(self.expected, exact=True)}: {self.why}.",
                       slip=slip.why if slip else None, revealed=True)


_ASKED: dict[Hashable, Exercise] = {}


def ask(key: Hashable, build: Callable[[], Exercise]) -> Exercise:
    """The one :class:`Exercise` of question ``key`` (built on first use), so tries are counted
    across runs of the check cell: the hint comes first, the answer on the second wrong try."""
    if key not in _ASKED:
        _ASKED[key] = build()
    return _ASKED[key]


def byte_unit_slips(expected_bytes: float, asked: str = "bytes") -> tuple[Slip, ...]:
    """Slips of an answer in GB or GiB where ``asked`` (bytes) was the unit; 2 % tolerance for rounding.

    >>> [round(s.value, 3) for s in byte_unit_slips(16_060_522_496)]
    [16.061, 14.958]
    """
    if not expected_bytes or not math.isfinite(expected_bytes):
        return ()
    return (Slip(expected_bytes / GB, f"that number is in GB (10**9 bytes); the question asks for {asked}", 0.02),
            Slip(expected_bytes / GiB, f"that number is in GiB (2**30 bytes); the question asks for {asked}", 0.02))


def distinct_slips(expected: float, slips, gap: float = 0.0, allow_infinite: bool = False) -> tuple[Slip, ...]:
    """The slips worth recognising: each differs from the answer and from every earlier slip (the first
    explanation wins) by more than ``gap`` (relative: 0.02 for answers learners round; 0: any difference).
    nan never counts; infinity only with ``allow_infinite`` (fp16's answer to 65,520 is one).

    >>> [s.why for s in distinct_slips(2.0, [Slip(2.0, "same"), Slip(4.0, "a"), Slip(4.0, "b")])]
    ['a']
    """
    kept: list[Slip] = []
    for slip in slips:
        value = slip.value
        if math.isnan(value) or (math.isinf(value) and not allow_infinite):
            continue
        others = [expected, *(k.value for k in kept)]
        if gap == 0:
            apart = value not in others
        else:
            apart = all(abs(value - other) > gap * abs(other) for other in others)
        if apart:
            kept.append(slip)
    return tuple(kept)


def config_layout(config) -> tuple[dict, int, int, int, int]:
    """(config dict, layers, attention heads, KV heads, head dim) as a learner reads them from config.json
    (a multimodal config's text part), from the layout the planners read (``ModelSpec.attention``: KV heads
    default to the heads, head dim to hidden / heads)."""
    from ..zoo._configs import resolve

    spec = resolve(config)
    cfg = spec.config.get("text_config", spec.config)
    layout = spec.attention
    if layout is None:
        raise LabError.bad("config", spec.name, "use a decoder's config (a transformers config.json)",
                           verb="is a diffusers model, with no attention layers to count")
    return dict(cfg), layout.layers, layout.heads, layout.kv_heads, layout.head_dim
