"""``bigsmall-lab estimate``: the estimator's numbers as a table (or JSON), nothing computed here.

The table fits 100 columns, the GPUs it fits listed below it; ``--wide`` puts a column per GPU instead.
"""

from __future__ import annotations

import argparse
import json
import textwrap

from ._units import GB, format_bytes
from .estimates import GPUS, MemoryEstimate, estimate, largest_layer_bytes, resolve
from .hardware import cuda_context_bytes

WIDTH = 100  # columns the table and its notes fit (``--wide``: one line per row, a column per GPU)

# Rows shown when the learner picks no dtype: the formats of accelerate's estimate-memory, as loaded here.
_DEFAULT_ROWS = (("float32", None), ("bfloat16", None), ("bfloat16", "int8"), ("bfloat16", "nf4"))


def rows(args: argparse.Namespace) -> list[tuple[MemoryEstimate, int]]:
    """(estimate, largest layer bytes) for each row the command prints."""
    spec = resolve(args.config)  # once, for every row
    if args.dtype_given or args.quantization:
        wanted = [(args.dtype, args.quantization)]
    else:  # bitsandbytes quantizes transformers models only: a diffusers model gets the float rows
        wanted = [row for row in _DEFAULT_ROWS if spec.kind == "transformers" or row[1] is None]
    measured = cuda_context_bytes()  # None off CUDA: the estimator then uses its labelled assumption
    source = "measured on GPU 0 (NVML before and after the first CUDA call)" if measured is not None else None
    out = []
    for dtype, quant in wanted:
        est = estimate(spec, dtype=dtype, quantization=quant, seq_len=args.seq_len, batch_size=args.batch_size,
                       overhead_bytes=measured, overhead_source=source)
        out.append((est, largest_layer_bytes(spec, dtype, quant)))
    return out


def _grid(head: list[str], lines: list[list[str]]) -> str:
    """A ruled table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def fmt(row):
        return "| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) + " |"

    return "\n".join([rule, fmt(head), rule, *map(fmt, lines), rule])


def _label(est: MemoryEstimate) -> str:
    return est.dtype + (f" + {est.quantization}" if est.quantization else "")


def _table(results: list[tuple[MemoryEstimate, int]], wide: bool = False) -> str:
    """The memory table; ``wide`` adds a yes/no column per GPU (about 150 columns), else it fits 100."""
    head = ["dtype", "largest layer", "weights", "KV cache", "activations", "overhead", "total"]
    if wide:
        head += list(GPUS)
    lines = []
    for est, largest in results:
        cells = [_label(est)] + [format_bytes(b, "GB") for b in (largest, est.weights_bytes, est.kv_cache_bytes,
                                                                  est.activation_bytes, est.overhead_bytes,
                                                                  est.total_bytes)]
        if wide:
            cells += ["yes" if fits else "no" for fits in est.fits_table().values()]
        lines.append(cells)
    return _grid(head, lines)


def _fits_lines(results: list[tuple[MemoryEstimate, int]], width: int) -> list[str]:
    """Which GPUs each row's total fits, one wrapped line per row (what ``--wide`` shows as columns)."""
    label_w = max(len(_label(est)) for est, _ in results)
    out = ["Fits on (the total within the memory torch sees on the card):"]
    for est, _ in results:
        cards = ", ".join(name for name, fits in est.fits_table().items() if fits) or "none of the GPUs listed"
        out += textwrap.wrap(cards, width, initial_indent=f"  {_label(est):{label_w}s}  ",
                             subsequent_indent=" " * (label_w + 4))
    return out


def run_estimate(args: argparse.Namespace) -> int:
    results = rows(args)
    if args.json:
        print(json.dumps([{**est.as_dict(), "largest_layer_bytes": largest} for est, largest in results], indent=2))
        return 0
    wide = getattr(args, "wide", False)
    width = 10_000 if wide else WIDTH

    def say(text: str) -> None:  # "\0" joins words a line must not split ("T4 15.83 GB")
        print("\n".join(textwrap.wrap(text, width, subsequent_indent="  ")).replace("\0", " "))

    first = results[0][0]
    say(f"Memory to load and run `{args.config}` ({first.parameters:,} parameters), "
        f"KV cache and activations for batch {first.batch_size} x {first.seq_len} tokens")
    print(_table(results, wide))
    usable = ", ".join(f"{n} {g.usable_bytes / GB:.2f} GB".replace(" ", "\0") for n, g in GPUS.items())
    if not wide:
        print("\n".join(_fits_lines(results, width)))
    say(f"{'GPU columns: does the total fit? ' if wide else ''}Memory torch sees on each card (before the CUDA "
        f"context, which the overhead counts): {usable}.")
    say(f"Overhead {format_bytes(first.overhead_bytes, 'GB', 1)}: {first.overhead_source}.")
    for note in dict.fromkeys(note for est, _ in results for note in est.notes):
        say(f"Note: {note}.")
    return 0
