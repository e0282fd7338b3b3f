"""Drive JupyterLab in Debian's Chromium with Playwright: the machinery behind ``test_browser.py``.

A :class:`LabServer` serves a scratch copy of ``lessons/`` (outputs stripped, so every plot on the
page is drawn by this run and the committed notebooks are never touched) through the learner's own
command, ``bigsmall-lab lab``, with every Jupyter folder under a scratch directory. The functions
below open a notebook, run all its cells through the menu, and read back what the page shows.

Nothing here downloads a browser: without /usr/bin/chromium (apt install chromium) the tests skip
for a user, and fail in CI (``CI=true``), where a missing browser means the browser tests silently
stopped running.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

REPO = Path(__file__).resolve().parent.parent
LESSONS = REPO / "lessons"
SCREENSHOTS = REPO / "screenshots"

#: Chromium flags that work on the lab's build machines (see FACTS.md "Install").
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}  # a laptop screen
# Full-notebook screenshots stop at this height: a runaway output would otherwise make a huge image.
MAX_SHOT_PX = 16_000

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

# JupyterLab user settings for the scratch config folder:
# - no "Would you like to get notified about official Jupyter news?" toast over the screenshots;
# - every cell stays in the DOM (JupyterLab otherwise skips drawing cells out of view), so a
#   full-length screenshot shows them all and every plot below the fold is really drawn;
# - no blank screen of "scroll past end" space under the last cell in that screenshot.
_LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                         "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none",
                                                                   "scrollPastEnd": False},
}


from ._require import in_ci, missing  # noqa: E402,F401  (the browser tests' skip-or-fail rule is everyone's)


def chromium_path() -> str | None:
    """Debian's Chromium, or None; never a downloaded one."""
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def browser_env(scratch: Path) -> dict[str, str]:
    """Chromium keeps crash-report settings and GTK's dconf cache under ~/.config and ~/.cache even
    with a fresh profile: point both at the scratch folder."""
    env = dict(os.environ)
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        folder = scratch / name.lower()
        folder.mkdir(parents=True, exist_ok=True)
        env[name] = str(folder)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def strip_outputs(path: Path) -> None:
    """Remove outputs, execution counts and stored widget state: the run starts from bare code."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)


def committed_plot_count(path: Path) -> int:
    """Plots the committed notebook shows: plotly outputs plus FigureWidget outputs."""
    nb = nbformat.read(path, as_version=4)
    count = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            text = data.get("text/plain", "")
            text = "".join(text) if isinstance(text, list) else text
            if PLOTLY_MIME in data or (WIDGET_MIME in data and text.startswith("FigureWidget")):
                count += 1
    return count


@dataclass(frozen=True)
class CellError:
    cell: int  # index in the notebook, markdown cells included
    ename: str
    evalue: str

    def __str__(self) -> str:
        return f"cell {self.cell}: {self.ename}: {self.evalue}"


def saved_run(path: Path) -> tuple[list[CellError], list[int]]:
    """The error outputs of the saved notebook, and the indices of code cells that never ran."""
    nb = nbformat.read(path, as_version=4)
    errors, not_run = [], []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.execution_count is None and cell.source.strip():
            not_run.append(i)
        errors += [CellError(i, o.get("ename", "?"), o.get("evalue", "")) for o in cell.outputs
                   if o.output_type == "error"]
    return errors, not_run


class LabServer:
    """``bigsmall-lab lab`` on a free port, serving a copy of ``lessons/`` with scratch Jupyter folders.

    ``root`` is the served copy; write more notebooks into it at any time.
    """

    def __init__(self, scratch: Path, lessons: Path = LESSONS) -> None:
        self.scratch = scratch
        self.root = scratch / "lessons"
        self.lessons = lessons
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.log_path = scratch / "jupyter.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, notebook: str) -> str:
        # ?reset: an empty workspace, so no tab from an earlier session reopens beside the notebook
        return f"http://127.0.0.1:{self.port}/lab/tree/{notebook}?reset&token={self.token}"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        dirs = {name: self.scratch / "jupyter" / folder for name, folder in [
            ("JUPYTER_CONFIG_DIR", "config"), ("JUPYTER_DATA_DIR", "data"),
            ("JUPYTER_RUNTIME_DIR", "runtime"), ("IPYTHONDIR", "ipython")]}
        for name, folder in dirs.items():
            folder.mkdir(parents=True, exist_ok=True)
            env[name] = str(folder)
        env["JUPYTER_PLATFORM_DIRS"] = "1"
        # jupyter_lsp runs `npm prefix --global`, which writes a log under ~/.npm otherwise
        env["npm_config_cache"] = str(self.scratch / "npm")
        env.pop("JUPYTERLAB_SETTINGS_DIR", None)  # user settings then live under JUPYTER_CONFIG_DIR
        env.pop("JUPYTERLAB_WORKSPACES_DIR", None)
        for rel, settings in _LAB_SETTINGS.items():
            target = dirs["JUPYTER_CONFIG_DIR"] / "lab" / "user-settings" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(settings))
        return env

    def start(self, timeout_s: float = 90) -> None:
        if self.lessons.is_dir():
            shutil.copytree(self.lessons, self.root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
        else:
            self.root.mkdir(parents=True)
        for nb in self.root.rglob("*.ipynb"):
            strip_outputs(nb)
        script = Path(sys.executable).with_name("bigsmall-lab")
        cmd = [str(script) if script.exists() else shutil.which("bigsmall-lab") or "bigsmall-lab",
               "lab", "--no-browser", "--port", str(self.port), "--root", str(self.root),
               f"--IdentityProvider.token={self.token}",
               "--ServerApp.port_retries=0",  # a taken port fails loudly instead of moving elsewhere
               "--LabApp.news_url=None"]
        log = self.log_path.open("wb")
        # A session of its own: teardown signals Jupyter and the kernels it started, nothing else.
        self.proc = subprocess.Popen(cmd, env=self._env(), cwd=self.scratch, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        status = f"http://127.0.0.1:{self.port}/api/status?token={self.token}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bigsmall-lab lab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(status, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.25)
        raise RuntimeError(f"JupyterLab did not answer on port {self.port} within {timeout_s:.0f} s:\n"
                           f"{self.log_tail()}")

    def _api(self, method: str, path: str) -> Any:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/api/{path}", method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
        return json.loads(body) if body else None

    def shutdown_kernels(self) -> None:
        """Shut down every kernel the server runs (the notebooks' tabs may be closed already)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        for kernel in self._api("GET", "kernels"):
            self._api("DELETE", f"kernels/{kernel['id']}")

    def log_tail(self, n_chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # start_new_session: the server leads its own process group
        try:
            os.killpg(pgid, signal.SIGTERM)  # Jupyter shuts its kernels down on SIGTERM
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass
        try:  # a kernel that outlived its server
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> LabServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# --- one notebook in the page ---------------------------------------------------------------

KERNEL_STATUS = "#jp-main-statusbar .jp-StatusBar-TextItem[title^='Change kernel']"
CODE_PROMPTS = ".jp-Notebook .jp-CodeCell .jp-InputArea-prompt"
# An error output and a stderr stream (warnings) render alike in JupyterLab 4.6: both are
# `.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]` with no class to tell them
# apart. Errors are therefore read exactly from the saved notebook (output_type "error"); this
# selector only collects the text a learner would see, for the failure message.
STDERR_OUTPUTS = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
PLOTS = ".jp-Notebook .js-plotly-plot"

# Per plotly figure on the page: is there an SVG with a size, and marks drawn by its traces?
# Scatter/bar/pie traces draw <path d=...> inside `g.trace`; heatmaps draw an <image> in `g.hm`.
_PLOT_REPORT_JS = """
els => els.map(gd => {
  const svg = gd.querySelector('.main-svg');
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  const paths = [...gd.querySelectorAll('.trace path')].filter(p => (p.getAttribute('d') || '').length > 4);
  const images = gd.querySelectorAll('g.hm image, .imagelayer image, .trace image');
  const title = gd.querySelector('.gtitle');
  return {title: title ? title.textContent : '', svg: Boolean(svg), width: box.width, height: box.height,
          traces: gd.querySelectorAll('.trace, g.hm').length, marks: paths.length + images.length};
})
"""


def wait_kernel_idle(page: Any, timeout_s: float = 120) -> None:
    """Until the status bar says '<kernel> | Idle' (the toolbar circle says idle before it connects)."""
    from playwright.sync_api import expect

    expect(page.locator(KERNEL_STATUS)).to_have_text(re.compile(r"\|\s*Idle\s*$"), timeout=timeout_s * 1000)


def kernel_status(page: Any) -> str:
    status = page.locator(KERNEL_STATUS)
    return status.first.inner_text() if status.count() else "no kernel status in the status bar"


def prompts(page: Any) -> list[str]:
    """The code cells' prompts: '[ ]:' not run, '[*]:' queued or running, '[3]:' done."""
    return [t.strip() for t in page.locator(CODE_PROMPTS).all_inner_texts()]


def open_notebook(page: Any, url: str) -> None:
    page.goto(url)
    page.locator(".jp-NotebookPanel .jp-Notebook").first.wait_for(timeout=60_000)
    wait_kernel_idle(page)
    # Close the file browser: a learner reading a lesson gives the notebook the whole width.
    left = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if left.count():
        left.first.click()


def run_all(page: Any, timeout_s: float) -> None:
    """Run > Run All Cells, then wait until no cell is queued or running ('[*]') and the kernel is idle."""
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    # The outputs were stripped, so every prompt starts as '[ ]'; the run is over when none shows
    # '[*]' and at least one shows a number (a failing cell un-queues the ones after it).
    page.wait_for_function(
        """sel => { const t = [...document.querySelectorAll(sel)].map(e => e.textContent);
                    return t.length > 0 && !t.some(x => x.includes('*')) && t.some(x => /\\[\\d+\\]/.test(x)); }""",
        arg=CODE_PROMPTS, timeout=timeout_s * 1000, polling=500)
    wait_kernel_idle(page, timeout_s=60)


def save(page: Any) -> None:
    """The notebook toolbar's Save button, then wait until the tab is no longer marked dirty."""
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-NotebookPanel-toolbar "
                 "[data-jp-item-name='save'] jp-button").click()
    page.wait_for_selector("#jp-main-dock-panel .lm-TabBar-tab.lm-mod-current:not(.jp-mod-dirty)",
                           timeout=30_000)


def plot_report(page: Any) -> list[dict[str, Any]]:
    return page.locator(PLOTS).evaluate_all(_PLOT_REPORT_JS)


def wait_plots_drawn(page: Any, at_least: int, timeout_s: float = 30) -> list[dict[str, Any]]:
    """Plotly draws after the output arrives: wait until ``at_least`` plots have marks, then report all."""
    deadline = time.monotonic() + timeout_s
    while True:
        report = plot_report(page)
        drawn = [p for p in report if p["svg"] and p["marks"] > 0 and p["width"] > 0]
        if (len(drawn) >= at_least and len(drawn) == len(report)) or time.monotonic() > deadline:
            return report
        page.wait_for_timeout(500)


def traceback_texts(page: Any) -> list[str]:
    """stderr outputs that look like a traceback, as the learner sees them (for messages only)."""
    texts = page.locator(STDERR_OUTPUTS).all_inner_texts()
    return [t[-1500:] for t in texts if "Traceback" in t or re.search(r"^\w+(Error|Exception)\b", t, re.M)]


def full_screenshot(page: Any, path: Path) -> None:
    """The whole notebook, not just the window: grow the viewport to the notebook's length, shoot, restore."""
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = page.evaluate("""() => {
        const s = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer')
               || document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
        if (!s) return 0;
        s.scrollTop = 0;  // Run All leaves the view at the last cell
        return Math.max(0, s.scrollHeight - s.clientHeight); }""")
    size = page.viewport_size
    height = min(size["height"] + extra + 40, MAX_SHOT_PX)
    try:
        page.set_viewport_size({"width": size["width"], "height": height})
        page.wait_for_timeout(800)  # Lumino re-lays out on resize; plotly keeps its width
        page.screenshot(path=str(path))
    finally:
        page.set_viewport_size(size)
