"""Tensor parallelism for real: launch torchrun, let every process hold a slice of each weight, measure.

:func:`run_tp` starts ``nproc`` processes with torchrun (gloo on CPUs with one thread each, nccl on GPUs);
each runs :mod:`bigsmall_lab._tp_worker`, which loads the model with
``from_pretrained(..., distributed_config=DistributedConfig(tp_plan="auto"))`` and reports back, as JSON
in a run folder under the lab's cache, what it really holds: its parameter bytes, every weight's DTensor
placement (column-wise ``Shard(0)``, row-wise ``Shard(1)``, replicated), its peak memory, its times and
the collectives of one forward pass. The launcher then runs the same prompt in this process, without
tensor parallelism, and compares the logits and the greedy tokens.

Everything the planner (:mod:`bigsmall_lab.tp_plan`) can say in advance is checked before anything
launches, in one sentence: ``nproc`` must divide the attention and KV heads, the model needs a
tensor-parallel plan, a GPU run needs ``nproc`` GPUs, torchrun must exist. A rank that fails or hangs
never leaves processes or ports behind: the launcher has a timeout, stops every process of the run and
raises :class:`TPRunError` naming the failing rank and its last error line.

What a run of the embedded model on 2 ranks must show is planned first (float32: each rank holds
13,644,800 bytes; a forward pass makes 13 all-reduces and 1 all-gather):

>>> from bigsmall_lab import tp_plan
>>> expected = tp_plan.plan("bigsmall-tiny", nproc=2)
>>> expected.rank_bytes, expected.collectives
((13644800, 13644800), {'all_reduce': 13, 'all_gather': 1})

``run_tp(nproc=2)`` (about 30 s on two cores) then measures each rank against it: ``r.rank_bytes ==
r.plan.rank_bytes``, ``r.collectives == r.plan.collectives``, and ``r.tokens_identical`` with one process
(tests/test_parallel.py runs it).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import math
import numbers
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import tp_plan as _planner
from ._dtypes import dtype_name, torch_dtype
from ._errors import LabError, whole_number
from ._paths import cache_dir
from .tp_plan import TPPlan
# The launcher (start torchrun, show progress, stop every process) is in _torchrun; run_tp calls these
# names through this module, so tests can replace parallel._launch and parallel._free_port.
from ._torchrun import TPRunError, _free_port, _launch
# The public name of the from_pretrained keywords that ask for tensor parallelism in the installed
# transformers (its code lives with the other version shims in _compat).
from ._compat import tensor_parallel_kwargs

__all__ = ["DEFAULT_PROMPT", "RankRun", "ReferenceRun", "TPResult", "TPRunError", "WeightOnRank", "run_tp",
           "tensor_parallel_kwargs", "torchrun_command", "worker_source"]

DEFAULT_PROMPT = "The with statement is used to"
_DTYPES = ("float32", "bfloat16", "float16")
_WORKER = "bigsmall_lab._tp_worker"


@dataclass(frozen=True)
class WeightOnRank:
    """One parameter as one rank really holds it (read from its DTensor)."""

    placement: str  # 'Shard(0)', 'Shard(1)' or 'Replicate()'
    dtensor: bool  # False: a plain tensor, which every rank holds whole
    shape: tuple[int, ...]
    local_shape: tuple[int, ...]
    local_bytes: int


@dataclass(frozen=True)
class RankRun:
    """What one torchrun process measured."""

    rank: int
    device: str
    backend: str
    threads: int
    param_bytes: int  # bytes of the parameters this rank holds (tied weights once)
    weights: dict[str, WeightOnRank]
    peak_bytes: int  # above the memory in use after the imports (VmHWM on CPU, max allocated on CUDA)
    peak_source: str
    load_s: float
    forward_s: float
    generate_s: float
    new_tokens: int
    tokens: tuple[int, ...]
    collectives: dict[str, int]  # per forward pass of the prompt, counted by _compat.count_collectives
    allreduce_latency_s: float  # median time of one all-reduce of one token's hidden state

    def placements(self) -> dict[str, str]:
        return {name: w.placement for name, w in self.weights.items()}


@dataclass(frozen=True)
class ReferenceRun:
    """The same model and prompt in this one process, without tensor parallelism."""

    device: str
    threads: int
    param_bytes: int
    peak_bytes: int
    load_s: float
    forward_s: float
    generate_s: float
    new_tokens: int
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class TPResult:
    """What :func:`run_tp` measured, beside what the planner predicted (``plan``)."""

    model: str
    path: str
    nproc: int
    dtype: str
    device: str
    backend: str
    prompt: str
    prompt_ids: tuple[int, ...]
    plan: TPPlan
    ranks: tuple[RankRun, ...]
    launch_s: float  # wall time of the whole torchrun launch: start, imports, load, generate, exit
    command: tuple[str, ...]
    reference: ReferenceRun | None = None
    max_logit_diff: float | None = None  # largest |logit| difference on the prompt, rank 0 vs one process
    tokens_identical: bool | None = None  # every rank's greedy tokens == the single process's
    text: str = ""  # the generated continuation, decoded
    reference_text: str = ""

    @property
    def rank_bytes(self) -> tuple[int, ...]:
        """Measured parameter bytes per rank."""
        return tuple(r.param_bytes for r in self.ranks)

    @property
    def placements_match_plan(self) -> bool:
        """Every rank's placements and local shapes are exactly the planner's."""
        expected = self.plan.placements()
        for r in self.ranks:
            if r.placements() != expected:
                return False
            for w in self.plan.weights:
                if r.weights[w.name].local_shape != w.local_shapes[r.rank]:
                    return False
        return True

    @property
    def collectives(self) -> dict[str, int]:
        """Collectives of one forward pass, as rank 0 counted them."""
        return dict(self.ranks[0].collectives)

    @property
    def generate_s(self) -> float:
        """Time to generate, the slowest rank's (all ranks wait for each other at every layer)."""
        return max(r.generate_s for r in self.ranks)

    @property
    def seconds_per_token(self) -> float:
        return self.generate_s / max(1, self.ranks[0].new_tokens)

    @property
    def reference_seconds_per_token(self) -> float | None:
        if self.reference is None:
            return None
        return self.reference.generate_s / max(1, self.reference.new_tokens)

    @property
    def allreduces_per_token(self) -> int:
        """All-reduces each generated token waits for (the same as one forward pass)."""
        return self.collectives.get("all_reduce", 0)

    @property
    def allreduce_s_per_token(self) -> float:
        """Time per generated token spent in all-reduces, estimated as count x the measured latency."""
        latency = sorted(r.allreduce_latency_s for r in self.ranks)[len(self.ranks) // 2]
        return self.allreduces_per_token * latency

    def as_dict(self) -> dict[str, Any]:
        """The figures as plain JSON-ready numbers (for benchmarks/*.json)."""
        return {
            "model": self.model, "nproc": self.nproc, "dtype": self.dtype, "device": self.device,
            "backend": self.backend, "prompt_tokens": len(self.prompt_ids),
            "new_tokens": self.ranks[0].new_tokens, "launch_seconds": round(self.launch_s, 2),
            "rank_param_bytes": list(self.rank_bytes), "predicted_rank_param_bytes": list(self.plan.rank_bytes),
            "single_process_param_bytes": self.plan.total_bytes,
            "rank_peak_bytes": [r.peak_bytes for r in self.ranks],
            "reference_peak_bytes": self.reference.peak_bytes if self.reference else None,
            "rank_load_seconds": [round(r.load_s, 3) for r in self.ranks],
            "tp_seconds_per_token": round(self.seconds_per_token, 5),
            "single_process_seconds_per_token": (round(self.reference_seconds_per_token, 5)
                                                 if self.reference else None),
            "single_process_threads": self.reference.threads if self.reference else None,
            "collectives_per_forward": self.collectives,
            "allreduce_latency_us": round(1e6 * sorted(r.allreduce_latency_s for r in self.ranks)[self.nproc // 2], 1),
            "max_logit_diff": self.max_logit_diff, "tokens_identical": self.tokens_identical,
        }


def worker_source() -> str:
    """The source of the function every torchrun process runs to load its slice: the call being taught."""
    from . import _tp_worker

    return inspect.getsource(_tp_worker.load)


def torchrun_command(nproc_per_node: int, nnodes: int = 1, endpoint: str = "127.0.0.1:29500",
                     run_id: str = "bigsmall-tp", script: str | list[str] = "tp_generate.py") -> list[str]:
    """The torchrun command line; run_tp uses it on one machine, and the same shape spans machines.

    On each of ``nnodes`` machines, run the same command: the processes find each other at the
    rendezvous ``endpoint`` (host:port of one of them) under the job's ``run_id``.

    >>> " ".join(torchrun_command(8, nnodes=2, endpoint="node0.example.org:29500"))
    'torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint node0.example.org:29500 --rdzv-id bigsmall-tp tp_generate.py'
    """
    nproc_per_node = whole_number(nproc_per_node, "nproc_per_node")
    nnodes = whole_number(nnodes, "nnodes")
    if not isinstance(endpoint, str) or endpoint.count(":") != 1 or not endpoint.rsplit(":", 1)[1].isdigit():
        raise LabError.bad("endpoint", endpoint, "use 'host:port', e.g. 'node0.example.org:29500'",
                           verb="is not a rendezvous endpoint")
    script = [script] if isinstance(script, str) else list(script)
    return ["torchrun", "--nnodes", str(nnodes), "--nproc-per-node", str(nproc_per_node), "--rdzv-backend", "c10d",
            "--rdzv-endpoint", endpoint, "--rdzv-id", run_id, *script]


def run_tp(model: str | os.PathLike | None = None, nproc: int = 2, dtype: str | torch.dtype = "float32",
           prompt: str | list[int] = DEFAULT_PROMPT, max_new_tokens: int = 8, device: str = "auto",
           timeout_s: float = 300.0, reference: bool = True) -> TPResult:
    """Split ``model`` over ``nproc`` processes with ``tp_plan="auto"``, generate, and measure every rank.

    ``model``: None (the embedded bigsmall-tiny), a lab or real model name ('smollm2-135m-instruct')
    or a local checkpoint folder. ``device``: 'auto' (CUDA when present), 'cpu' or 'cuda'.
    ``reference``: also run the prompt in this process without tensor parallelism, to compare the
    logits and tokens. Raises :class:`LabError` before launching for bad input, and
    :class:`TPRunError` when a rank fails or the run exceeds ``timeout_s``.
    """
    nproc = whole_number(nproc, "nproc", minimum=1)
    if nproc < 2:
        raise LabError.bad("nproc", nproc, "use 2 or more (one process is the ordinary, unsplit run)",
                           verb="splits nothing")
    dtype = dtype_name(dtype, allowed=_DTYPES)
    max_new_tokens = whole_number(max_new_tokens, "max_new_tokens", minimum=1)
    timeout_s = _seconds(timeout_s)
    device = _device(device, nproc)
    _check_torchrun()
    label, source = _model_source(model)
    path = _model_folder(label, source)
    plan = _planner.plan(path, nproc, dtype, name=label)  # raises when nproc does not divide the heads, or no plan
    prompt_text, prompt_ids, tokenizer = _prompt(prompt, path)

    run_dir = cache_dir() / "tp-runs" / uuid.uuid4().hex[:12]
    run_dir.mkdir(parents=True)
    try:
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        spec = {"path": str(path), "dtype": dtype, "device": device, "input_ids": prompt_ids,
                "max_new_tokens": max_new_tokens, "pad_token_id": pad if pad is not None else _eos(path)}
        (run_dir / "spec.json").write_text(json.dumps(spec))
        port = _free_port()
        command = [sys.executable, "-m", "torch.distributed.run",
                   *torchrun_command(nproc, endpoint=f"127.0.0.1:{port}", run_id=run_dir.name,
                                     script=["-m", _WORKER, str(run_dir / "spec.json")])[1:]]
        start = time.perf_counter()
        _launch(command, run_dir, nproc, device, timeout_s, label)
        launch_s = time.perf_counter() - start
        ranks = tuple(_read_rank(run_dir / f"rank{r}.json") for r in range(nproc))
        tp_logits = _read_logits(run_dir / "logits.safetensors")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)

    result = TPResult(model=label, path=str(path), nproc=nproc, dtype=dtype, device=device,
                      backend=ranks[0].backend, prompt=prompt_text, prompt_ids=tuple(prompt_ids), plan=plan,
                      ranks=ranks, launch_s=launch_s, command=tuple(command),
                      text=_decode(tokenizer, ranks[0].tokens[len(prompt_ids):]))
    if not reference:
        return result
    ref, ref_logits = _reference(path, dtype, device, prompt_ids, max_new_tokens, spec["pad_token_id"])
    diff = float((tp_logits - ref_logits).abs().max())
    same = all(r.tokens == ref.tokens for r in ranks)
    return dataclasses.replace(result, reference=ref, max_logit_diff=diff, tokens_identical=same,
                               reference_text=_decode(tokenizer, ref.tokens[len(prompt_ids):]))


# ---------------------------------------------------------------------------------------------
# Checks before launching


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise LabError.bad("timeout_s", value, "use a number of seconds > 0, e.g. 300")
    return float(value)


def _device(device: Any, nproc: int) -> str:
    if not isinstance(device, str) or device.strip().lower() not in ("auto", "cpu", "cuda"):
        raise LabError.bad("device", device, "use 'auto', 'cpu' or 'cuda' (each rank takes GPU number LOCAL_RANK)")
    device = device.strip().lower()
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "auto":
        device = "cuda" if n_gpus else "cpu"
    if device == "cuda" and n_gpus == 0:
        raise LabError.bad("device", "cuda", "no CUDA GPU is attached; use device='cpu' (gloo, one thread per rank)",
                           verb="asks for CUDA")
    if device == "cuda" and nproc > n_gpus:
        raise LabError.bad("nproc", nproc, f"this machine has {n_gpus} CUDA GPU(s), one per rank; use nproc <= "
                           f"{n_gpus}, or device='cpu'", verb="is more than the GPUs present")
    if device == "cpu":
        _check_cpu_ranks_fit(nproc)
    return device


def _check_cpu_ranks_fit(nproc: int) -> None:
    """Refuse more CPU ranks than RAM holds: each rank is a Python process that imports torch and transformers
    as this one did, so this process's resident size now is the estimate of one rank before its model."""
    import psutil

    per_rank = psutil.Process().memory_info().rss
    available = psutil.virtual_memory().available
    if nproc * per_rank > available:
        raise LabError.bad("nproc", nproc, f"{nproc:,} processes would need about {nproc * per_rank / 2**30:,.1f} GiB "
                           f"before any weights ({per_rank / 2**20:,.0f} MiB each, this process's size) and "
                           f"{available / 2**30:,.1f} GiB is available; use at most {max(available // per_rank, 1):,}",
                           verb="cannot fit in RAM")


def _check_torchrun() -> None:
    if not torch.distributed.is_available() or importlib.util.find_spec("torch.distributed.run") is None:
        raise LabError("tensor parallelism needs torchrun (torch.distributed.run), and this torch build has no "
                       "torch.distributed; install a torch build with distributed support (the Linux wheels have it)")


def _model_source(model: Any) -> tuple[str, str]:
    """(a label, what the planner and zoo.model_path take) for ``model``."""
    from .zoo import LAB_MODELS, PRESETS, REAL_MODELS

    if model is None:
        return "bigsmall-tiny", "bigsmall-tiny"
    if isinstance(model, os.PathLike):
        model = os.fspath(model)
    if not isinstance(model, str) or not model.strip():
        raise LabError.bad("model", model, "use None (bigsmall-tiny), 'smollm2-135m-instruct' or a checkpoint folder")
    key = model.strip().lower()
    if key in (*LAB_MODELS, *REAL_MODELS):
        return key, key
    if key in PRESETS:
        # A preset is a full-size random-weight architecture: 8B in float32 is 32 GB per run.
        raise LabError.bad("model", model, "run a lab model or a folder here, and plan a preset with "
                           "bsl.tp_plan.plan(preset, nproc)", verb="is a full-size preset with random weights")
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        from ._errors import closest

        raise LabError.bad("model", model, "use None, one of " + ", ".join((*LAB_MODELS, *REAL_MODELS))
                           + closest(key, (*LAB_MODELS, *REAL_MODELS)) + ", or a folder with config.json",
                           verb="is not a lab model or a checkpoint folder")
    return path.name, str(path)


def _model_folder(label: str, source: str) -> Path:
    from .zoo import model_path

    path = Path(model_path(source))
    if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")):
        raise LabError.bad("model", label, "tensor parallelism loads safetensors shards; save the model with "
                           "save_pretrained(folder) first", verb="has no config.json and *.safetensors in its folder")
    return path


def _prompt(prompt: Any, path: Path) -> tuple[str, list[int], Any]:
    tokenizer = None
    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
        from .zoo import load_tokenizer

        tokenizer = load_tokenizer(path)
    if isinstance(prompt, str):
        if not prompt.strip():
            raise LabError.bad("prompt", prompt, "write a few words, e.g. 'The with statement is used to'",
                               verb="is empty")
        if tokenizer is None:
            raise LabError.bad("prompt", prompt, "this checkpoint has no tokenizer; pass token ids (a list of ints)",
                               verb="is text")
        ids = tokenizer(prompt)["input_ids"]
        return prompt, list(ids), tokenizer
    if isinstance(prompt, (list, tuple)) and prompt and all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) and i >= 0 for i in prompt):
        return _decode(tokenizer, prompt), [int(i) for i in prompt], tokenizer
    raise LabError.bad("prompt", prompt, "use a text or a non-empty list of token ids")


def _eos(path: Path) -> int | None:
    cfg = json.loads((path / "config.json").read_text())
    eos = cfg.get("pad_token_id", cfg.get("eos_token_id"))
    return eos[0] if isinstance(eos, list) else eos


def _decode(tokenizer, ids) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True) if tokenizer is not None else ""




# ---------------------------------------------------------------------------------------------
# Reading results, and the single-process reference


def _read_rank(path: Path) -> RankRun:
    d = json.loads(path.read_text())
    weights = {name: WeightOnRank(w["placement"], bool(w["dtensor"]), tuple(w["shape"]), tuple(w["local_shape"]),
                                  int(w["local_bytes"])) for name, w in d["weights"].items()}
    return RankRun(rank=d["rank"], device=d["device"], backend=d["backend"], threads=d["threads"],
                   param_bytes=d["param_bytes"], weights=weights, peak_bytes=d["peak_bytes"],
                   peak_source=d["peak_source"], load_s=d["load_s"], forward_s=d["forward_s"],
                   generate_s=d["generate_s"], new_tokens=d["new_tokens"], tokens=tuple(d["tokens"]),
                   collectives=dict(d["collectives"]), allreduce_latency_s=d["allreduce_latency_s"])


def _read_logits(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(path))["logits"]


def _reference(path: Path, dtype: str, device: str, prompt_ids: list[int], max_new_tokens: int,
               pad: int | None) -> tuple[ReferenceRun, torch.Tensor]:
    """One process, no tensor parallelism. On a CPU it gets one thread, as each rank does: one core plays
    one GPU, so the comparison is one device against ``nproc`` devices (and one thread also keeps the
    timing sane on a busy machine, where OpenMP threads spin waiting for each other)."""
    from transformers import AutoModelForCausalLM

    from .measure import track

    from ._tp_worker import warm_imports

    warm_imports(str(path))
    threads_before = torch.get_num_threads()
    threads = 1 if device == "cpu" else threads_before
    torch.set_num_threads(threads)
    try:
        with track("single process", device=device, interval_s=0.05) as memory:
            start = time.perf_counter()
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype), local_files_only=True,
                                                         use_safetensors=True, device_map=device)
            load_s = time.perf_counter() - start
            ids = torch.tensor([prompt_ids], device=model.device)
            with torch.no_grad():
                start = time.perf_counter()
                logits = model(ids).logits.float().cpu()
                forward_s = time.perf_counter() - start
                generate = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=pad)
                model.generate(ids, max_new_tokens=1, **generate)  # warm-up, as every rank does
                start = time.perf_counter()
                out = model.generate(ids, max_new_tokens=max_new_tokens, **generate)
                if device == "cuda":
                    torch.cuda.synchronize()
                generate_s = time.perf_counter() - start
            param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
            del model
    finally:
        torch.set_num_threads(threads_before)
    ref = ReferenceRun(device=device, threads=threads, param_bytes=param_bytes, peak_bytes=memory.peak_bytes,
                       load_s=load_s, forward_s=forward_s, generate_s=generate_s,
                       new_tokens=int(out.shape[1] - len(prompt_ids)), tokens=tuple(out[0].tolist()))
    return ref, logits
