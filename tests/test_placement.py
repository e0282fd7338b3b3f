"""The device_map planner: exact plans on a tiny model worked out by hand, for every strategy; the plan
equals what from_pretrained does (its own function on fake GPUs, its hf_device_map on CPU + disk)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bigsmall_lab as bsl
from bigsmall_lab import placement, views
from bigsmall_lab._errors import LabError
from bigsmall_lab.exercises import check_bytes_on_gpu, check_fewest_gpus, check_layers_on_gpu0

# A Llama small enough to count by hand, in float32 (4 bytes per value):
#   embed_tokens   32 vocab x 8 hidden                                     =   256 values = 1,024 B
#   one layer      q 8x8 + k 8x4 + v 8x4 + o 8x8 (2 heads, 1 KV head, head_dim 4) = 192
#                  gate 8x16 + up 8x16 + down 16x8                         =   384
#                  input and post-attention RMSNorm 2 x 8                  =    16
#                                                                          =   592 values = 2,368 B
#   norm           8                                                       =     8 values =    32 B
#   rotary_emb     buffers inv_freq + original_inv_freq, 2 x head_dim / 2  =     4 values =    16 B
#   lm_head        8 x 32 (not tied)                                       =   256 values = 1,024 B
#   total          1,024 + 4 x 2,368 + 32 + 16 + 1,024                                    = 11,568 B
TINY = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=32, hidden_size=8,
            intermediate_size=16, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, head_dim=4,
            tie_word_embeddings=False, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0)
EMBED, LAYER, NORM, ROTARY, HEAD = 1024, 2368, 32, 16, 1024
TOTAL = EMBED + 4 * LAYER + NORM + ROTARY + HEAD
GPUS = {0: 10_000, 1: 10_000, 2: 10_000}


def tiny_plan(strategy, max_memory=GPUS, config=TINY):
    return placement.plan(config, strategy, max_memory, dtype="float32")


def test_the_tiny_model_counts_as_worked_out():
    p = tiny_plan("sequential")
    assert p.total_bytes == TOTAL == 11_568
    assert p.largest_layer_bytes == LAYER and p.smallest_block_bytes == LAYER and p.n_blocks == 4


def by_layer(device_map):
    return {k.removeprefix("model."): v for k, v in device_map.items()}


@pytest.mark.parametrize("strategy", ["auto", "balanced"])
def test_balanced(strategy):
    # transformers' get_balanced_memory: 11,568 // 3 GPUs = 3,856, plus a margin of int(1.25 x 2,368) = 2,960:
    # GPUs 0 and 1 planned with 6,816, the last keeps its 10,000.
    p = tiny_plan(strategy)
    assert p.planned_budgets == {0: 6_816, 1: 6_816, 2: 10_000}
    # GPU 0 keeps 2,368 free for the largest layer: 4,448 hold embed + layer 0 (3,392), not layer 1 (5,760).
    # GPU 1 (6,816, nothing kept free): layers 1 and 2 (4,736); layer 3 would make 7,104.
    assert by_layer(p.device_map) == {"embed_tokens": 0, "layers.0": 0, "layers.1": 1, "layers.2": 1, "layers.3": 2,
                                      "norm": 2, "rotary_emb": 2, "lm_head": 2}
    assert p.bytes_per_device == {0: EMBED + LAYER, 1: 2 * LAYER, 2: LAYER + NORM + ROTARY + HEAD}
    assert [p.layers_on(d) for d in (0, 1, 2)] == [1, 2, 1]


def test_balanced_low_0_keeps_gpu_0_light():
    # Balanced over GPUs 1..2: 11,568 // 2 = 5,784 + 2,960 = 8,744 for GPU 1; GPU 0 gets what GPUs 1 and 2
    # cannot take: max(0, 11,568 - (8,744 + 10,000)) = 0.
    p = tiny_plan("balanced_low_0")
    assert p.planned_budgets == {0: 0, 1: 8_744, 2: 10_000}
    # GPU 1: embed + layers 0-2 = 8,128 <= 8,744; layer 3 and the rest on GPU 2.
    assert by_layer(p.device_map) == {"embed_tokens": 1, "layers.0": 1, "layers.1": 1, "layers.2": 1, "layers.3": 2,
                                      "norm": 2, "rotary_emb": 2, "lm_head": 2}
    assert p.bytes_per_device == {0: 0, 1: EMBED + 3 * LAYER, 2: LAYER + NORM + ROTARY + HEAD}


def test_sequential_fills_gpu_0_first_and_leaves_the_last_empty():
    # GPU 0: 10,000 - 2,368 kept free = 7,632: embed + layers 0, 1 (5,760); layer 2 would make 8,128.
    p = tiny_plan("sequential")
    assert p.planned_budgets == GPUS
    assert by_layer(p.device_map) == {"embed_tokens": 0, "layers.0": 0, "layers.1": 0, "layers.2": 1, "layers.3": 1,
                                      "norm": 1, "rotary_emb": 1, "lm_head": 1}
    assert p.bytes_per_device == {0: EMBED + 2 * LAYER, 1: 2 * LAYER + NORM + ROTARY + HEAD, 2: 0}
    assert p.fits_on_gpus and p.devices_used == [0, 1]
    assert p.split_blocks == ()


@pytest.mark.parametrize("strategy", [s.value for s in placement.Strategy])
def test_spill_to_cpu_then_disk(strategy):
    # No GPU: every strategy is the same. The CPU keeps 2,368 free: 6,000 - 2,368 = 3,632 hold embed +
    # layer 0 (3,392); from layer 1 on everything goes to disk (placement never goes back a device).
    p = tiny_plan(strategy, {"cpu": 6_000})
    assert by_layer(p.device_map) == {"embed_tokens": "cpu", "layers.0": "cpu", "layers.1": "disk",
                                      "layers.2": "disk", "layers.3": "disk", "norm": "disk", "rotary_emb": "disk",
                                      "lm_head": "disk"}
    assert p.bytes_per_device == {"cpu": EMBED + LAYER, "disk": 3 * LAYER + NORM + ROTARY + HEAD}
    assert p.weight_bytes_per_device == {"cpu": EMBED + LAYER, "disk": 3 * LAYER + NORM + HEAD}  # no buffers
    assert [(r.device, r.label, r.n_blocks) for r in p.ranges] == [
        ("cpu", "model.embed_tokens", 0), ("cpu", "model.layers.0", 1), ("disk", "model.layers.1-3", 3),
        ("disk", "model.norm", 0), ("disk", "model.rotary_emb", 0), ("disk", "lm_head", 0)]


def test_gpus_then_cpu_then_disk():
    # Sequential, one GPU of 5,000 (keeps 2,368 free: embed only, 3,392 > 2,632), CPU 6,000 (keeps 2,368
    # free: layers 0 is 2,368 <= 3,632; layer 1 would make 4,736), the rest on disk.
    p = tiny_plan("sequential", {0: 5_000, "cpu": 6_000})
    assert by_layer(p.device_map) == {"embed_tokens": 0, "layers.0": "cpu", "layers.1": "disk", "layers.2": "disk",
                                      "layers.3": "disk", "norm": "disk", "rotary_emb": "disk", "lm_head": "disk"}
    assert p.spilled_bytes == TOTAL - EMBED and not p.fits_on_gpus


@pytest.mark.parametrize("strategy", ["auto", "balanced_low_0", "sequential"])
def test_plan_is_what_from_pretrained_computes_for_fake_gpus(strategy):
    """The step-by-step calls equal transformers' own _get_device_map, which from_pretrained calls."""
    from transformers.integrations.accelerate import _get_device_map

    budgets = {0: "10GiB", 1: "10GiB", "cpu": "100GiB"}
    p = placement.plan("llama-3.1-8b", strategy, budgets)
    model = bsl.zoo.meta_model("llama-3.1-8b", "bfloat16")
    assert dict(_get_device_map(model, strategy, placement.parse_budgets(budgets), None)) == p.device_map


@pytest.mark.slow
def test_plan_equals_hf_device_map_on_cpu_and_disk(tmp_path):
    """from_pretrained really loads with the predicted map; the devices hold the predicted weight bytes."""
    from transformers import AutoModelForCausalLM

    for tied in (False, True):
        config = {**TINY, "tie_word_embeddings": tied}
        folder = tmp_path / f"tiny-tied-{tied}"
        bsl.build(config, dtype="float32", seed=1).save_pretrained(folder, max_shard_size=5_000)
        assert len(list(folder.glob("*.safetensors"))) > 2
        predicted = placement.plan(config, "auto", {"cpu": 6_000}, dtype="float32")
        model = AutoModelForCausalLM.from_pretrained(folder, device_map="auto", max_memory={"cpu": 6_000},
                                                     offload_folder=tmp_path / "offload", dtype="float32")
        assert dict(model.hf_device_map) == predicted.device_map
        assert bsl.loading.placed_bytes(model) == {d: n for d, n in predicted.weight_bytes_per_device.items()}
        full = AutoModelForCausalLM.from_pretrained(folder, dtype="float32")
        ids = torch.tensor([[1, 5, 9, 2, 7]])
        with torch.no_grad():
            assert torch.equal(model(ids).logits, full(ids).logits)


# --- accelerate-level planning of any nn.Module: accelerate's own tests give the numbers -------------

class ModelForTest(nn.Module):
    """accelerate's tests/test_modeling_utils.py model: size 236 = linear1 64, batchnorm 72, linear2 100."""

    def __init__(self):
        super().__init__()
        self.linear1 = nn.Linear(3, 4)
        self.batchnorm = nn.BatchNorm1d(4)
        self.linear2 = nn.Linear(4, 5)


def test_any_module_plans_as_accelerate_does():
    model = ModelForTest()
    p = placement.plan(model, "auto", {0: 200, 1: 200})
    assert p.total_bytes == 236 and "accelerate" in p.engine
    # "only linear1 fits on device 0 as we keep memory available for the maximum layer in case of offload"
    assert p.device_map == {"linear1": 0, "batchnorm": 1, "linear2": 1}
    assert placement.plan(model, "auto", {0: 300, 1: 300}).planned_budgets == {0: 215, 1: 300}
    assert placement.plan(model, "auto", {0: 300, 1: 500}).planned_budgets == {0: 215, 1: 500}


# --- what one machine cannot hold --------------------------------------------------------------------

def test_fewest_gpus_counts_whole_layers():
    # 11,568 / 5,000 rounds up to 3 GPUs, but with 3 GPUs of 5,000: GPU 0 (keeps 2,368 free) holds only
    # the embeddings, GPU 1 layers 0-1, GPU 2 layers 2-3 + norm + rotary (4,784): lm_head spills. Four fit.
    p = placement.fewest_gpus(TINY, 5_000, dtype="float32")
    assert len(p.gpus) == 4 and p.fits_on_gpus
    with pytest.raises(LabError, match="smaller than the largest layer"):
        placement.fewest_gpus(TINY, 2_000, dtype="float32")


def test_405b_in_bf16_needs_more_than_one_machine_of_80gb_gpus():
    # 405B parameters x 2 bytes = 810 GB > 8 x 80 GB = 640 GB: no 8-GPU machine holds it whole.
    p = placement.fewest_gpus("llama-3.1-405b", "80GB")
    assert len(p.gpus) > 8 and p.fits_on_gpus
    assert p.total_bytes > 8 * 80 * 10**9


# --- bad input: one sentence naming the argument -----------------------------------------------------

def test_unknown_strategy_lists_them():
    with pytest.raises(LabError) as err:
        tiny_plan("balancd")
    assert "strategy 'balancd'" in str(err.value)
    assert all(s in str(err.value) for s in ("auto", "balanced_low_0", "sequential"))


@pytest.mark.parametrize("size, expected", [("10GB", 10**10), ("10GiB", 10 * 2**30), (10_000_000, 10_000_000)])
def test_sizes_parse(size, expected):
    assert placement.parse_budgets({0: size}) == {0: expected}


def test_sizes_that_do_not_parse():
    with pytest.raises(LabError, match=r"max_memory\[0\] '10 gigs' is not a memory size"):
        tiny_plan("auto", {0: "10 gigs"})
    with pytest.raises(LabError, match="max_memory key 'gpu0' is not a device"):
        tiny_plan("auto", {"gpu0": "1GB"})


def test_budgets_too_small_for_one_layer_say_its_size():
    with pytest.raises(LabError) as err:
        tiny_plan("auto", {0: 1_000, "cpu": 2_000})
    assert "2,368 bytes" in str(err.value) and "model.layers.0" in str(err.value)
    assert len(str(err.value)) < 300


def test_quantization_is_planned_with_bitsandbytes_sizes():
    bf16 = placement.plan("llama-3.1-8b", "auto", {0: "80GB"})
    nf4 = placement.plan("llama-3.1-8b", "auto", {0: "80GB"}, quantization="nf4")
    int8 = placement.plan("llama-3.1-8b", "auto", {0: "80GB"}, quantization="int8")
    assert nf4.total_bytes < int8.total_bytes < bf16.total_bytes
    spill = placement.plan("llama-3.1-8b", "auto", {0: "4GB", "cpu": "30GB"}, quantization="nf4")
    assert {0, "cpu"} <= set(spill.device_map.values())
    assert any("llm_int8_enable_fp32_cpu_offload" in n for n in spill.notes)
    with pytest.raises(LabError, match="quantization"):
        placement.plan("flux.1-dev-transformer", "auto", {0: "80GB"}, quantization="nf4")


def test_a_diffusers_model_is_planned_with_accelerates_functions():
    p = placement.plan("flux.1-dev-transformer", "balanced_low_0", {0: "10GiB", 1: "10GiB", "cpu": "100GiB"})
    assert "diffusers" in p.engine and p.n_blocks == 19 + 38  # double- and single-stream blocks
    assert p.bytes_on(0) < p.bytes_on(1)


def test_from_device_map_counts_a_given_map():
    p = placement.from_device_map(TINY, {"model": 0, "lm_head": "cpu"}, dtype="float32")
    assert p.bytes_per_device == {0: TOTAL - HEAD, "cpu": HEAD} and p.strategy is None
    with pytest.raises(LabError, match="names no module"):
        placement.from_device_map(TINY, {"model.nope": 0}, dtype="float32")


# --- the views draw the plan -------------------------------------------------------------------------

def test_placement_chart_stacks_the_ranges_per_device():
    p = tiny_plan("sequential")
    fig = views.placement_chart(p)
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == len(p.ranges)
    per_device: dict[str, float] = {}
    for bar in bars:
        per_device[bar.x[0]] = per_device.get(bar.x[0], 0.0) + bar.y[0]
    assert per_device == pytest.approx({"GPU 0": (EMBED + 2 * LAYER) / 2**20,
                                        "GPU 1": (2 * LAYER + NORM + ROTARY + HEAD) / 2**20})
    assert list(fig.layout.xaxis.categoryarray) == ["GPU 0", "GPU 1", "GPU 2"]
    assert "sequential" in fig.layout.title.text and fig.layout.barmode == "stack"


def test_planner_widget_redraws_when_a_control_changes():
    w = views.PlacementPlanner(preset="llama-3.1-70b", n_gpus=8, gpu="L4", cpu_memory_gb=64, strategy="auto")
    before = w.plan.device_map
    assert w.plan.model == "llama-3.1-70b" and len(w.plan.gpus) == 8 and w.plan.fits_on_gpus
    w.strategy.value = "sequential"
    assert w.plan.strategy is placement.Strategy.SEQUENTIAL and w.plan.device_map != before
    assert "sequential" in w.figure.layout.title.text
    assert w.plan.bytes_on(7) == 0  # sequential leaves the last GPU empty
    w.n_gpus.value = 4
    assert len(w.plan.gpus) == 4 and w.plan.bytes_on("cpu") > 0 and "spill" in w.message.value
    assert {t.x[0] for t in w.figure.data if t.type == "bar"} <= {f"GPU {i}" for i in range(8)} | {"CPU", "disk"}
    w.preset.value = "flux.1-dev-transformer"
    w.quantization.value = "nf4"
    assert w.plan is None and "quantization" in w.message.value  # the planner's sentence, shown


# --- exercises ----------------------------------------------------------------------------------------

BUDGETS = {0: "10GiB", 1: "10GiB", "cpu": "100GiB"}


def test_check_layers_on_gpu0_recognises_the_slips():
    right = placement.plan("llama-3.1-8b", "sequential", BUDGETS).layers_on(0)
    assert check_layers_on_gpu0(right, "llama-3.1-8b", "sequential", BUDGETS).correct
    even = check_layers_on_gpu0(16, "llama-3.1-8b", "sequential", BUDGETS)
    assert not even.correct and "even split" in even.slip
    no_room = check_layers_on_gpu0(22, "llama-3.1-8b", "sequential", BUDGETS)
    assert "keeps room for the largest layer" in no_room.slip and no_room.revealed  # second wrong try
    assert check_layers_on_gpu0("19", "llama-3.1-8b", "sequential", BUDGETS).slip == "not a number"


def test_check_fewest_gpus_recognises_the_slips():
    assert check_fewest_gpus(4, TINY, 5_000, dtype="float32").correct
    rounded = check_fewest_gpus(3, TINY, 5_000, dtype="float32")
    assert "never split" in rounded.slip
    fraction = check_fewest_gpus(TOTAL / 5_000, TINY, 5_000, dtype="float32")
    assert "fraction" in fraction.slip
    assert check_fewest_gpus(None, TINY, 5_000, dtype="float32").answered is False


def test_check_bytes_on_gpu_recognises_the_slips():
    p = placement.plan("llama-3.1-8b", "balanced_low_0", BUDGETS)
    assert check_bytes_on_gpu(p.bytes_on(0), "llama-3.1-8b", "balanced_low_0", BUDGETS).correct
    even = check_bytes_on_gpu(p.total_bytes / 2, "llama-3.1-8b", "balanced_low_0", BUDGETS)
    assert "even split" in even.slip
    gib = check_bytes_on_gpu(p.bytes_on(0) / 2**30, "llama-3.1-8b", "balanced_low_0", BUDGETS)
    assert "GiB" in gib.slip
    assert check_bytes_on_gpu([1], "llama-3.1-8b", "balanced_low_0", BUDGETS).slip == "not a number"
