"""The CLI starts fast (issue 18): `--help` and `presets` import no torch, print no third-party warning, tables fit
100 columns, and every command that prints a table has `--json`. (Times are benchmark output, tools/benchmark.py,
never asserted here.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bigsmall_lab import cli

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "accelerate", "bitsandbytes", "diffusers")


def modules_after(*argv: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the CLI's main as `python -m bigsmall_lab.cli` runs it, then list which heavy modules got imported."""
    code = ("import sys, runpy\n"
            f"sys.argv = ['bigsmall-lab', *{list(argv)!r}]\n"
            "try:\n    runpy.run_module('bigsmall_lab.cli', run_name='__main__')\n"
            "except SystemExit as exit:\n    assert exit.code in (0, None), exit.code\n"
            f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    marker = out.stdout.strip().splitlines()[-1]
    assert marker.startswith("HEAVY ")
    return out, eval(marker[len("HEAVY "):])


@pytest.mark.parametrize("argv", [("--help",), ("presets",), ("presets", "--json"), ("lab", "--help"),
                                  ("estimate", "--help")])
def test_help_and_presets_import_no_torch(argv):
    out, heavy = modules_after(*argv)
    assert heavy == [], f"`bigsmall-lab {' '.join(argv)}` imported {heavy}"
    assert out.stderr == "", out.stderr


def test_the_check_sees_torch_when_a_command_needs_it():
    # the same harness, on a command that does need torch: the check above can fail
    _, heavy = modules_after("estimate", "llama-3.2-1b", "--json")
    assert "torch" in heavy


def test_presets_prints_no_warning_and_fits_100_columns():
    out = subprocess.run([sys.executable, "-m", "bigsmall_lab.cli", "presets"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stderr == ""
    assert "warn" not in out.stdout.lower()
    lines = out.stdout.splitlines()
    assert lines and max(map(len, lines)) <= cli.WIDTH
    assert lines[0].split()[:2] == ["llama-3.1-8b", "8,030,261,248"]


def test_the_shipped_counts_are_the_zoos():
    # bigsmall_lab/data/presets.json is what tools/presets_data.py writes now: counts on the meta device
    from bigsmall_lab import zoo

    shipped = json.loads(cli._PRESETS_FILE.read_text())["presets"]
    assert shipped == cli.preset_records(), "run `python tools/presets_data.py` and commit bigsmall_lab/data/presets.json"
    assert list(shipped) == list(zoo.PRESETS)
    for name, record in shipped.items():
        assert record["parameters"] == zoo.count_parameters(name)


def test_a_stale_count_is_not_printed(tmp_path, monkeypatch):
    # a record whose config changed since it was counted (another hash): the CLI counts afresh
    data = json.loads(cli._PRESETS_FILE.read_text())
    data["presets"]["llama-3.1-8b"]["parameters"] = 1
    data["presets"]["llama-3.1-8b"]["config_sha256"] = "0" * 64
    stale = tmp_path / "presets.json"
    stale.write_text(json.dumps(data))
    monkeypatch.setattr(cli, "_PRESETS_FILE", stale)
    assert cli._preset_rows()["llama-3.1-8b"]["parameters"] == 8_030_261_248
    # and with the hash intact the file is trusted as is (so the hash is what guards it)
    data["presets"]["llama-3.1-8b"]["config_sha256"] = cli._config_hash("llama-3.1-8b")
    stale.write_text(json.dumps(data))
    assert cli._preset_rows()["llama-3.1-8b"]["parameters"] == 1
    # a preset whose config ships but which the file does not hold (added since): counted afresh, all of them
    del data["presets"]["gemma-2-9b"]
    stale.write_text(json.dumps(data))
    rows = cli._preset_rows()
    assert rows["gemma-2-9b"]["parameters"] == 9_241_705_984 and rows["llama-3.1-8b"]["parameters"] == 8_030_261_248
    monkeypatch.setattr(cli, "_PRESETS_FILE", tmp_path / "missing.json")
    assert cli._preset_rows()["llama-3.1-8b"]["parameters"] == 8_030_261_248


def test_presets_json(capsys):
    assert cli.main(["presets", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert records[0] == {"name": "llama-3.1-8b", "hub_id": "meta-llama/Llama-3.1-8B", "config_file": "config.json",
                          "published": "8.03B", "parameters": 8_030_261_248}


@pytest.mark.parametrize("config", ["llama-3.1-8b", "flux.1-dev-transformer"])
def test_the_estimate_fits_100_columns_and_wide_has_a_column_per_gpu(config, capsys):
    from bigsmall_lab.estimates import GPUS, estimate

    assert cli.main(["estimate", config]) == 0
    narrow = capsys.readouterr().out.splitlines()
    assert max(map(len, narrow)) <= cli.WIDTH
    # the GPUs each row fits, as the estimator says, listed under the table
    fits = ", ".join(n for n, ok in estimate(config, dtype="bfloat16").fits_table().items() if ok)
    row = next(line for line in narrow if line.strip().startswith("bfloat16 ") and "|" not in line)
    assert row.split(None, 1)[1] == fits
    assert cli.main(["estimate", config, "--wide"]) == 0
    wide = capsys.readouterr().out.splitlines()
    head = next(line for line in wide if line.startswith("| dtype"))
    assert [c.strip() for c in head.split("|")[-len(GPUS) - 1:-1]] == list(GPUS)


def test_every_command_that_prints_a_table_has_json():
    sub = next(a for a in cli._parser()._actions if a.dest == "command")
    # every command but the two that print no table: `lab` (starts Jupyter) and `info` (one banner line)
    tables = set(sub.choices) - {"lab", "info"}
    assert {"presets", "estimate", "check"} <= tables
    for name in sorted(tables):
        assert "--json" in sub.choices[name]._option_string_actions, f"{name} has --json"


def test_the_package_loads_its_names_on_first_use():
    # `import bigsmall_lab` imports nothing heavy; every public name and every `bsl.<name>` the lessons, tools and
    # tests use still resolves (to the object its home module holds), and a misspelt name is an AttributeError
    names = sorted({m for path in [*ROOT.glob("lessons/*.ipynb"), *ROOT.glob("tools/*.py"), *ROOT.glob("tests/*.py")]
                    for m in re.findall(r"\bbsl\.([A-Za-z_][A-Za-z0-9_]*)", path.read_text())})
    code = ("import sys, importlib, bigsmall_lab as bsl\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])\n"
            f"for name in sorted({{*bsl.__all__, *{names!r}}}):\n"
            "    value = getattr(bsl, name)\n"
            "    if name in bsl._HOME:\n"
            "        assert value is getattr(importlib.import_module('bigsmall_lab.' + bsl._HOME[name]), name), name\n"
            "print(hasattr(bsl, 'load_modle'), 'load_model' in dir(bsl))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[0] == "[]" and out.stdout.splitlines()[-1] == "False True"
    assert {"load_model", "claim", "estimates", "measure"} <= set(names)
