"""Memory estimates: pure functions, numbers in, numbers out.

The talk's rule: memory to load a model ~ parameters x bytes per parameter. For Llama 3.1 8B in
bfloat16 that is 8,030,261,248 x 2 = 16.06 GB, more than the 15.83 GB torch sees on a free Colab T4
(:data:`GPUS` holds each card's memory as sold, as nvidia-smi prints it and as torch sees it):

>>> weights_bytes("llama-3.1-8b", dtype="bfloat16")
16060522496
>>> kv_cache_bytes("llama-3.1-8b", seq_len=8192)      # 2 x 32 layers x 8 KV heads x 128 x 8192 x 2 B
1073741824

A config is resolved once (:func:`resolve`: the config dict, its model on the meta device) and
every estimate reads that :class:`ModelSpec`; :func:`module_bytes` gives the bytes of every module
(the idea of accelerate's ``compute_module_sizes``) for a placement planner to read. Every byte
count goes through the lab's one dtype table (``bigsmall_lab._dtypes``).

A little over 600 lines (about 620) on purpose: it is lesson 01's whole vocabulary (weights, KV cache,
activations, the GPUs' sizes, the runtime's overhead, the longest context that fits), each function a few
lines over the one resolved spec, read top to bottom; a split would put the GPU table away from the
estimate that subtracts it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ._dtypes import bytes_per_element, dtype_name
from ._errors import LabError, closest, shown, whole_number
from ._units import GB, parse_size
# bitsandbytes' format names live in the planner bnb_formats (one home); kept in __all__ here too.
from .bnb_formats import Quantization
from .zoo._configs import ModelSpec, resolve

if TYPE_CHECKING:  # torch is imported where a meta model is read: a preset's shipped facts need none
    import torch

__all__ = ["GPUS", "RUNTIME_OVERHEAD", "Comparison", "GpuModel", "MemoryEstimate", "ModelSpec", "Quantization",
           "WeightsRow", "activation_bytes", "attention_scores_bytes", "cpu_packed_weights_bytes", "estimate", "fits",
           "kv_cache_bytes", "largest_layer_bytes", "longest_context",
           "module_bytes", "resolve", "weights_bytes", "weights_table"]

# Float formats a model's weights (and KV cache) can be loaded in.
WEIGHT_DTYPES = ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
_F32 = int(bytes_per_element("float32"))  # bitsandbytes' scales, absmax and code books are float32
KV_TENSORS = 2  # a layer caches two tensors per token: its keys and its values


@dataclass(frozen=True)
class GpuModel:
    """A GPU people rent or own, and its memory three ways (see :data:`GPUS`).

    ``marketed``: the size on the box ("80 GB"; for these cards the GB are in fact GiB, 2**30 bytes).
    ``smi_mib``: the total ``nvidia-smi`` prints (MiB; ECC, where on, has already taken its share).
    ``torch_bytes``: ``torch.cuda.get_device_properties(i).total_memory``, the memory a program can
    allocate before its own CUDA context (which :func:`estimate` counts once, as its overhead).
    ``source``: where the two figures come from, and how ``torch_bytes`` was derived where no program
    printed it in bytes.
    """

    name: str
    marketed: str
    smi_mib: int
    torch_bytes: int
    source: str
    note: str = ""

    @property
    def usable_bytes(self) -> int:
        """What a program can allocate before its own CUDA context: torch's ``total_memory``."""
        return self.torch_bytes

    @property
    def smi_bytes(self) -> int:
        """nvidia-smi's total in bytes."""
        return self.smi_mib * _UNIT_BYTES["MiB"]

    @property
    def marketed_number(self) -> float:
        """The number on the box: 80 for an "80 GB" card."""
        return float(self.marketed.split()[0])


_UNIT_BYTES = {"B": 1, "MiB": 2**20, "GiB": 2**30}


def _gpu(name: str, marketed: str, smi_mib: int, torch_total: tuple[float, str], source: str, note: str = "") -> GpuModel:
    """The one place a published figure becomes bytes: ``torch_total`` is (value, unit) as it was printed
    (torch's ``_CudaDeviceProperties`` prints ``total_memory`` in MiB, rounded down, labelled "MB";
    its out-of-memory message prints GiB with two decimals)."""
    value, unit = torch_total
    return GpuModel(name, marketed, smi_mib, int(value * _UNIT_BYTES[unit]), source, note)


# Each GPU's memory as sold, as nvidia-smi shows it and as torch sees it, with where each figure comes from.
# torch's total varies a little with the driver (T4 logs print 15,079 to 15,109 MiB): a figure is one reading.
GPUS: dict[str, GpuModel] = {
    g.name: g
    for g in (
        _gpu("T4", "16 GB", 15_360, (15_095, "MiB"),
             "a public Colab T4 log (driver 550.54.15, Jan 2026) printing nvidia-smi's 15360MiB (ECC on) and "
             "torch's total_memory=15095MB", "free Colab"),
        _gpu("L4", "24 GB", 23_034, (22.17, "GiB"),
             "nvidia-smi 23034MiB in public L4 logs (ECC on); torch: 'total capacity of 22.17 GiB' in a PyTorch "
             "out-of-memory message on an L4 (two decimals of GiB: +-5 MiB)"),
        _gpu("RTX 4090", "24 GB", 24_564, (24_563, "MiB"),
             "nvidia-smi 24564MiB and torch's total_memory=24563MB in public RTX 4090 logs (no ECC)"),
        _gpu("A100 40GB", "40 GB", 40_960, (40_536, "MiB"),
             "nvidia-smi 40960MiB in public A100-SXM4-40GB logs; total_memory=40536MB in Paddle's "
             "get_device_properties docs (the same CUDA totalGlobalMem torch reads)"),
        _gpu("A100 80GB", "80 GB", 81_920, (79.15, "GiB"),
             "nvidia-smi 81920MiB (A100 80GB); torch: 'total capacity of 79.15 GiB', the total PyTorch's "
             "out-of-memory message prints on 80 GB A100s in public logs (two decimals of GiB: +-5 MiB)"),
        _gpu("H100", "80 GB", 81_559, (81_089, "MiB"),
             "nvidia-smi 81559MiB (H100 80GB HBM3); torch's total_memory=81089MB in a public log "
             "(torch 2.7.0, CUDA 12.8; others print 81,082-81,090 MiB)"),
        _gpu("H200", "141 GB", 143_771, (150_109_880_320, "B"),
             "measured by the lab on an H200 (driver 580.159.04, torch 2.11.0+cu130, 2026-12-04): nvidia-smi "
             "143771MiB, total_memory 150,109,880,320 bytes (benchmarks/gpu_memory_h200.json)"),
    )
}


@dataclass(frozen=True)
class _Assumption:
    bytes: int
    source: str


# The runtime's own memory before any tensor: the CUDA context and cuBLAS workspaces of one process.
# Not measurable without a GPU, so an ASSUMPTION off CUDA; on a GPU, pass the measured figure
# (bsl.hardware.cuda_context_bytes(), NVML before and after the first CUDA call).
RUNTIME_OVERHEAD = _Assumption(
    500 * 1000**2,
    "assumed 500 MB: a CUDA context + cuBLAS workspace is ~0.3-0.6 GB per process depending on GPU and driver "
    "(PyTorch CUDA semantics notes; tools/gpu_check.py measures it); on a GPU pass "
    "overhead_bytes=bsl.hardware.cuda_context_bytes()")


_BLOCK = 64  # bitsandbytes' 4-bit weight blocksize
_NESTED_BLOCK = 256  # double quantization: one float32 absmax per 256 first-level absmax values
_CODE_4BIT = 16  # float32 entries of the nf4/fp4 code book (quant_map), one per layer
_CODE_NESTED = 256  # float32 entries of the 8-bit dynamic map of nested absmax (+ one float32 offset)


_BF16 = int(bytes_per_element("bfloat16"))


def _linear_bytes(weight_numel: int, out_features: int, quantization: Quantization, cpu_packed: bool = False) -> int:
    """Bytes bitsandbytes stores for one nn.Linear weight (bias excluded: it stays in the compute dtype).

    ``cpu_packed``: the layout bitsandbytes (>= 0.49) switches a 4-bit layer to at its first forward pass on a
    CPU with AVX512-BF16: the same packed codes in another order, the absmax as one bfloat16 per block
    (double quantization undone: the nested state is dropped, its float32 offset stays), the code book kept.
    """
    if quantization is Quantization.INT8:
        return weight_numel + _F32 * out_features  # int8 weight + float32 SCB per row
    blocks = math.ceil(weight_numel / _BLOCK)
    packed = math.ceil(weight_numel / 2) + _F32 * _CODE_4BIT
    if cpu_packed:
        return packed + _BF16 * blocks + (_F32 if quantization is Quantization.NF4_DOUBLE else 0)
    if quantization is Quantization.NF4_DOUBLE:
        return packed + blocks + _F32 * math.ceil(blocks / _NESTED_BLOCK) + _F32 * _CODE_NESTED + _F32
    return packed + _F32 * blocks


def _matches(name: str, patterns) -> bool:
    from transformers.quantizers.quantizers_utils import should_convert_module

    return bool(patterns) and not should_convert_module(name, list(patterns))


def _param_bytes(model: torch.nn.Module, name: str, numel: int, dtype: str) -> int:
    """Bytes of one parameter in ``dtype``, honouring the modules transformers keeps in float32."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or ()
    strict = getattr(model, "_keep_in_fp32_modules_strict", None) or ()
    module = name.rsplit(".", 1)[0]
    if (dtype == "float16" and _matches(module, keep)) or (dtype in ("float16", "bfloat16") and _matches(module, strict)):
        return numel * _F32
    return int(numel * bytes_per_element(dtype))


def _parameter_bytes(spec: ModelSpec, dtype: str, quant: Quantization | None, cpu_packed: bool = False):
    """(parameter name, bytes as loaded) for each parameter of the spec's meta model, tied tensors once."""
    import torch

    model = spec.meta
    if quant is not None and spec.kind != "transformers":
        raise LabError(f"quantization {quant.value!r} is counted for transformers models only; "
                       f"{shown(spec.name)} is a diffusers model")
    skip: set[str] = set()
    if quant is not None:
        from transformers.quantizers.base import get_keys_to_not_convert

        skip = set(get_keys_to_not_convert(model)) | set(getattr(model, "_keep_in_fp32_modules", None) or ())
    counted: set[int] = set()
    for module_name, module in model.named_modules():
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in counted:
                continue
            counted.add(id(param))
            full = f"{module_name}.{param_name}" if module_name else param_name
            quantized = (quant is not None and type(module) is torch.nn.Linear and param_name == "weight"
                         and not _matches(module_name, skip))
            if quantized:
                yield full, _linear_bytes(param.numel(), module.out_features, quant, cpu_packed)
            else:
                yield full, _param_bytes(model, full, param.numel(), dtype)


def module_bytes(config: Any, dtype: str | torch.dtype = "bfloat16", quantization: str | None = None,
                 cpu_packed: bool = False) -> dict[str, int]:
    """Bytes of every module's parameters as loaded, keyed by module name ('' is the whole model),
    each tied tensor counted once (where it is first met): accelerate's ``compute_module_sizes`` idea,
    from the same rules as :func:`weights_bytes`.

    One Llama 3.2 1B decoder layer: q, o 2048 x 2048; k, v 2048 x 512; gate, up, down 2048 x 8192;
    two norms of 2048: 60,821,504 parameters x 2 bytes:

    >>> sizes = module_bytes("llama-3.2-1b", "bfloat16")
    >>> sizes[""], sizes["model.layers.0"]
    (2471628800, 121643008)
    """
    spec = resolve(config)
    dtype = dtype_name(dtype, allowed=WEIGHT_DTYPES)
    quant = Quantization.parse(quantization)
    if not isinstance(cpu_packed, bool):
        raise LabError.bad("cpu_packed", cpu_packed, "use True or False", verb="is not a flag")
    packed = cpu_packed and quant not in (None, Quantization.INT8)
    if spec.facts is not None and not packed:
        stored = spec.facts.module_bytes(dtype, quant.value if quant else None)
        if stored is not None:  # what this function computed from the meta model when the facts were written
            return dict(stored)
    sizes: dict[str, int] = {"": 0}
    for name, size in _parameter_bytes(spec, dtype, quant, packed):
        parts = name.split(".")[:-1]
        for i in range(len(parts) + 1):
            prefix = ".".join(parts[:i])
            sizes[prefix] = sizes.get(prefix, 0) + size
    return sizes


def weights_bytes(config: Any, dtype: str | torch.dtype = "bfloat16", quantization: str | None = None) -> int:
    """Bytes of the weights as loaded: parameters x bytes per parameter, each tied tensor once.

    ``quantization`` (None, "int8", "nf4", "fp4", "nf4-double") counts what bitsandbytes really
    stores: every nn.Linear except the ones transformers leaves alone (the output embedding
    ``lm_head``, tied weights and ``_keep_in_fp32_modules``) becomes int8 + a float32 scale per row,
    or packed 4-bit + a float32 absmax per 64 weights (8-bit with double quantization) + the code
    book; embeddings, norms and biases stay in ``dtype``. ``get_memory_footprint()`` leaves the 4-bit
    absmax and code books out; this function counts them. Buffers (rotary tables) are not counted:
    checkpoints do not store them.

    >>> weights_bytes("llama-3.1-8b", "bfloat16", "int8")   # embeddings + lm_head stay bf16: 2.1 GB
    9086705664
    >>> weights_bytes("llama-3.1-8b", "bfloat16", "nf4")
    6027761664
    """
    return module_bytes(config, dtype, quantization)[""]


def cpu_packed_weights_bytes(config: Any, dtype: str | torch.dtype = "bfloat16", quantization: str | None = None) -> int:
    """Bytes of the weights after bitsandbytes repacks its 4-bit layers for a CPU with AVX512-BF16.

    At the first forward pass on such a CPU (``grep avx512_bf16 /proc/cpuinfo``), bitsandbytes >= 0.49
    reorders each 4-bit layer's codes for its fused kernel and stores the absmax as bfloat16 instead
    of float32: nf4 and fp4 shrink by 2 bytes per block of 64 weights; double quantization is undone
    (8-bit absmax + nested state become bfloat16 absmax), so nf4-double grows. int8 and unquantized
    weights do not change. On other CPUs and on GPUs the layout stays :func:`weights_bytes`.

    >>> weights_bytes("llama-3.1-8b", "bfloat16", "nf4") - cpu_packed_weights_bytes("llama-3.1-8b", "bfloat16", "nf4")
    218103808
    """
    return module_bytes(config, dtype, quantization, cpu_packed=True)[""]


def largest_layer_bytes(config: Any, dtype: str | torch.dtype = "bfloat16", quantization: str | None = None) -> int:
    """Bytes of the biggest piece that must stay whole on one device: a module the model lists in
    ``_no_split_modules`` (a decoder layer, with its residual connection) or a lone module such as
    the embedding. Big Model Inference needs this much free on a device to place anything there.

    >>> largest_layer_bytes("llama-3.2-1b")          # the tied embedding, 128,256 x 2048 x 2 bytes
    525336576
    """
    spec = resolve(config)
    model = spec.meta
    no_split = set(getattr(model, "_no_split_modules", None) or ())
    classes = {name: type(module).__name__ for name, module in model.named_modules()}
    groups: dict[str, int] = {}
    for name, size in _parameter_bytes(spec, dtype_name(dtype, allowed=WEIGHT_DTYPES), Quantization.parse(quantization)):
        parts = name.split(".")[:-1]
        prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
        group = next((p for p in prefixes if classes.get(p) in no_split), ".".join(parts))
        groups[group] = groups.get(group, 0) + size
    return max(groups.values())


def _kv_layout(spec: ModelSpec) -> tuple[int, int, list[int | None]]:
    """(KV heads, head dim, per layer: sliding window or None for full attention)."""
    if spec.kind != "transformers":
        raise LabError(f"config {shown(spec.name)} is a diffusers model: it has no KV cache (only decoders "
                       "that generate token by token keep one)")
    if not spec.generates:
        raise LabError(f"config {shown(spec.name)} is an encoder ({spec.class_name}): it reads the whole "
                       "input at once and keeps no KV cache")
    layout = spec.attention  # derived once, in the zoo, with the defaults every planner shares
    if layout is None:
        raise LabError(f"config {shown(spec.name)} has no attention heads: it keeps no KV cache")
    return layout.kv_heads, layout.head_dim, list(layout.windows)


def kv_cache_bytes(config: Any, seq_len: int, batch_size: int = 1, dtype: str | torch.dtype = "bfloat16") -> int:
    """Bytes of the KV cache after ``seq_len`` tokens: 2 (K and V) x layers x KV heads x head dim x
    tokens x batch x bytes per element.

    Grouped-query attention is honoured (KV heads, not query heads) and an explicit ``head_dim``
    wins over hidden_size / heads. Models with sliding-window layers (Gemma 2 alternates 4096-token
    windows with full attention) are counted as transformers' ``DynamicCache`` allocates them:
    a sliding layer keeps only its last ``sliding_window - 1`` tokens. Encoders (T5's encoder, CLIP's
    text model) and diffusers models keep no KV cache: one sentence says so.

    >>> kv_cache_bytes("gemma-2-9b", seq_len=8192) // 2**20   # 21 full + 21 sliding layers
    2015
    """
    seq_len = whole_number(seq_len, "seq_len")
    batch_size = whole_number(batch_size, "batch_size")
    dtype = dtype_name(dtype, allowed=WEIGHT_DTYPES + ("int8", "int4"))
    n_kv_heads, head_dim, windows = _kv_layout(resolve(config))
    tokens = sum(seq_len if w is None else min(seq_len, w - 1) for w in windows)
    return int(KV_TENSORS * n_kv_heads * head_dim * tokens * batch_size * bytes_per_element(dtype))


ATTN_IMPLEMENTATIONS = ("sdpa", "eager")  # fused (no seq x seq tensor), and transformers' eager_attention_forward


def _attn_implementation(value: Any) -> str:
    if not isinstance(value, str) or value.strip().lower() not in ATTN_IMPLEMENTATIONS:
        raise LabError.bad("attn_implementation", value, "use 'sdpa' (fused attention: transformers' default, no "
                           "seq x seq tensor) or 'eager' (the scores materialised)", verb="is not known")
    return value.strip().lower()


def attention_scores_bytes(config: Any, seq_len: int, batch_size: int = 1,
                           dtype: str | torch.dtype = "bfloat16") -> int:
    """What eager attention adds to one layer's peak over a fused kernel (SDPA, flash), in bytes.

    transformers' ``eager_attention_forward`` (Llama's, read in 5.25) materialises the scores
    ``q @ k^T`` of shape (batch, heads, seq, seq) in ``dtype``, adds the causal mask (batch, 1, seq,
    seq), then calls ``softmax(scores, dtype=torch.float32)``: torch casts the scores to a float32 copy
    and writes a float32 result, so at that moment the masked scores (``dtype``), the float32 copy and
    the float32 softmax are alive at once (no copy when ``dtype`` is float32 already; CUDA fuses the cast
    for float16 only, so there the estimate is 4 bytes per score high). Measured (bigsmall-small, 16
    heads, 2,048 tokens, bf16): 9.7 bytes per score on an H200 against the 10 counted here.

    >>> attention_scores_bytes("llama-3.1-8b", 4096) / 2**30    # 32 heads x 4096^2 x (2 + 4 + 4) + mask
    5.03125
    """
    spec = resolve(config)
    seq_len = whole_number(seq_len, "seq_len")
    batch_size = whole_number(batch_size, "batch_size")
    width = int(bytes_per_element(dtype_name(dtype, allowed=WEIGHT_DTYPES)))
    if spec.kind != "transformers":
        raise LabError(f"config {shown(spec.name)} is a diffusers model: its attention is not modelled here")
    per_score = width + (0 if width == _F32 else _F32) + _F32  # masked scores + float32 copy + float32 softmax
    scores = batch_size * spec.text_config.num_attention_heads * seq_len * seq_len
    mask = batch_size * seq_len * seq_len * width
    return int(scores * per_score + mask)


def activation_bytes(config: Any, seq_len: int, batch_size: int = 1, dtype: str | torch.dtype = "bfloat16",
                     all_logits: bool = False, attn_implementation: str = "sdpa") -> int:
    """A forward pass's transient memory without gradients (inference), estimated in ``dtype``.

    What it models, per sequence of ``seq_len`` tokens:

    - one decoder layer at a time (no gradients: a layer's tensors are freed before the next runs);
      its peak is the eager Llama MLP, which holds act(gate), up and their product at once:
      3 x intermediate x tokens, plus the residual stream and its normed copy: 2 x hidden x tokens;
    - the logits over the vocabulary, in the model's dtype (transformers 5 returns bf16 logits for a
      bf16 model): of the last position only, plus the float32 copy ``generate()`` keeps of it
      (the default), or of every position with ``all_logits`` (a plain ``model(ids)`` call).

    The two are added, not maxed: a caching allocator (CUDA's, glibc's) rarely hands the MLP's freed
    blocks to the much larger logits tensor. ``attn_implementation``: "sdpa" (the default, and what
    ``from_pretrained`` picks in transformers 5) does not materialise seq x seq; "eager" adds
    :func:`attention_scores_bytes` (batch x heads x seq^2 scores, their float32 softmax, the mask).
    Not counted: the float32 copies inside RMSNorm, q/k/v, kernel workspaces and allocator slack
    (bigsmall-small at 2,048 tokens with SDPA peaked 2.0x this on an H200, 3.1x on a CPU), and
    everything training keeps.
    The lessons measure the real peak beside it.

    Llama 3.1 8B, 131,072 tokens, ``all_logits``: MLP 3 x 14,336 x 131,072 x 2 B = 11.3 GB, residual
    2.1 GB, logits 131,072 x 128,256 x 2 B = 33.6 GB:

    >>> round(activation_bytes("llama-3.1-8b", 131072, all_logits=True) / 1e9, 1)
    47.0
    """
    spec = resolve(config)
    seq_len = whole_number(seq_len, "seq_len")
    batch_size = whole_number(batch_size, "batch_size")
    dtype = dtype_name(dtype, allowed=WEIGHT_DTYPES)
    if not isinstance(all_logits, bool):
        raise LabError.bad("all_logits", all_logits, "use True or False", verb="is not a bool")
    attn = _attn_implementation(attn_implementation)
    if spec.kind != "transformers":
        raise LabError(f"config {shown(spec.name)} is a diffusers model: its activations depend on the image "
                       "size and steps, which this estimate does not model")
    text = spec.text_config
    width = bytes_per_element(dtype)
    tokens = batch_size * seq_len
    intermediate = getattr(text, "intermediate_size", None) or 4 * text.hidden_size
    layer = tokens * (3 * intermediate + 2 * text.hidden_size) * width
    if attn == "eager":
        layer += attention_scores_bytes(spec, seq_len, batch_size, dtype)
    if not spec.has_output_embeddings:  # an encoder: no logits over a vocabulary
        logits = 0
    elif all_logits:
        logits = tokens * text.vocab_size * width
    else:
        logits = batch_size * text.vocab_size * (width + _F32)
    return int(layer + logits)


def fits(n_bytes: int, gpu: str | int | float) -> bool:
    """Whether ``n_bytes`` fit ``gpu``: a name from :data:`GPUS` ("T4"), a size ("24GB") or bytes.

    >>> fits(16_060_522_496, "T4"), fits(16_060_522_496, "24GB")
    (False, True)
    """
    return n_bytes <= _capacity(gpu)


def _capacity(gpu: str | int | float) -> int:
    if isinstance(gpu, str) and gpu in GPUS:
        return GPUS[gpu].usable_bytes
    try:
        return parse_size(gpu, argument="gpu")
    except LabError:
        hint = closest(gpu, GPUS) if isinstance(gpu, str) else ""
        raise LabError.bad("gpu", gpu, f"use a GPU name ({', '.join(GPUS)}) or a memory size like '24GB'",
                           verb="is not a GPU or a size" + hint) from None


@dataclass(frozen=True)
class MemoryEstimate:
    """What running a model needs, in bytes; ``total_bytes`` is their sum.

    ``overhead_source`` says where ``overhead_bytes`` comes from (an assumption off CUDA, a measurement
    on a GPU); ``notes`` says what was left out or looks wrong (a context beyond the model's trained
    length, a diffusers model without KV cache).
    """

    config: str
    dtype: str
    quantization: str | None
    seq_len: int
    batch_size: int
    parameters: int
    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    overhead_bytes: int
    overhead_source: str = ""
    notes: tuple[str, ...] = ()

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.activation_bytes + self.overhead_bytes

    def fits(self, gpu: str | int | float) -> bool:
        """Whether the total fits ``gpu``: a name from ``GPUS`` ("T4"), a size ("24GB") or bytes."""
        return fits(self.total_bytes, gpu)

    def fits_table(self) -> dict[str, bool]:
        return {name: self.fits(name) for name in GPUS}

    def as_dict(self) -> dict:
        return {**asdict(self), "notes": list(self.notes), "total_bytes": self.total_bytes, "fits": self.fits_table()}


def _overhead(overhead_bytes: Any, overhead_source: str | None) -> tuple[int, str]:
    if overhead_bytes is None:
        return RUNTIME_OVERHEAD.bytes, RUNTIME_OVERHEAD.source
    if isinstance(overhead_bytes, bool) or not isinstance(overhead_bytes, numbers.Real) or not (
            math.isfinite(overhead_bytes) and overhead_bytes >= 0):
        raise LabError.bad("overhead_bytes", overhead_bytes, "use a number of bytes >= 0, or None for the "
                           "assumed CUDA context", verb="is not a size")
    return int(overhead_bytes), overhead_source or "given by the caller"


def estimate(config: Any, dtype: str | torch.dtype = "bfloat16", quantization: str | None = None,
             seq_len: int = 4096, batch_size: int = 1, overhead_bytes: int | None = None,
             overhead_source: str | None = None, attn_implementation: str = "sdpa") -> MemoryEstimate:
    """Weights + KV cache (in ``dtype``) + a forward pass's activations + runtime overhead.

    The config is resolved once. ``overhead_bytes``: the runtime's own memory; None takes the
    labelled assumption :data:`RUNTIME_OVERHEAD` (500 MB); on a GPU pass the measured
    ``bsl.hardware.cuda_context_bytes()``; 0 to compare with torch's own counters. The overhead is the
    only place the CUDA context is counted: a GPU's capacity in :data:`GPUS` is what torch sees before
    it. ``attn_implementation`` ("sdpa" or "eager") goes to :func:`activation_bytes`. A diffusers model
    (the FLUX transformer) gets its weights and overhead, and a note: no KV cache, activations not
    modelled.

    >>> e = estimate("llama-3.1-8b", seq_len=4096)
    >>> e.fits("T4"), e.fits("L4")
    (False, True)
    """
    spec = resolve(config)
    quant = Quantization.parse(quantization)
    kv_dtype = dtype_name(dtype, allowed=WEIGHT_DTYPES)
    seq_len = whole_number(seq_len, "seq_len")
    batch_size = whole_number(batch_size, "batch_size")
    attn = _attn_implementation(attn_implementation)
    overhead, source = _overhead(overhead_bytes, overhead_source)
    notes: list[str] = []
    if spec.kind == "transformers":
        kv = kv_cache_bytes(spec, seq_len, batch_size, kv_dtype) if spec.generates else 0
        if not kv:
            notes.append(f"{spec.class_name} is an encoder: no KV cache")
        activations = activation_bytes(spec, seq_len, batch_size, kv_dtype, attn_implementation=attn)
        trained = getattr(spec.text_config, "max_position_embeddings", None)
        if isinstance(trained, int) and seq_len > trained:
            notes.append(f"seq_len {seq_len:,} is beyond max_position_embeddings {trained:,}: the model was not "
                         "built for that context, so its output there is not trustworthy")
    else:
        kv = activations = 0
        notes.append("a diffusers model: no KV cache, and its activations (which depend on image size) are not "
                     "modelled; weights and overhead only")
    return MemoryEstimate(
        config=spec.name, dtype=kv_dtype, quantization=quant.value if quant else None, seq_len=seq_len,
        batch_size=batch_size, parameters=spec.parameters,
        weights_bytes=weights_bytes(spec, kv_dtype, quant), kv_cache_bytes=kv, activation_bytes=activations,
        overhead_bytes=overhead, overhead_source=source, notes=tuple(notes),
    )


def longest_context(config: Any, gpu: str | int | float, dtype: str | torch.dtype = "bfloat16",
                    quantization: str | None = None, batch_size: int = 1, overhead_bytes: int | None = None,
                    attn_implementation: str = "sdpa") -> int:
    """The longest context (tokens) at which :func:`estimate`'s total (weights + KV cache + activations +
    the CUDA context, once) still fits ``gpu``: a name from :data:`GPUS`, a size or bytes; 0 when not
    even one token fits. The total grows with every token, so a bisection finds the exact edge.

    Mistral 7B in bf16 on a T4: 14.50 GB of weights leave ~0.83 GB beside the assumed 0.5 GB context,
    at 131,072 B of KV cache and 102,400 B of activations per token:

    >>> n = longest_context("mistral-7b-v0.3", "T4")
    >>> n, estimate("mistral-7b-v0.3", seq_len=n).fits("T4"), estimate("mistral-7b-v0.3", seq_len=n + 1).fits("T4")
    (3563, True, False)
    """
    spec = resolve(config)
    capacity = _capacity(gpu)

    def fits_at(n: int) -> bool:
        return estimate(spec, dtype, quantization, n, batch_size, overhead_bytes,
                        attn_implementation=attn_implementation).total_bytes <= capacity

    if not fits_at(1):
        return 0
    low, high = 1, 2  # fits at low; high is probed next
    while fits_at(high):
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits_at(middle) else (low, middle)
    return low


@dataclass(frozen=True)
class WeightsRow:
    config: str
    dtype: str
    quantization: str | None
    parameters: int
    weights_bytes: int

    def fits(self, gpu: str | int | float) -> bool:
        """Whether the weights alone fit ``gpu`` (a name from ``GPUS``, a size or bytes)."""
        return fits(self.weights_bytes, gpu)


def weights_table(configs, dtypes=("float32", "bfloat16"), quantizations=(None,)) -> list[WeightsRow]:
    """Weights' bytes of each config in each dtype (x each quantization), exact.

    >>> [r.weights_bytes for r in weights_table(["llama-3.2-1b"], ["float32", "bfloat16"])]
    [4943257600, 2471628800]
    """
    for argument, value in (("configs", configs), ("dtypes", dtypes), ("quantizations", quantizations)):
        if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
            raise LabError.bad(argument, value, "use a list, e.g. ['llama-3.2-1b']", verb="is not a list")
    rows = []
    for config in configs:
        spec = resolve(config)
        for dtype in dtypes:
            for quant in quantizations:
                quant = Quantization.parse(quant)
                rows.append(WeightsRow(spec.name, dtype_name(dtype, allowed=WEIGHT_DTYPES),
                                       quant.value if quant else None, spec.parameters,
                                       weights_bytes(spec, dtype, quant)))
    return rows


@dataclass(frozen=True)
class Comparison:
    """An estimate next to a measurement of the same thing, in bytes.

    >>> Comparison("weights", 100, 102).ratio
    1.02
    """

    label: str
    estimate_bytes: int
    measured_bytes: int
    measured_how: str = ""

    @property
    def ratio(self) -> float:
        """measured / estimate (1.0: the estimate was exact)."""
        return self.measured_bytes / self.estimate_bytes if self.estimate_bytes else math.inf

    def matches(self, tolerance: float = 0.0) -> bool:
        """True when the measurement is within ``tolerance`` (a fraction >= 0) of the estimate."""
        if isinstance(tolerance, bool) or not isinstance(tolerance, numbers.Real) or not tolerance >= 0 \
                or not math.isfinite(tolerance):
            raise LabError.bad("tolerance", tolerance, "use a fraction >= 0, e.g. 0.05 for 5 %", verb="is not a tolerance")
        return abs(self.measured_bytes - self.estimate_bytes) <= tolerance * abs(self.estimate_bytes)
