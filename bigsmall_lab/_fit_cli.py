"""``bigsmall-lab fit``: the advisor's ranked options as a table (or JSON), nothing computed here.

A preset on named GPUs (``--gpu``) plans from its facts (``bigsmall_lab.zoo._facts``) and imports no torch;
without ``--gpu`` the attached machine is asked (torch's CUDA), and a config.json is built on the meta device.

The table fits 100 columns: one row per option (the largest GPU's share against its capacity, what
spills to CPU RAM and disk, the measured KL and time ratio), then the top option's code and where its
costs were measured; when nothing fits, the smallest change that would.
"""

from __future__ import annotations

import argparse
import json

WIDTH = 100


def _gb(n: int) -> str:
    return f"{n / 1e9:.1f}" if n else "-"


def _row(rank: int, option) -> str:
    per = option.bytes_per_device
    gpus = [d for d in per if isinstance(d, int)]
    worst = max(gpus, key=lambda d: per[d] / max(option.capacity.get(d, 0), 1), default=None)
    gpu = f"{_gb(per[worst])}/{_gb(option.capacity.get(worst, 0))}" if worst is not None else "-"
    label = option.label if len(option.label) <= 49 else option.label[:48] + "~"
    time = f"{option.speed.time_ratio:.2f}" + ("?" if option.speed.unmeasured else "")
    return (f"{rank:>3} {'yes' if option.fits else 'no':>4}  {label:49s} {gpu:>11} {_gb(per.get('cpu', 0)):>6} "
            f"{_gb(per.get('disk', 0)):>6} {option.quality.kl_nats:>6.3f} {time:>6}")


def table(options, limit: int | None = None) -> str:
    head = (f"{'#':>3} {'fits':>4}  {'option':49s} {'GPU GB':>11} {'CPU GB':>6} {'disk':>6} {'KL':>6} "
            f"{'time x':>6}")
    shown = options if limit is None else options[:limit]
    lines = [head, "-" * len(head), *(_row(i + 1, o) for i, o in enumerate(shown))]
    if limit is not None and len(options) > limit:
        lines.append(f"... {len(options) - limit} more (--all shows them)")
    return "\n".join(lines)


def _wrap(text: str, indent: str = "  ") -> list[str]:
    import textwrap

    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=indent + "  ")


def _facts_ready(config: str) -> None:
    """A preset plans from its facts (no torch): shipped ones when the installed libraries are the ones they were
    computed with, else the ones computed once into the lab's cache folder (computed now when missing)."""
    from .zoo._configs import PRESETS

    name = str(config).strip().lower()
    if name in PRESETS:
        from .zoo import _facts_cache

        _facts_cache.ensure(name)


def run_fit(args: argparse.Namespace) -> int:
    _facts_ready(args.config)
    from . import advisor

    m = advisor.machine(args.gpu, cpu_ram=args.cpu_ram, disk=args.disk) if args.gpu is not None else \
        advisor.attached_machine() if args.cpu_ram is None and args.disk is None else \
        advisor.machine(advisor.attached_machine(), cpu_ram=args.cpu_ram, disk=args.disk)
    image_size = getattr(args, "image_size", 1024)
    options = advisor.fit(args.config, m, seq_len=args.seq_len, batch_size=args.batch_size, dtype=args.dtype,
                          image_size=image_size)
    change = None if any(o.fits for o in options) else advisor.smallest_change(
        args.config, m, seq_len=args.seq_len, batch_size=args.batch_size, dtype=args.dtype, image_size=image_size)
    if args.json:
        print(json.dumps({"model": args.config, "machine": m.label, "ram_source": m.ram_source, "seq_len": args.seq_len,
                          "batch_size": args.batch_size, "options": [o.as_dict() for o in options],
                          "smallest_change": None if change is None else
                          {"kind": change.kind, "text": change.text, "machine": change.machine.label,
                           "seq_len": change.seq_len}}, indent=1))
        return 0
    print(f"{args.config} on {m.label}, {args.seq_len:,} tokens x {args.batch_size}: {len(options)} options, "
          f"{sum(o.fits for o in options)} fit")
    if m.ram_source and args.cpu_ram is None:  # a default the learner did not type: say where it comes from
        for line in _wrap(f"CPU RAM {m.cpu_ram_bytes / 1e9:.1f} GB: {m.ram_source} (--cpu-ram to change)", ""):
            print(line)
    print(table(options, None if args.all else 12))
    print("GPU GB: the fullest GPU, used / what torch sees; KL: nats/token lost (measured on a small model);")
    print("time x: per token against bf16 on one GPU ('?': a part not timed by the lab, counted 1.0)")
    best = options[0]
    print()
    if change is not None:  # nothing fits: what would, and the option it makes fit
        for line in _wrap(f"Nothing fits. The smallest change: {change.text}", ""):
            print(line)
        best = change.option
        print()
    print(f"{'Top option' if best is options[0] else 'Then'}: {best.label}" + ("" if best.fits else " (does not fit)"))
    for part in best.quality.parts:
        top1 = f", top-1 agreement {part.top1:.1%}" if part.top1 is not None else ""
        on = f"on {part.model}; " if part.model else ""
        for line in _wrap(f"{part.what}: KL {part.value} nats/token{top1} ({on}{part.measured})"):
            print(line)
    for part in best.speed.parts:
        for line in _wrap(f"{part.what}: {part.value}x the time ({part.measured})"):
            print(line)
    for what in best.speed.unmeasured:
        for line in _wrap(f"{what}: counted 1.0x"):
            print(line)
    for note in best.notes:
        for line in _wrap(f"note: {note}"):
            print(line)
    print()
    print(best.code)
    if change is None and not best.fits:
        print("\nNothing fits, and no change the advisor tries (a named GPU, up to 8 GPUs, RAM, context) helps.")
    return 0
