"""The advisor's top option run for real under memory budgets that force different options (issue 20).

For SmolLM2-135M-Instruct, the lab's ladder checkpoint bigsmall-small and the embedded bigsmall-tiny,
every budget of ``fit_run.forcing_budgets`` (bf16 in RAM, int8, nf4, a disk spill): the top option
is run by ``fit_run.run_all`` and its measured peak printed next to the plan. Writes
``benchmarks/fit_run.json``.

    python tools/bench_fit_run.py [--seq-len 16] [--new-tokens 4] [--models smollm2-135m-instruct,...]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("smollm2-135m-instruct", "bigsmall-small", "bigsmall-tiny")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "fit_run.json"))
    args = parser.parse_args(argv)

    import torch
    import transformers

    from bigsmall_lab import fit_run

    rows = []
    head = f"{'model':<22} {'budget':<7} {'RAM':>9} {'disk':>9}  {'top option':<52} {'planned':>10} {'measured':>10} {'ratio':>6} {'kl':>8} {'top1':>6}"
    print(head)
    print("-" * len(head))
    started = time.perf_counter()
    for model in args.models.split(","):
        budgets = fit_run.forcing_budgets(model, seq_len=args.seq_len)
        options = [fit_run.top_option(model, m, args.seq_len) for m in budgets.values()]
        runs = fit_run.run_all(options, model, max_new_tokens=args.new_tokens, reference=True)
        for (name, m), option, r in zip(budgets.items(), options, runs):
            kl = f"{r.kl:.4f}" if r.kl is not None else "-"
            top1 = f"{r.top1:.3f}" if r.top1 is not None else "-"
            print(f"{model:<22} {name:<7} {m.cpu_ram_bytes / 2**20:>6.1f}MiB {m.disk_bytes / 2**20:>6.0f}MiB  "
                  f"{r.label:<52} {r.planned_bytes / 2**20:>7.1f}MiB {r.peak_bytes / 2**20:>7.1f}MiB {r.ratio:>6.3f} "
                  f"{kl:>8} {top1:>6}")
            rows.append({"model": model, "budget": name, "cpu_ram_bytes": m.cpu_ram_bytes, "disk_bytes": m.disk_bytes,
                         "parts": [{"device": str(p.device), "what": p.what, "bytes": p.bytes} for p in option.parts],
                         **r.as_dict()})
    wall = time.perf_counter() - started
    print(f"\n{len(rows)} runs in {wall:.0f} s; ratio = measured peak while generating / planned bytes on the CPU")
    out = {"what": "fit_run: the advisor's top option run for real under memory budgets (issue 20)",
           "seq_len": args.seq_len, "max_new_tokens": args.new_tokens, "wall_s": round(wall, 1),
           "machine": {"platform": platform.platform(), "python": platform.python_version(),
                       "torch": torch.__version__, "transformers": transformers.__version__},
           "runs": rows}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {Path(args.out).relative_to(ROOT) if Path(args.out).is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
