"""The lab's GPU check: run the CUDA paths for real and write what they measured.

    python tools/gpu_check.py            # writes benchmarks/gpu_check.json

One prepared script for a short GPU loan (a few minutes): the hardware banner, track() with torch and
NVML figures, the CUDA context's size, zoo.build of the 8B preset with random weights directly on the GPU
(its measured peak next to parameters x 2 bytes) and one forward pass, then the tests marked `gpu`.
On a machine without CUDA it says so and exits without writing anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GiB = 2**30


def main() -> int:
    import torch

    import bigsmall_lab as bsl
    from bigsmall_lab.measure import _NvmlUsed

    if not bsl.has_cuda():
        print("The GPU check needs a CUDA GPU; none is attached here, so nothing was measured or written.")
        return 0
    nvml = _NvmlUsed(0)
    before_context = nvml()
    torch.cuda.init()
    torch.empty(1, device="cuda")
    out = {"banner": bsl.banner(), "nvml_used_before_context_bytes": before_context,
           "cuda_context_bytes": nvml() - before_context}

    with bsl.track("1 GiB tensor", device="cuda") as t:
        x = torch.ones(GiB // 4, device="cuda")
    out["track_1gib"] = {"peak_bytes": t.peak_bytes, "reserved_peak_bytes": t.cuda_reserved_peak_bytes,
                         "nvml_used_peak_bytes": t.nvml_used_peak_bytes, "samples": len(t.samples)}
    del x
    torch.cuda.empty_cache()

    preset = "llama-3.1-8b"
    start = time.perf_counter()
    with bsl.track(f"build {preset} on cuda", device="cuda") as t:
        model = bsl.build(preset, dtype="bfloat16", device="cuda")
        torch.cuda.synchronize()
    params = bsl.count_parameters(preset)
    out["build_8b"] = {"seconds": round(time.perf_counter() - start, 2), "parameters": params,
                       "parameters_x_2_bytes": params * 2, "peak_bytes": t.peak_bytes,
                       "stored_weight_bytes": bsl.stored_weight_bytes(model),
                       "peak_over_estimate": t.peak_bytes / (params * 2), "nvml_used_peak_bytes": t.nvml_used_peak_bytes}
    seq_len = 512
    ids = torch.randint(0, 1000, (1, seq_len), device="cuda")
    with bsl.track("forward 512 tokens", device="cuda") as t, torch.no_grad():
        model(ids)
    est = bsl.estimate(preset, seq_len=seq_len)
    out["forward_8b"] = {"peak_above_weights_bytes": t.peak_bytes, "activation_estimate_bytes": est.activation_bytes,
                         "kv_cache_estimate_bytes": est.kv_cache_bytes}
    del model
    torch.cuda.empty_cache()

    tests = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "tests", "-p", "no:cacheprovider"],
                           cwd=ROOT, capture_output=True, text=True)
    out["gpu_tests"] = {"returncode": tests.returncode, "summary": tests.stdout.strip().splitlines()[-1:]}
    path = ROOT / "benchmarks" / "gpu_check.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return tests.returncode


if __name__ == "__main__":
    sys.exit(main())
