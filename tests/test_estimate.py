"""The estimator: exact bytes per preset, KV cache as transformers allocates it, bitsandbytes storage
as a real load holds it, the CLI printing the API's numbers, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

import pytest
import torch

import bigsmall_lab as bsl
from bigsmall_lab import zoo
from bigsmall_lab._errors import LabError
from bigsmall_lab.estimates import (
    Quantization, estimate, kv_cache_bytes, largest_layer_bytes, weights_bytes,
)
from bigsmall_lab.measure import stored_weight_bytes

from .test_zoo import PUBLISHED


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_weights_are_parameters_times_bytes(name):
    # bf16 checkpoints store 2 bytes per parameter: the published total_size, exactly
    assert weights_bytes(name, "bfloat16") == 2 * PUBLISHED[name]
    assert weights_bytes(name, "float32") == 4 * PUBLISHED[name]
    assert weights_bytes(name, "float8_e4m3fn") == PUBLISHED[name]


def test_the_talks_numbers():
    # The talk: 8B parameters x 2 bytes = ~16 GB, more than the ~15 GB a free Colab T4 can use;
    # 16,060,522,496 is the bf16 checkpoint's safetensors total_size (model.safetensors.index.json).
    assert weights_bytes("llama-3.1-8b") == 16_060_522_496
    assert not estimate("llama-3.1-8b", seq_len=1, overhead_bytes=0).fits("T4")
    assert estimate("llama-3.1-8b", quantization="nf4").fits("T4")


def test_t5_keeps_wo_in_float32_when_loaded_in_float16():
    # T5's _keep_in_fp32_modules = ["wo"]: 24 layers x 4096 x 10240 weights stay 4 bytes in fp16
    wo = 24 * 4096 * 10240
    assert weights_bytes("t5-v1.1-xxl-encoder", "float16") == 2 * PUBLISHED["t5-v1.1-xxl-encoder"] + 2 * wo


def test_quantized_bytes_of_llama_8b_worked_out_by_hand():
    n_linear = 32 * (4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336)  # q, o, k, v, gate/up/down
    rows = 32 * (4096 + 1024 + 1024 + 4096 + 14336 * 2 + 4096)  # output rows of those Linears
    rest = 2 * PUBLISHED["llama-3.1-8b"] - 2 * n_linear  # embeddings, lm_head, norms stay bf16
    assert weights_bytes("llama-3.1-8b", quantization="int8") == rest + n_linear + 4 * rows
    linears = 32 * 7
    nf4 = rest + n_linear // 2 + 4 * (n_linear // 64) + linears * 16 * 4
    assert weights_bytes("llama-3.1-8b", quantization="nf4") == nf4
    assert weights_bytes("llama-3.1-8b", quantization="fp4") == nf4
    assert weights_bytes("llama-3.1-8b", quantization="nf4-double") < nf4


SMALL = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 4096, "hidden_size": 256,
         "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4,
         "head_dim": 32, "tie_word_embeddings": False, "max_position_embeddings": 128}
BNB = {
    "int8": dict(load_in_8bit=True),
    "nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
    "fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4"),
    "nf4-double": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
}


@pytest.mark.parametrize("quantization", sorted(BNB))
@pytest.mark.parametrize("tied", [False, True])
def test_weights_bytes_equal_a_real_bitsandbytes_load(quantization, tied):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    cfg = {**SMALL, "tie_word_embeddings": tied}
    with tempfile.TemporaryDirectory() as folder:
        zoo.build(cfg, dtype="bfloat16").save_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.bfloat16, quantization_config=BitsAndBytesConfig(**BNB[quantization]))
    assert stored_weight_bytes(model) == weights_bytes(cfg, "bfloat16", quantization)
    # get_memory_footprint() leaves bitsandbytes' scales / absmax out: ours is larger
    assert model.get_memory_footprint() < weights_bytes(cfg, "bfloat16", quantization)


@pytest.mark.parametrize("quantization", sorted(BNB))
def test_embedded_model_quantized_load_is_exact(quantization):
    from transformers import BitsAndBytesConfig

    from bigsmall_lab.quantized import use_portable_4bit

    model = bsl.load_model(dtype=torch.bfloat16, quantization_config=BitsAndBytesConfig(**BNB[quantization]))
    assert stored_weight_bytes(model) == weights_bytes(zoo.TINY_DIR, "bfloat16", quantization)
    # bitsandbytes moves int8's row scales (SCB) from the weight to the module's state at the first
    # forward pass: the count must not change. On a CPU with AVX512-BF16 it would also repack 4-bit
    # weights there (tests/test_quantization_paths.py checks that path): keep the layout every CPU has.
    use_portable_4bit(model)
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
    assert stored_weight_bytes(model) == weights_bytes(zoo.TINY_DIR, "bfloat16", quantization)


def meta_cache_bytes(name: str, seq_len: int) -> int:
    """What transformers' DynamicCache holds after seq_len tokens, filled with meta tensors (no memory).

    Heads and head size are read from the config.json by hand, not from the code under test, so a
    slip in the estimator's KV layout (say, doubling the KV heads) makes the comparison fail.
    """
    from transformers import AutoConfig, DynamicCache

    cfg = zoo.config_dict(name)
    n_kv_heads = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    text = AutoConfig.for_model(**{k: v for k, v in cfg.items() if k not in ("transformers_version", "torch_dtype")})
    cache = DynamicCache(config=text)
    for layer in range(cfg["num_hidden_layers"]):
        k = torch.empty(1, n_kv_heads, seq_len, head_dim, device="meta", dtype=torch.bfloat16)
        cache.update(k, k.clone(), layer)
    return sum(l.keys.numel() * 2 + l.values.numel() * 2 for l in cache.layers)


DECODERS = [n for n in PUBLISHED if n not in ("flux.1-dev-transformer", "t5-v1.1-xxl-encoder", "clip-vit-l-14-text")]


@pytest.mark.parametrize("name", DECODERS)
@pytest.mark.parametrize("seq_len", [1, 4095, 4096, 10_000])
def test_kv_cache_matches_what_transformers_allocates(name, seq_len):
    assert kv_cache_bytes(name, seq_len) == meta_cache_bytes(name, seq_len)


def test_kv_cache_formula_and_gqa():
    # 2 (K, V) x 32 layers x 8 KV heads x 128 head dim x 8192 tokens x 2 bytes = 1 GiB
    assert kv_cache_bytes("llama-3.1-8b", 8192) == 2 * 32 * 8 * 128 * 8192 * 2 == 2**30
    # without GQA (32 KV heads) it would be 4x as big: SmolLM2 has 32 KV heads for 32 heads
    assert kv_cache_bytes("smollm2-1.7b", 1000) == 2 * 24 * 32 * 64 * 1000 * 2
    assert kv_cache_bytes("llama-3.2-1b", 100, batch_size=3, dtype="float32") == 2 * 16 * 8 * 64 * 100 * 3 * 4
    # gemma-2: explicit head_dim 256; half of the 42 layers keep only 4095 tokens
    assert kv_cache_bytes("gemma-2-9b", 8192) == 2 * 8 * 256 * (21 * 8192 + 21 * 4095) * 2


def test_activation_estimate_worked_out_by_hand():
    from bigsmall_lab.estimates import activation_bytes

    # Llama 3.1 8B (config: hidden 4096, intermediate 14336, vocab 128256), 1000 tokens, bf16, no grad:
    # one layer's eager MLP holds act(gate), up and their product (3 x 14336), beside the residual
    # stream and its normed copy (2 x 4096), all x 1000 tokens x 2 bytes (shared/FACTS.md, "Found in review").
    layer = 1000 * (3 * 14336 + 2 * 4096) * 2
    # generate() keeps the last position's logits in bf16 and a float32 copy: 128256 x (2 + 4) bytes
    assert activation_bytes("llama-3.1-8b", 1000) == layer + 128256 * (2 + 4)
    # a plain forward returns bf16 logits for every position (transformers 5)
    assert activation_bytes("llama-3.1-8b", 1000, all_logits=True) == layer + 1000 * 128256 * 2
    # float32 doubles every term
    assert activation_bytes("llama-3.1-8b", 1000, dtype="float32", all_logits=True) == 2 * (layer + 1000 * 128256 * 2)


def test_activation_estimate_orders_like_a_measured_forward_pass():
    # Measured on the CPU in one run: a wider MLP peaks higher, and all logits peak higher than the last one.
    from bigsmall_lab.estimates import activation_bytes

    # float32, 512 tokens: MLPs of 3 x 256 and 3 x 4096 wide (1.6 and 25 MB); logits of the last
    # position (tiny) or of all 512 over 32,000 tokens (66 MB)
    narrow = {**SMALL, "intermediate_size": 256, "vocab_size": 8000}
    wide = {**narrow, "intermediate_size": 4096}
    wide_vocab = {**wide, "vocab_size": 32000}
    peaks, estimates = [], []
    ids = torch.randint(0, 1000, (1, 512))
    for cfg, all_logits in ((narrow, False), (wide, False), (wide_vocab, True)):
        model = zoo.build(cfg, dtype="float32")
        with torch.no_grad():
            model(ids[:, :4])  # warm up: first-call allocations are not the forward pass
            with bsl.track(device="cpu") as t:
                out = model(ids, logits_to_keep=0 if all_logits else 1)
            del out
        peaks.append(t.peak_bytes)
        estimates.append(activation_bytes(cfg, 512, dtype="float32", all_logits=all_logits))
    assert estimates[0] < estimates[1] < estimates[2]
    assert peaks[0] < peaks[1] < peaks[2], peaks


def test_estimate_fits_the_gpus_and_warns_beyond_the_trained_context():
    e = estimate("llama-3.2-1b", seq_len=2048, batch_size=2)
    assert e.parameters == PUBLISHED["llama-3.2-1b"]
    assert e.fits("T4") and e.fits("24GB") and not e.fits(10**9)
    assert not any(estimate("llama-3.1-405b").fits_table().values())  # 811 GB of bf16 weights alone
    assert e.notes == () and "assumed" in e.overhead_source
    long = estimate("llama-3.2-1b", seq_len=131_073)  # config: max_position_embeddings 131072
    assert any("beyond max_position_embeddings 131,072" in note for note in long.notes)


def test_encoders_and_diffusers_models_have_no_kv_cache():
    for name in ("t5-v1.1-xxl-encoder", "clip-vit-l-14-text"):
        with pytest.raises(LabError, match="is an encoder .* keeps no KV cache"):
            kv_cache_bytes(name, 10)
        e = estimate(name, seq_len=64)
        assert e.kv_cache_bytes == 0 and any("no KV cache" in n for n in e.notes)
    flux = estimate("flux.1-dev-transformer")
    assert flux.weights_bytes == 2 * PUBLISHED["flux.1-dev-transformer"]
    assert flux.kv_cache_bytes == flux.activation_bytes == 0 and "diffusers" in flux.notes[0]


def test_overhead_is_labelled():
    assumed = estimate("llama-3.2-1b")
    given = estimate("llama-3.2-1b", overhead_bytes=123, overhead_source="measured on GPU 0")
    assert given.total_bytes - assumed.total_bytes == 123 - assumed.overhead_bytes
    assert assumed.overhead_source.startswith("assumed") and given.overhead_source == "measured on GPU 0"


def test_the_assumed_cuda_context_is_the_figure_its_source_states():
    # The assumption and the sentence that labels it in every estimate must say the same number.
    from bigsmall_lab.estimates import RUNTIME_OVERHEAD

    assert RUNTIME_OVERHEAD.source.startswith(f"assumed {RUNTIME_OVERHEAD.bytes / 1e6:g} MB:")


def _printed_torch_total(source: str) -> tuple[int, int]:
    """(bytes, how far off they may be) of the torch total a GPU's source quotes, in the unit it was printed."""
    import re

    if m := re.search(r"total_memory[= ]([\d,]+) bytes", source):
        return int(m.group(1).replace(",", "")), 0
    if m := re.search(r"total_memory=(\d+)MB", source):  # torch prints MiB, rounded down, labelled MB
        return int(m.group(1)) * 2**20, 0
    m = re.search(r"total capacity of ([\d.]+) GiB", source)  # an out-of-memory message: two decimals of GiB
    assert m, f"the source names no torch total: {source}"
    return round(float(m.group(1)) * 2**30), int(0.005 * 2**30)


def test_gpu_sizes_are_the_figures_their_sources_report():
    # Each GPU's two figures must be the ones its source quotes (nvidia-smi's MiB, torch's total in the unit
    # printed), and an "80 GB" card must hold about 80 GiB, not 80 x 10**9 bytes.
    import re

    from bigsmall_lab.estimates import GPUS

    for gpu in GPUS.values():
        assert f"{gpu.smi_mib}MiB" in gpu.source.replace(",", ""), gpu.name
        printed, slack = _printed_torch_total(gpu.source)
        assert abs(gpu.torch_bytes - printed) <= slack, (gpu.name, gpu.torch_bytes, printed)
        assert gpu.torch_bytes <= gpu.smi_bytes  # torch sees what nvidia-smi reports, less the driver's share
        assert gpu.smi_bytes > 0.9 * gpu.marketed_number * 2**30 > gpu.marketed_number * 10**9 * 0.9
    assert re.fullmatch(r"\d+ GB", GPUS["H100"].marketed) and GPUS["H100"].usable_bytes > 80 * 10**9


def test_module_bytes_sum_to_the_weights_and_nest():
    from bigsmall_lab.estimates import module_bytes

    sizes = module_bytes("llama-3.2-1b", "bfloat16")
    layers = [sizes[f"model.layers.{i}"] for i in range(16)]
    assert len(set(layers)) == 1
    # embedding 128256 x 2048 (tied with lm_head: counted once) + 16 layers + final norm 2048, x 2 bytes
    assert sizes[""] == sizes["model"] == 2 * (128256 * 2048 + 2048) + 16 * layers[0] == 2 * PUBLISHED["llama-3.2-1b"]


def test_a_config_is_resolved_once_per_estimate(monkeypatch):
    from bigsmall_lab.zoo import _configs

    calls = []
    original = _configs.instantiate
    monkeypatch.setattr(_configs, "instantiate", lambda *a, **k: calls.append(1) or original(*a, **k))
    estimate(dict(SMALL), seq_len=16)
    assert len(calls) == 1


def test_largest_layer_agrees_with_accelerate():
    from accelerate.utils import calculate_maximum_sizes

    for name in ("llama-3.1-8b", "t5-v1.1-xxl-encoder", "flux.1-dev-transformer", "clip-vit-l-14-text"):
        model = zoo.meta_model(name, torch.float32)
        total, (largest, _) = calculate_maximum_sizes(model)
        buffers = sum(b.numel() * b.element_size() for b in model.buffers())
        # accelerate's sizes include buffers (rotary tables, position ids); ours count what checkpoints store
        assert total - buffers == weights_bytes(name, "float32")
        assert 0 <= largest - largest_layer_bytes(name, "float32") <= buffers


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "bigsmall_lab.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_cli_prints_the_same_numbers_as_the_api():
    out = run_cli("estimate", "llama-3.1-8b", "--dtype", "bfloat16", "--quantization", "nf4", "--seq-len", "2048",
                  "--json")
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    api = estimate("llama-3.1-8b", dtype="bfloat16", quantization="nf4", seq_len=2048)
    assert row["weights_bytes"] == api.weights_bytes and row["kv_cache_bytes"] == api.kv_cache_bytes
    assert row["total_bytes"] == api.total_bytes and row["fits"] == api.fits_table()
    assert row["largest_layer_bytes"] == largest_layer_bytes("llama-3.1-8b", "bfloat16", "nf4")
    table = run_cli("estimate", "llama-3.1-8b")
    rows = {line.split("|")[1].strip(): line for line in table.stdout.splitlines() if line.startswith("| ")}
    assert set(rows) == {"dtype", "float32", "bfloat16", "bfloat16 + int8", "bfloat16 + nf4"}
    assert " 16.06 GB " in rows["bfloat16"] and " 32.12 GB " in rows["float32"]  # 8,030,261,248 x 2 and x 4


def test_cli_accepts_a_config_json(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(zoo.config_dict("llama-3.2-1b")))
    out = run_cli("estimate", str(path), "--dtype", "float16", "--json")
    assert json.loads(out.stdout)[0]["weights_bytes"] == 2 * PUBLISHED["llama-3.2-1b"]


def test_bad_input_is_one_sentence_naming_the_argument():
    # (the table of every bad input is tests/test_bad_input.py; these are the estimator's own)
    with pytest.raises(LabError, match=r"dtype 'bf32' is not known.*; use one of: float32, float16, bfloat16"):
        weights_bytes("llama-3.1-8b", "bf32")
    with pytest.raises(LabError, match="quantization 'int3' is not known.*; use None or one of: int8, nf4, fp4"):
        weights_bytes("llama-3.1-8b", quantization="int3")
    with pytest.raises(LabError, match="diffusers model: it has no KV cache"):
        kv_cache_bytes("flux.1-dev-transformer", 10)
    with pytest.raises(LabError, match="missing the key 'vocab_size'"):
        kv_cache_bytes({"model_type": "llama"}, 10)  # not filled in with transformers' defaults
    with pytest.raises(LabError, match="diffusers model"):
        weights_bytes("flux.1-dev-transformer", quantization="nf4")
    out = run_cli("estimate", "llama-3.1-8b", "--quantization", "int3")
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "quantization 'int3'" in out.stderr
    assert Quantization.parse("NF4") is Quantization.NF4
