"""Bad input, as a careless or unlucky learner types it, gets one sentence: a table of cases.

Every case of the API and the widgets raises the lab's one error type (``LabError``, a ValueError)
with a message that names the argument and stays under 300 characters on one line; every case of
the CLI exits 2 with that sentence and no traceback. The sentences' exact wording is tested where
each module is tested; this table makes the rule hold across the whole surface.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import bigsmall_lab as bsl
from bigsmall_lab import bits, cli, kvcache, quant, quantized, tp_plan, views, zoo
from bigsmall_lab._errors import LabError
from bigsmall_lab._units import format_bytes, parse_size
from bigsmall_lab.estimates import Comparison, activation_bytes, estimate, kv_cache_bytes, weights_bytes, weights_table
from bigsmall_lab.hardware import needs_cuda
from bigsmall_lab.offload_plan import ImageSettings
from bigsmall_lab.measure import Sampler, sample_now, stored_weight_bytes
from bigsmall_lab.views import BitLayout, precision_chart

GARBAGE = "x" * 10_000_000  # a 10 MB paste: never echoed whole
SMALL = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 256, "hidden_size": 64,
         "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "tie_word_embeddings": True, "max_position_embeddings": 128}


def with_(**changes) -> dict:
    return {**SMALL, **changes}


def track(**kwargs):
    with bsl.track(**kwargs):
        pass


def write(tmp_path, name: str, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def broken_checkpoint(tmp_path):
    folder = tmp_path / "broken"
    zoo.build(SMALL, dtype="float32").save_pretrained(folder)
    shard = folder / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a download cut half way
    return folder


# (id, the argument the sentence must name, a function of tmp_path that must raise LabError)
CASES = [
    # sizes and dtypes
    ("size-unit", "size", lambda p: parse_size("10 parsecs")),
    ("size-negative", "size", lambda p: parse_size(-1)),
    ("size-bool", "size", lambda p: parse_size(True)),
    ("size-nan", "size", lambda p: parse_size(float("nan"))),
    ("size-list", "size", lambda p: parse_size([1])),
    ("size-10MB-garbage", "size", lambda p: parse_size(GARBAGE)),
    ("format-unit", "unit", lambda p: format_bytes(1, unit="XB")),
    ("dtype-typo", "dtype", lambda p: weights_bytes("llama-3.1-8b", "bf32")),
    ("dtype-number", "dtype", lambda p: weights_bytes("llama-3.1-8b", 16)),
    ("quantization-typo", "quantization", lambda p: weights_bytes("llama-3.1-8b", quantization="int3")),
    ("quantization-number", "quantization", lambda p: weights_bytes("llama-3.1-8b", quantization=4)),
    ("quantization-diffusers", "quantization", lambda p: weights_bytes("flux.1-dev-transformer", quantization="nf4")),
    # token counts
    ("seq_len-zero", "seq_len", lambda p: kv_cache_bytes("llama-3.1-8b", 0)),
    ("seq_len-negative", "seq_len", lambda p: kv_cache_bytes("llama-3.1-8b", -5)),
    ("seq_len-fraction", "seq_len", lambda p: kv_cache_bytes("llama-3.1-8b", 1.5)),
    ("seq_len-bool", "seq_len", lambda p: kv_cache_bytes("llama-3.1-8b", True)),
    ("seq_len-text", "seq_len", lambda p: kv_cache_bytes("llama-3.1-8b", "4096")),
    ("seq_len-nan", "seq_len", lambda p: kv_cache_bytes("llama-3.1-8b", float("nan"))),
    ("batch_size-zero", "batch_size", lambda p: kv_cache_bytes("llama-3.1-8b", 10, batch_size=0)),
    ("estimate-seq_len", "seq_len", lambda p: estimate("llama-3.2-1b", seq_len=0)),
    # configs: names, files, values
    ("config-misspelt", "config", lambda p: bsl.count_parameters("lama-3.1-8b")),
    ("config-number", "config", lambda p: bsl.count_parameters(12)),
    ("config-10MB-garbage", "config", lambda p: bsl.count_parameters(GARBAGE)),
    ("config-missing-sizes", "vocab_size", lambda p: kv_cache_bytes({"model_type": "llama"}, 10)),
    ("config-no-type", "model_type", lambda p: bsl.count_parameters({"hidden_size": 4})),
    ("model_type-list", "model_type", lambda p: bsl.count_parameters(with_(model_type=["llama"]))),
    ("model_type-unknown", "model_type", lambda p: bsl.count_parameters(with_(model_type="lama"))),
    ("heads-zero", "num_attention_heads", lambda p: bsl.count_parameters(with_(num_attention_heads=0))),
    ("kv-heads-zero", "num_key_value_heads", lambda p: bsl.count_parameters(with_(num_key_value_heads=0))),
    ("kv-heads-not-dividing", "num_key_value_heads", lambda p: bsl.count_parameters(with_(num_key_value_heads=3))),
    ("hidden-negative", "hidden_size", lambda p: bsl.count_parameters(with_(hidden_size=-64))),
    ("hidden-text", "hidden_size", lambda p: bsl.count_parameters(with_(hidden_size="64"))),
    ("layers-fraction", "num_hidden_layers", lambda p: bsl.count_parameters(with_(num_hidden_layers=1.5))),
    ("class-unknown", "_class_name", lambda p: bsl.count_parameters({"_class_name": "NoSuchModel2D"})),
    ("file-json-number", "config file", lambda p: bsl.count_parameters(write(p, "a.json", b"42"))),
    ("file-json-list", "config file", lambda p: bsl.count_parameters(write(p, "b.json", b"[1, 2]"))),
    ("file-not-utf8", "config file", lambda p: bsl.count_parameters(write(p, "c.json", b"\xff\xfe{\x00"))),
    ("file-not-json", "config file", lambda p: bsl.count_parameters(write(p, "d.json", b"{not json"))),
    ("file-missing", "config", lambda p: bsl.count_parameters(p / "missing.json")),
    # the estimator's other inputs
    ("kv-encoder-t5", "config", lambda p: kv_cache_bytes("t5-v1.1-xxl-encoder", 10)),
    ("kv-encoder-clip", "config", lambda p: kv_cache_bytes("clip-vit-l-14-text", 10)),
    ("kv-diffusers", "config", lambda p: kv_cache_bytes("flux.1-dev-transformer", 10)),
    ("activations-diffusers", "config", lambda p: activation_bytes("flux.1-dev-transformer", 10)),
    ("all_logits-text", "all_logits", lambda p: activation_bytes("llama-3.2-1b", 10, all_logits="yes")),
    ("overhead-negative", "overhead_bytes", lambda p: estimate("llama-3.2-1b", overhead_bytes=-1)),
    ("overhead-text", "overhead_bytes", lambda p: estimate("llama-3.2-1b", overhead_bytes="500MB")),
    ("gpu-unknown", "gpu", lambda p: estimate("llama-3.2-1b").fits("T5")),
    ("gpu-size-typo", "gpu", lambda p: estimate("llama-3.2-1b").fits("24 parsecs")),
    ("table-a-string", "configs", lambda p: weights_table("llama-3.2-1b")),
    # building, checkpoints, loading
    ("build-int8", "dtype", lambda p: zoo.build(SMALL, dtype="int8")),
    ("build-weights", "weights", lambda p: zoo.build(SMALL, weights="trained")),
    ("build-seed-text", "seed", lambda p: zoo.build(SMALL, seed="a")),
    ("build-seed-negative", "seed", lambda p: zoo.build(SMALL, seed=-1)),
    ("build-device-tpu", "device", lambda p: zoo.build(SMALL, device="tpu")),
    ("build-device-number", "device", lambda p: zoo.build(SMALL, device=3.5)),
    ("build-too-big", "config", lambda p: zoo.build("llama-3.1-405b")),  # 811 GB: refused before allocating
    ("checkpoint-unknown", "model", lambda p: zoo.checkpoint("gpt-5")),
    ("checkpoint-shard-unit", "shard_size", lambda p: zoo.checkpoint("bigsmall-tiny", shard_size="10 parsecs")),
    ("checkpoint-shard-small", "shard_size", lambda p: zoo.checkpoint("bigsmall-tiny", shard_size="10KB")),
    ("checkpoint-name-up", "name", lambda p: zoo.checkpoint("bigsmall-tiny", name="../../x")),
    ("checkpoint-name-absolute", "name", lambda p: zoo.checkpoint("bigsmall-tiny", name="/tmp/x")),
    ("checkpoint-no-save", "model", lambda p: zoo.checkpoint(torch.nn.Linear(2, 2), name="linear")),
    ("checkpoint-no-name", "name", lambda p: zoo.checkpoint(zoo.build(SMALL, dtype="float32"))),
    ("checkpoint-seed", "seed", lambda p: zoo.checkpoint("bigsmall-tiny", seed="a")),
    ("load-dtype", "dtype", lambda p: bsl.load_model(dtype="bf32")),
    ("load-unknown", "name_or_path", lambda p: bsl.load_model("no-such-model-here")),
    ("load-number", "name_or_path", lambda p: bsl.load_model(12)),
    ("load-remote-code", "trust_remote_code", lambda p: bsl.load_model(trust_remote_code=True)),
    ("load-corrupted", "model.safetensors", lambda p: bsl.load_model(broken_checkpoint(p))),
    ("tokenizer-preset", "name_or_path", lambda p: bsl.load_tokenizer("llama-3.1-8b")),
    ("load-empty-path", "name_or_path", lambda p: bsl.load_model("")),  # Path("") would load the current folder
    ("load-blank-path", "name_or_path", lambda p: bsl.load_model("   ")),
    ("load-device-cuda", "device_map", lambda p: bsl.load_model(device_map="cuda")),
    ("load-device-mps", "device_map", lambda p: bsl.load_model(device_map="mps")),
    ("load-device-gpu-index", "device_map", lambda p: bsl.load_model(device_map={"": 0})),
    ("load-device-tpu", "device_map", lambda p: bsl.load_model(device_map="tpu")),
    ("load-device-list", "device_map", lambda p: bsl.load_model(device_map=["cpu"])),
    ("load-dtype-float8", "dtype", lambda p: bsl.load_model(dtype="float8")),
    ("load-dtype-fp8-storage", "dtype", lambda p: bsl.load_model(dtype="float8_e4m3fn")),
    ("checkpoint-dtype-differs", "dtype", lambda p: zoo.checkpoint(zoo.build(SMALL, dtype="float32"), name="small32",
                                                                   dtype="bfloat16")),
    ("config-nested-deep", "config file",
     lambda p: bsl.count_parameters(write(p, "deep.json", b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"))),
    # measuring
    ("interval-nan", "interval_s", lambda p: track(interval_s=float("nan"))),
    ("interval-text", "interval_s", lambda p: track(interval_s="0.01")),
    ("interval-zero", "interval_s", lambda p: track(interval_s=0)),
    ("interval-negative", "interval_s", lambda p: track(interval_s=-1)),
    ("interval-inf", "interval_s", lambda p: Sampler(interval_s=float("inf"))),
    ("track-device-tpu", "device", lambda p: track(device="tpu")),
    ("track-device-meta", "device", lambda p: track(device="meta")),
    ("track-label", "label", lambda p: track(label=3)),
    ("sampler-callback", "on_sample", lambda p: Sampler(on_sample=3)),
    ("sample-device", "device", lambda p: sample_now("cuda:x")),
    ("stored-not-a-model", "model", lambda p: stored_weight_bytes("model")),
    ("needs_cuda-what", "what", lambda p: needs_cuda(3, "the plan is shown")),
    # bits and their widgets
    ("decompose-text", "value", lambda p: bits.decompose("70000", "float16")),
    ("decompose-4bit", "dtype", lambda p: bits.decompose(1.0, "nf4")),
    ("compose-number", "bits", lambda p: bits.compose(0b1010, "float16")),
    ("compose-short", "bits", lambda p: bits.compose("0101", "float16")),
    ("spacing-number", "magnitudes", lambda p: bits.spacing("float16", 1.0)),
    ("spacing-text", "magnitudes", lambda p: bits.spacing("float16", "123")),
    ("representable-text", "low", lambda p: bits.representable("float16", "a", 1.0)),
    ("rounding-a-list", "values", lambda p: bits.rounding_stats([1.0, 2.0], "float16")),
    ("parse-deep-sum", "text", lambda p: bits.parse_value("1+" * 1000 + "1")),
    ("parse-deep-minus", "text", lambda p: bits.parse_value("-" * 10000 + "1")),
    ("parse-deep-parens", "text", lambda p: bits.parse_value("(" * 150 + "1" + ")" * 150)),
    ("parse-none", "text", lambda p: bits.parse_value(None)),
    ("parse-typo", "text", lambda p: bits.parse_value("7OOOO")),
    ("widget-value-none", "value", lambda p: BitLayout(value=None)),
    ("widget-dtypes-text", "dtypes", lambda p: BitLayout(dtypes="float16")),
    ("widget-dtypes-4bit", "dtypes", lambda p: BitLayout(dtypes=["nf4"])),
    ("widget-flip-index", "index", lambda p: BitLayout(value="1").flip_bit("float16", 99)),
    ("widget-flip-text-index", "index", lambda p: BitLayout(value="1").flip_bit("float16", "0")),
    ("chart-range-reversed", "x_range", lambda p: precision_chart(x_range=(10, 1))),
    ("chart-range-number", "x_range", lambda p: precision_chart(x_range=5)),
    ("chart-dtypes-text", "dtypes", lambda p: precision_chart(dtypes="float16")),
    # widgets never substitute another model, GPU or layer for the one asked
    ("planner-preset-unknown", "preset", lambda p: views.PlacementPlanner(preset="llama-3.1-8x")),
    ("planner-gpu-unknown", "gpu", lambda p: views.PlacementPlanner(gpu="H300")),
    ("planner-gpus-many", "n_gpus", lambda p: views.PlacementPlanner(n_gpus=64)),
    ("planner-cpu-size", "cpu_memory_gb", lambda p: views.PlacementPlanner(cpu_memory_gb=48)),
    ("quantmap-layer-unknown", "layer", lambda p: views.QuantMap({"a.weight": torch.randn(8, 8)}, layer="b.weight")),
    ("quantmap-bits", "bits", lambda p: views.QuantMap({"a.weight": torch.randn(8, 8)}, bits=40)),
    ("quantmap-group", "group_size", lambda p: views.QuantMap({"a.weight": torch.randn(8, 8)}, group_size=7)),
    # silently wrong numbers, now one sentence
    ("generation-guidance-nan", "guidance_scale", lambda p: ImageSettings(guidance_scale=float("nan"))),
    ("generation-guidance-negative", "guidance_scale", lambda p: ImageSettings(guidance_scale=-1)),
    ("generation-prompt-empty", "prompt", lambda p: ImageSettings(prompt="  ")),
    ("linear-timings-zero-rows", "tokens", lambda p: quantized.linear_timings(torch.randn(8, 64), tokens=(0,))),
    ("linear-timings-billion-rows", "tokens", lambda p: quantized.linear_timings(torch.randn(8, 64), tokens=(10**9,))),
    ("bnb-compute-dtype-int8", "bnb_4bit_compute_dtype", lambda p: bsl.load_model(
        quantization_config=__import__("transformers").BitsAndBytesConfig(load_in_4bit=True,
                                                                         bnb_4bit_compute_dtype=torch.int8))),
    # unbounded requests: refused with what they would need, before anything is allocated
    ("histogram-bins-billion", "bins", lambda p: quant.histogram(torch.zeros(4), bins=10**9)),
    ("generate-million-tokens", "max_new_tokens",
     lambda p: kvcache.generate(bsl.load_model(), torch.tensor([[1, 2, 3]]), max_new_tokens=10**6)),
    ("recompute-million-tokens", "max_new_tokens",
     lambda p: kvcache.recompute_vs_cache(bsl.load_model(), torch.tensor([[1, 2, 3]]), max_new_tokens=10**6)),
    ("shard-sizes-negative", "size", lambda p: tp_plan.shard_sizes(-10, 2)),
    ("shard-sizes-more-ranks-than-rows", "nproc", lambda p: tp_plan.shard_sizes(2, 9)),
    ("comparison-tolerance-negative", "tolerance", lambda p: Comparison("x", 100, 100).matches(-1)),
    ("comparison-tolerance-nan", "tolerance", lambda p: Comparison("x", 100, 100).matches(float("nan"))),
]


def test_the_table_is_big_enough():
    assert len(CASES) + len(CLI_CASES) >= 60
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("argument, call", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_sentence_naming_the_argument(argument, call, tmp_path, lab_cache):
    with pytest.raises(LabError) as raised:
        call(tmp_path)
    message = str(raised.value)
    assert argument in message, message
    assert len(message) < 300 and "\n" not in message, message
    assert "Traceback" not in message


def test_widget_value_errors_are_shown_not_raised():
    w = BitLayout(value="1")
    for text in ("1+" * 1000 + "1", "-" * 10000 + "1", GARBAGE):
        w.value = text  # the observer must not raise: the widget shows the sentence
        assert w.error.startswith("text ") and len(w.error) < 300
    w.value = "2"
    assert w.error == "" and w.rows[0]["value"] == "2"


def test_good_input_in_other_spellings_is_accepted():
    assert views.PlacementPlanner(preset="Llama-3.1-8B", gpu="h100").plan.model == "llama-3.1-8b"  # case is free
    assert kv_cache_bytes("llama-3.1-8b", np.int64(4096)) == kv_cache_bytes("llama-3.1-8b", 4096)
    assert kv_cache_bytes("llama-3.1-8b", 4096.0) == kv_cache_bytes("llama-3.1-8b", 4096)
    assert bsl.load_model(dtype="bf16").dtype == torch.bfloat16  # the lab's own alias works in load_model too
    assert BitLayout(value=10**400).rows[0]["value"] == "inf"  # beyond float64: every format sees infinity
    assert BitLayout(value=np.float32(0.5)).value == "0.5"
    assert parse_size(np.int64(1024)) == 1024


def test_no_proc_status_falls_back_to_psutil_and_labels_the_peak_sampled(monkeypatch):
    # macOS and Windows have no /proc: the resident set comes from psutil, sampled, unsplit.
    from bigsmall_lab import measure

    monkeypatch.setattr(measure, "_STATUS", "/nonexistent/status")
    with bsl.track("no proc", device="cpu", interval_s=0.005) as t:
        x = torch.ones(2**25)  # 128 MiB
        import time

        time.sleep(0.1)
        del x
    assert t.peak_source == "sampled" and t.rss_split is False
    assert all(s.rss_file == 0 for s in t.samples)
    assert t.peak_bytes > 0.5 * 2**27
    assert math.isfinite(t.wall_s)


# --- the CLI: exit status 2, one sentence on stderr, no traceback --------------------------------

def config_file(tmp_path, content) -> str:
    path = tmp_path / "config.json"
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    return str(path)


CLI_CASES = [
    ("missing-file", "config", lambda p: ["estimate", str(p / "nope.json")]),
    ("json-list", "config file", lambda p: ["estimate", config_file(p, b"[1, 2]")]),
    ("json-number", "config file", lambda p: ["estimate", config_file(p, b"3.5")]),
    ("not-utf8", "config file", lambda p: ["estimate", config_file(p, b"\xff\xfe")]),
    ("not-json", "config file", lambda p: ["estimate", config_file(p, b"{model_type: llama")]),
    ("missing-sizes", "vocab_size", lambda p: ["estimate", config_file(p, {"model_type": "llama"})]),
    ("unknown-type", "model_type", lambda p: ["estimate", config_file(p, with_(model_type="lama"))]),
    ("zero-heads", "num_attention_heads", lambda p: ["estimate", config_file(p, with_(num_attention_heads=0))]),
    ("text-hidden", "hidden_size", lambda p: ["estimate", config_file(p, with_(hidden_size="64"))]),
    ("misspelt-preset", "config", lambda p: ["estimate", "lama-3.1-8b"]),
    ("seq-len-zero", "seq_len", lambda p: ["estimate", "llama-3.2-1b", "--seq-len", "0"]),
    ("seq-len-text", "seq-len", lambda p: ["estimate", "llama-3.2-1b", "--seq-len", "abc"]),
    ("batch-negative", "batch_size", lambda p: ["estimate", "llama-3.2-1b", "--batch-size", "-3"]),
    ("dtype-typo", "dtype", lambda p: ["estimate", "llama-3.2-1b", "--dtype", "bf32"]),
    ("quantization-typo", "quantization", lambda p: ["estimate", "llama-3.2-1b", "--quantization", "int3"]),
    ("quantization-diffusers", "quantization",
     lambda p: ["estimate", "flux.1-dev-transformer", "--quantization", "nf4"]),
    ("port-too-big", "port", lambda p: ["lab", "--port", "70000"]),
    ("port-negative", "port", lambda p: ["lab", "--port", "-1"]),
    ("port-text", "port", lambda p: ["lab", "--port", "http"]),
    ("nested-deep", "config file",
     lambda p: ["estimate", config_file(p, b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")]),
]


@pytest.mark.parametrize("argument, argv", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_exits_2_with_one_sentence(argument, argv, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli.os, "execv", lambda *a: pytest.fail("jupyter must not start on bad input"))
    try:
        status = cli.main(argv(tmp_path))
    except SystemExit as exit_:  # argparse's own checks (a port, a whole number) exit here
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2, err
    assert "Traceback" not in err
    sentence = err.strip().splitlines()[-1]  # argparse prints its usage line first
    assert argument in sentence and len(sentence) < 300, sentence


def test_lab_on_every_interface_warns_and_loopback_does_not(capsys, monkeypatch):
    started = []
    monkeypatch.setattr(cli.os, "execv", lambda *a: started.append(a))
    cli.main(["lab", "--ip", "0.0.0.0", "--no-browser"])
    err = capsys.readouterr().err
    assert "every network interface" in err and "token" in err and started
    for ip in ("127.0.0.1", "::1"):
        cli.main(["lab", "--ip", ip, "--no-browser"])
        assert "warning" not in capsys.readouterr().err
    cli.main(["lab", "--ip", "192.168.1.20", "--no-browser"])
    assert "192.168.1.20" in capsys.readouterr().err


def test_a_named_checkpoint_of_another_module_is_rebuilt_not_returned_stale(lab_cache):
    a = zoo.build(SMALL, dtype="float32", seed=1)
    b = zoo.build(SMALL, dtype="float32", seed=2)
    path_a = zoo.checkpoint(a, name="mine", progress=False)
    assert "float32" in path_a.name  # the folder says the dtype it holds, not the default bfloat16
    path_b = zoo.checkpoint(b, name="mine", progress=False)
    assert path_b == path_a
    loaded = bsl.load_model(path_b, dtype="float32")
    assert torch.equal(loaded.lm_head.weight, b.lm_head.weight)
    assert zoo.checkpoint(b, name="mine", progress=False) == path_b  # the same module again: no rebuild
    assert not list(path_b.parent.glob(".partial-*"))


def test_a_real_model_folder_missing_a_file_is_rebuilt_once(lab_cache, monkeypatch):
    from bigsmall_lab.zoo import _smollm2

    calls = []

    def fake_convert(source, out, progress):
        calls.append(out)
        for file in ("config.json", "model.safetensors", "tokenizer.json"):
            (out / file).write_text("{}")

    monkeypatch.setattr(_smollm2, "_convert", fake_convert)
    monkeypatch.setattr(_smollm2, "gguf_path", lambda: lab_cache / "fake.gguf")
    folder = _smollm2.real_model_path()
    (folder / "tokenizer.json").unlink()  # a learner's clean-up, or a disk that filled up
    assert _smollm2.real_model_path() == folder and (folder / "tokenizer.json").is_file()
    assert _smollm2.real_model_path() == folder
    assert len(calls) == 2  # built, rebuilt once, then found complete


def test_a_cache_that_cannot_fit_the_memory_free_now_is_refused_with_its_size(monkeypatch):
    import psutil

    tiny = bsl.load_model(dtype=torch.float32)  # 6,144 bytes of cache per token
    real = psutil.virtual_memory()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: real._replace(available=1_000_000))
    with pytest.raises(LabError, match=r"max_new_tokens 500 cannot fit; 503 tokens need a KV cache of about 2.9 MiB and 1.0 MiB is free"):
        kvcache.generate(tiny, torch.tensor([[1, 2, 3]]), max_new_tokens=500)


@pytest.mark.parametrize("scheme", ["asymmetric", "symmetric", "min", "nf4"])
def test_values_near_the_float32_maximum_quantize_to_finite_scales_and_values(scheme):
    # (max - min) overflows float32 here: the scale was inf and every dequantized value nan
    x = torch.tensor([-3.0e38, 0.0, 1.5e38, 3.0e38])
    q = quant.quantize(x, 4 if scheme == "nf4" else 8, scheme=scheme)
    back = q.dequantize()
    assert torch.isfinite(q.scales).all() and torch.isfinite(back).all()
    if scheme != "nf4":  # the uniform schemes: within half a step (1 % slack for float32 rounding at this size)
        assert ((back - x).abs() <= 0.505 * q.scales.max()).all()


def test_offload_dir_stays_inside_the_cache(lab_cache):
    from bigsmall_lab import loading

    for name in ("../../etc", "/etc", "a/b", ".."):
        with pytest.raises(LabError, match="name"):
            loading.offload_dir(name)
    assert loading.offload_dir("offload-x").parent == lab_cache


def test_a_full_disk_during_disk_offload_is_one_sentence_and_leaves_no_half_written_shard(tmp_path, monkeypatch):
    import errno

    import safetensors.torch
    from safetensors import SafetensorError

    from bigsmall_lab import offload
    from bigsmall_lab.offload import OffloadSettings

    real_save = safetensors.torch.save_file
    calls = []

    def save_file(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) < 3:
            return real_save(tensors, filename, *args, **kwargs)
        with open(filename, "wb") as f:
            f.write(b"\0" * 100)  # half a shard, then the disk is full
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              "message: \"No space left on device\" })")

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    folder = tmp_path / "offload"
    settings = OffloadSettings("block_level", num_blocks_per_group=2, offload_to_disk_path=folder)
    with pytest.raises(OSError) as raised:
        offload.run("tiny", settings, torch.float32, "cpu", ImageSettings())
    assert raised.value.errno == errno.ENOSPC and "filled up" in str(raised.value)
    assert len(str(raised.value)) < 300 and "\n" not in str(raised.value)
    assert len(calls) >= 3 and not [p for p in folder.rglob("*") if p.is_file()]  # nothing half-written stays


VIEW_FUNCTIONS = [n for n in views.__all__ if callable(getattr(views, n)) and not isinstance(getattr(views, n), type)]


@pytest.mark.parametrize("name", VIEW_FUNCTIONS)
def test_a_view_given_a_plain_value_says_what_it_draws(name):
    # a learner passes a text, a number or None where a chart draws a runner's result
    for value in ("x", 5, None):
        try:
            getattr(views, name)(value)
        except LabError as err:
            import inspect

            text = str(err)
            named = [f"views.{name}", *inspect.signature(getattr(views, name)).parameters]  # the view or an argument
            assert any(n.rstrip("s") in text for n in named) and len(text) < 300 and "\n" not in text, text
        # a value a view accepts (a title, None for "no data") is fine: it must only never raise anything else
