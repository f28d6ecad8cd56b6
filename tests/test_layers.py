"""Layers point one way: the model imports no Lightning and no Hydra, and nothing in src/ imports the
benchmarks (scripts/benchmarks/, outside the installed package)."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth of its code (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_nothing_in_src_imports_the_benchmarks():
    offenders = {
        str(path.relative_to(SRC)): sorted(
            m for m in imported_modules(path) if m.split(".")[0] in ("benchmarks", "scripts")
        )
        for path in SRC.rglob("*.py")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_the_installed_package_has_no_benchmarks_inside():
    assert not (SRC / "tinytransformer" / "benchmarks").exists()


def test_importing_the_model_imports_no_lightning_and_no_hydra():
    code = (
        "import sys, tinytransformer.model, tinytransformer.model.generation, tinytransformer.data.tokenizers; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning', 'hydra', 'omegaconf'}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
