"""bigsmall_lab.quality: perplexity, KL divergence and top-1 agreement against reference computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import bigsmall_lab as bsl
from bigsmall_lab import quality
from bigsmall_lab._errors import LabError


@pytest.fixture(scope="module")
def tiny():
    return bsl.load_model("bigsmall-tiny", dtype=torch.float32)


def test_perplexity_equals_transformers_own_loss(tiny):
    ids = quality.heldout_ids("bigsmall-tiny", n_tokens=200)
    with torch.no_grad():
        loss = tiny(ids, labels=ids).loss  # transformers' mean cross-entropy of the shifted labels
    assert quality.perplexity(tiny, ids) == pytest.approx(math.exp(loss.item()), rel=1e-5)


def test_windows_score_every_token_once(tiny):
    ids = quality.heldout_ids("bigsmall-tiny", n_tokens=300)
    logprobs = quality.next_token_logprobs(tiny, ids, window=128)
    assert logprobs.shape == (1, 299, tiny.config.vocab_size)
    # The first window is scored exactly as a single forward pass over the same 128 tokens.
    with torch.no_grad():
        first = torch.log_softmax(tiny(ids[:, :128]).logits[:, :-1].float(), -1)
    torch.testing.assert_close(logprobs[:, :127], first)


def test_a_model_agrees_with_itself(tiny):
    a = quality.compare(tiny, tiny, quality.heldout_ids("bigsmall-tiny", 128))
    assert (a.kl_nats, a.top1_agreement, a.ppl_ratio) == (0.0, 1.0, 1.0)
    assert a.n_tokens == 127


def test_kl_and_agreement_match_a_reference_computation(tiny):
    ids = quality.heldout_ids("bigsmall-tiny", 128)
    noisy = bsl.load_model("bigsmall-tiny", dtype=torch.float32)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn_like(p), alpha=0.01)  # seedless noise is fine: the reference sees the same model
    a = quality.compare(tiny, noisy, ids)
    with torch.no_grad():
        ref = torch.log_softmax(tiny(ids).logits[0, :-1].float(), -1)
        cand = torch.log_softmax(noisy(ids).logits[0, :-1].float(), -1)
    expected_kl = F.kl_div(cand, ref, log_target=True, reduction="batchmean").item()  # KL(ref || cand)
    assert a.kl_nats == pytest.approx(expected_kl, rel=1e-4)
    assert a.top1_agreement == pytest.approx((ref.argmax(-1) == cand.argmax(-1)).float().mean().item())
    assert 0 < a.kl_nats and a.top1_agreement < 1.0


def test_stored_ids_are_the_shipped_text_tokenized():
    tokenizer = bsl.load_tokenizer("bigsmall-tiny")
    ids = tokenizer(quality.heldout_text(), add_special_tokens=False)["input_ids"]
    assert quality.heldout_ids("bigsmall-tiny", 2048)[0].tolist() == ids[:2048]


@pytest.mark.parametrize("call, argument", [
    (lambda: quality.heldout_ids("gpt-5"), "model"),
    (lambda: quality.heldout_ids("bigsmall-tiny", n_tokens=10**6), "n_tokens"),
    (lambda: quality.heldout_ids("bigsmall-tiny", n_tokens="100"), "n_tokens"),
    (lambda: quality.perplexity(None, [1, 2, 3]), "ids"),
    (lambda: quality.perplexity(None, torch.ones(1, 1, dtype=torch.long)), "ids"),
])
def test_bad_input_is_one_sentence(call, argument):
    with pytest.raises(LabError) as err:
        call()
    message = str(err.value)
    assert message.startswith(argument) and len(message) < 300 and "\n" not in message
