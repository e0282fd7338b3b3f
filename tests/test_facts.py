"""A preset's shipped facts (bigsmall_lab/data/preset_facts.json.gz) are what the planners compute now, the advisor
answers the same from them as from the meta models, and `bigsmall-lab fit <preset> --gpu ...` imports no torch.

The facts hold only for the library versions they were computed with: where the installed ones differ (the latest
lane) the comparison with the shipped file is skipped, saying why, and the cache-folder path is tested instead."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bigsmall_lab import advisor
from bigsmall_lab.zoo import _facts
from bigsmall_lab.zoo._configs import PRESETS, _resolve, _resolve_name, resolve

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "accelerate", "bitsandbytes", "diffusers")
SHIPPED = _facts.read_file(_facts.FACTS_FILE)
CURRENT = SHIPPED is not None and SHIPPED.get("versions") == _facts.installed_versions()
STALE = (f"the shipped facts were computed with {SHIPPED and SHIPPED.get('versions')}; installed: "
         f"{_facts.installed_versions()}: the lab plans from meta models or the cache folder here")
# The grid: 6 named GPU setups (each with its host's RAM, as the CLI gives them) x 3 contexts.
SETUPS = ("T4", "L4", "RTX 4090", "2xL4", "A100 80GB", "8xH100")
CONTEXTS = (2048, 8192, 32768)


@pytest.fixture(scope="module")
def computed() -> dict[str, _facts.Facts]:
    return {name: _facts.compute(name) for name in PRESETS}


def test_the_shipped_file_covers_every_preset_and_its_config():
    assert SHIPPED is not None, "run `python tools/presets_data.py` and commit bigsmall_lab/data/preset_facts.json.gz"
    assert set(SHIPPED["presets"]) == set(PRESETS)
    for name, record in SHIPPED["presets"].items():
        assert record["config_sha256"] == _facts.config_sha256(name), f"{name}: its config changed since"


@pytest.mark.skipif(not CURRENT, reason=STALE)
def test_the_shipped_facts_are_what_the_planners_compute_now(computed):
    for name, facts in computed.items():
        shipped = {k: v for k, v in SHIPPED["presets"][name].items() if k != "config_sha256"}
        assert json.loads(json.dumps(facts.as_dict())) == shipped, (
            f"{name}: run `python tools/presets_data.py` and commit bigsmall_lab/data/preset_facts.json.gz")


@pytest.mark.skipif(not CURRENT, reason=STALE)
def test_a_preset_resolves_from_its_facts_and_builds_no_model():
    _resolve_name.cache_clear()
    spec = resolve("llama-3.1-70b")
    assert spec.facts is not None and spec._meta is None
    assert spec.parameters == 70_553_706_496  # the published 70.6 B
    advisor.fit(spec, "2xL4", seq_len=8192)
    assert spec._meta is None, "planning from facts built the meta model"


def test_facts_equal_the_meta_model_for_every_number_they_hold(computed):
    # whatever the file: the facts' getters return what the planners return on the meta model
    from bigsmall_lab import estimates, placement, tp_plan

    for name in ("llama-3.2-1b", "gemma-2-9b", "t5-v1.1-xxl-encoder"):
        facts, spec = computed[name], _resolve(name)
        assert facts.parameters == spec.parameters and facts.generates == spec.generates
        for quant in _facts.WEIGHTS:
            assert facts.module_bytes("bfloat16", quant) == estimates.module_bytes(spec, "bfloat16", quant)
        assert facts.tree("float16", "nf4") == placement.tree(name, "float16", "nf4")
        if spec.generates:
            assert facts.tp_rank_bytes("bfloat16", 2) == list(tp_plan.plan(spec, 2, "bfloat16").rank_bytes)
            assert facts.text_config.num_key_value_heads == spec.text_config.num_key_value_heads
    assert computed["t5-v1.1-xxl-encoder"].tp == {}


@pytest.mark.skipif(not CURRENT, reason=STALE)
@pytest.mark.parametrize("name", list(PRESETS))
def test_the_advisor_answers_the_same_from_facts_as_from_meta_models(name):
    # every preset x the 6 named setups x 3 contexts: option by option, every byte, label, note and line of code
    _resolve_name.cache_clear()
    facts_spec, meta_spec = resolve(name), _resolve(name)
    assert facts_spec.facts is not None and meta_spec.facts is None
    for gpu in SETUPS:
        m = advisor.machine(gpu)
        for seq_len in CONTEXTS:
            from_facts = [o.as_dict() for o in advisor.fit(facts_spec, m, seq_len=seq_len)]
            from_meta = [o.as_dict() for o in advisor.fit(meta_spec, m, seq_len=seq_len)]
            assert from_facts == from_meta, (name, gpu, seq_len)


@pytest.mark.skipif(not CURRENT, reason=STALE)
def test_the_smallest_change_is_the_same_from_facts():
    _resolve_name.cache_clear()
    for name, m in (("llama-3.1-70b", advisor.machine("T4", cpu_ram=0)), ("llama-3.1-405b", "T4")):
        a = advisor.smallest_change(resolve(name), m, seq_len=8192)
        b = advisor.smallest_change(_resolve(name), m, seq_len=8192)
        assert a is not None and b is not None, name
        assert (a.kind, a.text, a.seq_len, a.option.as_dict()) == (b.kind, b.text, b.seq_len, b.option.as_dict())


def test_other_versions_compute_the_facts_once_into_the_cache_folder(tmp_path, monkeypatch):
    from bigsmall_lab.zoo import _facts_cache

    monkeypatch.setenv("BIGSMALL_LAB_CACHE", str(tmp_path))
    monkeypatch.setattr(_facts, "FACTS_FILE", tmp_path / "missing.json.gz")  # as if the shipped ones were stale
    assert _facts.preset_facts("llama-3.2-1b") is None
    made = _facts_cache.ensure("llama-3.2-1b")
    files = list((tmp_path / "facts").glob("llama-3.2-1b-*.json.gz"))
    assert len(files) == 1 and not list((tmp_path / "facts").glob(".*tmp"))  # renamed into place, no leftovers
    again = _facts.preset_facts("llama-3.2-1b")
    assert again is not None and again.as_dict() == json.loads(json.dumps(made.as_dict()))
    # another transformers version: the cached file is not theirs
    versions = {**_facts.installed_versions(), "transformers": "0.0.1"}
    monkeypatch.setattr(_facts, "installed_versions", lambda: versions)
    assert _facts.preset_facts("llama-3.2-1b") is None


def test_a_damaged_cache_file_is_ignored(tmp_path, monkeypatch):
    from bigsmall_lab.zoo import _facts_cache

    monkeypatch.setenv("BIGSMALL_LAB_CACHE", str(tmp_path))
    monkeypatch.setattr(_facts, "FACTS_FILE", tmp_path / "missing.json.gz")
    path = _facts_cache.cached_path("llama-3.2-1b", _facts.installed_versions(), create=True)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x1f\x8b not gzip")
    assert _facts.preset_facts("llama-3.2-1b") is None  # planned from the meta model instead


def test_a_read_only_cache_folder_still_answers(tmp_path, monkeypatch):
    from bigsmall_lab.zoo import _facts_cache

    def refuse(create=True):
        raise PermissionError("the cache folder is not writable")

    monkeypatch.setattr(_facts, "FACTS_FILE", tmp_path / "missing.json.gz")
    monkeypatch.setattr(_facts_cache, "cache_dir", refuse)
    assert _facts.preset_facts("llama-3.2-1b") is None
    assert _facts_cache.ensure("llama-3.2-1b").parameters == 1_235_814_400


def _cli_modules(*argv: str, env: dict | None = None, prelude: str = "") -> tuple[subprocess.CompletedProcess, list[str]]:
    import os

    code = (prelude + "import sys, runpy\n"
            f"sys.argv = ['bigsmall-lab', *{list(argv)!r}]\n"
            "try:\n    runpy.run_module('bigsmall_lab.cli', run_name='__main__')\n"
            "except SystemExit as exit:\n    assert exit.code in (0, None), exit.code\n"
            f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr[-2000:]
    marker = out.stdout.strip().splitlines()[-1]
    return out, eval(marker[len("HEAVY "):])


@pytest.mark.parametrize("argv", [("fit", "llama-3.1-70b", "--gpu", "T4", "--seq-len", "8192"),
                                  ("fit", "llama-3.1-8b", "--gpu", "2xL4", "--cpu-ram", "64GB", "--json"),
                                  ("fit", "flux.1-dev-transformer", "--gpu", "16GB")])
def test_fit_on_named_gpus_imports_no_torch(argv, tmp_path):
    env = {"BIGSMALL_LAB_CACHE": str(tmp_path)}
    out, heavy = _cli_modules(*argv, env=env)
    if not CURRENT:  # the first call computed the facts into the cache folder (torch); the next must not need it
        out, heavy = _cli_modules(*argv, env=env)
    assert heavy == [], f"`bigsmall-lab {' '.join(argv)}` imported {heavy}"
    assert "options" in out.stdout


def test_with_stale_shipped_facts_the_first_fit_computes_them_and_the_next_needs_no_torch(tmp_path):
    # what a fresh install with newer releases meets (the latest lane, a workshop morning): the shipped file is
    # not for the installed versions, so the first call builds the meta model and caches the facts
    stale = ("import pathlib\nfrom bigsmall_lab.zoo import _facts\n"
             f"_facts.FACTS_FILE = pathlib.Path({str(tmp_path / 'stale.json.gz')!r})\n")
    env = {"BIGSMALL_LAB_CACHE": str(tmp_path)}
    argv = ("fit", "llama-3.2-3b", "--gpu", "L4", "--seq-len", "4096", "--json")
    first, heavy_first = _cli_modules(*argv, env=env, prelude=stale)
    assert "torch" in heavy_first and list((tmp_path / "facts").glob("llama-3.2-3b-*.json.gz"))
    second, heavy_second = _cli_modules(*argv, env=env, prelude=stale)
    assert heavy_second == [], heavy_second
    assert json.loads(first.stdout.rsplit("HEAVY", 1)[0]) == json.loads(second.stdout.rsplit("HEAVY", 1)[0])


def test_the_check_sees_torch_when_fit_needs_it(tmp_path):
    # a config.json is built on the meta device: the same harness reports torch (so the check above can fail)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(json.loads((ROOT / "bigsmall_lab/zoo/configs/llama-3.2-1b.json").read_text())))
    _, heavy = _cli_modules("fit", str(config), "--gpu", "T4", env={"BIGSMALL_LAB_CACHE": str(tmp_path)})
    assert "torch" in heavy
