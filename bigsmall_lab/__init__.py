"""bigsmall_lab: big parameters, small GPUs. Run the real technique, measure it, see it.

>>> import bigsmall_lab as bsl
>>> bsl.count_parameters("llama-3.1-8b") * 2 / 1e9   # bf16: 2 bytes per parameter, in GB
16.060522496
"""

from . import hardware, zoo
from .hardware import banner, describe, has_cuda, needs_cuda
from .measure import MemoryReport, track
from .zoo import build, checkpoint, count_parameters, load_model, load_tokenizer, presets, tiny_flux_pipeline

__version__ = "0.1.0"

__all__ = [
    "MemoryReport", "banner", "build", "checkpoint", "count_parameters", "describe", "hardware", "has_cuda",
    "load_model", "load_tokenizer", "needs_cuda", "presets", "tiny_flux_pipeline", "track", "zoo",
]


def load_ipython_extension(ipython):
    """``%load_ext bigsmall_lab``: report each cell's memory after it runs."""
    from ._ipython import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython):
    from ._ipython import unload_ipython_extension as unload

    unload(ipython)
