"""Write what the CLI reads of the presets without torch: bigsmall_lab/data/presets.json and preset_facts.json.gz.

presets.json: each preset's exact parameter count (``bigsmall_lab.cli.preset_records()``, the zoo builds each
config on the meta device), so `bigsmall-lab presets` needs no torch; each record keeps the sha256 of the
config it was counted from, and the CLI counts afresh when one changed. tests/test_cli_fast.py fails when the
file is not what this script would write.

transformers_facts.json: what the locked transformers' quantized KV cache offers (backends, defaults), read by
``bigsmall_lab._compat`` while that version is installed.

preset_facts.json.gz: every number the advisor reads of a preset that depends on neither the machine nor the
context (``bigsmall_lab.zoo._facts.compute``: module bytes, module trees for placement, tensor-parallel ranks,
FLUX offloading), with the library versions they were computed with, so `bigsmall-lab fit <preset>` needs no
torch. tests/test_facts.py recomputes them. Run it after changing a config, the lock, or a planner the facts
come from (the facts are only used while the installed versions equal the ones recorded).

    python tools/presets_data.py            # both files
    python tools/presets_data.py --counts   # presets.json only
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bigsmall_lab import cli  # noqa: E402


def text() -> str:
    data = {"source": "bigsmall_lab.cli.preset_records(): zoo.count_parameters on the meta device, "
                      "written by tools/presets_data.py", "presets": cli.preset_records()}
    return json.dumps(data, indent=1) + "\n"


def write_facts() -> Path:
    import os
    import time

    from bigsmall_lab.zoo import _facts

    start = time.perf_counter()
    path = _facts.FACTS_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(_facts.file_bytes(_facts.file_data()))
    os.replace(tmp, path)
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size:,} bytes, {time.perf_counter() - start:.0f} s)")
    return path


def write_transformers_facts() -> Path:
    from bigsmall_lab import _compat

    path = _compat._TRANSFORMERS_FACTS
    data = {"source": "bigsmall_lab._compat.transformers_facts(), written by tools/presets_data.py",
            **_compat.transformers_facts()}
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")
    return path


if __name__ == "__main__":
    cli._PRESETS_FILE.write_text(text())
    print(f"wrote {cli._PRESETS_FILE.relative_to(ROOT)}")
    if "--counts" not in sys.argv[1:]:
        write_transformers_facts()
        write_facts()
