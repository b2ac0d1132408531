"""The package's layering, read from its imports (module-level and function-level alike, with ast):
no import cycle, and no import from a lower layer into a higher one (docs/architecture.md)."""

from __future__ import annotations

import ast
import collections

from conftest import REPO

# a package may import its own modules and packages of a strictly lower rank
RANKS = {
    "cft": 0, "cft.errors": 0, "cft.spec": 0, "cft.console": 0,
    "cft.nn": 1, "cft.metrics": 1, "cft.recipe": 1,
    "cft.files": 2,
    "cft.data": 3, "cft.views": 3,
    "cft.prior": 4,
    "cft.training": 5,
    "cft.apply": 6, "cft.compose": 6, "cft.sweep": 6,
    "cft.cli": 7,
    "cft.completions": 8, "cft.__main__": 8,
}
# eval and predict reach the model through files/ and inference, never through the trainer
ALLOWED_INTO_TRAINING = {"cft.apply": {"cft.training.inference", "cft.training.distributed"}}


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in (REPO / "cft").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = ast.parse(path.read_text())
    return out


def _imports(tree: ast.Module) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "cft":
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "cft"}
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = collections.defaultdict(set)
    for name, tree in modules.items():
        for target in _imports(tree):
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target != name:
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_package_has_a_layer():
    assert {_package(m) for m in _modules()} <= set(RANKS)


def test_imports_only_go_down_the_layers():
    wrong = []
    for source, targets in _graph().items():
        for target in targets:
            a, b = _package(source), _package(target)
            if a == b:
                continue
            if RANKS[b] >= RANKS[a]:
                wrong.append(f"{source} -> {target}")
            elif b == "cft.training" and a in ALLOWED_INTO_TRAINING and target not in ALLOWED_INTO_TRAINING[a]:
                wrong.append(f"{source} -> {target} (only {sorted(ALLOWED_INTO_TRAINING[a])})")
    assert not wrong, "imports against the layering of docs/architecture.md:\n" + "\n".join(sorted(wrong))


def test_nn_imports_neither_files_nor_data():
    graph = _graph()
    bad = [f"{s} -> {t}" for s, ts in graph.items() if s.startswith("cft.nn") for t in ts if t.startswith(("cft.files", "cft.data"))]
    assert not bad
