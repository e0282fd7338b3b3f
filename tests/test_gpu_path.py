"""The GPU paths (issue 17), tested on a CPU by faking what CUDA and NVML return.

``FakeCuda`` replaces the ``torch.cuda`` functions the lab calls, with torch's own rules where they
matter: memory counters read 0 and ``reset_peak_memory_stats`` raises ("did you call init?") until
CUDA is initialised, the first allocation initialises it, ``mem_get_info`` creates a context (counted).
``FakeNvml`` is a ``pynvml`` module whose devices are in NVML's order, not torch's: the machine has four
GPUs and the process sees two (``CUDA_VISIBLE_DEVICES=3,1``), so torch's cuda:0 is NVML's device 3.
"""

from __future__ import annotations

import os
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from bigsmall_lab import _ipython, hardware, measure
from bigsmall_lab._units import GiB, MiB


class FakeUuid:
    """torch's ``_CUuuid``: prints the bare UUID, without NVIDIA's "GPU-" prefix."""

    def __init__(self, text):
        self.text = text

    def __str__(self):
        return self.text


def _uuid(n: int) -> str:
    return f"{n:08x}-aaaa-bbbb-cccc-{n:012x}"


class FakeCuda:
    def __init__(self, visible=(3, 1), initialized=False, uuids=True):
        self.visible = visible  # NVML index of each torch index
        self.initialized = initialized
        self.uuids = uuids
        self.allocated = self.peak = 0
        self.mem_get_info_calls = 0
        self.contexts: set[int] = set()
        self.syncs = 0

    # torch.cuda's API, as far as the lab uses it
    def is_available(self):
        return True

    def is_initialized(self):
        return self.initialized

    def device_count(self):
        return len(self.visible)

    def _init(self):
        self.initialized = True

    def get_device_properties(self, index=0):
        self._init()  # torch's _lazy_init: the runtime starts, no context is created
        nvml_index = self.visible[index]
        return SimpleNamespace(name=f"Fake H200 #{nvml_index}", total_memory=(140 - nvml_index) * GiB,
                               uuid=FakeUuid(_uuid(nvml_index)) if self.uuids else None,
                               pci_domain_id=0, pci_bus_id=0x10 + nvml_index, pci_device_id=0)

    def get_device_name(self, index=0):
        return self.get_device_properties(index).name

    def mem_get_info(self, index=0):
        self._init()
        self.mem_get_info_calls += 1
        self.contexts.add(index)  # what makes it expensive: a CUDA context on that GPU
        return 100 * GiB, 139 * GiB

    def memory_allocated(self, device=None):
        return self.allocated if self.initialized else 0

    def max_memory_allocated(self, device=None):
        return self.peak if self.initialized else 0

    def memory_reserved(self, device=None):
        return 100 * MiB if self.initialized else 0

    def max_memory_reserved(self, device=None):
        return self.memory_reserved(device)

    def reset_peak_memory_stats(self, device=None):
        if not self.initialized:  # what torch's caching allocator says before CUDA starts
            raise RuntimeError("Invalid device argument 0: did you call init?")
        self.peak = self.allocated

    def synchronize(self, device=None):
        self._init()
        self.syncs += 1

    def init(self):
        self._init()

    # what a cell does
    def alloc(self, nbytes):
        self._init()
        self.allocated += nbytes
        self.peak = max(self.peak, self.allocated)

    def free(self, nbytes):
        self.allocated -= nbytes

    def install(self, monkeypatch):
        for name in ("is_available", "is_initialized", "device_count", "get_device_properties", "get_device_name",
                     "mem_get_info", "memory_allocated", "max_memory_allocated", "memory_reserved",
                     "max_memory_reserved", "reset_peak_memory_stats", "synchronize", "init"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        monkeypatch.setattr(torch._C, "_cuda_hasPrimaryContext", lambda index: index in self.contexts or (
            self.initialized and self.allocated > 0), raising=False)
        return self


def fake_nvml(count=4, uuids=True, pids=None) -> types.ModuleType:
    """A pynvml whose device i has UUID _uuid(i), PCI bus 0x10 + i and (i + 1) GiB used."""
    pids = pids or {}
    devices = [SimpleNamespace(index=i, uuid=f"GPU-{_uuid(i)}" if uuids else f"MIG-{i}",
                               bus_id=f"00000000:{0x10 + i:02X}:00.0", total=(150 - i) * GiB, used=(i + 1) * GiB)
               for i in range(count)]
    lib = types.ModuleType("pynvml")
    lib.nvmlInit = lambda: None
    lib.nvmlDeviceGetCount = lambda: count
    lib.nvmlDeviceGetHandleByIndex = lambda i: devices[i]
    lib.nvmlDeviceGetUUID = lambda h: h.uuid
    lib.nvmlDeviceGetPciInfo = lambda h: SimpleNamespace(busId=h.bus_id.encode())  # old bindings: bytes
    lib.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(total=h.total, used=h.used, free=h.total - h.used)
    lib.nvmlDeviceGetComputeRunningProcesses = lambda h: [SimpleNamespace(pid=os.getpid(), usedGpuMemory=m)
                                                          for m in [pids.get(h.index)] if m is not None]
    return lib


@pytest.fixture
def cuda(monkeypatch):
    monkeypatch.setattr(hardware, "_context_bytes", {})
    return FakeCuda().install(monkeypatch)


# ---------------------------------------------------------------------------------------------
# 1. %load_ext bigsmall_lab: the CUDA peak of the cell that initialises CUDA


def _cell(logger, body):
    logger.pre_run_cell()
    body()
    logger.post_run_cell()
    return logger.last


def test_first_cell_that_initialises_cuda_reports_its_peak(cuda):
    lines = []
    logger = _ipython.CellMemoryLogger(out=lines.append)

    def first_cell():  # CUDA starts here: a 1 GiB spike, 100 MiB kept
        cuda.alloc(GiB)
        cuda.free(GiB)
        cuda.alloc(100 * MiB)

    cell = _cell(logger, first_cell)
    assert (cell.gpu_peak_bytes, cell.gpu_used_bytes, cell.gpu_now_bytes) == (GiB, 100 * MiB, 100 * MiB)
    assert "GPU: used +100.0 MiB, peaked +1,024.0 MiB" in lines[-1]
    # the next cell's peak is above its own start, not the first cell's spike
    cell = _cell(logger, lambda: (cuda.alloc(10 * MiB), cuda.free(10 * MiB)))
    assert (cell.gpu_peak_bytes, cell.gpu_used_bytes, cell.gpu_now_bytes) == (10 * MiB, 0, 100 * MiB)
    assert measure._open_peaks == []


def test_a_cell_that_never_touches_cuda_does_not_initialise_it(cuda):
    cell = _cell(_ipython.CellMemoryLogger(out=lambda line: None), lambda: torch.ones(10))
    assert cuda.initialized is False
    assert cell.gpu_now_bytes is None and "GPU" not in cell.line()
    assert measure._open_peaks == []


def test_track_inside_the_first_cuda_cell_keeps_the_cells_peak(cuda, monkeypatch):
    monkeypatch.setattr(measure, "_trim_heap", lambda: None)
    logger = _ipython.CellMemoryLogger(out=lambda line: None)

    def cell_body():
        cuda.alloc(GiB)  # CUDA starts, 1 GiB spike
        cuda.free(GiB)
        with measure.peak("cuda") as inner:  # resets torch's counter: the spike must be folded into the cell
            cuda.alloc(MiB)
        assert inner.bytes == MiB

    assert _cell(logger, cell_body).gpu_peak_bytes == GiB


def test_a_cell_started_after_cuda_peaks_above_its_own_start(cuda):
    cuda.alloc(3 * GiB)  # an earlier cell: 3 GiB held, 5 GiB lifetime peak
    cuda.alloc(2 * GiB)
    cuda.free(2 * GiB)
    cell = _cell(_ipython.CellMemoryLogger(out=lambda line: None), lambda: (cuda.alloc(GiB), cuda.free(GiB)))
    assert (cell.gpu_peak_bytes, cell.gpu_used_bytes, cell.gpu_now_bytes) == (GiB, 0, 3 * GiB)


# ---------------------------------------------------------------------------------------------
# 2. NVML is found by UUID (then PCI address), not by torch's index


def test_nvml_used_reads_the_gpu_torch_means(cuda, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    assert measure._NvmlUsed(0)() == 4 * GiB  # NVML's device 3: (3 + 1) GiB used, not device 0's 1 GiB
    assert measure._NvmlUsed(1)() == 2 * GiB


def test_pci_address_decides_when_no_uuid_matches(cuda, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(uuids=False))  # MIG-style names, no UUID match
    assert measure._NvmlUsed(0)() == 4 * GiB
    cuda.uuids = False  # torch without a UUID either
    assert measure._NvmlUsed(1)() == 2 * GiB


def test_no_matching_nvml_device_is_unknown_not_another_gpu(cuda, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(count=2, uuids=False))  # NVML sees devices 0, 1 only
    assert measure._NvmlUsed(0)() is None  # torch's cuda:0 is NVML's 3, absent here
    assert measure._NvmlUsed(1)() == 2 * GiB


def test_cuda_context_is_read_from_the_right_gpu(cuda, monkeypatch):
    cuda.alloc(MiB)  # CUDA is running in this process: the per-process NVML figure is used
    # this process holds 900 MiB on NVML's device 0 (another visible set) and 600 MiB on device 3 (torch's cuda:0)
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(pids={0: 900 * MiB, 3: 600 * MiB}))
    assert hardware._measure_context(0) == 600 * MiB - 100 * MiB  # minus torch's reserved memory


# ---------------------------------------------------------------------------------------------
# 3. describe()/banner() read memory through NVML, creating no CUDA context


def test_describe_reads_nvml_and_creates_no_context(cuda, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    hw = hardware.describe()
    assert cuda.mem_get_info_calls == 0 and cuda.contexts == set()
    assert [(g.index, g.name, g.total_bytes, g.free_bytes, g.memory_source) for g in hw.gpus] == [
        (0, "Fake H200 #3", 147 * GiB, 143 * GiB, "NVML"), (1, "Fake H200 #1", 149 * GiB, 147 * GiB, "NVML")]
    assert "GPU 0 Fake H200 #3 (147.0 GiB, 143.0 GiB free)" in hw.summary()
    hardware.banner()
    assert cuda.mem_get_info_calls == 0


def test_describe_without_nvml_says_free_unknown(cuda, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    hw = hardware.describe()
    assert cuda.mem_get_info_calls == 0 and cuda.contexts == set()
    assert [(g.total_bytes, g.free_bytes, g.memory_source) for g in hw.gpus] == [
        (137 * GiB, None, "torch"), (139 * GiB, None, "torch")]
    assert "GPU 0 Fake H200 #3 (137.0 GiB, free unknown)" in hw.summary()
    assert hardware.cuda_context_bytes(0) is None  # not measurable without NVML: None, never 0


# ---------------------------------------------------------------------------------------------
# 4. The TP worker times a CUDA step after the GPU has finished it


@pytest.mark.parametrize("device, expected", [
    (torch.device("cuda", 0), ["sync", "clock", "step", "sync", "clock"]),
    (torch.device("cpu"), ["clock", "step", "clock"]),
])
def test_tp_worker_synchronises_before_reading_the_clock(monkeypatch, device, expected):
    from bigsmall_lab import _tp_worker

    events = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    ticks = iter([10.0, 12.5])

    def clock():
        events.append("clock")
        return next(ticks)

    result, seconds = _tp_worker._timed(lambda: events.append("step") or "logits", device, clock=clock)
    assert (result, seconds, events) == ("logits", 2.5, expected)


def test_tp_worker_times_load_forward_and_generate_through_the_synchronising_timer():
    import inspect

    from bigsmall_lab import _tp_worker

    source = inspect.getsource(_tp_worker._run)
    assert source.count("_timed(") == 3 and "time.perf_counter" not in source


# ---------------------------------------------------------------------------------------------
# 5. The offloaded KV cache needs the MODEL on CUDA, not just a GPU in the machine


def test_offloaded_cache_refuses_a_cpu_model_on_a_machine_with_a_gpu(monkeypatch):
    import bigsmall_lab as bsl
    from bigsmall_lab import kvcache
    from bigsmall_lab._errors import LabError

    torch.manual_seed(0)
    model = bsl.load_model("bigsmall-tiny", dtype=torch.float32)  # on the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # ... while a GPU is attached
    ids = torch.tensor([[1, 2, 3, 4]])
    for call in (lambda: kvcache.make_cache(model, "offloaded"),
                 lambda: kvcache.generate(model, ids, "offloaded", max_new_tokens=2),
                 lambda: kvcache.compare_caches(model, torch.arange(1, 12)[None], ["dynamic", "offloaded"], prompt_tokens=4,
                                         scored_tokens=4, new_tokens=0)):
        with pytest.raises(LabError, match=r"needs the model on a CUDA GPU.*this model is on cpu"):
            call()
    kvcache._needs_cuda(kvcache.CacheSettings(), model)  # other caches run wherever the model is


# ---------------------------------------------------------------------------------------------
# 6. transformers < 5.20's offloaded cache lacks the prefetch stream's wait: one warning sentence


@pytest.mark.parametrize("version, racy", [("5.17.0", True), ("5.19.1", True), ("5.20.0rc1", False),
                                           ("5.20.0", False), ("5.25.0", False)])
def test_offloaded_cache_race_is_named_by_version(version, racy):
    from bigsmall_lab import _compat

    assert _compat.offloaded_cache_race(version, warn=False) is racy


def test_offloaded_cache_warns_on_an_affected_transformers(monkeypatch):
    import warnings

    from bigsmall_lab import _compat, kvcache

    # the version _compat reads (the package metadata: transformers itself need not be imported)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_compat, "transformers_version", lambda: "5.17.0")  # the GPU image's version
    cuda_model = SimpleNamespace()  # a config-only call: the model's device is not known, CUDA is
    with pytest.warns(RuntimeWarning, match=r"^transformers 5\.17\.0's offloaded KV cache can prefetch a layer .*"
                                            r"fixed in 5\.20\.0.*\.$") as seen:
        kvcache._needs_cuda(kvcache.CacheSettings("offloaded"), cuda_model)
    assert len(seen) == 1 and str(seen[0].message).count(". ") == 0  # one sentence
    monkeypatch.setattr(_compat, "transformers_version", lambda: "5.25.0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kvcache._needs_cuda(kvcache.CacheSettings("offloaded"), cuda_model)
        assert _compat.offloaded_cache_race() is False


def test_one_offloaded_generation_warns_once(monkeypatch):
    """generate() checks the cache early and make_cache() builds it: the race sentence appears once per run
    (the H200 run of tools/gpu_check.py recorded it twice for one generation)."""
    import warnings

    from bigsmall_lab import _compat, kvcache

    monkeypatch.setattr(_compat, "transformers_version", lambda: "5.17.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(kvcache, "_device", lambda model: torch.device("cuda", 0))  # a model on the GPU

    class Ids:  # the prompt, "moved to the GPU"
        shape = (1, 3)

        def to(self, device):
            return self

    monkeypatch.setattr(kvcache, "token_ids", lambda ids, minimum=1: Ids())
    monkeypatch.setattr(kvcache, "_new_tokens", lambda model, ids, n: n, raising=False)  # no model config to size
    built = []

    def make_cache(model, settings, max_cache_len=None):  # the real checks, then stop before any CUDA work
        kvcache._needs_cuda(kvcache._settings(settings), model)
        built.append(settings)
        raise RuntimeError("stop after building")

    monkeypatch.setattr(kvcache, "make_cache", make_cache)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match="stop after building"):
            kvcache.generate(torch.nn.Linear(1, 1), [[1, 2, 3]], "offloaded", max_new_tokens=2)
    assert len(built) == 1
    assert [str(w.message)[:26] for w in seen if w.category is RuntimeWarning] == ["transformers 5.17.0's offl"]


def test_a_cuda_peak_block_opened_before_cuda_starts_measures_it(cuda):
    """measure.peak('cuda') as a notebook's first CUDA cell: torch's reset would refuse before CUDA starts."""
    with measure.peak("cuda") as p:
        cuda.alloc(GiB)
        cuda.free(GiB)
    assert (p.bytes, p.exact, cuda.initialized) == (GiB, True, True)
    assert measure._open_peaks == []
