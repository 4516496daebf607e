"""No module uses a private name (`_x`) of another kcap subpackage or of tuning.

The layers and the absence of import cycles are import-linter's contracts
(setup.cfg's [importlinter]; `lint-imports`, run by scripts/test.sh).
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("kcap", "tuning")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {_module_name(path): path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}


def _owner(module: str) -> str:
    """What may share its private names: a subpackage of kcap (or a top-level module of it), or tuning."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "kcap" and len(parts) > 1 else parts[0]


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _absolute(node: ast.ImportFrom, importer: str) -> str:
    if not node.level:
        return node.module or ""
    package = importer.split(".")
    if not SOURCES[importer].name == "__init__.py":
        package = package[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def private_uses(importer: str, source: str) -> list[str]:
    """`"line N: NAME"` for each private name of another owner that `source` imports or reads off a module."""
    found = []
    modules = {}  # local name -> the kcap/tuning module it is bound to
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    if any(_private(part) for part in alias.name.split(".")):
                        found.append((node.lineno, alias.name))
                    if alias.asname:
                        modules[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(node, importer)
            if target.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                full = f"{target}.{alias.name}"
                if any(_private(part) for part in full.split(".")):
                    found.append((node.lineno, full))
                if full in SOURCES:
                    modules[alias.asname or alias.name] = full
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _private(node.attr):
            if node.value.id in modules:
                found.append((node.lineno, f"{modules[node.value.id]}.{node.attr}"))
    return [f"line {line}: {name}" for line, name in sorted(found) if _owner(name) != _owner(importer)]


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_no_private_name_of_another_package_is_used(module):
    assert private_uses(module, SOURCES[module].read_text(encoding="utf-8")) == []


def test_the_scan_finds_private_names_imported_read_or_relative():
    source = (
        "from kcap.cli import _train_config\n"
        "from kcap.model.samplers import base\n"
        "import kcap.training.trainer as trainer\n"
        "def f():\n"
        "    from ..model.samplers.base import _step\n"
        "    return base._gather(trainer._train)\n"
        "from kcap.data.check import _check_safely, check_data\n"  # its own package's: allowed
    )
    assert private_uses("kcap.data.loading", source) == [
        "line 1: kcap.cli._train_config",
        "line 5: kcap.model.samplers.base._step",
        "line 6: kcap.model.samplers.base._gather",
        "line 6: kcap.training.trainer._train",
    ]
