"""Exercises of lesson 01 (memory maths) and the generic ``check_value``."""

from __future__ import annotations

from typing import Any

from .._dtypes import bytes_per_element, dtype_name
from ..estimates import weights_bytes
from ..zoo import config_dict, count_parameters

from ._core import Verdict

__all__ = ["check_value", "check_weights_bytes"]


def _mistakes(cfg: dict, dtype: str) -> dict[str, int]:
    """Bytes a learner gets by making a common mistake, keyed by the explanation of that mistake."""
    nbytes = bytes_per_element(dtype)
    hidden, vocab = cfg["hidden_size"], cfg["vocab_size"]
    n_heads = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads") or n_heads
    head_dim = cfg.get("head_dim") or hidden // n_heads
    layers = cfg["num_hidden_layers"]
    exact = count_parameters(cfg)
    out = {}
    if cfg.get("tie_word_embeddings"):
        out["you counted the output layer (lm_head) separately, but this model ties it to the input "
            "embedding: one vocab x hidden matrix serves both"] = exact + vocab * hidden
    if n_kv != n_heads:
        out["you sized k_proj and v_proj with all attention heads, but this model uses grouped-query "
            f"attention: only {n_kv} KV heads of {head_dim} dims"] = exact + layers * 2 * hidden * (n_heads - n_kv) * head_dim
    out["you left out the RMSNorm weights (2 per layer + 1 final, hidden values each): small, "
        "but exact means exact"] = exact - (2 * layers + 1) * hidden
    wrong = {}
    for why, params in out.items():
        wrong[why] = int(params * nbytes)
    for other in ("float32", "float16"):
        if other != dtype and bytes_per_element(other) != nbytes:
            wrong[f"you used {bytes_per_element(other):g} bytes per parameter ({other}); {dtype} "
                  f"takes {nbytes:g}"] = int(exact * bytes_per_element(other))
    return wrong


def check_weights_bytes(answer: int | float | None, config: Any, dtype: str = "bfloat16") -> Verdict:
    """Check a learner's hand count of the weights' bytes of ``config`` in ``dtype``.

    >>> print(check_weights_bytes(2_471_628_800, "llama-3.2-1b"))
    [correct] 2,471,628,800 bytes: 1,235,814,400 parameters x 2 bytes (bfloat16). Exactly what the meta device counts.
    """
    dtype = dtype_name(dtype)
    cfg = config_dict(config)
    exact = weights_bytes(config, dtype)
    params = count_parameters(config)
    if answer is None:
        return Verdict(False, False, "Write your number of bytes in the cell above and run this cell again. Hint: "
                       "embeddings + per layer (q, k, v, o projections; gate, up, down; 2 norms) + the final "
                       "norm (+ lm_head unless tied), then x bytes per parameter.")
    answer = int(answer)
    if answer == exact:
        return Verdict(True, True, f"{exact:,} bytes: {params:,} parameters x {bytes_per_element(dtype):g} bytes "
                                   f"({dtype}). Exactly what the meta device counts.")
    diff = answer - exact
    for why, wrong in _mistakes(cfg, dtype).items():
        if answer == wrong:
            return Verdict(False, True, f"You wrote {answer:,}, {diff:+,} bytes off: {why}.")
    return Verdict(False, True, f"You wrote {answer:,}; the exact figure is {exact:,} ({diff:+,} bytes, "
                               f"{diff / exact:+.2%}). Recount per layer from the config and multiply by "
                               f"{bytes_per_element(dtype):g} bytes.")


def check_value(answer: float | None, expected: float, why: str, hint: str, rel_tol: float = 0.0) -> Verdict:
    """Check a learner's number against ``expected`` (computed by the lab, never typed in).

    >>> print(check_value(2, 2.0, why="2**8 x 2**-7 = 2", hint="think in powers of two"))
    [correct] 2 is right: 2**8 x 2**-7 = 2.
    """
    if answer is None:
        return Verdict(False, False, f"Write your answer in the cell above and run this cell again. Hint: {hint}")
    if abs(float(answer) - expected) <= rel_tol * abs(expected):
        return Verdict(True, True, f"{answer:g} is right: {why}.")
    return Verdict(False, True, f"You wrote {answer:g}; the answer is {expected:g}: {why}.")
