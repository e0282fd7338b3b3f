"""Lesson 05 tells the truth (issue 16): the planner's groups are the groups diffusers 0.42 builds (the VAE's
encoder and decoder are split one level down), lesson 05's claims fail when their input is broken, the pinned
memory of ``use_stream=True`` is planned exactly (and measured on a GPU), published GPU figures keep their
source in one table, and every checker of lesson 05 names at least four slips."""

from __future__ import annotations

import math

import pytest
import torch

import bigsmall_lab as bsl
from bigsmall_lab import offload, offload_plan
from bigsmall_lab._errors import ClaimFailed, LabError
from bigsmall_lab._units import GB, MiB
from bigsmall_lab.exercises import _core, _lesson05
from bigsmall_lab.offload import OffloadResult, OffloadSettings, PlannedGroup

BLOCK2 = OffloadSettings("block_level", num_blocks_per_group=2)


def lin(n_in: int = 4, n_out: int = 4) -> torch.nn.Linear:
    return torch.nn.Linear(n_in, n_out, device="meta")  # (n_in x n_out + n_out) x 4 bytes


# ---------------------------------------------------------------------------------------------
# The planner follows diffusers' grouping


@pytest.fixture(scope="module")
def built():
    """What diffusers really builds on the lab's tiny pipeline, per settings (loaded once each)."""
    settings = [BLOCK2, OffloadSettings("block_level"), OffloadSettings("leaf_level")]
    return {s: offload.groups_built_by_diffusers("tiny", s) for s in settings}


@pytest.mark.parametrize("settings", [BLOCK2, OffloadSettings("block_level"), OffloadSettings("leaf_level")],
                         ids=lambda s: s.label)
def test_planned_groups_are_the_groups_diffusers_builds(built, settings):
    components = offload.pipeline_components("tiny", torch.float32)
    for name, groups in built[settings].items():
        planned = offload_plan.plan_groups(components[name], settings)
        assert offload_plan.same_groups(planned, groups), name
        assert sum(g.weights_bytes for g in planned) >= offload_plan.module_tensor_bytes(components[name])


def test_the_vae_is_split_one_level_down_like_diffusers_does(built):
    vae = offload.pipeline_components("tiny", torch.float32)["vae"]
    assert offload_plan.block_modules_of(vae) == ("quant_conv", "post_quant_conv", "encoder", "decoder")
    groups = built[BLOCK2]["vae"]
    names = {g.name for g in groups}
    # The encoder's and decoder's own layers form their unmatched groups; their block lists are cut in groups.
    assert {"encoder", "decoder", "encoder.down_blocks.0", "decoder.up_blocks.0"} <= names
    assert "" not in names  # the VAE itself owns nothing outside encoder and decoder
    # Breaking the input: ignoring _group_offload_block_modules (what the lab planned before) moves the VAE whole,
    # and the comparison with diffusers' groups catches it.
    whole = offload_plan._block_level_groups(vae, 2, frozenset(), False)
    assert len(whole) == 1 and not offload_plan.same_groups(whole, groups)


def test_block_level_plan_worked_out_by_hand():
    # Two lists (3 and 2 blocks of 80 bytes), a proj layer (80) and a direct parameter (16): at 2 blocks per
    # group, groups a.0 (160), a.2 (80), b.0 (160) and the unmatched rest (80 + 16 = 96), on the device during
    # the whole forward. Peak: 96 + 160; with a stream (1 block per group) 96 + 80 + 80.
    m = torch.nn.Module()
    m.a, m.b = torch.nn.ModuleList([lin() for _ in range(3)]), torch.nn.ModuleList([lin(), lin()])
    m.proj, m.scale = lin(), torch.nn.Parameter(torch.empty(4, device="meta"))
    groups = offload_plan.plan_groups(m, BLOCK2)
    assert [(g.name, g.kind, g.weights_bytes) for g in groups] == [
        ("", "unmatched", 96), ("a.0", "blocks", 160), ("a.2", "blocks", 80), ("b.0", "blocks", 160)]
    assert offload_plan.plan_offload({"m": m}, BLOCK2).device_bytes == 96 + 160
    streamed = OffloadSettings("block_level", use_stream=True)
    assert offload_plan.plan_offload({"m": m}, streamed).device_bytes == 96 + 80 + 80
    assert [g.streamed for g in offload_plan.plan_groups(m, streamed)] == [False, True, True, True, True, True]


def test_a_named_block_module_is_split_one_level_down():
    class Auto(torch.nn.Module):
        _group_offload_block_modules = ["decoder"]

    m, dec = Auto(), torch.nn.Module()
    dec.up, dec.conv = torch.nn.ModuleList([lin(), lin()]), lin()
    m.decoder, m.head = dec, lin()
    names = [(g.name, g.weights_bytes) for g in offload_plan.plan_groups(m, BLOCK2)]
    assert names == [("", 80), ("decoder", 80), ("decoder.up.0", 160)]
    # peak: the component's rest + the decoder's rest + its group of 2 blocks
    assert offload_plan.plan_offload({"m": m}, BLOCK2).device_bytes == 80 + 80 + 160


def test_plan_groups_refuses_what_makes_no_groups():
    with pytest.raises(LabError, match="makes no groups"):
        offload_plan.plan_groups(lin(), OffloadSettings("model"))
    with pytest.raises(LabError, match="is not a module"):
        offload_plan.plan_groups("vae", BLOCK2)
    with pytest.raises(LabError, match="cannot be built here"):
        offload.groups_built_by_diffusers("tiny", OffloadSettings("leaf_level", use_stream=True))


# ---------------------------------------------------------------------------------------------
# Lesson 05's claims fail when what they state is false


def test_claim_block_level_moves_t5_whole_fails_when_t5_is_cut(built):
    # The lesson's claim reads diffusers' real groups: one group holding every T5 weight.
    t5 = offload.pipeline_components("tiny", torch.float32)["text_encoder_2"]
    groups = built[BLOCK2]["text_encoder_2"]

    def claim(groups, module):
        bsl.claim(len(groups) == 1 and groups[0].weights_bytes == offload_plan.module_tensor_bytes(module),
                  "block level moves T5 whole: diffusers built one group with all its weights")

    claim(groups, t5)
    with pytest.raises(ClaimFailed):  # a component whose blocks sit in a top-level list is cut in groups
        claim(built[BLOCK2]["transformer"], offload.pipeline_components("tiny", torch.float32)["transformer"])
    with pytest.raises(ClaimFailed):  # one weight less is not "whole"
        claim([PlannedGroup("", "unmatched", groups[0].weights_bytes - 4, groups[0].n_tensors)], t5)


def test_claim_planner_matches_diffusers_fails_on_a_changed_group(built):
    planned = offload_plan.plan_groups(offload.pipeline_components("tiny", torch.float32)["vae"], BLOCK2)
    real = built[BLOCK2]["vae"]
    bsl.claim(offload_plan.same_groups(planned, real), "the planner's groups are the groups diffusers built")
    changed = [PlannedGroup(g.name, g.kind, g.weights_bytes + (i == 0), g.n_tensors) for i, g in enumerate(real)]
    with pytest.raises(ClaimFailed):
        bsl.claim(offload_plan.same_groups(planned, changed), "the planner's groups are the groups diffusers built")
    with pytest.raises(ClaimFailed):
        bsl.claim(offload_plan.same_groups(planned, real[1:]), "the planner's groups are the groups diffusers built")


def test_claim_model_offload_needs_the_largest_component_fails_for_another_component():
    flux = offload_plan.flux_dev_components(torch.bfloat16)
    sizes = {c.name: c.weights_bytes for c in offload_plan.component_sizes()}
    model_plan = offload_plan.plan_offload(flux, OffloadSettings("model"))
    # The lesson's condition, recomputed: the largest component, found from the parameter counts (not the plan).
    assert model_plan.largest == max(sizes, key=sizes.get) and model_plan.device_bytes == sizes["transformer"]
    without = {k: v for k, v in flux.items() if k != "transformer"}
    other = offload_plan.plan_offload(without, OffloadSettings("model"))
    with pytest.raises(ClaimFailed):
        bsl.claim(other.device_bytes == sizes["transformer"], "model offloading needs the largest component whole")


# ---------------------------------------------------------------------------------------------
# Pinned memory of use_stream=True, planned


def test_pinned_memory_plan_worked_out_by_hand():
    # Leaf level + stream on a Linear(3, 100): weight 1,200 bytes -> 2,048 reserved, bias 400 -> 512.
    one = offload_plan.pinned_memory_plan({"m": torch.nn.Linear(3, 100)}, OffloadSettings("leaf_level", use_stream=True))
    assert (one.offloaded_bytes, one.pinned_bytes, one.reserved_bytes, one.n_tensors) == (1600, 1600, 2560, 2)
    assert one.released_bytes == 1600 and one.ram_after_bytes == 2560 and one.rounding == 2560 / 1600
    # No stream: nothing pinned.
    none = offload_plan.pinned_memory_plan({"m": torch.nn.Linear(3, 100)}, OffloadSettings("leaf_level"))
    assert (none.pinned_bytes, none.reserved_bytes) == (0, 0)


def test_pinned_memory_block_level_leaves_the_unmatched_group_unpinned():
    m = torch.nn.Module()
    m.blocks, m.proj = torch.nn.ModuleList([lin(), lin()]), lin(3, 100)  # blocks 80 each; proj 1,600
    p = offload_plan.pinned_memory_plan({"m": m}, OffloadSettings("block_level", use_stream=True))
    assert (p.offloaded_bytes, p.pinned_bytes, p.released_bytes) == (1760, 160, 160)
    assert p.ram_after_bytes == 1600 + p.reserved_bytes  # proj stays as it is, the blocks become pinned copies
    assert p.reserved_bytes == 2 * (64 + 16)  # two blocks: weight 64 and bias 16, powers of two already


def test_pinned_memory_counts_a_tied_tensor_once_per_streamed_group():
    emb = torch.nn.Embedding(10, 4)  # 160 bytes -> 256 reserved
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight
    p = offload_plan.pinned_memory_plan({"m": torch.nn.ModuleDict({"emb": emb, "head": head})},
                                   OffloadSettings("leaf_level", use_stream=True))
    assert (p.offloaded_bytes, p.pinned_bytes, p.reserved_bytes) == (160, 320, 512)


def test_pinned_memory_of_flux_dev_is_rounded_up_by_about_half():
    flux = offload_plan.flux_dev_components(torch.bfloat16)
    p = offload_plan.pinned_memory_plan({"transformer": flux["transformer"]}, OffloadSettings("leaf_level", use_stream=True))
    assert p.pinned_bytes == p.offloaded_bytes == 2 * 11_901_408_320
    assert 1.5 < p.rounding < 1.6  # measured on an H200: the allocator handed out 37,197,755,392 bytes
    assert p.released_bytes == p.offloaded_bytes  # leaf level streams every tensor: all originals go
    # measured there: resident memory grew by 13,407,248,384 bytes while applying
    assert p.ram_after_bytes - p.offloaded_bytes == pytest.approx(39_314_677_760 - 25_907_429_376, rel=0.01)


def test_pinned_memory_plan_refuses_bad_input():
    with pytest.raises(LabError, match="components"):
        offload_plan.pinned_memory_plan({}, OffloadSettings("leaf_level", use_stream=True))


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the measurement runs (see the gpu test)")
def test_measure_pinned_says_it_needs_a_gpu_in_one_sentence():
    with pytest.raises(LabError, match="needs a CUDA GPU") as err:
        offload.measure_pinned("tiny", OffloadSettings("leaf_level", use_stream=True))
    assert "\n" not in str(err.value)
    with pytest.raises(LabError, match="use_stream=True"):
        offload.measure_pinned("tiny", OffloadSettings("leaf_level"))


@pytest.mark.gpu
@pytest.mark.parametrize("settings", [OffloadSettings("block_level", use_stream=True),
                                      OffloadSettings("leaf_level", use_stream=True)], ids=lambda s: s.label)
def test_measure_pinned_on_a_gpu_lands_between_asked_and_rounded(settings):
    m = offload.measure_pinned("tiny", settings, torch.bfloat16)
    assert m.plan.pinned_bytes > 0
    if hasattr(torch.cuda, "host_memory_stats"):  # the allocator's own count, after minus before
        assert m.plan.pinned_bytes <= m.host_allocated_bytes <= m.plan.reserved_bytes * 1.02
    assert m.rss_peak_bytes >= m.rss_before_bytes


def test_host_allocated_counts_zero_before_the_first_pinned_block(monkeypatch):
    monkeypatch.setattr(torch.cuda, "host_memory_stats", lambda: {}, raising=False)
    assert offload._host_allocated() == 0
    monkeypatch.setattr(torch.cuda, "host_memory_stats", lambda: {"allocated_bytes.current": 2048}, raising=False)
    assert offload._host_allocated() == 2048
    monkeypatch.delattr(torch.cuda, "host_memory_stats", raising=False)
    assert offload._host_allocated() is None


# ---------------------------------------------------------------------------------------------
# Published figures: one table, each with its source


def test_published_figures_keep_their_source_and_give_the_ratio():
    assert len({f.source for f in offload_plan.PUBLISHED}) == 1 and "huggingface.co/datasets/diffusers/benchmarks" in \
        offload_plan.PUBLISHED[0].source
    base, leaf = offload_plan.published("none"), offload_plan.published(OffloadSettings("leaf_level", use_stream=True))
    assert leaf.seconds / base.seconds == pytest.approx(1.859 / 0.493)
    assert leaf.peak_gib < base.peak_gib and leaf.seconds > base.seconds  # streams do not hide every transfer
    assert offload_plan.published(OffloadSettings("sequential")) is None


def test_time_ratio_and_medians():
    plan = offload_plan.plan_offload({"m": lin()}, OffloadSettings())
    base = OffloadResult(OffloadSettings(), "cpu", "float32", plan, ran=True, seconds_per_image=0.5)
    slow = OffloadResult(OffloadSettings("leaf_level"), "cpu", "float32", plan, ran=True, seconds_per_image=1.5)
    assert offload.time_ratio(slow, base) == 3.0
    assert math.isnan(offload.time_ratio(OffloadResult(OffloadSettings(), "cpu", "float32", plan), base))


@pytest.mark.slow
def test_run_repeats_reports_the_median_of_its_runs():
    r = offload.run("tiny", OffloadSettings("none"), repeats=3)
    assert len(r.seconds_runs) == 3 and r.seconds_per_image == sorted(r.seconds_runs)[1]
    assert r.pipeline.endswith("tiny-flux-seed0")
    with pytest.raises(LabError, match="repeats"):
        offload.run("tiny", OffloadSettings("none"), repeats=0)


# ---------------------------------------------------------------------------------------------
# Slips: every checker of lesson 05 names at least four, each tested with its value

def _slip(check, value, *args):
    _core._ASKED.clear()
    return check(value, *args)


TRANSFORMER_BF16 = 2 * 11_901_408_320
PIPELINE_BF16 = 2 * (11_901_408_320 + 4_762_310_656 + 123_060_480 + 83_819_683)


@pytest.mark.parametrize("value, words", [
    (11_901_408_320, "number of parameters"),
    (PIPELINE_BF16, "whole pipeline"),
    (TRANSFORMER_BF16 * 8, "bits"),
    (TRANSFORMER_BF16 / GB, "in GB"),
    (TRANSFORMER_BF16 / 2**30, "in GiB"),
    (4 * 11_901_408_320, "float32"),
])
def test_flux_transformer_bytes_slips(value, words):
    verdict = _slip(_lesson05.check_flux_transformer_bytes, value)
    assert not verdict.correct and verdict.slip and words in verdict.slip


@pytest.mark.parametrize("value, words", [
    (PIPELINE_BF16, "every component"),
    (2 * (123_060_480 + 4_762_310_656), "both text encoders"),
    (2 * 4_762_310_656, "T5 encoder"),
    (TRANSFORMER_BF16 * 8, "bits"),
    (TRANSFORMER_BF16 / GB, "in GB"),
    (TRANSFORMER_BF16 / 2**30, "in GiB"),
    (2 * TRANSFORMER_BF16, "float32"),
])
def test_model_offload_bytes_slips(value, words):
    verdict = _slip(_lesson05.check_model_offload_bytes, value)
    assert not verdict.correct and verdict.slip and words in verdict.slip


@pytest.mark.parametrize("value, words", [(57, "counts blocks, not groups"), (58, "plus the rest"),
                                          (29, "one more group"), (28.5, "shorter")])
def test_group_count_slips(value, words):
    # FLUX.1-dev: 19 + 38 blocks; 2 per group: 10 + 19 groups of blocks + 1 = 30
    verdict = _slip(_lesson05.check_group_count, value, 2)
    assert not verdict.correct and verdict.slip and words in verdict.slip


def test_cpu_offload_saving_names_four_slips():
    components = offload.pipeline_components("tiny", torch.float32)
    on_gpu = offload_plan.plan_offload(components, OffloadSettings("model"), "cuda")
    none = offload_plan.plan_offload(components, OffloadSettings("none"), "cpu").device_bytes
    text = on_gpu.by_component["text_encoder"] + on_gpu.by_component["text_encoder_2"]
    cases = [(none - on_gpu.device_bytes, "saves on a GPU"), (on_gpu.device_bytes, "never leaves"),
             (none, "every weight"), (text, "text encoders")]
    for value, words in cases:
        verdict = _slip(_lesson05.check_cpu_offload_saving, value, "tiny")
        assert not verdict.correct and verdict.slip and words in verdict.slip, (value, verdict)


def _disk_result(n: int, peak_over_plan: float = 1.03) -> OffloadResult:
    """A block-level-to-disk result on the tiny pipeline whose measured peak is the plan x ``peak_over_plan``."""
    settings = OffloadSettings("block_level", num_blocks_per_group=n, offload_to_disk_path="/tmp")
    components = offload.pipeline_components("tiny", torch.float32)
    plan = offload_plan.plan_offload(components, settings, "cpu")
    return OffloadResult(settings, "cpu", "float32", plan, ran=True, peak_bytes=int(plan.device_bytes * peak_over_plan),
                         pipeline=str(offload.pipeline_folder("tiny")))


def test_disk_peak_prediction_is_right_within_the_stated_tolerance():
    result = _disk_result(1)
    measured = result.peak_bytes / MiB
    assert _slip(_lesson05.check_disk_peak, measured * (1 + 0.9 * _lesson05.DISK_PEAK_TOLERANCE), result).correct
    assert _slip(_lesson05.check_disk_peak, result.plan.device_bytes / MiB, result).correct  # the plan lands
    assert not _slip(_lesson05.check_disk_peak, measured * (1 + 1.5 * _lesson05.DISK_PEAK_TOLERANCE), result).correct
    assert not _slip(_lesson05.check_disk_peak, None, result).answered


def test_disk_peak_slips_each_with_its_value():
    result = _disk_result(1)
    components = offload.pipeline_components("tiny", torch.float32)
    two = offload_plan.plan_offload(
        components, OffloadSettings("block_level", num_blocks_per_group=2, offload_to_disk_path="/t"), "cpu").device_bytes / MiB
    none = offload_plan.plan_offload(components, OffloadSettings("none"), "cpu").device_bytes / MiB
    cases = [(two, "2 blocks per group"), (none, "every weight"), (result.peak_bytes, "in bytes"),
             (result.peak_bytes / GB, "in GB")]
    for value, words in cases:
        verdict = _slip(_lesson05.check_disk_peak, value, result)
        assert not verdict.correct and verdict.slip and words in verdict.slip, (value, verdict)
    assert len(_core._ASKED[next(iter(_core._ASKED))].slips) >= 4


def test_disk_peak_refuses_a_run_that_is_not_block_level_to_disk():
    plan = offload_plan.plan_offload({"m": lin()}, OffloadSettings())
    with pytest.raises(LabError, match="result"):
        _lesson05.check_disk_peak(10, OffloadResult(OffloadSettings("leaf_level"), "cpu", "float32", plan, ran=True,
                                                    peak_bytes=10, pipeline="x"))
    with pytest.raises(LabError, match="result"):
        _lesson05.check_disk_peak(10, "a result")


def test_claim_t5_sets_the_block_level_peak_fails_without_t5():
    flux = offload_plan.flux_dev_components(torch.bfloat16)
    block_plan = offload_plan.plan_offload(flux, BLOCK2)
    bsl.claim(block_plan.largest == "text_encoder_2", "at block level T5, not the transformer, sets the peak")
    without = offload_plan.plan_offload({k: v for k, v in flux.items() if k != "text_encoder_2"}, BLOCK2)
    with pytest.raises(ClaimFailed):
        bsl.claim(without.largest == "text_encoder_2", "at block level T5, not the transformer, sets the peak")


def test_claim_published_stream_run_is_slower_fails_on_a_faster_figure():
    base, leaf = offload_plan.published("none"), offload_plan.published(OffloadSettings("leaf_level", use_stream=True))
    text = "the published stream run is slower than no offloading: the stream does not hide all of the transfers"
    bsl.claim(leaf.seconds > base.seconds, text)
    with pytest.raises(ClaimFailed):  # a figure where the stream hid everything (no slower than no offloading)
        bsl.claim(base.seconds > base.seconds, text)
