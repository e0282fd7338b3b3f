"""Exercises of lesson 06 (tensor parallelism): predict what each rank holds and what it waits for.

Every expected value comes from the planner :mod:`bigsmall_lab.tp_plan`, which the lesson checks
against a real torchrun run; the slips are the usual ways of getting it wrong.
"""

from __future__ import annotations

from typing import Any

from ..tp_plan import TPPlan, heads, plan, valid_nproc
from ._core import Exercise, Slip, Verdict

__all__ = ["check_allreduces", "check_rank_bytes", "check_smallest_nproc"]


def _plan(model: Any, nproc: int, dtype: str) -> TPPlan:
    return model if isinstance(model, TPPlan) else plan(model, nproc, dtype)


def check_rank_bytes(answer: float | None, model: Any = "llama-3.1-8b", nproc: int = 2,
                     dtype: str = "bfloat16") -> Verdict:
    """The parameter bytes one rank holds when ``model`` is split over ``nproc`` processes (exact).

    ``model``: a config or name the planner takes, or a :class:`TPPlan` (then ``nproc`` and ``dtype``
    are the plan's).

    >>> p = plan("llama-3.1-8b", 2, "bfloat16")
    >>> print(check_rank_bytes(p.rank_bytes[0], p))
    [correct] 8.03053e+09 is right: 1/2 of the 16,059,990,016 bytes of split weights plus all 532,480 bytes of the replicated norms = 8,030,527,488 bytes.
    """
    p = _plan(model, nproc, dtype)
    n = p.nproc
    expected = p.rank_bytes[0]
    slips = [Slip(p.total_bytes, "that is the whole model: every rank holds only its slice of each split weight"),
             Slip(p.total_bytes / n, f"you divided everything by {n}, but the norms are replicated: every rank "
                                     "holds all of them"),
             Slip(p.sharded_bytes / n, "you left out the replicated norms: every rank holds them too")]
    tied = [w for w in p.weights if "embed" in w.name and w.placement.value == "Shard(0)"]
    if tied and not any("lm_head" in w.name for w in p.weights):
        slips.append(Slip(expected + tied[0].local_bytes[0], "this model ties lm_head to the embedding: one "
                                                             "matrix, held once"))
    ex = Exercise("tp_rank_bytes", expected=expected,
                  why=(f"1/{n} of the {p.sharded_bytes:,} bytes of split weights plus all {p.replicated_bytes:,} "
                       f"bytes of the replicated norms = {expected:,} bytes"),
                  hint=(f"each rank holds 1/{n} of every split weight (embeddings, attention, MLP) and all of "
                        "the replicated ones (the norms)"),
                  slips=tuple(slips), rel_tol=0.0, slip_tol=1e-9)
    return ex.check(answer)


def check_allreduces(answer: float | None, model: Any = "bigsmall-tiny", nproc: int = 2,
                     dtype: str = "float32") -> Verdict:
    """How many all-reduces one forward pass of ``model`` needs under ``tp_plan="auto"``.

    >>> print(check_allreduces(13, "bigsmall-tiny"))
    [correct] 13 is right: 2 per decoder layer (after o_proj and after down_proj, whose outputs are partial sums) x 6 layers, plus 1 for the vocabulary-split embedding.
    """
    p = _plan(model, nproc, dtype)
    layers, expected = p.n_layers, p.collectives["all_reduce"]
    ex = Exercise("tp_allreduces", expected=expected,
                  why=(f"2 per decoder layer (after o_proj and after down_proj, whose outputs are partial sums) x "
                       f"{layers} layers, plus 1 for the vocabulary-split embedding"),
                  hint="which layers end with partial sums that must be added up across ranks? (the row-wise ones)",
                  slips=(Slip(2 * layers, "the embedding is split on the vocabulary: each rank looks up only its "
                                          "own tokens, and the ranks' lookups are summed with one all-reduce"),
                         Slip(layers, "attention and the MLP each end with a row-wise layer: 2 per layer"),
                         Slip(7 * layers + 1, "column-wise layers need no communication: their outputs stay split "
                                              "and feed the next layer directly"),
                         Slip(2 * layers + 2, "the logits are gathered (all-gather), not summed")))
    return ex.check(answer)


def check_smallest_nproc(answer: float | None, model: Any = "smollm2-135m-instruct") -> Verdict:
    """The smallest number of processes (> 1) that splits ``model``'s attention heads and KV heads evenly.

    >>> cfg = {"model_type": "llama", "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576,
    ...        "vocab_size": 10, "num_hidden_layers": 1}
    >>> print(check_smallest_nproc(2, cfg))
    [not quite] You wrote 2: 2 does not divide 9 attention heads and 3 KV heads. Hint: each rank computes whole heads: what divides both 9 and 3?
    """
    n_heads, n_kv = heads(model)
    valid = [n for n in valid_nproc(model, up_to=max(n_heads, 16)) if n > 1]
    expected = valid[0] if valid else n_heads
    slips = []
    for wrong in dict.fromkeys((2, 4, 8, n_heads, n_kv)):
        if wrong == expected or wrong in valid:
            continue
        parts = [f"{n_heads} attention heads" if n_heads % wrong else "", f"{n_kv} KV heads" if n_kv % wrong else ""]
        parts = [x for x in parts if x]
        if parts:
            slips.append(Slip(wrong, f"{wrong} does not divide {' and '.join(parts)}"))
    ex = Exercise("tp_smallest_nproc", expected=expected,
                  why=f"{expected} divides both the {n_heads} attention heads and the {n_kv} KV heads",
                  hint=f"each rank computes whole heads: what divides both {n_heads} and {n_kv}?",
                  slips=tuple(slips))
    return ex.check(answer)
