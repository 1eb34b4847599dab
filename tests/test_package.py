"""The package's shape: imports run one way, each module says what it offers (``__all__``) and the
others use only that, functions stay short, and paths come from the rules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "workflow" / "scripts" / "snaketune"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
MAX_FUNCTION_LINES = 80


def parse(module: str) -> ast.Module:
    return ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))


def package_imports(module: str) -> set[str]:
    """The snaketune modules ``module`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(parse(module)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:  # from .x import y
                found.add(node.module.split(".")[0])
            elif node.level == 1:  # from . import x
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("snaketune."):
                found.add(node.module.split(".")[1])
            elif node.module == "snaketune":
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(
                alias.name.split(".")[1] for alias in node.names if alias.name.startswith("snaketune.")
            )
    return found & set(MODULES)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def defined_names(module: str) -> set[str]:
    """Top-level functions, classes and assigned names of a module."""
    names = set()
    for node in parse(module).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def declared_all(module: str) -> list[str] | None:
    for node in parse(module).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    return None


def python_uses(path: Path, own: str | None = None) -> list[tuple[str, str, str]]:
    """(module, name, where) for every name the file takes from another snaketune module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    uses, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            target = (
                mod if node.level == 1 else mod.split(".", 1)[1] if mod.startswith("snaketune.") else None
            )
            if target in MODULES:
                uses += [(target, alias.name, f"{path.name}:{node.lineno}") for alias in node.names]
            elif (node.level == 1 and not mod) or mod == "snaketune":
                aliases.update({alias.asname or alias.name: alias.name for alias in node.names})
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            module = aliases[node.value.id]
            if node.attr in defined_names(module):  # a local of the same name shadows the module elsewhere
                uses.append((module, node.attr, f"{path.name}:{node.lineno}"))
    return [use for use in uses if use[0] != own]


def snakefile_uses(path: Path) -> list[tuple[str, str, str]]:
    uses = []
    for m in re.finditer(
        r"from snaketune\.(\w+) import (\([^)]*\)|[^\n]*)", path.read_text(encoding="utf-8")
    ):
        for part in m.group(2).strip("()").replace("\n", ",").split(","):
            name = part.split("#")[0].strip().split(" as ")[0].strip()
            if name:
                uses.append((m.group(1), name, path.name))
    return uses


def every_use() -> list[tuple[str, str, str]]:
    """What the package's modules, the entry scripts, the rules, the tests and the benchmarks take from
    snaketune modules."""
    uses = []
    for path in sorted(PACKAGE.glob("*.py")):
        uses += python_uses(path, own=path.stem)
    for folder in ("workflow/scripts", "tests", "bench"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if PACKAGE not in path.parents:
                uses += python_uses(path)
    for path in sorted((REPO / "workflow" / "rules").glob("*.smk")) + [REPO / "Snakefile"]:
        uses += snakefile_uses(path)
    return uses


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_package_has_no_import_cycle():
    graph = {module: package_imports(module) for module in MODULES}
    assert (
        graph["launch"] >= {"training", "ranks"} and "ranks" in graph["training"]
    )  # the parser sees imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_every_module_lists_what_it_offers_in_all():
    for module in MODULES:
        offered = declared_all(module)
        assert offered is not None, f"{module}.py has no __all__"
        assert set(offered) <= defined_names(module), f"{module}.__all__ names what it does not define"
        assert len(offered) == len(set(offered)), f"{module}.__all__ repeats a name"


def test_other_code_uses_only_public_names_from_all():
    uses = every_use()
    assert ("launch", "launch_training", "train_adapter.py") in {(m, n, w.split(":")[0]) for m, n, w in uses}
    private = [f"{where}: {module}.{name}" for module, name, where in uses if name.startswith("_")]
    assert not private, "private names used across modules:\n" + "\n".join(private)
    unlisted = sorted({f"{where}: {module}.{name}" for module, name, where in uses
                       if name not in (declared_all(module) or [])})
    assert not unlisted, "names used from a module that its __all__ does not list:\n" + "\n".join(unlisted)


def test_no_function_is_longer_than_a_screen():
    long = []
    for module in MODULES:
        for node in ast.walk(parse(module)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.py:{node.lineno} {node.name}: {lines} lines")
    assert not long, "\n".join(long)


def test_the_package_hard_codes_no_config_file():
    """The config file's path comes from the rules (CONFIG_PATH, the last --configfile)."""
    for path in sorted(PACKAGE.glob("*.py")):
        assert "config/config.yaml" not in path.read_text(encoding="utf-8"), path.name
