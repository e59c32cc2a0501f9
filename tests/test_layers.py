"""The architecture as a test: imports only point down the layers of docs/architecture.md,
stages never import one another, and the runtime stays free of heavy libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import edgeport

ROOT = Path(edgeport.__file__).parent

# Lowest first.  A unit may import its own package and any unit of a lower layer.
LAYERS = [
    {"errors", "vocabulary", "schema", "processes", "workdirs"},
    {"manifest", "golden"},
    {"artifact", "outputs"},
    {"runtime"},
    {"data"},
    {"parity", "speed"},
    {"export", "quantize", "bench", "package", "serve", "platforms", "running", "inspection"},
    {"engines"},
    {"pipeline"},
    {"cli"},
    {"__main__"},
]
HEAVY = ("torch", "transformers", "optimum", "peft", "keras", "tensorflow")


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(unit: str) -> int:
    return next(index for index, units in enumerate(LAYERS) if unit in units)


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every edgeport module imported anywhere in the file (function bodies included)."""
    package = "edgeport." + ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name == "__init__.py":
        package = package.rsplit(".", 1)[0] + ".__init__"
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:-node.level]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] if node.module or not node.level else [f"{target}.{a.name}" for a in node.names]
            found.extend((name, node.lineno) for name in names if name.startswith("edgeport"))
        elif isinstance(node, ast.Import):
            found.extend((a.name, node.lineno) for a in node.names if a.name.startswith("edgeport"))
    return found


def test_every_unit_is_in_a_layer():
    units = {p.stem if p.is_file() else p.name for p in ROOT.iterdir()
             if (p.suffix == ".py" and p.name != "__init__.py") or (p.is_dir() and (p / "__init__.py").exists())}
    assert units <= set().union(*LAYERS), units - set().union(*LAYERS)


def test_imports_only_point_down_and_stages_never_import_each_other():
    wrong = []
    for path in ROOT.rglob("*.py"):
        own = _unit("edgeport." + ".".join(path.relative_to(ROOT).with_suffix("").parts))
        if not own or own == "__init__":
            continue
        for target, line in _imports(path):
            other = _unit(target)
            if not other or other == own:
                continue
            if _layer(other) >= _layer(own):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {target} ({own} -> {other})")
    assert wrong == [], "\n".join(wrong)


# ExecuTorch's Python runtime takes and returns torch tensors (and imports torch itself); its
# runner may import torch inside its methods, where only an ExecuTorch artifact reaches it.
LAZY_HEAVY_ALLOWED = {"executorch.py": {"torch"}}


def test_runtime_never_imports_heavy_libraries():
    for path in (ROOT / "runtime").rglob("*.py"):
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            for name in names:
                root = name.split(".")[0]
                if root in LAZY_HEAVY_ALLOWED.get(path.name, set()) and id(node) not in top_level:
                    continue
                assert root not in HEAVY, f"{path}: imports {name}"


def test_help_imports_nothing_heavy():
    code = ("import sys; from edgeport.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'onnx', 'onnxruntime', 'peft', 'optimum', 'numpy',"
            " 'matplotlib', 'yaml') if m in sys.modules]\nprint('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    for command in ("export", "inspect", "quantize", "bench", "run", "verify", "merge"):
        assert command in out
