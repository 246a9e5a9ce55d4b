"""Regenerate the config reference in docs/operations.md and docs/design.md from the settings table
(hushwire.settings, protos/hushwire/settings.py).

    python scripts/gen_docs.py           # rewrite the sections in place
    python scripts/gen_docs.py --check   # exit 1 if a file is out of date (the test suite does this)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "docs" / "operations.md", ROOT / "docs" / "design.md")
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
    stale = []
    for doc in DOCS:
        text = doc.read_text()
        new = render(text)
        if new != text:
            stale.append(doc)
            if not args.check:
                doc.write_text(new)
    if args.check and stale:
        print(f"{', '.join(map(str, stale))} out of date: run python scripts/gen_docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
