"""Layers point one way: the core imports nothing from the runtime, the model imports no Lightning and no
Hydra, and nothing in src/ imports the benchmarks (scripts/benchmarks/, outside the installed package)."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"
PACKAGE = SRC / "tinytransformer"
# The rooms of tinytransformer/ (its __init__.py says what each holds), by module prefix.
CORE = ("tinytransformer.model", "tinytransformer.data", "tinytransformer.training")
RUNTIME = ("tinytransformer.runtime",)
COMPARISON = ("tinytransformer.comparison",)
SHARED = (
    "tinytransformer.errors",
    "tinytransformer.checks",
    "tinytransformer.specs",
    "tinytransformer.files",
)


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth of its code (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


def ours_imported(path: Path) -> set[str]:
    return {
        m for m in imported_modules(path) if m.split(".")[0] == "tinytransformer" and m != "tinytransformer"
    }


def in_room(module: str, room: tuple[str, ...]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in room)


def test_every_module_of_the_package_sits_in_one_room():
    rooms = (CORE, RUNTIME, COMPARISON, SHARED)
    modules = [
        module_name(path)
        for path in PACKAGE.rglob("*.py")
        if path.parent != PACKAGE or path.stem != "__init__"
    ]
    assert {m for m in modules if sum(in_room(m, room) for room in rooms) != 1} == set()
    assert len(modules) > 40


def test_the_core_imports_nothing_from_the_runtime_and_the_shared_leaves_nothing_else():
    outside = {}
    for path in PACKAGE.rglob("*.py"):
        module, allowed = module_name(path), None
        if in_room(module, CORE):
            allowed = CORE + SHARED
        elif in_room(module, SHARED):
            allowed = SHARED
        if allowed is not None:
            outside[module] = sorted(m for m in ours_imported(path) if not in_room(m, allowed))
    assert len(outside) > 25  # the rooms above exist under these names
    assert {module: names for module, names in outside.items() if names} == {}


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
