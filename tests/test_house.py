"""The house: packages by stage of the data flow, small modules, no import cycle (issue 14)."""

from __future__ import annotations

import ast
from pathlib import Path

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"
MAX_LINES = 400
STAGES = {"ingest", "identity", "store", "delivery", "operate", "tiktok"}
TOP_LEVEL = {"__init__", "__main__", "app", "appkeys", "cli", "config", "config_file",
             "content_encoding", "integrations", "logs", "settings"}  # fmt: skip


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its ``__init__``)."""
    found = {}
    for path in GATEWAY.rglob("*.py"):
        parts = path.relative_to(GATEWAY.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imported(path: Path, known: dict[str, Path]) -> set[str]:
    """The gateway modules ``path`` imports, at its top or inside a function alike."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module not in known:
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
    return out


def test_no_module_is_over_400_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_there_is_no_import_cycle() -> None:
    known = modules()
    graph = {name: imported(path, known) - {name} for name, path in known.items()}
    # a package's __init__ imported for its submodule is not an edge to its siblings
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for child in sorted(graph[name]):
            if state.get(child) == 1:
                cycles.append([*stack[stack.index(child) :], child])
            elif child not in state:
                visit(child)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert cycles == []


def test_the_listing_shows_the_stages() -> None:
    top = {p.stem for p in GATEWAY.glob("*.py")}
    packages = {p.name for p in GATEWAY.iterdir() if (p / "__init__.py").is_file()}
    assert packages == STAGES
    assert top <= TOP_LEVEL, top - TOP_LEVEL
