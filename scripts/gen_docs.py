"""Regenerate the config reference in docs/operations.md from the settings table (hushwire.settings,
protos/hushwire/settings.py).

    python scripts/gen_docs.py           # rewrite the section in place
    python scripts/gen_docs.py --check   # exit 1 if the file is out of date (the test suite does this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "operations.md"
START, END = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->\n"


def render(text: str) -> str:
    sys.path.insert(0, str(ROOT / "protos"))
    from hushwire.settings import reference_table

    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return head + START + reference_table() + END + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    text = DOC.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print(f"{DOC} is out of date: run python scripts/gen_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
