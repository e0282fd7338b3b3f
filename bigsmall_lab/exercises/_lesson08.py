"""Exercises of lesson 08 (KV cache): predict the cache's size, the published figure's layout, the
per-GPU cache under tensor parallelism and the work ``use_cache=False`` does, then check.

Every expected value comes from :func:`bigsmall_lab.estimates.kv_cache_bytes` or the planner side
of :mod:`bigsmall_lab.kvcache`; each slip is the same function's answer under the learner's mistake
(the 2 for K and V left out, the query heads used for the KV heads, GB written for GiB, ...).

A "128K" context in a published table may mean 128,000 tokens (the Hugging Face Llama 3.1 blog's
does) or 131,072 (128 x 1,024): the questions say which, and recognise the other.

>>> print(check_kv_cache_gib(39.06, "llama-3.1-70b", seq_len=128000, dtype="float16"))  # doctest: +ELLIPSIS
[correct] 39.06 GiB is right: 2 (K and V) x 80 layers x 8 KV heads x 128 dims x 128,000 tokens x 1 x 2 bytes = ...
"""

from __future__ import annotations

import math
from typing import Any

from .._dtypes import bytes_per_element, dtype_name
from .._errors import LabError, whole_number
from .._units import GB, GiB, MiB
from ..estimates import kv_cache_bytes
from ..kv_plan import kv_bytes_per_rank, positions_processed
from ._core import Exercise, Slip, Verdict, ask, byte_unit_slips, config_layout, distinct_slips

__all__ = ["check_blog_kv_heads", "check_cache_bytes", "check_kv_cache_gib", "check_kv_per_gpu",
           "check_recomputed_positions"]

# The example of how to write a number must not be an answer (70B at 128,000 tokens is 39.06 GiB).
_GIB = dict(fmt=",.2f", unit=" GiB", example="12.5 or 7", rel_tol=0.01, slip_tol=0.01)


def _other_k(expected: float, seq_len: int) -> list[Slip]:
    """The slip of reading "128K" the other way: 128 x 1,024 tokens for 128,000, or the reverse."""
    if seq_len % 1000 == 0:
        return [Slip(expected * 1024 / 1000, f"that counts {seq_len // 1000 * 1024:,} tokens (K = 1,024); the "
                                             f"question says {seq_len:,}")]
    if seq_len % 1024 == 0:
        return [Slip(expected * 1000 / 1024, f"that counts {seq_len // 1024 * 1000:,} tokens (K = 1,000); the "
                                             f"question says {seq_len:,}")]
    return []


def check_kv_cache_gib(answer: Any, config: Any = "llama-3.1-70b", seq_len: int = 128000, batch_size: int = 1,
                       dtype: str = "float16") -> Verdict:
    """The KV cache of ``config`` after ``seq_len`` tokens x ``batch_size``, in GiB (within 1 %).

    Slips: the 2 for K and V left out, the attention (query) heads used instead of the KV heads,
    an answer in GB (10**9) instead of GiB (2**30), in bytes or MiB, 4 bytes per value instead of 2.
    """
    dtype = dtype_name(dtype)
    exact = kv_cache_bytes(config, seq_len, batch_size, dtype)
    expected = exact / GiB

    def build() -> Exercise:
        _, layers, n_heads, n_kv, head_dim = config_layout(config)
        nbytes = bytes_per_element(dtype)
        slips = [
            Slip(expected / 2, "half the answer: the 2 for K and V is missing (each layer caches a key and a value "
                               "per token and head)"),
            Slip(expected * n_heads / n_kv, f"you used the {n_heads} attention (query) heads; with grouped-query "
                                            f"attention only the {n_kv} KV heads are cached"),
            Slip(exact / GB, f"that is in GB (10**9 bytes); the question asks for GiB (2**30 bytes, {GiB / GB - 1:.1%} "
                             "more per unit)"),
            Slip(exact / MiB, "that is in MiB; the question asks for GiB (divide by 1,024 once more)"),
            Slip(exact, "that is in bytes; the question asks for GiB (divide by 2**30)"),
            Slip(expected * 4 / nbytes, f"that counts 4 bytes per value; {dtype} takes {nbytes:g}"),
            Slip(expected / layers, f"that is one layer's cache; each of the {layers} layers keeps its own"),
            *_other_k(expected, seq_len),
        ]
        return Exercise(
            "kv_cache_gib", expected=expected, **_GIB,
            why=(f"2 (K and V) x {layers} layers x {n_kv} KV heads x {head_dim} dims x {seq_len:,} tokens x "
                 f"{batch_size} x {nbytes:g} bytes = {exact:,} bytes = {expected:,.2f} GiB"),
            hint="2 (K and V) x layers x KV heads x head dim x tokens x batch x bytes per value, then / 2**30",
            slips=distinct_slips(expected, slips, gap=0.02))

    return ask(("kv_cache_gib", str(config), seq_len, batch_size, dtype), build).check(answer)


def check_blog_kv_heads(answer: Any, published_gib: float, config: Any = "llama-3.1-405b", seq_len: int = 128000,
                        dtype: str = "float16") -> Verdict:
    """How many KV heads a published cache size assumes (``published_gib`` is the source's number,
    typed in by the caller as the independent figure it is). Expected: the whole number of KV heads
    that makes :func:`kv_cache_bytes` give the published size, the rest of the config unchanged.
    """
    if isinstance(published_gib, bool) or not isinstance(published_gib, (int, float)) or not published_gib > 0:
        raise LabError.bad("published_gib", published_gib, "use the published size in GiB, a number > 0",
                           verb="is not valid")
    dtype = dtype_name(dtype)
    _, layers, n_heads, n_kv, head_dim = config_layout(config)
    lab_gib = kv_cache_bytes(config, seq_len, 1, dtype) / GiB
    implied = n_kv * published_gib / lab_gib
    expected = round(implied)
    if expected < 1 or abs(implied - expected) > 0.01 * implied:
        raise LabError(f"published_gib {published_gib:g} is not a whole number of KV heads of this config "
                       f"({implied:.2f}); check the figure, the seq_len and the dtype")

    def build() -> Exercise:
        slips = [Slip(n_kv, f"{n_kv} is the published config's num_key_value_heads: with it the cache is "
                            f"{lab_gib:,.2f} GiB, not {published_gib:g}"),
                 Slip(n_heads, f"{n_heads} are the attention (query) heads; with that many KV heads the cache would "
                               f"be {lab_gib * n_heads / n_kv:,.0f} GiB"),
                 Slip(published_gib / lab_gib, f"that is the ratio of the two sizes; it multiplies the {n_kv} KV "
                                               "heads of the config")]
        return Exercise(
            "blog_kv_heads", expected=expected, example="4", slip_tol=0.01,
            why=(f"{published_gib:g} GiB / {lab_gib:,.2f} GiB = {published_gib / lab_gib:.2f} times the cache of "
                 f"{n_kv} KV heads: {expected} KV heads of {head_dim} dims in each of {layers} layers"),
            hint="divide the published size by the lab's; the cache is proportional to the KV heads",
            slips=distinct_slips(expected, slips, gap=0.02))

    return ask(("blog_kv_heads", str(config), published_gib, seq_len, dtype), build).check(answer)


def check_kv_per_gpu(answer: Any, config: Any = "llama-3.1-405b", seq_len: int = 128000, tp_size: int = 16,
                     dtype: str = "bfloat16") -> Verdict:
    """GiB of KV cache on each GPU when tensor parallelism splits ``config`` over ``tp_size`` GPUs (1 %).

    Slips: the whole cache divided by the GPUs (a KV head cannot be split: with more GPUs than KV
    heads each GPU still holds one), the whole cache on every GPU, GB instead of GiB.
    """
    dtype = dtype_name(dtype)
    tp_size = whole_number(tp_size, "tp_size")
    total = kv_cache_bytes(config, seq_len, 1, dtype)
    exact = kv_bytes_per_rank(config, seq_len, tp_size, 1, dtype)
    expected = exact / GiB

    def build() -> Exercise:
        _, _, _, n_kv, _ = config_layout(config)
        per_rank = math.ceil(n_kv / tp_size)
        slips = [Slip(total / tp_size / GiB, f"dividing by {tp_size} GPUs splits KV heads into pieces; a head is "
                                             f"computed whole, so with {n_kv} KV heads on {tp_size} GPUs each GPU "
                                             f"still holds {per_rank} (replicated)"),
                 Slip(total / GiB, "that is the whole cache; each GPU keeps only the K and V of the heads it computes"),
                 Slip(exact / GB, "that is in GB (10**9 bytes); the question asks for GiB")]
        return Exercise(
            "kv_per_gpu", expected=expected, **_GIB,
            why=(f"{n_kv} KV heads over {tp_size} GPUs: {per_rank} KV head(s) per GPU "
                 + ("(more GPUs than KV heads: each head is replicated) " if tp_size > n_kv else "")
                 + f"= {per_rank}/{n_kv} of {total / GiB:,.2f} GiB"),
            hint="how many KV heads does each GPU compute? It cannot be less than one",
            slips=distinct_slips(expected, slips, gap=0.02))

    return ask(("kv_per_gpu", str(config), seq_len, tp_size, dtype), build).check(answer)


def check_recomputed_positions(answer: Any, prompt_tokens: int = 256, new_tokens: int = 64) -> Verdict:
    """Token positions the model runs through to generate ``new_tokens`` with ``use_cache=False`` (exact).

    Slips: the cached count (P + n - 1), n x P (the sequence does not grow), n x (P + n) or the
    growth counted to P + n.
    """
    p = whole_number(prompt_tokens, "prompt_tokens")
    n = whole_number(new_tokens, "new_tokens")
    expected = positions_processed(p, n, use_cache=False)

    def build() -> Exercise:
        slips = [Slip(positions_processed(p, n, use_cache=True), "that is the count with the cache: the prompt once, "
                                                                  "then one position per new token"),
                 Slip(n * p, "every step reruns the sequence so far, and it grows by one token per step"),
                 Slip(n * (p + n), "the last step runs P + n - 1 positions, not P + n (the n-th token is the output)"),
                 Slip(n * p + n * (n + 1) // 2, "the first step runs the prompt alone (P positions), the n-th "
                                                "P + n - 1")]
        return Exercise(
            "recomputed_positions", expected=expected, fmt=",.0f", example="20_000",
            why=(f"step k (k = 0 .. {n - 1}) runs P + k positions: {n} x {p} + {n} x {n - 1} / 2 = {expected:,}, "
                 f"against {positions_processed(p, n):,} with the cache"),
            hint="without a cache, each step runs the whole sequence so far; how long is it at each step?",
            slips=distinct_slips(expected, slips))

    return ask(("recomputed_positions", p, n), build).check(answer)


def check_cache_bytes(answer: Any, measured: int, config: Any = "bigsmall-tiny", seq_len: int = 200,
                      batch_size: int = 1, dtype: str = "float32") -> Verdict:
    """Bytes a dynamic cache of ``config`` holds after ``seq_len`` tokens x ``batch_size``, as ``measured``
    by weighing the cache object (:func:`bigsmall_lab.kvcache.cache_bytes`), within 1 % (an answer
    rounded to three figures counts).

    Slips, each the same count under the learner's mistake: the 2 for K and V left out, the attention
    (query) heads for the KV heads, one layer instead of all, 2 bytes per value (the checkpoint's
    bfloat16) for 4, bits for bytes, MiB, GB or GiB for bytes.

    bigsmall-tiny in float32 (6 layers, 4 KV heads of 32 dims): 2 x 6 x 4 x 32 x 4 = 6,144 bytes a token.

    >>> print(check_cache_bytes(6144 * 200, 6144 * 200))
    [correct] 1,228,800 bytes is right: measured 1,228,800 bytes in the cache object; by the formula 2 (K and V) x 6 layers x 4 KV heads x 32 dims x 200 tokens x 1 x 4 bytes = 1,228,800 bytes.
    """
    dtype = dtype_name(dtype)
    seq_len = whole_number(seq_len, "seq_len")
    batch_size = whole_number(batch_size, "batch_size")
    measured = whole_number(measured, "measured", minimum=1)
    planned = kv_cache_bytes(config, seq_len, batch_size, dtype)
    expected = measured

    def build() -> Exercise:
        _, layers, n_heads, n_kv, head_dim = config_layout(config)
        nbytes = bytes_per_element(dtype)
        other = "bfloat16" if nbytes == 4 else "float32"
        slips = [
            Slip(expected / 2, "half the answer: the 2 for K and V is missing (each layer caches a key and a value "
                               "per token and KV head)"),
            Slip(expected * n_heads / n_kv, f"you used the {n_heads} attention (query) heads; with grouped-query "
                                            f"attention only the {n_kv} KV heads are cached"),
            Slip(expected / layers, f"that is one layer's cache; each of the {layers} layers keeps its own"),
            Slip(expected * bytes_per_element(other) / nbytes,
                 f"that counts {bytes_per_element(other):g} bytes per value ({other}); this cache is {dtype}, "
                 f"{nbytes:g} bytes each"),
            Slip(expected * 8, "that is in bits (8 per byte); the question asks for bytes"),
            Slip(expected / MiB, "that is in MiB; the question asks for bytes", 0.02),
            *byte_unit_slips(expected),
        ]
        return Exercise(
            "cache_bytes", expected=expected, rel_tol=0.01, slip_tol=0.002, fmt=",.0f", unit=" bytes",
            example="1_000_000",
            why=(f"measured {measured:,} bytes in the cache object; by the formula 2 (K and V) x {layers} layers x "
                 f"{n_kv} KV heads x {head_dim} dims x {seq_len:,} tokens x {batch_size} x {nbytes:g} bytes = "
                 f"{planned:,} bytes" + ("" if planned == measured else " (not the same: see the cell's claim)")),
            hint="2 (K and V) x layers x KV heads x head dim x tokens x batch x bytes per value",
            slips=distinct_slips(expected, slips, gap=0.005))

    return ask(("cache_bytes", str(config), seq_len, batch_size, dtype, measured), build).check(answer)
