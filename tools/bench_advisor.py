"""Time advisor.fit() for the 12 presets x 6 named setups x 3 context lengths (issue 20: under 3 s each).

Prints the slowest calls and the max; the first call of a preset builds its model on the meta device
(and the first call of all imports transformers), so the cold and warm maxima are shown apart.
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
    rows = []
    for preset in presets():
        for setup in SETUPS:
            for n in CONTEXTS:
                start = time.perf_counter()
                options = advisor.fit(preset, setup, seq_len=n)
                rows.append({"model": preset, "machine": setup, "seq_len": n,
                             "seconds": round(time.perf_counter() - start, 3), "options": len(options),
                             "fitting": sum(o.fits for o in options)})
    first_of_preset = {r["model"]: r for r in reversed(rows)}  # the first row of each preset
    cold = max(first_of_preset.values(), key=lambda r: r["seconds"])
    warm = max((r for r in rows if r not in first_of_preset.values()), key=lambda r: r["seconds"])
    summary = {"import_seconds": round(import_s, 2), "calls": len(rows),
               "max_seconds": max(r["seconds"] for r in rows), "max_cold": cold, "max_warm": warm,
               "total_seconds": round(sum(r["seconds"] for r in rows), 1)}
    if "--json" in argv:
        print(json.dumps({"summary": summary, "rows": rows}, indent=1))
        return 0
    for r in sorted(rows, key=lambda r: -r["seconds"])[:8]:
        print(f"{r['seconds']:7.3f} s  {r['model']:24s} {r['machine']:10s} {r['seq_len']:>6,} tokens  "
              f"{r['options']:3d} options, {r['fitting']:3d} fit")
    print(f"{summary['calls']} calls; import {summary['import_seconds']} s; max {summary['max_seconds']} s "
          f"(first call of a preset: {cold['seconds']} s, {cold['model']} on {cold['machine']}; other calls: "
          f"{warm['seconds']} s); total {summary['total_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
