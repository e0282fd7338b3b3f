"""The planners import no heavy library at import time: `bigsmall-lab fit <preset>` answers without torch.

Each case imports one module in a fresh Python and records who asked for torch, transformers, accelerate,
diffusers or bitsandbytes. The one blamed is the innermost lab module whose *top-level code* was running
(a ``<module>`` frame): ``kv_plan`` importing ``estimates`` that imports torch blames ``estimates``, not
``kv_plan``; a module whose top level calls a function that imports torch is blamed itself. Two recorders,
because an ``import torch`` of an already loaded torch reaches no finder:

- a ``sys.meta_path`` finder sees each heavy package's first load, whoever asked for it;
- a ``builtins.__import__`` wrapper sees every import statement a lab module executes, loaded or not.

``importlib.import_module`` of an already loaded package is seen by neither; the lab names none that way.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "accelerate", "diffusers", "bitsandbytes")

# What `bigsmall-lab fit <preset> --gpu ...` imports: none may import a heavy library at its top level.
PLANNERS = ("bigsmall_lab._dtypes", "bigsmall_lab.bnb_formats", "bigsmall_lab._compat", "bigsmall_lab.kv_plan",
            "bigsmall_lab.tp_plan", "bigsmall_lab.offload_plan", "bigsmall_lab.estimates", "bigsmall_lab.zoo._configs",
            "bigsmall_lab.zoo._facts", "bigsmall_lab.zoo._facts_cache", "bigsmall_lab.advisor",
            "bigsmall_lab.placement_rule", "bigsmall_lab._fit_cli")
# Imports torch at its top level (line `import torch`), so the check must name it: proof that it can fail.
HEAVY_ON_PURPOSE = "bigsmall_lab.quantized"

# Run in a fresh interpreter: argv[1] the module to import, argv[2] the package whose modules can be blamed.
# Prints {"error": ...} or {"records": [{"package", "importer", "chain", "how"}, ...]}.
RECORDER = textwrap.dedent('''
    import builtins, json, sys

    TARGET, PREFIX = sys.argv[1], sys.argv[2]
    HEAVY = set(sys.argv[3].split(","))
    records = []

    def ours(name):
        return name == PREFIX or name.startswith(PREFIX + ".")

    def module_chain(frame):
        """Lab modules whose top-level code is running, innermost first."""
        chain = []
        while frame is not None:
            name = frame.f_globals.get("__name__", "")
            if frame.f_code.co_name == "<module>" and ours(name) and name not in chain:
                chain.append(name)
            frame = frame.f_back
        return chain

    def record(package, frame, how):
        chain = module_chain(frame)
        if chain:
            records.append({"package": package, "importer": chain[0], "chain": chain, "how": how})

    class FirstLoad:
        def find_spec(self, fullname, path=None, target=None):
            if fullname in HEAVY:
                record(fullname, sys._getframe(1), "first load")
            return None  # only watching: the real finders load it

    real_import = builtins.__import__

    def watching_import(name, globals=None, locals=None, fromlist=(), level=0):
        package = name.partition(".")[0]
        if level == 0 and package in HEAVY and ours((globals or {}).get("__name__", "")):
            record(package, sys._getframe(1), "import statement")
        return real_import(name, globals, locals, fromlist, level)

    sys.meta_path.insert(0, FirstLoad())
    builtins.__import__ = watching_import
    try:
        __import__(TARGET)
    except BaseException as exc:
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
    else:
        print(json.dumps({"records": records}))
''')


def heavy_imports(module: str, prefix: str = "bigsmall_lab", path: Path = ROOT) -> list[dict]:
    """The records of importing ``module`` in a fresh interpreter (cwd ``path``); fails when it cannot be imported."""
    out = subprocess.run([sys.executable, "-c", RECORDER, module, prefix, ",".join(HEAVY)], capture_output=True,
                         text=True, timeout=180, cwd=path)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "error" not in result, f"importing {module} failed: {result.get('error')}"
    return result["records"]


def blamed(records: list[dict]) -> set[str]:
    return {r["importer"] for r in records}


def described(records: list[dict]) -> str:
    return "; ".join(f"{r['importer']} -> {r['package']} ({r['how']}; chain {' <- '.join(r['chain'])})"
                     for r in records) or "no heavy import at all"


CASES = [
    *(pytest.param(m, False, id=m) for m in PLANNERS),
    pytest.param(HEAVY_ON_PURPOSE, True, id=f"control-{HEAVY_ON_PURPOSE}"),
]


@pytest.mark.parametrize(("module", "imports_heavy"), CASES)
def test_whether_a_module_imports_a_heavy_library_at_its_top_level(module, imports_heavy):
    records = heavy_imports(module)
    assert (module in blamed(records)) is imports_heavy, described(records)


def test_the_blame_goes_to_the_module_whose_top_level_asked(tmp_path):
    # A probe package: `light` imports a torch-importing sibling (not blamed); `late` imports torch itself after
    # the sibling loaded it (blamed: the statement is seen though no finder is asked); `caller` imports no torch
    # but its top level calls a function that does (blamed: its import is what pulls torch).
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "__init__.py").write_text("")
    (probe / "heavy.py").write_text("import torch\n")
    (probe / "light.py").write_text("from . import heavy\n")
    (probe / "late.py").write_text("from . import heavy\nimport torch\n")
    (probe / "helper.py").write_text("def load():\n    import torch\n    return torch\n")
    (probe / "caller.py").write_text("from .helper import load\nTORCH = load()\n")

    assert blamed(heavy_imports("probe.light", "probe", tmp_path)) == {"probe.heavy"}
    assert blamed(heavy_imports("probe.late", "probe", tmp_path)) == {"probe.heavy", "probe.late"}
    assert blamed(heavy_imports("probe.caller", "probe", tmp_path)) == {"probe.caller"}
