"""The packages' import rules, checked by walking every module's imports with ``ast`` (not a grep).

The layers, lowest first (issue 16, part 1):

- ``hushwire.v1`` (generated), ``hushwire.contract`` (the wire contract) and ``hushwire.settings``
  (the one settings table): standard library, numpy, grpc and protobuf only, and each other;
- ``server``, ``client`` and ``gateway`` build on them; the gateway may use the client library, and
  no other edge between the three exists;
- ``cli``, the command for every role, sits on top: nothing imports it.

Every ``import`` counts, wherever it is (inside a function, under ``TYPE_CHECKING``): a lazy
import is still a dependency of the installed package. Between the packages there is no cycle.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata
import re
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT

# Where each package's files are (the hushwire package lives under protos/, see pyproject.toml).
PACKAGE_DIRS = {
    "server": ROOT / "server",
    "client": ROOT / "client",
    "gateway": ROOT / "gateway",
    "cli": ROOT / "cli",
    "hushwire": ROOT / "protos" / "hushwire",
}
FIRST_PARTY = {"server", "client", "gateway", "cli", "hushwire"}
# Which first-party packages each may import (besides itself).
ALLOWED = {
    "hushwire.v1": set(),
    "hushwire.contract": {"hushwire.v1"},
    "hushwire.settings": {"hushwire.contract"},   # the contract's pure-Python defaults (keepalive, limits)
    "hushwire": set(),                       # protos/hushwire/__init__.py
    "client": {"hushwire.v1", "hushwire.contract"},
    "gateway": {"hushwire.v1", "hushwire.contract", "hushwire.settings", "client"},
    "server": {"hushwire.v1", "hushwire.contract", "hushwire.settings"},
    "cli": {"hushwire.v1", "hushwire.contract", "hushwire.settings", "server", "client", "gateway"},
}
# Third-party modules the shared hushwire package may import (its light install carries only these).
HUSHWIRE_THIRD_PARTY = {"numpy", "grpc", "google"}


def node_of(module: str) -> str:
    """The package a dotted module name belongs to: ``server.dsp.stft`` -> ``server``,
    ``hushwire.contract.pcm`` -> ``hushwire.contract``."""
    parts = module.split(".")
    if parts[0] == "hushwire" and len(parts) > 1:
        return f"hushwire.{parts[1]}"
    return parts[0]


def module_name(path: Path, root: Path, package: str) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [package, *rel.parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, module: str) -> Iterator[tuple[str, int]]:
    """Every module ``path`` imports (absolute, relative ones resolved), with its line."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            yield target, node.lineno
            for alias in node.names:   # `from hushwire.contract import pcm` imports a module too
                yield f"{target}.{alias.name}", node.lineno


def edges(package_dirs: dict[str, Path]) -> list[tuple[str, str, str]]:
    """``(from node, to node or third-party top name, where)`` for every import in the packages."""
    out = []
    for package, root in package_dirs.items():
        for path in sorted(root.rglob("*.py")):
            module = module_name(path, root, package)
            for target, line in imports_of(path, module):
                top = target.split(".")[0]
                dest = node_of(target) if top in FIRST_PARTY else top
                out.append((node_of(module), dest, f"{path.relative_to(root.parent)}:{line} imports {target}"))
    return out


def violations(all_edges: list[tuple[str, str, str]]) -> list[str]:
    bad = []
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    for src, dest, where in all_edges:
        if dest == src:
            continue
        first_party = dest.split(".")[0] in FIRST_PARTY
        if first_party and dest not in ALLOWED.get(src, set()):
            bad.append(f"{src} -> {dest}: {where}")
        if (src.startswith("hushwire") and not first_party and dest not in stdlib
                and dest not in HUSHWIRE_THIRD_PARTY):
            bad.append(f"{src} -> third-party {dest}: {where}")
    return bad


def cycles(all_edges: list[tuple[str, str, str]]) -> list[list[str]]:
    """The cycles between first-party packages (Tarjan's strongly connected components)."""
    graph: dict[str, set[str]] = {}
    for src, dest, _ in all_edges:
        if dest != src and dest.split(".")[0] in FIRST_PARTY:
            graph.setdefault(src, set()).add(dest)
            graph.setdefault(dest, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_packages_keep_their_layers() -> None:
    all_edges = edges(PACKAGE_DIRS)
    assert len(all_edges) > 100, "the walk found almost no imports: is it looking in the right place?"
    assert violations(all_edges) == []


def test_no_cycle_between_the_packages() -> None:
    assert cycles(edges(PACKAGE_DIRS)) == []


def test_the_walk_catches_a_forbidden_edge_and_a_cycle(tmp_path: Path) -> None:
    """The checker itself: a lazy import of the server in the client, a top-level cycle between the
    gateway and the server, and a FastAPI import in the contract are all found."""
    (tmp_path / "client").mkdir()
    (tmp_path / "client" / "__init__.py").write_text("")
    (tmp_path / "client" / "x.py").write_text("def f():\n    from server import pcm\n")
    (tmp_path / "gateway").mkdir()
    (tmp_path / "gateway" / "__init__.py").write_text("from . import app\n")
    (tmp_path / "gateway" / "app.py").write_text("import server.errors\n")
    (tmp_path / "server").mkdir()
    (tmp_path / "server" / "__init__.py").write_text("")
    (tmp_path / "server" / "cli.py").write_text("from gateway.app import run\n")
    (tmp_path / "hushwire" / "contract").mkdir(parents=True)
    (tmp_path / "hushwire" / "__init__.py").write_text("")
    (tmp_path / "hushwire" / "contract" / "__init__.py").write_text("import fastapi\nfrom hushwire.v1 import a\n")
    dirs = {p: tmp_path / p for p in ("client", "gateway", "server", "hushwire")}
    found = edges(dirs)
    bad = violations(found)
    assert any(b.startswith("client -> server: client/x.py:2") for b in bad), bad
    assert any(b.startswith("gateway -> server: gateway/app.py:1") for b in bad), bad
    assert any(b.startswith("server -> gateway: server/cli.py:1") for b in bad), bad
    assert any(b.startswith("hushwire.contract -> third-party fastapi") for b in bad), bad
    assert not any("hushwire.v1" in b for b in bad), bad   # the contract may import the generated code
    assert cycles(found) == [["gateway", "server"]]


@pytest.mark.parametrize("module", ["hushwire.contract.limits"])
def test_the_dsp_can_use_the_pure_contract(module: str) -> None:
    """``server/dsp`` imports the contract's limits, so those must stay free of numpy's neighbours."""
    path = ROOT / "protos" / Path(*module.split(".")).with_suffix(".py")
    tops = {target.split(".")[0] for target, _ in imports_of(path, module)}
    assert tops <= set(sys.stdlib_module_names) | {"__future__"}, tops


def _requirement_name(req: str) -> str:
    return re.split(r"[\s;<>=!~\[(]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_module_level_third_party_imports_come_with_a_plain_install() -> None:
    """``pip install .`` must be enough to import every module: a third-party module imported at a
    module's top level belongs to a dependency in ``[project] dependencies`` (or to one of theirs),
    not only to an extra such as ``test``, which a developer's environment has and a user's lacks."""
    declared = {_requirement_name(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())
                ["project"]["dependencies"]}
    closure, todo = set(), list(declared)
    while todo:   # what the declared dependencies bring along, as installed here
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            todo += [_requirement_name(r) for r in importlib.metadata.requires(name) or () if "extra ==" not in r]
    providers = importlib.metadata.packages_distributions()
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    missing = []
    for root in PACKAGE_DIRS.values():
        for path in sorted(root.rglob("*.py")):
            for node in ast.parse(path.read_text(), str(path)).body:   # top level only: lazy imports may be extras
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
                for top in {n.split(".")[0] for n in names} - stdlib - FIRST_PARTY:
                    dists = {d.lower().replace("_", "-") for d in providers.get(top, [])}
                    if not dists & closure:
                        missing.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {top} ({sorted(dists)})")
    assert not missing, missing
