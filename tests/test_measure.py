"""track(): exact CPU peaks, a timeline, a sampler thread that always stops; the per-cell logger."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import torch

import bigsmall_lab as bsl
from bigsmall_lab import measure
from bigsmall_lab._errors import LabError
from bigsmall_lab.measure import Sampler, cpu_memory, sample_now

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
    lines, cells = [], []
    ip.extension_manager.load_extension("bigsmall_lab")
    try:
        _ipython._logger.out = lines.append
        ip.run_cell("import torch; _x = torch.ones(2**26)")  # 256 MiB kept
        cells.append(_ipython._logger.last)
        ip.run_cell("_y = torch.ones(2**26); del _y")  # 256 MiB peak, nothing kept
        cells.append(_ipython._logger.last)
    finally:
        ip.extension_manager.unload_extension("bigsmall_lab")
    assert len(lines) == 2 and all(line.startswith("[bigsmall_lab] RAM: used") for line in lines)
    kept, temporary = cells
    assert kept.used_bytes > 0.8 * 2**28 and kept.peak_bytes >= kept.used_bytes
    assert abs(temporary.used_bytes) < 0.2 * 2**28 and temporary.peak_bytes > 0.8 * 2**28
    assert temporary.peak_source == "VmHWM"
    ip.run_cell("del _x")
    assert len(lines) == 2  # unloaded: silent


def test_the_load_ext_cell_itself_prints_nothing():
    # IPython calls post_run_cell for the cell that loaded the extension, with no pre_run_cell before it.
    from bigsmall_lab._ipython import CellMemoryLogger

    lines = []
    logger = CellMemoryLogger(out=lines.append)
    logger.post_run_cell()
    assert lines == [] and logger.last is None


def test_a_track_inside_a_cell_keeps_the_cells_peak():
    from bigsmall_lab._ipython import CellMemoryLogger

    logger = CellMemoryLogger(out=lambda line: None)
    logger.pre_run_cell()
    x = torch.ones(GiB // 16)  # 64 MiB, freed before the inner block
    del x
    with bsl.track("inside the cell", device="cpu"):
        pass
    logger.post_run_cell()
    assert logger.last.peak_bytes > 0.9 * GiB / 16, logger.last


def test_without_a_resettable_high_water_mark_the_cell_peak_is_sampled(monkeypatch):
    from bigsmall_lab import _ipython, measure

    monkeypatch.setattr(measure, "_reset_cpu_peak", lambda: False)
    logger = _ipython.CellMemoryLogger(out=lambda line: None)
    logger.pre_run_cell()
    x = torch.ones(GiB // 8)  # 128 MiB, held long enough for a 20 ms sampler to see it
    import time

    time.sleep(0.2)
    del x
    logger.post_run_cell()
    assert logger.last.peak_source == "sampled" and logger.last.peak_bytes > 0.9 * GiB / 8
    assert "[sampled]" in logger.last.line()


# ----------------------------------------------------------------------------------------------
# Nested blocks


def test_nested_track_keeps_the_outer_peak():
    with bsl.track("outer", device="cpu") as outer:
        x = torch.ones(GiB // 4)  # 1 GiB, touched, then freed before the inner block
        del x
        with bsl.track("inner", device="cpu") as inner:
            y = torch.ones(2**20)  # 4 MiB
            del y
    assert inner.peak_bytes < 0.1 * GiB, inner
    # Before nesting was handled the inner block's reset of VmHWM left the outer block at ~0.004 GiB.
    assert abs(outer.peak_bytes - GiB) / GiB < 0.05, outer


def test_an_inner_peak_counts_in_the_outer_block():
    with bsl.track("outer", device="cpu") as outer:
        with bsl.track("inner", device="cpu") as inner:
            x = torch.ones(GiB // 16)  # 256 MiB
            del x
    assert inner.peak_bytes > 0.9 * GiB / 4
    assert outer.peak_bytes >= inner.peak_bytes * 0.98


# ----------------------------------------------------------------------------------------------
# The sampler


def test_sampler_calls_back_from_its_own_thread_for_every_sample():
    seen, threads = [], set()

    def on_sample(sample):
        seen.append(sample)
        threads.add(threading.current_thread().name)

    with Sampler(interval_s=0.005, device="cpu", on_sample=on_sample) as sampler:
        assert sampler.is_alive and len(sampler.samples) >= 1  # the first sample is in when start() returns
        time.sleep(0.1)
    assert not sampler.is_alive and sampler.error is None
    assert seen == sampler.samples and len(seen) >= 3
    assert threads == {"bigsmall_lab-memory-sampler"}
    times = [s.t_s for s in sampler.samples]
    assert times == sorted(times) and times[0] >= 0
    assert all(s.cuda_allocated is None and s.nvml_used is None for s in sampler.samples)  # CPU: not measured


def test_a_failing_callback_stops_only_its_sampler():
    calls = []

    def broken(sample):
        calls.append(sample)
        raise KeyError("chart gone")

    sampler = Sampler(interval_s=0.005, on_sample=broken).start()
    time.sleep(0.05)
    assert not sampler.is_alive and isinstance(sampler.error, KeyError)
    assert len(calls) == 1 and len(sampler.samples) == 1
    sampler.stop()
    sampler.stop()  # idempotent
    assert samplers_alive() == []


def test_stop_is_idempotent_and_safe_from_the_callback_and_before_start():
    Sampler().stop()  # never started: nothing to do
    stopped_from_inside = []

    def stop_myself(sample):
        sampler.stop()
        stopped_from_inside.append(sample)

    sampler = Sampler(interval_s=0.005, on_sample=stop_myself)
    sampler.start()
    for _ in range(200):
        if not sampler.is_alive:
            break
        time.sleep(0.01)
    assert not sampler.is_alive and sampler.error is None and stopped_from_inside
    with pytest.raises(LabError, match="already run"):
        sampler.start()


def test_a_sampler_sees_an_allocation():
    with Sampler(interval_s=0.005, device="cpu") as sampler:
        x = torch.ones(GiB // 16)  # 256 MiB, every page touched
        time.sleep(0.05)
        del x
    base = sampler.samples[0].rss_anon
    assert max(s.rss_anon for s in sampler.samples) - base > 0.9 * GiB / 4


def test_sample_now_and_stopping_every_sampler_at_exit():
    assert sample_now("cpu").rss_anon > 0 and sample_now("cpu").t_s == 0.0
    sampler = Sampler(interval_s=0.01).start()
    assert sampler in list(measure._live_samplers)
    measure._stop_all()  # what atexit runs
    assert not sampler.is_alive and samplers_alive() == []


def test_sampler_in_a_subprocess_never_blocks_exit():
    # A sampler left running when the interpreter exits: atexit stops it, the process exits 0.
    code = ("import bigsmall_lab.measure as m; s = m.Sampler(0.01, on_sample=lambda x: None).start(); "
            "print('started', s.is_alive)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "started True" in out.stdout, out.stderr


@pytest.mark.parametrize("interval_s", [float("nan"), "0.01", 0, -1, float("inf"), None, True, 1e-6])
def test_bad_intervals_get_one_sentence(interval_s):
    with pytest.raises(LabError, match="interval_s") as err:
        Sampler(interval_s=interval_s)
    assert len(str(err.value)) < 300 and "\n" not in str(err.value)
    with pytest.raises(LabError, match="interval_s"):
        with bsl.track(interval_s=interval_s):
            pass


@pytest.mark.parametrize("device", ["tpu", "meta", "cuda:x", 3, "mps"])
def test_bad_devices_get_one_sentence(device):
    with pytest.raises(LabError, match="device"):
        Sampler(device=device)
    with pytest.raises(LabError, match="device"):
        sample_now(device)


def test_peak_blocks_nest_inside_track_and_keep_the_outer_peak():
    from bigsmall_lab.measure import peak

    with bsl.track("outer", device="cpu") as outer:
        big = torch.ones(2**26)  # 256 MiB of float32, freed before the inner block
        del big
        with peak("cpu") as inner:
            small = torch.ones(2**22)  # 16 MiB
        del small
    assert inner.device == "cpu" and inner.bytes > 0
    if outer.peak_source == "VmHWM":  # the kernel lets us reset the high-water mark: both figures are exact
        assert outer.peak_bytes >= 2**28 * 0.95, "the inner peak() must not erase the outer block's peak"
        assert inner.exact
