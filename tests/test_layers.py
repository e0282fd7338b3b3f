"""Imports run edges -> views -> runners -> planners -> base, never back (the table is in bigsmall_lab's docstring).

Every ``import`` of every module under bigsmall_lab/ is read with ``ast`` (the ones inside functions
too: a lazy import is still a dependency) and checked against the layer table of the package
docstring, the one place the map is written.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import bigsmall_lab

PACKAGE = Path(bigsmall_lab.__file__).resolve().parent
LAYER_NAMES = ("base", "planners", "runners", "views", "edges")
# The CLI is an edge that must stay light: a terminal needs no widgets or charts.
CLI_MODULES = ("bigsmall_lab.cli", "bigsmall_lab._estimate_cli")
CLI_FORBIDDEN = ("bigsmall_lab.views", "plotly", "ipywidgets", "anywidget", "IPython")


def layer_table(doc: str) -> dict[str, str]:
    """{'bigsmall_lab.bits': 'planners', ...} from the ``layer: modules`` lines of the docstring."""
    table = {}
    for line in doc.splitlines():
        name, sep, modules = line.strip().partition(":")
        if sep and name in LAYER_NAMES:
            for module in modules.split():
                full = "bigsmall_lab" if module == "__init__" else f"bigsmall_lab.{module}"
                table[full] = name
    return table


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str, table: dict[str, str]) -> str | None:
    """The layer of ``module``: its own entry, else its package's (longest prefix, the root package aside)."""
    if module in table:
        return table[module]
    parts = module.split(".")
    for i in range(len(parts) - 1, 1, -1):
        if ".".join(parts[:i]) in table:
            return table[".".join(parts[:i])]
    return None


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for each import of the lab in ``path``, relative ones resolved."""
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                # `from . import quant` names a module; `from .zoo import build` names something in zoo.
                candidate = f"{source}.{alias.name}"
                as_file = root.parent / Path(*candidate.split("."))
                is_module = as_file.with_suffix(".py").is_file() or (as_file / "__init__.py").is_file()
                found.append((node.lineno, candidate if is_module else source))
    return [(line, name) for line, name in found if name == "bigsmall_lab" or name.startswith("bigsmall_lab.")]


def backward_imports(root: Path, doc: str) -> list[str]:
    """Every import that goes against the table, and every module the table does not place."""
    table = layer_table(doc)
    rank = {name: i for i, name in enumerate(LAYER_NAMES)}
    problems = []
    for path in sorted(root.rglob("*.py")):
        here = module_name(path, root)
        mine = layer_of(here, table)
        if mine is None:
            problems.append(f"{here} is in no layer: add it to the table in bigsmall_lab/__init__.py")
            continue
        for line, target in imports_of(path, root):
            theirs = layer_of(target, table)
            if theirs is not None and rank[theirs] > rank[mine]:
                problems.append(f"{path.relative_to(root.parent)}:{line}: {here} ({mine}) imports {target} ({theirs})")
    return problems


def cli_problems(root: Path) -> list[str]:
    problems = []
    for module in CLI_MODULES:
        path = root.parent / Path(*module.split(".")).with_suffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            problems += [f"{module} imports {n}" for n in names if n.startswith(CLI_FORBIDDEN)]
    return problems


def test_the_table_places_every_layer():
    table = layer_table(bigsmall_lab.__doc__)
    assert set(table.values()) == set(LAYER_NAMES)
    assert table["bigsmall_lab.estimates"] == "planners" and table["bigsmall_lab.measure"] == "runners"


def test_no_module_imports_a_higher_layer():
    assert backward_imports(PACKAGE, bigsmall_lab.__doc__) == []


def test_the_cli_never_imports_widgets_or_charts():
    assert cli_problems(PACKAGE) == []
    # and at run time, through everything it imports: the package, the estimator, the zoo
    code = ("import sys; from bigsmall_lab import cli; cli.main(['estimate', 'llama-3.2-1b', '--json']); "
            f"print([m for m in {CLI_FORBIDDEN!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.fixture
def package_copy(tmp_path) -> Path:
    root = tmp_path / "bigsmall_lab"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__", "*.safetensors", "*.json", "*.txt"))
    return root


def new_problems(copy: Path) -> list[str]:
    """What the edited copy adds to the real package's problems (the real ones have their own test)."""
    before = set(backward_imports(PACKAGE, bigsmall_lab.__doc__))
    return [p for p in backward_imports(copy, bigsmall_lab.__doc__) if p not in before]


def test_a_planner_importing_a_runner_is_caught(package_copy):
    # The rule works: a planner that reaches for the measuring runner (lazily, inside a function) fails.
    estimates = package_copy / "estimates.py"
    estimates.write_text(estimates.read_text() + "\n\ndef _peek():\n    from .measure import track\n    return track\n")
    problems = new_problems(package_copy)
    assert len(problems) == 1 and "bigsmall_lab.estimates (planners) imports bigsmall_lab.measure (runners)" in problems[0]


def test_a_runner_importing_a_view_and_the_cli_importing_plotly_are_caught(package_copy):
    (package_copy / "measure.py").write_text((package_copy / "measure.py").read_text()
                                             + "\nfrom .views import memory_timeline\n")
    (package_copy / "cli.py").write_text((package_copy / "cli.py").read_text() + "\nimport plotly\n")
    problems = new_problems(package_copy)
    assert any("bigsmall_lab.measure (runners) imports bigsmall_lab.views (views)" in p for p in problems)
    assert cli_problems(package_copy) == ["bigsmall_lab.cli imports plotly"]


def test_a_module_missing_from_the_table_is_caught(package_copy):
    (package_copy / "newthing.py").write_text('"""A new lesson\'s module, not yet placed."""\n')
    assert new_problems(package_copy) == [
        "bigsmall_lab.newthing is in no layer: add it to the table in bigsmall_lab/__init__.py"]
