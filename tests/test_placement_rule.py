"""The port of transformers' planner (placement_rule.plan over a ModuleTree, no torch) makes the very Plan that
placement.plan makes with transformers' own functions on the meta model: every transformers preset, weight format
and strategy, over budgets that reach every branch (one GPU, several, CPU and disk spills, an empty GPU 0, too
small); the tree survives JSON; importing the port imports no torch."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from functools import cache

import pytest
import torch
from torch import nn

from bigsmall_lab import placement, placement_rule
from bigsmall_lab._errors import LabError
from bigsmall_lab.zoo._configs import PRESETS

TRANSFORMERS_PRESETS = [p for p in PRESETS if p != "flux.1-dev-transformer"]  # FLUX's transformer is diffusers
WEIGHTS = (None, "int8", "nf4", "nf4-double")
STRATEGIES = ("auto", "balanced_low_0", "sequential")


@cache
def tree(config, dtype="bfloat16", quantization=None):
    return placement.tree(config, dtype, quantization)


def budgets(t: placement_rule.ModuleTree) -> dict[str, dict]:
    """Budgets scaled to the model: T its total bytes, B its largest layer (what GPU 0 and the CPU keep free)."""
    T = int(t.sizes[""])
    B = placement_rule.plan(t, "sequential", {0: 4 * T}).largest_layer_bytes
    return {
        "one GPU holds all": {0: 2 * T},
        "two GPUs": {0: T * 6 // 10, 1: T * 6 // 10},
        "three GPUs": {0: T * 4 // 10, 1: T * 4 // 10, 2: T * 4 // 10},
        "GPUs + CPU spill": {0: T * 3 // 10, 1: T * 3 // 10, "cpu": 2 * T},
        "GPUs + CPU + disk": {0: T // 5, 1: T // 5, "cpu": T * 3 // 10, "disk": 2 * T},
        "GPUs then disk, no CPU": {0: T * 3 // 10, 1: T * 3 // 10},
        "CPU only": {"cpu": 2 * T},
        "CPU + disk": {"cpu": T * 3 // 10, "disk": 2 * T},
        "GPU 0 below one layer": {0: B // 2, 1: 2 * T},
        "GPU 0 budget 0": {0: 0, 1: T, 2: T},
        "GPUs 0 and 2 (a gap)": {0: T // 2, 2: T // 2, "cpu": T},
        "a few layers a device": {0: B + B // 2, 1: B + B // 2, "cpu": 3 * B, "disk": 2 * T},
        "written as strings": {"cuda:0": "2GiB", "cuda:1": "3GB", "cpu": "30GiB", "disk": "2TB"},
        "too small for one layer": {0: B // 4, "cpu": B // 4},
    }


def outcome(make):
    """The Plan, or the LabError's sentence: both sides must agree on either."""
    try:
        return make()
    except LabError as err:
        return f"LabError: {err}"


def check_port(config, t, dtype, quantization, cases=None):
    cases = cases or budgets(t)
    for strategy in STRATEGIES:
        for case, max_memory in cases.items():
            real = outcome(lambda: placement.plan(config, strategy, max_memory, dtype, quantization))
            port = outcome(lambda: placement_rule.plan(t, strategy, max_memory))
            assert port == real, f"{strategy}, {case}: {max_memory}"


@pytest.mark.parametrize("quantization", WEIGHTS, ids=lambda q: q or "bf16")
@pytest.mark.parametrize("preset", TRANSFORMERS_PRESETS)
def test_port_equals_transformers_on_every_preset(preset, quantization):
    check_port(preset, tree(preset, "bfloat16", quantization), "bfloat16", quantization)


@pytest.mark.parametrize("preset", ["llama-3.2-1b", "t5-v1.1-xxl-encoder"])  # tied weights: embedding + head, T5's shared
@pytest.mark.parametrize("quantization", [None, "nf4"], ids=lambda q: q or "fp16")
def test_port_equals_transformers_in_float16(preset, quantization):
    check_port(preset, tree(preset, "float16", quantization), "float16", quantization)


def test_every_branch_is_reached():
    """The grid above reaches the branches that matter: T5's embedding is tied to its encoder's, so with GPU 0 too
    small for both the planner splits the encoder (the tied-split branch), and some blocks spill to disk."""
    t = tree("t5-v1.1-xxl-encoder")
    p = placement_rule.plan(t, "sequential", budgets(t)["GPUs + CPU + disk"])
    assert p.device_map["shared"] == 0 and "encoder" not in p.device_map  # the encoder was split
    assert set(p.device_map.values()) == {0, 1, "cpu", "disk"}


# A Llama small enough to count by hand (tests/test_placement.py works its bytes out): layers of 2,368 bytes.
TINY = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=32, hidden_size=8,
            intermediate_size=16, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, head_dim=4,
            max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0)


@pytest.mark.parametrize("tied", [False, True])
def test_port_equals_transformers_on_a_tiny_model(tied):
    config = {**TINY, "tie_word_embeddings": tied}
    t = placement.tree(config, "float32")
    cases = {f"{n} bytes a GPU": {0: n, 1: n, 2: n} for n in (3_000, 5_000, 8_000)}
    check_port(config, t, "float32", None, {**budgets(t), **cases})


def test_port_equals_transformers_with_no_placement_params():
    """A decoder layer too big for an empty next GPU, holding a ``_no_placement_params`` weight: transformers places
    the layer's other tensors one by one and leaves that weight out of the map (no clean-up of the map after)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in TINY.items() if k != "architectures"}))
    model = model.float()
    model._no_placement_params = ["mlp.down_proj.weight"]
    t = placement.tree(model)
    assert t.no_placement_params == ("mlp.down_proj.weight",)
    max_memory = {0: 5_000, 1: 2_000, 2: 20_000, "cpu": 50_000}
    # GPU 0 (5,000, 2,368 kept free) holds the embedding (1,024) and not layer 0; GPU 1 (2,000) could not hold
    # it empty: layer 0 goes tensor by tensor, GPUs 0 and 1 take what fits, down_proj.weight is placed nowhere.
    p = placement_rule.plan(t, "sequential", max_memory)
    assert p.device_map["model.layers.0.self_attn.q_proj.weight"] == 0
    assert p.device_map["model.layers.0.mlp.up_proj.weight"] == 1
    assert "model.layers.0.mlp.down_proj.weight" not in p.device_map and p.split_blocks == ("model.layers.0",)
    for strategy in STRATEGIES:
        assert placement_rule.plan(t, strategy, max_memory) == placement.plan(model, strategy, max_memory)


# --- the tree as data ----------------------------------------------------------------------------

@pytest.mark.parametrize("quantization", WEIGHTS, ids=lambda q: q or "bf16")
def test_tree_round_trips_through_json(quantization):
    for preset in TRANSFORMERS_PRESETS:
        t = tree(preset, "bfloat16", quantization)
        data = json.loads(json.dumps(t.as_dict()))
        back = placement_rule.ModuleTree.from_dict(data)
        assert back == t, preset
        assert all(type(back.sizes[k]) is type(v) for k, v in t.sizes.items())  # 4-bit float sizes stay floats


def test_tree_of_405b_is_small_gzipped():
    raw = json.dumps(tree("llama-3.1-405b").as_dict(), separators=(",", ":")).encode()
    assert len(gzip.compress(raw)) < 20_000  # 1,645 modules, 1,137 tensors


def test_bad_tree_data_is_one_sentence():
    with pytest.raises(LabError, match="is not a module tree"):
        placement_rule.ModuleTree.from_dict({"format": 99})
    data = tree("llama-3.2-1b").as_dict()
    with pytest.raises(LabError, match="is not a whole module tree"):
        placement_rule.ModuleTree.from_dict({**data, "tensor_bytes": data["tensor_bytes"][:3]})


# --- bad input: the same sentences as placement.plan ------------------------------------------------

@pytest.mark.parametrize("strategy, max_memory, says", [
    ("autoo", {0: "1GiB"}, "is not a device_map strategy"),
    ("auto", None, "is missing"),
    ("auto", [1, 2], "is not a dict of budgets"),
    ("auto", {0: "ten gigs"}, "is not a memory size"),
    ("auto", {"gpu0": "1GiB"}, "is not a device"),
    ("auto", {0: "1MB", "cpu": "1MB"}, "is too small for even one layer"),
    ("balanced_low_0", {1: "10GiB", 2: "10GiB"}, "has no GPU 0 for balanced_low_0"),
    ("balanced_low_0", {0: "10GiB", 2: "10GiB"}, "has no GPU 1 for balanced_low_0"),
])
def test_bad_input_reads_as_placement_plan_reads(strategy, max_memory, says):
    with pytest.raises(LabError, match=says) as real:
        placement.plan("llama-3.2-1b", strategy, max_memory)
    with pytest.raises(LabError) as port:
        placement_rule.plan(tree("llama-3.2-1b"), strategy, max_memory)
    assert str(port.value) == str(real.value)


def test_port_plans_transformers_trees_only():
    with pytest.raises(LabError, match="is not a ModuleTree"):
        placement_rule.plan({"modules": []}, "auto", {0: "1GiB"})
    t = placement.tree(nn.Sequential(nn.Linear(4, 4)))  # accelerate's planner, not transformers'
    with pytest.raises(LabError, match="plan it with placement.plan"):
        placement_rule.plan(t, "auto", {0: "1GiB"})


def test_importing_the_port_imports_no_torch():
    code = "import sys, bigsmall_lab.placement_rule; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
