"""A tiny offline FLUX-architecture pipeline for the offloading lesson.

Same components as FLUX.1-dev (CLIP-L and T5 text encoders, the FLUX transformer, the VAE, the
flow-matching scheduler), each shrunk to a few layers with random weights and tokenizers built
locally, saved with ``save_pretrained`` and loaded back with ``DiffusionPipeline.from_pretrained``:
the calls a learner uses on the real 12B pipeline, on a machine with no hub access. Its images are
noise; the lesson measures memory and time, and compares outputs between offloading strategies.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

import torch

from .._paths import atomic_dir, cache_dir

__all__ = ["FLUX_SIZES", "tiny_flux_pipeline"]

# The FLUX transformer of each size the lab builds (the text encoders and the VAE stay tiny).
# "tiny": 611,728 parameters, a fraction of a second per image: for equality checks and tests.
# "small": 105,631,760 parameters, about 403 MiB in float32 (the checkpoint stores bfloat16, as
# FLUX.1-dev's does), in 6 double-stream and 12 single-stream blocks like FLUX's 19 and 38:
# big enough that offloading visibly changes a CPU's memory, small enough for a 2-core laptop.
FLUX_SIZES: dict[str, dict] = {
    "tiny": dict(num_layers=2, num_single_layers=4, attention_head_dim=16, num_attention_heads=4,
                 axes_dims_rope=(4, 6, 6), stored_dtype=torch.float32),
    "small": dict(num_layers=6, num_single_layers=12, attention_head_dim=64, num_attention_heads=8,
                  axes_dims_rope=(8, 28, 28), stored_dtype=torch.bfloat16),
}

# Token strings for the two tokenizers: single characters and a few common words, so prompts
# tokenize into several ids rather than all-unknown.
_WORDS = ["a", "the", "photo", "of", "cat", "dog", "on", "in", "red", "blue", "small", "big", "gpu"]


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    tokens = ["<|startoftext|>", "<|endoftext|>"] + list(string.ascii_lowercase + string.digits)
    tokens += [w + "</w>" for w in _WORDS] + [c + "</w>" for c in string.ascii_lowercase]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _t5_tokenizer():
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>"] + ["\u2581" + w for w in _WORDS] + list(string.ascii_lowercase)
    vocab = [(piece, -float(i)) for i, piece in enumerate(dict.fromkeys(pieces))]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def _components(seed: int, size: str = "tiny") -> dict:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    clip_tok, t5_tok = _clip_tokenizer(), _t5_tokenizer()
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(clip_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=64,
        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    t5 = T5EncoderModel(T5Config(
        vocab_size=len(t5_tok), d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=2,
        feed_forward_proj="gated-gelu", decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    shape = dict(FLUX_SIZES[size])
    stored_dtype = shape.pop("stored_dtype")
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, joint_attention_dim=64, pooled_projection_dim=64,
        guidance_embeds=True, **shape)
    if stored_dtype != torch.float32:
        # nn.Module.to, not ModelMixin.to: the latter logs a notice about modules to keep in float32,
        # and this transformer has none.
        transformer = torch.nn.Module.to(transformer, stored_dtype)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=32, use_quant_conv=False,
        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    return dict(scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder=clip, tokenizer=clip_tok,
                text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer, vae=vae)


def tiny_flux_pipeline(path: str | os.PathLike | None = None, seed: int = 0, load: bool = True,
                       size: str = "tiny", **from_pretrained_kwargs):
    """Build (once) and load the tiny FLUX pipeline; ``load=False`` returns the folder instead.

    The folder is ``cache_dir()/pipelines/{size}-flux-seed{seed}`` unless ``path`` is given, written
    atomically. Loading goes through ``DiffusionPipeline.from_pretrained`` like the real model.
    ``size``: a key of :data:`FLUX_SIZES` ("tiny", or "small" for a ~400 MiB float32 transformer).
    """
    from diffusers import DiffusionPipeline, FluxPipeline

    from .._errors import LabError, closest

    if not isinstance(size, str) or size not in FLUX_SIZES:
        raise LabError.bad("size", size, f"use one of: {', '.join(FLUX_SIZES)}"
                           f"{closest(size, FLUX_SIZES) if isinstance(size, str) else ''}")
    folder = Path(path) if path is not None else cache_dir() / "pipelines" / f"{size}-flux-seed{seed}"
    if not (folder / "model_index.json").is_file():
        with atomic_dir(folder) as tmp:
            FluxPipeline(**_components(seed, size)).save_pretrained(tmp, safe_serialization=True)
    if not load:
        return folder
    from_pretrained_kwargs.setdefault("use_safetensors", True)
    return DiffusionPipeline.from_pretrained(folder, local_files_only=True, **from_pretrained_kwargs)
