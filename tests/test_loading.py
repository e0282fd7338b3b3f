"""Loading runners: the naive and the BMI path measured in one run (BMI peak below naive), shard by shard,
disk offload with identical logits, and the one-sentence errors before anything loads."""

from __future__ import annotations

import pytest
import torch

import bigsmall_lab as bsl
from bigsmall_lab import loading, placement, views
from bigsmall_lab._errors import LabError
from bigsmall_lab.exercises import check_disk_layers, check_largest_shard, check_meta_bytes, check_naive_peak

# A Llama of 15.5M parameters: big enough that its copies stand out of the process's noise, small enough
# for a unit test. bf16 on disk: ~31 MB in several shards of at most 12 MB.
SMALL = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=8192, hidden_size=512,
             intermediate_size=1408, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2, head_dim=64,
             tie_word_embeddings=True, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
             pad_token_id=0, bos_token_id=0, eos_token_id=0)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt") / "small"
    model = bsl.build(SMALL, dtype="bfloat16", seed=3)
    model.save_pretrained(folder, max_shard_size=12_000_000)
    del model
    return folder


def test_shard_files_and_bytes(small_checkpoint):
    shards = loading.shard_files(small_checkpoint)
    assert len(shards) >= 3 and shards == sorted(shards)
    # every stored tensor, 2 bytes each in bf16; the tied lm_head is stored once
    assert sum(loading.shard_bytes(s) for s in shards) == bsl.count_parameters(SMALL) * 2


@pytest.mark.slow
def test_bmi_peak_is_below_the_naive_peak_in_one_run(small_checkpoint):
    seen = []
    cmp = loading.compare_loads(small_checkpoint, on_phase=seen.append)
    assert cmp.bmi.peak_bytes < cmp.naive.peak_bytes
    # The naive load holds a float32 model (4 bytes per parameter) while it reads the bf16 state dict:
    # its peak is above 1.5x the checkpoint; BMI never copies the weights (on a CPU they stay mapped).
    assert cmp.naive.peak_bytes > 1.5 * cmp.naive.checkpoint_bytes
    names = [p.name for p in cmp.naive.phases]
    assert names[0].startswith("init") and names[-1] == "first forward"
    assert sum(n.startswith("read shard") for n in names) == len(loading.shard_files(small_checkpoint))
    assert [p.name for p in cmp.bmi.phases][-1] == "first forward"
    assert all(a.end_s <= b.start_s + 1e-6 for a, b in zip(cmp.naive.phases, cmp.naive.phases[1:]))
    # on_phase heard each phase as it began, named after its load; the naive reads (each only maps a file,
    # an instant) are one mark, not one per shard
    n = len(loading.shard_files(small_checkpoint))
    assert seen == ["BMI: from_pretrained: meta model, plan, shards", "BMI: first forward",
                    "naive: init: random float32 model", f"naive: read {n} shards (load_file)",
                    "naive: load_state_dict", "naive: move to cpu in bfloat16", "naive: first forward"]
    fig = views.loading_peaks(cmp)
    assert fig.data[0].y[0] == cmp.naive.peak_bytes / 2**20 and f"{cmp.ratio:.2f}x" in fig.layout.title.text
    timeline = views.loading_timeline(cmp.naive)
    assert len(timeline.layout.shapes) == len(cmp.naive.phases)  # one shaded band per phase


@pytest.mark.slow
def test_naive_and_bmi_load_the_same_weights(small_checkpoint):
    naive, _ = loading.load_naive(small_checkpoint, forward=False)
    bmi, _ = loading.load_bmi(small_checkpoint, forward=False)
    a, b = naive.state_dict(), bmi.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_shard_by_shard_never_holds_the_checkpoint_twice(small_checkpoint):
    live = views.LiveMemory(interval_s=0.01, device="cpu")
    with live:
        steps = loading.shard_by_shard(small_checkpoint, copy=True, keep_model=True, on_phase=live.mark)
    total = sum(loading.shard_bytes(s) for s in loading.shard_files(small_checkpoint))
    n = len(steps.steps)
    # the live chart got a mark as each phase began, in order, and its samples show the copies arrive
    assert [label for _, label in live.marks] == (["init_empty_weights: meta model"]
                                                  + [f"shard {i}/{n}" for i in range(1, n + 1)] + ["tie_weights"])
    assert [t for t, _ in live.marks] == sorted(t for t, _ in live.marks)
    assert live.samples[-1].rss_anon - live.samples[0].rss_anon > 0.5 * total
    assert [s.loaded_bytes for s in steps.steps][-1] == total
    for step in steps.steps:
        assert step.after_bytes <= step.loaded_bytes + steps.largest_shard_bytes, step
    # the copies are the process's own memory: by the last shard it holds (about) the whole checkpoint
    assert steps.steps[-1].after_bytes > 0.9 * total
    reference, _ = loading.load_bmi(small_checkpoint, forward=False)
    got, want = steps.model.state_dict(), reference.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    mapped = loading.shard_by_shard(small_checkpoint, copy=False)
    assert mapped.report.peak_bytes < steps.report.peak_bytes  # mapped views cost nothing until read


@pytest.mark.slow
def test_disk_offload_gives_identical_logits_and_an_empty_folder(small_checkpoint, tmp_path):
    # The CPU keeps the largest layer free (the 8.4 MB embedding): 24 MB - 8.4 hold the embedding and one
    # 5.6 MB decoder layer; the other three layers go to disk.
    budget = {"cpu": 24_000_000}
    placed = loading.load_placed(small_checkpoint, "auto", budget, offload_folder=tmp_path / "offload")
    assert placed.matches_plan and set(placed.hf_device_map.values()) == {"cpu", "disk"}
    assert placed.placed == placed.plan.weight_bytes_per_device
    assert placed.offload_files == []  # transformers 5 reads disk-offloaded safetensors weights from the shards
    full, _ = loading.load_bmi(small_checkpoint, forward=False)
    ids = torch.tensor([[1, 17, 300, 4000, 5]])
    with torch.no_grad():
        assert torch.equal(placed.model(ids).logits, full(ids).logits)
    slow, fast = loading.generate_timed(placed.model, ids, 3), loading.generate_timed(full, ids, 3)
    assert slow.tokens == fast.tokens and len(slow.tokens) == 3 and len(slow.step_s) == 2
    assert torch.equal(slow.logits, fast.logits) and slow.logits.shape == (3, SMALL["vocab_size"])
    assert views.device_map_chart(placed).data  # the real hf_device_map drawn like a plan


def test_offload_without_a_folder_is_refused_before_loading(small_checkpoint):
    with pytest.raises(LabError) as err:
        loading.load_placed(small_checkpoint, "auto", {"cpu": 24_000_000})
    assert "offload_folder is None" in str(err.value) and "modules to disk" in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() > 7, reason="machine has GPU 7")
def test_a_gpu_that_does_not_exist_is_refused(small_checkpoint):
    with pytest.raises(LabError, match="names a GPU that does not exist"):
        loading.load_placed(small_checkpoint, "auto", {7: "1GB", "cpu": "1GB"})
    with pytest.raises(LabError, match="names a GPU that does not exist"):
        loading.load_bmi(small_checkpoint, device="cuda:7")


def test_bad_paths_and_strategies(tmp_path, small_checkpoint):
    with pytest.raises(LabError, match="is not a checkpoint folder"):
        loading.load_bmi(tmp_path)
    for load in (loading.load_bmi, loading.load_naive, loading.compare_loads, loading.shard_by_shard):
        with pytest.raises(LabError, match="on_phase 'mark' is not callable; pass a function"):
            load(small_checkpoint, on_phase="mark")  # refused before anything loads
    with pytest.raises(LabError, match="not a device_map strategy"):
        loading.load_placed(tmp_path, "fastest", {"cpu": "1GB"})


# --- exercises of lesson 02 -----------------------------------------------------------------------------

def test_check_naive_peak_recognises_the_slips():
    params = bsl.count_parameters("bigsmall-small")
    assert check_naive_peak(params * 6, "bigsmall-small").correct  # 4 bytes (float32 model) + 2 (bf16 state dict)
    assert "float32 model alone" in check_naive_peak(params * 4.0 + 1, "bigsmall-small").slip
    assert "two copies" in check_naive_peak(params * 2, "bigsmall-small").slip
    assert "in GB" in check_naive_peak(params * 6 / 1e9, "bigsmall-small").slip
    assert check_naive_peak("1.1e9", "bigsmall-small").slip == "not a number"


def test_check_meta_bytes():
    assert check_meta_bytes(0).correct
    assert "bfloat16" in check_meta_bytes(bsl.weights_bytes("llama-3.1-8b")).slip
    assert "parameters" in check_meta_bytes(bsl.count_parameters("llama-3.1-8b")).slip


def test_check_largest_shard(small_checkpoint):
    sizes = [loading.shard_bytes(s) for s in loading.shard_files(small_checkpoint)]
    assert check_largest_shard(max(sizes), small_checkpoint).correct
    assert "whole checkpoint" in check_largest_shard(sum(sizes), small_checkpoint).slip


def test_check_disk_layers():
    p = placement.plan("bigsmall-small", "auto", {"cpu": "200MiB"})
    assert check_disk_layers(p.layers_on("disk")).correct
    slip = check_disk_layers(p.layers_on("disk") - 1)
    assert slip.slip and "largest layer" in slip.slip
