"""The talk's claims, each tied to the lesson cell that computes or measures it.

One :class:`TalkClaim` per claim of the talk ("Big parameters, small GPUs"): the lesson (a stem of
``_project.LESSONS``), the claim in a few words, ``cell``: text that only one code cell of that lesson holds,
and ``figure``: a regular expression that finds, in that cell's outputs, the figure it produced on the machine
that last ran the lessons. ``tools/claims.py`` writes ``docs/claims.md`` from these, reading the committed
notebooks; ``tests/test_claims.py`` checks that every cell and figure is there and that the file is current.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CLAIMS", "TalkClaim", "claims_markdown", "find_figure"]


@dataclass(frozen=True)
class TalkClaim:
    lesson: str
    claim: str
    cell: str
    figure: str


_C = TalkClaim
CLAIMS: tuple[TalkClaim, ...] = (
    # 01 memory maths
    _C("01_memory_maths", "memory to load ~ parameters x bytes per parameter: Llama 3.1 8B in bf16 is ~16 GB",
       "n_params = bsl.count_parameters(PRESET)", r"[\d,]+ parameters x 2 bytes \(bfloat16\) = [\d.]+ GB"),
    _C("01_memory_maths", "a free Colab T4 sold as 16 GB: about 15 GB usable, so the 8B does not fit",
       "n_params = bsl.count_parameters(PRESET)", r"a free Colab T4: torch sees [\d.]+ GB of it -> the weights fit: False"),
    _C("01_memory_maths", "the T4's memory three ways (box, nvidia-smi, torch) and the CUDA context, counted once",
       "on_box = t4.marketed_number", r"torch's total_memory: [\d,]+ bytes = [\d.]+ GiB = [\d.]+ GB"),
    _C("01_memory_maths", "the count by hand equals the meta device's", "by_hand = embeddings + layers",
       r"by hand: [\d,]+ meta device: [\d,]+"),
    _C("01_memory_maths", "plus what running adds: the KV cache", "kv = bsl.kv_cache_bytes(PRESET",
       r"KV cache of [^\n]*"),
    _C("01_memory_maths", "plus a little for the forward pass: estimate next to measured", "PEAK_BAND = (",
       r"peak of load \+ forward: estimate [\d.,]+ MiB, measured [\d.,]+ MiB, ratio [\d.]+"),
    _C("01_memory_maths", "the forward pass depends on the attention kernel (eager vs SDPA)", "SCORES_TOLERANCE = ",
       r"eager - sdpa: the scores: estimate [\d.,]+ MiB, measured [\d.,]+ MiB, ratio [\d.]+"),
    # 02 Big Model Inference
    _C("02_big_model_inference", "the usual load makes the model twice (random init, then the weights)",
       "naive_estimate = bsl.weights_bytes(path", r"naive: init, then load: host peak [\d,]+ MiB; estimate [^;]*; ratio [\d.]+"),
    _C("02_big_model_inference", "Big Model Inference holds the checkpoint once",
       "naive_estimate = bsl.weights_bytes(path", r"Big Model Inference: from_pretrained: host peak [^\n]*"),
    _C("02_big_model_inference", "an empty model on the meta device: shapes and no data, any size for free",
       "empty = AutoModelForCausalLM.from_config(config", r"[\d,]+ parameters, [\d.]+ GB in bfloat16 once[^\n]*"),
    _C("02_big_model_inference", "one shard at a time (accelerate's loop): memory needs only the shard in flight",
       "FLIGHT_TOL = 0.10", r"model-00002-of-00004.safetensors: after [^\n]*"),
    _C("02_big_model_inference", "what transformers 5 does instead: every shard mapped, a pool of loader threads",
       "facts = loaders.transformers.loader", r"transformers [\d.]+: \d+ loader threads here[^\n]*"),
    _C("02_big_model_inference", "disk offload when memory is not enough: the same tokens, slower",
       "offloaded_run = bsl.loading.generate_timed", r"same tokens and bit-identical logits[^\n]*"),
    # 04a quantization maps
    _C("04a_quantization_maps", "affine quantization: a scale and a zero-point map the float range onto the integers",
       "x = torch.tensor([-3.5, 0.0, 10.2])", r"zero-point\s+=[^\n]*"),
    _C("04a_quantization_maps", "the lab's maps are bitsandbytes' maps, byte for byte", "wf = w.float()",
       r"nf4: same [\d,]+ packed bytes: True; same [\d,]+ absmax: True"),
    _C("04a_quantization_maps", "it is lossy, more so at 4 bits", "bsl.quant.evaluate(tiny_w",
       r"SQNR: uniform int4 [\d.]+ dB, NF4 [\d.]+ dB, FP4 [\d.]+ dB"),
    # 04b bitsandbytes
    _C("04b_bitsandbytes", "BitsAndBytesConfig(load_in_8bit=True) as quantization_config: the bytes it stores",
       "fp = r.footprint", r"int8: [\d,]+ \+ [\d,]+ quant state = [\d,]+ bytes; estimate [\d,]+, "
       r"stored / estimate = [\d.]+"),
    _C("04b_bitsandbytes", "the talk's load_in_8bit keyword is refused today", "bsl.quantized.rejected_keyword(",
       r"TypeError: [^\n]*"),
    _C("04b_bitsandbytes", "lossy, more so at 4 bits (1,024 held-out tokens, 95% intervals)",
       'ref_ppl = got["int8"].agreement.reference_ppl_interval', r"nf4: perplexity[^\n]*"),
    _C("04b_bitsandbytes", "where the integers meet the floats on this machine", 'print(f"this machine: AVX512-BF16',
       r"nf4 \(4-bit\): [^\n]*"),
    _C("04b_bitsandbytes", "quantization may slow inference", 'base = got["bf16"].forward_s', r"int8:[^\n]*"),
    _C("04b_bitsandbytes", "Llama 3.1 8B fits a T4 once quantized", "fits = {r.quantization: bsl.estimate(PRESET",
       r"llama-3.1-8b\s+int8: [^\n]*"),
    # 05 offloading
    _C("05_offloading", "FLUX.1-dev: ~9 GB of text encoders", 'encoders = size["text_encoder"] + size["text_encoder_2"]',
       r"two text encoders:\s+[\d.]+ GB = [\d.]+ GiB"),
    _C("05_offloading", "FLUX.1-dev: ~22 GB of transformer, ~33 GB in all",
       'encoders = size["text_encoder"] + size["text_encoder_2"]', r"all four parts:\s+[\d.]+ GB = [\d.]+ GiB"),
    _C("05_offloading", "model offload moves one whole component at a time", 'model = bsl.offload.run(PIPELINE, OffloadSettings("model")',
       r"OffloadResult\(model offload[^)]*\)"),
    _C("05_offloading", "sequential CPU offload moves every layer in and out", 'sequential = OffloadSettings("sequential")',
       r"keeps [\d.]+ MiB of [\d.]+ MiB on the GPU, moved in \d+ pieces[^\n]*"),
    _C("05_offloading", "group offloading moves groups of layers", 'block = bsl.offload.run(PIPELINE, OffloadSettings("block_level"',
       r"group offloading, block level \(2 blocks per group\): plan [^\n]*"),
    _C("05_offloading", "streams prefetch the next group (a plan here, measured on a GPU)",
       "streamed = [OffloadSettings(", r"leaf level \+ stream: [\d.]+ MiB on the GPU at the peak \(plan\)"),
    _C("05_offloading", "speed: published GPU figures next to this machine's", "pub_none, pub_stream = bsl.offload_plan.published",
       r"published \(an L40\): [^\n]*"),
    _C("05_offloading", "it can offload to disk too", 'to_disk = OffloadSettings("block_level"',
       r"peak while generating: [^\n]*"),
    # 03 dtypes
    _C("03_dtypes", "a float is sign, exponent and mantissa: fp32 1+8+23, fp16 1+5+10, bf16 1+8+7",
       "views.formats_table([", r"bfloat16\s+16\s+1 / 8 / 7"),
    _C("03_dtypes", "bf16 keeps fp32's range with less precision", 'coarser = info["bfloat16"].eps',
       r"bf16 steps / fp32 steps: [\d,]+; largest values: fp32 [\de.+]+, bf16 [\de.+]+"),
    _C("03_dtypes", "fp16's smaller range overflows where bf16 does not", "b = bsl.bits.decompose(70000, dtype)",
       r"70000 in float16\s+->\s+inf"),
    _C("03_dtypes", "without a dtype the model is made in fp32, twice the bytes; dtype='auto' keeps the checkpoint's",
       'fp32, auto = str(torch.float32), "auto"', r"weights held: float32 [\d,]+ MiB, auto [\d,]+ MiB, ratio [\d.]+"),
    # 06 tensor parallelism
    _C("06_tensor_parallelism", "split each weight across GPUs: a model no single GPU holds fits",
       "big = bsl.tp_plan.plan(BIG, nproc=2", r"[\d.]+ GB in one process, [\d.]+ GB on each of 2 GPUs"),
    _C("06_tensor_parallelism", "the split model gives the same results", "greedy tokens identical on every rank",
       r"greedy tokens identical on every rank and in one process: True"),
    _C("06_tensor_parallelism", "results are synchronised: collectives in every layer",
       "result.collectives == expected.collectives", r"measured in one forward pass: \{[^}]*\}"),
    _C("06_tensor_parallelism", "faster because devices compute at once, minus the communication",
       "comm = result.allreduce_s_per_token",
       r"one process: [\d,]+ ms per token; \d+ ranks: [\d,]+ ms per token \([^)]*\)\s*all-reduces: [^\n]*"),
    # 07 device_map
    _C("07_device_map", '"auto" splits evenly, "balanced_low_0" keeps GPU 0 light, "sequential" fills in order',
       'plans = {s: bsl.placement.plan(PRESET, s, BUDGETS) for s in', r"auto -> [^\n]*"),
    _C("07_device_map", '"balanced_low_0" leaves GPU 0 lighter for generate', 'low0, auto = plans["balanced_low_0"]',
       r"GPU 0 holds [\d.]+ GiB with balanced_low_0, [\d.]+ GiB with auto"),
    _C("07_device_map", '"sequential" fills GPUs in order; the last may stay unused', "sequential3 = bsl.placement.plan",
       r"sequential: \[[^\]]*\]"),
    _C("07_device_map", "layers with residual connections are never split", 'print(f"never split:',
       r"never split: \('LlamaDecoderLayer',\); \d+ of them"),
    _C("07_device_map", "CPU and disk offload through hooks, placed as planned",
       "loads = {s: bsl.loading.load_placed(path, s", r"auto: predicted == hf_device_map: True; weights held [^\n]*"),
    _C("07_device_map", "slower than TP: the GPUs work one after another", "for gpu in spill.gpus:",
       r"GPU 0: computes \d+ of \d+ layers[^\n]*"),
    # 08 KV cache
    _C("08_kv_cache", "the cache grows linearly with the tokens: 2 x layers x KV heads x head dim x bytes each",
       "per_token = 2 * layers * kv_heads", r"[\d,]+ tokens: by hand [\d,]+ bytes, kv_cache_bytes [\d,]+ bytes, "
       r"the model's cache \([\d,]+ tokens\) weighed [\d,]+ bytes"),
    _C("08_kv_cache", "grouped-query attention keeps fewer KV heads", "variants = kv_plan.attention_variants(PRESET)",
       r"grouped-query \(GQA, 8 KV heads\)\s+[\d.]+ GiB at [\d,]+ tokens"),
    _C("08_kv_cache", "caching keys and values avoids recomputing them", "recompute = kvcache.recompute_vs_cache(",
       r"positions processed: [\d,]+ with the cache, [\d,]+ without \([\d,]+x\)"),
    _C("08_kv_cache", "the offloaded cache keeps only the current layers on the GPU",
       "plans = [kv_plan.plan_cache_offload(PRESET, 131072", r"llama-3.1-8b, 131,072 tokens, bf16: [^\n]*"),
    _C("08_kv_cache", "a quantized cache stores it in fewer bits, at a small cost in quality",
       "by = {r.settings.name: r for r in runs}",
       r"quanto int4, residual \d+\s+[\d.]+% of the dynamic cache, KL [\d.]+, top-1 \d+%"),
    # 09 fit it: the toolbox put together
    _C("09_fit_it", "Llama 3.1 8B on a free T4 at 8K: bf16 does not fit the GPU; staying on it means quantizing",
       't4 = advisor.fit("llama-3.1-8b", "T4"', r"llama-3.1-8b on a T4 at [\d,]+ tokens: bf16 needs [^\n]*"),
    _C("09_fit_it", "Llama 3.1 70B on 2 x 24 GB: nothing fits; the smallest changes that would",
       'found = advisor.changes("llama-3.1-70b"', r"nothing fits llama-3.1-70b on [^\n]*(?:\n[^\n]+){1,4}"),
    _C("09_fit_it", "FLUX.1-dev on a 16 GB GPU: offload the pipeline (group offloading)",
       'flux = advisor.fit("flux.1-dev-transformer"', r"FLUX.1-dev on [^\n]*"),
    _C("09_fit_it", "the top option run here under a budget: measured peak next to the plan (within 10 %)",
       "run = fit_run.run(top, MODEL", r"[^\n]* on \S+: planned [\d,.]+ MiB, measured peak [\d,.]+ MiB, ratio [\d.]+"),
)


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else (value or "")


def _outputs(cell: dict) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(_text(output.get("text")))
        data = output.get("data", {})
        parts.append(_text(data.get("text/plain")))
        if "text/html" in data:  # a table: its cells' text, without the tags
            parts.append(re.sub(r"<[^>]+>", " ", _text(data["text/html"])))
    # one space between words: a figure's pattern need not know how a table padded its columns
    return "\n".join(" ".join(line.split()) for line in "\n".join(parts).splitlines())


def find_figure(claim: TalkClaim, lessons: Path) -> tuple[int, str]:
    """(index of the one code cell holding ``claim.cell``, the figure its outputs show).

    Raises LookupError naming the lesson and what is missing: no such cell, several, or no figure.
    """
    nb = json.loads((lessons / f"{claim.lesson}.ipynb").read_text())
    cells = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and claim.cell in _text(c["source"])]
    if len(cells) != 1:
        raise LookupError(f"{claim.lesson}: {len(cells)} code cells hold {claim.cell!r}, not one")
    match = re.search(claim.figure, _outputs(nb["cells"][cells[0]]))
    if match is None:
        raise LookupError(f"{claim.lesson} cell {cells[0]}: its outputs show nothing like {claim.figure!r}")
    return cells[0], " ".join(match.group(0).split())


def claims_markdown(lessons: Path) -> str:
    """docs/claims.md: every talk claim, the cell that computes or measures it, the figure it produced."""
    rows = ["| lesson | the talk's claim | cell | figure on the machine that last ran the lessons |",
            "|---|---|---|---|"]
    for claim in CLAIMS:
        index, figure = find_figure(claim, lessons)
        cells = [claim.lesson, claim.claim, f"{index} (`{claim.cell}`)", figure]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return ("# The talk's claims, where each is computed or measured\n\n"
            "Written by `python tools/claims.py` from the committed lessons' outputs (`make notebooks` runs it);\n"
            "`tests/test_claims.py` fails when a cell or figure has moved. Cells are counted from 0.\n\n"
            + "\n".join(rows) + "\n")
