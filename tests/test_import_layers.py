"""Imports run one way: data <- models <- inference <- stages <- cli (docs/architecture.md, "Layers").

Every ``import`` / ``from ... import`` of a ``refineg`` module anywhere in a file (top level, inside functions,
under ``TYPE_CHECKING``) counts. A module may import its own layer and the layers below it, never one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "refineg"

#: Layers from the bottom up; a module belongs to the first layer with a prefix of its dotted name.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "refineg.registry",
            "refineg.errors",
            "refineg.logs",
            "refineg.resources",
            "refineg.weights",
            "refineg.config",
            "refineg.data",
            "refineg.metrics",
        ),
    ),
    ("models", ("refineg.datamodules", "refineg.modules", "refineg.llm")),
    ("inference", ("refineg.inference",)),
    ("stages", ("refineg.training", "refineg.callbacks", "refineg.stages", "refineg.viz", "refineg.sweeps")),
    ("cli", ("refineg.cli", "refineg.__main__")),
]
#: The package's own ``__init__`` (the version string) may be imported from anywhere.
ROOT = "refineg"


def layer_of(module: str, layers: list[tuple[str, tuple[str, ...]]] = LAYERS) -> int | None:
    """Index of ``module``'s layer, or ``None`` when no prefix matches."""
    for index, (_, prefixes) in enumerate(layers):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    """Dotted name of a source file under ``root`` (the package folder) and whether it is a package ``__init__``."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def imports_of(path: Path, root: Path) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import of the package named like ``root`` in ``path``."""
    name, is_package = module_name(path, root)
    base = name.split(".") if is_package else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [target]
            if node.module is None or target == root.name:  # `from . import x` / `from refineg import x`
                targets = [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        out.extend((t, node.lineno) for t in targets if t == root.name or t.startswith(root.name + "."))
    return out


def layer_violations(root: Path, layers: list[tuple[str, tuple[str, ...]]]) -> list[str]:
    """``file:line: A (layer) imports B (higher layer)`` for every upward import under the package ``root``."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        source, _ = module_name(path, root)
        src_layer = layer_of(source, layers)
        for target, line in imports_of(path, root):
            if target == root.name:
                continue
            dst_layer = layer_of(target, layers)
            if src_layer is not None and dst_layer is not None and dst_layer > src_layer:
                problems.append(
                    f"{path.relative_to(root.parent)}:{line}: {source} ({layers[src_layer][0]}) imports "
                    f"{target} ({layers[dst_layer][0]})"
                )
    return problems


def test_every_module_has_a_layer():
    unassigned = []
    for path in PACKAGE.rglob("*.py"):
        name, _ = module_name(path, PACKAGE)
        if name != ROOT and layer_of(name) is None:
            unassigned.append(name)
    assert unassigned == [], f"put these modules in a layer of LAYERS: {sorted(unassigned)}"


def test_imports_run_one_way():
    assert layer_violations(PACKAGE, LAYERS) == []


def test_modules_import_nothing_from_inference_stages_or_cli():
    above = ("refineg.inference", "refineg.stages", "refineg.training", "refineg.cli")
    for path in (PACKAGE / "modules").rglob("*.py"):
        bad = [t for t, _ in imports_of(path, PACKAGE) if t.startswith(above)]
        assert bad == [], path


def test_checker_reports_an_upward_import(tmp_path):
    root = tmp_path / "refineg"
    (root / "data").mkdir(parents=True)
    (root / "stages").mkdir()
    for folder in (root, root / "data", root / "stages"):
        (folder / "__init__.py").write_text("")
    (root / "stages" / "run.py").write_text("from refineg.data import schema\n")
    (root / "data" / "schema.py").write_text("import os\n\n\ndef f():\n    from ..stages.run import go\n")
    layers = [("base", ("refineg.data",)), ("stages", ("refineg.stages",))]
    assert layer_violations(root, layers) == [
        "refineg/data/schema.py:5: refineg.data.schema (base) imports refineg.stages.run (stages)"
    ]


@pytest.mark.parametrize(
    ("pattern", "allowed"),
    [
        ("Image.open(", "data/images.py"),  # one module loads images
        ("def _norm", None),  # one module projects strings onto token spans (refineg/data/spans.py)
        ("create_model_and_transforms(", "weights.py"),  # one module loads pretrained weights
    ],
)
def test_one_module_per_concept(pattern, allowed):
    hits = sorted(
        str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if pattern in p.read_text(encoding="utf-8")
    )
    assert hits == ([allowed] if allowed else [])
