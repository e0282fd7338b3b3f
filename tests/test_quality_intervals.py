"""quality.bootstrap_interval and the intervals of quality.agreement: checked against the normal approximation
(independent values), widened by correlated neighbours (the block bootstrap), deterministic, and refusing bad input."""

from __future__ import annotations

import math

import pytest
import torch

from bigsmall_lab import quality
from bigsmall_lab._errors import LabError


def test_independent_values_match_the_normal_approximation():
    # 1,000 independent N(0, 1) values: mean +- 1.96 s / sqrt(n)
    x = torch.randn(1000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    iv = quality.bootstrap_interval(x, block=1, resamples=4000)
    half = 1.96 * x.std().item() / math.sqrt(x.numel())
    assert iv.estimate == pytest.approx(x.mean().item())
    assert iv.low < iv.estimate < iv.high
    assert iv.half_width == pytest.approx(half, rel=0.1)  # percentile bootstrap vs normal: 10 % on 4,000 resamples


def test_top1_agreement_interval_matches_the_binomial_one():
    # 900 agreements in 1,000 tokens: p +- 1.96 sqrt(p (1 - p) / n) = 0.9 +- 0.0186
    iv = quality.bootstrap_interval([1.0] * 900 + [0.0] * 100, block=1, resamples=4000)
    assert iv.estimate == 0.9
    assert iv.half_width == pytest.approx(1.96 * math.sqrt(0.9 * 0.1 / 1000), rel=0.1)


def test_correlated_neighbours_widen_the_block_interval():
    # runs of 32 equal values: 32 times fewer independent pieces than tokens, so about sqrt(32) wider
    runs = torch.randn(32, generator=torch.Generator().manual_seed(2), dtype=torch.float64).repeat_interleave(32)
    naive = quality.bootstrap_interval(runs, block=1)
    blocked = quality.bootstrap_interval(runs, block=32)
    assert blocked.half_width > 3 * naive.half_width
    assert blocked.block == 32 and naive.block == 1 and blocked.n == 1024


def test_constant_values_have_no_width_and_the_seed_fixes_the_interval():
    iv = quality.bootstrap_interval([0.25] * 100)
    assert (iv.low, iv.estimate, iv.high) == pytest.approx((0.25, 0.25, 0.25))
    x = torch.rand(500, generator=torch.Generator().manual_seed(3))
    assert quality.bootstrap_interval(x, seed=7) == quality.bootstrap_interval(x, seed=7)
    assert quality.bootstrap_interval(x, level=0.99).half_width > quality.bootstrap_interval(x, level=0.8).half_width


def test_a_last_short_block_counts_with_its_size():
    # 33 values with blocks of 32: one full block of zeros and one block holding a single 1.0. Drawing two
    # blocks gives a mean of 0 (two zero blocks), 1/33 (one of each) or 1.0 (the short block twice: 2 / 2
    # values, not 2 / 33), each of the outer two a quarter of the time
    iv = quality.bootstrap_interval([0.0] * 32 + [1.0], block=32, resamples=500)
    assert iv.estimate == pytest.approx(1 / 33)
    assert (iv.low, iv.high) == (0.0, 1.0)


def test_map_sends_the_ends_through_a_monotone_function():
    iv = quality.Interval(1.0, 0.5, 2.0, 0.95, 10, 1).map(math.exp)
    assert (iv.estimate, iv.low, iv.high) == pytest.approx((math.e, math.exp(0.5), math.exp(2.0)))


def test_agreement_carries_intervals_around_its_figures():
    torch.manual_seed(0)
    ids = torch.randint(0, 50, (1, 257))
    ref = torch.log_softmax(torch.randn(1, 256, 50), -1)
    cand = torch.log_softmax(ref + 0.5 * torch.randn(1, 256, 50), -1)
    a = quality.agreement(ref, cand, ids)
    assert a.kl_interval.low <= a.kl_nats <= a.kl_interval.high
    assert a.top1_interval.low <= a.top1_agreement <= a.top1_interval.high
    assert a.candidate_ppl_interval.low <= a.candidate_ppl <= a.candidate_ppl_interval.high
    assert a.reference_ppl_interval.estimate == pytest.approx(a.reference_ppl)
    assert a.kl_interval.n == a.n_tokens == 256 and a.kl_interval.low > 0


@pytest.mark.parametrize("kwargs, argument", [
    (dict(values=[1.0]), "values"),
    (dict(values=[1.0, float("nan")]), "values"),
    (dict(values=[1.0, 2.0], level=1.5), "level"),
    (dict(values=[1.0, 2.0], level=True), "level"),
    (dict(values=[1.0, 2.0], block=0), "block"),
    (dict(values=[1.0, 2.0], resamples=10), "resamples"),
])
def test_bad_input_names_the_argument(kwargs, argument):
    with pytest.raises(LabError) as err:
        quality.bootstrap_interval(**kwargs)
    assert str(err.value).startswith(argument) and "\n" not in str(err.value)


def test_window_means_score_each_stretch_of_text_alone():
    # 8 windows of 4 values: window i holds i ones
    values = [1.0 if j < i else 0.0 for i in range(8) for j in range(4)][:32]
    assert quality.window_means(values, window=4) == [min(i, 4) / 4 for i in range(8)]
    assert quality.window_means(list(range(10)), window=4) == [1.5, 5.5]  # the last 2 values are left out
    with pytest.raises(LabError, match="^window 20"):
        quality.window_means([1.0] * 10, window=20)


def test_agreement_keeps_its_per_token_top1_for_windows():
    ids = torch.randint(0, 50, (1, 257), generator=torch.Generator().manual_seed(4))
    ref = torch.log_softmax(torch.randn(1, 256, 50, generator=torch.Generator().manual_seed(5)), -1)
    cand = torch.log_softmax(ref + torch.randn(1, 256, 50, generator=torch.Generator().manual_seed(6)), -1)
    a = quality.agreement(ref, cand, ids)
    assert a.top1_per_token.shape == (256,)
    windows = quality.window_means(a.top1_per_token, window=64)
    assert sum(windows) / 4 == pytest.approx(a.top1_agreement)
