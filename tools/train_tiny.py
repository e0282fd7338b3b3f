"""Train "bigsmall-tiny", the small Llama that every lesson uses offline on a CPU (a tool, not runtime code).

The lab must run with no hub downloads, and the lessons on quantization and quantized KV
caches need a model whose output is *recognisable text*: on random weights every logit is
nearly flat and any quantization flips greedy tokens at once. So the package ships a tiny
trained model in ``bigsmall_lab/zoo/tiny/``, and this script is how it was made.

What it does, in order:

1. **Corpus** (:func:`corpus`): the text of ``pydoc_data.topics`` plus the module, class and
   function docstrings of the Python standard library (PSF licensed, present on every
   machine). Identical paragraphs are dropped (about 20% of the pydoc topics repeat), and
   about 5% of whole documents (one topic or one module) are held out, chosen by a stable
   sha256 of the document name, never by random lines, so the held-out split cannot leak.
   On CPython 3.11 that is about 2.0 M characters: 479 K training and 25 K held-out tokens.
2. **Tokenizer**: byte-level BPE (``tokenizers`` library), 8192 entries, with one special
   token ``<|endoftext|>`` that starts every document and serves as bos, eos and pad.
3. **Model**: ``LlamaForCausalLM`` with grouped-query attention (8 query heads, 4 KV heads,
   head_dim 32, hidden 256, 6 layers), tied embeddings: 6,819,072 parameters.
4. **Training**: float32, AdamW, linear warmup then cosine decay, gradient clipping, a fixed
   number of steps and a fixed seed on 2 threads, so two runs give bitwise identical weights.
5. **Output**: saved in bfloat16 safetensors (13.6 MB; 14.2 MB in all) with the tokenizer,
   a greedy ``generation_config.json``, ``training.json`` (held-out perplexity measured on the
   saved bf16 weights loaded back in float32) and ``heldout_ids.safetensors`` (the held-out token
   ids as int16, ~50 KB: another Python's standard library gives another corpus, so the ids ship
   and the package's test re-checks the recorded perplexity from them). Everything is written into a temporary
   folder next to the target and renamed into place at the end, so an interrupted run never
   leaves half a model.

How long: the full run (700 steps, 1.4 M tokens) takes about 10 minutes on 2 otherwise idle CPU
cores (~0.7 s a step); it took 18 minutes while other jobs shared the cores. ``--quick`` takes
a few seconds. It ends at held-out perplexity ~177, still falling (see ``training.json``).

Run it::

    python tools/train_tiny.py                   # writes bigsmall_lab/zoo/tiny/
    python tools/train_tiny.py --out /tmp/tiny --steps 20
    python tools/train_tiny.py --quick --out /tmp/tiny-smoke

Why one file of ~600 lines: it is a one-off job, run once to make the shipped model, and read top to bottom
as the five steps above (each a section below, in that order); every step reads the one ``TrainSettings``,
and tests/test_tiny_model.py imports its functions from this one module. Split, the record written at the
end (``training.json``: the corpus hash, settings, curve and versions) would gather them from five files.

The held-out evaluation it uses (windows, perplexity, the shipped ids) lives in the package
(``bigsmall_lab.zoo.heldout_perplexity``...), because tests and lessons reuse it.

Load the result like any hub model, offline::

    >>> from transformers import AutoModelForCausalLM, AutoTokenizer
    >>> model = AutoModelForCausalLM.from_pretrained(TINY_DIR)  # doctest: +SKIP
    >>> model.dtype                                             # doctest: +SKIP
    torch.bfloat16
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import hashlib
import inspect
import json
import math
import os
import platform
import shutil
import sysconfig
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from bigsmall_lab.zoo import HELDOUT_FILE, TINY_DIR, heldout_perplexity, heldout_windows

EOS_TOKEN = "<|endoftext|>"
HELDOUT_PERCENT = 5
# Folders of the standard library that hold tests, demos, vendored or installed code,
# not library documentation.
_SKIPPED_STDLIB_DIRS = frozenset(
    {
        "test",
        "tests",
        "idlelib",
        "lib2to3",
        "site-packages",
        "dist-packages",
        "turtledemo",
        "ensurepip",
        "pydoc_data",  # its topics enter the corpus as their own documents
        "lib-dynload",
        "__pycache__",
    }
)
_SPLITS = ("train", "heldout")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Everything that decides the trained weights; two runs with equal settings match bitwise."""

    # 700 steps x 4 x 512 tokens = 1.43 M tokens, about 3 passes over the ~0.48 M training
    # tokens: few enough that held-out perplexity is still falling at the last step. On 2 cores
    # the run is compute-bound, so many small steps beat few big ones (batch 8 x 400 steps
    # reached held-out ppl 187).
    steps: int = 700
    batch_size: int = 4
    seq_len: int = 512
    lr_peak: float = 3e-3
    lr_final_fraction: float = 0.1
    warmup_steps: int = 40
    weight_decay: float = 0.1
    grad_clip_norm: float = 1.0
    vocab_size: int = 8192
    n_layers: int = 6
    hidden_size: int = 256
    intermediate_size: int = 768
    n_heads: int = 8
    n_kv_heads: int = 4
    head_dim: int = 32
    max_position_embeddings: int = 1024
    eval_every_steps: int = 50
    curve_windows: int = 24  # first held-out windows scored for the learning curve (~half of them)
    slice_windows: int = 16  # the first windows, scored again by the tests
    max_train_docs: int | None = None  # None: the whole training split
    max_heldout_docs: int | None = None
    seed: int = 0


FULL = TrainSettings()
# A smoke test: same code path, a tiny tokenizer/model on a slice of the corpus.
QUICK = dataclasses.replace(
    FULL,
    steps=30,
    batch_size=4,
    seq_len=64,
    warmup_steps=5,
    vocab_size=512,
    n_layers=1,
    intermediate_size=256,
    eval_every_steps=15,
    curve_windows=4,
    slice_windows=4,
    max_train_docs=40,
    max_heldout_docs=4,
)


# --------------------------------------------------------------------------- corpus


def _paragraphs(text: str) -> list[str]:
    """Split cleaned text on blank lines; keep non-empty paragraphs with inner layout intact."""
    paragraphs, current = [], []
    for line in inspect.cleandoc(text).splitlines():
        if line.strip():
            current.append(line.rstrip())
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    if current:
        paragraphs.append("\n".join(current))
    return paragraphs


def _pydoc_topic_documents() -> Iterator[tuple[str, str]]:
    """(name, text) for every pydoc topic, sorted by topic name."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield f"topic:{name}", topics[name]


def _stdlib_source_paths() -> list[Path]:
    """Every .py file of the standard library outside tests/demos, in a stable sorted order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = []
    for folder, dir_names, file_names in os.walk(root):
        # Sorting in place makes os.walk visit folders in the same order on every machine.
        dir_names[:] = sorted(d for d in dir_names if d not in _SKIPPED_STDLIB_DIRS and not d.startswith("config-"))
        paths += [Path(folder, f) for f in sorted(file_names) if f.endswith(".py")]
    return paths


def _docstrings(source_bytes: bytes) -> list[str]:
    """Module, class and function docstrings of one source file, in ast.walk order."""
    try:
        tree = ast.parse(source_bytes)
    except (SyntaxError, ValueError):  # a few stdlib files are deliberately invalid
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    found = (ast.get_docstring(node, clean=False) for node in ast.walk(tree) if isinstance(node, kinds))
    return [doc for doc in found if doc and doc.strip()]


def _stdlib_docstring_documents() -> Iterator[tuple[str, str]]:
    """(name, text) per standard-library module: its docstrings joined by blank lines."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in _stdlib_source_paths():
        docs = _docstrings(path.read_bytes())
        if docs:
            name = path.relative_to(root).with_suffix("").as_posix().replace("/", ".")
            yield f"module:{name}", "\n\n".join(inspect.cleandoc(d) for d in docs)


def is_heldout(doc_name: str) -> bool:
    """Stable split: a document is held out when sha256(name) falls in the lowest 5 of 100 buckets.

    >>> is_heldout("topic:assert"), is_heldout("module:json.decoder")
    (False, False)
    """
    bucket = int.from_bytes(hashlib.sha256(doc_name.encode()).digest()[:8], "big") % 100
    return bucket < HELDOUT_PERCENT


@functools.lru_cache(maxsize=1)
def _corpus_documents() -> tuple[tuple[str, str, str], ...]:
    """(split, name, text) for every document after global paragraph dedupe, in a fixed order.

    A paragraph seen before (in any document) is dropped, so no held-out paragraph also
    appears in the training split.
    """
    seen_paragraphs: set[str] = set()
    documents = []
    for stream in (_pydoc_topic_documents(), _stdlib_docstring_documents()):
        for name, text in stream:
            fresh = [p for p in _paragraphs(text) if p not in seen_paragraphs]
            seen_paragraphs.update(fresh)
            if fresh:
                split = "heldout" if is_heldout(name) else "train"
                documents.append((split, name, "\n\n".join(fresh)))
    return tuple(documents)


def corpus(split: str) -> list[str]:
    """The documents of one split, ``"train"`` or ``"heldout"``, as a list of strings.

    Deterministic for a given Python standard library; compare :func:`corpus_sha256` with the
    value in ``training.json`` to know whether this machine rebuilds the shipped corpus.
    """
    if split not in _SPLITS:
        raise ValueError(f"split {split!r} is not known; use one of: {', '.join(_SPLITS)}")
    return [text for doc_split, _, text in _corpus_documents() if doc_split == split]


def corpus_document_names(split: str) -> list[str]:
    """Names (``topic:...`` / ``module:...``) of the documents of one split, same order as :func:`corpus`."""
    if split not in _SPLITS:
        raise ValueError(f"split {split!r} is not known; use one of: {', '.join(_SPLITS)}")
    return [name for doc_split, name, _ in _corpus_documents() if doc_split == split]


def corpus_sha256() -> str:
    """sha256 over every (split, name, text) of the corpus, in order: a fingerprint of this Python's corpus."""
    digest = hashlib.sha256()
    for split, name, text in _corpus_documents():
        for part in (split, name, text):
            digest.update(part.encode())
            digest.update(b"\0")
    return digest.hexdigest()


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """Byte-level BPE with ``<|endoftext|>`` (id 0) prepended to every encoded text.

    Returns a ``transformers`` fast tokenizer (``TokenizersBackend``, alias
    ``PreTrainedTokenizerFast`` in transformers 5) ready for ``save_pretrained``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    eos_id = backend.token_to_id(EOS_TOKEN)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{EOS_TOKEN} $A", pair=f"{EOS_TOKEN} $A {EOS_TOKEN} $B", special_tokens=[(EOS_TOKEN, eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        # No add_bos_token=True here: transformers 5 never saves that flag; the "bos $A"
        # post-processor inside tokenizer.json is what adds bos when AutoTokenizer loads it.
        model_max_length=FULL.max_position_embeddings,
    )


def token_stream(tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """All texts encoded (each starting with ``<|endoftext|>``) and concatenated, plus a final one.

    The model thus learns to predict ``<|endoftext|>`` at the end of a document.
    Returns int64 ids, shape (n_tokens,).
    """
    # The backend encodes whole documents without the "longer than model_max_length" warning.
    encoded = tokenizer.backend_tokenizer.encode_batch(list(texts), add_special_tokens=True)
    flat = [token for enc in encoded for token in enc.ids] + [tokenizer.eos_token_id]
    return torch.tensor(flat, dtype=torch.long)


# --------------------------------------------------------------------------- model


def build_config(settings: TrainSettings, tokenizer):
    """The LlamaConfig of bigsmall-tiny; ``dtype`` bfloat16 so ``dtype="auto"`` loads bf16."""
    from transformers import LlamaConfig

    if settings.hidden_size != settings.n_heads * settings.head_dim:
        raise ValueError(f"hidden_size {settings.hidden_size} must be n_heads*head_dim")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.n_layers,
        num_attention_heads=settings.n_heads,
        num_key_value_heads=settings.n_kv_heads,
        head_dim=settings.head_dim,
        max_position_embeddings=settings.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="bfloat16",
    )


def count_parameters(model: torch.nn.Module) -> int:
    """Parameters counted once each (the tied lm_head shares the embedding tensor)."""
    return sum(p.numel() for p in model.parameters())


def lr_at_step(step: int, settings: TrainSettings) -> float:
    """Linear warmup to ``lr_peak``, then cosine decay to ``lr_final_fraction * lr_peak``."""
    if step < settings.warmup_steps:
        return settings.lr_peak * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    floor = settings.lr_final_fraction
    return settings.lr_peak * (floor + (1.0 - floor) * cosine)


def _make_optimizer(model: torch.nn.Module, settings: TrainSettings) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms' gains)."""
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    vectors = [p for p in model.parameters() if p.dim() < 2]
    groups = [
        {"params": matrices, "weight_decay": settings.weight_decay},
        {"params": vectors, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=settings.lr_peak, betas=(0.9, 0.95), eps=1e-8)


def sample_batch(stream: torch.Tensor, settings: TrainSettings, generator: torch.Generator) -> torch.Tensor:
    """Random windows of seq_len+1 tokens from the training stream: (batch_size, seq_len + 1)."""
    high = len(stream) - settings.seq_len - 1
    starts = torch.randint(0, high, (settings.batch_size,), generator=generator)
    return torch.stack([stream[s : s + settings.seq_len + 1] for s in starts.tolist()])


def _next_token_loss(model: torch.nn.Module, windows: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting windows[:, 1:] from windows[:, :-1] (teacher forcing)."""
    logits = model(input_ids=windows[:, :-1]).logits  # (batch, seq_len, vocab)
    return F.cross_entropy(logits.flatten(0, 1).float(), windows[:, 1:].flatten())


# --------------------------------------------------------------------------- training


@dataclasses.dataclass
class TrainResult:
    """What a training run returns besides the model: losses and the held-out learning curve."""

    final_train_loss: float  # mean of the last 20 steps' losses
    tokens_seen: int
    heldout_curve: list[dict[str, float]]  # [{"step", "tokens_seen", "heldout_ppl"}], fp32 weights
    wall_s: float


def mean_loss(recent_losses: list[float]) -> float:
    """Mean of the recent per-step losses: a smoother number than the last step alone."""
    return sum(recent_losses) / len(recent_losses)


def train_model(model, train_stream, curve_windows, settings: TrainSettings) -> TrainResult:
    """Plain PyTorch training loop over a fixed number of steps, with a tqdm bar showing loss."""
    from tqdm.auto import tqdm

    optimizer = _make_optimizer(model, settings)
    generator = torch.Generator().manual_seed(settings.seed)
    curve, recent_losses, start_s = [], [], time.perf_counter()
    tokens_per_step = settings.batch_size * settings.seq_len
    model.train()
    bar = tqdm(range(settings.steps), desc="bigsmall-tiny", unit="step", mininterval=1.0)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at_step(step, settings)
        loss = _next_token_loss(model, sample_batch(train_stream, settings, generator))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip_norm)
        optimizer.step()
        recent_losses = (recent_losses + [loss.item()])[-20:]
        bar.set_postfix(loss=f"{mean_loss(recent_losses):.3f}", refresh=False)
        done = step + 1
        if done % settings.eval_every_steps == 0 or done == settings.steps:
            ppl = heldout_perplexity(model, curve_windows)
            curve.append({"step": done, "tokens_seen": done * tokens_per_step, "heldout_ppl": round(ppl, 3)})
            bar.write(f"step {done}: train loss (last 20) {mean_loss(recent_losses):.3f}, held-out ppl {ppl:.2f}")
    return TrainResult(
        final_train_loss=mean_loss(recent_losses),
        tokens_seen=settings.steps * tokens_per_step,
        heldout_curve=curve,
        wall_s=time.perf_counter() - start_s,
    )


def _write_generation_config(model, out_dir: Path) -> None:
    """Greedy decoding defaults so ``model.generate(**inputs)`` is deterministic in lessons."""
    from transformers import GenerationConfig

    config = model.config
    GenerationConfig(
        do_sample=False,
        max_new_tokens=64,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    ).save_pretrained(out_dir)


def _write_heldout_ids(stream: torch.Tensor, out_dir: Path) -> None:
    """The held-out token ids beside the weights, as int16 (every id of an 8192-entry vocabulary fits)."""
    from safetensors.torch import save_file

    if int(stream.max()) >= 2**15:
        raise ValueError(f"token id {int(stream.max())} does not fit int16; store the held-out ids as int32")
    save_file({"heldout_ids": stream.to(torch.int16).contiguous()}, str(out_dir / HELDOUT_FILE))


def _evaluate_saved(out_dir: Path, windows: list[torch.Tensor], slice_windows: int) -> dict[str, float]:
    """Held-out perplexity of the weights as shipped: load the bf16 files back in float32."""
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    return {
        "heldout_ppl": heldout_perplexity(saved, windows),
        "heldout_slice_ppl": heldout_perplexity(saved, windows[:slice_windows]),
    }


def _versions() -> dict[str, str]:
    import tokenizers
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


def _training_record(settings, model, train_stream, heldout_stream, result, saved_eval, start_s) -> dict:
    """The contents of training.json (plain numbers and strings)."""
    return {
        "model": "bigsmall-tiny",
        "seed": settings.seed,
        "steps": settings.steps,
        "batch_size": settings.batch_size,
        "seq_len": settings.seq_len,
        "tokens_seen": result.tokens_seen,
        "parameters": count_parameters(model),
        "train_tokens": len(train_stream),
        "heldout_tokens": len(heldout_stream),
        "epochs": round(result.tokens_seen / len(train_stream), 3),
        "final_train_loss": round(result.final_train_loss, 4),
        "final_train_loss_note": "mean training loss (nats/token) of the last 20 steps",
        "heldout_ppl": round(saved_eval["heldout_ppl"], 4),
        "heldout_slice_ppl": round(saved_eval["heldout_slice_ppl"], 4),
        "heldout_eval": {
            "weights": "bfloat16 files as saved, loaded back with dtype=torch.float32",
            "method": "teacher-forced, mean NLL over every token; held-out documents concatenated "
            "(each starts with <|endoftext|>), cut into consecutive windows of seq_len+1 tokens that "
            "share one boundary token, each scored independently; last window may be shorter",
            "window_len": settings.seq_len,
            "slice_windows": settings.slice_windows,
        },
        "heldout_curve": result.heldout_curve,
        "heldout_curve_note": f"fp32 training weights, first {settings.curve_windows} held-out windows",
        "train_wall_s": round(result.wall_s, 1),
        "wall_s": round(time.perf_counter() - start_s, 1),
        "wall_s_note": "train_wall_s: the training loop; wall_s: corpus, tokenizer, training, save, evaluation",
        "corpus_sha256": corpus_sha256(),
        "settings": dataclasses.asdict(settings),
        "versions": _versions(),
    }


def _publish(tmp_dir: Path, out_dir: Path) -> None:
    """Move a finished folder into place; an older model is swapped out, then deleted."""
    # mkdtemp (and safetensors) create owner-only files; the shipped folder must be readable.
    tmp_dir.chmod(0o755)
    for path in tmp_dir.iterdir():
        path.chmod(0o644)
    old_dir = None
    if out_dir.exists():
        old_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.replace(out_dir, old_dir / out_dir.name)
    os.replace(tmp_dir, out_dir)
    if old_dir is not None:
        shutil.rmtree(old_dir)


def _split_docs(settings: TrainSettings) -> tuple[list[str], list[str]]:
    train_docs, heldout_docs = corpus("train"), corpus("heldout")
    return train_docs[: settings.max_train_docs], heldout_docs[: settings.max_heldout_docs]


def _build_into(tmp_dir: Path, settings: TrainSettings) -> dict:
    """Train and save everything into ``tmp_dir``; returns the training.json record."""
    from transformers import LlamaForCausalLM

    start_s = time.perf_counter()
    torch.manual_seed(settings.seed)
    torch.set_num_threads(2)
    train_docs, heldout_docs = _split_docs(settings)
    tokenizer = train_tokenizer(train_docs, settings.vocab_size)
    train_stream, heldout_stream = token_stream(tokenizer, train_docs), token_stream(tokenizer, heldout_docs)
    windows = heldout_windows(heldout_stream, settings.seq_len)
    model = LlamaForCausalLM(build_config(settings, tokenizer)).float()
    print(f"bigsmall-tiny: {count_parameters(model):,} parameters, {len(train_stream):,} train tokens, "
          f"{len(heldout_stream):,} held-out tokens, {settings.steps} steps", flush=True)
    result = train_model(model, train_stream, windows[: settings.curve_windows], settings)
    model.to(torch.bfloat16).save_pretrained(tmp_dir, safe_serialization=True)
    tokenizer.save_pretrained(tmp_dir)
    _write_generation_config(model, tmp_dir)
    _write_heldout_ids(heldout_stream, tmp_dir)
    saved_eval = _evaluate_saved(tmp_dir, windows, settings.slice_windows)
    record = _training_record(settings, model, train_stream, heldout_stream, result, saved_eval, start_s)
    (tmp_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def build_tiny_model(out_dir: Path, settings: TrainSettings = FULL) -> dict:
    """Train bigsmall-tiny into ``out_dir`` atomically; returns the training.json record."""
    out_dir = Path(out_dir).resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        record = _build_into(tmp_dir, settings)
        _publish(tmp_dir, out_dir)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return record


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default {TINY_DIR})")
    parser.add_argument("--steps", type=int, default=None, help="override the number of training steps")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run on a corpus slice")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    if args.steps is not None:
        if args.steps < 1:
            parser.error(f"--steps must be >= 1, got {args.steps}")
        settings = dataclasses.replace(settings, steps=args.steps, warmup_steps=min(settings.warmup_steps, args.steps))
    out_dir = args.out
    if out_dir is None:
        if args.quick:
            out_dir = Path(tempfile.mkdtemp(prefix="bigsmall-tiny-quick-")) / "tiny"
        else:
            out_dir = TINY_DIR
    record = build_tiny_model(out_dir, settings)
    print(f"wrote {out_dir}: held-out ppl {record['heldout_ppl']:.2f}, "
          f"train loss {record['final_train_loss']:.3f}, {record['wall_s']:.0f} s")
    return record


if __name__ == "__main__":
    main()
