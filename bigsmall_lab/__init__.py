"""bigsmall_lab: big parameters, small GPUs. Run the real technique, measure it, see it.

>>> import bigsmall_lab as bsl
>>> bsl.count_parameters("llama-3.1-8b") * 2 / 1e9   # bf16: 2 bytes per parameter, in GB
16.060522496
"""

from . import bits, exercises, hardware, zoo
from .estimates import Comparison, MemoryEstimate, estimate, kv_cache_bytes, weights_bytes, weights_table
from .hardware import banner, describe, has_cuda, needs_cuda
from .measure import MemoryReport, stored_weight_bytes, track
from .zoo import build, checkpoint, count_parameters, load_model, load_tokenizer, presets, tiny_flux_pipeline

__version__ = "0.1.0"

__all__ = [
    "Comparison", "MemoryEstimate", "MemoryReport", "banner", "bits", "exercises", "build", "checkpoint", "count_parameters",
    "describe", "estimate", "hardware", "has_cuda", "kv_cache_bytes", "load_model", "load_tokenizer", "needs_cuda",
    "presets", "stored_weight_bytes", "tiny_flux_pipeline", "track", "weights_bytes", "weights_table", "zoo",
]


def load_ipython_extension(ipython):
    """``%load_ext bigsmall_lab``: report each cell's memory after it runs."""
    from ._ipython import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython):
    from ._ipython import unload_ipython_extension as unload

    unload(ipython)
