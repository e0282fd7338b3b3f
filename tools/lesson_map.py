"""Write the README's map of the lab (each lesson's planners, runners, views, exercises and talk claims)
from bigsmall_lab/_lessons.py, between the two marker lines of the section "For developers: the map of the package".

Usage: python tools/lesson_map.py [--check]   (--check writes nothing and exits 1 when the README is stale;
`make notebooks` runs it, tests/test_lesson_map.py runs --check)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's package, even uninstalled

from bigsmall_lab._lessons import map_markdown  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
START, END = "<!-- lesson-map: start (written by tools/lesson_map.py) -->", "<!-- lesson-map: end -->"


def with_map(text: str) -> str:
    """``text`` with the part between the markers replaced by the map; ValueError when a marker is missing."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"README.md needs one {START!r} line and, after it, one {END!r} line")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{map_markdown()}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the README's map is stale; write nothing")
    args = parser.parse_args(argv)
    text = README.read_text()
    new = with_map(text)
    if args.check:
        if new != text:
            print("README.md's map of the lab is stale: run python tools/lesson_map.py")
            return 1
        print("README.md's map of the lab is current")
        return 0
    if new != text:
        README.write_text(new)
    print(f"wrote the map of the lab in {README.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
