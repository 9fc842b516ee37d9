"""The package's import structure: no cycle (module or function level, the CLI's lazy commands
included) and dependencies that point the way the design says."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from keras_cnn.cli import COMMANDS

PACKAGE = Path(__file__).resolve().parent.parent / "keras_cnn"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    """kcnn modules ``name`` imports anywhere in its code (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from a.b import c`` imports module a.b.c when there is one, else names of a.b.
            targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                       for alias in node.names]
        else:
            continue
        found.update(target for target in targets if target in MODULES and target != name)
    if name == "keras_cnn.cli":
        # The group imports each command's module by name (importlib), when the command is asked for.
        found.update(target.split(":")[0] for target in COMMANDS.values())
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def test_no_import_cycle():
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(name: str) -> None:
        state[name] = "open"
        path.append(name)
        for target in sorted(GRAPH[name]):
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


def reaches(name: str, forbidden: str) -> list[str]:
    """The modules of ``forbidden`` (a package or module) that ``name`` imports itself."""
    return sorted(target for target in GRAPH[name] if target == forbidden or target.startswith(forbidden + "."))


# (importing modules, what they must never import themselves, why)
RULES = [
    ("keras_cnn.data", "keras_cnn.runs", "data/ reads and writes through keras_cnn.io, not the run folder"),
    ("keras_cnn.data", "keras_cnn.train", "data/ serves training, it does not depend on it"),
    ("keras_cnn.data", "keras_cnn.cli", "the command line sits above the API"),
    ("keras_cnn.models", "keras_cnn.train", "models/ are built by training, not the other way"),
    ("keras_cnn.models", "keras_cnn.runs", "models/ know nothing of run folders"),
    ("keras_cnn.models", "keras_cnn.cli", "the command line sits above the API"),
    ("keras_cnn.export", "keras_cnn.evaluate", "export loads a run's parts through keras_cnn.run_data"),
    ("keras_cnn.export", "keras_cnn.train", "an export needs no training code"),
    ("keras_cnn.evaluate", "keras_cnn.train", "evaluation needs no training code"),
    ("keras_cnn.predict", "keras_cnn.train", "prediction needs only the export"),
    ("keras_cnn.predict", "keras_cnn.export", "prediction reads an export's layout, not the exporter"),
    ("keras_cnn.messages", "keras_cnn.runs", "messages write their lists through keras_cnn.io"),
]


@pytest.mark.parametrize("importer, forbidden, why", RULES)
def test_dependencies_point_down(importer, forbidden, why):
    for name in GRAPH:
        if name == importer or name.startswith(importer + "."):
            assert not reaches(name, forbidden), f"{name} imports {reaches(name, forbidden)}: {why}"


def test_only_the_command_group_imports_kcnn_modules_by_name():
    """``importlib`` hides an import from readers and tools: the lazy command table is the one use."""
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            function = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if function not in ("import_module", "__import__"):
                continue
            argument = node.args[0] if node.args else None
            names_other_library = (isinstance(argument, ast.Constant) and isinstance(argument.value, str)
                                   and not argument.value.startswith("keras_cnn"))
            assert names_other_library or name == "keras_cnn.cli", f"{name} imports a kcnn module by name"


def private_keras_uses(path: Path) -> list[str]:
    """``obj._name`` on anything but ``self``/``cls``, ``getattr(obj, "_name")`` and ``keras.src`` imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("getattr", "hasattr", "setattr"):
            owner, name = (node.args + [None, None])[:2]
            private = isinstance(name, ast.Constant) and str(name.value).startswith("_") \
                and not str(name.value).startswith("__")
            if private and not (isinstance(owner, ast.Name) and owner.id == "self"):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)}")
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [node.module or ""] if isinstance(node, ast.ImportFrom) else [alias.name for alias in node.names]
            found += [f"{path.name}:{node.lineno} import {module}" for module in modules if module.startswith("keras.src")]
    return found


def test_private_keras_parts_are_used_only_in_keras_internals():
    """Every private Keras attribute or ``keras.src`` module kcnn needs is behind keras_cnn.keras_internals,
    where tests/test_keras_internals.py watches it."""
    uses = [use for name, path in MODULES.items() if name != "keras_cnn.keras_internals"
            for use in private_keras_uses(path)]
    assert not uses, f"private Keras parts outside keras_cnn/keras_internals.py: {uses}"

