"""The shipped "bigsmall-tiny" model (bigsmall_lab/zoo/tiny/) and the tool that trains it (tools/train_tiny.py).

The model is what every lesson loads offline, so these tests check what the lessons rely on:
it loads with the Auto classes and no network, keeps the GQA shape the KV-cache and
tensor-parallel lessons need, is stored in bf16 within 20 MB, writes readable text, and its
held-out perplexity is reproducible from the held-out ids shipped beside it (on any Python). The
training tool is checked on its ``--quick`` path: two runs give bitwise identical weights, and a
failed run never leaves a partial folder.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from bigsmall_lab.zoo import TINY_DIR, heldout_perplexity, heldout_windows, tiny_heldout_ids

TOOL = Path(__file__).resolve().parent.parent / "tools" / "train_tiny.py"
SHIPPED_FILES = {
    "config.json",
    "generation_config.json",
    "heldout_ids.safetensors",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "training.json",
}
MAX_FOLDER_BYTES = 20 * 1000**2  # 20 MB; the model itself is ~6.8 M params x 2 bytes = 13.6 MB
NEW_TOKENS = 40


@pytest.fixture(scope="module")
def record() -> dict:
    path = TINY_DIR / "training.json"
    assert path.is_file(), f"{TINY_DIR} is missing; build it with: python tools/train_tiny.py"
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def tokenizer(record):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TINY_DIR, local_files_only=True)


@pytest.fixture(scope="module")
def model_fp32(record):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float32, local_files_only=True).eval()


@pytest.fixture(scope="module")
def model_auto(record):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype="auto", local_files_only=True).eval()


# --------------------------------------------------------------------------- the shipped folder


def test_folder_holds_the_expected_files_within_20_mb(record):
    files = {p.name: p.stat().st_size for p in TINY_DIR.iterdir()}
    assert set(files) == SHIPPED_FILES
    assert sum(files.values()) <= MAX_FOLDER_BYTES, files


def test_config_has_grouped_query_attention_for_tp_and_quantized_kv(record):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(TINY_DIR, local_files_only=True)
    assert config.model_type == "llama"
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (8, 4, 32)
    assert config.hidden_size == config.num_attention_heads * config.head_dim == 256
    # Tensor parallelism on 2 or 4 ranks splits heads and the MLP evenly.
    assert config.num_attention_heads % 4 == config.num_key_value_heads % 4 == config.intermediate_size % 4 == 0
    # quanto's quantized KV cache groups kv_heads*head_dim values in groups of 64.
    assert (config.num_key_value_heads * config.head_dim) % 64 == 0
    assert config.tie_word_embeddings is True
    assert 4 <= config.num_hidden_layers <= 8
    assert config.max_position_embeddings >= 1024
    assert config.dtype == torch.bfloat16


def test_weights_are_bf16_on_disk_and_lm_head_is_tied(record):
    from safetensors.torch import load_file

    tensors = load_file(str(TINY_DIR / "model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert "lm_head.weight" not in tensors  # tied to model.embed_tokens.weight: stored once
    assert sum(t.numel() for t in tensors.values()) == record["parameters"]


def test_loads_offline_in_a_fresh_process_with_auto_classes():
    code = f"""
import json, time, torch
t0 = time.perf_counter()
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained({str(TINY_DIR)!r})
tok = AutoTokenizer.from_pretrained({str(TINY_DIR)!r})
ids = tok("Return the value")["input_ids"]
print(json.dumps({{"dtype": str(model.dtype), "first_id": ids[0], "bos": tok.bos_token_id,
                  "eos": tok.eos_token_id, "pad": tok.pad_token_id, "n_vocab": len(tok),
                  "config_vocab": model.config.vocab_size}}))
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["dtype"] == "torch.bfloat16"  # dtype="auto" is the default and the config says bf16
    assert facts["first_id"] == facts["bos"] == facts["eos"] == facts["pad"]  # <|endoftext|> starts a text
    assert facts["n_vocab"] == facts["config_vocab"]


# --------------------------------------------------------------------------- quality


def _heldout_prompt(tokenizer, n_words: int = 10) -> str:
    """The first words of the first held-out document long enough to prompt with (from the shipped ids)."""
    ids = tiny_heldout_ids().tolist()
    starts = [i for i, token in enumerate(ids) if token == tokenizer.eos_token_id] + [len(ids)]
    documents = [tokenizer.decode(ids[a + 1:b]) for a, b in zip(starts, starts[1:])]
    text = next(doc for doc in documents if len(doc.split()) >= 4 * n_words)
    return " ".join(text.split()[:n_words])


def _documentation_words() -> set[str]:
    # Words of the pydoc topics, part of the training corpus and present on every CPython.
    from pydoc_data.topics import topics

    return set(re.findall(r"[a-z]{3,}", " ".join(topics.values()).lower()))


def test_greedy_continuation_of_a_heldout_prompt_is_readable_text(tokenizer, model_auto):
    inputs = tokenizer(_heldout_prompt(tokenizer), return_tensors="pt")
    with torch.no_grad():
        out = model_auto.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, min_new_tokens=NEW_TOKENS)
    new_ids = out[0, inputs["input_ids"].shape[1] :].tolist()
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    letters_or_spaces = sum(ch.isascii() and (ch.isalpha() or ch.isspace()) for ch in text)
    assert letters_or_spaces >= 0.7 * len(text), text
    train_words = _documentation_words()
    known = {w for w in re.findall(r"[a-z]{3,}", text.lower()) if w in train_words}
    assert len(known) >= 4, text
    assert Counter(new_ids).most_common(1)[0][1] <= 0.5 * len(new_ids), text


@pytest.fixture(scope="module")
def slice_ppl(model_fp32, record) -> float:
    windows = heldout_windows(tiny_heldout_ids(), record["heldout_eval"]["window_len"])
    return heldout_perplexity(model_fp32, windows[: record["heldout_eval"]["slice_windows"]])


def test_heldout_perplexity_is_finite_and_far_below_the_vocabulary(slice_ppl, tokenizer):
    # A uniform guess over the vocabulary scores ppl = len(tokenizer) = 8192.
    assert math.isfinite(slice_ppl)
    assert slice_ppl < len(tokenizer) / 10


def test_the_shipped_heldout_ids_are_the_recorded_ones(record, tokenizer):
    ids = tiny_heldout_ids()
    assert len(ids) == record["heldout_tokens"]
    assert int(ids[0]) == int(ids[-1]) == tokenizer.eos_token_id  # documents start, and the stream ends, with it
    assert 0 <= int(ids.min()) and int(ids.max()) < len(tokenizer)


def test_heldout_perplexity_matches_training_record(slice_ppl, record):
    # The ids ship with the model, so this runs on every Python version (the corpus would differ).
    # Same ids, same weights: only float summation order (torch build, CPU) may differ.
    assert slice_ppl == pytest.approx(record["heldout_slice_ppl"], rel=5e-3)


def test_training_record_shows_heldout_perplexity_still_falling(record):
    curve = [point["heldout_ppl"] for point in record["heldout_curve"]]
    assert len(curve) >= 4
    assert curve[-1] < curve[-2] < curve[-3]


# --------------------------------------------------------------------------- the training script


@pytest.fixture(scope="module")
def train_tiny():
    """tools/train_tiny.py, imported as a module (a tool, not part of the package)."""
    spec = importlib.util.spec_from_file_location("train_tiny", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture
def restore_torch_threads():
    n_threads = torch.get_num_threads()
    yield
    torch.set_num_threads(n_threads)


def test_quick_training_is_deterministic_and_leaves_only_the_finished_folder(tmp_path, restore_torch_threads,
                                                                              train_tiny):
    runs = [tmp_path / "a" / "tiny", tmp_path / "b" / "tiny"]
    records = [train_tiny.main(["--quick", "--out", str(out)]) for out in runs]
    for out in runs:
        assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]  # no temporary folder left
        assert {p.name for p in out.iterdir()} == SHIPPED_FILES
    for name in ("model.safetensors", "tokenizer.json", "heldout_ids.safetensors"):
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), name
    assert records[0]["heldout_curve"] == records[1]["heldout_curve"]


def test_failed_run_keeps_the_previous_folder_and_leaves_no_partial_one(tmp_path, monkeypatch, restore_torch_threads,
                                                                        train_tiny):
    out = tmp_path / "tiny"
    out.mkdir()
    (out / "previous-model.txt").write_text("the model from an earlier run")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("interrupted after the weights were written")

    monkeypatch.setattr(train_tiny, "_evaluate_saved", crash)
    with pytest.raises(KeyboardInterrupt):
        train_tiny.main(["--quick", "--out", str(out)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
    assert sorted(p.name for p in out.iterdir()) == ["previous-model.txt"]


def test_corpus_rejects_an_unknown_split(train_tiny):
    with pytest.raises(ValueError, match="split 'test' is not known; use one of: train, heldout"):
        train_tiny.corpus("test")


def test_heldout_documents_are_whole_and_disjoint_from_training(train_tiny):
    train_names = set(train_tiny.corpus_document_names("train"))
    heldout_names = train_tiny.corpus_document_names("heldout")
    assert heldout_names and not train_names & set(heldout_names)
    assert all(train_tiny.is_heldout(name) for name in heldout_names)
    train_paragraphs = {p for doc in train_tiny.corpus("train") for p in doc.split("\n\n")}
    assert not any(p in train_paragraphs for doc in train_tiny.corpus("heldout") for p in doc.split("\n\n"))


def test_this_pythons_corpus_gives_the_shipped_heldout_ids(train_tiny, tokenizer, record):
    # Where the standard library is the one the model was trained with, the tool rebuilds the same ids.
    if record["corpus_sha256"] != train_tiny.corpus_sha256():
        pytest.skip(f"this Python's standard library differs from Python {record['versions']['python']}'s")
    assert torch.equal(train_tiny.token_stream(tokenizer, train_tiny.corpus("heldout")), tiny_heldout_ids())
