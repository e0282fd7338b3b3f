"""The script each torchrun process runs for :func:`bigsmall_lab.parallel.run_tp` (one per rank).

    python -m torch.distributed.run --nproc-per-node 2 -m bigsmall_lab._tp_worker RUN_DIR/spec.json

Every rank loads the same checkpoint with ``tp_plan="auto"`` (transformers starts the process group:
gloo on CPUs, nccl on GPUs, and keeps only this rank's slice of each weight; with one process it loads a
plain model and starts none, so the worker starts it and a one-GPU machine still runs the launch and
nccl), reads back the real DTensor placements, runs one forward pass while counting its collectives
(``_compat.count_collectives``), generates greedily, times a small all-reduce, and writes
``rank{r}.json`` (and rank 0 the prompt's logits) into the run folder. An exception is written to
``rank{r}.error`` and the process exits at once, so the launcher can name the failing rank while
torchrun stops the others.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

__all__ = ["load", "main", "warm_imports"]

# A test hook: "raise:R" makes rank R fail after loading, "hang:R" makes it sleep past any timeout at once.
_FAULT_ENV = "BIGSMALL_LAB_TP_FAULT"


def load(path: str, dtype):
    """The one call being taught: each process of torchrun runs it and keeps its slice of every weight."""
    from transformers import AutoModelForCausalLM

    from bigsmall_lab.parallel import tensor_parallel_kwargs

    # transformers >= 5: distributed_config=DistributedConfig(tp_plan="auto"); older: tp_plan="auto"
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **tensor_parallel_kwargs("auto"),
                                                local_files_only=True, use_safetensors=True)


def warm_imports(path: str) -> None:
    """Import the model's code before measuring: transformers imports it lazily inside from_pretrained,
    and those megabytes of Python modules are not the model's memory."""
    import transformers
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    MODEL_FOR_CAUSAL_LM_MAPPING[type(AutoConfig.from_pretrained(path, local_files_only=True))]
    transformers.GenerationMixin  # noqa: B018  (the generation code, imported on first use)


def _placement(param) -> tuple[str, bool, tuple[int, ...]]:
    """('Shard(0)' | 'Shard(1)' | 'Replicate()', is a DTensor, local shape) of one parameter."""
    from torch.distributed.tensor import DTensor, Replicate, Shard

    if not isinstance(param, DTensor):
        return "Replicate()", False, tuple(param.shape)
    (p,) = param.placements
    local = param.to_local()
    if isinstance(p, Shard):
        dim = p.dim % param.ndim
        return f"Shard({dim})", True, tuple(local.shape)
    if isinstance(p, Replicate):
        return "Replicate()", True, tuple(local.shape)
    return type(p).__name__, True, tuple(local.shape)


def _timed(step, device, clock=time.perf_counter):
    """``(step(), seconds)``. On CUDA, kernels are launched asynchronously: the device is synchronised
    before the clock starts (work queued earlier is not this step's) and before it is read again (the
    step's own kernels have finished), else a forward pass "takes" only its launch time."""
    import torch

    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    start = clock()
    result = step()
    if cuda:
        torch.cuda.synchronize(device)
    return result, clock() - start


def _allreduce_latency_s(hidden: int, dtype, device, repeat: int = 20) -> float:
    """Median seconds of one all-reduce of one token's hidden state, the message decoding sends."""
    import torch
    import torch.distributed as dist

    x = torch.ones(1, hidden, dtype=dtype, device=device)
    times = []
    for _ in range(repeat + 2):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    times = sorted(times[2:])
    return times[len(times) // 2]


def _run(spec: dict, run_dir: Path, rank: int) -> None:
    import torch
    import torch.distributed as dist
    from bigsmall_lab._compat import count_collectives
    from bigsmall_lab.measure import track

    dtype = getattr(torch, spec["dtype"])
    device_kind = "cpu"
    if spec["device"] == "cuda":  # one GPU per rank: measure this rank's own GPU
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device_kind = f"cuda:{local_rank}"
    fault = os.environ.get(_FAULT_ENV, "")
    if fault == f"hang:{rank}":  # the other ranks then wait for this one at the first collective
        time.sleep(3600)
    warm_imports(spec["path"])
    with track(f"rank {rank}", device=device_kind, interval_s=0.05) as memory:
        model, load_s = _timed(lambda: load(spec["path"], dtype), device_kind)
        if not dist.is_initialized():  # one process: transformers loads a plain model and starts no process group
            cuda = device_kind != "cpu"
            dist.init_process_group(backend="nccl" if cuda else "gloo",
                                    **({"device_id": torch.device(device_kind)} if cuda else {}))
            if cuda:  # nothing placed the plain model: put it on this rank's GPU, where nccl's collectives run
                model = model.to(device_kind)
        if fault == f"raise:{rank}":
            raise RuntimeError(f"deliberate failure of rank {rank} ({_FAULT_ENV})")
        weights, param_bytes = {}, 0
        for name, param in model.named_parameters():  # tied weights appear once
            placement, is_dtensor, local = _placement(param)
            nbytes = int(torch.Size(local).numel()) * param.element_size()
            param_bytes += nbytes
            weights[name] = {"placement": placement, "dtensor": is_dtensor, "shape": list(param.shape),
                             "local_shape": list(local), "local_bytes": nbytes}
        device = model.device
        ids = torch.tensor([spec["input_ids"]], device=device)
        with torch.no_grad(), count_collectives() as collectives:
            logits, forward_s = _timed(lambda: model(ids).logits, device)
        generate = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=spec.get("pad_token_id"))
        with torch.no_grad():
            model.generate(ids, max_new_tokens=1, **generate)  # warm-up: the first call sets things up
        dist.barrier()  # every rank starts generating together: the time is the slowest rank's
        with torch.no_grad():
            out, generate_s = _timed(lambda: model.generate(ids, max_new_tokens=spec["max_new_tokens"], **generate),
                                     device)
        hidden = int(model.config.get_text_config().hidden_size)
        latency_s = _allreduce_latency_s(hidden, dtype, device)
    if rank == 0:
        from safetensors.torch import save_file

        save_file({"logits": logits.float().cpu().contiguous()}, str(run_dir / "logits.safetensors"))
    result = {
        "rank": rank, "world_size": dist.get_world_size(), "backend": str(dist.get_backend()),
        "device": str(device), "threads": torch.get_num_threads(), "param_bytes": param_bytes,
        "weights": weights, "peak_bytes": int(memory.peak_bytes), "peak_source": memory.peak_source,
        "load_s": load_s, "forward_s": forward_s, "generate_s": generate_s,
        "new_tokens": int(out.shape[1] - ids.shape[1]), "tokens": out[0].tolist(),
        "collectives": collectives, "allreduce_latency_s": latency_s,
    }
    tmp = run_dir / f".rank{rank}.json.tmp"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, run_dir / f"rank{rank}.json")  # the launcher never reads half a file
    dist.barrier()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec_path = Path(argv[0])
    run_dir = spec_path.parent
    rank = int(os.environ.get("RANK", "0"))
    try:
        _run(json.loads(spec_path.read_text()), run_dir, rank)
    except BaseException:  # noqa: BLE001  (a KeyboardInterrupt is a failure of this rank too)
        (run_dir / f"rank{rank}.error").write_text(traceback.format_exc())
        sys.stderr.write(traceback.format_exc())
        sys.stderr.flush()
        # Exit now: a normal exit would wait on the process group, which the other ranks may never join.
        os._exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
