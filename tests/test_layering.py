"""The layering of docs/DESIGN: a module imports only from layers below its own.

Every ``import crscale.x`` / ``from crscale.x import ...`` in the package (at module level or
inside a function) is checked, so that a lazy import cannot hide a cycle either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import crscale

PACKAGE = Path(crscale.__file__).parent

#: Top-level modules and subpackages of crscale, lowest layer first. Packages on one layer are
#: siblings: neither imports the other (training and evaluation share crscale.injection), except
#: on the top layer, the command line, whose modules are one program.
LAYERS: list[set[str]] = [
    {"errors", "_lazy", "_logging", "_version", "interrupts"},
    {"config"},
    {"_validate"},
    {"io"},
    {"models"},
    {"detection"},
    {"injection", "catalogue"},
    {"catalog"},  # the deprecated spelling of crscale.catalogue
    {"engine"},
    {"train", "evaluate"},
    {"monitor"},
    {"cli", "cli_defects", "cli_reference"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
#: Names of the root package that may be imported from anywhere (``crscale.detect`` is lazy and
#: belongs to the detection layer).
ROOT_NAMES = {"sample_data_dir": 0, "__version__": 0, "detect": LAYER["detection"]}


def _unit(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level unit) of every crscale import of a module."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "crscale":
                out += [(node.lineno, a.name) for a in node.names]
            elif node.module.startswith("crscale."):
                out.append((node.lineno, node.module.split(".")[1]))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("crscale.")]
    return out


def test_every_unit_has_a_layer():
    units = {_unit(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    units = {u for u in units if (PACKAGE / u).is_dir() and (PACKAGE / u / "__init__.py").exists()
             or (PACKAGE / f"{u}.py").exists()}
    assert units - set(LAYER) == set()


def test_no_module_imports_from_a_higher_layer_or_a_sibling():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        unit = _unit(path)
        if unit == "__init__":
            continue  # the root package: lazy re-exports
        for line, target in _imported(ast.parse(path.read_text())):
            if target == unit:
                continue
            level = ROOT_NAMES.get(target, LAYER.get(target))
            assert level is not None, f"{path}:{line}: crscale.{target} has no layer in LAYERS"
            if level > LAYER[unit] or level == LAYER[unit] < len(LAYERS) - 1:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} ({unit}) imports crscale.{target}")
    assert wrong == []


def test_evaluation_does_not_load_training():
    import subprocess
    import sys

    code = "import crscale.evaluate, sys; print('crscale.train.loop' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
