"""Exercises of lesson 06 (tensor parallelism): predict what each rank holds and what it waits for.

Every expected value comes from the planner :mod:`bigsmall_lab.tp_plan`, which the lesson checks
against a real torchrun run, or from that run itself (``measured``); the slips are the usual ways of
getting it wrong: the whole model instead of one rank's share (per-GPU vs total), the replicated
norms divided too or left out, bits for bytes, GB or GiB for bytes, another dtype's bytes, one
layer's all-reduces for the whole model's. Each question is one :func:`~._core.ask` exercise, so
the hint comes on the first wrong try and the answer on the second.

>>> print(check_allreduces(None, "bigsmall-tiny"))
[not answered yet] Write your answer in the cell above and run this cell again. Hint: which layers end with partial sums that must be added up across ranks? (the row-wise ones)
"""

from __future__ import annotations

from typing import Any

from .._dtypes import bytes_per_element
from .._errors import whole_number
from ..tp_plan import TPPlan, heads, plan, valid_nproc
from ._core import Exercise, Slip, Verdict, ask, byte_unit_slips, distinct_slips

__all__ = ["check_allreduces", "check_rank_bytes", "check_smallest_nproc"]


def _plan(model: Any, nproc: int, dtype: str) -> TPPlan:
    return model if isinstance(model, TPPlan) else plan(model, nproc, dtype)


def _other_dtype(dtype: str) -> str:
    """The dtype a learner mixes up with ``dtype``: the checkpoint's bfloat16 for a float32 run, else float32."""
    return "bfloat16" if dtype == "float32" else "float32"


def check_rank_bytes(answer: float | None, model: Any = "llama-3.1-8b", nproc: int = 2,
                     dtype: str = "bfloat16", measured: int | None = None) -> Verdict:
    """The parameter bytes one rank holds when ``model`` is split over ``nproc`` processes (exact).

    ``model``: a config or name the planner takes, or a :class:`TPPlan` (then ``nproc`` and ``dtype``
    are the plan's). ``measured``: rank 0's bytes as a run measured them (``run_tp(...).rank_bytes[0]``);
    then the answer is compared with the measurement, exactly (tolerance 0: both are counts of bytes),
    and the planner's count is named beside it.

    >>> p = plan("llama-3.1-8b", 2, "bfloat16")
    >>> print(check_rank_bytes(p.rank_bytes[0], p))
    [correct] 8,030,527,488 bytes is right: 1/2 of the 16,059,990,016 bytes of split weights plus all 532,480 bytes of the replicated norms = 8,030,527,488 bytes.
    >>> print(check_rank_bytes(p.total_bytes, p))   # doctest: +ELLIPSIS
    [not quite] You wrote 16,060,522,496: that is the whole model: every rank holds only its slice ... Hint: each rank holds 1/2 ...
    """
    p = _plan(model, nproc, dtype)
    n = p.nproc
    planned = p.rank_bytes[0]
    if measured is not None:
        measured = whole_number(measured, "measured", minimum=1)
    expected = planned if measured is None else measured

    def build() -> Exercise:
        slips = [Slip(p.total_bytes, "that is the whole model: every rank holds only its slice of each split weight "
                                     "(per GPU, not in total)"),
                 Slip(p.total_bytes / n, f"you divided everything by {n}, but the norms are replicated: every rank "
                                         "holds all of them"),
                 Slip(p.sharded_bytes / n, "you left out the replicated norms: every rank holds them too")]
        tied = [w for w in p.weights if "embed" in w.name and w.placement.value == "Shard(0)"]
        if tied and not any("lm_head" in w.name for w in p.weights):
            slips.append(Slip(expected + tied[0].local_bytes[0], "this model ties lm_head to the embedding: one "
                                                                 "matrix, held once"))
        slips.append(Slip(expected * 8, "that is in bits (8 per byte); the question asks for bytes"))
        other = _other_dtype(p.dtype)
        ratio = bytes_per_element(other) / bytes_per_element(p.dtype)
        slips.append(Slip(expected * ratio, f"that counts {bytes_per_element(other):g} bytes per parameter "
                                            f"({other}); these weights are {p.dtype}, "
                                            f"{bytes_per_element(p.dtype):g} bytes each"))
        slips.extend(byte_unit_slips(expected))
        why = (f"1/{n} of the {p.sharded_bytes:,} bytes of split weights plus all {p.replicated_bytes:,} "
               f"bytes of the replicated norms = {planned:,} bytes")
        if measured is not None:
            why = (f"rank 0 measured {measured:,} bytes in its DTensors; the planner: {why} "
                   f"({'the same' if measured == planned else 'not the same: the planner is off here'})")
        return Exercise("tp_rank_bytes", expected=expected, why=why, fmt=",.0f", unit=" bytes",
                        example="8_000_000_000",
                        hint=(f"each rank holds 1/{n} of every split weight (embeddings, attention, MLP) and all of "
                              "the replicated ones (the norms)"),
                        slips=distinct_slips(expected, slips), rel_tol=0.0, slip_tol=1e-9)

    return ask(("tp_rank_bytes", p.model, n, p.dtype, measured), build).check(answer)


def check_allreduces(answer: float | None, model: Any = "bigsmall-tiny", nproc: int = 2,
                     dtype: str = "float32") -> Verdict:
    """How many all-reduces one forward pass of ``model`` needs under ``tp_plan="auto"``.

    >>> print(check_allreduces(13, "bigsmall-tiny"))
    [correct] 13 is right: 2 per decoder layer (after o_proj and after down_proj, whose outputs are partial sums) x 6 layers, plus 1 for the vocabulary-split embedding.
    """
    p = _plan(model, nproc, dtype)
    layers, expected = p.n_layers, p.collectives["all_reduce"]

    def build() -> Exercise:
        slips = [Slip(2 * layers, "the embedding is split on the vocabulary: each rank looks up only its "
                                  "own tokens, and the ranks' lookups are summed with one all-reduce"),
                 Slip(layers, "attention and the MLP each end with a row-wise layer: 2 per layer"),
                 Slip(7 * layers + 1, "column-wise layers need no communication: their outputs stay split "
                                      "and feed the next layer directly"),
                 Slip(2 * layers + 2, "the logits are gathered (all-gather), not summed"),
                 Slip(2, f"that is one decoder layer's; a forward pass goes through all {layers} of them"),
                 Slip(3, f"that is one decoder layer's plus the embedding's; a forward pass goes through all "
                         f"{layers} layers")]
        return Exercise(
            "tp_allreduces", expected=expected,
            why=(f"2 per decoder layer (after o_proj and after down_proj, whose outputs are partial sums) x "
                 f"{layers} layers, plus 1 for the vocabulary-split embedding"),
            hint="which layers end with partial sums that must be added up across ranks? (the row-wise ones)",
            slips=distinct_slips(expected, slips))

    return ask(("tp_allreduces", p.model, p.nproc, p.dtype), build).check(answer)


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

    def build() -> Exercise:
        slips = []
        for wrong in dict.fromkeys((2, 4, 8, n_heads, n_kv)):
            if wrong == expected or wrong in valid:
                continue
            parts = [f"{n_heads} attention heads" if n_heads % wrong else "",
                     f"{n_kv} KV heads" if n_kv % wrong else ""]
            parts = [x for x in parts if x]
            if parts:
                slips.append(Slip(wrong, f"{wrong} does not divide {' and '.join(parts)}"))
        return Exercise("tp_smallest_nproc", expected=expected,
                        why=f"{expected} divides both the {n_heads} attention heads and the {n_kv} KV heads",
                        hint=f"each rank computes whole heads: what divides both {n_heads} and {n_kv}?",
                        slips=tuple(slips))

    if isinstance(model, (str, TPPlan)):
        key = model if isinstance(model, str) else model.model
    else:
        key = repr(sorted((str(k), str(v)) for k, v in dict(model).items())) if hasattr(model, "items") else repr(model)
    return ask(("tp_smallest_nproc", key, n_heads, n_kv), build).check(answer)

