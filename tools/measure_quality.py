"""Measure the lab models' perplexity on the shipped evaluation text: benchmarks/quality.json.

The README quotes these figures (tests/test_project.py checks that it does).
Usage: python tools/measure_quality.py [--n-tokens 1024]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import transformers

import bigsmall_lab as bsl
from bigsmall_lab import quality

OUT = Path(__file__).resolve().parent.parent / "benchmarks" / "quality.json"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-tokens", type=int, default=1024)
    args = parser.parse_args(argv)
    record = {"text": "bigsmall_lab/data/heldout.txt (stored token ids)", "n_tokens": args.n_tokens,
              "versions": {"python": platform.python_version(), "torch": torch.__version__,
                           "transformers": transformers.__version__}, "models": {}}
    for name, dtype in (("smollm2-135m-instruct", torch.bfloat16), ("bigsmall-tiny", torch.bfloat16)):
        model = bsl.load_model(name, dtype=dtype)
        start = time.perf_counter()
        ppl = quality.perplexity(model, quality.heldout_ids(name, args.n_tokens))
        record["models"][name] = {"dtype": str(dtype).removeprefix("torch."), "perplexity": round(ppl, 2),
                                  "parameters": sum(p.numel() for p in model.parameters()),
                                  "seconds": round(time.perf_counter() - start, 1)}
        print(f"{name}: perplexity {ppl:.2f} ({record['models'][name]['seconds']} s)", flush=True)
    OUT.write_text(json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
