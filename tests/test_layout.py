"""The package's shape: no import cycle, imports that follow the flow, modules and functions of
a readable size, each option and stage kind named in one place, and a layout in CONTRIBUTING.md that lists
the tree as it is."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tuner.train.options import FIELDS
from tuner.tune.kinds import KINDS

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "tuner"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Every tuner module ``name`` imports, at any level (functions and TYPE_CHECKING too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            for alias in node.names:
                target = f"{base}.{alias.name}"
                out.add(target if target in mods else base)
        elif isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
    return {m for m in out if m in mods and m != name}


def test_the_import_graph_has_no_cycle():
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = path[path.index(n) :] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert "tuner.tune.stages" in graph and graph["tuner.tune.stages"]  # the walk saw imports


LAYERS = ("tuner.data", "tuner.train", "tuner.config", "tuner.tune", "tuner.plan", "tuner.report")
"""The flow, upstream first: a layer imports nothing of the layers after it. Training knows no
stage or plan (``tuner.config`` builds stages and plans on ``tuner.train.config``); the plan
loader asks the stage kinds (``tuner.tune.kinds``) to check their own keys."""


def _layer(module: str) -> int | None:
    for i, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            return i
    return None


def test_imports_follow_the_flow():
    mods = _modules()
    against = []
    for name, path in mods.items():
        here = _layer(name)
        for target in _imports(name, path, mods):
            there = _layer(target)
            if here is not None and there is not None and there > here:
                against.append(f"{name} -> {target}")
    assert not against, "imports against the flow: " + ", ".join(sorted(against))
    # the walk sees imports across layers at all (train.tensors reads data.prepare's arrays)
    tensors = _imports("tuner.train.tensors", mods["tuner.train.tensors"], mods)
    assert "tuner.data.prepare" in tensors


def test_training_imports_nothing_of_stages_and_plans():
    mods = _modules()
    against = [
        f"{name} -> {target}"
        for name, path in mods.items()
        if name == "tuner.train" or name.startswith("tuner.train.")
        for target in _imports(name, path, mods)
        if target in ("tuner.config", "tuner.plan") or target.startswith("tuner.plan.")
    ]
    assert not against, "training imports stages or plans: " + ", ".join(sorted(against))
    # the walk sees the import the rule is about from the other side: config -> train.config
    assert "tuner.train.config" in _imports("tuner.config", mods["tuner.config"], mods)


def test_the_value_checks_import_nothing_of_tuner():
    tree = ast.parse((PACKAGE / "checks.py").read_text())
    imported = [
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
        if isinstance(node, ast.Import) or node.level == 0
    ]
    relative = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level]
    assert imported and not relative  # the walk saw its imports (dataclasses, re, ...)
    assert not [m for m in imported if m == "tuner" or m.startswith("tuner.")]


# -- sizes: a module a reader can hold, functions a reader can follow ---------------------------
MAX_MODULE_LINES = 500
MAX_CLI_LINES = 450
MAX_FUNCTION_LINES = 80  # in tuner/train and tuner/tune
SIZED_FUNCTIONS = ("tuner/train/", "tuner/tune/")


def _lines() -> dict[str, int]:
    return {
        str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")
    }


def _long_functions() -> dict[str, list[str]]:
    """Functions (methods, nested functions) longer than MAX_FUNCTION_LINES, by module."""
    out: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = str(path.relative_to(REPO))
        if not rel.startswith(SIZED_FUNCTIONS):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    out.setdefault(rel, []).append(f"{node.name} ({n} lines)")
    return out


def _too_long(path: str, lines: dict[str, int]) -> bool:
    limit = MAX_CLI_LINES if path == "tuner/cli.py" else MAX_MODULE_LINES
    return lines[path] > limit


def test_no_module_is_longer_than_500_lines_and_the_cli_than_450():
    lines = _lines()
    assert len(lines) > 50 and "tuner/cli.py" in lines  # the walk saw the package
    long = {p: n for p, n in lines.items() if _too_long(p, lines)}
    assert not long, f"modules over {MAX_MODULE_LINES} lines (the CLI: {MAX_CLI_LINES}): {long}"


def test_no_function_in_train_or_tune_is_longer_than_80_lines():
    long = _long_functions()
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_command_line_parses_and_dispatches_only():
    """What a command does is in tuner/commands.py; tuner/cli.py parses and dispatches."""
    cli = (PACKAGE / "cli.py").read_text()
    assert "def build_parser" in cli and "tuner.commands" in cli


def _files_naming(word: str) -> list[str]:
    pattern = re.compile(rf"(?<![\w]){re.escape(word)}(?![\w])")
    return sorted(
        str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py") if pattern.search(p.read_text())
    )


# names that are also ordinary words or other things' names: a family's default, and "tanh",
# which the MSD-shaped generator (tuner/data/synthetic.py) uses as numpy's function
_GENERIC = {"none", "default", "constant", "batch", "layer", "balanced", "tanh"}
OPTION_NAMES = sorted({name for registry in FIELDS.values() for name in registry} - _GENERIC)


@pytest.mark.parametrize("name", OPTION_NAMES)
def test_each_option_is_named_in_one_module(name):
    files = _files_naming(name)
    assert len(files) == 1 and files[0].startswith("tuner/train/options/"), files


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_stage_kind_is_named_in_its_module_and_the_registry(kind):
    files = _files_naming(kind)
    assert set(files) <= {"tuner/tune/kinds/__init__.py", f"tuner/tune/kinds/{kind}.py"}, files


def _layout_block() -> str:
    text = (REPO / "CONTRIBUTING.md").read_text()
    section = text.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    blocks = section.split("```")[1::2]  # the fenced blocks: the flow diagram, then the tree
    return next(b for b in blocks if b.lstrip().startswith("studies/"))


def test_the_contributing_layout_lists_every_module_of_the_package():
    listed: set[str] = set()
    stack: list[tuple[int, str]] = []  # (indent, directory)
    for line in _layout_block().splitlines():
        m = re.match(r"^( *)(\S+)", line)
        if not m:
            continue
        indent, entry = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = "/".join([d for _, d in stack] + [entry.rstrip("/")])
        if entry.endswith("/"):
            stack.append((indent, entry.rstrip("/")))
        elif entry.endswith(".py"):
            listed.add(path)
    actual = {
        str(p.relative_to(REPO))
        for p in PACKAGE.rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }
    assert listed - actual == set(), "CONTRIBUTING.md lists modules that do not exist"
    assert actual - listed == set(), "modules missing from the layout in CONTRIBUTING.md"
