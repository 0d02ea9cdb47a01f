"""The layers import one way (issue 21 point 7), read from the source, so the map cannot rot.

Every module of the distribution (the folders ``pyproject.toml`` maps into ``fedsilo.*``)
is parsed with `ast`; every import counts, at module level or inside a function (also
under ``TYPE_CHECKING``), relative imports resolved, ``from pkg import name`` resolved to
the submodule when ``name`` is one. Each file's layer is its top-level folder::

    fedsilo (the CLI face)
      -> server, client, simulations        (one level)
        -> tasks
          -> strategies, privacy, lineage, governance   (one level)
            -> common                        (the leaf)

An import may go down any number of levels. Across one level: ``simulations`` may import
``server`` and ``client`` (the simulation runner drives both sides), nothing else among
server/client/simulations; among strategies/privacy/lineage/governance an import is allowed as long as
those folders import each other without a cycle. Production code (everything but the
face and ``simulations`` itself) never imports ``simulations``. The distribution's root
package (``fedsilo/__init__.py``: the version) is imported implicitly by every module and
may be named by any.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOT = "fedsilo"
FACE = "fedsilo"
LEVEL = {FACE: 0, "server": 1, "client": 1, "simulations": 1, "tasks": 2,
         "strategies": 3, "privacy": 3, "lineage": 3, "governance": 3, "common": 4}
SIDEWAYS_OK = {("simulations", "server"), ("simulations", "client")}

# Known edges that still run the wrong way: (importing file, imported module) -> why. Each is
# open work; delete the entry with the edge (the test fails on an entry that no longer matches).
EXCEPTIONS: dict[tuple[str, str], str] = {
}


@dataclass(frozen=True)
class Edge:
    """One import: ``path:line`` of the importing file, its layer, the module and its layer."""

    path: str
    line: int
    src: str
    module: str
    dst: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.src} -> {self.dst} ({self.module})"


def package_dirs() -> dict[str, Path]:
    """Package name -> folder, as ``pyproject.toml`` maps them (setuptools ``package-dir``)."""
    doc = tomllib.loads((REPO / "pyproject.toml").read_text())
    mapping = doc["tool"]["setuptools"]["package-dir"]
    return {pkg: REPO / folder for pkg, folder in mapping.items()}


def modules() -> dict[str, Path]:
    """Every module of the distribution: dotted name -> file."""
    out: dict[str, Path] = {}
    for pkg, folder in package_dirs().items():
        for path in sorted(folder.glob("*.py")):
            out[pkg if path.stem == "__init__" else f"{pkg}.{path.stem}"] = path
    return out


def layer(module: str) -> str | None:
    """The layer of a dotted module name (None: not fedsilo's; ``ROOT``: the root package)."""
    parts = module.split(".")
    if parts[0] != ROOT:
        return None
    if len(parts) == 1:
        return ROOT
    return parts[1] if parts[1] in LEVEL and parts[1] != FACE else FACE


def imports(module: str, path: Path, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, imported fedsilo module) of every import in ``path`` (module ``module``)."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base_parts = parts[:len(parts) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield node.lineno, sub if sub in known else base


def edges() -> list[Edge]:
    """Every import from one layer into another."""
    found = modules()
    known = set(found)
    out = []
    for module, path in found.items():
        src = layer(module)
        for line, target in imports(module, path, known):
            dst = layer(target)
            if dst is None or dst in (src, ROOT):
                continue
            assert src is not None
            out.append(Edge(str(path.relative_to(REPO)), line, src, target, dst))
    return out


def wrong_way(edge: Edge) -> str | None:
    """Why ``edge`` runs the wrong way, or None when the layers allow it."""
    if edge.dst == "simulations" and edge.src not in (FACE, "simulations"):
        return "production code never imports simulations"
    if LEVEL[edge.dst] < LEVEL[edge.src]:
        return "imports a layer above it"
    if LEVEL[edge.dst] == LEVEL[edge.src] == 1 and (edge.src, edge.dst) not in SIDEWAYS_OK:
        return "imports sideways (server, client and simulations are one level)"
    return None


def cycles(all_edges: list[Edge]) -> list[Edge]:
    """The sideways edges among strategies/privacy/lineage that close a cycle of folders
    (an edge listed in `EXCEPTIONS` is left out of the graph)."""
    sideways = [e for e in all_edges if LEVEL[e.src] == LEVEL[e.dst] == 3
                and (e.path, e.module) not in EXCEPTIONS]
    graph: dict[str, set[str]] = {}
    for e in sideways:
        graph.setdefault(e.src, set()).add(e.dst)

    def reaches(a: str, b: str) -> bool:
        seen, todo = set(), [a]
        while todo:
            node = todo.pop()
            if node == b:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(graph.get(node, ()))
        return False

    return [e for e in sideways if reaches(e.dst, e.src)]


def test_every_layer_is_mapped() -> None:
    """Each package folder belongs to a layer (a new top-level folder must be placed)."""
    for pkg in package_dirs():
        assert layer(pkg) in (*LEVEL, ROOT), pkg


def test_the_layers_import_one_way() -> None:
    all_edges = edges()
    assert all_edges, "no imports between layers found: the parser is broken"
    excepted = set(EXCEPTIONS)
    bad: list[str] = []
    used: set[tuple[str, str]] = set()
    for e in all_edges:
        why = wrong_way(e)
        if (e.path, e.module) in excepted:
            used.add((e.path, e.module))  # wrong-way or cycle-closing, listed with a reason
        elif why is not None:
            bad.append(f"{e}: {why}")
    bad += [f"{e}: closes an import cycle among strategies, privacy and lineage"
            for e in cycles(all_edges)]
    stale = sorted(excepted - used)
    assert not bad, "imports that run the wrong way:\n" + "\n".join(sorted(set(bad)))
    assert not stale, f"EXCEPTIONS no longer needed (delete them): {stale}"
