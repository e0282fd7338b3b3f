"""bigsmall_lab: big parameters, small GPUs. Run the real technique, measure it, see it.

>>> import bigsmall_lab as bsl
>>> bsl.count_parameters("llama-3.1-8b") * 2 / 1e9   # bf16: 2 bytes per parameter, in GB
16.060522496

The map of the package. Each piece has one home, by what it does:

- **planners** are pure: numbers in, numbers and dataclasses out (counts, bytes, plans, quantization
  maths, bit layouts); they may build a model on the meta device, never touch memory, devices,
  processes or files of their own;
- **runners** touch memory, processes, devices and files (load, offload, shard, generate, measure)
  and call the planners to know what to expect;
- **views** are widgets and charts that draw what planners and runners return, no maths of their own;
- **edges** are what a learner or a terminal calls: the exercises, the CLI (which never imports
  views: a terminal needs no widgets), the IPython extension, this package's public names.

Imports run edges -> views -> runners -> planners -> base, never back. tests/test_layers.py reads
the table below (a module may import its own layer and the layers listed before it; a dotted name
is a module inside a package, which otherwise takes its package's layer) and fails on a backward
import:

    base:     _compat _dtypes _errors _lessons _progress _project _talk _units
    planners: bits bnb_formats estimates kv_plan offload_plan placement placement_rule quant tp_plan zoo._configs zoo._facts
    runners:  _nvml _paths _torchrun _tp_worker advisor check fit_run gguf_file hardware kvcache loading measure offload parallel quality quantized zoo
    views:    views
    edges:    __init__ _estimate_cli _fit_cli _ipython cli exercises

A new lesson usually adds one planner (what to expect), one runner (run it, measure it), one view
and a notebook that calls them.
"""

import logging as _logging


class _KernelsHubNotice(_logging.Filter):
    """bitsandbytes (>= 0.50, on a CPU with AVX512-BF16) logs at import that it could not fetch a 4-bit
    kernel from the Hugging Face hub ("... pip install kernels"): the lab never fetches code from a hub
    (no trust_remote_code), and bitsandbytes then uses its own compiled CPU kernel. Drop that one line."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "kernels-community" not in str(record.msg)


_logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_KernelsHubNotice())

# Names load on first use (PEP 562): `import bigsmall_lab` costs nothing, so `bigsmall-lab --help` and
# `bigsmall-lab presets` never import torch; `bsl.load_model(...)` imports the zoo (and torch) when called.
_NAMES = {
    "_errors": ("ClaimFailed", "claim"),
    "estimates": ("Comparison", "MemoryEstimate", "estimate", "kv_cache_bytes", "weights_bytes", "weights_table"),
    "hardware": ("banner", "describe", "has_cuda", "needs_cuda"),
    "measure": ("MemoryReport", "stored_weight_bytes", "track"),
    "zoo": ("build", "checkpoint", "count_parameters", "load_model", "load_tokenizer", "presets", "tiny_flux_pipeline"),
}
_HOME = {name: module for module, names in _NAMES.items() for name in names}


def __getattr__(name: str):
    """``bsl.<name>``: a public name or any module of the package, imported on first use and kept."""
    import importlib
    from pathlib import Path

    here = Path(__file__).parent
    if name in _HOME:
        value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    elif name.isidentifier() and ((here / f"{name}.py").is_file() or (here / name / "__init__.py").is_file()):
        value = importlib.import_module(f"{__name__}.{name}")  # bsl.quant, bsl.estimates, bsl.measure, ...
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__version__ = "0.1.0"

# The public surface: the names above, then every public module (each has a docstring and its own __all__;
# tests/test_lesson_map.py fails on a module without a leading underscore that is not listed here). A module
# whose name starts with "_" is private: no lesson imports it.
__all__ = [
    "ClaimFailed", "Comparison", "MemoryEstimate", "MemoryReport", "banner", "build", "checkpoint", "claim",
    "count_parameters", "describe", "estimate", "has_cuda", "kv_cache_bytes", "load_model", "load_tokenizer",
    "needs_cuda", "presets", "stored_weight_bytes", "tiny_flux_pipeline", "track", "weights_bytes", "weights_table",
    # modules
    "advisor", "bits", "bnb_formats", "check", "cli", "estimates", "exercises", "fit_run", "gguf_file", "hardware",
    "kv_plan", "kvcache", "loading", "measure", "offload", "offload_plan", "parallel", "placement", "placement_rule", "quality", "quant",
    "quantized", "tp_plan", "views", "zoo",
]


def load_ipython_extension(ipython):
    """``%load_ext bigsmall_lab``: report each cell's memory after it runs."""
    from ._ipython import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython):
    from ._ipython import unload_ipython_extension as unload

    unload(ipython)
