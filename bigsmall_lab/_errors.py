"""The lab's one error type, and the helpers that phrase its sentences.

Every public entry point checks its inputs and raises :class:`LabError` (a ``ValueError``, so
``except ValueError`` keeps working) with one sentence that names the argument, the bad value
(cut short when long) and what is allowed:

>>> print(LabError.bad("dtype", "bf32", "use one of: float32, float16, bfloat16"))
dtype 'bf32' is not valid; use one of: float32, float16, bfloat16
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any

__all__ = ["LabError", "closest", "shown", "whole_number"]

_MAX_SHOWN = 60  # characters of a bad value echoed back: a 10 MB string stays out of the message


class LabError(ValueError):
    """Bad input to the lab, explained in one sentence naming the argument and what is allowed."""

    @classmethod
    def bad(cls, argument: str, value: Any, allowed: str, verb: str = "is not valid") -> LabError:
        return cls(f"{argument} {shown(value)} {verb}; {allowed}")


def shown(value: Any, limit: int = _MAX_SHOWN) -> str:
    """``repr(value)`` cut to ``limit`` characters (a learner's 10 MB paste is not echoed whole).

    >>> shown("x" * 100)
    "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx... (102 characters)"
    """
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    if len(text) <= limit:
        return text
    return f"{text[:limit - 3]}... ({len(text):,} characters)"


def closest(word: str, choices: Iterable[str], n: int = 3) -> str:
    """' (did you mean ...?)' for a misspelt name, or '' when nothing is close.

    >>> closest("lama-3.1-8b", ["llama-3.1-8b", "llama-3.1-70b"])
    " (did you mean 'llama-3.1-8b' or 'llama-3.1-70b'?)"
    """
    if not isinstance(word, str):
        return ""
    matches = difflib.get_close_matches(word.lower(), list(choices), n=n, cutoff=0.6)
    if not matches:
        return ""
    return " (did you mean " + " or ".join(repr(m) for m in matches) + "?)"


def whole_number(value: Any, argument: str, minimum: int = 1) -> int:
    """``value`` as an int >= ``minimum``: ints and integral numpy/torch scalars pass; bools, floats
    with a fraction, strings and nan do not.

    >>> import numpy as np
    >>> whole_number(np.int64(4096), "seq_len")
    4096
    """
    if isinstance(value, bool) or value is None or isinstance(value, (str, bytes)):
        raise LabError.bad(argument, value, f"use a whole number >= {minimum}", verb="is not a whole number")
    try:
        as_int = int(value)
        integral = as_int == value if not isinstance(value, float) else (math.isfinite(value) and value.is_integer())
    except (TypeError, ValueError, OverflowError):
        raise LabError.bad(argument, value, f"use a whole number >= {minimum}", verb="is not a whole number") from None
    if not integral:
        raise LabError.bad(argument, value, f"use a whole number >= {minimum}", verb="is not a whole number")
    if as_int < minimum:
        raise LabError.bad(argument, value, f"use a whole number >= {minimum}", verb="is too small")
    return as_int
