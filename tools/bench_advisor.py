"""Time advisor.fit() for the 12 presets x 6 named setups x 3 context lengths (issue 20: under 3 s each).

Each setup is a named one as ``advisor.machine(setup)`` builds it: its GPUs and their usual host's RAM
(``advisor.HOST_RAM``; none for a size like "24GB"), so CPU spills are planned too.
Runs the grid twice and prints the slowest calls of the second (warm) pass and both maxima: in the
first pass each preset is built on the meta device (and in bitsandbytes' layers for a device_map
split), and the first call of all imports transformers' model code.
Usage: python tools/bench_advisor.py [--json]
"""

from __future__ import annotations

import json
import sys
import time

SETUPS = ("T4", "L4", "2xL4", "A100 80GB", "8xH100", "24GB")
CONTEXTS = (1024, 8192, 32768)


def main(argv: list[str]) -> int:
    t0 = time.perf_counter()
    from bigsmall_lab import advisor
    from bigsmall_lab.zoo import presets

    import_s = time.perf_counter() - t0
    passes = []
    for _ in range(2):  # the first pass builds each model on the meta device (and bitsandbytes' versions)
        rows = []
        for preset in presets():
            for setup in SETUPS:
                for n in CONTEXTS:
                    start = time.perf_counter()
                    options = advisor.fit(preset, setup, seq_len=n)
                    rows.append({"model": preset, "machine": setup, "seq_len": n,
                                 "seconds": round(time.perf_counter() - start, 3), "options": len(options),
                                 "fitting": sum(o.fits for o in options)})
        passes.append(rows)
    cold = max(passes[0], key=lambda r: r["seconds"])
    warm = max(passes[1], key=lambda r: r["seconds"])
    rows = passes[1]
    summary = {"import_seconds": round(import_s, 2), "calls": len(rows), "max_seconds": warm["seconds"],
               "max_cold": cold, "max_warm": warm, "total_seconds": round(sum(r["seconds"] for r in rows), 1),
               "total_cold_seconds": round(sum(r["seconds"] for r in passes[0]), 1)}
    if "--json" in argv:
        print(json.dumps({"summary": summary, "rows": rows}, indent=1))
        return 0
    for r in sorted(rows, key=lambda r: -r["seconds"])[:8]:
        print(f"{r['seconds']:7.3f} s  {r['model']:24s} {r['machine']:10s} {r['seq_len']:>6,} tokens  "
              f"{r['options']:3d} options, {r['fitting']:3d} fit")
    print(f"{summary['calls']} calls a pass; import {summary['import_seconds']} s; warm pass: max {warm['seconds']} s "
          f"({warm['model']} on {warm['machine']}), total {summary['total_seconds']} s; cold pass (meta models "
          f"built): max {cold['seconds']} s ({cold['model']} on {cold['machine']}), total "
          f"{summary['total_cold_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
