"""The embedded model's held-out evaluation: the token ids it never trained on, and their perplexity.

``bigsmall-tiny`` (``zoo/tiny/``) was trained by ``tools/train_tiny.py`` on the standard library's
documentation with about 5% of whole documents held out. Their token ids ship beside the weights
(``heldout_ids.safetensors``, 25,340 ids as int16: 50 KB), so the training record's held-out
perplexity can be checked on any Python version, whose standard library (and so corpus) differs.

>>> ids = tiny_heldout_ids()
>>> ids.dtype, ids.shape, int(ids[0])            # every document starts with <|endoftext|> (id 0)
(torch.int64, torch.Size([25340]), 0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .._errors import LabError, whole_number
from ._configs import TINY_DIR

__all__ = ["HELDOUT_FILE", "heldout_perplexity", "heldout_windows", "tiny_heldout_ids"]

HELDOUT_FILE = "heldout_ids.safetensors"
_KEY = "heldout_ids"


def tiny_heldout_ids() -> torch.Tensor:
    """The held-out token ids of ``bigsmall-tiny``, shape (n_tokens,), int64 (stored as int16)."""
    from safetensors.torch import load_file

    return load_file(str(TINY_DIR / HELDOUT_FILE))[_KEY].to(torch.long)


def heldout_windows(stream: torch.Tensor, window_len: int) -> list[torch.Tensor]:
    """Cut a token stream into consecutive non-overlapping windows of ``window_len + 1`` tokens.

    Neighbouring windows share one token (the last target of one is the first input of the
    next), so every token after the first is predicted exactly once. The final window may be
    shorter. Each window is scored on its own, without the previous window as context.

    >>> [w.tolist() for w in heldout_windows(torch.arange(6), 2)]
    [[0, 1, 2], [2, 3, 4], [4, 5]]
    """
    window_len = whole_number(window_len, "window_len", minimum=1)
    return [stream[i : i + window_len + 1] for i in range(0, len(stream) - 1, window_len)]


def _next_token_loss(model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting windows[:, 1:] from windows[:, :-1] (teacher forcing)."""
    logits = model(input_ids=windows[:, :-1]).logits  # (batch, seq_len, vocab)
    return F.cross_entropy(logits.flatten(0, 1).float(), windows[:, 1:].flatten())


@torch.no_grad()
def heldout_perplexity(model: torch.nn.Module, windows: Sequence[torch.Tensor], batch_size: int = 16) -> float:
    """exp(mean next-token NLL over every predicted token of the windows), teacher-forced.

    Windows are scored independently (no context carried over), so a window's first tokens
    have little context: this is a slightly pessimistic, but exactly reproducible, perplexity.
    """
    if not any(len(w) >= 2 for w in windows):
        raise LabError("windows must hold at least one window of >= 2 tokens to score")
    was_training = model.training
    model.eval()
    nll_sum, n_predicted = 0.0, 0
    full = [w for w in windows if len(w) == len(windows[0])]
    ragged = [w for w in windows if len(w) != len(windows[0])]
    batches = [torch.stack(full[i : i + batch_size]) for i in range(0, len(full), batch_size)]
    batches += [w.unsqueeze(0) for w in ragged if len(w) >= 2]
    for batch in batches:
        n_targets = batch[:, 1:].numel()
        nll_sum += _next_token_loss(model, batch).item() * n_targets
        n_predicted += n_targets
    model.train(was_training)
    return math.exp(nll_sum / n_predicted)
