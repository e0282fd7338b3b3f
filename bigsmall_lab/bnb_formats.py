"""bitsandbytes' formats, planned: their names, the config that loads each, the kernel each runs.

The one home of the names of bitsandbytes' weight formats (:class:`Quantization`: ``int8``, ``nf4``,
``fp4``, ``nf4-double``): the estimator (:mod:`bigsmall_lab.estimates`), the placement planner, the
runner of lesson 04b (:mod:`bigsmall_lab.quantized`, whose :class:`Variant` adds the bf16 reference)
and the code books of :mod:`bigsmall_lab.quant` (``Scheme.NF4``, ``Scheme.FP4``) all read them here.

Pure: names in, a ``BitsAndBytesConfig``, a byte count or a :class:`MatmulPath` out; nothing is loaded
or run. What a loaded model really does is read by the runner (``quantized.model_matmul_path``).
torch and transformers are imported inside :func:`bnb_config` and :func:`bnb_4bit_bytes` only: the CLI plans
presets by these names without torch.

>>> [q.value for q in Quantization]
['int8', 'nf4', 'fp4', 'nf4-double']
>>> estimator_name(bnb_config("nf4-double"))
'nf4-double'
>>> matmul_path("4-bit", "cpu", FourBitPath.PORTABLE).fused   # dequantize the whole weight, then multiply
False
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from ._errors import LabError, closest

if TYPE_CHECKING:
    import torch

__all__ = ["FourBitPath", "MatmulPath", "Quantization", "Variant", "bnb_4bit_bytes", "bnb_config", "estimator_name",
           "matmul_path"]


class Quantization(str, Enum):
    """bitsandbytes formats for nn.Linear weights, as ``BitsAndBytesConfig`` makes them."""

    INT8 = "int8"  # load_in_8bit: int8 weight + one float32 scale per output row (SCB)
    NF4 = "nf4"  # load_in_4bit, nf4: two 4-bit codes per byte + one float32 absmax per 64 weights
    FP4 = "fp4"  # load_in_4bit, fp4: same storage as nf4, another 16-value code book
    NF4_DOUBLE = "nf4-double"  # nf4 + bnb_4bit_use_double_quant: absmax itself stored in 8 bits

    @classmethod
    def parse(cls, value: str | Quantization | None) -> Quantization | None:
        if value is None or isinstance(value, Quantization):
            return value
        allowed = ", ".join(q.value for q in cls)
        if not isinstance(value, str):
            raise LabError.bad("quantization", value, f"use None or one of: {allowed}", verb="is not a text")
        try:
            return cls(value.strip().lower())
        except ValueError:
            hint = closest(value.strip().lower(), [q.value for q in cls])
            raise LabError.bad("quantization", value, f"use None or one of: {allowed}",
                               verb="is not known" + hint) from None


class Variant(str, Enum):
    """The formats lesson 04b loads: the unquantized bf16 reference, then each :class:`Quantization`
    (the same names, read from there)."""

    BF16 = "bf16"
    INT8 = Quantization.INT8.value  # BitsAndBytesConfig(load_in_8bit=True): LLM.int8(), outlier threshold 6.0
    NF4 = Quantization.NF4.value  # load_in_4bit, bnb_4bit_quant_type="nf4"
    FP4 = Quantization.FP4.value  # load_in_4bit, bnb_4bit_quant_type="fp4"
    NF4_DOUBLE = Quantization.NF4_DOUBLE.value  # nf4 + bnb_4bit_use_double_quant=True: the absmax values in 8 bits too

    @property
    def quantization(self) -> Quantization | None:
        """The bitsandbytes format of this variant (None for the bf16 reference)."""
        return None if self is Variant.BF16 else Quantization(self.value)


def bnb_config(variant: Variant | Quantization | str, compute_dtype: torch.dtype | str | None = "bfloat16"):
    """The ``BitsAndBytesConfig`` of a variant (None for bf16); ``compute_dtype=None`` leaves the 4-bit
    compute dtype at transformers' default (the placement planner builds its meta model that way).
    A name (the default ``"bfloat16"``) becomes its torch dtype here, so importing this module needs no torch.

    >>> bnb_config("nf4").bnb_4bit_quant_type
    'nf4'
    """
    from transformers import BitsAndBytesConfig

    from ._dtypes import dtype_name, torch_dtype

    key = variant.value if isinstance(variant, Enum) else str(variant).strip().lower()
    names = [v.value for v in Variant]
    if key not in names:
        raise LabError.bad("variant", variant, f"use one of: {', '.join(names)}{closest(key, names)}",
                           verb="is not known")
    v = Variant(key)
    if v is Variant.BF16:
        return None
    if v is Variant.INT8:
        return BitsAndBytesConfig(load_in_8bit=True)
    if isinstance(compute_dtype, str):
        compute_dtype = torch_dtype(dtype_name(compute_dtype, argument="compute_dtype"))
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4" if v is Variant.FP4 else "nf4",
                              bnb_4bit_use_double_quant=v is Variant.NF4_DOUBLE, bnb_4bit_compute_dtype=compute_dtype)


def estimator_name(config) -> str | None:
    """The estimator's quantization name for a ``BitsAndBytesConfig`` (None: not quantized, or a
    combination the estimator does not count, such as fp4 with double quantization)."""
    if config is None:
        return None
    if getattr(config, "load_in_8bit", False):
        return Quantization.INT8.value
    if getattr(config, "load_in_4bit", False):
        kind = getattr(config, "bnb_4bit_quant_type", "fp4")
        double = getattr(config, "bnb_4bit_use_double_quant", False)
        if kind == "nf4":
            return Quantization.NF4_DOUBLE.value if double else Quantization.NF4.value
        return None if double else Quantization.FP4.value
    return None


def bnb_4bit_bytes(packed: torch.Tensor, state: Any) -> int:
    """Bytes of what ``bitsandbytes.functional.quantize_4bit`` returned: the packed codes, the absmax of every
    block and the 16-entry code book (with double quantization, the nested absmax, code book and offset too).

    >>> import bitsandbytes.functional as F
    >>> import torch
    >>> bnb_4bit_bytes(*F.quantize_4bit(torch.zeros(64, 64), blocksize=64))  # 2,048 + 64 x 4 + 16 x 4
    2368
    """
    import torch

    tensors = [packed, state.absmax, state.code]
    if getattr(state, "nested", False):
        tensors += [state.state2.absmax, state.state2.code, state.offset]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


# --- which 4-bit kernel runs ----------------------------------------------------------------------
# bitsandbytes >= 0.49 has two CPU paths for 4-bit layers. On a CPU with AVX512-BF16 each Linear4bit
# repacks its weight at its first forward pass (eval mode, no gradients) for a fused kernel that
# multiplies without writing the dequantized weight out first, storing its absmax as bfloat16
# (estimates.cpu_packed_weights_bytes). Elsewhere (and on GPUs, with their own fused kernels for one
# token at a time) the layout stays as loaded. Read in bitsandbytes 0.50.2, nn/modules.py: the
# choice is the layer's ``support_avx512bf16_for_cpu`` flag, set from the CPU when it is built.


class FourBitPath(str, Enum):
    """How a model's 4-bit layers run on this machine."""

    NONE = "none"  # no 4-bit layers
    PORTABLE = "portable"  # the layout as loaded: dequantize a block, then multiply (or a CUDA kernel)
    PENDING = "avx512-bf16, not yet repacked"  # will repack at the first forward pass on this CPU
    REPACKED = "avx512-bf16, repacked"  # repacked for the fused CPU kernel: absmax in bfloat16


# --- what a quantized layer's matmul does on this machine -----------------------------------------
# Read in bitsandbytes 0.50.2 (autograd/_functions.py, backends/{default,cpu,cuda}/ops.py):
# - 4-bit, portable layout (matmul_4bit -> gemm_4bit): no CPU kernel is registered for gemm_4bit, so the
#   default one runs: dequantize_4bit (bitsandbytes' C kernel) writes the whole weight out in the compute
#   dtype, then torch's F.linear multiplies. "Dequantize, then multiply" is literally true here.
# - 4-bit, repacked on an AVX512-BF16 CPU (quant_state.packing_format_for_cpu): matmul_4bit calls
#   gemv_4bit, whose CPU kernel multiplies bf16 activations straight from the 4-bit codes (a fused kernel:
#   kernels-community's gemm_4bit_forward when the `kernels` package loads it, else bitsandbytes' own
#   gemv_4bit_inference_cpu_{nf4,fp4}_bf16); no dequantized weight is ever written out.
# - 4-bit on CUDA: gemm_4bit picks a fused kernel for few tokens (a per-GPU heuristic) and dequantize +
#   F.linear for many.
# - int8 (MatMul8bitLt, eval mode): the activations are quantized row by row to int8 (int8_vectorwise_quant,
#   columns at or above the threshold kept aside), then int8_linear_matmul multiplies the integer codes:
#   on a CPU whose torch runs AVX512 code bitsandbytes registers torch._int_mm (int8 x int8 -> int32);
#   elsewhere the default kernel multiplies the codes as float32 and rounds back to int32. The int32 result
#   is rescaled by both sets of absmax; outlier columns are added back in 16 bits (dequantized weight columns).


@dataclass(frozen=True)
class MatmulPath:
    """How one quantized layer computes ``x @ W.T`` on this machine, as bitsandbytes dispatches it."""

    fmt: str  # "bf16", "int8" or "4-bit"
    fused: bool  # True: the weight is never dequantized to a whole 16-bit matrix first
    kernel: str  # which code runs
    steps: str  # what happens, in order


def matmul_path(fmt: str, device: str = "cpu", four_bit: FourBitPath | str = FourBitPath.PORTABLE,
                int8_integer: bool = False, cpu_hub_kernel: bool = False, quant_type: str = "nf4") -> MatmulPath:
    """The path of a ``fmt`` layer ("bf16", "int8", "4-bit") on ``device``, given what bitsandbytes found:
    ``four_bit`` (``quantized.four_bit_path``), ``int8_integer`` (``quantized.int8_integer_kernel``) and
    whether the `kernels` package loaded the hub's fused CPU kernel; ``quant_type`` ("nf4" or "fp4") names
    the kernel. Pure: the runner's ``quantized.model_matmul_path`` reads the inputs from a loaded model and
    the installed bitsandbytes.

    >>> matmul_path("4-bit", "cpu", FourBitPath.PORTABLE).fused
    False
    >>> matmul_path("4-bit", "cpu", FourBitPath.REPACKED).kernel
    "bitsandbytes' gemv_4bit_inference_cpu_nf4_bf16 (C, AVX512-BF16)"
    """
    fmt = str(fmt).strip().lower()
    allowed = ("bf16", "int8", "4-bit")
    if fmt not in allowed:
        raise LabError.bad("fmt", fmt, f"use one of: {', '.join(allowed)}")
    device = str(device).split(":")[0]
    if device not in ("cpu", "cuda"):
        raise LabError.bad("device", device, "use 'cpu' or 'cuda'")
    path = FourBitPath(four_bit)
    if quant_type not in ("nf4", "fp4"):
        raise LabError.bad("quant_type", quant_type, "use 'nf4' or 'fp4'")
    if fmt == "bf16":
        return MatmulPath(fmt, True, "torch F.linear", "multiply the 16-bit weight directly")
    if fmt == "int8":
        if device == "cuda":
            kernel = "bitsandbytes' CUDA int8 matmul (int8 x int8 -> int32)"
        elif int8_integer:
            kernel = "torch._int_mm (int8 x int8 -> int32, AVX512)"
        else:
            kernel = "bitsandbytes' default int8_linear_matmul (the int8 codes multiplied as float32)"
        return MatmulPath(fmt, True, kernel,
                          "quantize the activations to int8 row by row (outlier columns set aside), multiply the "
                          "int8 codes, rescale the int32 result by both absmax; add the outlier columns in 16 bits")
    if device == "cuda":
        return MatmulPath(fmt, False, "bitsandbytes' CUDA gemm_4bit",
                          "a fused 4-bit kernel for a few tokens (a per-GPU heuristic decides), else dequantize the "
                          "whole weight, then F.linear")
    if path is FourBitPath.REPACKED or path is FourBitPath.PENDING:
        kernel = ("kernels-community's gemm_4bit_forward (AVX512-BF16)" if cpu_hub_kernel else
                  f"bitsandbytes' gemv_4bit_inference_cpu_{quant_type}_bf16 (C, AVX512-BF16)")
        return MatmulPath(fmt, True, kernel,
                          "multiply bf16 activations straight from the repacked 4-bit codes; no dequantized weight "
                          "is written out")
    return MatmulPath(fmt, False, "bitsandbytes' dequantize_4bit (C), then torch F.linear",
                      "dequantize the whole weight to the compute dtype, then multiply")
