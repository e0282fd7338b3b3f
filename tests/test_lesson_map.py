"""The lesson map (bigsmall_lab/_lessons.py) is what the lessons do, and the public surface is declared.

Each lesson's code cells are read with ``ast`` (IPython's ``%``/``!`` lines read as ``pass``): every ``bsl.<name>``,
``from bigsmall_lab import X``, ``from bigsmall_lab.X import ...``, ``views.Y`` and ``check_Z`` they hold is
compared with the lesson's entry, both ways. Every public module belongs to a lesson or to the shared base,
every ``check_*`` exercise to a lesson, every talk claim to a mapped lesson; no lesson touches a private name;
each public module has a docstring and ``__all__``, and ``bigsmall_lab.__all__`` names them all; the README's
map is the one :func:`bigsmall_lab._lessons.map_markdown` draws.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import bigsmall_lab
from bigsmall_lab import _lessons
from bigsmall_lab._lessons import LESSON_MAP, SHARED, SHARED_EXERCISES, Lesson
from bigsmall_lab._talk import CLAIMS
from tests.test_layers import imports_of

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bigsmall_lab"
NOTEBOOKS = sorted((ROOT / "lessons").glob("*.ipynb"))


def public_modules() -> list[str]:
    """Modules and packages directly under bigsmall_lab/ whose names do not start with ``_``."""
    names = [p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("_")]
    names += [p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file() and not p.name.startswith("_")]
    return sorted(names)


def is_module(name: str) -> bool:
    return (PACKAGE / f"{name}.py").is_file() or (PACKAGE / name / "__init__.py").is_file()


@dataclass
class Uses:
    """What a lesson's code cells reach in the package."""

    modules: set[str] = field(default_factory=set)
    views: set[str] = field(default_factory=set)
    exercises: set[str] = field(default_factory=set)
    private: list[str] = field(default_factory=list)


def code_cells(path: Path) -> list[str]:
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def _python(source: str) -> ast.Module:
    # IPython lines (%pip, %load_ext, !ls) are not Python: each becomes `pass` at its indent.
    lines = [line[:len(line) - len(line.lstrip())] + "pass" if line.lstrip().startswith(("%", "!")) else line
             for line in source.splitlines()]
    return ast.parse("\n".join(lines))


def _chain(node: ast.AST) -> list[str] | None:
    """``bsl.exercises.check_x`` -> ['bsl', 'exercises', 'check_x']; None when it does not start at a name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return [node.id, *reversed(parts)]


def uses_of(cells: list[str]) -> Uses:
    """Walk every code cell: names bound to the package or its modules, then every attribute read from them."""
    uses = Uses()
    package_names: set[str] = set()  # `import bigsmall_lab as bsl` -> {'bsl'}
    bound: dict[str, str] = {}  # `from bigsmall_lab import views` -> {'views': 'views'}
    home = bigsmall_lab._HOME  # a public name of the package -> the module it lives in

    def reach(module: str, member: str | None, where: str) -> None:
        if module.startswith("_"):
            uses.private.append(f"{where}: bigsmall_lab.{module}")
            return
        if member is not None and member.startswith("_") and not member.startswith("__"):
            uses.private.append(f"{where}: bigsmall_lab.{module}.{member}")
        uses.modules.add(module)
        if module == "views" and member:
            uses.views.add(member)
        if module == "exercises" and member and member.startswith("check_"):
            uses.exercises.add(member)

    trees = [_python(cell) for cell in cells]
    for tree in trees:  # bindings first: a later cell may use a name an earlier one imported
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    parts = alias.name.split(".")
                    if parts[0] != "bigsmall_lab":
                        continue
                    if len(parts) == 1:
                        package_names.add(alias.asname or "bigsmall_lab")
                    else:
                        reach(parts[1], parts[2] if len(parts) > 2 else None, f"import {alias.name}")
                        if alias.asname:
                            bound[alias.asname] = parts[1]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                parts = node.module.split(".")
                if parts[0] != "bigsmall_lab":
                    continue
                for alias in node.names:
                    where = f"from {node.module} import {alias.name}"
                    if len(parts) == 1:
                        if is_module(alias.name):
                            reach(alias.name, None, where)
                            bound[alias.asname or alias.name] = alias.name
                        elif alias.name not in home:  # a public name of the package (claim) is the shared base
                            reach(alias.name, None, where)
                    else:
                        reach(parts[1], alias.name if len(parts) == 2 else parts[2], where)
    for tree in trees:
        inner = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}  # read whole chains only
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or id(node) in inner:
                continue
            chain = _chain(node)
            if chain is None:
                continue
            if chain[0] in package_names or chain[0] == "bigsmall_lab":
                name, member = chain[1], chain[2] if len(chain) > 2 else None
                if is_module(name) or name.startswith("_"):
                    reach(name, member, ".".join(chain[:3]))
                elif name in home and not home[name].startswith("_"):
                    reach(home[name], name, ".".join(chain[:2]))  # bsl.track: measure's
                elif name not in home and name not in ("__version__", "load_ipython_extension"):
                    uses.private.append(f"{'.'.join(chain[:2])}: not a public name of bigsmall_lab")
            elif chain[0] in bound:
                reach(bound[chain[0]], chain[1], ".".join(chain[:2]))
    return uses


def reached(modules: set[str]) -> set[str]:
    """``modules`` and every top-level module of the package they import, directly or not (lazy imports too)."""
    seen, todo = set(), list(modules)
    while todo:
        name = todo.pop()
        if name in seen or not is_module(name):
            continue
        seen.add(name)
        files = [PACKAGE / f"{name}.py"] if (PACKAGE / f"{name}.py").is_file() else (PACKAGE / name).rglob("*.py")
        for path in files:
            todo += [target.split(".")[1] for _, target in imports_of(path, PACKAGE) if target.count(".") >= 1]
    return seen


def mismatches(entry: Lesson, uses: Uses) -> list[str]:
    """What the lesson calls that its entry does not name; what its entry names that the lesson never calls
    (views, exercises) or never reaches (modules: called, or imported by a planner or runner it calls)."""
    problems = []
    called = uses.modules - set(SHARED)
    unnamed = called - set(entry.modules)
    problems += [f"{entry.stem} calls module {n}, which its map entry does not name" for n in sorted(unnamed)]
    unused = set(entry.modules) - reached(called)  # not through views or exercises: they import nearly all
    problems += [f"{entry.stem}'s map entry names module {n}, which it never reaches" for n in sorted(unused)]
    for what, theirs, ours in (("view", uses.views, set(entry.views)),
                               ("exercise", uses.exercises, set(entry.exercises))):
        problems += [f"{entry.stem} calls {what} {n}, which its map entry does not name" for n in sorted(theirs - ours)]
        problems += [f"{entry.stem}'s map entry names {what} {n}, which it never calls" for n in sorted(ours - theirs)]
    return problems


@pytest.mark.parametrize("entry", LESSON_MAP, ids=lambda e: e.stem)
def test_each_lesson_calls_what_the_map_says(entry):
    path = ROOT / "lessons" / f"{entry.stem}.ipynb"
    assert path.is_file(), f"the map names lesson {entry.stem}, but lessons/{path.name} does not exist"
    assert mismatches(entry, uses_of(code_cells(path))) == []


def test_every_notebook_is_mapped():
    assert [p.stem for p in NOTEBOOKS] == [e.stem for e in LESSON_MAP if (ROOT / "lessons" / f"{e.stem}.ipynb").is_file()]
    assert {p.stem for p in NOTEBOOKS} <= {e.stem for e in LESSON_MAP}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_lessons_use_no_private_name(path):
    assert uses_of(code_cells(path)).private == []


def test_the_reader_catches_a_call_the_map_does_not_name_and_a_private_import():
    entry = _lessons.lesson("01_memory_maths")
    cells = code_cells(ROOT / "lessons" / "01_memory_maths.ipynb")
    assert mismatches(entry, uses_of(cells)) == []
    extra = cells + ["%load_ext bigsmall_lab\nif True:\n    !ls\nfrom bigsmall_lab import bits as b\nb.decompose(1.0, 'bfloat16')",
                     "from bigsmall_lab._compat import tensor_parallel_kwargs\nbsl._units.gib(1)\nbsl.estimates._kv_layout()"]
    uses = uses_of(extra)
    assert mismatches(entry, uses) == ["01_memory_maths calls module bits, which its map entry does not name"]
    assert uses.private == ["from bigsmall_lab._compat import tensor_parallel_kwargs: bigsmall_lab._compat",
                            "bsl._units.gib: bigsmall_lab._units", "bsl.estimates._kv_layout: bigsmall_lab.estimates._kv_layout"]
    # and the other way: a view, an exercise and a runner the map names that the lesson never calls or reaches
    wider = Lesson(entry.stem, entry.title, entry.planners, entry.runners + ("loading",),
                   entry.views + ("QuantMap",), entry.exercises + ("check_gap",))
    assert mismatches(wider, uses_of(cells)) == [
        "01_memory_maths's map entry names module loading, which it never reaches",
        "01_memory_maths's map entry names view QuantMap, which it never calls",
        "01_memory_maths's map entry names exercise check_gap, which it never calls"]


def test_every_public_module_belongs_to_a_lesson_or_the_shared_base():
    mapped = {m for e in LESSON_MAP for m in e.modules} | set(SHARED)
    assert sorted(set(public_modules()) - mapped) == [], "add each to a lesson of bigsmall_lab/_lessons.py or to SHARED"
    assert sorted(m for m in mapped if not is_module(m)) == [], "the map names modules that do not exist"


def test_every_exercise_and_view_the_map_names_exists_and_every_check_belongs_to_a_lesson():
    from bigsmall_lab import exercises, views

    checks = {n for n in exercises.__all__ if n.startswith("check_")}
    mapped = [n for e in LESSON_MAP for n in e.exercises]
    assert sorted(checks - set(mapped) - set(SHARED_EXERCISES)) == [], "check_* functions no lesson claims"
    assert sorted(set(mapped) - checks) == [] and len(mapped) == len(set(mapped)), "one lesson per exercise"
    assert sorted({n for e in LESSON_MAP for n in e.views} - set(views.__all__)) == []


def test_every_talk_claim_belongs_to_a_mapped_lesson():
    stems = {e.stem for e in LESSON_MAP}
    assert sorted({c.lesson for c in CLAIMS} - stems) == []
    assert sum(len(e.claims) for e in LESSON_MAP) == len(CLAIMS)
    for entry in LESSON_MAP:
        assert entry.claims == tuple(c for c in CLAIMS if c.lesson == entry.stem)


def _docstring_and_all(name: str) -> tuple[str | None, list[str] | None]:
    path = PACKAGE / f"{name}.py" if (PACKAGE / f"{name}.py").is_file() else PACKAGE / name / "__init__.py"
    tree = ast.parse(path.read_text())
    names = None
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                names = ast.literal_eval(node.value)
    return ast.get_docstring(tree), names


@pytest.mark.parametrize("name", public_modules())
def test_each_public_module_has_a_docstring_and_all(name):
    doc, names = _docstring_and_all(name)
    assert doc, f"bigsmall_lab/{name} has no docstring"
    assert names, f"bigsmall_lab/{name} has no __all__"


def test_the_package_all_lists_every_public_module():
    assert sorted(set(public_modules()) - set(bigsmall_lab.__all__)) == []
    for name in bigsmall_lab.__all__:
        assert name in bigsmall_lab._HOME or is_module(name), f"bigsmall_lab.__all__ names {name}, which is nothing"


def test_the_readme_map_is_drawn_from_the_lesson_map():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "lesson_map.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert _lessons.map_markdown() in (ROOT / "README.md").read_text()
