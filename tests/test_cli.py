"""The bigsmall-lab command: info, presets, and `lab` serving the lessons (what `make lab` runs)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from bigsmall_lab import cli

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("bigsmall-lab", path=str(Path(sys.executable).parent))
    assert exe, "the console script bigsmall-lab is installed with the package"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def test_info_prints_the_banner():
    out = run_cli("info")
    assert out.returncode == 0
    assert out.stdout.startswith("bigsmall_lab on ") and "torch" in out.stdout


def test_presets_lists_counts():
    out = run_cli("presets")
    assert out.returncode == 0
    assert "llama-3.1-8b" in out.stdout and "8,030,261,248" in out.stdout


def test_presets_into_a_closed_pipe_is_quiet():
    # `bigsmall-lab presets | head -1`: the reader leaves early; no BrokenPipeError traceback follows.
    # `true` leaves before the command has even imported torch, so every write meets a closed pipe.
    exe = shutil.which("bigsmall-lab", path=str(Path(sys.executable).parent))
    out = subprocess.run(f"'{exe}' presets | true", shell=True, capture_output=True, text=True, timeout=120)
    assert out.stderr == "", out.stderr
    head = subprocess.run(f"'{exe}' presets | head -1", shell=True, capture_output=True, text=True, timeout=120)
    assert head.stdout.startswith("llama-3.1-8b") and head.stdout.count("\n") == 1 and head.stderr == ""


def test_lab_port_must_be_a_port():
    for good in ("1", "8888", "65535"):
        args, _ = cli._parser().parse_known_args(["lab", "--port", good])
        assert args.port == int(good)
    # out-of-range and non-numeric ports: see tests/test_bad_input.py (exit 2, one sentence)


def test_lab_command_binds_localhost_and_serves_the_lessons_folder():
    args, extra = cli._parser().parse_known_args(["lab", "--port", "9999", "--no-browser", "--foo=1"])
    cmd = cli._lab_command(args, extra)
    assert "--ServerApp.ip=127.0.0.1" in cmd and "--ServerApp.port=9999" in cmd and "--no-browser" in cmd
    assert f"--ServerApp.root_dir={ROOT / 'lessons'}" in cmd and cmd[-1] == "--foo=1"


def test_unknown_arguments_of_other_commands_are_refused():
    out = run_cli("info", "--bogus")
    assert out.returncode == 2 and "unrecognized arguments: --bogus" in out.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scratch_jupyter_env(tmp: Path) -> dict:
    env = dict(os.environ)
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        env[var] = str(tmp / var.lower())
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    return env


@pytest.mark.slow
def test_make_lab_serves_the_lesson_list(tmp_path):
    """`bigsmall-lab lab` (what `make lab` ends with) on a free port answers with the lessons."""
    port, token = free_port(), "bigsmall-test-token"
    exe = shutil.which("bigsmall-lab", path=str(Path(sys.executable).parent))
    proc = subprocess.Popen([exe, "lab", "--no-browser", "--port", str(port), f"--IdentityProvider.token={token}"],
                            env=scratch_jupyter_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        url = f"http://127.0.0.1:{port}/api/contents?token={token}"
        listing, deadline = None, time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    listing = json.load(resp)
                break
            except OSError:
                time.sleep(0.5)
        assert listing is not None, f"JupyterLab did not answer on port {port}"
        names = {item["name"] for item in listing["content"]}
        lessons = {p.name for p in (ROOT / "lessons").glob("*.ipynb")}
        assert lessons and lessons <= names
        with pytest.raises(urllib.error.HTTPError):  # the token is required
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents", timeout=2)
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert "starting JupyterLab" in out
