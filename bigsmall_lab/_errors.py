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
from collections.abc import Iterable, Sequence
from enum import Enum
from typing import Any

__all__ = ["ClaimFailed", "LabError", "claim", "closest", "enum_value", "shown", "token_ids", "whole_number"]

_MAX_SHOWN = 60  # characters of a bad value echoed back: a 10 MB string stays out of the message


class LabError(ValueError):
    """Bad input to the lab, explained in one sentence naming the argument and what is allowed."""

    @classmethod
    def bad(cls, argument: str, value: Any, allowed: str, verb: str = "is not valid") -> LabError:
        return cls(f"{argument} {shown(value)} {verb}; {allowed}")


class ClaimFailed(AssertionError):
    """A lesson's claim that did not hold on this machine. In a notebook it shows as one sentence, not
    a traceback (IPython calls ``_render_traceback_``), and the cell still fails: Run All stops there and
    nbval reports that cell."""

    def _render_traceback_(self) -> list[str]:
        return [f"ClaimFailed: {self}"]


def claim(holds: Any, expected: str, measured: Any = None) -> None:
    """A lesson's check: nothing when ``holds`` is true, else :class:`ClaimFailed` with one sentence:
    the claim (or what went wrong) and, when given, what was measured.

    >>> claim(2 + 2 == 4, "arithmetic works")
    >>> claim(16 < 15, "Llama 3.1 8B's bf16 weights fit a T4", measured="16.06 GB against 15.84 GB")
    Traceback (most recent call last):
    ...
    bigsmall_lab._errors.ClaimFailed: this did not hold here: Llama 3.1 8B's bf16 weights fit a T4; measured here: 16.06 GB against 15.84 GB
    """
    if holds:
        return
    text = f"this did not hold here: {expected}"
    if measured is not None:
        text += f"; measured here: {measured}"
    raise ClaimFailed(text)


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


def enum_value(enum: type[Enum], value: Any, argument: str, extra: Sequence[str] = ()) -> Enum:
    """``value`` as a member of the (str, Enum) ``enum``: a member, or its value in any case and spacing.
    ``extra`` are further names the caller accepts itself, listed in the message.

    >>> from bigsmall_lab.quant import Scheme
    >>> enum_value(Scheme, " Symmetric", "scheme").value
    'symmetric'
    """
    if isinstance(value, enum):
        return value
    names = [member.value for member in enum]
    if isinstance(value, str) and value.strip().lower() in names:
        return enum(value.strip().lower())
    hint = closest(value, [*names, *extra]) if isinstance(value, str) else ""
    raise LabError(f"{argument} {shown(value)} is not known{hint}; use one of: {', '.join([*names, *extra])}")


def token_ids(ids: Any, argument: str = "ids", minimum: int = 2):
    """``ids`` as a LongTensor (batch, tokens) with at least ``minimum`` tokens; a 1-D tensor gets a batch of 1."""
    import torch

    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.long, torch.int32, torch.int64):
        raise LabError.bad(argument, ids, "pass token ids as a LongTensor of shape (batch, tokens)",
                           verb="is not a tensor of token ids")
    if ids.ndim == 1:
        ids = ids.unsqueeze(0)
    if ids.ndim != 2 or ids.shape[1] < minimum:
        raise LabError(f"{argument} of shape {tuple(ids.shape)} must be (batch, tokens) with at least {minimum} tokens")
    return ids.long()
