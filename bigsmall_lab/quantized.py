"""Runner of lesson 04b: load a model in bitsandbytes' formats and measure each one for real.

For every ``BitsAndBytesConfig`` given (None = the unquantized reference), :func:`run_variants`
loads the model once and measures what it holds (``get_memory_footprint()`` plus the quantization
state it leaves out), how far its next-token predictions move from the reference
(:func:`bigsmall_lab.quality.compare`: KL, top-1 agreement, perplexities), how fast it generates and
what it writes. :func:`linear_timings` takes one layer apart to show where the time of a quantized
matmul goes, :func:`outlier_experiment` runs LLM.int8()'s outlier decomposition on real activations,
and :func:`four_bit_path` / :func:`model_matmul_path` read which kernel a loaded model's layers run.

The maths lives in :mod:`bigsmall_lab.quant` and the formats' names, configs and kernel paths in
:mod:`bigsmall_lab.bnb_formats` (planners); this module only loads, runs and times.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from . import quant
from .measure import quant_state_tensors, stored_weight_bytes, unique_bytes
from ._errors import LabError, closest, whole_number
from .bnb_formats import FourBitPath, MatmulPath, estimator_name, matmul_path
# Re-exported from their homes since issue 19 split planning from running, so old imports keep working:
# import them from bigsmall_lab.bnb_formats (the planner of bitsandbytes' formats) and bigsmall_lab.gguf_file.
from .bnb_formats import Variant, bnb_4bit_bytes, bnb_config  # noqa: F401
from .gguf_file import GGUFBlocks, gguf_q4_1_blocks  # noqa: F401

__all__ = ["Footprint", "LinearTiming", "OutlierRow", "VariantResult", "avx512_bf16", "capture_inputs",
           "check_supported", "footprint", "forward_seconds", "four_bit_path", "int8_integer_kernel",
           "linear_timings", "model_matmul_path", "outlier_experiment", "rejected_keyword", "run_variants",
           "use_portable_4bit"]


def check_supported(config, device: str | None = None) -> None:
    """Raise one sentence when ``config`` cannot run on ``device`` (default: CUDA if attached, else CPU).

    bitsandbytes 0.50 runs int8, nf4 and fp4 on a CPU and on CUDA; fp8 weights
    (``FineGrainedFP8Config``, ``FbgemmFp8Config``) need a CUDA GPU.

    >>> from transformers import FineGrainedFP8Config
    >>> check_supported(FineGrainedFP8Config(), device="cpu")
    Traceback (most recent call last):
    ...
    bigsmall_lab._errors.LabError: quantization_config FineGrainedFP8Config needs a CUDA GPU (fp8 matmul kernels) and device is 'cpu'; on a CPU use BitsAndBytesConfig (int8, nf4 or fp4)
    """
    if config is None:
        return
    from transformers import BitsAndBytesConfig

    from .hardware import has_cuda

    kind = type(config).__name__
    where = str(device) if device is not None else ("cuda" if has_cuda() else "cpu")
    if isinstance(config, BitsAndBytesConfig):
        if where.split(":")[0] not in ("cpu", "cuda"):
            raise LabError(f"quantization_config {kind} runs here on 'cpu' or 'cuda', and device is {where!r}; "
                           "use device='cpu'")
        return
    if "fp8" in kind.lower():
        if where.startswith("cuda"):
            return
        raise LabError(f"quantization_config {kind} needs a CUDA GPU (fp8 matmul kernels) and device is {where!r}; "
                       "on a CPU use BitsAndBytesConfig (int8, nf4 or fp4)")
    raise LabError(f"quantization_config {kind} is not one the lab measures; use BitsAndBytesConfig (int8, nf4, fp4)"
                   " or None for the unquantized reference")


@contextlib.contextmanager
def _quiet_bnb() -> Iterator[None]:
    """bitsandbytes' int8 matmul logs "inputs will be cast ... to float16" on every call of every layer:
    thousands of lines. It says that the activations are quantized from float16; the lesson says it once."""
    logger = logging.getLogger("bitsandbytes")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _four_bit_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if type(m).__name__ in ("Linear4bit", "LinearNF4", "LinearFP4")]


def avx512_bf16() -> bool:
    """Whether bitsandbytes finds AVX512-BF16 on this CPU (the condition of its repacked 4-bit path)."""
    try:
        from bitsandbytes.functional import has_avx512bf16
    except ImportError:  # bitsandbytes < 0.49: one CPU path only
        return False
    return bool(has_avx512bf16())


def four_bit_path(model: torch.nn.Module) -> FourBitPath:
    """Which 4-bit path ``model`` takes (or took) on this machine; see :class:`FourBitPath`."""
    layers = _four_bit_layers(model)
    if not layers:
        return FourBitPath.NONE
    if any(getattr(getattr(m.weight, "quant_state", None), "packing_format_for_cpu", False) for m in layers):
        return FourBitPath.REPACKED
    on_cpu = layers[0].weight.device.type == "cpu"
    if on_cpu and any(getattr(m, "support_avx512bf16_for_cpu", False) for m in layers):
        return FourBitPath.PENDING
    return FourBitPath.PORTABLE


def use_portable_4bit(model: torch.nn.Module) -> int:
    """Keep ``model``'s 4-bit layers in the layout they were loaded in, on any CPU: the path every
    machine without AVX512-BF16 takes. Call it before the first forward pass; returns how many
    layers were switched. A model already repacked is refused (its first forward pass has run)."""
    if four_bit_path(model) is FourBitPath.REPACKED:
        raise LabError("model's 4-bit layers were already repacked for AVX512-BF16 by a forward pass; call "
                       "use_portable_4bit(model) right after loading, before running it")
    switched = 0
    for layer in _four_bit_layers(model):
        if getattr(layer, "support_avx512bf16_for_cpu", False):
            layer.support_avx512bf16_for_cpu = False
            switched += 1
    return switched


def int8_integer_kernel(device: str = "cpu") -> bool:
    """Whether bitsandbytes multiplies int8 codes with an integer kernel on ``device``: a CUDA kernel, or
    on a CPU the ``torch._int_mm`` kernel it registers only where torch runs AVX512 code (read from
    torch's dispatcher: is a CPU kernel registered for ``bitsandbytes::int8_linear_matmul``?)."""
    if str(device).startswith("cuda"):
        return True
    import bitsandbytes  # noqa: F401  (registers its kernels)

    return bool(torch._C._dispatch_has_kernel_for_dispatch_key("bitsandbytes::int8_linear_matmul", "CPU"))


def _cpu_hub_kernel() -> bool:
    try:
        from bitsandbytes.backends.cpu import ops
    except ImportError:
        return False
    return getattr(ops, "gemm_4bit_forward_kernel", None) is not None


def model_matmul_path(model: torch.nn.Module) -> MatmulPath:
    """The path ``model``'s quantized layers take here (call it after a forward pass: a 4-bit model on an
    AVX512-BF16 CPU repacks at its first one). A model without bitsandbytes layers gets the bf16 path."""
    kinds = {type(m).__name__ for m in model.modules()}
    param = next(model.parameters())
    device = param.device.type
    if "Linear8bitLt" in kinds:
        return matmul_path("int8", device, int8_integer=int8_integer_kernel(device))
    if kinds & {"Linear4bit", "LinearNF4", "LinearFP4"}:
        state = getattr(_four_bit_layers(model)[0].weight, "quant_state", None)
        return matmul_path("4-bit", device, four_bit_path(model), cpu_hub_kernel=_cpu_hub_kernel(),
                           quant_type=getattr(state, "quant_type", "nf4"))
    return matmul_path("bf16", device)


# --- footprint ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Footprint:
    """What a loaded model holds, in bytes.

    ``memory_footprint_bytes`` is transformers' ``get_memory_footprint()`` (parameters and buffers);
    it leaves out bitsandbytes' quantization state (int8: one float32 scale per output row; 4-bit:
    absmax per block of 64, the code book, the nested absmax of double quantization), counted in
    ``quant_state_bytes``. ``total_bytes`` is both together.
    """

    memory_footprint_bytes: int
    quant_state_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.memory_footprint_bytes + self.quant_state_bytes


def footprint(model: torch.nn.Module) -> Footprint:
    """Footprint of a loaded model: ``get_memory_footprint()`` + the quantization state it omits.

    >>> import bigsmall_lab as bsl
    >>> fp = footprint(bsl.load_model(dtype="bfloat16"))
    >>> fp.quant_state_bytes, fp.total_bytes == fp.memory_footprint_bytes
    (0, True)
    """
    return Footprint(int(model.get_memory_footprint()), unique_bytes(quant_state_tensors(model)))


# The old name of measure.stored_weight_bytes (parameters + quantization state, each storage once: what the
# estimator's weights_bytes predicts), kept so old code runs: one count, one name, bsl.stored_weight_bytes.
stored_bytes = stored_weight_bytes


# --- the variants, measured -----------------------------------------------------------------------

@dataclass(frozen=True)
class VariantResult:
    """One loaded variant, measured. ``agreement`` is None for the reference itself."""

    name: str
    quantization: str | None  # the estimator's name ("int8", "nf4", ...), None for the reference
    footprint: Footprint
    estimate_bytes: int | None  # bsl.weights_bytes(model, dtype, quantization): weights + quant state
    stored_bytes: int  # parameters + quant state (``bsl.stored_weight_bytes``): what the estimate predicts
    stored_after_forward_bytes: int  # the same after the first forward passes (bitsandbytes may repack 4-bit)
    four_bit_path: FourBitPath  # which 4-bit path ran (REPACKED: the AVX512-BF16 CPU kernel)
    estimate_after_forward_bytes: int | None  # the estimate for that path (estimates.cpu_packed_weights_bytes)
    agreement: Any  # quality.Agreement against the reference
    perplexity: float
    load_s: float
    generate_s: float
    new_tokens: int
    text: str
    forward_s: Mapping[int, float] | None = None  # tokens -> median seconds per forward (:func:`forward_seconds`)
    matmul: MatmulPath | None = None  # how its quantized layers multiply here (:func:`model_matmul_path`)

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.generate_s if self.generate_s > 0 else math.inf

    @property
    def estimate_ratio(self) -> float | None:
        """measured / estimated bytes (1.0: the estimator counted exactly)."""
        return self.stored_bytes / self.estimate_bytes if self.estimate_bytes else None


def _generate(model, tokenizer, prompt: str, new_tokens: int) -> tuple[str, float]:
    enc = tokenizer(prompt, return_tensors="pt")
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    elapsed = time.perf_counter() - start
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True), elapsed


@torch.no_grad()
def forward_seconds(model: torch.nn.Module, ids: torch.Tensor, tokens: tuple[int, ...] = (1, 128),
                    repeat: int = 5) -> dict[int, float]:
    """Median seconds of one forward pass of ``model`` over the first ``n`` tokens of ``ids``, for each
    ``n`` in ``tokens`` (1: what a generation step multiplies, without its cache; 128: a prompt). One
    warm-up call first; no KV cache. A median of a few calls, on a shared machine: expect noise."""
    from ._errors import token_ids

    ids = token_ids(ids)
    repeat = whole_number(repeat, "repeat", minimum=1)
    sizes = [whole_number(n, "tokens", minimum=1) for n in tokens]
    if max(sizes) > ids.shape[1]:
        raise LabError(f"tokens asks for {max(sizes)} tokens and ids holds {ids.shape[1]}; give more ids")
    device = next(model.parameters()).device
    out = {}
    with _quiet_bnb():
        for n in sizes:
            x = ids[:, :n].to(device)
            out[n] = _median_seconds(lambda: model(x, use_cache=False), repeat, device)
    return out


def rejected_keyword(model_name: str, **kwargs: Any) -> str | None:
    """The one-line error ``AutoModelForCausalLM.from_pretrained(path, **kwargs)`` raises for a lab model,
    or None when it accepts ``kwargs`` (the model it loaded is dropped). transformers 5 rejects
    ``load_in_8bit=True``, which older posts pass straight to ``from_pretrained``:

    >>> "load_in_8bit" in rejected_keyword("bigsmall-tiny", load_in_8bit=True)
    True
    >>> rejected_keyword("bigsmall-tiny", dtype=torch.float32) is None
    True
    """
    from transformers import AutoModelForCausalLM

    from .zoo import model_path

    if not kwargs:
        raise LabError("kwargs is empty; give the keyword to try, e.g. load_in_8bit=True")
    try:
        model = AutoModelForCausalLM.from_pretrained(model_path(model_name), **kwargs)
    except (TypeError, ValueError) as err:
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    del model
    return None


def run_variants(model_name: str, configs: Mapping[str, Any], ids: torch.Tensor, prompt: str,
                 new_tokens: int = 12, dtype: torch.dtype = torch.bfloat16, device: str | None = None,
                 reference: torch.nn.Module | None = None, progress: bool = True,
                 time_tokens: tuple[int, ...] = (1, 128), repeat: int = 5) -> list[VariantResult]:
    """Load ``model_name`` once per entry of ``configs`` (name -> ``BitsAndBytesConfig`` or None)
    and measure each against the reference: the one entry whose config is None (``reference``, when
    given, is that model already loaded in ``dtype``: it is not loaded twice).

    Each quantized model is freed before the next one loads, so at most the reference and one
    variant are in memory. ``ids``: evaluation tokens (``quality.heldout_ids``); ``prompt``: the
    text every variant continues greedily for ``new_tokens`` tokens (the time includes the prompt).
    Each variant's forward pass is timed over ``time_tokens`` tokens (median of ``repeat``,
    :func:`forward_seconds`; empty: not timed) after scoring, so 4-bit layers have taken their path.
    """
    from . import quality
    from .estimates import cpu_packed_weights_bytes, weights_bytes
    from .hardware import has_cuda
    from .zoo import load_model, load_tokenizer, model_path

    if not configs:
        raise LabError("configs is empty; give at least one name -> BitsAndBytesConfig (or None for the reference)")
    names = list(configs)
    if sum(configs[n] is None for n in names) != 1:
        raise LabError("configs needs exactly one reference entry, the unquantized model (name -> None), "
                       f"and has {sum(configs[n] is None for n in names)}; e.g. {{'bf16': None, 'int8': ...}}")
    device = device or ("cuda" if has_cuda() else "cpu")
    for name in names:  # every config is checked before anything loads: fail in seconds, not minutes
        check_supported(configs[name], device)
    new_tokens = int(new_tokens)
    tokenizer = load_tokenizer(model_name)
    path = model_path(model_name)
    names.sort(key=lambda n: configs[n] is not None)  # the reference first: the others are compared with it
    results: list[VariantResult] = []
    reference_logprobs = None
    with _quiet_bnb():
        for name in names:
            config = configs[name]
            start = time.perf_counter()
            model = reference if (config is None and reference is not None) else load_model(
                model_name, dtype=dtype, device_map=device, quantization_config=config)
            load_s = time.perf_counter() - start
            # footprint before any forward pass: what loading put in memory
            held, stored = footprint(model), stored_weight_bytes(model)
            logprobs = quality.next_token_logprobs(model, ids)
            after, path_taken = stored_weight_bytes(model), four_bit_path(model)
            if reference_logprobs is None:  # the reference is scored once, not once per variant
                reference_logprobs, agreement, ppl = logprobs, None, quality.agreement(logprobs, logprobs, ids).reference_ppl
            else:
                agreement = quality.agreement(reference_logprobs, logprobs, ids)
                ppl = agreement.candidate_ppl
            matmul = model_matmul_path(model)
            forward_s = forward_seconds(model, ids, time_tokens, repeat) if time_tokens else None
            text, gen_s = _generate(model, tokenizer, prompt, new_tokens)
            q_name = estimator_name(config)
            estimate = weights_bytes(path, dtype, q_name) if (config is None or q_name) else None
            estimate_after = (cpu_packed_weights_bytes(path, dtype, q_name)
                              if path_taken is FourBitPath.REPACKED and q_name else estimate)
            results.append(VariantResult(name, q_name, held, estimate, stored, after, path_taken, estimate_after,
                                         agreement, ppl,
                                         load_s, gen_s, new_tokens, text, forward_s, matmul))
            if progress:
                print(f"{name}: loaded in {load_s:.1f} s, {ids.shape[1]} tokens scored, {new_tokens} generated in "
                      f"{gen_s:.1f} s", flush=True)
            if config is not None:
                del model
                gc.collect()
    return results


# --- where the time goes --------------------------------------------------------------------------

@dataclass(frozen=True)
class LinearTiming:
    """Median seconds per call of one operation on one layer, for a batch of ``tokens`` rows."""

    operation: str
    tokens: int
    seconds: float
    part_of: str | None = None  # the whole operation this is a step of


def _median_seconds(fn, repeat: int, device: torch.device) -> float:
    def sync() -> None:  # CUDA calls return before the GPU is done: wait for it, or the time means nothing
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()  # warm-up: first calls allocate and pick kernels
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _bnb_layers(weight: torch.Tensor, dtype: torch.dtype):
    import bitsandbytes as bnb

    out_f, in_f = weight.shape
    dense = torch.nn.Linear(in_f, out_f, bias=False, dtype=dtype)
    dense.weight.data = weight.detach().to(dtype).clone()
    int8 = bnb.nn.Linear8bitLt(in_f, out_f, bias=False, has_fp16_weights=False, threshold=6.0)
    int8.weight = bnb.nn.Int8Params(weight.detach().to(dtype).clone(), requires_grad=False, has_fp16_weights=False)
    nf4 = bnb.nn.Linear4bit(in_f, out_f, bias=False, compute_dtype=dtype, quant_type="nf4")
    nf4.weight = bnb.nn.Params4bit(weight.detach().to(dtype).clone(), requires_grad=False, quant_type="nf4")
    device = weight.device if weight.device.type != "meta" else torch.device("cpu")
    # moving Int8Params / Params4bit to a device is what quantizes them
    portable = bnb.nn.Linear4bit(in_f, out_f, bias=False, compute_dtype=dtype, quant_type="nf4")
    portable.weight = bnb.nn.Params4bit(weight.detach().to(dtype).clone(), requires_grad=False, quant_type="nf4")
    portable.support_avx512bf16_for_cpu = False  # the path of every CPU without AVX512-BF16: never repacked
    return dense.to(device).eval(), int8.to(device).eval(), nf4.to(device).eval(), portable.to(device).eval()


_MAX_TIMED_TOKENS = 65_536  # a long prompt's rows; more is a memory request, not a timing


def _token_counts(tokens: Any, in_features: int, dtype: torch.dtype) -> tuple[int, ...]:
    """``tokens`` as whole numbers from 1 to 65,536, in one sentence otherwise: 0 rows crash bitsandbytes' CPU
    int8 kernel with a division by zero (SIGFPE kills the Jupyter kernel), and 1e9 rows would allocate terabytes."""
    allowed = f"use a tuple of whole numbers from 1 to {_MAX_TIMED_TOKENS:,}, e.g. (1, 128)"
    if isinstance(tokens, (str, bytes)) or not hasattr(tokens, "__iter__"):
        raise LabError.bad("tokens", tokens, allowed, verb="is not a tuple of token counts")
    counts = tuple(tokens)
    if not counts:
        raise LabError.bad("tokens", counts, allowed, verb="is empty")
    out = []
    for n in counts:
        n = whole_number(n, "tokens", minimum=1)
        if n > _MAX_TIMED_TOKENS:
            need = n * in_features * torch.empty((), dtype=dtype).element_size()
            raise LabError.bad("tokens", n, allowed + f" ({n:,} rows of {in_features:,} would need "
                               f"{need / 2**30:,.1f} GiB for the input alone)", verb="is too many rows")
        out.append(n)
    return tuple(out)


@torch.no_grad()
def linear_timings(weight: torch.Tensor, tokens: tuple[int, ...] = (1, 128), dtype: torch.dtype = torch.bfloat16,
                   repeat: int = 15) -> list[LinearTiming]:
    """Time one layer's matmul as a dense float32 and ``dtype`` layer, as bitsandbytes int8 and as nf4,
    and the extra steps inside the quantized ones: dequantizing the 4-bit weight, quantizing the
    activations to int8. ``tokens``: rows of the input (1: one generated token; 128: a prompt).

    On a CPU where bitsandbytes repacks 4-bit layers for its fused AVX512-BF16 kernel, "nf4" is that fused
    layer and "nf4, dequantize + matmul" the portable path of every other CPU, timed beside it; the
    "dequantize nf4 weight" step belongs to the portable path (the fused kernel never writes the weight out)."""
    import bitsandbytes.functional as F

    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise LabError(f"weight must be a 2-D weight matrix (out, in), not {type(weight).__name__}")
    tokens = _token_counts(tokens, weight.shape[1], dtype)
    repeat = whole_number(repeat, "repeat", minimum=1)
    dense, int8, nf4, portable = _bnb_layers(weight, dtype)
    device = dense.weight.device
    two_paths = device.type == "cpu" and bool(getattr(nf4, "support_avx512bf16_for_cpu", False))
    unfused = "nf4, dequantize + matmul" if two_paths else "nf4"
    dense32 = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device=device)
    dense32.weight.data = weight.detach().to(device=device, dtype=torch.float32)
    rows = []
    with _quiet_bnb():
        for n in tokens:
            x = torch.randn(n, weight.shape[1], dtype=dtype, device=device)
            if dtype != torch.float32:  # the plain float32 product: is the compute dtype itself fast here?
                x32 = x.float()
                rows.append(LinearTiming("fp32 matmul", n, _median_seconds(lambda: dense32(x32), repeat, device)))
            rows.append(LinearTiming(f"{_short(dtype)} matmul", n, _median_seconds(lambda: dense(x), repeat, device)))
            rows.append(LinearTiming("int8 (LLM.int8())", n, _median_seconds(lambda: int8(x), repeat, device)))
            rows.append(LinearTiming("quantize activations to int8", n,
                                     _median_seconds(lambda: F.int8_vectorwise_quant(x.half(), 6.0), repeat, device),
                                     part_of="int8 (LLM.int8())"))
            rows.append(LinearTiming("nf4", n, _median_seconds(lambda: nf4(x), repeat, device)))
            if two_paths:
                rows.append(LinearTiming(unfused, n, _median_seconds(lambda: portable(x), repeat, device)))
            state = portable.weight.quant_state
            rows.append(LinearTiming("dequantize nf4 weight", n,
                                     _median_seconds(lambda: F.dequantize_4bit(portable.weight.data, state), repeat,
                                                     device), part_of=unfused))
    return rows


def _short(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


# --- outliers -------------------------------------------------------------------------------------

@torch.no_grad()
def capture_inputs(model: torch.nn.Module, ids: torch.Tensor, module_names: str | list[str]):
    """The float32 input (tokens, in_features) each module of ``module_names`` receives when ``model``
    reads ``ids``, from one forward pass: a tensor for one name, a dict name -> tensor for a list."""
    names = [module_names] if isinstance(module_names, str) else list(module_names)
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules:
            linear = [n for n, m in modules.items() if isinstance(m, torch.nn.Linear)]
            raise LabError.bad("module_names", name, f"use modules of the model such as {linear[0]!r}"
                               f"{closest(name, linear)}", verb="is not in the model")
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, args, output):
            x = args[0].detach()
            seen[name] = x.reshape(-1, x.shape[-1]).float().cpu()
        return hook

    handles = [modules[n].register_forward_hook(keep(n)) for n in names]
    try:
        device = next(model.parameters()).device
        model(ids.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return seen[names[0]] if isinstance(module_names, str) else seen


@dataclass(frozen=True)
class OutlierRow:
    """One way of computing x @ W.T in int8, and how far it lands from the float result."""

    method: str
    by: str  # "teaching code (bigsmall_lab.quant)" or "bitsandbytes"
    token_error: float  # median over tokens of ||y_t - y_float,t|| / ||y_float,t||: what a typical token gets
    relative_error: float  # ||y - y_float|| / ||y_float|| over all tokens (large outputs dominate it)
    outlier_columns: int | None = None  # columns computed in float (threshold > 0)


def _errors(y: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    diff = y.float() - ref
    per_token = diff.norm(dim=1) / ref.norm(dim=1).clamp(min=1e-12)
    return float(per_token.median()), float(diff.norm() / ref.norm())


@torch.no_grad()
def outlier_experiment(weight: torch.Tensor, x: torch.Tensor, threshold: float = 6.0) -> list[OutlierRow]:
    """Multiply activations ``x`` (tokens, in) by ``weight`` (out, in) in int8 several ways and compare
    each with the float32 product: per-tensor int8, vector-wise int8, vector-wise with LLM.int8()'s
    outlier threshold (teaching code), and bitsandbytes' own ``Linear8bitLt`` without and with it.

    The error is measured per token: a few tokens with huge activations would otherwise dominate a
    single norm over all of them and hide what happens to every other token."""
    import bitsandbytes as bnb

    w = weight.detach().float().cpu()
    xs = x.detach().float().cpu()
    ref = xs @ w.T
    cols = int(((xs.abs() >= threshold).any(dim=0)).sum())
    teach = "teaching code (bigsmall_lab.quant)"
    rows = [
        OutlierRow("int8 per tensor", teach, *_errors(quant.int8_matmul(xs, w, "tensor"), ref)),
        OutlierRow("int8 vector-wise (per row)", teach, *_errors(quant.int8_matmul(xs, w, "channel"), ref)),
        OutlierRow(f"int8 vector-wise + outliers >= {threshold:g} in float", teach,
                   *_errors(quant.int8_matmul(xs, w, "channel", threshold), ref), cols),
    ]
    with _quiet_bnb():
        for th in (0.0, threshold):
            layer = bnb.nn.Linear8bitLt(w.shape[1], w.shape[0], bias=False, has_fp16_weights=False, threshold=th)
            layer.weight = bnb.nn.Int8Params(w.half().clone(), requires_grad=False, has_fp16_weights=False)
            layer = layer.to("cpu").eval()  # eval: training mode takes a dequantize-only path on CPU
            y = layer(xs.half())
            label = "Linear8bitLt, threshold=0 (vector-wise)" if th == 0 else f"Linear8bitLt, threshold={th:g}"
            rows.append(OutlierRow(label, "bitsandbytes", *_errors(y, ref), cols if th else None))
    return rows
