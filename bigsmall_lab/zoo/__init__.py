"""Models with no hub: real configs, meta-device counts, random-weight builds, the embedded model.

>>> from bigsmall_lab import zoo
>>> zoo.presets()[:3]
['llama-3.1-8b', 'llama-3.1-70b', 'llama-3.1-405b']
"""

from ._build import HubUnreachableError, Weights, build, checkpoint, load_model, load_tokenizer, model_path
from ._configs import LAB_MODELS, PRESETS, TINY_DIR, Preset, config_dict, count_parameters, meta_model, presets
from ._flux import tiny_flux_pipeline
from ._smollm2 import REAL_MODELS, gguf_path, real_model_path
from ._tiny import HELDOUT_FILE, heldout_perplexity, heldout_windows, tiny_heldout_ids

__all__ = [
    "LAB_MODELS", "PRESETS", "TINY_DIR", "HubUnreachableError", "Preset", "Weights", "build", "checkpoint",
    "config_dict", "count_parameters", "load_model", "load_tokenizer", "meta_model",
    "presets", "tiny_flux_pipeline", "REAL_MODELS", "gguf_path", "model_path", "real_model_path",
]
__all__ += ["HELDOUT_FILE", "heldout_perplexity", "heldout_windows", "tiny_heldout_ids"]  # bigsmall-tiny's held-out eval
