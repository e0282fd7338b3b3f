"""GPU memory facts for lesson 01 and ``estimates.GPUS``: a card's totals three ways, the CUDA context, and
eager vs SDPA forward peaks of bigsmall-small's architecture (random weights, bf16) on the GPU.

    python tools/gpu_memory_facts.py [config.json] > benchmarks/gpu_memory_<card>.json

Standalone (torch, transformers, pynvml; no plotly): on a short GPU loan, pass bigsmall-small's config as a
JSON file (``bsl.zoo.config_dict("bigsmall-small")``) when the lab itself is not installed there.
benchmarks/gpu_memory_h200.json is its record on an H200 (2026-12-04).
"""
import json, os, subprocess, sys, time
out = {}
def smi():
    r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,memory.used,driver_version,ecc.mode.current",
                        "--format=csv,noheader"], capture_output=True, text=True)
    return r.stdout.strip()
out["smi_before"] = smi()
import pynvml
pynvml.nvmlInit(); h = pynvml.nvmlDeviceGetHandleByIndex(0)
mi = pynvml.nvmlDeviceGetMemoryInfo(h)
out["nvml_total"] = mi.total; used0 = mi.used
import torch
torch.empty(1, device="cuda"); torch.cuda.synchronize()
used1 = pynvml.nvmlDeviceGetMemoryInfo(h).used
out["context_bytes"] = used1 - used0 - torch.cuda.memory_reserved()
p = torch.cuda.get_device_properties(0)
out["torch_name"] = p.name; out["total_memory"] = p.total_memory
out["mem_get_info"] = torch.cuda.mem_get_info()
out["torch"] = torch.__version__
import transformers
out["transformers"] = transformers.__version__
# cuBLAS workspace: first matmul
a = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16); (a @ a).sum().item(); torch.cuda.synchronize()
out["after_first_matmul_nvml_minus_reserved"] = pynvml.nvmlDeviceGetMemoryInfo(h).used - used0 - torch.cuda.memory_reserved()
del a
# softmax(bf16, dtype=float32): bytes per element at peak
for dt in (torch.bfloat16, torch.float16, torch.float32):
    x = torch.randn(64, 1024, 1024, device="cuda", dtype=dt)
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); before = torch.cuda.memory_allocated()
    y = torch.nn.functional.softmax(x, dim=-1, dtype=torch.float32)
    torch.cuda.synchronize()
    out[f"softmax_{dt}_peak_bytes_per_elem"] = (torch.cuda.max_memory_allocated() - before) / x.numel()
    del x, y
from transformers import AutoConfig, LlamaForCausalLM
if len(sys.argv) > 1:
    cfg_d = json.load(open(sys.argv[1]))
else:
    from bigsmall_lab.zoo import config_dict
    cfg_d = config_dict("bigsmall-small")
rows = []
for impl in ("default", "sdpa", "eager"):
    cfg = transformers.LlamaConfig(**{k: v for k, v in cfg_d.items() if k not in ("model_type", "architectures", "torch_dtype")})
    kw = {} if impl == "default" else {"attn_implementation": impl}
    torch.manual_seed(0)
    m = LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16, **kw).to("cuda").eval()
    with torch.no_grad():
        m(torch.randint(0, 1000, (1, 16), device="cuda"), logits_to_keep=1)
    for S in (1024, 2048, 4096):
        ids = torch.randint(0, 1000, (1, S), device="cuda")
        torch.cuda.synchronize(); torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        with torch.no_grad():
            o = m(ids, logits_to_keep=1)
        torch.cuda.synchronize()
        rows.append({"impl": impl, "picked": m.config._attn_implementation, "seq": S,
                     "peak_above": torch.cuda.max_memory_allocated() - before})
        del o
    del m; torch.cuda.empty_cache()
out["forward"] = rows
out["smi_after"] = smi()
print(json.dumps(out, indent=1, default=str))
