"""Exercises of lesson 01 (memory maths), and the generic ``check_value`` other lessons use.

Five questions, each answered by the lab's planners (``count_parameters`` on the meta device,
``weights_bytes``, ``kv_cache_bytes``, ``activation_bytes``) or by a measurement, and each with the
slips learners really make:

- :func:`check_weights_bytes`: a model's weights in bytes, counted by hand from its config;
- :func:`check_kv_cache_bytes`: the KV cache after ``seq_len`` tokens;
- :func:`check_kv_equals_weights`: the context length at which the KV cache is as big as the weights;
- :func:`check_largest_batch`: the most sequences whose KV caches fit a GPU beside the weights;
- :func:`check_peak_prediction`: a forward pass's measured peak, predicted before it runs.

>>> print(check_kv_cache_bytes(17_179_869_184, "llama-3.1-8b", seq_len=131072))  # doctest: +ELLIPSIS
[correct] 17,179,869,184 bytes is right: 2 (K and V) x 32 layers x 8 KV heads x 128 dims x 131,072 tokens x ...
"""

from __future__ import annotations

import math
from typing import Any

from .._dtypes import bytes_per_element, dtype_name
from .._errors import LabError, shown
from .._units import GB, GiB, MiB
from ..estimates import GPUS, activation_bytes, attention_scores_bytes, kv_cache_bytes, weights_bytes
from ..zoo import count_parameters
from ._core import Exercise, Slip, Verdict, ask, byte_unit_slips, config_layout, distinct_slips

__all__ = ["check_kv_cache_bytes", "check_kv_equals_weights", "check_largest_batch", "check_peak_prediction",
           "check_value", "check_weights_bytes"]

_BYTES = dict(fmt=",.0f", unit=" bytes", example="2_471_628_800 or 2.47e9")
_BITS_PER_BYTE = 8


def _byte_slips(exact: float) -> list[Slip]:
    """An answer in bits, MiB, GB or GiB where bytes were asked."""
    return [Slip(exact * _BITS_PER_BYTE, "that is in bits: you multiplied by the bits per value (16 for bf16); "
                                         "the question asks for bytes (8 bits each)"),
            Slip(exact / MiB, "that number is in MiB (2**20 bytes); the question asks for bytes", 0.02),
            *byte_unit_slips(exact)]


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
        from ..estimates import module_bytes

        slips = [Slip(params, f"that is the number of parameters; multiply by {nbytes:g} bytes per {dtype} parameter"),
                 Slip(module_bytes(config, dtype)["model.layers.0"], f"that is one decoder layer; the model has {layers} "
                      "of them, plus the embedding and the final norm")]
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
            slips=distinct_slips(exact, slips + _byte_slips(exact)))

    return ask(("weights_bytes", str(config), dtype), build).check(answer)


def check_kv_cache_bytes(answer: Any, config: Any = "llama-3.1-8b", seq_len: int = 131072, batch_size: int = 1,
                         dtype: str = "bfloat16") -> Verdict:
    """The KV cache of ``config`` after ``seq_len`` tokens x ``batch_size`` sequences, in bytes (exact).

    Slips: all attention heads instead of the KV heads, a factor 2 left out (K and V, or the 2 bytes of
    bf16: the same number), both left out, one layer only, an answer in bits, MiB, GB or GiB.
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
            *_byte_slips(exact),
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
    KV side, one layer's KV per token, an answer in thousands of tokens.

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
            Slip(expected * layers, f"you divided by one layer's KV cache per token; all {layers} layers keep one",
                 0.02),
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

    Counted as (bytes torch sees on the card - weights) // KV bytes per sequence: weights and KV cache
    only (the activations and the CUDA context take a little more; the lesson's estimate shows how
    much). Slips: the card's "80 GB" read as 80 x 10**9 bytes, or as the nominal 80 GiB, or as
    nvidia-smi's total; all heads counted; the weights forgotten; rounded up; a factor 2 missing in
    the KV cache; a CUDA context subtracted.

    >>> print(check_largest_batch(64))  # doctest: +ELLIPSIS
    [correct] 64 is right: (85,027,979,264 bytes torch sees on the H100 - 16,060,522,496 bytes of weights) // ...
    """
    if gpu not in GPUS:
        raise LabError.bad("gpu", gpu, f"use one of: {', '.join(GPUS)}", verb="is not a known GPU")
    dtype = dtype_name(dtype)
    card = GPUS[gpu]
    usable = card.usable_bytes
    weights = weights_bytes(config, dtype)
    per_seq = kv_cache_bytes(config, seq_len, 1, dtype)
    expected = (usable - weights) // per_seq
    if expected < 1:
        raise LabError(f"not even one {seq_len:,}-token sequence fits a {gpu} beside {shown(str(config))}'s weights; "
                       "pick a bigger GPU or a shorter seq_len")

    def build() -> Exercise:
        from ..estimates import RUNTIME_OVERHEAD

        _, _, n_heads, n_kv, _ = config_layout(config)
        size = card.marketed_number
        slips = [
            Slip((int(size * GB) - weights) // per_seq,
                 f"you read the {gpu}'s \"{card.marketed}\" as {size:g} x 10**9 bytes; the card holds {size:g} GiB "
                 f"(2**30 bytes each, 7% more), and torch sees {usable:,} bytes of it"),
            Slip((int(size * GiB) - weights) // per_seq,
                 f"you took the nominal {size:g} GiB; torch sees {usable:,} bytes of the card (the driver keeps "
                 "some), and that is what a program can allocate"),
            Slip((card.smi_bytes - weights) // per_seq,
                 f"you took nvidia-smi's {card.smi_mib:,} MiB; torch sees a little less ({usable:,} bytes), and "
                 "that is what a program can allocate"),
            Slip((usable - weights) // (per_seq * n_heads // n_kv), f"you counted all {n_heads} attention heads; "
                                                                   f"only the {n_kv} KV heads are cached"),
            Slip(usable // per_seq, "the weights take their share of the GPU first; only what is left holds KV caches"),
            Slip(expected + 1, "one more would not fit: round the division down, a partial sequence is not a batch"),
            Slip((usable - weights) // (per_seq // 2), "the KV cache per sequence misses a factor 2 (K and V, or "
                                                      "the bytes per value)"),
            Slip((usable - weights - RUNTIME_OVERHEAD.bytes) // per_seq,
                 "you also took off a CUDA context: fair in practice, but this question counts the weights and "
                 "the KV caches only"),
        ]
        return Exercise(
            "largest_batch", expected=expected, example="42",
            why=f"({usable:,} bytes torch sees on the {gpu} - {weights:,} bytes of weights) // {per_seq:,} bytes of "
                f"KV cache per {seq_len:,}-token sequence = {expected}",
            hint=f"what is left of the {usable:,} bytes torch sees on the {gpu} after the weights, divided by one "
                 "sequence's KV cache, rounded down",
            slips=distinct_slips(expected, slips))

    return ask(("largest_batch", str(config), gpu, seq_len, dtype), build).check(answer)


PEAK_TOLERANCE = 0.15  # a measured peak passes through the allocator: predictions within 15 % count as right


def check_peak_prediction(answer_mib: Any, measured_bytes: int, config: Any, seq_len: int, earlier_seq_len: int,
                          earlier_bytes: int, attn_implementation: str = "eager", dtype: str = "bfloat16") -> Verdict:
    """A predicted peak (MiB) of one forward pass at ``seq_len`` tokens, checked against the measured
    ``measured_bytes`` within :data:`PEAK_TOLERANCE` (15 %).

    The learner saw the peak at ``earlier_seq_len`` tokens (``earlier_bytes``) and the estimate;
    the right way is: what grows linearly (MLP, residual) scales with the tokens, the attention scores
    of an eager pass with their square (``attention_scores_bytes``). Slips: everything scaled
    linearly, everything scaled with the square, the fused (SDPA) estimate where eager runs, an answer
    in bytes, in GB or GiB (MB are within the tolerance of MiB, and GB of GiB).

    >>> print(check_peak_prediction(700, 740 * 2**20, "bigsmall-small", 2048, 1024, 230 * 2**20))  # doctest: +ELLIPSIS
    [correct] 700.0 MiB is right: measured 740.0 MiB ...
    """
    for argument, value in (("measured_bytes", measured_bytes), ("earlier_bytes", earlier_bytes)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise LabError.bad(argument, value, "pass the peak a bsl.track() block measured, in bytes (> 0)",
                               verb="is not a measured size")
    from .._errors import whole_number

    seq_len = whole_number(seq_len, "seq_len")
    earlier_seq_len = whole_number(earlier_seq_len, "earlier_seq_len")
    dtype = dtype_name(dtype)
    estimate = activation_bytes(config, seq_len, dtype=dtype, attn_implementation=attn_implementation)
    expected = measured_bytes / MiB

    def build() -> Exercise:
        grow = seq_len / earlier_seq_len
        slips = [
            Slip(earlier_bytes * grow / MiB, f"you scaled the whole peak with the tokens (x{grow:.3g}); the attention "
                                             f"scores grow with their square (x{grow ** 2:.3g})"),
            Slip(earlier_bytes * grow ** 2 / MiB, f"you scaled the whole peak with the square of the tokens "
                                                  f"(x{grow ** 2:.3g}); only the scores do, the MLP and the residual "
                                                  f"grow x{grow:.3g}"),
            Slip(measured_bytes, "that is in bytes; the question asks for MiB (2**20 bytes)"),
            Slip(measured_bytes / GB, "that is in GB or GiB; the question asks for MiB (2**20 bytes)"),
        ]
        if attn_implementation == "eager":
            fused = activation_bytes(config, seq_len, dtype=dtype, attn_implementation="sdpa")
            slips.append(Slip(fused / MiB, "that is the fused (SDPA) estimate: this model runs eager attention, "
                                           "which materialises the batch x heads x seq x seq scores"))
        scores = attention_scores_bytes(config, seq_len, dtype=dtype) if attn_implementation == "eager" else 0
        return Exercise(
            "peak_prediction", expected=expected, rel_tol=PEAK_TOLERANCE, slip_tol=PEAK_TOLERANCE, fmt=",.1f",
            unit=" MiB", example="250",
            why=f"measured {expected:,.1f} MiB above the loaded weights; the estimate (activation_bytes, "
                f"{attn_implementation}) says {estimate / MiB:,.1f} MiB, of which the scores are {scores / MiB:,.1f} MiB "
                f"(within {PEAK_TOLERANCE:.0%} counts as right)",
            hint=f"split the earlier peak: the part that grows with the tokens (x{seq_len / earlier_seq_len:.3g}) and "
                 "the attention scores, which grow with their square (bsl.estimates.attention_scores_bytes)",
            slips=distinct_slips(expected, slips, gap=PEAK_TOLERANCE))

    return ask(("peak_prediction", str(config), seq_len, earlier_seq_len, earlier_bytes, measured_bytes,
                attn_implementation, dtype), build).check(answer_mib)


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
