"""The instructors' guide, docs/workshop.md, from what this machine measured (`make workshop`).

    python tools/workshop.py            # run every lesson, record time and peak RAM, then write the guide
    python tools/workshop.py --doc      # write the guide from the last record (benchmarks/workshop.json)
    python tools/workshop.py lessons/01_memory_maths.ipynb ...   # measure only these (merged into the record)

Each lesson runs as `make notebooks` runs it (nbclient, a fresh kernel, the lessons folder as working
directory) but nothing is written back to the notebook. While it runs, a thread samples the kernel every
0.2 s: its own peak resident memory (``VmHWM`` from /proc, exact: the kernel's high-water mark) and the sum of
the resident memory of the kernel and every process it started (torchrun's ranks in lesson 06; a sum
of samples, so a peak shorter than 0.2 s can be missed). The record (benchmarks/workshop.json) keeps the
machine's banner and the versions; the guide's tables are made from it by :func:`render`, never typed, and
``tests/test_workshop.py`` builds them from a fake record.

The rest of the guide is read from the lab itself: each exercise's question (its checker's docstring) and the
slips its checker names (the ``Slip`` sentences of ``bigsmall_lab/exercises/_lessonNN.py``, read with ``ast``),
and every cell that needs CUDA (the ``bsl.needs_cuda(what, instead)`` calls of the notebooks).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bigsmall_lab import _project  # noqa: E402  (no torch: links and the lesson list)

RECORD = ROOT / "benchmarks" / "workshop.json"
DOC = ROOT / "docs" / "workshop.md"
EXERCISES = ROOT / "bigsmall_lab" / "exercises"
SAMPLE_S = 0.2
GiB = 2**30
# The lesson stem's number -> the module of its exercises (04a and 04b share _lesson04).
_MODULE = re.compile(r"^(\d\d)")


# --- measuring ------------------------------------------------------------------------------------------

def _vm_hwm(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM, bytes); 0 when /proc has none (macOS, gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _Sampler(threading.Thread):
    """Samples the kernel of ``client`` (once it has one) until stopped: its VmHWM, the RSS of its tree."""

    def __init__(self, client):
        super().__init__(daemon=True)
        self.client, self.stop = client, threading.Event()
        self.kernel_peak = self.tree_peak = self.processes = 0

    def _pid(self) -> int | None:
        km = getattr(self.client, "km", None)
        provisioner = getattr(km, "provisioner", None)
        return getattr(provisioner, "pid", None) or getattr(getattr(provisioner, "process", None), "pid", None)

    def run(self) -> None:
        import psutil

        while not self.stop.wait(SAMPLE_S):
            pid = self._pid()
            if pid is None:
                continue
            try:
                kernel = psutil.Process(pid)
                tree = [kernel, *kernel.children(recursive=True)]
            except psutil.Error:
                continue
            rss = 0
            for proc in tree:
                try:
                    rss += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.tree_peak = max(self.tree_peak, rss)
            self.processes = max(self.processes, len(tree))
            self.kernel_peak = max(self.kernel_peak, _vm_hwm(pid))


def measure_lesson(path: Path) -> dict:
    """Run one lesson in a fresh kernel; its wall time, peaks and whether every cell ran."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=1200, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    sampler = _Sampler(client)
    sampler.start()
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except Exception as err:  # noqa: BLE001  (a failing lesson is recorded, the others still run)
        error = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
    seconds = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    return {"lesson": path.stem, "seconds": round(seconds, 1), "kernel_peak_bytes": sampler.kernel_peak,
            "tree_peak_bytes": sampler.tree_peak, "processes": sampler.processes, "error": error}


def machine() -> dict:
    import platform

    import bigsmall_lab as bsl

    return {"banner": bsl.banner(), "python": platform.python_version(),
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def measure(paths: list[Path]) -> dict:
    old = json.loads(RECORD.read_text()) if RECORD.exists() else {}
    lessons = {r["lesson"]: r for r in old.get("lessons", [])}
    for path in paths:
        print(f"running {path.name} ...", flush=True)
        lessons[path.stem] = measure_lesson(path)
        print(f"  {lessons[path.stem]}", flush=True)
    order = list(_project.LESSONS)
    record = {**machine(), "sample_seconds": SAMPLE_S,
              "lessons": sorted(lessons.values(), key=lambda r: order.index(r["lesson"]) if r["lesson"] in order
                                else len(order))}
    RECORD.write_text(json.dumps(record, indent=1) + "\n")
    return record


# --- reading the lab -------------------------------------------------------------------------------------

def _text(node: ast.AST) -> str | None:
    """A string literal, or an f-string with each replacement field written as '…'."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "…" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left), _text(node.right)
        return left + right if left is not None and right is not None else None
    return None


def _plain(doc: str) -> str:
    """A docstring paragraph as one line of Markdown: ``x`` -> `x`, :func:`~a.b` -> `b`."""
    doc = re.sub(r":\w+:`~?(?:[\w.]*\.)?([\w]+)`", r"`\1`", doc.replace("\n", " ").strip())
    return re.sub(r"``([^`]+)``", r"`\1`", re.sub(r"\s+", " ", doc))


def _called(node: ast.AST) -> set[str]:
    return {n.func.id for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}


def _slips_in(node: ast.AST) -> list[str]:
    out = []
    for call in ast.walk(node):
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Slip":
            why = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "why"), None)
            text = _text(why) if why is not None else None
            if text:
                out.append(text)
    return out


def exercises(module: Path) -> list[dict]:
    """Each ``check_*`` function of an exercises module: its question and the slips it names (with those of
    the module's helpers it calls, and 'GB / GiB instead of bytes' where it uses ``byte_unit_slips``)."""
    tree = ast.parse(module.read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    out = []
    for name, fn in functions.items():
        if not name.startswith("check_"):
            continue
        doc = _plain((ast.get_docstring(fn) or "").split("\n\n")[0])
        reached, todo = [fn], [fn]  # the check and the module's helpers it calls, at any depth
        while todo:
            for helper in sorted(_called(todo.pop())):
                node = functions.get(helper)
                if node is not None and not helper.startswith("check_") and node not in reached:
                    reached.append(node)
                    todo.append(node)
        slips = [slip for node in reached for slip in _slips_in(node)]
        if any("byte_unit_slips" in _called(node) for node in reached):
            slips.append("that number is in GB (10**9 bytes) or GiB (2**30 bytes); the question asks for bytes")
        out.append({"name": name, "asks": doc, "slips": list(dict.fromkeys(slips))})
    return out


def lesson_checkers(notebook: Path) -> list[str]:
    """The checkers a lesson calls, in order (``bsl.exercises.check_x(...)`` in its code cells)."""
    nb = json.loads(notebook.read_text())
    source = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    return list(dict.fromkeys(re.findall(r"exercises\.(check_\w+)\(", source)))


def cuda_cells(notebook: Path) -> list[tuple[str, str]]:
    """(what, instead) of each ``needs_cuda`` call in a lesson's code cells."""
    nb = json.loads(notebook.read_text())
    out = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        try:
            tree = ast.parse(re.sub(r"^\s*[%!].*$", "", "".join(cell["source"]), flags=re.M))
        except SyntaxError:
            continue
        for call in ast.walk(tree):
            if isinstance(call, ast.Call) and getattr(call.func, "attr", getattr(call.func, "id", "")) == "needs_cuda":
                args = [*call.args, *(k.value for k in call.keywords)]
                texts = [_text(a) for a in args[:2]]
                if all(texts) and len(texts) == 2:
                    out.append((texts[0], texts[1]))
    return out


def lesson_material(root: Path = ROOT) -> dict[str, dict]:
    """Per lesson stem: its title, its exercises (in the order the notebook asks them) and its CUDA cells."""
    out = {}
    for stem, title in _project.LESSONS.items():
        notebook = root / "lessons" / f"{stem}.ipynb"
        number = _MODULE.match(stem).group(1)
        module = root / "bigsmall_lab" / "exercises" / f"_lesson{number}.py"
        known = {e["name"]: e for e in exercises(module)} if module.exists() else {}
        called = lesson_checkers(notebook) if notebook.exists() else []
        out[stem] = {"title": title, "exercises": [known[n] for n in called if n in known],
                     "cuda": cuda_cells(notebook) if notebook.exists() else []}
    return out


# --- the guide ---------------------------------------------------------------------------------------------

def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n else "not sampled"


def _time(seconds: float) -> str:
    return f"{seconds:.0f} s ({seconds / 60:.1f} min)"


def timing_table(record: dict | None) -> str:
    """The measured table: one row a lesson, then the total; a sentence instead when nothing was measured."""
    if not record or not record.get("lessons"):
        return ("*Not measured on this machine yet: run `make workshop` (about as long as `make notebooks`), which "
                "writes `benchmarks/workshop.json` and this table.*")
    rows = ["| lesson | time | kernel's peak RAM (VmHWM) | peak RAM, kernel + its processes | processes | ran |",
            "|---|---:|---:|---:|---:|---|"]
    for r in record["lessons"]:
        title = _project.LESSONS.get(r["lesson"], r["lesson"])
        ran = "every cell" if not r.get("error") else f"stopped: {r['error']}"
        rows.append(f"| {r['lesson'][:3].rstrip('_')} {title} | {_time(r['seconds'])} | {_gib(r['kernel_peak_bytes'])} "
                    f"| {_gib(r['tree_peak_bytes'])} | {r['processes']} | {ran} |")
    total = sum(r["seconds"] for r in record["lessons"])
    peak = max(r["tree_peak_bytes"] for r in record["lessons"])
    rows.append(f"| **all {len(record['lessons'])} lessons** | **{_time(total)}** | | **{_gib(peak)}** (largest) | | |")
    head = (f"Measured by `make workshop` on {record['when']}: {record['banner']} (Python {record['python']}). "
            f"Time is the wall time of the whole notebook in a fresh kernel, the model conversions of a first run "
            f"included only if the cache was empty; RAM was sampled every {record['sample_seconds']} s.")
    return head + "\n\n" + "\n".join(rows)


def render(record: dict | None, material: dict[str, dict]) -> str:
    """docs/workshop.md from a timing record (None: not measured yet) and the lab's lesson material."""
    out = [
        "# Running a bigsmall_lab workshop",
        "",
        "<!-- Written by `make workshop` (tools/workshop.py) from benchmarks/workshop.json and the lab's own "
        "exercises: do not edit by hand. -->",
        "",
        "A guide for instructors: how long each lesson takes and how much memory it needs, what each exercise asks "
        "and the slips its checker recognises, what to say when a cell needs CUDA, how to run the room, and how to "
        "install without a network.",
        "",
        "## Time and memory per lesson",
        "",
        timing_table(record),
        "",
        "Plan for a room of laptops with at least the largest peak free, plus the browser. A lesson that starts "
        "processes (torchrun's ranks in lesson 06) counts more than one in the 'processes' column: its 'kernel + its "
        "processes' figure is the one to plan for. The "
        "first run of a lesson that uses the real model converts it once into the cache; run `bigsmall-lab check` "
        "(it loads the real model) on every machine before the day.",
        "",
        "## Exercises",
        "",
        "Each exercise asks for a prediction, then its checker compares. The expected value is computed by the lab "
        "on the learner's machine, so it is not printed here; the first wrong answer gets a hint, the second the "
        "answer. The checker names these slips when a learner's number matches one ('…' is a value the checker "
        "fills in):",
        "",
    ]
    for stem, lesson in material.items():
        if not lesson["exercises"]:
            continue
        out += [f"### {stem[:3].rstrip('_')} {lesson['title']}", ""]
        for ex in lesson["exercises"]:
            out.append(f"- **`{ex['name']}`**: {ex['asks']}")
            out += [f"  - {slip}" for slip in ex["slips"]]
        out.append("")
    out += [
        "## When a cell needs CUDA",
        "",
        "On a machine without a GPU such a cell prints one sentence, 'This cell needs a CUDA GPU (…); on this CPU "
        "…', and shows the plan or the expected bytes instead of failing. Say: *the cell shows what the GPU would "
        "do; the numbers beside it are the plan the GPU run is checked against. On Colab with a GPU runtime "
        "(Runtime > Change runtime type > T4) the same cell runs for real.* The cells:",
        "",
    ]
    cells = [(stem, what, instead) for stem, lesson in material.items() for what, instead in lesson["cuda"]]
    out += [f"- {stem[:3].rstrip('_')}: needs CUDA for *{what}*; on a CPU {instead}." for stem, what, instead in cells]
    if not cells:
        out.append("- (no lesson has such a cell)")
    out += [
        "",
        "## Running the room",
        "",
        "- **Laptops** (Linux or macOS, Python 3.11+): `make lab` from a clone installs from the lock into `.venv` "
        "and prints the JupyterLab URL; Windows: `python tools/install.py lab`. Ask everyone to run it, and "
        "`bigsmall-lab check`, before the day: the install downloads the whole lock, the CPU build of torch among "
        "it (or use the offline kit below).",
        f"- **Colab**: each lesson's badge in the README opens it; its setup cell installs the lab. A GPU "
        f"runtime makes the CUDA cells run. Lesson 01: {_project.colab_url('01_memory_maths')}",
        f"- **Binder** (CPU only, no account): {_project.binder_url('01_memory_maths')} builds the lock's environment "
        "(binder/); the first build takes several minutes, so open it once before the session.",
        "- Everyone on the same lesson: the exercises build on each lesson's earlier cells, so run a lesson top to "
        "bottom (Run > Run All Cells) when a kernel was restarted.",
        "",
        "## Offline kit",
        "",
        "For a room without a network, build the kit on a machine with one (same OS, CPU architecture and Python "
        "version as the laptops):",
        "",
        "```",
        "make wheelhouse WHEELHOUSE=/media/usb/wheelhouse",
        "```",
        "",
        "which puts a wheel of every package of the lock (the CPU build of torch, the real model's wheel, the build "
        "tools the lab's own install needs) in that folder (tools/wheelhouse.py). Copy it and a clone of this "
        "repository to a USB stick; on each laptop:",
        "",
        "```",
        "PIP_NO_INDEX=1 make lab WHEELHOUSE=/media/usb/wheelhouse",
        "```",
        "",
        "`PIP_NO_INDEX=1` keeps pip from asking the network at all; every package then comes from the stick.",
        "",
    ]
    return "\n".join(out)


def write_doc(record: dict | None) -> None:
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(render(record, lesson_material()))
    print(f"wrote {DOC.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("lessons", nargs="*", help="notebooks to measure (default: every lesson)")
    parser.add_argument("--doc", action="store_true", help="only write docs/workshop.md from the last record")
    args = parser.parse_args(argv)
    if args.doc:
        write_doc(json.loads(RECORD.read_text()) if RECORD.exists() else None)
        return 0
    paths = [Path(p) for p in args.lessons] or [ROOT / "lessons" / f"{stem}.ipynb" for stem in _project.LESSONS]
    record = measure(paths)
    write_doc(record)
    return 1 if any(r.get("error") for r in record["lessons"]) else 0


if __name__ == "__main__":
    sys.exit(main())
