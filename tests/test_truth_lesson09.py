"""Teaching truth in lesson 09 (issue 20): its exercises give a hint first and the answer only on the second wrong
try, never before the learner answers; each recognises its slips (each tested with the slip's own value); the
lesson calls every check of its module and ends with a predict-then-run exercise; and its claims, written as
functions of their inputs, hold on the lesson's input and fail on a broken one.

Worked numbers (Llama 3.1 8B, int8 weights on a T4, from the advisor's parts): at 8,192 tokens GPU 0 holds
9.087 GB of weights + 1.074 GB of KV cache + 0.840 GB of activations + 0.5 GB of CUDA context = 11.50 GB; at
16,384 tokens the cache and the activations double: 9.087 + 2.147 + 1.678 + 0.5 = 13.41 GB.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bigsmall_lab import advisor
from bigsmall_lab.exercises import (_core, check_fewest_fitting_gpus, check_fit_run_peak, check_option_gpu_bytes,
                                    check_top_option, options_to_pick)

ROOT = Path(__file__).resolve().parents[1]
LESSON = ROOT / "lessons" / "09_fit_it.ipynb"
GB, GiB, MiB = 10**9, 2**30, 2**20
INT8 = "int8 weights, dynamic cache, GPU 0"


@pytest.fixture(autouse=True)
def fresh_questions():
    _core._ASKED.clear()
    yield
    _core._ASKED.clear()


def slip_of(check, value, *args):
    _core._ASKED.clear()
    return check(value, *args).slip


# --- 1. hint first, answer on the second wrong try, never before an answer -----------------------------------

@pytest.mark.parametrize("check, wrong, args", [
    (check_top_option, 1, ("llama-3.1-8b", advisor.machine("L4", cpu_ram=0), 65536)),
    (check_option_gpu_bytes, 1.0, ("llama-3.1-8b", "T4", INT8, 16384)),
    (check_fewest_fitting_gpus, 1, ("llama-3.1-70b", "24GB", 8192)),
])
def test_hint_then_answer(check, wrong, args):
    assert not check(None, *args).revealed and "Hint:" in check(None, *args).message
    first = check(wrong, *args)
    assert "Hint:" in first.message and not first.revealed
    second = check(wrong, *args)
    assert second.revealed and "The answer is" in second.message


# --- 2. the slips, each with its own value ---------------------------------------------------------------------

def test_top_option_names_why_each_wrong_pick_is_wrong():
    l4 = advisor.machine("L4", cpu_ram=0)
    shown = options_to_pick("llama-3.1-8b", l4, 65536)
    best = advisor.fit("llama-3.1-8b", l4, 65536)[0]
    right = next(i for i, o in enumerate(shown, 1) if o.label == best.label)
    assert [o.label for o in shown] == sorted(o.label for o in shown)  # the order gives nothing away
    assert check_top_option(right, "llama-3.1-8b", l4, 65536).correct
    kinds = set()
    for i, option in enumerate(shown, 1):
        if i == right:
            continue
        why = slip_of(check_top_option, i, "llama-3.1-8b", l4, 65536)
        assert why.startswith(f"option {i} ({option.label})")
        if not option.fits:
            assert "does not fit" in why and "lacks" in why
            kinds.add("does not fit")
        elif option.quality.kl_nats > best.quality.kl_nats:
            assert "loses more quality" in why
            kinds.add("more quality lost")
        else:
            assert "slower" in why
            kinds.add("slower")
    assert {"does not fit", "more quality lost"} <= kinds


def test_option_gpu_bytes_slips():
    m = "T4"
    right = advisor.fit("llama-3.1-8b", m, 16384)
    option = next(o for o in right if o.label == INT8)
    total = option.bytes_per_device[0]
    parts = {p.what: p.bytes for p in option.parts}
    at_8k = next(o for o in advisor.fit("llama-3.1-8b", m, 8192) if o.label == INT8)
    kv_8k = next(p.bytes for p in at_8k.parts if p.what == "KV cache")
    assert check_option_gpu_bytes(total / GB, "llama-3.1-8b", m, INT8, 16384).correct
    slips = {
        at_8k.bytes_per_device[0] / GB: "at 8,192 tokens",                # nothing grows
        2 * at_8k.bytes_per_device[0] / GB: "everything doubled",          # the weights doubled too
        (at_8k.bytes_per_device[0] + kv_8k) / GB: "only the KV cache grew",
        (total - parts["CUDA context"]) / GB: "left out the CUDA context",
        parts["weights"] / GB: "the weights alone",
        (parts["weights"] + parts["KV cache"]) / GB: "weights and KV cache",
    }
    for value, why in slips.items():
        assert why in (slip_of(check_option_gpu_bytes, value, "llama-3.1-8b", m, INT8, 16384) or ""), (value, why)


def test_option_gpu_bytes_names_an_unknown_label():
    with pytest.raises(ValueError, match="label"):
        check_option_gpu_bytes(1.0, "llama-3.1-8b", "T4", "fp8 weights, GPU 0", 16384)


def test_fewest_fitting_gpus_slips():
    args = ("llama-3.1-70b", "24GB", 8192)
    right = next(o for o in advisor.changes("llama-3.1-70b", advisor.machine("2x24GB"), 8192) if o.kind == "more_gpus")
    n = len(right.machine.gpus)  # 3: nf4 weights over three 24 GB GPUs
    assert check_fewest_fitting_gpus(n, *args).correct
    one = {o.quantization: sum(p.bytes for p in o.parts if p.what == "weights")
           for o in advisor.fit("llama-3.1-70b", "24GB", 8192) if o.placement == "gpu" and o.cache == "dynamic"}
    room = advisor.machine("24GB").gpus[0].usable_bytes
    assert "bf16 weights / 24GB" in slip_of(check_fewest_fitting_gpus, -(-one[None] // room), *args)
    assert "a fraction" in slip_of(check_fewest_fitting_gpus, one[None] / room, *args)
    assert "int8 weights" in slip_of(check_fewest_fitting_gpus, -(-one["int8"] // room), *args)
    # nf4's weights alone round up to 2, the machine of section 2: the nf4 sentence names it first
    assert "nf4 weights" in slip_of(check_fewest_fitting_gpus, -(-one["nf4"] // room), *args)


def test_fit_run_peak_slips():
    fit_run = pytest.importorskip("bigsmall_lab.fit_run")
    plan = advisor.fit("smollm2-135m-instruct", advisor.Machine((), 250 * 10**6), seq_len=128)
    option = plan[0]  # int8 weights on the CPU
    planned = option.bytes_per_device["cpu"]
    run = fit_run.FitRun(option.label, "cpu", planned, int(planned * 1.04), 1.04, 0.02, 0.9, 1.0, 4, option.code)
    args = (run, option, 250 * 10**6)
    assert check_fit_run_peak(run.peak_bytes / MiB, *args).correct
    assert check_fit_run_peak(planned / MiB, *args).correct  # the plan itself is within 10 %
    from bigsmall_lab.estimates import module_bytes

    weights = sum(p.bytes for p in option.parts if p.what == "weights")
    slips = {250 * 10**6 / MiB: "that is the budget", weights / MiB: "the weights alone",
             module_bytes(option.model, option.dtype)[""] / MiB: "the plan quantized them",
             run.peak_bytes / 10**6: "in MB", run.peak_bytes / GiB: "in GiB"}
    for value, why in slips.items():
        got = slip_of(check_fit_run_peak, value, *args)
        if abs(value - run.peak_bytes / MiB) > 0.10 * run.peak_bytes / MiB:
            assert why in (got or ""), (value, why, got)
    with pytest.raises(ValueError, match="run"):
        check_fit_run_peak(1.0, "a run", option)


# --- 3. the notebook asks every question of its module and ends by predicting, then running --------------------

def code_cells() -> list[str]:
    nb = json.loads(LESSON.read_text())
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]


def test_the_lesson_asks_every_check_and_ends_with_predict_then_run():
    from bigsmall_lab.exercises import _lesson09

    cells = code_cells()
    called = [name for c in cells for name in re.findall(r"exercises\.(check_\w+)\(", c)]
    assert set(called) == {n for n in _lesson09.__all__ if n.startswith("check_")}
    last = max(i for i, c in enumerate(cells) if "exercises.check_" in c)
    assert "check_fit_run_peak" in cells[last] and "fit_run.run(" in cells[last]  # the run, then the check
    prediction = max(i for i, c in enumerate(cells[:last]) if "my_peak_mib = None" in c)
    assert prediction == last - 1


# --- 4. the lesson's claims fail on a broken input ---------------------------------------------------------------

def t4_claim(gpu: str) -> bool:
    options = advisor.fit("llama-3.1-8b", gpu, seq_len=8192)
    bf16 = next(o for o in options if o.quantization is None and o.cache == "dynamic" and o.placement == "gpu")
    best = next(o for o in options if o.fits and o.placement == "gpu")
    return not bf16.fits and best.quantization is not None


def seventy_b_claim(gpu: str) -> bool:
    m = advisor.machine(gpu)
    big = advisor.fit("llama-3.1-70b", m, seq_len=8192)
    found = advisor.changes("llama-3.1-70b", m, seq_len=8192)
    return not any(o.fits for o in big) and bool(found) and all(c.option.fits for c in found)


def flux_claim(gpu: str) -> bool:
    flux = advisor.fit("flux.1-dev-transformer", advisor.machine(gpu, cpu_ram="64GB"))
    none = next(o for o in flux if o.placement == "none")
    return not none.fits and flux[0].fits and flux[0].placement != "none"


@pytest.mark.parametrize("claim, lesson_input, broken", [
    (t4_claim, "T4", "H100"),              # an 80 GB card holds bf16 at 8K
    (seventy_b_claim, "2x24GB", "2xH100"),  # two 80 GB cards hold 70B
    (flux_claim, "16GB", "H200"),           # 141 GB holds the whole pipeline
])
def test_each_claim_holds_on_the_lesson_input_and_fails_on_a_broken_one(claim, lesson_input, broken):
    assert claim(lesson_input)
    assert not claim(broken)
