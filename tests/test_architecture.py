"""The package's shape, read from its source with `ast` (nothing is imported): no import cycles between modules, and
the library layers never import the layers built on them."""

import ast
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
PACKAGES = ("modeling_scot", "scot_core", "scot_search", "scot_eval", "trainers", "data_gen", "hub_cards", "demo")
# package -> the packages of this repository it must never import: the model stands alone (the Hub copy carries it),
# the core serves every stage, and the search library is usable without training, evaluation or the demo
FORBIDDEN = {
    "modeling_scot": set(PACKAGES) - {"modeling_scot"},
    "scot_core": set(PACKAGES) - {"modeling_scot", "scot_core"},
    "scot_search": {"scot_eval", "trainers", "data_gen", "hub_cards", "demo"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPOSITORY).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> dict[str, Path]:
    """{dotted module name: file} of every module of the packages."""
    return {module_name(path): path for package in PACKAGES if (REPOSITORY / package).is_dir()
            for path in sorted((REPOSITORY / package).rglob("*.py"))}


def _type_checking_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING" or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every import statement of a module, at any depth (function-level ones too), except under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking_only(node):
            yield from (found for child in node.orelse for found in _imports(ast.Module(body=[child])))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of `modules` that module `name` imports: `from a import b` counts as importing `a.b` when that is a
    module, else `a` (its `__init__`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            stem = ".".join([*base, *([node.module] if node.module else [])])
            targets = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in modules else stem for alias in node.names]
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a non-module attribute: its module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = source_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, colouring the modules being visited)."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_graph_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "scot_search.index" in graph["scot_search.search"]  # `from .index import GalleryIndex`
    assert "scot_search.app" in graph["scot_search.cli"]  # imported inside a function as well as at the top
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_lower_layers_never_import_higher_ones():
    wrong = sorted(f"{module} imports {target}" for module, targets in import_graph().items()
                   for target in targets if target.split(".")[0] in FORBIDDEN.get(module.split(".")[0], ()))
    assert not wrong, "\n".join(wrong)
