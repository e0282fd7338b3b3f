"""Tensor parallelism: the planner's exact predictions, the launcher's checks before anything starts, a real
torchrun run on this CPU against the single process, and a failing or hanging rank that leaves nothing behind."""

from __future__ import annotations

import dataclasses
import socket
import sys
import time

import psutil
import pytest
import torch

import bigsmall_lab as bsl
from bigsmall_lab import _compat, parallel, tp_plan
from bigsmall_lab._errors import LabError
from bigsmall_lab.exercises import check_allreduces, check_rank_bytes, check_smallest_nproc

# SmolLM2-135M's published config (HuggingFaceTB/SmolLM2-135M-Instruct), typed here as the independent source.
SMOLLM2 = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 576,
           "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
           "head_dim": 64, "vocab_size": 49152, "tie_word_embeddings": True}
GPT2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": 16, "n_layer": 1, "n_head": 2,
        "vocab_size": 64, "n_positions": 32}


# ---------------------------------------------------------------------------------------------
# The planner


def test_plan_of_the_embedded_model_is_worked_out_by_hand():
    p = tp_plan.plan("bigsmall-tiny", nproc=2, dtype="float32")
    # bigsmall-tiny: hidden 256, intermediate 768, 6 layers, 8 heads / 4 KV heads of 32 dims, vocab 8192, tied.
    # embedding 8192 x 256 = 2,097,152; per layer q 256x256 = 65,536, k and v 128x256 = 32,768 each, o 65,536,
    # gate/up/down 768x256 = 196,608 each: 786,432; x 6 = 4,718,592. Norms: (2 x 6 + 1) x 256 = 3,328.
    sharded = (2_097_152 + 4_718_592) * 4
    replicated = 3_328 * 4
    assert p.sharded_bytes == sharded and p.replicated_bytes == replicated
    assert p.rank_bytes == (sharded // 2 + replicated,) * 2 == (13_644_800, 13_644_800)
    assert p.total_bytes == 6_819_072 * 4
    layer = {w.module: w for w in p.layer(0)}
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
        assert layer[name].placement.value == "Shard(0)"
    assert layer["self_attn.o_proj"].placement.value == layer["mlp.down_proj"].placement.value == "Shard(1)"
    assert layer["input_layernorm"].placement.value == "Replicate()"
    assert layer["self_attn.k_proj"].local_shapes == ((64, 256), (64, 256))  # 2 of the 4 KV heads each
    assert layer["mlp.down_proj"].local_shapes == ((256, 384), (256, 384))  # half of the 768 input features
    assert p.placements()["model.embed_tokens.weight"] == "Shard(0)"  # split on the vocabulary
    assert "lm_head.weight" not in p.placements()  # tied to the embedding: one tensor
    # 2 row-wise layers per decoder layer and the vocabulary-split embedding sum partial results.
    assert p.collectives == {"all_reduce": 2 * 6 + 1, "all_gather": 1}


def test_plan_of_smollm2_on_three_ranks():
    p = tp_plan.plan(SMOLLM2, nproc=3, dtype="float32")
    # FACTS.md measured 44,861,760 parameters per rank: (134,515,008 - 61 norms x 576) / 3 + 61 x 576.
    assert p.rank_bytes == (44_861_760 * 4,) * 3
    assert p.collectives["all_reduce"] == 61


def test_plan_order_one_rank_holds_less_as_nproc_grows():
    two, four = tp_plan.plan("bigsmall-tiny", 2).rank_bytes[0], tp_plan.plan("bigsmall-tiny", 4).rank_bytes[0]
    assert four < two < tp_plan.plan("bigsmall-tiny", 2).total_bytes


def test_shard_sizes_follow_torch_chunks():
    assert tp_plan.shard_sizes(9, 2) == tuple(len(c) for c in torch.arange(9).chunk(2))
    assert tp_plan.shard_sizes(10, 4) == (3, 3, 3, 1)


def test_nproc_must_divide_heads_and_kv_heads():
    assert tp_plan.valid_nproc(SMOLLM2) == [1, 3]
    assert tp_plan.valid_nproc("bigsmall-tiny") == [1, 2, 4]
    with pytest.raises(LabError) as err:
        tp_plan.check_nproc(SMOLLM2, 2, name="smollm2-135m-instruct")
    message = str(err.value)
    assert "9 attention heads and 3 KV heads" in message and "use one of: 1, 3" in message and len(message) < 300
    for bad in (0, -1, 2.5, "2", None, True):
        with pytest.raises(LabError, match="nproc"):
            tp_plan.check_nproc(SMOLLM2, bad)


def test_a_model_without_a_tp_plan_is_refused():
    with pytest.raises(LabError, match="cannot be split by tensor parallelism.*device_map"):
        tp_plan.plan(GPT2, nproc=2)


def test_layer_out_of_range():
    with pytest.raises(LabError, match="layers 0 to 5"):
        tp_plan.plan("bigsmall-tiny", 2).layer(6)


# ---------------------------------------------------------------------------------------------
# The compat names of tensor parallelism


def test_tensor_parallel_kwargs_use_distributed_config(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert parallel.tensor_parallel_kwargs is _compat.tensor_parallel_kwargs  # the public name of the shim
    kwargs = parallel.tensor_parallel_kwargs("auto")
    assert list(kwargs) == ["distributed_config"] and kwargs["distributed_config"].tp_plan == "auto"


def test_tensor_parallel_kwargs_fall_back_to_tp_plan(monkeypatch):
    import transformers

    @dataclasses.dataclass
    class ExpertsOnly:  # transformers 4.5x: a DistributedConfig without tp_plan
        enable_expert_parallel: bool = False

    monkeypatch.setattr(transformers, "DistributedConfig", ExpertsOnly)
    assert parallel.tensor_parallel_kwargs("auto") == {"tp_plan": "auto"}


def test_model_tp_plan_reads_the_models_rules():
    plan = _compat.model_tp_plan(bsl.zoo.meta_model("bigsmall-tiny"))
    assert plan["model.layers.*.self_attn.o_proj"] == "rowwise" and plan["model.embed_tokens"] == "embedding_rowwise"
    assert _compat.model_tp_plan(bsl.zoo.meta_model(GPT2)) == {}


# ---------------------------------------------------------------------------------------------
# Bad input: one sentence, and nothing launches


@pytest.fixture
def no_launch(monkeypatch):
    def launch(*args, **kwargs):
        raise AssertionError("run_tp launched torchrun for input it should have refused")

    monkeypatch.setattr(parallel, "_launch", launch)


@pytest.mark.parametrize("kwargs, words", [
    (dict(nproc=1), "splits nothing"),
    (dict(nproc=3), "does not divide bigsmall-tiny's 8 attention heads and 4 KV heads; use one of: 1, 2, 4"),
    (dict(nproc="2"), "is not a whole number"),
    (dict(dtype="int8"), "dtype"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(timeout_s=-1), "timeout_s"),
    (dict(device="tpu"), "device 'tpu'"),
    (dict(prompt=""), "prompt '' is empty"),
    (dict(prompt=[1, "a"]), "prompt"),
    (dict(model="llama-3.1-8b"), "full-size preset"),
    (dict(model="bigsmall-tinny"), "did you mean 'bigsmall-tiny'"),
])
def test_bad_input_gets_one_sentence_before_anything_launches(no_launch, kwargs, words):
    with pytest.raises(LabError) as err:
        parallel.run_tp(**kwargs)
    message = str(err.value)
    assert words in message and len(message) < 300 and "\n" not in message


def test_smollm2_on_two_processes_is_refused_before_launch(no_launch):
    with pytest.raises(LabError, match="9 attention heads and 3 KV heads; use one of: 1, 3"):
        parallel.run_tp("smollm2-135m-instruct", nproc=2)


def test_a_model_without_a_plan_is_refused_before_launch(no_launch, tmp_path):
    import transformers

    transformers.GPT2LMHeadModel(transformers.GPT2Config(**{k: v for k, v in GPT2.items() if k != "model_type"})) \
        .save_pretrained(tmp_path)
    with pytest.raises(LabError, match="cannot be split by tensor parallelism"):
        parallel.run_tp(tmp_path)


def test_more_ranks_than_gpus_is_refused(no_launch, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(LabError, match="nproc 2 is more than the GPUs present; this machine has 1 CUDA GPU"):
        parallel.run_tp(nproc=2, device="cuda")
    with pytest.raises(LabError, match="more than the GPUs present"):
        parallel.run_tp(nproc=2)  # 'auto' picks CUDA when there is one


def test_cuda_without_a_gpu_is_refused(no_launch, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(LabError, match="asks for CUDA"):
        parallel.run_tp(device="cuda")


def test_torchrun_missing_is_one_sentence(no_launch, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_available", lambda: False)
    with pytest.raises(LabError, match="needs torchrun"):
        parallel.run_tp()


def test_torchrun_command_spans_machines():
    cmd = parallel.torchrun_command(4, nnodes=2, endpoint="node0:29500", script="x.py")
    assert cmd[:5] == ["torchrun", "--nnodes", "2", "--nproc-per-node", "4"]
    assert cmd[cmd.index("--rdzv-endpoint") + 1] == "node0:29500" and cmd[-1] == "x.py"
    with pytest.raises(LabError, match="endpoint"):
        parallel.torchrun_command(2, endpoint="node0")


def test_worker_source_shows_the_call_being_taught():
    assert "tensor_parallel_kwargs" in parallel.worker_source() and "from_pretrained" in parallel.worker_source()


# ---------------------------------------------------------------------------------------------
# Views, on a result whose ranks hold exactly what the plan says (the real run is tested below)


def _planned_result(p: tp_plan.TPPlan) -> parallel.TPResult:
    ranks = tuple(parallel.RankRun(
        rank=r, device="cpu", backend="gloo", threads=1, param_bytes=p.rank_bytes[r],
        weights={w.name: parallel.WeightOnRank(w.placement.value, w.placement.value != "Replicate()", w.shape,
                                               w.local_shapes[r], w.local_bytes[r]) for w in p.weights},
        peak_bytes=2 * p.rank_bytes[r], peak_source="VmHWM", load_s=1.0, forward_s=0.1, generate_s=1.0,
        new_tokens=10, tokens=(1, 2), collectives=dict(p.collectives), allreduce_latency_s=1e-3)
        for r in range(p.nproc))
    reference = parallel.ReferenceRun("cpu", 1, p.total_bytes, 2 * p.total_bytes, 1.0, 0.1, 0.5, 10, (1, 2))
    return parallel.TPResult(model="smollm2", path="", nproc=p.nproc, dtype=p.dtype, device="cpu", backend="gloo",
                             prompt="", prompt_ids=(1,), plan=p, ranks=ranks, launch_s=1.0, command=(),
                             reference=reference, max_logit_diff=0.0, tokens_identical=True)


def test_split_figure_draws_each_ranks_slice_to_scale():
    from bigsmall_lab import views

    result = _planned_result(tp_plan.plan(SMOLLM2, nproc=3))
    fig = views.tp_split_figure(result)
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert len(rects) == 2 + 7 * 3  # 2 whole norms, 7 matrices in 3 slices each
    heights = sorted({round(r.y1 - r.y0) for r in rects})
    assert 1536 // 3 in heights and 192 // 3 in heights  # gate/up rows and k/v rows split in 3
    assert sum(1 for s in fig.layout.shapes if s.type == "line") == 2  # after o_proj and after down_proj
    assert "61 all-reduces" in fig.layout.title.text


def test_memory_and_speed_charts_show_the_results_numbers():
    from bigsmall_lab import views

    result = _planned_result(tp_plan.plan(SMOLLM2, nproc=3))
    memory = views.tp_memory_chart(result)
    assert list(memory.data[0].x) == ["one process (no TP)", "rank 0", "rank 1", "rank 2"]
    assert list(memory.data[0].y) == [b / 2**20 for b in (result.plan.total_bytes, *result.plan.rank_bytes)]
    speed = views.tp_speed_chart(result)
    # 10 tokens in 1 s = 100 ms per token, of which 61 all-reduces x 1 ms; one process: 50 ms per token
    assert list(speed.data[0].x) == pytest.approx([50.0, 100.0 - 61.0])
    assert list(speed.data[1].x) == pytest.approx([0.0, 61.0])
    table = views.tp_placement_table(result).data
    assert table.count("<tr>") == 1 + 9 and "NO" not in table


# ---------------------------------------------------------------------------------------------
# Exercises


def test_check_rank_bytes_right_and_slips():
    p = tp_plan.plan("llama-3.1-8b", 2, "bfloat16")
    assert check_rank_bytes(p.rank_bytes[0]).correct
    assert "whole model" in check_rank_bytes(p.total_bytes).slip
    assert "norms are replicated" in check_rank_bytes(p.total_bytes / 2).slip
    assert "left out the replicated norms" in check_rank_bytes(p.sharded_bytes / 2).slip
    tiny = tp_plan.plan("bigsmall-tiny", 2)
    embed = next(w for w in tiny.weights if "embed" in w.name)
    assert "ties lm_head" in check_rank_bytes(tiny.rank_bytes[0] + embed.local_bytes[0], tiny).slip
    assert check_rank_bytes("8e9").slip == "not a number"
    assert not check_rank_bytes(None).answered


def test_check_allreduces_right_and_slips():
    assert check_allreduces(13).correct  # bigsmall-tiny: 2 x 6 + 1
    assert "vocabulary" in check_allreduces(12).slip
    assert "2 per layer" in check_allreduces(6).slip
    assert "column-wise layers need no communication" in check_allreduces(43).slip
    assert "all-gather" in check_allreduces(14).slip
    assert check_allreduces([13]).slip == "not a number"


def test_check_smallest_nproc_right_and_slips():
    assert check_smallest_nproc(3, SMOLLM2).correct
    assert check_smallest_nproc(2, SMOLLM2).slip == "2 does not divide 9 attention heads and 3 KV heads"
    assert check_smallest_nproc(9, SMOLLM2).slip == "9 does not divide 3 KV heads"
    assert check_smallest_nproc("three", SMOLLM2).slip == "not a number"
    assert check_smallest_nproc(2, "bigsmall-tiny").correct


# ---------------------------------------------------------------------------------------------
# Real runs with torchrun on this CPU (each launch imports torch and transformers in every rank: slow)


def _our_workers() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any("bigsmall_lab._tp_worker" in part for part in (p.info["cmdline"] or [])):
                found.append(p)
        except psutil.Error:
            pass
    return found


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.fixture
def ports(monkeypatch):
    used = []
    original = parallel._free_port

    def free_port():
        used.append(original())
        return used[-1]

    monkeypatch.setattr(parallel, "_free_port", free_port)
    return used


def torchelastic_folders() -> set:
    import tempfile
    from pathlib import Path

    return set(Path(tempfile.gettempdir()).glob("torchelastic_*"))


@pytest.fixture(scope="module")
def tiny_run():
    before = torchelastic_folders()
    result = parallel.run_tp(nproc=2, dtype="float32", max_new_tokens=6, device="cpu")
    LEFT_BEHIND[:] = sorted(map(str, torchelastic_folders() - before))
    return result


LEFT_BEHIND: list[str] = []  # torchelastic_* folders that appeared in the temp folder during tiny_run


@pytest.mark.slow
def test_a_tp_run_leaves_no_torchelastic_folder_in_the_temp_folder(tiny_run):
    assert not LEFT_BEHIND, f"torchrun left {LEFT_BEHIND} behind"


def test_more_cpu_ranks_than_ram_holds_is_refused_with_the_estimate(no_launch):
    with pytest.raises(LabError, match=r"nproc 1000000000 cannot fit in RAM; .* GiB before any weights"):
        parallel.run_tp(nproc=10**9, device="cpu")


def test_shard_sizes_refuse_what_splits_nothing():
    for args, argument in (((-10, 2), "size"), ((2, 9), "nproc"), ((768, 0), "nproc"), ((768, 2.5), "nproc")):
        with pytest.raises(LabError, match=argument):
            tp_plan.shard_sizes(*args)


@pytest.mark.slow
def test_tp_on_two_cpu_processes_matches_one_process(tiny_run):
    r = tiny_run
    assert r.backend == "gloo" and r.nproc == 2 and len(r.ranks) == 2
    assert r.tokens_identical and all(rank.tokens == r.reference.tokens for rank in r.ranks)
    assert r.max_logit_diff < 1e-4  # float32: the sums are split, so only rounding differs
    assert r.ranks[0].new_tokens == 6


@pytest.mark.slow
def test_each_rank_holds_exactly_the_planned_half(tiny_run):
    r = tiny_run
    assert r.rank_bytes == r.plan.rank_bytes
    assert r.reference.param_bytes == r.plan.total_bytes
    # about half: the sharded half plus the (small) replicated norms
    assert r.rank_bytes[0] * 2 - r.plan.total_bytes == r.plan.replicated_bytes
    assert r.placements_match_plan
    q = r.ranks[1].weights["model.layers.0.self_attn.q_proj.weight"]
    assert q.dtensor and q.placement == "Shard(0)" and q.local_shape == (128, 256)
    norm = r.ranks[0].weights["model.layers.0.input_layernorm.weight"]
    assert not norm.dtensor and norm.placement == "Replicate()"
    assert r.collectives == r.plan.collectives


@pytest.mark.slow
def test_as_dict_gives_the_runs_figures_as_json_ready_numbers(tiny_run):
    import json

    d = tiny_run.as_dict()
    assert json.loads(json.dumps(d)) == d  # plain numbers, lists and texts only
    assert d["rank_param_bytes"] == list(tiny_run.rank_bytes) == d["predicted_rank_param_bytes"]
    assert d["nproc"] == 2 and d["tokens_identical"] is True and d["collectives_per_forward"] == tiny_run.collectives


@pytest.mark.slow
def test_views_draw_the_run(tiny_run):
    from bigsmall_lab import views

    fig = views.tp_split_figure(tiny_run)
    bands = [s for s in fig.layout.shapes if s.type == "rect"]
    # layer 0: 2 norms (whole) + 7 matrices split in 2
    assert len(bands) == 2 + 7 * 2
    assert sum(1 for s in fig.layout.shapes if s.type == "line") == 2  # the two all-reduces of a layer
    memory = views.tp_memory_chart(tiny_run)
    assert [b.name for b in memory.data][0] == "parameters: planner's prediction"
    assert list(memory.data[1].y[1:]) == [b / 2**20 for b in tiny_run.rank_bytes]
    speed = views.tp_speed_chart(tiny_run)
    assert len(speed.data[0].y) == 2
    assert "yes" in views.tp_placement_table(tiny_run).data and "NO" not in views.tp_placement_table(tiny_run).data


@pytest.mark.slow
def test_a_failing_rank_raises_and_leaves_nothing_behind(monkeypatch, ports):
    monkeypatch.setenv("BIGSMALL_LAB_TP_FAULT", "raise:1")
    start = time.monotonic()
    with pytest.raises(parallel.TPRunError) as err:
        parallel.run_tp(nproc=2, device="cpu", timeout_s=240)
    assert time.monotonic() - start < 240
    message = str(err.value)
    assert "on rank 1: RuntimeError: deliberate failure of rank 1" in message and "\n" not in message
    assert not _our_workers() and _port_is_free(ports[-1])


@pytest.mark.slow
def test_a_hanging_rank_times_out_and_leaves_nothing_behind(monkeypatch, ports):
    monkeypatch.setenv("BIGSMALL_LAB_TP_FAULT", "hang:0")
    timeout_s = 20
    start = time.monotonic()
    with pytest.raises(parallel.TPRunError, match=f"did not finish within {timeout_s} s and every process"):
        parallel.run_tp(nproc=2, device="cpu", timeout_s=timeout_s)
    assert time.monotonic() - start < timeout_s + 20  # the grace for SIGTERM, then SIGKILL
    assert not _our_workers() and _port_is_free(ports[-1])
    assert not list((bsl._paths.cache_dir() / "tp-runs").glob("*"))  # the run folder is gone too


@pytest.mark.gpu
def test_tp_on_gpus_matches_one_gpu():
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 CUDA GPUs; this machine has {torch.cuda.device_count()}")
    r = parallel.run_tp(nproc=2, device="cuda", max_new_tokens=6)
    assert r.backend == "nccl" and r.tokens_identical and r.max_logit_diff < 1e-3
    assert r.rank_bytes == r.plan.rank_bytes and r.placements_match_plan


# ---------------------------------------------------------------------------------------------
# Counting collectives without CommDebugMode (which crashes under transformers 5.25)


def test_count_collectives_counts_each_kind_once_per_call():
    import torch.distributed as dist
    import torch.distributed._functional_collectives as funcol

    assert _compat.collective_kind("c10d::allreduce_") == "all_reduce"
    assert _compat.collective_kind("_c10d_functional::all_gather_into_tensor") == "all_gather"
    assert _compat.collective_kind("c10d::barrier") is None
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        x = torch.ones(4)
        with _compat.count_collectives() as counts:
            dist.all_reduce(x)
            dist.all_reduce(x)
            gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor  # renamed in torch 2.13
            gather(x, 0, dist.group.WORLD).wait()
            dist.barrier()
            y = x * 2  # plain ops are not counted
        assert counts == {"all_reduce": 2, "all_gather": 1}, counts
        assert torch.equal(y, torch.full((4,), 2.0))
    finally:
        if started:
            dist.destroy_process_group()


def test_the_worker_imports_only_public_names_of_the_lab():
    # lesson 06 prints the worker's load() (worker_source): what a learner copies must not reach a private module
    import re

    source = parallel.worker_source()
    assert "from bigsmall_lab.parallel import tensor_parallel_kwargs" in source
    assert not re.search(r"bigsmall_lab\._\w+|from \._", source)


# ---------------------------------------------------------------------------------------------
# The launcher's progress line (no torch in the child: a fake job that writes the ranks' files)


def _fake_job(script: str) -> list[str]:
    return [sys.executable, "-c", script]


def test_the_launch_shows_each_rank_as_it_finishes(tmp_path, capsys):
    from bigsmall_lab import _torchrun

    script = ("import pathlib, time\n"
              "for r in range(2):\n"
              "    time.sleep(0.3)\n"
              "    pathlib.Path(f'rank{r}.json').write_text('{}')\n")
    _torchrun._launch(_fake_job(script), tmp_path, nproc=2, device="cpu", timeout_s=60, label="fake")
    err = capsys.readouterr().err
    assert "tensor-parallel run of fake: " in err and "starting 2 processes" in err
    assert err.rstrip().splitlines()[-1].startswith("tensor-parallel run of fake: done in ")
    assert err.rstrip().endswith("(2 ranks)")


def test_a_failed_launch_says_so_on_the_progress_line_and_raises(tmp_path, capsys):
    from bigsmall_lab import _torchrun

    script = "import pathlib; pathlib.Path('rank0.json').write_text('{}'); raise SystemExit(1)"
    with pytest.raises(parallel.TPRunError, match="the tensor-parallel run of fake on 2 processes failed"):
        _torchrun._launch(_fake_job(script), tmp_path, nproc=2, device="cpu", timeout_s=60, label="fake")
    last = capsys.readouterr().err.rstrip().splitlines()[-1]
    assert last.startswith("tensor-parallel run of fake: failed after ") and "1/2 ranks done" in last


def test_the_worker_does_not_use_comm_debug_mode():
    import inspect

    from bigsmall_lab import _tp_worker

    assert "CommDebugMode" not in inspect.getsource(_tp_worker)
