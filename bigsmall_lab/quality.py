"""Output quality of a model, and of a variant against its reference: perplexity, KL, top-1 agreement.

Perplexity alone hides damage: two models can reach the same perplexity while disagreeing on many
next tokens. So :func:`compare` runs a reference (say bf16) and a candidate (int8, nf4, a quantized
KV cache ...) on the same tokens, teacher-forced, and reports per position

- the KL divergence KL(reference || candidate) of the next-token distributions, in nats per token
  (0: identical predictions);
- the top-1 agreement: how often both pick the same most likely next token;
- both perplexities, exp(mean negative log-likelihood of the actual next token);
- a confidence interval for each (:func:`bootstrap_interval`): scored on a thousand tokens, top-1
  agreement still moves by a few points from one text to the next, so a figure comes with its range.

The text is fixed and ships with the lab (``data/heldout.txt``, ten topics of Python's own
documentation), with its token ids stored for each lab model (``data/heldout_ids.json``), so a
figure does not move with the Python version. SmolLM2 may well have seen Python's documentation
in pretraining; that is fine here: the text is a fixed yardstick to compare variants of one model.

>>> import bigsmall_lab as bsl
>>> ids = heldout_ids("bigsmall-tiny", n_tokens=128)
>>> tuple(ids.shape)
(1, 128)
>>> model = bsl.load_model("bigsmall-tiny", dtype="float32")
>>> a = compare(model, model, ids)
>>> a.kl_nats, a.top1_agreement
(0.0, 1.0)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from ._errors import LabError, closest, token_ids, whole_number

__all__ = ["Agreement", "HELDOUT_MODELS", "Interval", "agreement", "bootstrap_interval", "compare", "heldout_ids",
           "heldout_text", "next_token_logprobs", "perplexity", "window_means"]

_DATA = Path(__file__).parent / "data"
HELDOUT_MODELS = ("smollm2-135m-instruct", "bigsmall-tiny")


@dataclass(frozen=True)
class Interval:
    """A statistic measured on ``n`` tokens and its confidence interval [``low``, ``high``] at ``level``."""

    estimate: float
    low: float
    high: float
    level: float
    n: int
    block: int  # tokens resampled together (1: tokens treated as independent)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def map(self, fn) -> Interval:
        """The interval of a monotone increasing function of the statistic (exp of a mean log-likelihood
        is a perplexity): the ends are mapped, as a percentile interval allows."""
        return Interval(fn(self.estimate), fn(self.low), fn(self.high), self.level, self.n, self.block)

    def __str__(self) -> str:
        return f"{self.estimate:.4g} ({self.level:.0%} CI {self.low:.4g} .. {self.high:.4g})"


def bootstrap_interval(values, level: float = 0.95, block: int = 32, resamples: int = 2000,
                       seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean of per-token ``values`` (KL per token, 1.0/0.0 for
    top-1 agreement, negative log-likelihoods).

    Neighbouring tokens of one text are not independent (a hard passage is hard for a dozen tokens), so
    the tokens are cut into consecutive blocks of ``block`` and whole blocks are drawn with replacement
    (a block bootstrap; ``block=1`` treats every token as independent and gives a narrower, optimistic
    interval). Pure and deterministic: the same ``seed`` gives the same interval.

    For independent 0/1 values it agrees with the normal approximation p ± 1.96 sqrt(p (1 - p) / n):
    900 agreements in 1,000 tokens give about 0.881 .. 0.919.

    >>> iv = bootstrap_interval([1.0] * 900 + [0.0] * 100, block=1)
    >>> iv.estimate, round(iv.low, 2), round(iv.high, 2)
    (0.9, 0.88, 0.92)
    """
    x = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if x.numel() < 2:
        raise LabError(f"values holds {x.numel()} number(s); give at least 2 per-token values")
    if not bool(torch.isfinite(x).all()):
        raise LabError("values holds nan or inf; give finite per-token values")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise LabError.bad("level", level, "use a probability between 0 and 1, e.g. 0.95")
    block = whole_number(block, "block", minimum=1)
    resamples = whole_number(resamples, "resamples", minimum=100)
    n = x.numel()
    n_blocks = math.ceil(n / block)
    # (n_blocks,) sums and sizes; the last block may be short
    sums = torch.zeros(n_blocks, dtype=torch.float64).index_add_(0, torch.arange(n) // block, x)
    sizes = torch.full((n_blocks,), float(block), dtype=torch.float64)
    sizes[-1] = n - block * (n_blocks - 1)
    gen = torch.Generator().manual_seed(int(seed))
    picks = torch.randint(0, n_blocks, (resamples, n_blocks), generator=gen)  # (resamples, n_blocks)
    means = sums[picks].sum(1) / sizes[picks].sum(1)
    tail = (1 - float(level)) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    estimate = float(x.mean())
    return Interval(estimate, min(low, estimate), max(high, estimate), float(level), n, block)


@dataclass(frozen=True)
class Agreement:
    """A candidate's next-token predictions against a reference's, on the same ``n_tokens`` positions.

    The ``*_interval`` fields are 95 % block-bootstrap intervals (:func:`bootstrap_interval`) over those
    positions; None only where an Agreement was built by hand.
    """

    n_tokens: int
    kl_nats: float  # mean KL(reference || candidate) per predicted token
    top1_agreement: float  # fraction of positions where both argmaxes are equal
    reference_ppl: float
    candidate_ppl: float
    kl_interval: Interval | None = None
    top1_interval: Interval | None = None
    reference_ppl_interval: Interval | None = None
    candidate_ppl_interval: Interval | None = None
    # 1.0 where both argmaxes agree, per predicted position (:func:`window_means` slices it)
    top1_per_token: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def ppl_ratio(self) -> float:
        """candidate / reference perplexity (1.0: no change)."""
        return self.candidate_ppl / self.reference_ppl


def heldout_text() -> str:
    """The lab's fixed evaluation text (Python documentation topics, plain English and code)."""
    return (_DATA / "heldout.txt").read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def _stored_ids() -> dict[str, list[int]]:
    return json.loads((_DATA / "heldout_ids.json").read_text())


def heldout_ids(model: str = "smollm2-135m-instruct", n_tokens: int = 1024) -> torch.Tensor:
    """The evaluation text's first ``n_tokens`` token ids for a lab model, shape (1, n_tokens).

    Stored with the lab (not re-tokenized) so figures do not depend on the installed tokenizers.
    """
    key = str(model).strip().lower()
    stored = _stored_ids()
    if key not in stored:
        raise LabError(f"model {model!r} has no stored evaluation ids{closest(key, stored)}; use one of: "
                       f"{', '.join(stored)}, or tokenize quality.heldout_text() with your tokenizer")
    n_tokens = whole_number(n_tokens, "n_tokens", minimum=2)
    ids = stored[key]
    if n_tokens > len(ids):
        raise LabError(f"n_tokens {n_tokens} is more than the {len(ids):,} stored tokens of the evaluation text "
                       f"for {key}; use n_tokens <= {len(ids)}")
    return torch.tensor(ids[:n_tokens], dtype=torch.long).unsqueeze(0)


def _input_device(model: torch.nn.Module) -> torch.device:
    # With a device_map the embedding decides where the ids go; else the first parameter's device.
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    param = next(iter(embed.parameters())) if embed is not None else next(model.parameters())
    return param.device if param.device.type != "meta" else torch.device("cpu")


@torch.no_grad()
def next_token_logprobs(model: torch.nn.Module, ids: torch.Tensor, window: int = 512) -> torch.Tensor:
    """Float32 log-probabilities of every next token, shape (batch, tokens - 1, vocab), on the CPU.

    The text is scored in consecutive windows of ``window`` tokens that share one boundary token, so
    memory stays bounded; each window starts a fresh context (no cache across windows).
    """
    ids = token_ids(ids)
    window = whole_number(window, "window", minimum=2)
    device = _input_device(model)
    pieces = []
    for start in range(0, ids.shape[1] - 1, window - 1):
        chunk = ids[:, start:start + window]
        if chunk.shape[1] < 2:
            break
        logits = model(chunk.to(device), use_cache=False).logits[:, :-1]  # predicts tokens 1..n of the chunk
        pieces.append(torch.log_softmax(logits.float(), dim=-1).cpu())
    return torch.cat(pieces, dim=1)


def _nll(logprobs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    targets = ids[:, 1:1 + logprobs.shape[1]]  # (batch, tokens - 1)
    return -logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def perplexity(model: torch.nn.Module, ids: torch.Tensor, window: int = 512) -> float:
    """exp(mean negative log-likelihood per token), teacher-forced over ``ids``.

    >>> import bigsmall_lab as bsl
    >>> ppl = perplexity(bsl.load_model("bigsmall-tiny", dtype="float32"), heldout_ids("bigsmall-tiny", 256))
    >>> 1 < ppl < 1000
    True
    """
    ids = token_ids(ids)
    return math.exp(_nll(next_token_logprobs(model, ids, window), ids).mean().item())


def compare(reference: torch.nn.Module, candidate: torch.nn.Module, ids: torch.Tensor,
            window: int = 512) -> Agreement:
    """KL divergence, top-1 agreement and both perplexities of ``candidate`` against ``reference``.

    Comparing several candidates with one reference? Score the reference once with
    :func:`next_token_logprobs` and call :func:`agreement` for each candidate.
    """
    ids = token_ids(ids)
    return agreement(next_token_logprobs(reference, ids, window), next_token_logprobs(candidate, ids, window), ids)


def agreement(reference_logprobs: torch.Tensor, candidate_logprobs: torch.Tensor, ids: torch.Tensor,
              level: float = 0.95, block: int = 32) -> Agreement:
    """:func:`compare`'s figures from log-probabilities already scored by :func:`next_token_logprobs`,
    each with its block-bootstrap interval (``level``, ``block``: see :func:`bootstrap_interval`)."""
    ids = token_ids(ids)
    ref, cand = reference_logprobs, candidate_logprobs
    if ref.shape != cand.shape:
        raise LabError(f"candidate's vocabulary ({cand.shape[-1]}) differs from reference's ({ref.shape[-1]}); "
                       "compare two variants of the same model")
    # KL(P || Q) = sum_v P(v) (log P(v) - log Q(v)), averaged over positions.
    kl = (ref.exp() * (ref - cand)).sum(-1).clamp_min(0.0)
    top1 = (ref.argmax(-1) == cand.argmax(-1)).float()
    ref_nll, cand_nll = _nll(ref, ids), _nll(cand, ids)

    def interval(values: torch.Tensor) -> Interval:
        return bootstrap_interval(values.reshape(-1), level=level, block=block)

    return Agreement(
        n_tokens=int(top1.numel()),
        kl_nats=float(kl.mean()),
        top1_agreement=float(top1.mean()),
        reference_ppl=math.exp(ref_nll.mean().item()),
        candidate_ppl=math.exp(cand_nll.mean().item()),
        kl_interval=interval(kl),
        top1_interval=interval(top1),
        reference_ppl_interval=interval(ref_nll).map(math.exp),
        candidate_ppl_interval=interval(cand_nll).map(math.exp),
        top1_per_token=top1.reshape(-1),
    )


def window_means(values, window: int = 128) -> list[float]:
    """Means of consecutive windows of ``window`` per-token values (a last partial window is left out): what
    a figure would have been had only that stretch of text been scored.

    >>> window_means([1, 1, 0, 1, 0, 0, 1], window=2)
    [1.0, 0.5, 0.0]
    """
    x = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    window = whole_number(window, "window", minimum=1)
    n = x.numel() // window
    if n == 0:
        raise LabError(f"window {window} is longer than the {x.numel()} values; use window <= {x.numel()}")
    return x[: n * window].reshape(n, window).mean(1).tolist()
