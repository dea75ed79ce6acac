"""The package's shape: no import circle, no oversized module, no block of code written twice."""

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "llamat_cif"
MAX_LINES = 470  # the house plan says "~450"; a little slack for a docstring, not for a second idea
WINDOW = 6  # the issue's definition of a repeated block


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def test_cycle_finder_on_a_known_graph():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert sorted(_cycles(edges)) == [["a", "b", "c"], ["d", "e"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle():
    """Every import counts, function-local ones included: a lazy import is still an arrow."""
    grimp = pytest.importorskip("grimp")
    graph = grimp.build_graph("llamat_cif", include_external_packages=False)
    edges = {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    assert _cycles(edges) == []


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "models" not in p.relative_to(PACKAGE).parts)


def test_no_oversized_module():
    big = {str(p.relative_to(PACKAGE)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines that carry code: no blanks, comments, lone brackets or imports."""
    text = path.read_text()
    imports = {n for node in ast.walk(ast.parse(text)) if isinstance(node, (ast.Import, ast.ImportFrom))
               for n in range(node.lineno, node.end_lineno + 1)}
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        s = " ".join(line.split())
        if not s or i in imports or s.startswith("#") or all(c in "()[]{},:" for c in s):
            continue
        out.append((i, s))
    return out


def repeated_blocks(paths: list[Path], window: int = WINDOW) -> list[str]:
    """Runs of ``window`` identical code lines found in two different modules."""
    seen: dict[tuple[str, ...], list[tuple[Path, int]]] = defaultdict(list)
    for p in paths:
        lines = _code_lines(p)
        for k in range(len(lines) - window + 1):
            block = tuple(s for _, s in lines[k:k + window])
            seen[block].append((p, lines[k][0]))
    found = set()
    for places in seen.values():
        files = {p for p, _ in places}
        if len(files) > 1:
            first: dict[Path, int] = {}
            for p, n in sorted(places):
                first.setdefault(p, n)
            (p1, l1), (p2, l2) = list(first.items())[:2]
            found.add(f"{p1.relative_to(PACKAGE)}:{l1} ~ {p2.relative_to(PACKAGE)}:{l2}")
    return sorted(found)


def test_repeated_block_finder_on_known_files(tmp_path):
    body = "\n".join(f"x{i} = f({i})" for i in range(6))
    (tmp_path / "a.py").write_text("import os\n" + body + "\n")
    (tmp_path / "b.py").write_text("# other\n\n" + body.replace("x5", "y5") + "\n")
    (tmp_path / "c.py").write_text("\n".join(["def g():", *(f"    x{i} = f({i})" for i in range(6))]) + "\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path
    try:
        assert repeated_blocks([tmp_path / "a.py", tmp_path / "b.py"]) == []  # 5 lines shared, not 6
        assert repeated_blocks([tmp_path / "a.py", tmp_path / "c.py"]) == ["a.py:2 ~ c.py:2"]
    finally:
        PACKAGE = saved


def test_no_block_repeated_across_modules():
    assert repeated_blocks(_modules()) == []
