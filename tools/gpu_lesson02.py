"""Lesson 02's GPU branch, run for real: the claims a GPU takes (cells of sections 1, 4 and 6) and the
phases of ``from_pretrained`` on CUDA, with the installed transformers (the GPU image's may be older).

    python tools/gpu_lesson02.py --out DIR            # on the GPU machine (platformdirs on PYTHONPATH)
    python tools/gpu_lesson02.py --out DIR --dry-run  # the same on this CPU

Writes ``DIR/lesson02_gpu.json``: what was measured and each claim's sentence with whether it held. The exit
status is 1 when a claim failed. It uses the lab's ``bigsmall-small`` checkpoint (random weights, written once).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=".")
    parser.add_argument("--dry-run", action="store_true", help="run on the CPU")
    args = parser.parse_args(argv)
    import torch
    import transformers

    import bigsmall_lab as bsl
    from bigsmall_lab import _compat, loading
    from bigsmall_lab.exercises import check_shard_loop_peak

    device = "cpu" if args.dry_run else "cuda"
    mib = 2**20
    out: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                 "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
                 "claims": [], "measured": {}}

    def claim(holds, sentence, measured=None):
        out["claims"].append({"claim": sentence, "held": bool(holds), "measured": measured})
        print(("ok   " if holds else "FAIL ") + sentence, measured if measured is not None else "", flush=True)

    with _compat.from_pretrained_phases() as facts:
        out["loader"] = dataclasses.asdict(facts)
    t0 = time.perf_counter()
    path = bsl.checkpoint("bigsmall-small", shard_size="100MB", progress=False)
    out["measured"]["checkpoint_s"] = round(time.perf_counter() - t0, 1)

    # section 1: naive vs BMI (cell 18's claims on a GPU)
    loads = loading.compare_loads(path, device=device)
    naive_est = bsl.weights_bytes(path, "float32") + bsl.weights_bytes(path, "bfloat16")
    ckpt = loads.bmi.checkpoint_bytes
    out["measured"]["section1"] = {
        "naive_host_peak_mib": loads.naive.host_peak_bytes / mib, "naive_device_peak_mib": loads.naive.peak_bytes / mib,
        "bmi_host_peak_mib": loads.bmi.host_peak_bytes / mib, "bmi_device_peak_mib": loads.bmi.peak_bytes / mib,
        "naive_estimate_mib": naive_est / mib, "checkpoint_mib": ckpt / mib, "ratio": loads.ratio}
    claim(loads.naive.agrees_with(naive_est, 0.10), "naive host peak = float32 model + bf16 state dict within 10%",
          f"{loads.naive.host_peak_bytes / naive_est:.3f}")
    claim(loads.bmi.agrees_with(ckpt, 0.10, host=device == "cpu"), "BMI device peak = the checkpoint once within 10%",
          f"{(loads.bmi.host_peak_bytes if device == 'cpu' else loads.bmi.peak_bytes) / ckpt:.3f}")

    # section 4: the shard loop (cell 34's claims)
    steps = loading.shard_by_shard(path, device=device)
    out["measured"]["shard_loop"] = [dataclasses.asdict(s) for s in steps.steps]
    claim(all(steps.one_shard_in_flight(0.10)), "at most one shard in flight per shard",
          [s.in_flight_bytes for s in steps.steps])
    claim(all(steps.holds_what_was_loaded(0.05)), "after each shard the loop holds what was placed, within 5%",
          [(s.after_bytes, s.loaded_bytes) for s in steps.steps])
    del steps

    # section 4: both loaders into float32, phase by phase
    cmp = loading.compare_loaders(path, device=device, dtype="float32")
    acc, hf = cmp.accelerate, cmp.transformers
    model_bytes = acc.steps[-1].loaded_bytes
    out["measured"]["loaders"] = {
        "accelerate_phases_mib": {p.name: p.peak_bytes / mib for p in acc.phases},
        "transformers_phases_mib": {p.name: p.peak_bytes / mib for p in hf.phases},
        "accelerate_peak_mib": acc.peak_bytes / mib, "transformers_peak_mib": hf.peak_bytes / mib,
        "accelerate_estimate_mib": acc.estimate_peak_bytes / mib, "model_mib": model_bytes / mib,
        "mapped_mib": {"accelerate": acc.mapped_bytes / mib, "transformers": hf.mapped_bytes / mib},
        "host_peak_mib": {"accelerate": (acc.report.peak_rss_anon_bytes + acc.report.peak_rss_file_bytes
                                         - acc.report.samples[0].rss_bytes) / mib,
                          "transformers": hf.host_peak_bytes / mib},
        "ratio": cmp.ratio}
    claim([p.name for p in hf.phases] == list(loading.BMI_PHASES), "from_pretrained's phases were marked from inside",
          [p.name for p in hf.phases])
    claim(all(acc.one_shard_in_flight(0.10)), "accelerate's loop holds at most one shard in flight")
    claim(hf.mapped_bytes >= 0.75 * hf.checkpoint_bytes, "from_pretrained has most of the checkpoint mapped at once",
          hf.mapped_bytes / mib)
    claim(acc.mapped_bytes <= 1.1 * acc.largest_shard_bytes, "accelerate maps one shard at a time", acc.mapped_bytes / mib)
    if device == "cuda":
        claim(loading.within(hf.peak_bytes, model_bytes, 0.10), "on the GPU from_pretrained peaks at the float32 model",
              hf.peak_bytes / model_bytes)
        claim(loading.within(hf.peak_bytes, acc.peak_bytes, 0.05), "on the GPU both loaders peak alike, within 5%",
              cmp.ratio)
    switch = hf.loader.switch
    if switch:
        os.environ[switch] = "1"
        try:
            _, seq = loading.load_bmi_phases(path, device=device, dtype="float32")
        finally:
            del os.environ[switch]
        out["measured"]["sequential_peak_mib"] = seq.peak_bytes / mib
        claim(seq.loader.parallel is False, f"{switch}=1 turns the threads off")
    del cmp

    # section 6: the predict-then-run exercise with 40MB shards, answered with the lab's own rule
    mine = bsl.checkpoint("bigsmall-small", shard_size="40MB", progress=False)
    loop = loading.shard_by_shard(mine, device=device, dtype="float32", forward=True)
    answer = loop.steps[-1].loaded_bytes if device == "cuda" else loop.estimate_peak_bytes  # the float32 model
    verdict = check_shard_loop_peak(answer, loop, lesson_path=path)
    out["measured"]["exercise"] = {"peak_mib": loop.peak_bytes / mib, "answer_mib": answer / mib,
                                   "verdict": str(verdict)}
    claim(verdict.correct, "the exercise accepts the lab's rule for this device", str(verdict))

    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "lesson02_gpu.json").write_text(json.dumps(out, indent=1, default=str))
    return 0 if all(c["held"] for c in out["claims"]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
