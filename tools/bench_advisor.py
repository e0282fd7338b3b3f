"""Time advisor.fit() for the 12 presets x 6 named setups x 3 context lengths (issue 20: under 3 s each).

Each setup is a named one as ``advisor.machine(setup)`` builds it: its GPUs and their usual host's RAM
(``advisor.HOST_RAM``; none for a size like "24GB"), so CPU spills are planned too.
Runs the grid twice in this process and prints the slowest calls of the second (warm) pass and both
maxima. A preset plans from its shipped facts (``bigsmall_lab.zoo._facts``) when they hold for the
installed libraries; ``--meta`` plans every call from meta models instead (the first pass then builds
each preset on the meta device, and in bitsandbytes' layers for a device_map split).
``--cli`` also runs ``bigsmall-lab fit <preset> --gpu <setup> --seq-len N --json`` in a fresh process for
every point of the grid, as a learner's terminal does: wall seconds, and whether torch was imported.
Usage: python tools/bench_advisor.py [--json] [--meta] [--cli]
(``python tools/bench_advisor.py --cli --json > benchmarks/advisor.json`` keeps a run with the lab's benchmarks.)
"""

from __future__ import annotations

import json
import sys
import time

SETUPS = ("T4", "L4", "2xL4", "A100 80GB", "8xH100", "24GB")
CONTEXTS = (1024, 8192, 32768)


CLI_CODE = """
import runpy, sys, time
start = time.perf_counter()
sys.argv = ["bigsmall-lab", "fit", *sys.argv[1:], "--json"]
try:
    runpy.run_module("bigsmall_lab.cli", run_name="__main__")
except SystemExit as exit:
    assert exit.code in (0, None), exit.code
print("BENCH", time.perf_counter() - start, "torch" in sys.modules, file=sys.stderr)
"""


def cli_rows() -> list[dict]:
    """Each grid point as a fresh ``bigsmall-lab fit`` process (interpreter start included in ``wall_seconds``)."""
    import subprocess

    from bigsmall_lab.zoo import presets

    rows = []
    for preset in presets():
        for setup in SETUPS:
            for n in CONTEXTS:
                start = time.perf_counter()
                out = subprocess.run([sys.executable, "-c", CLI_CODE, preset, "--gpu", setup, "--seq-len", str(n)],
                                     capture_output=True, text=True, timeout=600)
                wall = time.perf_counter() - start
                mark = [line for line in out.stderr.splitlines() if line.startswith("BENCH ")]
                if out.returncode or not mark:
                    raise SystemExit(f"bigsmall-lab fit {preset} --gpu {setup} failed: {out.stderr[-500:]}")
                _, seconds, torch = mark[-1].split()
                rows.append({"model": preset, "machine": setup, "seq_len": n, "wall_seconds": round(wall, 3),
                             "main_seconds": round(float(seconds), 3), "imported_torch": torch == "True",
                             "options": len(json.loads(out.stdout)["options"])})
    return rows


def main(argv: list[str]) -> int:
    import os

    if "--meta" in argv:
        os.environ["BIGSMALL_LAB_NO_FACTS"] = "1"
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
    from bigsmall_lab.zoo import _facts
    from bigsmall_lab.zoo._configs import resolve

    from_facts = sorted(p for p in presets() if resolve(p).facts is not None)
    summary = {"import_seconds": round(import_s, 2), "calls": len(rows), "max_seconds": warm["seconds"],
               "max_cold": cold, "max_warm": warm, "total_seconds": round(sum(r["seconds"] for r in rows), 1),
               "total_cold_seconds": round(sum(r["seconds"] for r in passes[0]), 1),
               "presets_from_facts": len(from_facts), "torch_imported_in_process": "torch" in sys.modules,
               "versions": _facts.installed_versions(), "python": sys.version.split()[0], "cpus": os.cpu_count(),
               "date": time.strftime("%Y-%m-%d")}
    cli = cli_rows() if "--cli" in argv else []
    if cli:
        slowest = max(cli, key=lambda r: r["wall_seconds"])
        summary["cli"] = {"calls": len(cli), "max_wall_seconds": slowest["wall_seconds"], "slowest": slowest,
                          "median_wall_seconds": sorted(r["wall_seconds"] for r in cli)[len(cli) // 2],
                          "calls_that_imported_torch": sum(r["imported_torch"] for r in cli)}
    if "--json" in argv:
        print(json.dumps({"summary": summary, "rows": rows, "cli_rows": cli}, indent=1))
        return 0
    for r in sorted(rows, key=lambda r: -r["seconds"])[:8]:
        print(f"{r['seconds']:7.3f} s  {r['model']:24s} {r['machine']:10s} {r['seq_len']:>6,} tokens  "
              f"{r['options']:3d} options, {r['fitting']:3d} fit")
    print(f"{summary['calls']} calls a pass; import {summary['import_seconds']} s; warm pass: max {warm['seconds']} s "
          f"({warm['model']} on {warm['machine']}), total {summary['total_seconds']} s; cold pass (meta models "
          f"built): max {cold['seconds']} s ({cold['model']} on {cold['machine']}), total "
          f"{summary['total_cold_seconds']} s; {summary['presets_from_facts']} of {len(presets())} presets planned "
          f"from their facts; torch imported in this process: {summary['torch_imported_in_process']}")
    if cli:
        c = summary["cli"]
        print(f"bigsmall-lab fit in a fresh process, {c['calls']} calls: median {c['median_wall_seconds']} s, max "
              f"{c['max_wall_seconds']} s ({c['slowest']['model']} on {c['slowest']['machine']}); "
              f"{c['calls_that_imported_torch']} imported torch")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
