"""Benchmarks (`make benchmark`): speed and memory figures, printed and written to benchmarks/<machine>.json.

Tests assert correctness and ordering; the figures a timing depends on live here. Each figure is
measured in this process, after imports, with bsl.track() for memory.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(fn, repeat: int = 3):
    import bigsmall_lab as bsl

    best, report = float("inf"), None
    for _ in range(repeat):
        with bsl.track(device="cpu") as t:
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
        if elapsed < best:
            best, report = elapsed, t
    return best, report.peak_bytes


def main() -> int:
    import transformers  # noqa: F401  (import time is not what is measured)

    import bigsmall_lab as bsl
    from bigsmall_lab.zoo._configs import _count_preset

    results = {"machine": bsl.banner(), "python": platform.python_version()}

    def count_405b():
        _count_preset.cache_clear()
        bsl.count_parameters("llama-3.1-405b")

    seconds, peak = timed(count_405b)
    results["count_parameters_405b"] = {"seconds": round(seconds, 3), "peak_mib": round(peak / 2**20, 1),
                                        "target": "under 2 s and 50 MB"}
    seconds, peak = timed(lambda: bsl.load_model())
    results["load_embedded_model"] = {"seconds": round(seconds, 3), "peak_mib": round(peak / 2**20, 1),
                                      "target": "under 2 s"}
    seconds, _ = timed(lambda: bsl.estimate("llama-3.1-8b", quantization="nf4"))
    results["estimate_8b_nf4"] = {"seconds": round(seconds, 3)}
    kind = "gpu" if bsl.has_cuda() else "cpu"
    out = ROOT / "benchmarks" / f"{kind}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"written to {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
