"""Write bigsmall_lab/data/advisor_measurements.json: the measured costs the advisor ranks options by.

Every figure is COPIED from a measurement the lab stored, never typed in: benchmarks/cpu.json,
benchmarks/gpu_offload_h200.json and the stored outputs of lesson 04b (bitsandbytes' KL and top-1
agreement with their 95 % intervals, which no benchmark file keeps). Each entry names the model it was
measured on, where, and the file it came from. tests/test_advisor.py re-extracts the table and fails
when the sources moved on without this file (re-run this tool then).

Usage: python tools/advisor_tables.py [--check]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bigsmall_lab" / "data" / "advisor_measurements.json"
LESSON_04B = "lessons/04b_bitsandbytes.ipynb"

# One line of lesson 04b's variants table, e.g.
#       int8: perplexity  20.80 [ 16.89,  25.88]; KL 0.0190 [0.0165, 0.0219] nats/token; top-1 agreement 91.6% [89.7%, 93.4%]
_VARIANT = re.compile(r"^\s*(?P<name>[\w-]+): perplexity\s+[\d.]+ \[[^]]*\]; KL (?P<kl>[\d.]+) \[(?P<kl_low>[\d.]+), "
                      r"(?P<kl_high>[\d.]+)\] nats/token; top-1 agreement (?P<top1>[\d.]+)% \[(?P<top1_low>[\d.]+)%, "
                      r"(?P<top1_high>[\d.]+)%\]")
_SCORED = re.compile(r"scored ([\d,]+) predicted tokens")


def _cell_text(cell: dict) -> str:
    return "".join("".join(o.get("text", "")) for o in cell.get("outputs", []))


def _lesson_04b() -> tuple[dict, str]:
    nb = json.loads((ROOT / LESSON_04B).read_text())
    source = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code" and "MODEL = " in "".join(c["source"]))
                     ["source"])
    model = re.search(r'MODEL = "([^"]+)"', source).group(1)
    for cell in nb["cells"]:
        text = _cell_text(cell)
        rows = [m.groupdict() for line in text.splitlines() if (m := _VARIANT.match(line))]
        if rows:
            scored = int(_SCORED.search(text).group(1).replace(",", ""))
            where = (f"{LESSON_04B}, stored output of the variants cell: {model} loaded with each BitsAndBytesConfig, "
                     f"{scored:,} held-out next-token predictions scored against its bf16 copy (95 % intervals: "
                     "block bootstrap)")
            out = {}
            for r in rows:
                out[r["name"]] = {"kl_nats": float(r["kl"]), "kl_interval": [float(r["kl_low"]), float(r["kl_high"])],
                                  "top1": round(float(r["top1"]) / 100, 4),
                                  "top1_interval": [round(float(r["top1_low"]) / 100, 4),
                                                    round(float(r["top1_high"]) / 100, 4)],
                                  "model": model, "measured": where}
            return out, where
    raise SystemExit(f"{LESSON_04B} has no stored variants table: run the lesson first")


def build() -> dict:
    cpu = json.loads((ROOT / "benchmarks" / "cpu.json").read_text())
    h200 = json.loads((ROOT / "benchmarks" / "gpu_offload_h200.json").read_text())
    weights_quality, _ = _lesson_04b()

    kv = cpu["kv_cache_smollm2_cpu"]
    kv_where = (f"benchmarks/cpu.json kv_cache_smollm2_cpu: smollm2-135m-instruct in float32 on a CPU, a "
                f"{kv['prompt_tokens']:,}-token prompt then {kv['scored_tokens']} tokens scored against the dynamic cache "
                "(lesson 08's table)")
    names = {"dynamic": "dynamic", "quanto int4, residual 64": "quanto-int4", "quanto int2, residual 64": "quanto-int2",
             "hqq int4, residual 64": "hqq-int4", "hqq int2, residual 64": "hqq-int2", "fp8 (e4m3)": "fp8"}
    base_tps = kv["dynamic"]["decode_tokens_per_s"]
    cache_quality, cache_speed = {}, {}
    for label, name in names.items():
        row = kv[label]
        cache_quality[name] = {"kl_nats": row["kl_nats"], "top1": row["top1_agreement"], "model": "smollm2-135m-instruct",
                               "measured": f"{kv_where}; '{label}'"}
        cache_speed[name] = {"time_ratio": round(base_tps / row["decode_tokens_per_s"], 4),
                             "measured": f"{kv_where}: decode tokens/s, dynamic {base_tps} vs '{label}' "
                                         f"{row['decode_tokens_per_s']}"}

    gen = cpu["quantized_smollm2_generation_cpu_1_thread"]
    gen_where = (f"benchmarks/cpu.json quantized_smollm2_generation_cpu_1_thread: smollm2-135m-instruct, "
                 f"{gen['new_tokens']} greedy tokens on one CPU thread ({gen['note']})")
    weights_speed = {q: {"time_ratio": round(gen["bf16"]["tokens_per_s"] / gen[q]["tokens_per_s"], 4),
                         "measured": f"{gen_where}: tokens/s bf16 {gen['bf16']['tokens_per_s']} vs {q} "
                                     f"{gen[q]['tokens_per_s']}"}
                     for q in ("int8", "nf4")}

    flux = h200["flux_transformer"]["runs"]
    none_s = flux["none"]["median_s"]
    flux_where = (f"benchmarks/gpu_offload_h200.json flux_transformer: the FLUX.1-dev transformer's forward pass on an "
                  f"H200 (torch {h200['torch']}), median seconds against {none_s:.4f} s with no offloading")
    seq = flux["sequential (accelerate cpu_offload)"]["median_s"]
    leaf_stream = flux["leaf_level + stream (diffusers' benchmark scenario)"]["median_s"]
    compare = {r["label"]: r for r in h200["lab_compare_tiny_bf16"]}
    tiny_where = ("benchmarks/gpu_offload_h200.json lab_compare_tiny_bf16: the lab's tiny FLUX-shaped pipeline in bf16 "
                  "on an H200, seconds per image against no offloading")
    disk = cpu["disk_offload_bigsmall_small_cpu_200mib"]
    placement_speed = {
        "cpu_offload": {"time_ratio": round(seq / none_s, 4),
                        "measured": f"{flux_where}: accelerate's cpu_offload (every weight crosses PCIe each pass) "
                                    f"{seq:.4f} s; the advisor scales it by the share of weights spilled"},
        "disk_vs_cpu": {"time_ratio": disk["ratio"],
                        "measured": "benchmarks/cpu.json disk_offload_bigsmall_small_cpu_200mib: bigsmall-small on a "
                                    f"CPU, {disk['seconds_per_token_offloaded']} s/token with {disk['disk_mib']} MiB "
                                    f"on disk vs {disk['seconds_per_token_full']} s/token in RAM"},
    }
    tp = cpu["tensor_parallel_smollm2_3_ranks_cpu"]
    diffusers_speed = {
        "model": {"time_ratio": round(compare["model offload"]["ratio"], 4),
                  "measured": f"{tiny_where}: model offload"},
        "block_level": {"time_ratio": round(compare["group offloading, block level (2 blocks per group)"]["ratio"], 4),
                        "measured": f"{tiny_where}: block level, 2 blocks per group"},
        "leaf_level+stream": {"time_ratio": round(leaf_stream / none_s, 4),
                              "measured": f"{flux_where}: leaf level + stream {leaf_stream:.4f} s"},
        "sequential": {"time_ratio": round(seq / none_s, 4),
                       "measured": f"{flux_where}: sequential (accelerate cpu_offload) {seq:.4f} s"},
    }
    lossless = {
        "tensor_parallel": {"kl_nats": 0.0, "measured": "benchmarks/cpu.json tensor_parallel_smollm2_3_ranks_cpu: "
                            f"max logit difference {tp['max_logit_diff']:.2g}, tokens identical "
                            f"{tp['tokens_identical']} (float32, 3 ranks)"},
        "spill": {"kl_nats": 0.0, "measured": "benchmarks/cpu.json disk_offload_bigsmall_small_cpu_200mib: same tokens "
                  f"{disk['same_tokens']} with layers offloaded (the same weights, moved, not changed)"},
        "diffusers_offload": {"kl_nats": 0.0, "measured": f"{tiny_where}: same image "
                              f"{all(r['same'] for r in compare.values())} for every strategy"},
    }
    return {"written_by": "tools/advisor_tables.py (copied from the files each entry names; never typed in)",
            "quality": {"weights": weights_quality, "cache": cache_quality, "lossless": lossless},
            "speed": {"weights": weights_speed, "cache": cache_speed, "placement": placement_speed,
                      "diffusers": diffusers_speed}}


def main(argv: list[str]) -> int:
    table = build()
    text = json.dumps(table, indent=1, ensure_ascii=False) + "\n"
    if "--check" in argv:
        same = OUT.exists() and OUT.read_text() == text
        print("up to date" if same else f"{OUT.relative_to(ROOT)} is stale: run python tools/advisor_tables.py")
        return 0 if same else 1
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
