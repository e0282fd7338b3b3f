"""What is attached, the banner, and the one-sentence CUDA notice."""

from __future__ import annotations

import pytest
import torch

import bigsmall_lab as bsl
from bigsmall_lab.hardware import GPUS


def test_describe_matches_torch():
    hw = bsl.describe()
    assert hw.kind == ("cuda" if torch.cuda.is_available() else "cpu")
    assert hw.cpu_cores >= 1 and hw.ram_total_bytes >= hw.ram_available_bytes > 0
    assert len(hw.gpus) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)


def test_banner_is_one_line_naming_the_machine():
    text = bsl.banner()
    assert "\n" not in text and text.startswith("bigsmall_lab on ")
    assert ("CPU only" in text) != bsl.has_cuda()


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the cell runs instead of explaining")
def test_needs_cuda_explains_in_one_sentence_on_cpu(capsys):
    assert bsl.needs_cuda("CUDA streams prefetch the next group", instead="the plan is shown") is False
    out = capsys.readouterr().out.strip()
    assert out == "This cell needs a CUDA GPU (CUDA streams prefetch the next group); on this CPU the plan is shown."


@pytest.mark.gpu
def test_gpu_is_described():
    hw = bsl.describe()
    assert hw.gpus[0].total_bytes >= hw.gpus[0].free_bytes > 0
    assert bsl.needs_cuda("x", instead="y") is True


def test_the_t4_usable_figure_is_below_what_torch_sees_on_a_t4():
    # A T4 reports about 14.75 GiB to torch (15,360 MiB in nvidia-smi with ECC on: shared/FACTS.md);
    # the talk's "~15 GB usable" must not promise more than that.
    assert GPUS["T4"].usable_bytes <= 14.75 * 2**30


def test_cuda_context_is_not_a_number_without_cuda():
    if not bsl.has_cuda():
        assert bsl.hardware.cuda_context_bytes() is None  # "not measured" is None, never 0


@pytest.mark.gpu
def test_cuda_context_is_measured_on_a_gpu():
    context = bsl.hardware.cuda_context_bytes()
    assert context is not None and 50 * 2**20 < context < 4 * 2**30  # a context is hundreds of MiB


# --- the model a parameters cell starts with (faked machines: a Colab T4, a small GPU, a CPU, offline) -------

T4 = bsl.hardware.GpuInfo(0, "Tesla T4", GPUS["T4"].usable_bytes, None, "torch")
SMALL_GPU = bsl.hardware.GpuInfo(0, "GeForce GTX 1650", 4 * 2**30, 4 * 2**30, "NVML")


def test_a_t4_with_a_network_gets_the_open_checkpoint():
    choice = bsl.hardware.default_model([T4], online=True)
    assert choice.model == bsl.hardware.OPEN_CHECKPOINT == "HuggingFaceTB/SmolLM2-1.7B-Instruct"
    assert "Tesla T4" in choice.reason and "no token" in choice.reason
    # it fits with room to spare: float32 weights (6.85 GB) plus headroom stay under the T4's 15.8 GB
    needed = bsl.count_parameters("smollm2-1.7b") * 4
    assert needed * bsl.hardware._HEADROOM < T4.total_bytes
    # and the biggest of several GPUs decides
    assert bsl.hardware.default_model([SMALL_GPU, T4], online=True).model == bsl.hardware.OPEN_CHECKPOINT


@pytest.mark.parametrize("gpus, online, why", [
    ([T4], False, "no network"),
    ([], True, "no CUDA GPU"),
    ([SMALL_GPU], True, "less than"),
])
def test_otherwise_the_embedded_model_or_the_lessons_fallback(gpus, online, why):
    choice = bsl.hardware.default_model(gpus, online=online)
    assert choice.model is None and why in choice.reason and "bigsmall-tiny" in choice.reason
    lab = bsl.hardware.default_model(gpus, online=online, fallback="smollm2-135m-instruct")
    assert lab.model == "smollm2-135m-instruct" and "smollm2-135m-instruct" in lab.reason


def test_the_network_is_asked_only_when_a_gpu_would_hold_the_checkpoint(monkeypatch):
    asked = []
    monkeypatch.setattr(bsl.hardware, "hub_reachable", lambda: asked.append(1) or False)
    assert bsl.hardware.default_model([], online=None).model is None and asked == []
    assert bsl.hardware.default_model([T4], online=None).model is None and asked == [1]


def test_hf_hub_offline_means_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert bsl.hardware.hub_reachable() is False


@pytest.mark.parametrize("kwargs, argument", [({"gpus": ["T4"]}, "gpus"), ({"fallback": ""}, "fallback")])
def test_default_model_refuses_bad_input_in_one_sentence(kwargs, argument):
    with pytest.raises(bsl.hardware.LabError, match=f"^{argument} "):
        bsl.hardware.default_model(**{"online": False, **kwargs})
