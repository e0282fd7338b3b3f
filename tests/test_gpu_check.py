"""tools/gpu_check.py works the first time it meets a GPU: its dry run (the same script on the CPU with tiny
models) runs here and in CI, its wheel installer is exercised with a wheel made here, and one failing
check never hides the others (issue 17)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu_check.py"


def _tool():
    spec = importlib.util.spec_from_file_location("gpu_check_tool", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_runs_every_check_and_writes_the_results(tmp_path):
    out = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path), "--wheels",
                          str(tmp_path / "no-wheels")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    data = json.loads((tmp_path / "gpu-results.json").read_text())
    checks = data["checks"]
    assert list(checks) == list(_tool().CHECKS)
    assert {name: r["status"] for name, r in checks.items() if r["status"] != "passed"} == {"tp": "skipped"}
    assert "nccl needs CUDA" in checks["tp"]["reason"]
    assert all(a["ok"] for r in checks.values() for a in r["asserts"])
    assert sum(len(r["asserts"]) for r in checks.values()) >= 15  # every check asserts, none only records
    assert checks["context"]["measured"]["cuda_context_bytes"] is None
    assert checks["load_ext"]["measured"]["first"]["gpu_peak_bytes"] is None
    assert checks["weights"]["measured"]["stored_bytes"] == checks["weights"]["measured"]["estimate_bytes"]
    assert checks["kv_offloaded"]["measured"]["refusal"].startswith("the offloaded cache needs a CUDA GPU")
    assert checks["gpu_tests"]["measured"]["returncode"] in (0, 5)  # -o addopts="": not exit 4 without nbval
    text = (tmp_path / "gpu-results.md").read_text()
    assert text.startswith("# GPU check results") and "dry run on a CPU" in text and "| tp | skipped" in text
    assert not (ROOT / "docs" / "gpu-results.md").exists() or "dry run" not in (ROOT / "docs" / "gpu-results.md").read_text()


def _wheel(folder: Path, dist: str, module: str, tag: str = "py3-none-any") -> Path:
    path = folder / f"{dist}-1.0-{tag}.whl"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr(f"{module}/__init__.py", "ANSWER = 42\n")
        whl.writestr(f"{dist}-1.0.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    return path


def test_missing_modules_are_unpacked_from_carried_wheels(tmp_path, monkeypatch):
    tool = _tool()
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    monkeypatch.setitem(tool.WHEEL_OF, "bsl_fake_mod", "bsl-fake-dist")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "bsl_fake_dist", "bsl_fake_mod")
    _wheel(wheels, "bsl_other_abi", "bsl_other_abi", tag="cp27-cp27m-win32")  # another Python's wheel: not taken
    monkeypatch.setitem(tool.WHEEL_OF, "bsl_other_abi", "bsl_other_abi")
    done = tool.install_missing(wheels, tmp_path / "site",
                                modules=("bsl_fake_mod", "bsl_not_carried", "bsl_other_abi", "json"))
    assert done == {"bsl_fake_mod": "installed from bsl_fake_dist-1.0-py3-none-any.whl",
                    "bsl_not_carried": "missing (no wheel carried for this Python and platform)",
                    "bsl_other_abi": "missing (no wheel carried for this Python and platform)", "json": "present"}
    assert __import__("bsl_fake_mod").ANSWER == 42
    assert str(tmp_path / "site") in __import__("os").environ["PYTHONPATH"]  # subprocesses (torchrun) see it too
    sys.modules.pop("bsl_fake_mod", None)


def test_a_failing_check_is_recorded_and_the_others_still_run(monkeypatch):
    tool = _tool()

    def fails(c, ctx):
        c.expect(False, "A false claim fails the check.")

    def raises(c, ctx):
        raise RuntimeError("boom")

    def skips(c, ctx):
        raise tool.Skip("needs bitsandbytes")

    def passes(c, ctx):
        c.expect(True, "A true claim passes.")

    monkeypatch.setattr(tool, "RUNNERS", {"a": fails, "b": raises, "c": skips, "d": passes})
    results = tool.run_checks(["a", "b", "c", "d"], ctx=None)
    assert {k: r["status"] for k, r in results.items()} == {"a": "failed", "b": "error", "c": "skipped", "d": "passed"}
    assert results["b"]["reason"] == "RuntimeError: boom" and "Traceback" in results["b"]["measured"]["traceback"]
    md = tool.render({"runs": {}, "checks": results})
    assert "- FAIL: A false claim fails the check." in md and "| c | skipped: needs bitsandbytes |" in md


def test_a_check_whose_package_is_missing_is_skipped_with_its_reason():
    tool = _tool()
    with pytest.raises(tool.Skip, match="needs bsl_no_such_package, not installed here"):
        tool._needs("json", "bsl_no_such_package")


def test_unknown_check_names_are_refused():
    out = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--only", "weights,nope"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--only names ['nope']" in out.stderr


def test_one_rank_tensor_parallel_launch_runs_the_worker(tmp_path, monkeypatch):
    """The launch the GPU check uses with one GPU (torchrun, one rank), run here over gloo on bigsmall-tiny."""
    import bigsmall_lab as bsl

    monkeypatch.setenv("BIGSMALL_LAB_CACHE", str(tmp_path / "cache"))
    found = _tool()._tp_one_rank(bsl.zoo.model_path("bigsmall-tiny"), device="cpu", dtype="float32")
    assert (found["nproc"], found["backend"], found["tokens_identical"], found["new_tokens"]) == (1, "gloo", True, 8)


def test_the_readme_states_what_docs_gpu_results_holds():
    """The README's GPU row quotes the committed GPU run: its number of checks, all passed, the GPU and versions."""
    data = json.loads((ROOT / "docs" / "gpu-results.json").read_text())
    checks, runs = data["checks"], [r for r in data["runs"].values() if not r["dry_run"]]
    assert runs and all(r["status"] == "passed" for r in checks.values())
    gpu, versions = runs[-1]["machine"]["gpu"], runs[-1]["machine"]["versions"]
    short = lambda v: ".".join(v.split("+")[0].split(".")[:2])  # noqa: E731  ("2.11.0+cu130" -> "2.11")
    row = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| Linux, CUDA GPU |"))
    assert f"run once on one {gpu.split()[-1]} (torch {short(versions['torch'])}, transformers " \
           f"{short(versions['transformers'])}): the {len(checks)} checks of `tools/gpu_check.py` passed" in row
