"""Lesson 05's GPU check: pinned memory of ``use_stream=True`` and the time offloading costs, measured.

    PYTHONPATH=. python tools/gpu_offload_check.py OUT.json [--flux-layers N]

Part 1 runs the lab's own functions on the lab's tiny FLUX pipeline: ``measure_pinned`` (block and
leaf level with a stream) next to ``pinned_memory_plan``, and ``compare`` of every strategy with
medians of 5 images. Part 2 builds FLUX.1-dev's transformer from its real config with random bf16
weights (``--flux-layers`` keeps the first N double and single blocks; 0 keeps them all) and times
one forward pass at diffusers' benchmark inputs (1024x1024 latents, 512 text tokens): no offloading,
leaf level + stream (diffusers' published scenario), leaf level without a stream, and accelerate's
sequential offload. Each part writes what it measured, or the error, into OUT.json.
On a machine without CUDA it says so and exits.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
import traceback


def _timed(fn, repeats: int) -> list[float]:
    import torch

    runs = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        runs.append(time.perf_counter() - start)
    return runs


def _host_stats() -> dict:
    import torch

    stats = torch.cuda.host_memory_stats() if hasattr(torch.cuda, "host_memory_stats") else {}
    return {k: int(v) for k, v in stats.items() if "bytes" in k and k.endswith("current")}


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def part_lab(out: dict) -> None:
    import torch

    import bigsmall_lab as bsl
    from bigsmall_lab.offload import OffloadSettings

    pinned = {}
    for s in (OffloadSettings("block_level", use_stream=True), OffloadSettings("leaf_level", use_stream=True)):
        m = bsl.offload.measure_pinned("tiny", s, torch.bfloat16)
        pinned[s.label] = dict(plan_offloaded=m.plan.offloaded_bytes, plan_pinned=m.plan.pinned_bytes,
                               plan_reserved=m.plan.reserved_bytes, n_tensors=m.plan.n_tensors,
                               host_allocated=m.host_allocated_bytes,
                               rss_before=m.rss_before_bytes, rss_after=m.rss_after_bytes, rss_peak=m.rss_peak_bytes,
                               host_stats=_host_stats())
    out["lab_pinned_tiny_bf16"] = pinned
    settings = [OffloadSettings("model"), OffloadSettings("sequential"),
                OffloadSettings("block_level", num_blocks_per_group=2),
                OffloadSettings("block_level", use_stream=True), OffloadSettings("leaf_level"),
                OffloadSettings("leaf_level", use_stream=True)]
    results = bsl.offload.compare_strategies("tiny", settings, torch.bfloat16, "cuda", repeats=5)
    base = results[0]
    out["lab_compare_tiny_bf16"] = [
        dict(label=r.label, ran=r.ran, peak_bytes=r.peak_bytes, plan_bytes=r.plan.device_bytes,
             seconds=r.seconds_per_image, runs=list(r.seconds_runs), ratio=bsl.offload.time_ratio(r, base),
             same=r.equal) for r in results]


def part_flux(out: dict, layers: int) -> None:
    import torch
    from diffusers import FluxTransformer2DModel
    from diffusers.hooks import HookRegistry, apply_group_offloading

    from bigsmall_lab.zoo import config_dict

    cfg = dict(config_dict("flux.1-dev-transformer"))
    if layers:
        cfg["num_layers"], cfg["num_single_layers"] = layers, 2 * layers
    config = {k: v for k, v in cfg.items() if not k.startswith("_")}
    with torch.device("meta"):
        model = FluxTransformer2DModel.from_config(config).to(torch.bfloat16)
    model = model.to_empty(device="cuda")
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.eval()
    n_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    dev = dict(device="cuda", dtype=torch.bfloat16)
    inputs = dict(hidden_states=torch.randn(1, 4096, 64, **dev), encoder_hidden_states=torch.randn(1, 512, 4096, **dev),
                  pooled_projections=torch.randn(1, 768, **dev), img_ids=torch.ones(4096, 3, **dev),
                  txt_ids=torch.ones(512, 3, **dev), timestep=torch.tensor([1.0], device="cuda"),
                  guidance=torch.tensor([1.0], device="cuda"))
    flux = out["flux_transformer"] = {"weights_bytes": n_bytes, "num_layers": cfg["num_layers"],
                                      "num_single_layers": cfg["num_single_layers"], "runs": {}}

    def forward():
        with torch.no_grad():
            model(**inputs)

    def scenario(name, warm=2, repeats=3):
        torch.cuda.reset_peak_memory_stats()
        _timed(forward, warm)
        torch.cuda.reset_peak_memory_stats()
        runs = _timed(forward, repeats)
        flux["runs"][name] = dict(median_s=statistics.median(runs), runs=runs,
                                  max_allocated_bytes=torch.cuda.max_memory_allocated())
        print(name, flux["runs"][name], flush=True)

    scenario("none")
    model.to("cpu")
    torch.cuda.empty_cache()
    rss0, host0 = _rss(), _host_stats()
    start = time.perf_counter()
    apply_group_offloading(model, onload_device=torch.device("cuda"), offload_device=torch.device("cpu"),
                           offload_type="leaf_level", use_stream=True, non_blocking=True)
    flux["leaf_stream_apply"] = dict(seconds=time.perf_counter() - start, rss_before=rss0, rss_after=_rss(),
                                     host_before=host0, host_after=_host_stats())
    print(flux["leaf_stream_apply"], flush=True)
    scenario("leaf_level + stream (diffusers' benchmark scenario)")
    registry = HookRegistry.check_if_exists_or_initialize(model)
    for hook in ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading"):
        registry.remove_hook(hook, recurse=True)
    model.to("cpu")
    apply_group_offloading(model, onload_device=torch.device("cuda"), offload_device=torch.device("cpu"),
                           offload_type="leaf_level")
    scenario("leaf_level, no stream", warm=1, repeats=2)
    registry.remove_hook("group_offloading", recurse=True)
    model.to("cpu")
    from accelerate import cpu_offload

    cpu_offload(model, execution_device=torch.device("cuda"))
    scenario("sequential (accelerate cpu_offload)", warm=1, repeats=2)


def main() -> int:
    import torch

    args = sys.argv[1:]
    path = args[0] if args else "gpu_offload_check.json"
    layers = int(args[args.index("--flux-layers") + 1]) if "--flux-layers" in args else 0
    if not torch.cuda.is_available():
        print("This check needs a CUDA GPU; none is attached here, so nothing was measured or written.")
        return 0
    out = {"torch": torch.__version__, "gpu": torch.cuda.get_device_name()}
    for name, part in (("lab", lambda: part_lab(out)), ("flux", lambda: part_flux(out, layers))):
        start = time.perf_counter()
        try:
            part()
        except Exception:
            out[f"{name}_error"] = traceback.format_exc()
            print(out[f"{name}_error"], flush=True)
        out[f"{name}_seconds"] = time.perf_counter() - start
        with open(path, "w") as f:
            json.dump(out, f, indent=1, default=str)
    print(json.dumps(out, indent=1, default=str)[:6000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
