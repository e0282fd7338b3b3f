"""The zoo: exact parameter counts on the meta device, random-weight builds, checkpoints, loading."""

from __future__ import annotations

import json
import math

import pytest
import torch

import bigsmall_lab as bsl
from bigsmall_lab import zoo

# Published parameter counts: the exact figure (parameters x 2 bytes = the bf16 checkpoint's
# safetensors total_size) and, in the comment, the rounded size its model card states. The 8B, 70B,
# FLUX transformer, T5 and CLIP figures were also re-measured on the meta device (shared/FACTS.md).
PUBLISHED = {
    "llama-3.1-8b": 8_030_261_248,       # "8.03B"; total_size 16,060,522,496 bytes
    "llama-3.1-70b": 70_553_706_496,     # "70.6B"; total_size 141,107,412,992 bytes
    "llama-3.1-405b": 405_853_388_800,   # "406B"
    "llama-3.2-1b": 1_235_814_400,       # "1.24B" (tied embeddings)
    "llama-3.2-3b": 3_212_749_824,       # "3.21B" (tied embeddings)
    "mistral-7b-v0.3": 7_248_023_552,    # "7.25B"
    "qwen2.5-7b": 7_615_616_512,         # "7.62B"
    "gemma-2-9b": 9_241_705_984,         # "9.24B" (tied embeddings)
    "smollm2-1.7b": 1_711_376_384,       # "1.71B" (tied embeddings)
    "flux.1-dev-transformer": 11_901_408_320,  # "12B" (FLUX.1-dev transformer/)
    "t5-v1.1-xxl-encoder": 4_762_310_656,      # FLUX.1-dev text_encoder_2/ (shared embedding once)
    "clip-vit-l-14-text": 123_060_480,          # FLUX.1-dev text_encoder/
}


def test_every_preset_has_a_published_count():
    assert sorted(PUBLISHED) == sorted(bsl.presets())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_count_parameters_matches_the_published_figure(name):
    assert bsl.count_parameters(name) == PUBLISHED[name]


def llama_formula(cfg: dict) -> int:
    """Parameters of a Llama-style decoder worked out by hand from its config."""
    hidden, layers, vocab = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    head_dim = cfg.get("head_dim") or hidden // cfg["num_attention_heads"]
    q = hidden * cfg["num_attention_heads"] * head_dim
    kv = 2 * hidden * cfg["num_key_value_heads"] * head_dim
    o = cfg["num_attention_heads"] * head_dim * hidden
    mlp = 3 * hidden * cfg["intermediate_size"]  # gate, up, down
    norms = 2 * hidden
    embeddings = vocab * hidden * (1 if cfg["tie_word_embeddings"] else 2)
    return embeddings + layers * (q + kv + o + mlp + norms) + hidden  # + final norm


@pytest.mark.parametrize("name", ["llama-3.1-8b", "llama-3.1-405b", "llama-3.2-1b", "mistral-7b-v0.3", "smollm2-1.7b"])
def test_meta_count_agrees_with_the_formula(name):
    assert bsl.count_parameters(name) == llama_formula(zoo.config_dict(name))


def test_the_talks_example_is_16_gb_in_bf16():
    assert bsl.count_parameters("llama-3.1-8b") * 2 == 16_060_522_496


def test_count_accepts_dict_path_and_config_object(tmp_path):
    from transformers import AutoConfig

    cfg = zoo.config_dict("llama-3.2-1b")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    expected = PUBLISHED["llama-3.2-1b"]
    assert bsl.count_parameters(cfg) == expected
    assert bsl.count_parameters(path) == expected
    assert bsl.count_parameters(str(tmp_path)) == expected  # a folder holding config.json
    obj = AutoConfig.for_model(**{k: v for k, v in cfg.items() if k != "transformers_version"})
    assert bsl.count_parameters(obj) == expected
    assert bsl.count_parameters(zoo.config_dict("flux.1-dev-transformer")) == PUBLISHED["flux.1-dev-transformer"]


def test_meta_model_holds_no_memory():
    model = zoo.meta_model("llama-3.1-70b")
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_tied_weights_count_once():
    model = zoo.meta_model("llama-3.2-1b")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    tensors = sum(1 for _ in model.named_parameters(remove_duplicate=False))
    assert tensors == sum(1 for _ in model.parameters()) + 1


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match=r"'llama-9' is not a preset.*llama-3\.1-8b.*clip-vit-l-14-text"):
        bsl.count_parameters("llama-9")


def test_nonexistent_path_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not a preset, a lab model, a config dict or an existing config.json"):
        bsl.count_parameters(tmp_path / "nope.json")


def test_config_missing_a_key_names_it():
    cfg = zoo.config_dict("llama-3.1-8b")
    del cfg["hidden_size"]
    with pytest.raises(ValueError, match="missing the key 'hidden_size'"):
        bsl.count_parameters(cfg)
    t5 = zoo.config_dict("t5-v1.1-xxl-encoder")
    del t5["d_model"]
    with pytest.raises(ValueError, match="'hidden_size' or 'd_model'"):
        bsl.count_parameters(t5)
    with pytest.raises(ValueError, match="'model_type'.*'_class_name'"):
        bsl.count_parameters({"hidden_size": 4})


def test_invalid_json_says_so(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        bsl.count_parameters(bad)


SMALL_LLAMA = {  # 2 layers: embeddings 4096*64 (tied) + 2 * (4 * 64*64 + 3 * 64*128 + 128) + 64
    "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 4096, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
    "tie_word_embeddings": True, "max_position_embeddings": 128,
}
SMALL_LLAMA_PARAMS = 4096 * 64 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64


def test_build_random_weights_on_cpu():
    model = zoo.build(SMALL_LLAMA, dtype="float32", seed=0)
    assert sum(p.numel() for p in model.parameters()) == SMALL_LLAMA_PARAMS == bsl.count_parameters(SMALL_LLAMA)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    weights = model.model.layers[0].self_attn.q_proj.weight
    assert abs(weights.std().item() - 0.02) < 0.002
    assert torch.equal(model.model.norm.weight, torch.ones(64))
    # rotary frequencies are buffers, computed, not left uninitialised
    head_dim = 64 // 4
    expected = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, expected)
    logits = model(torch.tensor([[1, 2, 3]])).logits
    assert logits.shape == (1, 3, 4096) and torch.isfinite(logits).all()
    again = zoo.build(SMALL_LLAMA, dtype="float32", seed=0)
    assert torch.equal(again.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_build_empty_and_bad_arguments():
    assert zoo.build("llama-3.1-8b", weights="empty").device.type == "meta"
    with pytest.raises(ValueError, match="weights 'trained' is not known; use one of: random, empty"):
        zoo.build(SMALL_LLAMA, weights="trained")
    with pytest.raises(ValueError, match="dtype 'bf32' is not known"):
        zoo.build(SMALL_LLAMA, dtype="bf32")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no.*CUDA GPU|none is attached"):
            zoo.build(SMALL_LLAMA, device="cuda")


def test_build_diffusers_model_is_allocated_on_cpu():
    cfg = {"_class_name": "FluxTransformer2DModel", "attention_head_dim": 16, "axes_dims_rope": [4, 6, 6],
           "guidance_embeds": False, "in_channels": 16, "joint_attention_dim": 32, "num_attention_heads": 2,
           "num_layers": 1, "num_single_layers": 1, "patch_size": 1, "pooled_projection_dim": 32}
    model = zoo.build(cfg, dtype="float32")
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == bsl.count_parameters(cfg)


def test_checkpoint_writes_shards_atomically_and_reloads(lab_cache):
    from transformers import AutoModelForCausalLM

    model = zoo.build(SMALL_LLAMA, dtype="float32")
    path = zoo.checkpoint(model, name="unit", dtype="float32", shard_size="1MB", progress=False)
    assert path.parent == lab_cache / "checkpoints"
    shards = sorted(path.glob("*.safetensors"))
    assert len(shards) >= 2  # 344,384 float32 parameters = 1.38 MB in 1 MB shards
    assert (path / "model.safetensors.index.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert zoo.checkpoint(model, name="unit", dtype="float32", shard_size="1MB", progress=False) == path
    assert [p.name for p in lab_cache.iterdir()] == ["checkpoints"]  # nothing else written


def test_interrupted_checkpoint_leaves_nothing_and_rebuilds(lab_cache, monkeypatch):
    from transformers import PreTrainedModel

    model = zoo.build(SMALL_LLAMA, dtype="float32")
    original = PreTrainedModel.save_pretrained

    def half_then_interrupt(self, folder, **kwargs):
        (folder / "model-00001-of-00002.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        zoo.checkpoint(model, name="unit", dtype="float32", progress=False)
    assert list((lab_cache / "checkpoints").iterdir()) == []
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", original)
    path = zoo.checkpoint(model, name="unit", dtype="float32", progress=False)
    assert (path / "config.json").is_file()
    assert [p.name for p in (lab_cache / "checkpoints").iterdir()] == [path.name]


def test_a_killed_build_is_cleared_by_the_next(lab_cache):
    # A process killed mid-build leaves its temporary folder; the next build of that name removes it.
    stale = lab_cache / "checkpoints" / ".partial-unit-float32-shard100MB-seed0-dead"
    stale.mkdir(parents=True)
    (stale / "model-00001-of-00002.safetensors").write_bytes(b"half")
    model = zoo.build(SMALL_LLAMA, dtype="float32")
    path = zoo.checkpoint(model, name="unit", dtype="float32", progress=False)
    assert [p.name for p in (lab_cache / "checkpoints").iterdir()] == [path.name]


def test_unwritable_cache_is_one_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("BIGSMALL_LAB_CACHE", str(blocker / "cache"))
    with pytest.raises(PermissionError, match="cache folder .* is not writable.*set BIGSMALL_LAB_CACHE"):
        zoo.checkpoint("bigsmall-small")
    assert blocker.read_text() == "not a folder"


def test_checkpoint_bad_arguments(lab_cache):
    with pytest.raises(ValueError, match="model 'gpt-5' is not a preset or lab model"):
        zoo.checkpoint("gpt-5")
    with pytest.raises(ValueError, match="shard_size '10 parsecs' is not a memory size"):
        zoo.checkpoint("bigsmall-small", shard_size="10 parsecs")
    with pytest.raises(ValueError, match="name is required"):
        zoo.checkpoint(torch.nn.Linear(2, 2))


def test_load_model_default_is_the_embedded_model():
    model = bsl.load_model()
    assert model.config.num_attention_heads == 8 and model.config.num_key_value_heads == 4
    assert model.dtype == torch.bfloat16  # dtype="auto": the checkpoint's dtype
    assert bsl.load_model(dtype=torch.float32).dtype == torch.float32
    tokenizer = bsl.load_tokenizer()
    ids = tokenizer("Return the value", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()


def test_load_model_translates_the_old_dtype_name():
    with pytest.warns(UserWarning, match="torch_dtype is the older name of dtype"):
        model = bsl.load_model(torch_dtype=torch.float32)
    assert model.dtype == torch.float32


def test_hub_id_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(zoo.HubUnreachableError, match="is a hub id and the Hugging Face Hub cannot be reached"):
        bsl.load_model("meta-llama/Llama-3.1-8B")


def test_load_model_bad_names(tmp_path):
    with pytest.raises(ValueError, match="not a preset, a lab model, an existing folder or a hub id"):
        bsl.load_model(str(tmp_path / "missing-folder"))
    with pytest.raises(ValueError, match="trust_remote_code=True is refused"):
        bsl.load_model(trust_remote_code=True)
    with pytest.raises(ValueError, match="preset with random weights and no tokenizer"):
        bsl.load_tokenizer("llama-3.1-8b")


def test_tiny_flux_pipeline_builds_offline_and_generates(lab_cache):
    pipe = zoo.tiny_flux_pipeline()
    assert (lab_cache / "pipelines" / "tiny-flux-seed0" / "model_index.json").is_file()
    assert type(pipe).__name__ == "FluxPipeline"
    image = pipe("a photo of a cat", num_inference_steps=1, height=32, width=32, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3) and math.isfinite(float(image.mean()))
