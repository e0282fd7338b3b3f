"""Predict-then-check exercises of the lessons: the learner writes a number, a check says why.

The machinery is in ``_core`` (:class:`Exercise`, :class:`Slip`, :class:`Verdict`); each lesson's
questions live in their own module (``_lesson01`` ...) and are re-exported here as ``check_*``
functions, so a lesson cell reads ``bsl.exercises.check_weights_bytes(my_answer, ...)``.
Every expected value is computed by the lab's planners, never typed in.
"""

from ._core import Exercise, Slip, Verdict
from ._lesson01 import check_value, check_weights_bytes

__all__ = ["Exercise", "Slip", "Verdict", "check_value", "check_weights_bytes"]
