"""The zoo: exact parameter counts on the meta device, random-weight builds, checkpoints, loading."""

from __future__ import annotations

import json
import math

import pytest
import torch

import bigsmall_lab as bsl
from bigsmall_lab import zoo
from bigsmall_lab._errors import LabError

# Published parameter counts, each with its source outside the lab. "page" is the rounded count the
# model's hub page / model card shows (also ``Preset.published``, checked below); the exact figure is
# the bf16 safetensors index's total_size / 2 bytes where noted, and every exact figure was re-measured
# on the meta device when the presets were added (the 8B, 70B, FLUX, T5, CLIP ones: shared/FACTS.md).
PUBLISHED = {
    "llama-3.1-8b": 8_030_261_248,     # page "8.03B"; index total_size 16,060,522,496 B (FACTS.md)
    "llama-3.1-70b": 70_553_706_496,   # page "70.6B"; FACTS.md
    "llama-3.1-405b": 405_853_388_800,  # page "406B"
    "llama-3.2-1b": 1_235_814_400,     # page "1.24B" (tied embeddings)
    "llama-3.2-3b": 3_212_749_824,     # page "3.21B" (tied embeddings)
    "mistral-7b-v0.3": 7_248_023_552,  # page "7.25B"
    "qwen2.5-7b": 7_615_616_512,       # page "7.62B"
    "gemma-2-9b": 9_241_705_984,       # page "9.24B" (tied embeddings)
    "smollm2-1.7b": 1_711_376_384,     # page "1.71B" (tied embeddings)
    "flux.1-dev-transformer": 11_901_408_320,  # FLUX.1-dev transformer/: 23.8 GB bf16 (FACTS.md); page "12B"
    "t5-v1.1-xxl-encoder": 4_762_310_656,      # FLUX.1-dev text_encoder_2/, shared embedding once (FACTS.md)
    "clip-vit-l-14-text": 123_060_480,          # FLUX.1-dev text_encoder/ (FACTS.md)
}


def _published_count(text: str) -> float:
    """'8.03B' -> 8.03e9, '123M' -> 1.23e8: the rounded figure a model card shows."""
    return float(text[:-1]) * {"B": 10**9, "M": 10**6}[text[-1]]


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


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_published_label_rounds_the_exact_count(name):
    # "8.03B" states 3 significant digits: the exact count must round to it
    label = zoo.PRESETS[name].published
    digits = len(label[:-1].replace(".", "").lstrip("0"))
    assert math.isclose(float(f"{PUBLISHED[name]:.{digits}g}"), _published_count(label), rel_tol=1e-9), label


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


def test_a_misspelt_preset_suggests_the_closest():
    with pytest.raises(LabError, match=r"'lama-3\.1-8b' is not a preset.*did you mean 'llama-3\.1-8b'"):
        bsl.count_parameters("lama-3.1-8b")
    with pytest.raises(LabError, match=r"'zzz' is not a preset.*bsl\.presets\(\)"):
        bsl.count_parameters("zzz")


def test_nonexistent_path_is_one_clear_error(tmp_path):
    with pytest.raises(LabError, match="not a preset, a lab model or an existing config.json path"):
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
    assert folders(lab_cache / "checkpoints") == [path.name]


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
    assert folders(lab_cache / "checkpoints") == []
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", original)
    path = zoo.checkpoint(model, name="unit", dtype="float32", progress=False)
    assert (path / "config.json").is_file()
    assert folders(lab_cache / "checkpoints") == [path.name]


def folders(path):
    """The folders (complete or partial) in ``path``; the tiny lock files beside them are left out."""
    return sorted(p.name for p in path.iterdir() if p.is_dir())


def test_a_killed_build_is_cleared_by_the_next_of_any_target(lab_cache):
    # Processes killed mid-build leave their temporary folders; the next build in that folder removes
    # them, its own target's and another target's alike (their writers hold no lock any more).
    for stale_name in (".partial-unit-float32-shard100MB-seed0-dead", ".partial-other-bfloat16-shard1MB-seed0-1234abcd"):
        stale = lab_cache / "checkpoints" / stale_name
        stale.mkdir(parents=True)
        (stale / "model-00001-of-00002.safetensors").write_bytes(b"half")
    model = zoo.build(SMALL_LLAMA, dtype="float32")
    path = zoo.checkpoint(model, name="unit", dtype="float32", progress=False)
    assert folders(lab_cache / "checkpoints") == [path.name]


def test_unwritable_cache_is_one_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("BIGSMALL_LAB_CACHE", str(blocker / "cache"))
    with pytest.raises(PermissionError, match="cache folder .* is not writable.*set BIGSMALL_LAB_CACHE"):
        zoo.checkpoint("bigsmall-small")
    assert blocker.read_text() == "not a folder"


def test_checkpoint_bad_arguments(lab_cache):
    with pytest.raises(LabError, match="model 'gpt-5' is not a preset or lab model"):
        zoo.checkpoint("gpt-5")
    with pytest.raises(LabError, match="shard_size '10 parsecs' is not a memory size"):
        zoo.checkpoint("bigsmall-small", shard_size="10 parsecs")
    with pytest.raises(LabError, match="cannot be saved as a checkpoint"):
        zoo.checkpoint(torch.nn.Linear(2, 2), name="linear")
    with pytest.raises(LabError, match="name is required"):
        zoo.checkpoint(zoo.build(SMALL_LLAMA, dtype="float32"))
    for bad in ("../../x", "/tmp/x", "..", ".partial-x", "a/b", "x" * 200):
        with pytest.raises(LabError, match="is not a folder name"):
            zoo.checkpoint("bigsmall-tiny", name=bad)
    assert not (lab_cache / "x").exists() and not (lab_cache.parent / "x").exists()


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


@pytest.mark.parametrize("name", ["llama-3.1-8b", "gemma-2-9b", "mistral-7b-v0.3", "smollm2-1.7b", "bigsmall-small"])
def test_one_attention_layout_per_config_read_by_every_planner(name):
    # The layout is derived once (ModelSpec.attention); the KV-cache maths, tensor parallelism and the exercises
    # all read it, so they cannot disagree.
    from bigsmall_lab import estimates, kv_plan, tp_plan
    from bigsmall_lab.exercises._core import config_layout
    from bigsmall_lab.zoo._configs import resolve

    layout = resolve(name).attention
    cfg = zoo.config_dict(name)
    assert layout.layers == cfg["num_hidden_layers"] == len(layout.windows)
    assert (layout.heads, layout.kv_heads) == (cfg["num_attention_heads"], cfg.get("num_key_value_heads"))
    assert layout.head_dim == cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    assert config_layout(name)[1:] == (layout.layers, layout.heads, layout.kv_heads, layout.head_dim)
    assert config_layout(cfg)[1:] == config_layout(name)[1:]  # a dict resolves to the same layout
    assert tp_plan.heads(name) == (layout.heads, layout.kv_heads)
    assert kv_plan._layout(name) == (layout.layers, layout.heads, layout.kv_heads, layout.head_dim)
    assert estimates._kv_layout(resolve(name)) == (layout.kv_heads, layout.head_dim, list(layout.windows))


def test_the_attention_layout_of_sliding_windows_and_of_models_without_one():
    from bigsmall_lab.zoo._configs import resolve

    gemma = resolve("gemma-2-9b").attention  # Gemma 2 alternates 4096-token sliding layers with full ones
    assert gemma.windows[:4] == (4096, None, 4096, None) and gemma.windows.count(None) == 21
    assert resolve("flux.1-dev-transformer").attention is None  # a diffusers model: no attention layout
    assert resolve("llama-3.1-8b").attention is resolve("llama-3.1-8b").attention  # derived once, kept
