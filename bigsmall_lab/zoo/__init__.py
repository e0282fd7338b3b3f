"""Models with no hub: real configs, meta-device counts, random-weight builds, the embedded model.

>>> from bigsmall_lab import zoo
>>> zoo.presets()[:3]
['llama-3.1-8b', 'llama-3.1-70b', 'llama-3.1-405b']
"""

from ._configs import LAB_MODELS, PRESETS, TINY_DIR, Preset, config_dict, count_parameters, meta_model, presets
from ._smollm2 import REAL_MODELS, gguf_path, real_model_path

# The builders import torch: they load on first use (PEP 562), so that reading a preset's config or its
# shipped facts (bigsmall-lab fit) imports none.
_LAZY = {
    "_build": ("HubUnreachableError", "Weights", "build", "checkpoint", "load_model", "load_tokenizer", "model_path"),
    "_flux": ("tiny_flux_pipeline",),
    "_tiny": ("HELDOUT_FILE", "heldout_perplexity", "heldout_windows", "tiny_heldout_ids"),
}
_HOME = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str):
    if name in _HOME:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})


__all__ = [
    "LAB_MODELS", "PRESETS", "TINY_DIR", "HubUnreachableError", "Preset", "Weights", "build", "checkpoint",
    "config_dict", "count_parameters", "load_model", "load_tokenizer", "meta_model",
    "presets", "tiny_flux_pipeline", "REAL_MODELS", "gguf_path", "model_path", "real_model_path",
]
__all__ += ["HELDOUT_FILE", "heldout_perplexity", "heldout_windows", "tiny_heldout_ids"]  # bigsmall-tiny's held-out eval
