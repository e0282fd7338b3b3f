"""Start a torchrun job, show its progress, and stop every process of it however it ends.

The launcher of :func:`bigsmall_lab.parallel.run_tp` (its public home: import ``TPRunError`` from
there). A runner: processes, ports, signals and a run folder. The job runs in a session of its own so
it can be signalled without touching this process; a rank that fails writes ``rank{r}.error`` and the
launcher names it; a job past its timeout is stopped (SIGTERM, then SIGKILL) and :class:`TPRunError`
says so in one sentence. While it runs, one line shows the elapsed seconds and each rank as it finishes
(:class:`bigsmall_lab._progress.Progress`): a launch takes tens of seconds on a CPU.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from ._progress import Progress

__all__ = ["TPRunError"]

_MAX_ERROR_CHARS = 220
# Names a launch from inside another torchrun job would inherit and must not.
_INHERITED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "MASTER_ADDR",
              "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_MAX_RESTARTS")


class TPRunError(RuntimeError):
    """A tensor-parallel run failed or ran out of time; every one of its processes has been stopped."""

    __module__ = "bigsmall_lab.parallel"  # its public home: tracebacks and docs name parallel.TPRunError


def _free_port() -> int:
    # Port 0 asks the kernel for a free one; torchrun binds it a moment later.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env(device: str, run_dir: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED}
    if run_dir is not None:
        # torchelastic makes its own torchelastic_* folders in the temp folder and leaves them behind: put them in
        # the run's folder, which is removed after the run however it ends.
        tmp = run_dir / "tmp"
        tmp.mkdir(exist_ok=True)
        env["TMPDIR"] = env["TMP"] = env["TEMP"] = str(tmp)
    package_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    env["HF_HUB_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONWARNINGS"] = "ignore"
    if device == "cpu":
        # One thread per rank: N ranks on N cores, and no rank steals another's core.
        env["OMP_NUM_THREADS"] = "1"
        env["CUDA_VISIBLE_DEVICES"] = ""  # transformers picks the accelerator it sees: keep the run on gloo
    return env


def _launch(command: list[str], run_dir: Path, nproc: int, device: str, timeout_s: float, label: str) -> None:
    import psutil

    log_path = run_dir / "torchrun.log"
    with open(log_path, "wb") as log:
        # A session of its own: the whole run can be signalled without touching this process.
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=_child_env(device, run_dir), cwd=str(run_dir), start_new_session=True)
    family: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + timeout_s
    timed_out = False
    finished: set[int] = set()
    with Progress(f"tensor-parallel run of {label}", total=nproc, unit="rank") as progress:
        try:
            while proc.poll() is None:
                # torchrun starts each worker in a session of its own: remember them to stop them by pid.
                try:
                    for child in psutil.Process(proc.pid).children(recursive=True):
                        family.setdefault(child.pid, child)
                except psutil.Error:
                    pass
                _show(progress, run_dir, nproc, finished, started=len(family))
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(0.1)
        finally:
            _stop(proc, family)
        _show(progress, run_dir, nproc, finished, started=nproc)  # ranks that finished in the last moment
        if timed_out:
            raise TPRunError(f"the tensor-parallel run of {label} on {nproc} processes did not finish within "
                             f"{timeout_s:g} s and every process of it was stopped; {_last_error(run_dir, log_path)}")
        if proc.returncode != 0 or len(finished) < nproc:
            raise TPRunError(f"the tensor-parallel run of {label} on {nproc} processes failed "
                             f"{_last_error(run_dir, log_path)}; every process of it was stopped")


def _show(progress: Progress, run_dir: Path, nproc: int, finished: set[int], started: int) -> None:
    """Count each rank whose result file has appeared; until one has, say what the ranks are doing."""
    new = [r for r in range(nproc) if r not in finished and (run_dir / f"rank{r}.json").is_file()]
    for rank in new:
        finished.add(rank)
        progress.advance(detail=f"rank {rank} done")
    if new or finished:
        return
    if started < nproc:  # torchrun itself, then one worker per rank
        progress.note(f"starting {nproc} processes")
    else:
        progress.note(f"{nproc} processes: importing, loading each slice, generating")


def _stop(proc: subprocess.Popen, family: dict, grace_s: float = 3.0) -> None:
    """Stop torchrun and every worker it started: SIGTERM to all at once, SIGKILL to what is left after
    ``grace_s``. Each process is addressed by its pid (psutil checks it is still the same process)."""
    import psutil

    try:  # a last look: a worker started since the launcher's previous one
        for child in psutil.Process(proc.pid).children(recursive=True):
            family.setdefault(child.pid, child)
    except psutil.Error:
        pass
    members = [p for p in family.values() if _alive(p)]
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # torchrun's own session: torchrun and anything it left in it
        except OSError:
            pass
    for p in members:
        try:
            p.terminate()
        except psutil.Error:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (proc.poll() is None or any(_alive(p) for p in members)):
        time.sleep(0.05)
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    for p in members:
        if _alive(p):
            try:
                p.kill()
            except psutil.Error:
                pass
    proc.wait()
    psutil.wait_procs(members, timeout=grace_s)


def _alive(p) -> bool:
    import psutil

    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _last_error(run_dir: Path, log_path: Path) -> str:
    """'on rank R: <the exception line> (at file:line)' of the first rank that wrote an error, else the log's tail."""
    errors = sorted(run_dir.glob("rank*.error"), key=lambda p: p.stat().st_mtime)
    if errors:
        rank = errors[0].stem.removeprefix("rank")
        lines = [l.strip() for l in errors[0].read_text(errors="replace").splitlines() if l.strip()]
        where = next((l for l in reversed(lines) if l.startswith("File ")), "")
        where = where.replace(str(Path(__file__).parent) + os.sep, "") if where else ""
        text = lines[-1] if lines else "no message"
        return f"on rank {rank}: {_cut(text)}" + (f" ({_cut(where, 120)})" if where else "")
    lines = [l.strip() for l in log_path.read_text(errors="replace").splitlines() if l.strip()] \
        if log_path.is_file() else []
    useful = [l for l in lines if "Error" in l or "error" in l] or lines
    return f"(last output: {_cut(useful[-1])})" if useful else "(no output)"


def _cut(text: str, limit: int = _MAX_ERROR_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."
