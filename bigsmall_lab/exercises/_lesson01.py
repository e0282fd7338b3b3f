"""Exercises of lesson 01 (memory maths), and the generic ``check_value`` other lessons use.

Four questions, each answered by the lab's planners (``count_parameters`` on the meta device,
``weights_bytes``, ``kv_cache_bytes``) and each with the slips learners really make:

- :func:`check_weights_bytes`: a model's weights in bytes, counted by hand from its config;
- :func:`check_kv_cache_bytes`: the KV cache after ``seq_len`` tokens;
- :func:`check_kv_equals_weights`: the context length at which the KV cache is as big as the weights;
- :func:`check_largest_batch`: the most sequences whose KV caches fit a GPU beside the weights.

>>> print(check_kv_cache_bytes(17_179_869_184, "llama-3.1-8b", seq_len=131072))  # doctest: +ELLIPSIS
[correct] 17,179,869,184 bytes is right: 2 (K and V) x 32 layers x 8 KV heads x 128 dims x 131,072 tokens x ...
"""

from __future__ import annotations

import math
from typing import Any

from .._dtypes import bytes_per_element, dtype_name
from .._errors import LabError, shown
from .._units import GB, GiB
from ..estimates import GPUS, kv_cache_bytes, weights_bytes
from ..zoo import count_parameters
from ._core import Exercise, Slip, Verdict, ask, byte_unit_slips, config_layout, distinct_slips

__all__ = ["check_kv_cache_bytes", "check_kv_equals_weights", "check_largest_batch", "check_value",
           "check_weights_bytes"]

_BYTES = dict(fmt=",.0f", unit=" bytes", example="2_471_628_800 or 2.47e9")


def check_weights_bytes(answer: Any, config: Any, dtype: str = "bfloat16") -> Verdict:
    """Check a learner's hand count of the weights' bytes of ``config`` in ``dtype`` (exact).

    Slips: the parameter count without x bytes, a separate ``lm_head`` where the model ties it to the
    embedding, k and v sized with all attention heads, the norms left out, the wrong bytes per
    parameter, an answer in GB or GiB.

    >>> print(check_weights_bytes(2_471_628_800, "llama-3.2-1b"))
    [correct] 2,471,628,800 bytes is right: 1,235,814,400 parameters x 2 bytes (bfloat16), exactly what the meta device counts.
    """
    dtype = dtype_name(dtype)
    exact = weights_bytes(config, dtype)
    params = count_parameters(config)
    nbytes = bytes_per_element(dtype)

    def build() -> Exercise:
        cfg, layers, n_heads, n_kv, head_dim = config_layout(config)
        hidden, vocab = cfg["hidden_size"], cfg["vocab_size"]
        slips = [Slip(params, f"that is the number of parameters; multiply by {nbytes:g} bytes per {dtype} parameter")]
        if cfg.get("tie_word_embeddings"):
            slips.append(Slip((params + vocab * hidden) * nbytes,
                              "you counted the output layer (lm_head) separately, but this model ties it to the "
                              "input embedding: one vocab x hidden matrix serves both (tie_word_embeddings)"))
        if n_kv != n_heads:
            extra = layers * 2 * hidden * (n_heads - n_kv) * head_dim
            slips.append(Slip((params + extra) * nbytes,
                              f"you sized k_proj and v_proj with all {n_heads} attention heads, but this model uses "
                              f"grouped-query attention: only {n_kv} KV heads of {head_dim} dims"))
        slips.append(Slip((params - (2 * layers + 1) * hidden) * nbytes,
                          "you left out the RMSNorm weights (2 per layer + 1 final, hidden values each): small, "
                          "but exact means exact"))
        for other in ("float32", "float16"):
            if bytes_per_element(other) != nbytes:
                slips.append(Slip(params * bytes_per_element(other),
                                  f"you used {bytes_per_element(other):g} bytes per parameter ({other}); {dtype} "
                                  f"takes {nbytes:g}"))
        return Exercise(
            "weights_bytes", expected=exact, **_BYTES,
            why=f"{params:,} parameters x {nbytes:g} bytes ({dtype}), exactly what the meta device counts",
            hint="embeddings + per layer (q, k, v, o projections; gate, up, down; 2 norms) + the final norm "
                 "(+ lm_head unless tied), then x bytes per parameter; check tie_word_embeddings and the KV heads",
            slips=distinct_slips(exact, slips + list(byte_unit_slips(exact))))

    return ask(("weights_bytes", str(config), dtype), build).check(answer)


def check_kv_cache_bytes(answer: Any, config: Any = "llama-3.1-8b", seq_len: int = 131072, batch_size: int = 1,
                         dtype: str = "bfloat16") -> Verdict:
    """The KV cache of ``config`` after ``seq_len`` tokens x ``batch_size`` sequences, in bytes (exact).

    Slips: all attention heads instead of the KV heads, a factor 2 left out (K and V, or the 2 bytes of
    bf16: the same number), both left out, one layer only, an answer in GB or GiB.
    """
    dtype = dtype_name(dtype)
    exact = kv_cache_bytes(config, seq_len, batch_size, dtype)

    def build() -> Exercise:
        _, layers, n_heads, n_kv, head_dim = config_layout(config)
        nbytes = bytes_per_element(dtype)
        slips = [
            Slip(exact * n_heads / n_kv, f"you counted all {n_heads} attention heads; with grouped-query attention "
                                         f"only the {n_kv} KV heads are cached"),
            Slip(exact / 2, "half the answer: one factor 2 is missing, K and V (two tensors per layer) or the "
                            f"{nbytes:g} bytes per {dtype} value"),
            Slip(exact / 4, "a quarter of the answer: both factors of 2 are missing, K and V and the bytes per value"),
            Slip(exact / layers, f"that is one layer's cache; every one of the {layers} layers keeps its own"),
            *byte_unit_slips(exact),
        ]
        return Exercise(
            "kv_cache_bytes", expected=exact, **_BYTES,
            why=f"2 (K and V) x {layers} layers x {n_kv} KV heads x {head_dim} dims x {seq_len:,} tokens x "
                f"{batch_size} x {nbytes:g} bytes = {exact:,} bytes",
            hint="2 (K and V) x layers x KV heads (not attention heads) x head dim x tokens x batch x bytes per value",
            slips=distinct_slips(exact, slips))

    return ask(("kv_cache_bytes", str(config), seq_len, batch_size, dtype), build).check(answer)


def check_kv_equals_weights(answer: Any, config: Any = "llama-3.1-8b", dtype: str = "bfloat16") -> Verdict:
    """The context length (tokens, batch 1) at which the KV cache takes as many bytes as the weights.

    Within 1 %: weights / KV bytes per token. Slips: all heads counted, a factor 2 missing on the
    KV side, an answer in thousands of tokens.

    >>> print(check_kv_equals_weights(122_532))  # doctest: +ELLIPSIS
    [correct] 122,532 is right: the weights take 16,060,522,496 bytes and each token adds 131,072 bytes ...
    """
    dtype = dtype_name(dtype)
    weights = weights_bytes(config, dtype)
    per_token = kv_cache_bytes(config, 1, 1, dtype)
    expected = weights / per_token
    if kv_cache_bytes(config, math.ceil(expected), 1, dtype) < weights:
        raise LabError(f"config {shown(str(config))} has sliding-window layers: its KV cache stops growing at the "
                       "window, so no context length makes it as big as the weights; pick a model whose layers "
                       "all attend to the whole context")

    def build() -> Exercise:
        _, layers, n_heads, n_kv, head_dim = config_layout(config)
        slips = [
            Slip(expected * n_kv / n_heads, f"you counted all {n_heads} attention heads per token; only the {n_kv} "
                                            "KV heads are cached", 0.02),
            Slip(expected * 2, "twice the answer: the KV bytes per token miss a factor 2 (K and V, or the bytes "
                               "per value)", 0.02),
            Slip(expected / 1000, "that is in thousands of tokens; write the number of tokens", 0.02),
        ]
        return Exercise(
            "kv_equals_weights", expected=expected, rel_tol=0.01, fmt=",.0f", example="100_000",
            why=f"the weights take {weights:,} bytes and each token adds {per_token:,} bytes of KV cache "
                f"(2 x {layers} layers x {n_kv} KV heads x {head_dim} dims x {bytes_per_element(dtype):g} bytes): "
                f"{weights:,} / {per_token:,} = {expected:,.0f} tokens",
            hint="work out the KV cache of ONE token (2 x layers x KV heads x head dim x bytes), then divide the "
                 "weights' bytes by it",
            slips=distinct_slips(expected, slips))

    return ask(("kv_equals_weights", str(config), dtype), build).check(answer)


def check_largest_batch(answer: Any, config: Any = "llama-3.1-8b", gpu: str = "H100", seq_len: int = 8192,
                        dtype: str = "bfloat16") -> Verdict:
    """The largest batch of ``seq_len``-token sequences whose KV caches fit ``gpu`` beside the weights.

    Counted as (usable bytes - weights) // KV bytes per sequence: weights and KV cache only (the
    activations and the CUDA context take a little more; the lesson's estimate shows how much).
    Slips: the GPU's size read in GiB, all heads counted, the weights forgotten, rounded up, a factor
    2 missing in the KV cache.

    >>> print(check_largest_batch(59))  # doctest: +ELLIPSIS
    [correct] 59 is right: (80,000,000,000 - 16,060,522,496 bytes of weights) // 1,073,741,824 bytes ...
    """
    if gpu not in GPUS:
        raise LabError.bad("gpu", gpu, f"use one of: {', '.join(GPUS)}", verb="is not a known GPU")
    dtype = dtype_name(dtype)
    usable = GPUS[gpu].usable_bytes
    weights = weights_bytes(config, dtype)
    per_seq = kv_cache_bytes(config, seq_len, 1, dtype)
    expected = (usable - weights) // per_seq
    if expected < 1:
        raise LabError(f"not even one {seq_len:,}-token sequence fits a {gpu} beside {shown(str(config))}'s weights; "
                       "pick a bigger GPU or a shorter seq_len")

    def build() -> Exercise:
        _, _, n_heads, n_kv, _ = config_layout(config)
        gb = round(usable / GB)
        slips = [
            Slip((gb * GiB - weights) // per_seq, f"you read the {gpu}'s {gb} GB as {gb} GiB; cards are sold in GB "
                                                   "(10**9 bytes), and GiB are 7% bigger"),
            Slip((usable - weights) // (per_seq * n_heads // n_kv), f"you counted all {n_heads} attention heads; "
                                                                   f"only the {n_kv} KV heads are cached"),
            Slip(usable // per_seq, "the weights take their share of the GPU first; only what is left holds KV caches"),
            Slip(expected + 1, "one more would not fit: round the division down, a partial sequence is not a batch"),
            Slip((usable - weights) // (per_seq // 2), "the KV cache per sequence misses a factor 2 (K and V, or "
                                                      "the bytes per value)"),
        ]
        return Exercise(
            "largest_batch", expected=expected, example="42",
            why=f"({usable:,} - {weights:,} bytes of weights) // {per_seq:,} bytes of KV cache per {seq_len:,}-token "
                f"sequence = {expected}",
            hint=f"what is left of the {gpu}'s {usable / GB:g} GB after the weights, divided by one sequence's KV "
                 "cache, rounded down",
            slips=distinct_slips(expected, slips))

    return ask(("largest_batch", str(config), gpu, seq_len, dtype), build).check(answer)


def check_value(answer: Any, expected: float, why: str, hint: str, rel_tol: float = 0.0,
                slips: tuple[Slip, ...] = ()) -> Verdict:
    """Check a learner's number against ``expected`` (computed by the lab, never typed in).

    The question is remembered by ``(expected, why)``: the hint comes on the first wrong try, the
    answer on the second; ``slips`` names known mistakes.

    >>> print(check_value(2, 2.0, why="2**8 x 2**-7 = 2", hint="think in powers of two"))
    [correct] 2 is right: 2**8 x 2**-7 = 2.
    """
    key = ("value", expected, why, hint, rel_tol, tuple(slips))
    return ask(key, lambda: Exercise("value", expected=expected, why=why, hint=hint, rel_tol=rel_tol,
                                     slips=tuple(slips), example="2 or 0.5")).check(answer)
