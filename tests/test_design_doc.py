"""docs/design.md stays true to the code: its error table is the code's table, and every section the
code and docs cite by name is there. (Its config table is generated: test_config checks that.)"""

from __future__ import annotations

import re

from conftest import ROOT

from server.errors import ERRORS

DESIGN = (ROOT / "docs" / "design.md").read_text()


def _error_rows() -> dict[str, tuple[str, str]]:
    section = DESIGN.split("## Errors: contract", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


def test_the_error_table_is_the_codes_table() -> None:
    rows = _error_rows()
    assert set(rows) == set(ERRORS), set(rows) ^ set(ERRORS)
    for code, spec in ERRORS.items():
        http, grpc_status = rows[code]
        assert grpc_status == spec.grpc_status.name, code
        if http != "–":  # "–": no HTTP route answers it (a live-stream-only code)
            assert int(http.split()[0]) == spec.http_status, code


def test_every_cited_section_exists() -> None:
    paths = [ROOT / "README.md", ROOT / "pyproject.toml"]
    for folder in ("server", "client", "gateway", "protos", "tests", "docs", "scripts", "bench", "training", "cli"):
        paths += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".proto")]
    cited = set()
    for path in paths:
        for match in re.finditer(r'docs/design\.md, "([^"]+)"', path.read_text(errors="replace")):
            cited.add((match.group(1), str(path.relative_to(ROOT))))
    assert len(cited) >= 8, cited
    text = " ".join(DESIGN.split())
    for section, name in cited:  # a citation may wrap across lines
        assert " ".join(section.split()) in text, f"{name} cites a section docs/design.md does not have: {section!r}"
