"""Run an advisor :class:`~bigsmall_lab.advisor.Option` for real and measure it next to its plan.

:func:`bigsmall_lab.advisor.fit` plans; this module runs the plan on the attached hardware: the same
``from_pretrained`` keywords the option's code shows (dtype, ``device_map``, ``max_memory``,
``BitsAndBytesConfig``) and the same ``generate`` cache, then compares the peak it measured with
the bytes the plan put on the compute device (weights + KV cache + activations; on a GPU less the
CUDA context, which torch's allocator does not see).

>>> m = budget_machine("300MB")                   # this machine, its RAM capped at 300 MB
>>> option = top_option("bigsmall-tiny", m, seq_len=64)
>>> option.label
'bf16 weights, dynamic cache, CPU'
>>> r = run(option, "bigsmall-tiny", max_new_tokens=4, reference=False)   # doctest: +SKIP
>>> 0.9 <= r.ratio <= 1.1                                                   # doctest: +SKIP
True

How the peak is measured (each run in a fresh Python process, so nothing a notebook holds skews it):

1. the option is run once (a short warm-up: the first call of a kernel, lazy imports and thread
   pools allocate memory once per process) and released;
2. the baseline is the process's resident memory before the measured ``from_pretrained``;
3. after loading, the checkpoint's file pages that loading read are released
   (``madvise`` on the mapped shards, see :func:`_release_file_pages`). They are clean pages of a file: the kernel drops
   them by itself as soon as memory runs short (under a container's memory limit, say), so they are
   not memory the option needs. bitsandbytes reads every bf16 weight once to quantize it, and
   transformers keeps the shards mapped for the tensors it did not quantize: without this step an
   int8 model would count its bf16 checkpoint too. What loading itself peaked at is kept in ``notes``;
4. ``peak_bytes`` is the high-water mark (``VmHWM``, exact; on CUDA ``max_memory_allocated``) while the
   model generates, above the baseline: the weights it holds, what it reads back from disk, its KV
   cache and activations.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import advisor
from ._errors import LabError, shown, whole_number
from ._progress import Progress
from ._units import MiB, format_bytes, parse_size
from .estimates import RUNTIME_OVERHEAD

__all__ = ["EVAL_TOKENS", "FitRun", "budget_machine", "forcing_budgets", "generate_kwargs", "load_kwargs", "run", "run_all",
           "top_option"]

RUNNABLE_CACHES = ("dynamic", "quanto-int4", "quanto-int2", "offloaded")
_WORKER_TIMEOUT_S = 900
EVAL_TOKENS = 128  # teacher-forced tokens behind kl / top1: enough to order formats, seconds on a CPU
_ACTIVATIONS = re.compile(r"activation_bytes\(seq_len=(\d+), batch_size=(\d+)\)")


@dataclass(frozen=True)
class FitRun:
    """An option run for real: its planned and measured peak on ``device``, and what it cost.

    ``planned_bytes``: the option's bytes on the compute device ("cpu", or GPU 0 less the CUDA
    context); ``peak_bytes``: the measured peak while generating, above the memory in use before
    loading; ``ratio`` = peak / planned. ``kl`` (nats per token) and ``top1`` (agreement): the option
    against the same checkpoint unquantized and in RAM, teacher-forced on the lab's evaluation text;
    None when run with ``reference=False``. ``seconds``: the time ``generate`` took for ``tokens``
    new tokens.
    """

    label: str
    device: str
    planned_bytes: int
    peak_bytes: int
    ratio: float
    kl: float | None
    top1: float | None
    seconds: float
    tokens: int
    code: str
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        """JSON-ready (a benchmark file, a chart's data)."""
        out = asdict(self)
        out["notes"] = list(self.notes)
        return out


# --- the machine -----------------------------------------------------------------------------------

def _cuda() -> bool:
    from .hardware import has_cuda

    return has_cuda()


def budget_machine(budget: str | int, disk: str | int | None = None,
                   cpu_ram: str | int | None = None) -> advisor.Machine:
    """The attached machine with its memory capped at ``budget``: CPU RAM here, GPU 0 where CUDA is
    attached (then with ``cpu_ram`` beside it: None for the RAM available now, 0 for none, so that the
    plan cannot spill to CPU). ``disk``: room for weights on disk (None: no spill to disk). The budget
    may not exceed what the machine has.

    >>> budget_machine("300MB", disk="1GB").disk_bytes
    1000000000
    """
    cap = parse_size(budget, argument="budget")
    if cap <= 0:
        raise LabError.bad("budget", budget, "use a memory size above 0, e.g. '300MB'", verb="is not a budget")
    space = parse_size(disk, argument="disk") if disk is not None else 0
    attached = advisor.attached_machine()
    if attached.gpus and _cuda():
        have = attached.gpus[0].usable_bytes
        if cap > have:
            raise LabError.bad("budget", budget, f"GPU 0 holds {format_bytes(have, 'GB')}: use at most that",
                               verb="is more than GPU 0 has")
        from .estimates import GpuModel

        gpu = GpuModel(f"GPU 0 capped at {format_bytes(cap, 'MB', 0)}", format_bytes(cap, "MB", 0), cap // 2**20, cap,
                       "budget_machine: GPU 0 with its memory capped")
        ram = attached.cpu_ram_bytes if cpu_ram is None else parse_size(cpu_ram, argument="cpu_ram")
        return advisor.Machine((gpu,), min(ram, attached.cpu_ram_bytes), space)
    have = attached.cpu_ram_bytes
    if have and cap > have:
        raise LabError.bad("budget", budget, f"this machine has {format_bytes(have, 'GB')} of RAM available: "
                           "use at most that", verb="is more than the RAM available")
    return advisor.Machine((), cap, space)


def top_option(model: Any, machine: advisor.Machine, seq_len: int = 64) -> advisor.Option:
    """The advisor's first option for ``model`` on ``machine`` at ``seq_len`` tokens; one sentence
    naming the least memory an option needs when none fits."""
    if not isinstance(machine, advisor.Machine):
        raise LabError.bad("machine", machine, "pass an advisor.Machine, e.g. budget_machine('300MB')",
                           verb="is not a Machine")
    options = advisor.fit(model, machine, seq_len=seq_len)
    if options and options[0].fits:
        return options[0]
    where = 0 if machine.gpus else "cpu"
    single = [o for o in options if set(o.bytes_per_device) <= {where}]
    need = min(single or options, key=lambda o: o.bytes_per_device.get(where, 0))
    have = machine.capacity(where)
    raise LabError(f"budget {format_bytes(have, 'MB', 1)} fits no option for {shown(str(model))} at {seq_len:,} "
                   f"tokens; the smallest, {need.label}, needs {format_bytes(need.bytes_per_device.get(where, 0), 'MB', 1)}")


def forcing_budgets(model: Any, seq_len: int = 64) -> dict[str, advisor.Machine]:
    """Memory budgets of the attached machine that make the advisor's top option differ, by name:
    "bf16" (room for bf16 weights), "int8" and "nf4" (too little for the format before it, no disk),
    "spill" (too little for bf16, with a disk here or CPU RAM beside a GPU: part of the weights
    offloaded). Each is read off the advisor's own plans; a name whose top option is not of that kind
    on this model (say nf4-double, or nothing between two formats) is left out.
    """
    seq_len = whole_number(seq_len, "seq_len")
    roomy = advisor.attached_machine()
    on_gpu = bool(roomy.gpus) and _cuda()
    where = 0 if on_gpu else "cpu"
    plans = advisor.fit(model, advisor.Machine(roomy.gpus[:1], roomy.cpu_ram_bytes, 0) if on_gpu
                        else advisor.Machine((), 2**50, 0), seq_len=seq_len)
    need = {o.quantization: o.bytes_per_device[where] for o in plans
            if o.cache == "dynamic" and set(o.bytes_per_device) == {where}}
    if not {None, "int8", "nf4"} <= set(need):
        raise LabError(f"model {shown(str(model))} has no plan in bf16, int8 and nf4 on one device here: "
                       "forcing budgets are for models that generate text")
    smallest_4bit = max(need["nf4"], need.get("nf4-double", 0))
    # On a GPU every plan holds one CUDA context as well: the spill budget keeps it and 3/5 of the rest
    context = RUNTIME_OVERHEAD.bytes if on_gpu else 0
    wanted = {
        "bf16": (math.ceil(need[None] * 1.25), None, None),
        "int8": ((need["int8"] + need[None]) // 2, None, "int8"),
        "nf4": ((smallest_4bit + need["int8"]) // 2, None, "nf4"),
        "spill": (context + (need[None] - context) * 3 // 5, 4 * need[None], None),
    }
    out = {}
    for name, (budget, disk, quant) in wanted.items():
        try:
            # on a GPU the quantized budgets have no RAM beside them: a lossless spill to CPU would rank first
            m = (budget_machine(budget, cpu_ram=None if name == "spill" else 0) if on_gpu
                 else budget_machine(budget, disk))
            best = top_option(model, m, seq_len)
        except LabError:
            continue
        spilled = len(best.bytes_per_device) > 1
        if best.quantization == quant and spilled == (name == "spill"):
            out[name] = m
    return out


# --- the keywords, from the option's fields ------------------------------------------------------

def _check_option(option: Any) -> advisor.Option:
    if not isinstance(option, advisor.Option):
        raise LabError.bad("option", option, "pass an element of advisor.fit(model, machine)", verb="is not an Option")
    if option.kind != "transformers":
        raise LabError(f"option {option.label!r} runs a diffusers model; run() runs text models (transformers options)")
    if option.placement == "tensor_parallel":
        raise LabError(f"option {option.label!r} needs one process per GPU (torchrun); run() runs options on one "
                       "machine process: pick one whose placement is 'cpu', 'gpu' or 'device_map'")
    gpus = [d for d in option.bytes_per_device if isinstance(d, int)]
    if gpus and gpus != [0]:
        raise LabError(f"option {option.label!r} uses GPUs {gpus}; run() runs options on GPU 0 (with CPU RAM and "
                       "disk beside it)")
    if option.cache not in RUNNABLE_CACHES:
        raise LabError(f"option {option.label!r} has cache {option.cache!r}; run() runs text models that generate "
                       f"with one of: {', '.join(RUNNABLE_CACHES)}")
    return option


def _plan_parts(option: advisor.Option, what: str) -> dict:
    out: dict = {}
    for p in option.parts:
        if p.what == what:
            out[p.device] = out.get(p.device, 0) + p.bytes
    return out


def _max_memory(option: advisor.Option) -> dict | None:
    """The ``max_memory`` of a device_map option: each device's capacity less what the plan keeps there
    beside the weights (the KV cache and activations on the compute device, the CUDA context), as
    the advisor budgets it; sizes in whole MiB as its code writes them."""
    if option.placement != "device_map":
        return None
    keep: dict = {}
    for p in option.parts:
        if p.what != "weights":
            keep[p.device] = keep.get(p.device, 0) + p.bytes
    out = {}
    for device, capacity in option.capacity.items():
        budget = capacity - (keep.get(device, 0) if device != "disk" else 0)
        out[device] = f"{max(budget, 0) // 2**20}MiB"
    return out


def _bnb_kwargs(quant: str, dtype: str) -> dict:
    if quant == "int8":
        return {"load_in_8bit": True}
    out = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    if quant == "nf4-double":
        out["bnb_4bit_use_double_quant"] = True
    out["bnb_4bit_compute_dtype"] = dtype
    return out


def _load_spec(option: advisor.Option) -> dict:
    """The ``from_pretrained`` keywords of an option as JSON (dtype and compute dtype by name)."""
    option = _check_option(option)
    if option.placement == "device_map":
        device_map: Any = "auto"
    else:
        device_map = 0 if option.placement == "gpu" else "cpu"
    spec: dict = {"dtype": option.dtype, "device_map": device_map}
    max_memory = _max_memory(option)
    if max_memory:
        spec["max_memory"] = max_memory
        if "disk" in max_memory:
            spec["offload_folder"] = True
    if option.quantization:
        spec["quantization_config"] = _bnb_kwargs(option.quantization, option.dtype)
    return spec


def _realise(spec: dict, offload_folder: str | os.PathLike | None) -> dict:
    import torch

    kwargs: dict = {"dtype": getattr(torch, spec["dtype"]), "device_map": spec["device_map"]}
    if "max_memory" in spec:
        # from_pretrained rewrites the dict it gets ("200MiB" becomes bytes): a fresh one per call
        kwargs["max_memory"] = {(int(k) if str(k).isdigit() else k): v for k, v in spec["max_memory"].items()}
    if spec.get("offload_folder"):
        from .loading import offload_dir

        kwargs["offload_folder"] = str(offload_folder or offload_dir("offload-fit-run"))
    if "quantization_config" in spec:
        from transformers import BitsAndBytesConfig

        bnb = dict(spec["quantization_config"])
        if "bnb_4bit_compute_dtype" in bnb:
            bnb["bnb_4bit_compute_dtype"] = getattr(torch, bnb["bnb_4bit_compute_dtype"])
        kwargs["quantization_config"] = BitsAndBytesConfig(**bnb)
    return kwargs


def load_kwargs(option: advisor.Option, offload_folder: str | os.PathLike | None = None) -> dict:
    """The ``from_pretrained`` keywords the option's code shows, built from its fields: ``dtype``,
    ``device_map`` ("cpu", 0 or "auto"), ``max_memory`` and ``offload_folder`` for a device_map split
    (the folder: ``offload_folder``, else one in the lab's cache, where the code says "offload"),
    ``quantization_config`` (a ``BitsAndBytesConfig``).

    >>> from bigsmall_lab.advisor import fit, machine
    >>> option = fit("bigsmall-tiny", machine(None, cpu_ram="12MB"), seq_len=64)[0]
    >>> kw = load_kwargs(option)
    >>> kw["device_map"], kw["quantization_config"].load_in_8bit
    ('cpu', True)
    """
    return _realise(_load_spec(option), offload_folder)


def generate_kwargs(option: advisor.Option) -> dict:
    """The ``generate`` keywords of the option's KV cache ({} for the dynamic cache, the default)."""
    option = _check_option(option)
    if option.cache == "dynamic":
        return {}
    from .kvcache import CacheSettings

    return CacheSettings.parse(option.cache).generate_kwargs()


# --- running it ----------------------------------------------------------------------------------

def _plan_shape(option: advisor.Option) -> tuple[int, int]:
    """(seq_len, batch_size) the option was planned for, read off its activations part."""
    for p in option.parts:
        found = _ACTIVATIONS.search(p.source) if p.what == "activations" else None
        if found:
            return int(found.group(1)), int(found.group(2))
    raise LabError(f"option {option.label!r} has no activations part to read its context length from; pass "
                   "seq_len= the length it was planned with")


def _planned(option: advisor.Option, device: str) -> int:
    where = "cpu" if device == "cpu" else 0
    return sum(p.bytes for p in option.parts if p.device == where and p.what != "CUDA context")


def _check_model(option: advisor.Option, model: Any) -> Path:
    """The local folder of ``model``, refused in one sentence when it is not the model the option was
    planned for (its weights would hold other bytes than the plan's)."""
    from .estimates import module_bytes, resolve
    from .zoo import model_path

    if model is None:
        raise LabError.bad("model", model, "use a lab model name, a preset or a checkpoint folder",
                           verb="is not a model")
    path = model_path(model)
    spec = resolve(model if isinstance(model, str) and not Path(model).exists() else str(path))
    held = sum(_plan_parts(option, "weights").values())
    expected = module_bytes(spec, option.dtype, option.quantization)[""]
    if held != expected:
        raise LabError(f"model {shown(str(model))} is not the model option {option.label!r} was planned for "
                       f"({option.model}): its weights take {expected:,} bytes, the plan's {held:,}; use "
                       f"advisor.fit({str(model)!r}, ...) for its options")
    return path


def _eval_ids(model: Any, path: Path, n: int):
    """Token ids the quality figures and the prompt use: the lab's stored evaluation text where the
    model has them (bigsmall-small shares bigsmall-tiny's tokenizer), else the text tokenized here."""
    from . import quality

    key = str(model).strip().lower()
    key = "bigsmall-tiny" if key == "bigsmall-small" else key
    if key in quality.HELDOUT_MODELS:
        return quality.heldout_ids(key, n)
    if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        ids = tokenizer(quality.heldout_text(), return_tensors="pt").input_ids[:, :n]
        if ids.shape[1] == n:
            return ids
    raise LabError(f"model {shown(str(model))} has no tokenizer or stored evaluation text; use a lab model or a "
                   "checkpoint folder with its tokenizer")


def _job(option: advisor.Option, model: Any, seq_len: int | None, max_new_tokens: Any, reference: Any,
         offload_folder: Any) -> dict:
    """Check one run's arguments (one sentence for a bad one) and describe it as JSON for the worker."""
    option = _check_option(option)
    if not option.fits:
        short = ", ".join(f"{d}: {format_bytes(n, 'MB', 1)}" for d, n in option.short_by.items())
        raise LabError(f"option {option.label!r} does not fit its machine (short by {short}); run one whose fits is "
                       "True, e.g. top_option(model, budget_machine(...))")
    planned_len, batch_size = _plan_shape(option)
    if seq_len is None:
        seq_len = planned_len
    seq_len = whole_number(seq_len, "seq_len", minimum=2)
    if seq_len != planned_len:
        raise LabError(f"seq_len {seq_len} differs from the {planned_len:,} tokens option {option.label!r} was planned "
                       f"for; plan it with advisor.fit(..., seq_len={seq_len}) or leave seq_len out")
    if batch_size != 1:
        raise LabError(f"option {option.label!r} was planned for batch_size {batch_size}; run() measures batch size 1")
    max_new_tokens = whole_number(max_new_tokens, "max_new_tokens")
    if max_new_tokens >= seq_len:
        raise LabError(f"max_new_tokens {max_new_tokens} leaves no prompt in {seq_len} tokens; use fewer than {seq_len}")
    if not isinstance(reference, bool):
        raise LabError.bad("reference", reference, "use True (compare with the unquantized model) or False")
    on_gpu = any(isinstance(d, int) for d in option.bytes_per_device)
    if on_gpu and not _cuda():
        raise LabError(f"option {option.label!r} runs on GPU 0 and no CUDA GPU is attached; plan with "
                       "budget_machine(...) for this machine")
    if option.cache == "offloaded" and not on_gpu:
        raise LabError(f"option {option.label!r} offloads its KV cache with CUDA streams: it needs a CUDA GPU")
    path = _check_model(option, model)
    ids = _eval_ids(model, path, max(seq_len, EVAL_TOKENS))
    return {"path": str(path), "load": _load_spec(option), "generate": generate_kwargs(option),
            "offload_folder": str(offload_folder) if offload_folder is not None else None,
            "prompt": ids[0, :seq_len - max_new_tokens].tolist(), "max_new_tokens": max_new_tokens,
            "eval_ids": ids[0, :EVAL_TOKENS].tolist() if reference else None,
            "device": "cuda:0" if on_gpu else "cpu"}


def _fit_run(option: advisor.Option, job: dict, result: dict) -> FitRun:
    device = job["device"]
    planned = _planned(option, device)
    held = sum(v for d, v in _plan_parts(option, "weights").items() if d in ("cpu", 0))
    notes = [f"loading peaked at {result['load_peak'] / MiB:,.1f} MiB above the baseline, "
             f"{result['load_file'] / MiB:,.1f} MiB of it the checkpoint's file pages (released before generating)",
             f"the first pass (one token) peaked at {result['first_peak'] / MiB:,.1f} MiB above the baseline",
             f"weights held after loading: {result['weights'] / MiB:,.1f} MiB on {device} (planned: {held / MiB:,.1f} MiB)"]
    if option.placement == "device_map" and option.device_map:
        same = result["device_map"] == {k: str(v) for k, v in option.device_map.items()}
        notes.append("from_pretrained placed every module where the plan said" if same else
                     f"from_pretrained placed modules elsewhere than planned: {result['device_map']}")
    notes += list(option.notes)
    ratio = round(result["peak"] / planned, 4) if planned else math.inf
    return FitRun(option.label, device, planned, result["peak"], ratio, result.get("kl"), result.get("top1"),
                  round(result["seconds"], 3), result["tokens"], option.code, tuple(notes))


def run(option: advisor.Option, model: Any, *, seq_len: int | None = None, max_new_tokens: int = 4,
        reference: bool = True, offload_folder: str | os.PathLike | None = None) -> FitRun:
    """Run ``option`` (an element of ``advisor.fit(model, ...)``) for real on the attached hardware and
    measure its peak memory next to the plan.

    A prompt of ``seq_len - max_new_tokens`` tokens of the lab's evaluation text, then ``generate``
    with the option's cache for ``max_new_tokens`` greedy tokens, so the KV cache reaches the
    ``seq_len`` the option was planned for (default: that length, read off the plan). The run happens
    in a fresh Python process (see the module's docstring for how the peak is measured); with
    ``reference`` the option's model is then scored against the same checkpoint unquantized, in RAM,
    on :data:`EVAL_TOKENS` tokens of the lab's evaluation text (``kl``, ``top1``).
    """
    return run_all([option], model, seq_len=seq_len, max_new_tokens=max_new_tokens, reference=reference,
                   offload_folder=offload_folder)[0]


def run_all(options, model: Any, *, seq_len: int | None = None, max_new_tokens: int = 4, reference: bool = True,
            offload_folder: str | os.PathLike | None = None) -> list[FitRun]:
    """:func:`run` for several options of one model, one after the other in one fresh process (each with
    its own baseline; Python starts once)."""
    if isinstance(options, advisor.Option) or not isinstance(options, (list, tuple)) or not options:
        raise LabError.bad("options", options, "pass a non-empty list of advisor Options (run() takes one)",
                           verb="is not a list of options")
    jobs = [_job(o, model, seq_len, max_new_tokens, reference, offload_folder) for o in options]
    results = _spawn(jobs)
    return [_fit_run(o, job, r) for o, job, r in zip(options, jobs, results)]


def _spawn(jobs: list[dict]) -> list[dict]:
    """Run ``jobs`` in a fresh Python process, with one progress line while it works (tens of seconds)."""
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    what = jobs[0]["path"]
    limit_s = _WORKER_TIMEOUT_S * len(jobs)
    with Progress(f"running {Path(what).name} in a fresh process", total=len(jobs), unit="option") as bar:
        proc = subprocess.Popen([sys.executable, "-m", "bigsmall_lab.fit_run"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        payload: str | None = json.dumps(jobs)
        while True:
            try:  # communicate() may be retried after a timeout without losing output
                stdout, stderr = proc.communicate(payload, timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                payload = None
                if bar.elapsed_s > limit_s:
                    proc.kill()
                    proc.communicate()
                    raise LabError(f"the run of {what} took over {limit_s} s and was stopped") from None
                bar.note("loading, measuring the peak, generating, scoring")
        bar.advance(len(jobs))
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith("[")]
    if done.returncode != 0 or not lines:
        tail = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()][-1:] or ["no output"]
        raise LabError(f"the run of {what} failed in its process (exit {done.returncode}): {tail[0]}")
    return json.loads(lines[-1])


# --- the worker (python -m bigsmall_lab.fit_run, a JSON list of jobs on stdin) ---------------------

def _release_file_pages(folder: str) -> int:
    """Release this process's resident pages of the files under ``folder``; returns the bytes of the
    mappings released. A mapping with no page written (``Private_Dirty`` 0 in ``/proc/self/smaps``) is
    dropped from the process with ``madvise(MADV_DONTNEED)``: its pages are the file's, a later read
    faults them back in from the page cache, nothing is lost. One with written pages gets
    ``MADV_PAGEOUT`` instead, which never discards data (it skips pages another process maps too).
    Linux only; elsewhere 0."""
    import ctypes

    try:
        smaps = Path("/proc/self/smaps").read_text().splitlines()
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return 0
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madv_dontneed, madv_pageout = 4, 21
    prefix = str(Path(folder).resolve()) + os.sep
    mappings, current = [], None
    for line in smaps:
        fields = line.split(maxsplit=5)
        if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            current = None
            if len(fields) == 6 and fields[5].startswith(prefix):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                current = {"start": start, "end": end, "dirty": 0}
                mappings.append(current)
        elif current is not None and fields and fields[0] == "Private_Dirty:":
            current["dirty"] = int(fields[1])
    released = 0
    for m in mappings:
        advice = madv_dontneed if m["dirty"] == 0 else madv_pageout
        if libc.madvise(m["start"], m["end"] - m["start"], advice) == 0:
            released += m["end"] - m["start"]
    return released


def _warm_spec(spec: dict) -> dict:
    """The same keywords for the embedded 13 MB model (a device_map split with 8 MiB on the compute
    device): it warms what a first call allocates once per process (lazy imports, kernels, thread pools)."""
    out = dict(spec)
    if "max_memory" in spec:
        out["max_memory"] = {k: (v if k == "disk" else "8MiB") for k, v in spec["max_memory"].items()}
    return out


def _worker(jobs: list[dict]) -> list[dict]:
    import gc
    import logging

    import torch
    from transformers import AutoModelForCausalLM

    from ._compat import quiet_libraries
    from .loading import offload_dir, placed_bytes
    from .measure import _high_water, _read_status, _reset_high_water, quant_state_tensors, trim_heap, unique_bytes
    from .zoo import TINY_DIR

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # int8's "inputs will be cast" on every call
    results = []
    for job in jobs:
        device = job["device"]
        cuda = device.startswith("cuda")
        index = 0 if cuda else None
        path = job["path"]
        prompt = torch.tensor([job["prompt"]], dtype=torch.long)

        def now() -> int:
            return torch.cuda.memory_allocated(0) if cuda else _read_status()["VmRSS"]

        def settle() -> None:
            gc.collect()
            trim_heap()
            if cuda:
                torch.cuda.synchronize(0)
                torch.cuda.empty_cache()

        def load(folder, spec, offload):
            with quiet_libraries(progress_bars=False):
                return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, **_realise(spec, offload))

        def generate(model, ids, n):
            with torch.no_grad(), quiet_libraries(progress_bars=False):
                # the job's device, not model.device: a model whose modules all wait on disk is on "meta"
                return model.generate(ids.to(device), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                      **job["generate"])

        # 1. Warm the process up on the embedded model with the same keywords.
        warm = load(str(TINY_DIR), _warm_spec(job["load"]), offload_dir("offload-fit-run-warm-up"))
        generate(warm, prompt[:, :4] % warm.config.vocab_size, 2)
        del warm
        settle()
        # 2. Load, release the checkpoint's file pages loading read, make a first pass over the same prompt
        #    (one-time work: bitsandbytes repacks 4-bit weights for an AVX512-BF16 CPU, oneDNN builds and
        #    caches its kernels for each new shape), settle.
        base = now()
        _reset_high_water(index)
        t0 = time.perf_counter()
        model = load(path, job["load"], job["offload_folder"])
        load_s = time.perf_counter() - t0
        load_peak = _high_water(index) - base
        settle()
        file_before = _read_status()["RssFile"]
        _release_file_pages(path)
        load_file = max(file_before - _read_status()["RssFile"], 0)
        weights = sum(n for d, n in placed_bytes(model).items() if str(d) in ("cpu", "0", "cuda:0")) \
            + unique_bytes(quant_state_tensors(model))  # int8 row scales, 4-bit absmax: not parameters
        hf_map = getattr(model, "hf_device_map", None)
        _reset_high_water(index)
        generate(model, prompt, 1)  # the same shapes as the measured run: kernels cache per shape
        first_peak = _high_water(index) - base
        settle()
        # 3. The measured generate.
        _reset_high_water(index)
        t1 = time.perf_counter()
        out = generate(model, prompt, job["max_new_tokens"])
        if cuda:
            torch.cuda.synchronize(0)
        seconds = time.perf_counter() - t1
        peak = max(_high_water(index), now()) - base
        result = {"peak": int(peak), "load_peak": int(max(load_peak, 0)), "load_file": int(load_file),
                  "first_peak": int(max(first_peak, 0)), "load_seconds": load_s, "seconds": seconds,
                  "tokens": int(out.shape[1] - prompt.shape[1]), "weights": int(weights),
                  "device_map": {k: str(v) for k, v in hf_map.items()} if hf_map else None}
        # 4. Quality against the same checkpoint, unquantized and in RAM (after the measurement).
        if job["eval_ids"]:
            from .quality import compare

            ids = torch.tensor([job["eval_ids"]], dtype=torch.long)
            with quiet_libraries(progress_bars=False):
                ref = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, device_map=device,
                                                           dtype=getattr(torch, job["load"]["dtype"]))
            a = compare(ref, model, ids)
            result["kl"], result["top1"] = a.kl_nats, a.top1_agreement
            del ref
        del model, out
        settle()
        results.append(result)
    return results


if __name__ == "__main__":
    print(json.dumps(_worker(json.loads(sys.stdin.read()))), flush=True)
