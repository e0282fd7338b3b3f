"""The ``bigsmall-lab`` command: start the lab, describe the machine, estimate a model's memory.

    bigsmall-lab lab [--port N] [--no-browser] [jupyter options...]
    bigsmall-lab info
    bigsmall-lab check [--short] [--json]
    bigsmall-lab presets [--json]
    bigsmall-lab estimate <preset|config.json> [--dtype D] [--quantization Q] [--seq-len N] [--batch-size N]
                          [--json] [--wide]
    bigsmall-lab fit <preset|config.json> [--gpu 2xL4] [--cpu-ram 64GB] [--disk 1TB] [--seq-len N]
                     [--batch-size N] [--image-size PX] [--dtype D] [--all] [--json]

The CLI imports planners and runners only, never widgets: a terminal needs no ipywidgets. Bad input
(the lab's :class:`~bigsmall_lab._errors.LabError`, a missing file or cache folder) is one sentence on
stderr and exit status 2, never a traceback. Start-up is light: ``--help``, ``lab`` and ``presets`` import
no torch (``presets`` reads counts the package computed, see :func:`preset_records`), nor does ``fit`` for a
preset on named GPUs (it plans from the preset's shipped facts, ``bigsmall_lab.zoo._facts``); each command
imports what it needs inside its function. Tables fit 100 columns; ``--json`` prints any table as data.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["lessons_dir", "main"]


def lessons_dir() -> Path:
    """The lessons folder: beside the package in a clone, else ./lessons, else the current folder."""
    for candidate in (Path(__file__).resolve().parent.parent / "lessons", Path.cwd() / "lessons"):
        if candidate.is_dir():
            return candidate
    return Path.cwd()


def _port(text: str) -> int:
    """argparse type of --port: a TCP port Jupyter can listen on (argparse turns the error into exit 2)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {text!r} is not a whole number; use 1 to 65535, e.g. 8888") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is out of range; use 1 to 65535, e.g. 8888")
    return port


def _lab_command(args: argparse.Namespace, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "jupyter", "lab", f"--ServerApp.root_dir={args.root or lessons_dir()}",
           f"--ServerApp.ip={args.ip}"]
    if args.port is not None:
        cmd.append(f"--ServerApp.port={args.port}")
    if args.no_browser:
        cmd.append("--no-browser")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # containers (Binder, CI) often run as root
    return cmd + extra


def _exposure(ip: str) -> str | None:
    """A warning when ``ip`` lets other machines reach the lab (its token is then all that guards it)."""
    import ipaddress

    try:
        address = ipaddress.ip_address(ip.strip("[]"))
    except ValueError:  # a host name: it may resolve to anything
        return (f"--ip {ip} is a host name, not this machine's loopback address; anyone who can reach it and has "
                "the token can run code here. Use the default 127.0.0.1 unless you mean to share the lab")
    if address.is_loopback:
        return None
    who = "every network interface" if address.is_unspecified else f"the address {ip}"
    return (f"--ip {ip} binds {who}: other machines on the network can reach this JupyterLab, and its token is "
            "all that keeps them from running code here. Use the default 127.0.0.1 unless you mean to share the lab")


def _lab(args: argparse.Namespace, extra: list[str]) -> int:
    cmd = _lab_command(args, extra)
    warning = _exposure(args.ip)
    if warning:
        print(f"bigsmall-lab: warning: {warning}.", file=sys.stderr, flush=True)
    print(f"bigsmall-lab: starting JupyterLab on {args.root or lessons_dir()} "
          f"(bound to {args.ip}; the URL with its token follows)", flush=True)
    os.execv(cmd[0], cmd)  # replaces this process: Ctrl-C and signals reach Jupyter directly
    return 0  # pragma: no cover


def _info(args: argparse.Namespace, extra: list[str]) -> int:
    from .hardware import banner

    print(banner())
    return 0


def _check(args: argparse.Namespace, extra: list[str]) -> int:
    import json

    from . import check

    items = check.run(short=args.short)
    print(json.dumps(check.as_json(items), indent=1) if args.json else check.report(items, short=args.short))
    return 0 if check.ready(items) else 1


_PRESETS_FILE = Path(__file__).resolve().parent / "data" / "presets.json"
_CONFIGS = Path(__file__).resolve().parent / "zoo" / "configs"
WIDTH = 100  # columns every table of the CLI fits (``--wide`` where a command offers more)


def _config_hash(name: str) -> str:
    import hashlib

    return hashlib.sha256((_CONFIGS / f"{name}.json").read_bytes()).hexdigest()


def preset_records() -> dict[str, dict]:
    """Each preset's source and exact parameter count, built on the meta device (imports torch).

    ``tools/presets_data.py`` writes these to ``bigsmall_lab/data/presets.json`` with each config's sha256, so
    that ``bigsmall-lab presets`` prints them without torch; tests/test_cli_fast.py checks the file is current.
    """
    from .zoo import PRESETS, count_parameters

    return {name: {"hub_id": p.hub_id, "config_file": p.config_file, "published": p.published,
                   "parameters": count_parameters(name), "config_sha256": _config_hash(name)}
            for name, p in PRESETS.items()}


def _preset_rows() -> dict[str, dict]:
    """The shipped records when they cover every shipped config and each still hashes to what it was counted
    from, else counted now."""
    import json

    try:
        records = json.loads(_PRESETS_FILE.read_text())["presets"]
        same = {p.stem for p in _CONFIGS.glob("*.json")} == set(records)
        if same and all(_config_hash(name) == r["config_sha256"] for name, r in records.items()):
            return records
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return preset_records()


def _presets(args: argparse.Namespace, extra: list[str]) -> int:
    records = _preset_rows()
    if args.json:
        import json

        print(json.dumps([{"name": name, **{k: v for k, v in r.items() if k != "config_sha256"}}
                          for name, r in records.items()], indent=1))
        return 0
    name_w = max(map(len, records))
    count_w = max(len(f"{r['parameters']:,d}") for r in records.values())
    for name, r in records.items():
        print(f"{name:{name_w}s}  {r['parameters']:>{count_w},d}  {r['hub_id']}/{r['config_file']}")
    print(f"{'':{name_w}s}  {'parameters':>{count_w}s}  (exact, on the meta device)  hub repository/config file")
    return 0


def _estimate(args: argparse.Namespace, extra: list[str]) -> int:
    from ._estimate_cli import run_estimate

    args.dtype_given = args.dtype is not None
    args.dtype = args.dtype or "bfloat16"
    return run_estimate(args)


def _fit(args: argparse.Namespace, extra: list[str]) -> int:
    from ._fit_cli import run_fit

    return run_fit(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bigsmall-lab", description="Big parameters, small GPUs: the lab.")
    sub = parser.add_subparsers(dest="command", required=True)

    lab = sub.add_parser("lab", help="start JupyterLab on the lessons (other options go to jupyter lab)")
    lab.add_argument("--port", type=_port, default=None, help="port to serve on (default: Jupyter's, 8888 or next free)")
    lab.add_argument("--no-browser", action="store_true", help="do not open a browser; just print the URL")
    lab.add_argument("--ip", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    lab.add_argument("--root", default=None, help="folder to serve (default: the lessons)")
    lab.set_defaults(func=_lab, passthrough=True)

    sub.add_parser("info", help="print the hardware banner").set_defaults(func=_info)
    chk = sub.add_parser("check", help="preflight: Python, torch, versions against the lock, the real model, "
                                       "cache, RAM, disk; ends in 'ready' or what to fix")
    chk.add_argument("--short", action="store_true", help="skip loading the real model (about a second)")
    chk.add_argument("--json", action="store_true", help="print the items as JSON")
    chk.set_defaults(func=_check)
    pre = sub.add_parser("presets", help="list the shipped model configs with parameter counts")
    pre.add_argument("--json", action="store_true", help="print the presets as JSON")
    pre.set_defaults(func=_presets)

    est = sub.add_parser("estimate", help="memory to load and run a model, and which GPUs it fits")
    est.add_argument("config", help="a preset name (see 'bigsmall-lab presets') or a path to a config.json")
    est.add_argument("--dtype", default=None,
                     help="float32, float16, bfloat16, float8_e4m3fn, float8_e5m2 (default: a row per common format)")
    est.add_argument("--quantization", default=None, help="int8, nf4, fp4 or nf4-double (bitsandbytes)")
    est.add_argument("--seq-len", type=int, default=4096, help="tokens in the KV cache (default 4096)")
    est.add_argument("--batch-size", type=int, default=1, help="sequences at once (default 1)")
    est.add_argument("--json", action="store_true", help="print the numbers as JSON")
    est.add_argument("--wide", action="store_true",
                     help=f"one table with a column per GPU (about 150 columns; default: fits {WIDTH})")
    est.set_defaults(func=_estimate)

    fit = sub.add_parser("fit", help="every way to run a model on some GPUs, ranked, with its cost and code")
    fit.add_argument("config", help="a preset name (see 'bigsmall-lab presets') or a path to a config.json")
    fit.add_argument("--gpu", default=None, help="'T4', '2xL4', '8xH100', 'A100 80GB' or a size like '24GB' "
                                                 "(default: this machine's GPUs and RAM)")
    fit.add_argument("--cpu-ram", default=None, help="CPU RAM weights may spill to, e.g. '64GB'; 0 for none (default "
                                                     "with --gpu: the named GPUs' usual host, e.g. a free Colab T4's "
                                                     "12.7 GB, see advisor.HOST_RAM; a size like '24GB': none)")
    fit.add_argument("--disk", default=None, help="disk weights may spill to, e.g. '1TB' (default: none)")
    fit.add_argument("--seq-len", type=int, default=4096, help="tokens of context (default 4096)")
    fit.add_argument("--batch-size", type=int, default=1, help="sequences at once (default 1)")
    fit.add_argument("--image-size", type=int, default=1024, help="pixels a side a diffusion model generates "
                                                                  "(default 1024; its activations depend on it)")
    fit.add_argument("--dtype", default="bfloat16", help="bfloat16 or float16: the weights' 16-bit format")
    fit.add_argument("--all", action="store_true", help="list every option (default: the first 12)")
    fit.add_argument("--json", action="store_true", help="print the options as JSON")
    fit.set_defaults(func=_fit)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from ._errors import LabError

    try:
        return args.func(args, extra)
    except BrokenPipeError:
        # `bigsmall-lab presets | head -1`: the reader left; say nothing more (and nothing at exit either).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (LabError, OSError) as err:  # bad input, a missing file or cache folder: one sentence
        print(f"bigsmall-lab {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
