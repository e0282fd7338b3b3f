"""Exercises of lesson 09 (fit it): pick the option the advisor ranks first, predict an option's bytes on
GPU 0, the fewest GPUs that hold a model, and the peak a run measures.

Every expected value comes from :func:`bigsmall_lab.advisor.fit` / :func:`~bigsmall_lab.advisor.changes` or
from the run itself; each slip is the advisor's own answer under the mistaken assumption (a part left out,
the weights alone, the wrong unit), so it stays right when the planners change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .._errors import LabError, whole_number
from .._units import GB, GiB, MiB
from ..advisor import Machine, Option, changes, fit, machine
from ._core import Exercise, Slip, Verdict, ask, distinct_slips

__all__ = ["check_fewest_fitting_gpus", "check_fit_run_peak", "check_option_gpu_bytes", "check_top_option",
           "options_to_pick"]


def _machine_key(m: Any) -> str:
    return m.label if isinstance(m, Machine) else str(m)


def options_to_pick(model: Any, gpu: str | Machine | None, seq_len: int, batch_size: int = 1) -> list[Option]:
    """The advisor's options for ``model`` on ``gpu`` in alphabetical order of their labels: the list an
    exercise shows, so the order gives nothing away (the advisor's own order is its ranking)."""
    return sorted(fit(model, gpu, seq_len, batch_size), key=lambda o: o.label)


def check_top_option(answer: float | None, model: Any, gpu: str | Machine | None, seq_len: int,
                     batch_size: int = 1) -> Verdict:
    """The number (from 1, in the alphabetical list of options_to_pick) of the option the advisor ranks first:
    it fits, then loses the least quality, then runs fastest.

    >>> from bigsmall_lab.advisor import machine
    >>> print(check_top_option(1, "llama-3.1-8b", machine("T4", cpu_ram=0), 8192))  # doctest: +ELLIPSIS
    [not quite] You wrote 1: option 1 (bf16 weights, dynamic cache, GPU 0) does not fit: GPU 0 lacks ...
    """
    shown = options_to_pick(model, gpu, seq_len, batch_size)
    best = fit(model, gpu, seq_len, batch_size)[0]
    expected = next(i for i, o in enumerate(shown, 1) if o.label == best.label)

    def why_not(o: Option) -> str:
        if not o.fits:
            short = ", ".join(f"{'GPU ' + str(d) if isinstance(d, int) else d} lacks "
                              + (f"{n / GB:,.2f} GB" if n >= 10**7 else f"{n / 10**6:,.3f} MB")
                              for d, n in o.short_by.items())
            return f"does not fit: {short}"
        if o.quality.kl_nats > best.quality.kl_nats:
            return (f"fits, but loses more quality than option {expected} (KL {o.quality.kl_nats:.3f} against "
                    f"{best.quality.kl_nats:.3f} nats/token): quality comes before speed and memory")
        return (f"fits and loses as little quality, but is slower ({o.speed.time_ratio:.2f}x against "
                f"{best.speed.time_ratio:.2f}x per token)")

    def build() -> Exercise:
        slips = [Slip(i, f"option {i} ({o.label}) {why_not(o)}") for i, o in enumerate(shown, 1) if i != expected]
        return Exercise(
            "top_option", expected=expected,
            why=f"option {expected}, {best.label}, "
                + ("fits and loses the least quality" if best.fits else "comes closest, though nothing fits")
                + f" (KL {best.quality.kl_nats:.3f} nats/token, {best.speed.time_ratio:.2f}x per token)",
            hint="cross out every option that does not fit; of the rest, the least quality lost wins; on a tie, the "
                 "fastest",
            slips=tuple(slips), fmt="d", example="3")

    return ask(("top_option", str(model), _machine_key(gpu), seq_len, batch_size), build).check(answer)


def _option(model: Any, gpu: str | Machine | None, seq_len: int, label: str, batch_size: int = 1) -> Option:
    found = [o for o in fit(model, gpu, seq_len, batch_size) if o.label == label]
    if not found:
        labels = ", ".join(repr(o.label) for o in fit(model, gpu, seq_len, batch_size)[:6])
        raise LabError.bad("label", label, f"use one of the advisor's labels at {seq_len:,} tokens, e.g. {labels}",
                           verb="is not an option of the advisor")
    return found[0]


def check_option_gpu_bytes(answer: float | None, model: Any, gpu: str | Machine | None, label: str, seq_len: int,
                           batch_size: int = 1) -> Verdict:
    """GB (10**9 bytes) the option called label holds on GPU 0 at seq_len tokens: weights, KV cache,
    activations and one CUDA context, within 3 %.

    >>> print(check_option_gpu_bytes(None, "llama-3.1-8b", "T4", "int8 weights, dynamic cache, GPU 0", 16384))
    [not answered yet] Write your answer in the cell above and run this cell again. Hint: ...
    """
    seq_len = whole_number(seq_len, "seq_len", minimum=2)
    option = _option(model, gpu, seq_len, label, batch_size)
    by_what: dict[str, int] = {}
    for p in option.parts:
        if p.device == 0:
            by_what[p.what] = by_what.get(p.what, 0) + p.bytes
    expected = option.bytes_per_device.get(0, 0) / GB
    weights, kv = by_what.get("weights", 0), by_what.get("KV cache", 0)
    act, context = by_what.get("activations", 0), by_what.get("CUDA context", 0)
    # The same option at half the context: what a learner starting from a table at seq_len / 2 reaches by
    # scaling only some parts, or none, or all.
    half = _option(model, gpu, seq_len // 2, label, batch_size)
    half_bytes = half.bytes_per_device.get(0, 0)
    half_by: dict[str, int] = {}
    for p in half.parts:
        if p.device == 0:
            half_by[p.what] = half_by.get(p.what, 0) + p.bytes

    def build() -> Exercise:
        slips = [  # the likeliest first: where two come within 1 %, the first names the answer
            Slip(half_bytes / GB, f"that is the option at {seq_len // 2:,} tokens: the KV cache and the activations "
                                  "grow with the context"),
            Slip(2 * half_bytes / GB, f"everything doubled from {seq_len // 2:,} tokens: the weights and the CUDA "
                                      "context do not grow with the context"),
            Slip((half_bytes + half_by.get("KV cache", 0)) / GB, "only the KV cache grew; the activations grow with "
                                                                 "the context too"),
            Slip((expected * GB - context) / GB, "you left out the CUDA context every GPU a process uses holds"),
            Slip(weights / GB, "that is the weights alone; running adds the KV cache, the activations and the CUDA "
                               "context"),
            Slip((weights + kv) / GB, "weights and KV cache; the activations of the forward pass and the CUDA context "
                                      "come on top"),
            Slip(expected * GB / GiB, "that is in GiB (2**30 bytes); the question asks for GB (10**9 bytes)"),
        ]
        slips = [s for s in slips if abs(s.value - expected) > 0.03 * expected]  # outside the answer's 3 %
        return Exercise(
            "option_gpu_bytes", expected=expected, rel_tol=0.03, slip_tol=0.01,
            why=f"weights {weights / GB:.2f} + KV cache {kv / GB:.2f} + activations {act / GB:.2f} + CUDA context "
                f"{context / GB:.2f} = {expected:.2f} GB on GPU 0",
            hint="which parts grow with the context (the KV cache, the activations) and which do not (the weights, "
                 "the CUDA context)?",
            slips=distinct_slips(expected, slips, gap=0.01), fmt=".2f", unit=" GB", example="12.5")

    return ask(("option_gpu_bytes", str(model), _machine_key(gpu), label, seq_len, batch_size), build).check(answer)


def check_fewest_fitting_gpus(answer: float | None, model: Any, gpu: str, seq_len: int, batch_size: int = 1,
                              cpu_ram: str | int | None = None) -> Verdict:
    """The fewest GPUs of the kind gpu names (up to 8) on which an option of the advisor fits at seq_len tokens.

    >>> print(check_fewest_fitting_gpus(3, "llama-3.1-70b", "24GB", 8192))  # doctest: +ELLIPSIS
    [correct] 3 is right: ...
    """
    base = machine(gpu, cpu_ram=cpu_ram)
    if not base.gpus:
        raise LabError.bad("gpu", gpu, "name a GPU kind, e.g. 'L4' or '24GB'", verb="is no GPU")
    kind = base.gpus[0]

    def on(n: int) -> Machine:
        return Machine((kind,) * n, base.cpu_ram_bytes, base.disk_bytes)

    expected = next((n for n in range(1, 9) if fit(model, on(n), seq_len, batch_size)[0].fits), None)
    if expected is None:
        raise LabError.bad("gpu", gpu, "pick a larger GPU: nothing fits on 8 of these", verb="is too small")
    best = fit(model, on(expected), seq_len, batch_size)[0]
    sizes = {o.quantization: sum(p.bytes for p in o.parts if p.what == "weights")
             for o in fit(model, on(1), seq_len, batch_size) if o.placement == "gpu" and o.cache == "dynamic"}
    room = kind.usable_bytes

    def build() -> Exercise:
        slips = []
        if None in sizes:
            slips += [Slip(math.ceil(sizes[None] / room), f"bf16 weights / {kind.name} rounded up: too many GPUs, so "
                                                          "the advisor quantizes"),
                      Slip(sizes[None] / room, "a fraction: GPUs come whole")]
        for quant in ("int8", "nf4"):
            if quant in sizes:
                slips.append(Slip(math.ceil(sizes[quant] / room),
                                  f"{quant} weights / {kind.name} rounded up: the KV cache, the activations and a CUDA "
                                  "context on every GPU come on top, and layers are not split"))
        if len(base.gpus) != expected:
            slips.append(Slip(len(base.gpus), f"that is the machine you have: nothing fits on {len(base.gpus)}"))
        return Exercise(
            "fewest_fitting_gpus", expected=expected,
            why=f"on {expected} x {kind.name} the top option is {best.label}",
            hint="start from the quantized weights / one GPU, then add the KV cache, the activations and a CUDA "
                 "context per GPU",
            slips=distinct_slips(expected, slips), fmt="d", example="4")

    return ask(("fewest_fitting_gpus", str(model), str(gpu), seq_len, batch_size, str(cpu_ram)), build).check(answer)


def check_fit_run_peak(answer: float | None, run: Any, option: Option, budget_bytes: int | None = None) -> Verdict:
    """MiB (2**20 bytes) a run of the top option peaked at, predicted from its plan before running: within
    10 % of the measured peak.

    ``run``: what ``bigsmall_lab.fit_run.run(option, ...)`` returned; ``option``: the option it ran.
    """
    if not hasattr(run, "peak_bytes") or not hasattr(run, "planned_bytes"):
        raise LabError(f"run {run!r:.60} is not what bigsmall_lab.fit_run.run(...) returns; pass its FitRun")
    if not isinstance(option, Option):
        raise LabError(f"option {option!r:.60} is not an option of bigsmall_lab.advisor.fit(...)")
    expected = run.peak_bytes / MiB
    weights = sum(p.bytes for p in option.parts if p.what == "weights")
    from ..estimates import module_bytes

    full = module_bytes(option.model, option.dtype)[""]

    def build() -> Exercise:
        slips = [Slip(weights / MiB, "that is the weights alone; the KV cache and the activations come on top"),
                 Slip(full / MiB, f"that is the {option.dtype} weights: the plan quantized them "
                                  f"({option.quantization or 'no quantization'})", 0.02),
                 Slip(run.peak_bytes / 10**6, "that is in MB (10**6 bytes); the question asks for MiB (2**20 bytes)",
                      0.005),
                 Slip(run.peak_bytes / GiB, "that is in GiB; the question asks for MiB", 0.05)]
        if budget_bytes:
            slips.insert(0, Slip(budget_bytes / MiB, "that is the budget: a ceiling the plan stays under, not what "
                                                     "it uses", 0.01))
        return Exercise(
            "fit_run_peak", expected=expected, rel_tol=0.10, slip_tol=0.01,
            why=f"the run peaked at {expected:,.1f} MiB; the plan said {run.planned_bytes / MiB:,.1f} MiB "
                f"(measured / planned = {run.ratio:.3f})",
            hint="add up the plan's parts on the device the run uses (bytes_per_device), then convert to MiB",
            slips=distinct_slips(expected, [s for s in slips if abs(s.value - expected) > 0.10 * expected], gap=0.01),
            fmt=",.1f", unit=" MiB", example="180")

    return ask(("fit_run_peak", option.label, run.peak_bytes, budget_bytes), build).check(answer)
