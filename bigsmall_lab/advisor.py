"""Fit a model on a machine: every way the lab's techniques can run it, with memory, cost and code.

"I have these GPUs; how do I run that model at this context, and what will it cost me?" :func:`fit`
answers with a ranked list of :class:`Option`\\ s. Each one combines the lab's planners and adds
nothing of its own to the maths:

==========================  =========================================================================
what an option chooses      whose numbers
==========================  =========================================================================
weights: bf16 or            ``estimates.weights_bytes`` / ``estimates.module_bytes`` (bitsandbytes'
int8, nf4, nf4-double       scales and code books counted)
KV cache: dynamic,          ``kv_plan.expected_cache_bytes`` (the quantized window at its fullest),
quanto int4 / int2,         ``kv_plan.plan_cache_offload`` (two layers on the GPU, the rest in CPU RAM)
offloaded
where the weights go        ``placement.plan(spec, "auto", max_memory)`` (from_pretrained's own
(GPUs, CPU RAM, disk)       device_map), or ``tp_plan.plan(...).rank_bytes`` for tensor parallelism;
                            bitsandbytes beside a CPU / disk spill: quantized on the GPUs, 16-bit off
                            them (``llm_int8_enable_fp32_cpu_offload``); TP never spills (transformers
                            refuses a device_map with it)
diffusers pipelines         ``offload_plan.plan_offload`` / ``pinned_memory_plan`` (model offload, group
                            offloading, sequential offload) on FLUX.1-dev's real configs
every GPU used              one CUDA context (``estimates.RUNTIME_OVERHEAD``) per GPU a process uses;
                            ``estimates.activation_bytes`` (a FLUX transformer's:
                            :func:`diffusion_activation_bytes`) once, on the first GPU that runs layers
                            (with tensor parallelism once per rank's process: an upper bound)
the machine                 named GPUs bring their host's RAM (:data:`HOST_RAM`: a free Colab T4's,
                            labelled assumptions for the others) unless ``cpu_ram=`` says otherwise
==========================  =========================================================================

Every byte of an option is a :class:`Part` (device, what, bytes, the planner call that gave it), so
``bytes_per_device`` is their sum and a test recomputes each part from the planners. What it costs:
``quality`` (KL and top-1 agreement measured by the lab, each naming its model and file) and
``speed`` (a time ratio measured by the lab or published, with its source), both read from
``bigsmall_lab/data/advisor_measurements.json`` (written by ``tools/advisor_tables.py`` from the
benchmarks and the lessons' stored outputs; no figure is typed in here). ``code`` is the Python that
runs it. Ranked: options that fit first, then least quality lost, then fastest.

Llama 3.1 8B on a free Colab T4 at 8,192 tokens: bf16 weights alone (16.06 GB) exceed the card's
15.83 GB. With Colab's 12.7 GB of RAM, the option that loses no quality spills 4.1 GB of layers to the
CPU (and pays for it in time); the first that stays on the GPU quantizes:

>>> options = fit("llama-3.1-8b", "T4", seq_len=8192)
>>> options[0].label, next(o.label for o in options if o.fits and o.placement == "gpu")
('bf16 weights, dynamic cache, GPU 0 + 4.1 GB on CPU', 'int8 weights, dynamic cache, GPU 0')
>>> fit("llama-3.1-8b", machine("T4", cpu_ram=0), seq_len=8192)[0].label
'int8 weights, dynamic cache, GPU 0'

A preset plans from its facts (``resolve(name).facts``, :mod:`bigsmall_lab.zoo._facts`): the module bytes, module
trees, tensor-parallel ranks and offload plans those planners computed on its meta model, shipped with the lab;
the placement then runs ``placement_rule.plan`` (transformers' rule in plain Python) on the stored tree. So
:func:`fit` on a preset builds no model and imports no torch; tests/test_facts.py checks every option equals the one
planned from meta models.

Where it lives: its maths is all planners' (``kv_plan``, ``offload_plan``, ``placement``, ``tp_plan``,
``estimates``); it stays with the runners in the package's layer table because of :func:`attached_machine`,
the one function here that asks the hardware (``hardware.describe()``, the default machine), so that
:func:`fit` given a machine stays pure and touches no device, file or process.

Over 600 lines (about 1,100), knowingly, for now: it is the composition of every planner, and its parts read
in the order :func:`fit` runs them (the machine, the costs, the code an option carries, the transformers
options, the diffusers options, the ranking, the changes). The next split is already clear: the machine
(:class:`Machine`, :data:`HOST_RAM`, :func:`machine`, about 180 lines) and the code writers (``_*_code``, about
170 lines) into modules of their own, and :func:`diffusion_activation_bytes` beside ``estimates.activation_bytes``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from ._errors import LabError, closest, whole_number
from ._units import GB, format_bytes, parse_size
from .estimates import GPUS, RUNTIME_OVERHEAD, GpuModel, activation_bytes, longest_context, module_bytes, resolve
from .zoo._configs import PRESETS, ModelSpec

__all__ = ["HOST_RAM", "Change", "Cost", "HostRam", "Machine", "Option", "Part", "Speed", "attached_machine", "changes",
           "diffusion_activation_bytes", "fit", "host_ram", "machine", "measurements", "smallest_change"]

_DATA = Path(__file__).parent / "data" / "advisor_measurements.json"
DTYPES = ("bfloat16", "float16")  # 16-bit formats the weights load in (float32 doubles memory for nothing here)
WEIGHTS = (None, "int8", "nf4", "nf4-double")  # bitsandbytes formats offered (fp4: nf4's size, worse quality)
CACHES = ("dynamic", "quanto-int4", "quanto-int2", "offloaded")
# Caches not planned with a device_map split: the offloaded cache keeps its GPU layers beside one
# device's weights; quanto int2 (KL 1.85 on SmolLM2) is never the one to pick when int4 fits, and each
# device_map plan costs a placement call (0.1-0.3 s for 405B): fit() stays under 3 s.
_NOT_SPLIT = ("offloaded", "quanto-int2")
MAX_GPUS = 8  # GPUs one machine holds: "more GPUs" is looked for up to here
CONTEXT_STEP = 512  # "a shorter context" is the longest that fits to this many tokens (a fit() call per halving)
Device = int | str  # a GPU index, "cpu" or "disk"


# --- the machine ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Machine:
    """GPUs (entries of ``estimates.GPUS``, or a size given as "24GB"), CPU RAM and disk, in bytes.

    ``cpu_ram_bytes`` / ``disk_bytes`` 0: none, so no option spills weights there. ``ram_source``:
    where the RAM figure comes from (a :data:`HOST_RAM` default names its source; "" when given).
    """

    gpus: tuple[GpuModel, ...]
    cpu_ram_bytes: int = 0
    disk_bytes: int = 0
    ram_source: str = ""

    @property
    def label(self) -> str:
        if not self.gpus:
            text = "CPU only"
        else:
            names = [g.name for g in self.gpus]
            text = f"{len(names)} x {names[0]}" if len(set(names)) == 1 and len(names) > 1 else " + ".join(names)
        def size(n: int) -> str:  # whole GB, or MB below 1 GB (a budget of 200 MB is not "0 GB")
            return format_bytes(n, "GB", 0) if n >= GB else format_bytes(n, "MB", 0)

        extra = [f"{size(self.cpu_ram_bytes)} RAM" if self.cpu_ram_bytes else "",
                 f"{size(self.disk_bytes)} disk" if self.disk_bytes else ""]
        return ", ".join([text, *[e for e in extra if e]])

    def capacity(self, device: Device) -> int:
        """What ``device`` can hold: a GPU's ``usable_bytes`` (torch's total), the RAM or the disk."""
        if device == "cpu":
            return self.cpu_ram_bytes
        if device == "disk":
            return self.disk_bytes
        return self.gpus[device].usable_bytes


@dataclass(frozen=True)
class HostRam:
    """The CPU RAM a machine with one such GPU has when nobody says: ``cpu_ram_bytes`` per GPU and where the
    figure comes from. ``assumed``: True where it is a typical machine's, not a measurement of one."""

    cpu_ram_bytes: int
    source: str
    assumed: bool = True


# Host RAM that goes with each GPU of :data:`~bigsmall_lab.estimates.GPUS` when ``machine(gpu)`` is not given
# ``cpu_ram=``: per GPU, so "2xL4" has twice an L4's. Each figure is read as 10**9 bytes per GB (the smaller
# reading of the "GB" these pages print). Only the T4 figure is what a real runtime reports; the others are
# the smallest Google Cloud machine type that carries the card (a rented card's host varies: pass cpu_ram=).
# No disk default: Colab's and the clouds' disks vary with the runtime and what is attached (pass disk=).
HOST_RAM: dict[str, HostRam] = {
    "T4": HostRam(12_700_000_000, "a free Colab T4 runtime: Colab's resources panel reports 12.7 GB of system RAM "
                  "(linux-blog.anracom.com, 'Google Colab, RAM, VRAM and GPU usage limits', 2023-05-04; about 1 GB "
                  "of it is taken by the VM itself)", assumed=False),
    "L4": HostRam(16 * GB, "assumed: Google Cloud g2-standard-4, the smallest machine type with one L4 (16 GB)"),
    "RTX 4090": HostRam(64 * GB, "assumed: a desktop with 64 GB of RAM (an RTX 4090 is a consumer card; no "
                        "standard host)"),
    "A100 40GB": HostRam(85 * GB, "assumed: Google Cloud a2-highgpu-1g, one A100 40GB and 85 GB"),
    "A100 80GB": HostRam(170 * GB, "assumed: Google Cloud a2-ultragpu-1g, one A100 80GB and 170 GB"),
    "H100": HostRam(234 * GB, "assumed: Google Cloud a3-highgpu-8g's 1,872 GB for 8 H100s, per GPU"),
    "H200": HostRam(369 * GB, "assumed: Google Cloud a3-ultragpu-8g's 2,952 GB for 8 H200s, per GPU"),
}


def host_ram(gpus: tuple[GpuModel, ...]) -> tuple[int, str]:
    """(bytes, source) of the CPU RAM :data:`HOST_RAM` gives ``gpus``: the sum over the GPUs when each is a
    named card, else (0, "") (a GPU given as a size has no usual host).

    >>> host_ram(machine("2xL4").gpus)[0] == 2 * HOST_RAM["L4"].cpu_ram_bytes
    True
    """
    rows = [HOST_RAM.get(g.name) if GPUS.get(g.name) is g else None for g in gpus]
    if not gpus or any(r is None for r in rows):
        return 0, ""
    names = list(dict.fromkeys(g.name for g in gpus))
    count = "" if len(gpus) == 1 else f"{len(gpus)} x " if len(names) == 1 else "per GPU: "
    return sum(r.cpu_ram_bytes for r in rows), f"{count}{'; '.join(HOST_RAM[n].source for n in names)}"


_COUNT = re.compile(r"^\s*(\d+)\s*[xX×*]\s*(.+?)\s*$")


def _gpu_model(text: str) -> GpuModel:
    """A GPU of :data:`GPUS` by name (any case, spaces optional), or a custom size such as "24GB"."""
    key = re.sub(r"[\s_-]", "", text).lower()
    for name, gpu in GPUS.items():
        if re.sub(r"[\s_-]", "", name).lower() == key:
            return gpu
    try:
        size = parse_size(text.strip(), argument="gpu")
    except LabError:
        size = 0
    if size > 0 and not text.strip().isdigit():
        return GpuModel(text.strip().replace(" ", ""), text.strip(), size // 2**20, size,
                        "a memory size given by the caller (counted as the memory torch sees)")
    raise LabError.bad("gpu", text, f"use a GPU name ({', '.join(GPUS)}), a count and a name like '2xL4', or a "
                       "memory size like '24GB'", verb="is not a GPU" + _gpu_hint(text))


def _gpu_hint(text: str) -> str:
    """' (did you mean 'T4'?)' for a near miss; GPU names are short, so a looser cutoff than ``closest``'s."""
    import difflib

    names = {name.lower().replace(" ", ""): name for name in GPUS}
    near = difflib.get_close_matches(text.strip().lower().replace(" ", ""), list(names), n=2, cutoff=0.5)
    return " (did you mean " + " or ".join(repr(names[n]) for n in near) + "?)" if near else ""


def machine(gpu: str | Machine | None = None, cpu_ram: str | int | None = None, disk: str | int | None = None) -> Machine:
    """A :class:`Machine` from text: "T4", "2xL4", "8xH100", "A100 80GB", "24GB" (a GPU of that size),
    several joined by "+" ("H100+2xL4"), or None / "cpu" for no GPU; ``cpu_ram`` and ``disk`` are sizes.

    Named GPUs bring their host's RAM (:data:`HOST_RAM`: a free Colab T4's 12.7 GB, a labelled assumption
    for the others) unless ``cpu_ram`` is given (``cpu_ram=0``: none); a given size wins. No disk unless
    ``disk`` is given. A :class:`Machine` passed in keeps its own RAM and disk.

    >>> m = machine("2xL4", cpu_ram="64GB")
    >>> m.label, [g.usable_bytes for g in m.gpus] == [GPUS["L4"].usable_bytes] * 2
    ('2 x L4, 64 GB RAM', True)
    >>> machine("T4").label, machine("T4", cpu_ram=0).label
    ('T4, 13 GB RAM', 'T4')
    """
    if isinstance(gpu, Machine):
        base = gpu
        gpus = base.gpus
    elif gpu is None or (isinstance(gpu, str) and gpu.strip().lower() in ("", "cpu", "none")):
        base, gpus = None, ()
    elif isinstance(gpu, str):
        base, found = None, []
        for piece in gpu.split("+"):
            match = _COUNT.match(piece)
            count, name = (int(match.group(1)), match.group(2)) if match else (1, piece)
            if not 1 <= count <= 64:
                raise LabError.bad("gpu", gpu, "use 1 to 64 GPUs of a kind, e.g. '2xL4'", verb="has a GPU count out of range")
            found += [_gpu_model(name)] * count
        gpus = tuple(found)
    else:
        raise LabError.bad("machine", gpu, f"use a GPU name ({', '.join(GPUS)}), '2xL4', a size like '24GB', a "
                           "Machine, or None for the attached machine", verb="is not a machine")
    if cpu_ram is not None:
        ram, source = parse_size(cpu_ram, argument="cpu_ram"), ""
    elif base is not None:
        ram, source = base.cpu_ram_bytes, base.ram_source
    else:
        ram, source = host_ram(gpus)
    space = parse_size(disk, argument="disk") if disk is not None else (base.disk_bytes if base else 0)
    return Machine(gpus, ram, space, source)


def attached_machine() -> Machine:
    """The machine this runs on: its GPUs, its RAM available now, no disk budget. The one function of
    this module that reads the hardware (``hardware.describe()``); :func:`fit` given a machine stays pure.

    A GPU is the :data:`GPUS` entry whose name's first word is a word of the device's name (H100 in
    "NVIDIA H100 80GB HBM3") and whose nvidia-smi total matches NVML's within 1 %; any other GPU counts
    with NVML's total (a little above what torch sees), labelled as read here.
    """
    from .hardware import describe

    hw = describe()
    gpus = []
    for info in hw.gpus:
        words = set(re.split(r"[^a-z0-9]+", info.name.lower()))
        known = next((g for g in GPUS.values() if g.name.split()[0].lower() in words
                      and abs(g.smi_bytes - info.total_bytes) <= 0.01 * g.smi_bytes), None)
        gpus.append(known or GpuModel(info.name, f"{info.total_bytes / GB:.0f} GB", info.total_bytes // 2**20,
                                      info.total_bytes, f"read on this machine ({info.memory_source} total)"))
    return Machine(tuple(gpus), hw.ram_available_bytes, 0, "the RAM available now on this machine (psutil)")


# --- a diffusion transformer's activations ------------------------------------------------------

FLUX_TEXT_TOKENS = 512  # FluxPipeline pads every prompt to max_sequence_length, 512 by default (FLUX.1-dev's limit)
FLUX_MLP_RATIO = 4  # diffusers' FluxSingleTransformerBlock(mlp_ratio=4.0): not in the config


def _image_size(image_size: Any) -> tuple[int, int]:
    """(height, width) in pixels from 1024 or (768, 1360); multiples of 16 (FLUX's VAE shrinks 8x and its
    transformer packs 2 x 2 latent patches)."""
    pair = tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size, image_size)
    if len(pair) != 2:
        raise LabError.bad("image_size", image_size, "use pixels like 1024 or (height, width) like (768, 1360)",
                           verb="is not an image size")
    out = []
    for value in pair:
        n = whole_number(value, "image_size", 16)
        if n % 16:
            raise LabError.bad("image_size", image_size, "use multiples of 16 pixels, e.g. 1024 or (768, 1360)",
                               verb="does not fit FLUX's patches")
        out.append(n)
    return out[0], out[1]


def diffusion_activation_bytes(config: Any, image_size: int | tuple[int, int] = 1024,
                               text_tokens: int = FLUX_TEXT_TOKENS, batch_size: int = 1,
                               dtype: str = "bfloat16") -> int:
    """A FLUX-style transformer's transient memory in one denoising step (inference, no gradients), in ``dtype``.

    It sees ``tokens = (height / 16) x (width / 16) + text_tokens`` (image latents packed 2 x 2, and the
    T5 prompt padded to 512 tokens). Like ``estimates.activation_bytes`` it counts one block at a time:
    the single-stream block's peak holds the residual stream, its normed copy, the attention output, the
    MLP's activation (``mlp_ratio`` x hidden), their concatenation (1 + ``mlp_ratio``) and ``proj_out``'s
    result: ``(4 + 2 x mlp_ratio + 1) x hidden`` per token, 13 x 3,072 for FLUX.1-dev; plus the inputs
    (latents and T5 embeddings) and the rotary table (float32 cos and sin per token and head dim).
    SDPA does not hold the tokens x tokens scores. FLUX.1-dev is guidance-distilled: one pass per step,
    no classifier-free-guidance batch of 2. Not counted: the VAE decoding the image at the end (one
    component at a time: it runs after the transformer), float32 copies inside the norms and kernel
    workspaces.

    1024 x 1024 pixels: 4,096 image + 512 text tokens; the block 4,608 x 13 x 3,072 x 2 B = 368 MB:

    >>> round(diffusion_activation_bytes("flux.1-dev-transformer", 1024) / 1e6)
    377
    """
    spec = resolve(config)
    height, width = _image_size(image_size)
    text_tokens = whole_number(text_tokens, "text_tokens")
    batch_size = whole_number(batch_size, "batch_size")
    cfg = spec.config
    if spec.kind != "diffusers" or cfg.get("_class_name") != "FluxTransformer2DModel":
        raise LabError.bad("config", spec.name, "give a FluxTransformer2DModel config (the preset "
                           "'flux.1-dev-transformer'); other diffusion models' activations are not modelled",
                           verb="is not a FLUX transformer")
    from ._dtypes import bytes_per_element

    size = bytes_per_element(dtype)
    head_dim = cfg["attention_head_dim"]
    hidden = cfg["num_attention_heads"] * head_dim
    image_tokens = (height // 16) * (width // 16)
    tokens = image_tokens + text_tokens
    block = tokens * (4 + 2 * FLUX_MLP_RATIO + 1) * hidden * size
    inputs = (image_tokens * cfg["in_channels"] + text_tokens * cfg["joint_attention_dim"]) * size
    rotary = 2 * tokens * head_dim * 4  # float32 cos and sin
    return int(batch_size * (block + inputs) + rotary)


# --- what an option holds, costs and runs --------------------------------------------------------

@dataclass(frozen=True)
class Part:
    """Bytes one device holds for one reason, and the planner call they come from."""

    device: Device
    what: str  # "weights", "KV cache", "activations", "CUDA context"
    bytes: int
    source: str


@dataclass(frozen=True)
class CostPart:
    """One measured figure behind a cost: what it is for, the value, the model and where it was measured."""

    what: str
    value: float | None
    model: str
    measured: str
    top1: float | None = None


@dataclass(frozen=True)
class Cost:
    """Quality lost: the sum of the measured KL divergences (nats per token) of the option's parts.

    Each part was measured on its own (weights quantized, cache quantized), on a small model: the sum
    is an ordering, not a prediction for this model. ``top1``: the lowest measured top-1 agreement.
    """

    kl_nats: float
    top1: float | None
    parts: tuple[CostPart, ...] = ()


@dataclass(frozen=True)
class Speed:
    """Time per token against bf16 weights, a dynamic cache and every weight on one GPU: the product of
    the measured ratios of the option's parts. ``unmeasured``: parts no measurement covers (counted 1.0)."""

    time_ratio: float
    parts: tuple[CostPart, ...] = ()
    unmeasured: tuple[str, ...] = ()


@dataclass(frozen=True)
class Option:
    """One way to run the model on the machine: what it holds where, whether it fits, its costs and code.

    ``bytes_per_device``: GPUs by index, then "cpu" and "disk" (what a memory bar per device draws);
    ``capacity``: what each can hold; ``parts``: the pieces each total is the sum of.
    """

    label: str
    model: str
    kind: str  # "transformers" or "diffusers"
    dtype: str
    quantization: str | None
    cache: str | None  # None: the model keeps no KV cache (an encoder, a diffusers model)
    placement: str  # "gpu" (one GPU), "device_map" (several GPUs / spill), "tensor_parallel", "cpu", or a diffusers strategy
    n_gpus: int  # GPUs the option uses
    parts: tuple[Part, ...]
    capacity: dict[Device, int]
    quality: Cost
    speed: Speed
    code: str
    notes: tuple[str, ...] = ()
    device_map: dict[str, Device] | None = field(default=None, repr=False)

    @property
    def bytes_per_device(self) -> dict[Device, int]:
        out: dict[Device, int] = {}
        for p in self.parts:
            out[p.device] = out.get(p.device, 0) + p.bytes
        order = sorted(d for d in out if isinstance(d, int)) + [d for d in ("cpu", "disk") if d in out]
        return {d: out[d] for d in order}

    @property
    def fits(self) -> bool:
        """Every device within its capacity (a GPU: the memory torch sees, the context counted in the parts)."""
        return all(n <= self.capacity.get(d, 0) for d, n in self.bytes_per_device.items())

    @property
    def short_by(self) -> dict[Device, int]:
        """Bytes each over-full device lacks (empty when the option fits)."""
        return {d: n - self.capacity.get(d, 0) for d, n in self.bytes_per_device.items() if n > self.capacity.get(d, 0)}

    def as_dict(self) -> dict:
        """JSON-ready (the CLI's --json, a widget's data)."""
        return {"label": self.label, "model": self.model, "fits": self.fits, "dtype": self.dtype,
                "quantization": self.quantization, "cache": self.cache, "placement": self.placement,
                "n_gpus": self.n_gpus, "bytes_per_device": {str(d): n for d, n in self.bytes_per_device.items()},
                "capacity": {str(d): n for d, n in self.capacity.items()},
                "parts": [{"device": str(p.device), "what": p.what, "bytes": p.bytes, "source": p.source}
                          for p in self.parts],
                "quality": {"kl_nats": self.quality.kl_nats, "top1": self.quality.top1,
                            "parts": [vars(c) for c in self.quality.parts]},
                "speed": {"time_ratio": self.speed.time_ratio, "parts": [vars(c) for c in self.speed.parts],
                          "unmeasured": list(self.speed.unmeasured)},
                "code": self.code, "notes": list(self.notes)}


@lru_cache(maxsize=1)
def measurements() -> dict:
    """The measured quality and speed table (``bigsmall_lab/data/advisor_measurements.json``)."""
    return json.loads(_DATA.read_text())


# --- costs ---------------------------------------------------------------------------------------

def _quality(quant: str | None, cache: str | None, lossless: tuple[str, ...]) -> Cost:
    table = measurements()["quality"]
    parts = []
    if quant:
        row = table["weights"][quant]
        parts.append(CostPart(f"{quant} weights", row["kl_nats"], row["model"], row["measured"], row["top1"]))
    if cache and cache in table["cache"] and cache != "dynamic":
        row = table["cache"][cache]
        parts.append(CostPart(f"{cache} KV cache", row["kl_nats"], row["model"], row["measured"], row["top1"]))
    for key in lossless:
        row = table["lossless"][key]
        parts.append(CostPart(key.replace("_", " "), row["kl_nats"], "", row["measured"]))
    top1 = [p.top1 for p in parts if p.top1 is not None]
    return Cost(round(sum(p.value for p in parts), 6), min(top1) if top1 else None, tuple(parts))


def _speed(factors: list[tuple[str, str, str, float]], unmeasured: list[str]) -> Speed:
    """The product of the factors (what, table section, key, share), each 1 + share x (measured ratio - 1):
    share 1 for a whole part (int8 weights), the fraction of the weights spilled for a CPU/disk spill."""
    table = measurements()["speed"]
    parts, ratio = [], 1.0
    for what, section, key, scale in factors:
        row = table[section][key]
        factor = 1 + scale * (row["time_ratio"] - 1)
        ratio *= factor
        parts.append(CostPart(what, round(factor, 4), "", row["measured"]))
    return Speed(round(ratio, 4), tuple(parts), tuple(unmeasured))


# --- code ----------------------------------------------------------------------------------------

def _repo(spec: ModelSpec) -> tuple[str, str | None]:
    """(hub id or path, subfolder) for code: a preset's hub repository, else the config's path."""
    preset = PRESETS.get(spec.name.strip().lower())
    if preset is None:
        path = Path(spec.name)
        if path.exists():
            return (str(path.parent) if path.is_file() else str(path)), None
        return f"path/to/{spec.name}", None  # a config dict or a lab model: where its checkpoint lies
    folder = str(Path(preset.config_file).parent)
    return preset.hub_id, (None if folder == "." else folder)


def _bnb_args(quant: str, dtype: str) -> list[str]:
    if quant == "int8":
        return ["load_in_8bit=True"]
    double = ["bnb_4bit_use_double_quant=True"] if quant == "nf4-double" else []
    return ["load_in_4bit=True", 'bnb_4bit_quant_type="nf4"', *double, f"bnb_4bit_compute_dtype=torch.{dtype}"]


CODE_WIDTH = 96  # the code an option carries fits a 100-column terminal with its indent


def _packed(indent: int, head: str, items: list[str], tail: str) -> list[str]:
    """``head`` + items joined by ", " + ``tail`` on one line when it fits :data:`CODE_WIDTH`, else the
    items packed onto indented lines between ``head`` and ``tail``."""
    pad = " " * indent
    one = f"{pad}{head}{', '.join(items)}{tail}"
    if len(one) <= CODE_WIDTH:
        return [one]
    lines, line = [f"{pad}{head}"], ""
    for item in items:
        piece = f"{item},"
        if line and len(pad) + 4 + len(line) + 1 + len(piece) > CODE_WIDTH:
            lines.append(f"{pad}    {line}")
            line = piece
        else:
            line = f"{line} {piece}" if line else piece
    lines += [f"{pad}    {line}", f"{pad}{tail.lstrip(',') if tail.startswith(')') or tail.startswith('}') else tail}"]
    return lines


_NUMBERED = re.compile(r"^(.*\.)(\d+)$")


def _device_map_lines(device_map: Mapping[str, Device]) -> list[str]:
    """``device_map = {...}`` as Python, runs of numbered modules on one device written as a comprehension:
    ``**{f"model.layers.{i}": 0 for i in range(0, 25)}``; evaluating it gives ``device_map`` back."""
    items, entries, i = list(device_map.items()), [], 0
    while i < len(items):
        key, dev = items[i]
        match = _NUMBERED.match(key)
        j = i + 1
        if match:
            prefix, start = match.group(1), int(match.group(2))
            while j < len(items):
                nxt = _NUMBERED.match(items[j][0])
                if not (nxt and nxt.group(1) == prefix and int(nxt.group(2)) == start + (j - i) and items[j][1] == dev):
                    break
                j += 1
        if j - i > 1:
            entries.append('**{f"' + prefix + '{i}": ' + json.dumps(dev) + f" for i in range({start}, {start + j - i})}}")
        else:
            entries.append(f"{json.dumps(key)}: {json.dumps(dev)}")
            j = i + 1
        i = j
    return _packed(0, "device_map = {", entries, "}")


def _size_text(n_bytes: int) -> str:
    return f'"{max(n_bytes, 0) // 2**20}MiB"'


def _transformers_code(spec: ModelSpec, dtype: str, quant: str | None, cache: str | None, device_map: Any,
                       max_memory: Mapping[Device, int] | None, tp: int, seq_len: int) -> str:
    from . import _compat
    from .kv_plan import CacheSettings

    repo, subfolder = _repo(spec)
    generates = cache is not None
    cls = "AutoModelForCausalLM" if generates else (spec.config.get("architectures") or ["AutoModel"])[0]
    imports = ["import torch", f"from transformers import {cls}" + (", AutoTokenizer" if generates else "")
               + (", BitsAndBytesConfig" if quant else "")
               + (", DistributedConfig" if tp > 1 and _compat.TRANSFORMERS_5 else "")]
    mapped = isinstance(device_map, Mapping)
    lines = [*imports, "", *(_device_map_lines(device_map) if mapped else []),
             f"model = {cls}.from_pretrained(", f'    "{repo}",']
    if subfolder:
        lines.append(f'    subfolder="{subfolder}",')
    lines.append(f"    {'dtype' if _compat.TRANSFORMERS_5 else 'torch_dtype'}=torch.{dtype},")
    if tp > 1:
        lines.append('    distributed_config=DistributedConfig(tp_plan="auto"),' if _compat.TRANSFORMERS_5
                     else '    tp_plan="auto",')
    else:
        lines.append(f"    device_map={'device_map' if mapped else json.dumps(device_map)},")
    if max_memory:
        lines += _packed(4, "max_memory={", [f"{json.dumps(k)}: {_size_text(v)}" for k, v in max_memory.items()], "},")
    if "disk" in (max_memory or {}) or (mapped and "disk" in device_map.values()):
        lines.append('    offload_folder="offload",')
    if quant:
        spills = mapped and any(d in ("cpu", "disk") for d in device_map.values())
        args = _bnb_args(quant, dtype) + (["llm_int8_enable_fp32_cpu_offload=True"] if spills else [])
        lines += _packed(4, "quantization_config=BitsAndBytesConfig(", args, "),")
    lines.append(")")
    # The prompt goes where the first layers compute: GPU 0 when the plan uses a GPU; on a machine without one it
    # stays in RAM (model.device would be "meta" when the first weights are offloaded to disk).
    on_gpu = tp > 1 or any(isinstance(d, int) and not isinstance(d, bool)
                           for d in [device_map, *(max_memory or {}), *(device_map.values() if mapped else [])])
    to_device = ".to(model.device)" if on_gpu else ""
    if generates:
        kwargs = {} if cache == "dynamic" else CacheSettings.parse(cache).generate_kwargs()
        lines += [f'tokenizer = AutoTokenizer.from_pretrained("{repo}")',
                  f'ids = tokenizer(prompt, return_tensors="pt").input_ids{to_device}  # up to {seq_len:,} tokens']
        lines += _packed(0, "out = model.generate(", ["ids", "max_new_tokens=256",
                                                       *[f"{k}={v!r}" for k, v in kwargs.items()]], ")")
    else:
        lines += [f"out = model(ids{to_device})  # up to {seq_len:,} tokens"]
    if tp > 1:
        lines += ["", f"# run with: torchrun --nproc-per-node {tp} run.py"]
    return "\n".join(lines)


def _diffusers_code(spec: ModelSpec, settings, pipeline: bool) -> str:
    from . import _compat
    from .offload_plan import OffloadStrategy as Strategy

    repo, subfolder = _repo(spec)
    kw = _compat.diffusers_dtype_kwarg()
    if pipeline:
        lines = ["import torch", "from diffusers import FluxPipeline", "",
                 f'pipe = FluxPipeline.from_pretrained("{repo}", {kw}=torch.bfloat16)']
        target, components = "pipe", "(pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, pipe.vae)"
    else:
        cls = spec.config.get("_class_name", "AutoModel")
        sub = f', subfolder="{subfolder}"' if subfolder else ""
        lines = ["import torch", f"from diffusers import {cls}", "",
                 f'model = {cls}.from_pretrained("{repo}"{sub}, {kw}=torch.bfloat16)']
        target, components = "model", "(model,)"
    if settings.strategy.is_group:
        call = settings.call("cuda").replace('"cuda"', 'torch.device("cuda")')
        call = call.replace('offload_device="cpu"', 'offload_device=torch.device("cpu")')
        name, _, rest = call.partition("(")
        lines[1] += "\nfrom diffusers.hooks import apply_group_offloading"
        lines += [f"for component in {components}:", *_packed(4, f"{name}(", rest.removesuffix(")").split(", "), ")")]
    elif settings.strategy is Strategy.NONE:
        lines += [f'{target}.to("cuda")']
    elif pipeline:
        lines += [f"pipe.{settings.call('cuda').removeprefix('pipe.')}"]
    else:  # one model: accelerate's hooks do what the pipeline's calls do
        fn = "cpu_offload" if settings.strategy is Strategy.SEQUENTIAL else "cpu_offload_with_hook"
        lines[1] += f"\nfrom accelerate import {fn}"
        lines += [f'{fn}(model, execution_device="cuda")']
    if pipeline:
        lines += ['image = pipe("a photo of a cat", num_inference_steps=28).images[0]']
    return "\n".join(lines)


# Why no tensor-parallel option spills or quantizes, read in transformers 5.25: distributed/mixin.py
# (prepare_distribute_model) raises "Tensor parallelism and `device_map` are mutually exclusive." for tp_size > 1
# with any device_map, so a TP rank cannot offload layers to the CPU or disk; and its TP layers have a local path
# for quantized weights only where a quantizer marks them (_hf_quantized_needs_local_tp: torchao and fine-grained
# fp8), which the bitsandbytes quantizers do not.
_TP_NO_SPILL = ("no CPU or disk spill with tensor parallelism: transformers refuses a device_map beside it "
                "('Tensor parallelism and `device_map` are mutually exclusive'), and its TP layers have no "
                "bitsandbytes path")


# --- the options ---------------------------------------------------------------------------------

def _checked(spec_or_model: Any, seq_len: Any, batch_size: Any, dtype: Any) -> tuple[ModelSpec, int, int, str]:
    seq_len = whole_number(seq_len, "seq_len")
    batch_size = whole_number(batch_size, "batch_size")
    if not isinstance(dtype, str) or dtype.strip().lower() not in DTYPES:
        raise LabError.bad("dtype", dtype, f"use one of: {', '.join(DTYPES)}{closest(str(dtype), DTYPES)}",
                           verb="is not a weights format the advisor plans")
    return resolve(spec_or_model), seq_len, batch_size, dtype.strip().lower()


def _cache_bytes(spec: ModelSpec, cache: str, seq_len: int, batch_size: int, dtype: str) -> tuple[int, str]:
    """(bytes, source) of the whole cache at ``seq_len`` tokens; a quantized one with its window full."""
    from .kv_plan import CacheSettings, expected_cache_bytes

    settings = CacheSettings.parse(cache)
    if settings.is_quantized and settings.effective_residual_length is not None:
        residual = min(seq_len, settings.effective_residual_length - 1)
        n = expected_cache_bytes(spec, settings, seq_len, batch_size, dtype, residual_tokens=residual)
        return n, (f"kv_plan.expected_cache_bytes({cache!r}, seq_len={seq_len}, residual_tokens={residual}): "
                   "the full-precision window at its fullest")
    return expected_cache_bytes(spec, settings, seq_len, batch_size, dtype), \
        f"kv_plan.expected_cache_bytes({cache!r}, seq_len={seq_len})"


def _split(total: int, shares: dict[Device, int], fallback: Device) -> dict[Device, int]:
    """``total`` bytes split in proportion to ``shares`` (layers per device), the remainder on the first
    device with a share, so that the parts add up to ``total`` exactly (all on ``fallback`` without shares)."""
    n = sum(shares.values())
    if not n:
        return {fallback: total}
    out = {d: total * s // n for d, s in shares.items() if s}
    first = next(iter(out))
    out[first] += total - sum(out.values())
    return out


def _context(devices) -> list[Part]:
    return [Part(d, "CUDA context", RUNTIME_OVERHEAD.bytes, "estimates.RUNTIME_OVERHEAD (one per GPU a process uses)")
            for d in devices if isinstance(d, int)]


def _capacity(m: Machine, devices) -> dict[Device, int]:
    return {d: m.capacity(d) for d in devices}


def _label(quant: str | None, dtype: str, cache: str | None, where: str) -> str:
    weights = f"{quant} weights" if quant else f"{'bf16' if dtype == 'bfloat16' else 'fp16'} weights"
    return ", ".join([weights] + ([f"{cache} cache"] if cache else []) + [where])


# Read in transformers 5.25 (quantizers/quantizer_bnb_4bit.py and quantizer_bnb_8bit.py, the same code in both):
# validate_environment raises "Some modules are dispatched on the CPU or the disk ..." for a device map with
# "cpu" or "disk" beside GPUs unless BitsAndBytesConfig(llm_int8_enable_fp32_cpu_offload=True); with it and a
# dict device_map, _process_model_before_weight_loading adds every module mapped to "cpu" or "disk" to
# modules_to_not_convert, so those stay in the loading dtype. device_map="auto" hands the quantizer a string
# there, so the advisor writes the planned map out as a dict.
_BNB_SPILL_NOTE = ("bitsandbytes quantizes only the layers on GPUs: the ones the map sends to the CPU or disk stay "
                   "{dtype} (BitsAndBytesConfig(llm_int8_enable_fp32_cpu_offload=True) with a dict device_map, "
                   "as transformers asks; without the flag from_pretrained raises ValueError); the quality "
                   "figure is the all-quantized one, an upper bound")


@lru_cache(maxsize=64)
def _quant_ratio(spec: ModelSpec, dtype: str, quant: str) -> float:
    """The smallest quantized / 16-bit byte ratio over the model's modules (a decoder layer's, about 0.53
    for int8): RAM for 16-bit layers, given to a planner that counts them quantized, shrinks by it."""
    q, full = module_bytes(spec, dtype, quant), module_bytes(spec, dtype, None)
    return min((q[k] / n for k, n in full.items() if n and k in q), default=1.0)


def _plan_spill(spec, dtype, quant, budgets):
    """``placement.plan(spec, "auto", budgets, dtype, quant)``: for a preset with shipped facts, the same plan from
    ``placement_rule`` (transformers' placement rule over the stored module tree, no torch; tests check both agree)."""
    tree = _tree(spec.facts, dtype, quant) if spec.facts is not None else None
    if tree is not None:
        from .placement_rule import plan as place

        return place(tree, "auto", budgets)
    from .placement import plan

    return plan(spec, "auto", budgets, dtype, quant)


@lru_cache(maxsize=32)
def _tree(facts, dtype: str, quant: str | None):
    return facts.tree(dtype, quant)


def _tp_rank_bytes(spec: ModelSpec, nproc: int, dtype: str) -> list[int] | None:
    """Each rank's weight bytes under tensor parallelism over ``nproc`` GPUs (``tp_plan.plan(...).rank_bytes``), from
    the preset's facts when stored; None when the model has no tensor-parallel plan."""
    if spec.facts is not None:
        try:
            return spec.facts.tp_rank_bytes(dtype, nproc)
        except KeyError:  # not stored (more GPUs than the facts hold): the planner on the meta model
            pass
    from . import tp_plan

    try:
        return list(tp_plan.plan(spec, nproc, dtype, name=spec.name).rank_bytes)
    except LabError:
        return None


def _transformers_options(spec: ModelSpec, m: Machine, seq_len: int, batch_size: int, dtype: str) -> list[Option]:
    generates = spec.generates
    caches = CACHES if generates else (None,)
    act = activation_bytes(spec, seq_len, batch_size, dtype)
    act_source = f"estimates.activation_bytes(seq_len={seq_len}, batch_size={batch_size})"
    sizes = {q: module_bytes(spec, dtype, q) for q in WEIGHTS}
    kv = {}
    for c in [c for c in caches if c and c != "offloaded"]:
        try:
            kv[c] = _cache_bytes(spec, c, seq_len, batch_size, dtype)
        except LabError:  # a quantized cache whose backend is not installed here (the kvcache extra)
            pass
    caches = tuple(c for c in caches if c is None or c == "offloaded" or c in kv)
    options: list[Option] = []
    gpus = list(range(len(m.gpus)))
    first = gpus[0] if gpus else "cpu"

    def option(quant, cache, placement, parts, devices, code, notes=(), lossless=(), speed=(), unmeasured=(),
               device_map=None, n_gpus=1, where=""):
        where = where or (f"GPU {first}" if isinstance(first, int) else "CPU")
        devices = list(dict.fromkeys([*devices, *(p.device for p in parts)]))
        capacity = _capacity(m, devices)
        options.append(Option(
            _label(quant, dtype, cache, where), spec.name, "transformers", dtype, quant, cache, placement, n_gpus,
            tuple(parts), capacity, _quality(quant, cache, lossless),
            _speed([*([(f"{quant} weights", "weights", quant, 1.0)] if quant in measurements()["speed"]["weights"] else []),
                    *([(f"{cache} cache", "cache", cache, 1.0)]
                      if cache != "dynamic" and cache in measurements()["speed"]["cache"] else []),
                    *speed],
                   [*([f"{quant} weights (not timed by the lab)"] if quant and quant not in measurements()["speed"]["weights"] else []),
                    *([f"{cache} cache (needs a GPU; not timed by the lab)"] if cache == "offloaded" else []),
                    *unmeasured]),
            code, tuple(notes), device_map))

    # 1. Everything on one compute device (GPU 0, or the CPU of a machine without GPUs).
    for quant in WEIGHTS:
        w = sizes[quant][""]
        for cache in caches:
            if cache == "offloaded" and not gpus:
                continue
            parts = [Part(first, "weights", w, f"estimates.weights_bytes({dtype!r}, {quant!r})")]
            notes = []
            if cache == "offloaded":
                from .kv_plan import plan_cache_offload

                op = plan_cache_offload(spec, seq_len, batch_size, dtype)
                parts += [Part(first, "KV cache", op.gpu_bytes, "kv_plan.plan_cache_offload: 2 layers on the GPU"),
                          Part("cpu", "KV cache", op.cpu_bytes, "kv_plan.plan_cache_offload: the other layers in CPU RAM")]
            elif cache:
                parts.append(Part(first, "KV cache", *kv[cache]))
            parts.append(Part(first, "activations", act, act_source))
            parts += _context([first])
            devices = [first] + (["cpu"] if cache == "offloaded" else [])
            device_map = {"": first}
            if not gpus:
                notes.append("no GPU: everything in CPU RAM (bitsandbytes and quanto run on CPUs too)")
            code = _transformers_code(spec, dtype, quant, cache, first if gpus else "cpu", None, 1, seq_len)
            option(quant, cache, "gpu" if gpus else "cpu", parts, devices, code, notes, device_map=device_map)

    # 2. from_pretrained's device_map="auto" over every GPU, then CPU RAM and disk when given.
    spill_targets = [d for d, n in (("cpu", m.cpu_ram_bytes), ("disk", m.disk_bytes)) if n]
    if len(gpus) > 1 or spill_targets:
        for quant in WEIGHTS:
            for cache in caches:
                if cache in _NOT_SPLIT:
                    continue
                kv_total, kv_source = kv[cache] if cache else (0, "")
                # bitsandbytes spills only beside GPUs: on a machine without one, the layers a map sends to the
                # disk would stay 16-bit and the rest too (transformers skips every "cpu" and "disk" module).
                spill = spill_targets if gpus or not quant else []
                if len(gpus) < 2 and not spill:
                    continue
                # Weights and cache that fit one GPU gain nothing from a split (same quality, more traffic):
                # the one-GPU row stands for them.
                if any(o.fits and o.quantization == quant and o.cache == cache and o.placement == "gpu"
                       for o in options):
                    continue
                # A quantized cache costs quality: split with it only when the dynamic cache's split does not fit.
                if cache != "dynamic" and any(o.fits and o.quantization == quant and o.cache == "dynamic"
                                              and o.placement == "device_map" for o in options):
                    continue
                # A split whose bytes exceed everything the devices hold together cannot fit: not planned
                # (a placement call each; the one-device row of these weights shows how short it is).
                room = sum(m.capacity(d) - RUNTIME_OVERHEAD.bytes for d in gpus) + sum(m.capacity(d) for d in spill)
                if sizes[quant][""] + kv_total + act > room:
                    continue
                # Budgets: each GPU's capacity less its context, an even share of the cache, and on the
                # first GPU the activations (where offloaded layers run too).
                compute = gpus or ["cpu"]
                budgets = {}
                for d in gpus:
                    budget = m.capacity(d) - RUNTIME_OVERHEAD.bytes - kv_total // len(gpus) - (act if d == compute[0] else 0)
                    budgets[d] = max(budget, 0)
                if not gpus:
                    budgets["cpu"] = max(m.cpu_ram_bytes - kv_total - act, 0)
                for d in spill:
                    if d not in budgets:
                        budgets[d] = m.capacity(d) - (kv_total + act if d == "cpu" and not gpus else 0)
                # bitsandbytes with a spill: the layers on the CPU or disk are not quantized (see below), so they
                # hold 16-bit bytes; the planner, which counts every layer quantized, gets the RAM and disk
                # scaled by the most compressed module's ratio, so that their 16-bit bytes fit what is there.
                planned = dict(budgets)
                if quant and spill:
                    ratio = _quant_ratio(spec, dtype, quant)
                    planned.update({d: int(budgets[d] * ratio) for d in spill})
                try:
                    p = _plan_spill(spec, dtype, quant, planned)
                except LabError:
                    continue  # not even one layer fits anywhere: the single-device options say how short it is
                w, full = sizes[quant], sizes[None]
                per: dict[Device, int] = {}
                for key, dev in p.device_map.items():
                    per[dev] = per.get(dev, 0) + (full if quant and dev in ("cpu", "disk") else w).get(key, 0)
                runs = {d: p.layers_run_on(d) for d in compute}
                used_gpus = [d for d in gpus if per.get(d) or runs.get(d)]
                spilled = {d: per.get(d, 0) for d in ("cpu", "disk") if gpus or d == "disk"}
                mixed = bool(quant) and any(spilled.values())  # quantized on the GPUs, 16-bit on CPU / disk
                source = f"placement.plan('auto', max_memory) x estimates.module_bytes({quant!r})"
                parts = [Part(d, "weights", n, source.replace(repr(quant), "None") + ": its modules stay "
                              f"{dtype} off the GPUs" if mixed and d in ("cpu", "disk") else source)
                         for d, n in per.items() if n]
                head = next((d for d in compute if runs.get(d)), compute[0])
                if cache:
                    parts += [Part(d, "KV cache", n, f"{kv_source}, split by the layers each device runs")
                              for d, n in _split(kv_total, runs, head).items()]
                parts.append(Part(head, "activations", act, act_source))
                parts += _context(used_gpus)
                devices = [*used_gpus, *[d for d in ("cpu", "disk") if per.get(d)]] or [head]
                total_w = sum(per.values()) or 1
                where = (f"device_map over {len(used_gpus)} GPUs" if len(used_gpus) > 1 else f"GPU {head}" if gpus else "CPU")
                if any(spilled.values()):
                    where += " + " + " + ".join(f"{format_bytes(n, 'GB', 1)} on {'CPU' if d == 'cpu' else 'disk'}"
                                                for d, n in spilled.items() if n)
                speed = []
                if spilled.get("cpu"):
                    speed.append(("weights in CPU RAM (share spilled)", "placement", "cpu_offload", spilled["cpu"] / total_w))
                if spilled.get("disk"):
                    ratio = measurements()["speed"]["placement"]
                    share = spilled["disk"] / total_w * ratio["disk_vs_cpu"]["time_ratio"]
                    speed.append(("weights on disk (share spilled, x disk/RAM)", "placement", "cpu_offload", share))
                if len(devices) == 1 and devices[0] == first and not any(spilled.values()) and len(gpus) < 2:
                    continue  # the same as option 1
                notes = list(p.notes)
                if spec.kind == "transformers" and generates and (cache and cache.startswith("quanto")):
                    notes.append("the cache is split by layers run, in proportion (exact for models without sliding windows)")
                if mixed:  # the planner's "from_pretrained refuses this plan" is what the dict and the flag answer
                    notes = [n for n in notes if not n.startswith("from_pretrained refuses this plan")]
                    notes.append(_BNB_SPILL_NOTE.format(dtype=dtype))
                    code = _transformers_code(spec, dtype, quant, cache, dict(p.device_map), None, 1, seq_len)
                else:
                    code = _transformers_code(spec, dtype, quant, cache, "auto", dict(budgets), 1, seq_len)
                option(quant, cache, "device_map", parts, devices, code, notes,
                       lossless=("spill",) if any(spilled.values()) else (), speed=speed,
                       unmeasured=[f"layers split over {len(used_gpus)} GPUs (not timed by the lab)"] if len(used_gpus) > 1 else [],
                       device_map=dict(p.device_map), n_gpus=max(len(used_gpus), 1), where=where)

    # 3. Tensor parallelism over the most GPUs that split the heads evenly (bf16/fp16, dynamic cache).
    if len(gpus) > 1 and generates:
        from . import tp_plan

        try:
            nproc = max(tp_plan.valid_nproc(spec, up_to=len(gpus)))
        except LabError:
            nproc = 1
        rank_bytes = _tp_rank_bytes(spec, nproc, dtype) if nproc > 1 else None
        if rank_bytes is not None:
            # kv_plan.kv_bytes_per_rank builds a config with the rank's KV heads (a new meta model, ~1 s for
            # 405B); valid_nproc divides the KV heads, so each rank holds exactly 1/nproc of the cache.
            kv_rank = kv["dynamic"][0] // nproc
            parts = []
            for r in range(nproc):
                parts += [Part(r, "weights", rank_bytes[r], f"tp_plan.plan(nproc={nproc}).rank_bytes[{r}]"),
                          Part(r, "KV cache", kv_rank, f"kv_plan.kv_bytes_per_rank(tp_size={nproc}): the "
                               "dynamic cache / tp_size (the KV heads split evenly)"),
                          Part(r, "activations", act, act_source + " (each rank's process; an upper bound: "
                               "the MLP is split, the residual stream and logits are not)")]
            parts += _context(range(nproc))
            code = _transformers_code(spec, dtype, None, "dynamic", None, None, nproc, seq_len)
            option(None, "dynamic", "tensor_parallel", parts, list(range(nproc)), code,
                   ["one process per GPU (torchrun); bitsandbytes and quantized caches are not planned with TP here",
                    _TP_NO_SPILL],
                   lossless=("tensor_parallel",),
                   unmeasured=[f"tensor parallelism over {nproc} GPUs (timed by the lab on CPUs only)"],
                   n_gpus=nproc, where=f"tensor parallel over {nproc} GPUs")
    return options


def _diffusers_options(spec: ModelSpec, m: Machine, dtype: str, image_size: tuple[int, int], batch_size: int) -> list[Option]:
    from .offload_plan import FLUX_DEV_CONFIGS, NAMED_SETTINGS, flux_dev_components, pinned_memory_plan, plan_offload
    from .offload_plan import OffloadStrategy as Strategy

    pipeline = spec.name.strip().lower() == FLUX_DEV_CONFIGS["transformer"]
    built: dict = {}

    def components():  # the meta models, built only for what the preset's facts do not hold
        if "c" not in built:
            if pipeline:
                built["c"] = flux_dev_components(dtype)
            else:
                from .zoo._configs import meta_model

                built["c"] = {"model": meta_model(spec.config, dtype)}
        return built["c"]

    first = 0 if m.gpus else "cpu"
    height, width = image_size
    try:
        act = diffusion_activation_bytes(spec, image_size, FLUX_TEXT_TOKENS, batch_size, dtype)
        act_source = (f"advisor.diffusion_activation_bytes(image_size=({height}, {width}), text_tokens="
                      f"{FLUX_TEXT_TOKENS}, batch_size={batch_size}): the transformer's step, once on the computing device")
        notes = [f"activations: the transformer's denoising step at {height} x {width} pixels with a "
                 f"{FLUX_TEXT_TOKENS}-token prompt (the pipeline pads every prompt to it; seq_len is not used), "
                 "counted once on the device that computes; the VAE's decoding at the end is not counted"]
    except LabError:
        act, act_source = 0, ""
        notes = ["activations of this diffusion model are not modelled (only FLUX transformers are): the parts "
                 "are weights and the CUDA context only"]
    if pipeline:
        notes.append("FLUX.1-dev's whole pipeline is planned (transformer, T5-XXL, CLIP-L, VAE from their real "
                     "configs): it runs one component at a time")
    else:
        notes.append("one diffusers model alone; bitsandbytes is not planned for diffusers models")
    options = []
    for name, settings in NAMED_SETTINGS.items():
        speed_key = None if name == "none" else name  # no offloading is the baseline the others are timed against
        if not m.gpus and name != "none":
            continue  # offloading moves weights to an accelerator: nothing to gain on a CPU
        device = "cuda" if m.gpus else "cpu"
        row = spec.facts.offload_bytes(dtype, device, name) if spec.facts is not None else None
        if row is None:  # not in the preset's facts: the planners on the meta models
            p = plan_offload(components(), settings, device=device)
            row = {"device_bytes": p.device_bytes, "total_bytes": p.total_bytes}
            if settings.use_stream and p.total_bytes > p.device_bytes:
                row["pinned_ram_after_bytes"] = pinned_memory_plan(components(), settings).ram_after_bytes
        device_bytes, total_bytes = row["device_bytes"], row["total_bytes"]
        parts = [Part(first, "weights", device_bytes, f"plan_offload({settings.label!r}).device_bytes")]
        devices = [first]
        if total_bytes > device_bytes:
            if settings.use_stream:
                parts.append(Part("cpu", "weights", row["pinned_ram_after_bytes"],
                                  "pinned_memory_plan(...).ram_after_bytes (pinned copies)"))
            else:
                parts.append(Part("cpu", "weights", total_bytes - device_bytes,
                                  "plan_offload: total_bytes - device_bytes, waiting in CPU RAM"))
            devices.append("cpu")
        if act:
            parts.append(Part(first, "activations", act, act_source))
        parts += _context([first])
        table = measurements()["speed"]["diffusers"]
        speed = _speed([(settings.label, "diffusers", speed_key, 1.0)] if speed_key in table else [], [])
        options.append(Option(
            f"{'FLUX.1-dev pipeline' if pipeline else 'bf16 weights'}, {settings.label}", spec.name, "diffusers", dtype,
            None, None, name, 1 if m.gpus else 0, tuple(parts), _capacity(m, devices),
            _quality(None, None, ("diffusers_offload",) if name != "none" else ()), speed,
            _diffusers_code(spec, settings, pipeline), tuple(notes)))
    return options


def _rank(options: list[Option]) -> list[Option]:
    return sorted(options, key=lambda o: (not o.fits, o.quality.kl_nats, o.speed.time_ratio, len(o.speed.unmeasured),
                                          o.n_gpus, o.label))


def fit(model: Any, machine: str | Machine | None = None, seq_len: int = 4096, batch_size: int = 1,
        dtype: str = "bfloat16", image_size: int | tuple[int, int] = 1024) -> list[Option]:
    """Every option the lab can plan for ``model`` on ``machine`` at ``seq_len`` tokens, ranked: those
    that fit first, then least quality lost, then fastest.

    ``model``: a preset name, a config dict or a config.json path (resolved once). ``machine``: a
    :class:`Machine`, text for :func:`machine` ("T4", "2xL4", "24GB"; no CPU RAM or disk then, so
    nothing spills: build one with ``machine("T4", cpu_ram="12GB")`` for that), or None for the
    attached machine (:func:`attached_machine`). When nothing fits, every option is still returned
    (none fitting) and :func:`smallest_change` names what would make one fit. ``image_size``: pixels
    (1024, or (height, width)) a diffusion model generates; its activations come from
    :func:`diffusion_activation_bytes` (``seq_len`` is for language models).
    """
    spec, seq_len, batch_size, dtype = _checked(model, seq_len, batch_size, dtype)
    size = _image_size(image_size)
    m = _machine(machine)
    if spec.kind == "transformers":
        options = _transformers_options(spec, m, seq_len, batch_size, dtype)
    else:
        options = _diffusers_options(spec, m, dtype, size, batch_size)
    return _rank(options)


def _machine(value: Any) -> Machine:
    if value is None:
        return attached_machine()
    return machine(value)


# --- when nothing fits ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Change:
    """A change that makes an option fit: ``kind`` ("gpu", "more_gpus", "cpu_ram", "seq_len"), a sentence,
    and the ``fit`` arguments to run with it (``machine`` and ``seq_len``); ``option``: the best one then."""

    kind: str
    text: str
    machine: Machine
    seq_len: int
    option: Option


def _first_fit(model, m: Machine, seq_len: int, batch_size: int, dtype: str, image_size=1024) -> Option | None:
    options = fit(model, m, seq_len, batch_size, dtype, image_size)
    return options[0] if options and options[0].fits else None


def changes(model: Any, machine: str | Machine | None = None, seq_len: int = 4096, batch_size: int = 1,
            dtype: str = "bfloat16", image_size: int | tuple[int, int] = 1024) -> list[Change]:
    """The changes that would make an option fit, each checked by running :func:`fit` with it: the
    smallest named GPU of :data:`~bigsmall_lab.estimates.GPUS`; more GPUs of the machine's kind (up to
    8); more CPU RAM; a shorter context (at least ``estimates.longest_context`` on the machine's first GPU,
    then the longest that fits with spills and other caches, to :data:`CONTEXT_STEP` tokens).
    Empty when an option already fits."""
    spec, seq_len, batch_size, dtype = _checked(model, seq_len, batch_size, dtype)
    image_size = _image_size(image_size)
    m = _machine(machine)
    options = fit(spec, m, seq_len, batch_size, dtype, image_size)
    if any(o.fits for o in options):
        return []
    found: list[Change] = []
    # A named GPU: the single-device options hold the same bytes on any GPU; the smallest that takes one.
    single = [o for o in options if o.placement in ("gpu", "cpu", "none", "model", "block_level", "leaf_level+stream",
                                                    "sequential") and not o.short_by.get("cpu")]
    need = min((o.bytes_per_device.get(0, o.bytes_per_device.get("cpu", 0)) for o in single), default=None)
    for gpu in sorted(GPUS.values(), key=lambda g: g.usable_bytes):
        if need is not None and gpu.usable_bytes >= need:
            candidate = replace(m, gpus=(gpu,))
            best = _first_fit(spec, candidate, seq_len, batch_size, dtype, image_size)
            if best:
                found.append(Change("gpu", f"one {gpu.name} ({gpu.marketed}): {best.label}", candidate, seq_len, best))
                break
    # More GPUs of the machine's first kind.
    if m.gpus:
        for n in range(len(m.gpus) + 1, MAX_GPUS + 1):
            candidate = replace(m, gpus=(m.gpus[0],) * n)
            best = _first_fit(spec, candidate, seq_len, batch_size, dtype, image_size)
            if best:
                found.append(Change("more_gpus", f"{n} x {m.gpus[0].name}: {best.label}", candidate, seq_len, best))
                break
    # More CPU RAM: the least RAM a plan that fits with plenty asks for, rounded up to whole GB.
    if m.gpus:
        plenty = max(m.cpu_ram_bytes, 2 * module_bytes(spec, dtype)[""])
        spilled = [o for o in fit(spec, replace(m, cpu_ram_bytes=plenty), seq_len, batch_size, dtype, image_size)
                   if o.fits and o.bytes_per_device.get("cpu")]
        if spilled:
            ram = min(o.bytes_per_device["cpu"] for o in spilled)
            for extra in (0, max(o.bytes_per_device["cpu"] for o in spilled) - ram):
                candidate = replace(m, cpu_ram_bytes=math.ceil((ram + extra) / GB) * GB)
                again = _first_fit(spec, candidate, seq_len, batch_size, dtype, image_size)
                if again:
                    found.append(Change("cpu_ram", f"{format_bytes(candidate.cpu_ram_bytes, 'GB', 0)} of CPU RAM: "
                                        f"{again.label}", candidate, seq_len, again))
                    break
    # A shorter context on the machine as it is.
    if m.gpus and spec.kind == "transformers":
        capacity = m.gpus[0].usable_bytes
        best_n = 0
        for quant in WEIGHTS:
            n = longest_context(spec, capacity, dtype, quant, batch_size)
            best_n = max(best_n, min(n, seq_len - 1))
        best = _first_fit(spec, m, best_n, batch_size, dtype, image_size) if best_n >= 1 else None
        if best:
            # longest_context counts one GPU's weights only; spilling layers to CPU RAM, an offloaded or a
            # quantized cache fit longer contexts: bisect on multiples of CONTEXT_STEP (a call of fit each).
            low, high = best_n, seq_len
            while high - low > CONTEXT_STEP:
                mid = (low + high) // 2 // CONTEXT_STEP * CONTEXT_STEP
                if mid <= low:
                    break
                again = _first_fit(spec, m, mid, batch_size, dtype, image_size)
                if again:
                    low, best = mid, again
                else:
                    high = mid
            found.append(Change("seq_len", f"a context of {low:,} tokens: {best.label}", m, low, best))
    return found


def smallest_change(model: Any, machine: str | Machine | None = None, seq_len: int = 4096, batch_size: int = 1,
                    dtype: str = "bfloat16", image_size: int | tuple[int, int] = 1024) -> Change | None:
    """The first of :func:`changes` (a named GPU before more GPUs, more RAM, a shorter context); None when
    an option fits already or no change the advisor tries helps (say a model past 8 of the largest GPUs)."""
    found = changes(model, machine, seq_len, batch_size, dtype, image_size)
    return found[0] if found else None
