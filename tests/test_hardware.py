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
