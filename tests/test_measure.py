"""track(): exact CPU peaks, a timeline, a sampler thread that always stops; the per-cell logger."""

from __future__ import annotations

import threading

import pytest
import torch

import bigsmall_lab as bsl
from bigsmall_lab.measure import cpu_memory

GiB = 2**30


def samplers_alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "bigsmall_lab-memory-sampler"]


def test_a_1_gib_tensor_peaks_within_5_percent_of_1_gib():
    with bsl.track("1 GiB tensor", device="cpu") as t:
        x = torch.ones(GiB // 4, dtype=torch.float32)  # 2**28 float32 = 1 GiB, every page touched
    assert t.finished and t.peak_source == "VmHWM"
    assert abs(t.peak_bytes - GiB) / GiB < 0.05, t
    assert abs(t.retained_bytes - GiB) / GiB < 0.05, t  # x is still alive
    del x


def test_a_freed_temporary_shows_in_the_peak_not_in_what_is_retained():
    with bsl.track("temporary", device="cpu") as t:
        x = torch.ones(GiB // 8)  # 512 MiB
        del x
    assert t.peak_bytes > 0.9 * GiB / 2
    assert t.retained_bytes < 0.1 * GiB / 2


def test_order_of_peaks_in_one_run():
    with bsl.track("small", device="cpu") as small:
        a = torch.ones(2**24)  # 64 MiB
    with bsl.track("big", device="cpu") as big:
        b = torch.ones(2**26)  # 256 MiB
    assert small.peak_bytes < big.peak_bytes
    del a, b


def test_timeline_separates_anonymous_and_file_memory(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"\1" * (64 * 2**20))
    with bsl.track("map a file", device="cpu", interval_s=0.005) as t:
        mapped = torch.from_file(str(path), shared=True, size=64 * 2**20, dtype=torch.uint8)
        total = int(mapped.sum())  # touches every page of the file
    assert total == 64 * 2**20
    assert len(t.samples) >= 2 and t.samples[-1].t_s >= t.samples[0].t_s
    first, last = t.samples[0], t.samples[-1]
    assert last.rss_file - first.rss_file > 0.5 * 64 * 2**20  # the mapped file is RssFile ...
    assert last.rss_anon - first.rss_anon < 0.5 * 64 * 2**20  # ... not anonymous memory


def test_the_sampler_stops_on_exit_and_on_exceptions():
    with bsl.track(device="cpu"):
        assert len(samplers_alive()) == 1
    assert samplers_alive() == []
    with pytest.raises(RuntimeError, match="boom"):
        with bsl.track(device="cpu"):
            raise RuntimeError("boom")
    assert samplers_alive() == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="interval_s 0 must be > 0"):
        with bsl.track(interval_s=0):
            pass
    with pytest.raises(ValueError, match="device 'meta' cannot be tracked"):
        with bsl.track(device="meta"):
            pass


def test_figure_draws_the_timeline():
    with bsl.track("plot me", device="cpu") as t:
        x = torch.ones(2**22)
    from bigsmall_lab.views import memory_timeline

    fig = memory_timeline(t)
    names = [trace.name for trace in fig.data]
    assert names == ["total resident (anon + file)", "RssAnon: allocated by the process",
                     "RssFile: mapped files (safetensors)"]
    assert len(fig.data[0].x) == len(t.samples)
    # lines start at 0: they show what the block added
    assert fig.data[0].y[0] == 0 and max(fig.data[0].y) * 2**20 >= 0.9 * 2**24
    assert "plot me" in fig.layout.title.text and fig.layout.yaxis.title.text == "memory above the start (MiB)"
    assert "(s)" in fig.layout.xaxis.title.text
    del x


def test_cpu_memory_reads_the_kernel_counters():
    mem = cpu_memory()
    assert mem["VmHWM"] >= mem["VmRSS"] > 0
    assert mem["RssAnon"] > 0


@pytest.mark.gpu
def test_cuda_peak_is_exact():
    with bsl.track("cuda", device="cuda") as t:
        x = torch.ones(GiB // 4, device="cuda")
    assert t.peak_bytes == GiB and t.peak_source == "max_memory_allocated"
    assert t.cuda_reserved_peak_bytes >= GiB
    del x


def test_ipython_extension_reports_each_cell():
    from IPython.testing.globalipapp import get_ipython

    from bigsmall_lab import _ipython

    ip = get_ipython()
    lines = []
    ip.extension_manager.load_extension("bigsmall_lab")
    try:
        _ipython._logger.out = lines.append
        ip.run_cell("import torch; _x = torch.ones(2**26)")  # 256 MiB kept
        ip.run_cell("_y = torch.ones(2**26); del _y")  # 256 MiB peak, nothing kept
    finally:
        ip.extension_manager.unload_extension("bigsmall_lab")
    assert len(lines) == 2 and all(line.startswith("[bigsmall_lab] RAM: used") for line in lines)
    used = [float(line.split("used ")[1].split(" MiB")[0].replace(",", "")) for line in lines]
    peaked = [float(line.split("peaked ")[1].split(" MiB")[0].replace(",", "")) for line in lines]
    assert used[0] > 200 and abs(used[1]) < 50 and peaked[1] > 200
    ip.run_cell("del _x")
    assert len(lines) == 2  # unloaded: silent
