"""Write bigsmall_lab/data/presets.json: each preset's exact parameter count, so `bigsmall-lab presets` needs no torch.

The counts come from ``bigsmall_lab.cli.preset_records()`` (the zoo builds each config on the meta device);
each record keeps the sha256 of the config it was counted from, and the CLI counts afresh when one changed.
tests/test_cli_fast.py fails when the file is not what this script would write.

    python tools/presets_data.py
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


if __name__ == "__main__":
    cli._PRESETS_FILE.write_text(text())
    print(f"wrote {cli._PRESETS_FILE.relative_to(ROOT)}")
