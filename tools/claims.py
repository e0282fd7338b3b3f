"""Write docs/claims.md: each talk claim, the lesson cell that computes or measures it, the figure it produced.

Usage: python tools/claims.py   (reads the committed lessons; `make notebooks` runs it after re-executing them)
"""

from __future__ import annotations

from pathlib import Path

from bigsmall_lab._talk import claims_markdown

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    target = ROOT / "docs" / "claims.md"
    target.parent.mkdir(exist_ok=True)
    target.write_text(claims_markdown(ROOT / "lessons"))
    print(f"wrote {target.relative_to(ROOT)}")
