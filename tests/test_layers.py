"""The package is layered along the data path, from a file's way in to the user's commands:

    io → bundle → runtime → methods → tasks → explainer → jobs → tools → cli/serve

A module imports only modules of its own layer or of a layer below, and no modules import each other round a
loop, function-level imports included (they hide a cycle from the interpreter, not from a reader). Nothing
inside the package imports from its root (`from .. import kernels` reads the root's names: import the
module, `from ..kernels import f`); the root `cam_infer/__init__.py` is the public face, on top.

`ALLOWED` lists the imports that break these rules today, each with the change of issue 26 that removes it;
an entry that no longer matches an import fails the test, so the list only shrinks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGE = ROOT / "cam_infer"

# Each layer's modules, by name under cam_infer (a name covers its submodules; "" is the package root only).
LAYERS = {
    "io": ("version", "errors", "numerics", "kernel_cache", "kernels", "images", "postprocess", "outputs",
           "backends.sessions"),          # the runtime-session factory: a split's checks run graphs too
    "bundle": ("bundle", "detection.anatomy", "detection.decode", "detection.branches", "detection.openvino_branches",
               "detection.split", "detection.openvino_split", "detection.record", "detection.end_to_end", "fuse.builder",
               "fuse.fusion", "fuse.ir_graph"),   # ONNX nodes in few words (and wired onto an
                                                 # IR): fusing, the opened transformer tail and the maps computed in
                                                 # the clean pass write them
    "runtime": ("backends", "gradients"),
    "methods": ("methods", "enhancers", "finer", "metrics", "cost", "explanation", "detection.targets",
                "detection.context", "detection.overlay", "segmentation.overlay", "segmentation.cut_set"),
    "tasks": ("tasks",),                  # a task runs the methods for its kind of model and builds the Explanation
    "explainer": ("explainer", "detection"),
    "jobs": ("jobs", "runs", "audit", "diff", "parallel", "progress", "fuse", "detection.runs", "detection.audit",
             "detection.fuse", "segmentation"),
    "tools": ("tools",),
    "cli/serve": ("cli", "serve", "__main__", ""),
}

# importer → imported: what issue 26 removes, by its numbered item.
ALLOWED: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    """'bundle.graph' for cam_infer/bundle/graph.py, 'bundle' for its __init__.py, '' for the root."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(name: str, is_package: bool, source: str, modules: set[str]) -> set[str]:
    """The package's modules that module `name` imports anywhere in its source (in functions too).
    `from X import a` imports X (its names are read), and X.a too when that is a module."""
    parts = name.split(".") if name else []
    package = parts if is_package else parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(["cam_infer", *package[:len(package) + 1 - node.level], *([base] if base else [])])
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    inside = {f.removeprefix("cam_infer").removeprefix(".") for f in found if f.split(".")[0] == "cam_infer"}
    return {f for f in inside if f in modules and f != name}


def import_graph() -> dict[str, set[str]]:
    """Every module of the package → the package's modules it imports."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports(name, path.name == "__init__.py", path.read_text(encoding="utf-8"), set(files))
            for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
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


def layer_of(module: str) -> int:
    """The position of a module's layer (the layer of its longest listed name)."""
    matches = [(len(name), position) for position, names in enumerate(LAYERS.values()) for name in names
               if module == name or (name and module.startswith(name + "."))]
    assert matches, f"cam_infer.{module} is in no layer: add it to LAYERS in {Path(__file__).name}"
    return max(matches)[1]


def without_allowed(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {module: {t for t in targets if (module, t) not in ALLOWED} for module, targets in graph.items()}


def test_no_module_imports_another_round_a_loop():
    loops = cycles(without_allowed(import_graph()))
    assert not loops, "import cycles: " + "; ".join(" ↔ ".join(loop) for loop in loops)


def test_a_module_imports_only_its_own_layer_and_those_below():
    names = list(LAYERS)
    upward = [f"{module} ({names[layer_of(module)]}) imports {target} ({names[layer_of(target)]})"
              for module, targets in sorted(without_allowed(import_graph()).items())
              for target in sorted(targets) if layer_of(target) > layer_of(module)]
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_every_allowed_import_still_exists():
    """An entry whose import is gone is deleted from ALLOWED: the list only shrinks."""
    graph = import_graph()
    stale = [f"{a} → {b}" for a, b in ALLOWED if b not in graph.get(a, ())]
    assert not stale, "no longer imported, delete from ALLOWED: " + ", ".join(stale)


@pytest.mark.parametrize(("source", "expected"), [
    ("from .. import kernels\nfrom ..bundle.graph import Graph\nimport cam_infer.images\nimport numpy\n",
     {"", "kernels", "bundle.graph", "images"}),
    ("def f():\n    from . import registry\n    from .registry import method\n", {"methods", "methods.registry"}),
])
def test_imports_are_read_as_written(source, expected):
    """Relative, absolute and function-level imports, as cam_infer/methods/score.py would make them."""
    modules = {"", "kernels", "bundle", "bundle.graph", "images", "methods", "methods.registry", "methods.score"}
    assert imports("methods.score", False, source, modules) == expected


def test_the_root_imports_are_read_from_the_root():
    assert imports("", True, "from .explainer import Explainer\nfrom . import kernels\n",
                   {"", "explainer", "kernels"}) == {"explainer", "kernels"}


def test_cycles_finds_every_loop_and_only_loops():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}, "g": set()}
    assert sorted(cycles(graph)) == [["a", "b", "c"], ["d", "e"]]
