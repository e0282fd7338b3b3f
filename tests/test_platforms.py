"""What the lab measures where it cannot read Linux's /proc (macOS, Windows), faked here with the
reader those platforms get (psutil's one resident set): no AssertionError, a sampled peak, one sentence
about what cannot be split; and every lesson cell that reads the split says what it does without it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import bigsmall_lab as bsl
from bigsmall_lab import measure, views

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def macos_memory(monkeypatch):
    monkeypatch.setenv(measure.READER_ENV, "psutil")


def test_the_fake_reader_is_what_macos_and_windows_get(macos_memory):
    status = measure.cpu_memory()
    assert status["RssFile"] == 0 and status["RssAnon"] == status["VmRSS"] > 0
    assert not measure.rss_split()
    assert not measure._reset_cpu_peak()  # no high-water mark to reset there


def test_track_on_the_fake_platform_finds_a_sampled_peak(macos_memory):
    with bsl.track("64 MiB", device="cpu", interval_s=0.005) as report:
        x = torch.ones(16 * 2**20)  # 64 MiB of float32
        x += 1
        import time

        time.sleep(0.1)  # the sampler must see it
    assert report.peak_source == "sampled" and not report.rss_split
    assert report.peak_bytes >= 48 * 2**20, report
    del x


def test_live_chart_on_the_fake_platform_draws_one_line(macos_memory):
    live = views.LiveMemory(interval_s=0.01, device="cpu")
    with live:
        torch.ones(2**20).sum()
    assert not live.rss_split
    assert len(live.figure.data) >= 1


def test_on_linux_the_split_is_read():
    if not Path("/proc/self/status").exists():
        pytest.skip("not Linux")
    assert measure.rss_split()


LESSONS = sorted((ROOT / "lessons").glob("*.ipynb"))


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name)
def test_every_lesson_cell_that_reads_the_split_handles_its_absence(path):
    """A cell reading RssAnon / RssFile must check rss_split first (else on macOS it asserts on a zero)."""
    for i, cell in enumerate(json.loads(path.read_text())["cells"]):
        src = "".join(cell["source"])
        if cell["cell_type"] != "code":
            continue
        if re.search(r"rss_anon|rss_file|\['RssAnon'\]|\['RssFile'\]|\[\"RssAnon\"\]", src):
            assert "rss_split" in src, f"{path.name} cell {i} reads RssAnon/RssFile without checking rss_split"
