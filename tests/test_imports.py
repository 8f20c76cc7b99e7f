"""The package's imports run one way (cli -> commands -> model/data/runs -> config/errors): no cycles,
counting imports inside functions too, and function-local imports only for heavy libraries."""

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "bertcls"
# Imported inside functions on purpose: each costs start-up time that `--help` and predict should not pay.
HEAVY = {"torch", "transformers", "datasets", "accelerate", "tokenizers", "safetensors", "pydantic", "sklearn", "matplotlib",
         "onnx", "onnxruntime", "onnxscript", "yaml", "tqdm", "rich", "numpy", "scipy", "psutil", "huggingface_hub"}


def _imports(tree) -> list[tuple[ast.AST, str, bool]]:
    """(node, imported module, inside a function?) for every import in a module."""
    found = []

    def visit(node, local):
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((child, alias.name, inner) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [f"{child.module}.{a.name}" for a in child.names] if child.module == "bertcls" else [child.module]
                found.extend((child, name, inner) for name in names)
            visit(child, inner)

    visit(tree, False)
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in SRC.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps = {name.split(".")[1] for _, name, _ in _imports(tree) if name.startswith("bertcls.")}
        graph[path.stem] = {d for d in deps if (SRC / f"{d}.py").is_file()} - {path.stem}
    return graph


def test_the_package_has_no_import_cycle():
    graph, state, cycle = _graph(), {}, []

    def walk(module, trail):
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                cycle.append(" -> ".join(trail[trail.index(dep):] + [dep]))
            elif dep not in state:
                walk(dep, trail + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
    assert not cycle, f"import cycles: {cycle}"


def test_function_local_imports_are_only_for_heavy_libraries():
    """A local import of the standard library buys no start-up time; one of a bertcls module is allowed only where
    that module is heavy (imports a heavy library at its top, itself or through another bertcls module)."""
    trees = {path.stem: ast.parse(path.read_text(encoding="utf-8")) for path in SRC.glob("*.py")}
    top = {name: [imported for _, imported, local in _imports(tree) if not local] for name, tree in trees.items()}
    heavy = {name for name, imported in top.items() if any(i.split(".")[0] in HEAVY for i in imported)}
    while True:  # heavy through another bertcls module imported at the top
        more = {name for name, imported in top.items() if any(i.startswith("bertcls.") and i.split(".")[1] in heavy for i in imported)}
        if more <= heavy:
            break
        heavy |= more
    wrong = []
    for name, tree in sorted(trees.items()):
        for node, imported, local in _imports(tree):
            root = imported.split(".")[0]
            if local and (root in sys.stdlib_module_names or (root == "bertcls" and imported.split(".")[1] not in heavy)):
                wrong.append(f"{name}.py:{node.lineno} {imported}")
    assert not wrong, f"function-local imports with no start-up reason: {wrong}"
