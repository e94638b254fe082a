"""The folders' architecture, read from the source: dependencies point one way (no import cycles, counting imports
inside functions too), and ``xai`` and ``evaluation`` know nothing of the pipeline, Hydra or MLflow."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("xai", "evaluation", "pipeline")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imported_names(path: Path) -> set[str]:
    """Every module an ``import`` or ``from ... import`` names, anywhere in the file (``from a import b`` names a
    and, if it is a module, a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {n for n in imported_names(path) if n in known and n != name} for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back():
    assert cycles(import_graph()) == []


@pytest.mark.parametrize("package", ["xai", "evaluation"])
def test_the_libraries_know_nothing_of_the_pipeline_hydra_or_mlflow(package):
    offending = {}
    for name, path in modules().items():
        if name.split(".")[0] != package:
            continue
        bad = sorted(n for n in imported_names(path) if n.split(".")[0] in ("pipeline", "hydra", "omegaconf", "mlflow"))
        if bad:
            offending[name] = bad
    assert offending == {}


def test_tracking_knows_nothing_of_scale_out():
    """Publishing and the store serve a single run as well as a sweep; the sweep callback uses them, not the reverse."""
    offending = {name: sorted(n for n in imported_names(path) if n.startswith("pipeline.scaleout"))
                 for name, path in modules().items() if name.startswith("pipeline.tracking")}
    assert {name: bad for name, bad in offending.items() if bad} == {}
