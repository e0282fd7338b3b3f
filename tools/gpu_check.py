"""The lab's GPU check: run the CUDA paths for real and write what they measured.

    PYTHONPATH=. python tools/gpu_check.py            # writes benchmarks/gpu_check.json

One prepared script for a short GPU loan (a few minutes): the CUDA context's size (measured first,
before anything else touches CUDA), the hardware banner, track() with torch and NVML figures and a
nested block, the Sampler's callback on CUDA, zoo.build of the 8B preset with random weights directly
on the GPU (its measured peak next to parameters x 2 bytes), forward passes whose peaks sit beside
``estimates.activation_bytes``, then the tests marked `gpu`. It uses only the lab's public names and
needs no plotly or widgets. On a machine without CUDA it says so and exits without writing anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    import torch

    import bigsmall_lab as bsl
    from bigsmall_lab._units import GiB
    from bigsmall_lab.estimates import activation_bytes
    from bigsmall_lab.measure import Sampler

    if not bsl.has_cuda():
        print("The GPU check needs a CUDA GPU; none is attached here, so nothing was measured or written.")
        return 0
    out = {"cuda_context_bytes": bsl.hardware.cuda_context_bytes(), "banner": bsl.banner()}

    with bsl.track("1 GiB tensor", device="cuda") as t:
        x = torch.ones(GiB // 4, device="cuda")
    out["track_1gib"] = {"peak_bytes": t.peak_bytes, "reserved_peak_bytes": t.cuda_reserved_peak_bytes,
                         "nvml_used_peak_bytes": t.nvml_used_peak_bytes, "samples": len(t.samples)}
    del x
    with bsl.track("outer", device="cuda") as outer:
        x = torch.ones(GiB // 4, device="cuda")
        del x
        with bsl.track("inner", device="cuda") as inner:
            y = torch.ones(2**20, device="cuda")
            del y
    out["nested_track"] = {"outer_peak_bytes": outer.peak_bytes, "inner_peak_bytes": inner.peak_bytes,
                           "outer_over_1gib": outer.peak_bytes / GiB}
    seen = []
    with Sampler(interval_s=0.01, device="cuda", on_sample=seen.append) as sampler:
        x = torch.ones(GiB // 4, device="cuda")
        torch.cuda.synchronize()
        time.sleep(0.1)
        del x
    out["sampler_cuda"] = {"samples": len(sampler.samples), "callbacks": len(seen), "error": repr(sampler.error),
                           "max_allocated_bytes": max(s.cuda_allocated for s in sampler.samples),
                           "nvml_present": all(s.nvml_used is not None for s in sampler.samples)}
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
    out["forward_8b"] = []
    for seq_len in (4096, 16384):
        for all_logits in (False, True):
            ids = torch.randint(0, 1000, (1, seq_len), device="cuda")
            torch.cuda.empty_cache()
            with bsl.track(f"forward {seq_len}", device="cuda") as t, torch.no_grad():
                logits = model(ids, logits_to_keep=0 if all_logits else 1).logits
            out["forward_8b"].append({
                "seq_len": seq_len, "all_logits": all_logits, "logits_dtype": str(logits.dtype),
                "peak_above_weights_bytes": t.peak_bytes, "reserved_peak_bytes": t.cuda_reserved_peak_bytes,
                "activation_estimate_bytes": activation_bytes(preset, seq_len, all_logits=all_logits),
                "ratio": t.peak_bytes / activation_bytes(preset, seq_len, all_logits=all_logits)})
            del logits
    est = bsl.estimate(preset, seq_len=4096, overhead_bytes=out["cuda_context_bytes"],
                       overhead_source="measured by tools/gpu_check.py")
    out["estimate_8b_measured_overhead"] = est.as_dict()
    del model
    torch.cuda.empty_cache()

    tests = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                            "tests/test_measure.py", "tests/test_hardware.py"],
                           cwd=ROOT, capture_output=True, text=True)
    out["gpu_tests"] = {"returncode": tests.returncode, "summary": tests.stdout.strip().splitlines()[-1:]}
    path = ROOT / "benchmarks" / "gpu_check.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return tests.returncode


if __name__ == "__main__":
    sys.exit(main())
