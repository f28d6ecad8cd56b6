"""The README and docs/*.md name only files that exist and functions those files define, the README reads in
the order a newcomer needs it, and neither tells the project's history."""

import ast
import importlib.util
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

# A repo path as the pages name it: it starts at one of these dirs (not inside another path or URL) and ends
# before a space, quote, bracket, `:name` or punctuation. `Makefile` and `pyproject.toml` are named bare.
PATH = re.compile(r"(?<![\w./$-])(?:src|conf|tests|scripts|docs)/[^\s`'\"()\[\]|,;:]*")
ROOT_FILE = re.compile(r"(?<![\w./-])(?:Makefile|pyproject\.toml)\b")
# `path.py:name` or `path.py:Class.method`.
REFERENCE = re.compile(
    r"(?<![\w./$-])((?:src|conf|tests|scripts|docs)/[\w./-]+\.py):([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)"
)
# Placeholders and patterns, not paths: `<run dir>`, `tests/test_token_cache*.py`, `{a,b}`, `...`.
NOT_A_PATH = re.compile(r"[*<>{}$]|\.\.\.")
# A markdown link's target: `[text](target)`, resolved from the page's own dir.
LINK = re.compile(r"\]\(([^)\s]+)\)")
PACKAGE = ROOT / "src" / "tinytransformer"
CODE_MAP = ROOT / "docs" / "code_map.md"

SECTIONS = [
    "What it is",
    "Where things happen",
    "Everyday commands",
    "Extending",
    "Comparing regularization",
    "The run directory",
    "Scaling out",
]
MAX_README_LINES = 400
HISTORY = re.compile(r"\bissues?\s*#?\s*\d+|\bthis round\b|\bbefore the redesign\b", re.I)


def page_name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def named_paths(text: str) -> set[str]:
    paths = {m.group(0).rstrip(".") for m in PATH.finditer(text)} | set(ROOT_FILE.findall(text))
    return {p for p in paths if not NOT_A_PATH.search(p)}


def linked_files(page: Path) -> set[str]:
    """The targets of the page's markdown links that are files of the repo (no URL), as repo paths."""
    targets = {m.split("#")[0] for m in LINK.findall(page.read_text()) if "://" not in m}
    return {Path(os.path.relpath((page.parent / t).resolve(), ROOT)).as_posix() for t in targets if t}


def defines(source: Path, dotted: str) -> bool:
    """Whether the Python file defines `name` (a function, class or assignment) or `Class.method`."""
    scope = ast.parse(source.read_text()).body
    for part in dotted.split("."):
        node = next((n for n in scope if part in defined_names(n)), None)
        if node is None:
            return False
        scope = getattr(node, "body", [])
    return True


def defined_names(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
    return {t.id for t in targets if isinstance(t, ast.Name)}


def fenced_code_removed(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def test_every_path_the_docs_name_exists():
    missing = [
        f"{page_name(page)}: {path}"
        for page in PAGES
        for path in sorted(named_paths(page.read_text()) | linked_files(page))
        if not (ROOT / path).exists()
    ]
    assert not missing, "paths named or linked but not in the repo:\n" + "\n".join(missing)


def test_the_code_map_names_only_modules_that_exist():
    """Its rows name modules relative to src/tinytransformer/ (`model/transformer.py`, `cli.py`)."""
    rows = [line.split("|")[1] for line in CODE_MAP.read_text().splitlines() if line.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`([\w/.]+)`", row)}
    missing = sorted(name for name in named if not PATH.match(name) and not (PACKAGE / name).exists())
    assert named and not missing, f"the code map names modules that src/tinytransformer/ lacks: {missing}"


def test_every_function_the_docs_point_at_is_defined_in_its_file():
    wrong = []
    for page in PAGES:
        for path, name in sorted(set(REFERENCE.findall(page.read_text()))):
            name = name.rstrip(".")
            if not (ROOT / path).is_file() or not defines(ROOT / path, name):
                wrong.append(f"{page_name(page)}: {path}:{name}")
    assert not wrong, "references to a file that does not define the name:\n" + "\n".join(wrong)


def test_the_readme_has_its_sections_in_the_order_a_reader_needs_them():
    headings = re.findall(r"^## (.+?)\s*$", fenced_code_removed(README.read_text()), re.M)
    assert headings == SECTIONS, f"README sections {headings}, expected {SECTIONS}"


def test_the_readme_is_at_most_400_lines():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail to docs/"


def test_no_page_tells_the_projects_history():
    found = [
        f"{page_name(page)}:{number}: {line.strip()}"
        for page in PAGES
        for number, line in enumerate(page.read_text().splitlines(), 1)
        if HISTORY.search(line)
    ]
    assert not found, "history wording (issue numbers, 'this round'):\n" + "\n".join(found)


def per_step_hooks() -> list[str]:
    text = README.read_text()
    start, end = text.index("<!-- per-step hooks -->"), text.index("<!-- /per-step hooks -->")
    return re.findall(r"^\d+\. `(\w+)`", text[start:end], re.M)


def lightning_hook_names() -> set[str]:
    """Every method of Lightning's Callback and LightningModule (hooks included), read from its source."""
    spec = importlib.util.find_spec("lightning")
    if spec is None or spec.origin is None:
        pytest.skip("lightning is not installed")
    package = Path(spec.origin).parent / "pytorch"
    names = set()
    for source in ("callbacks/callback.py", "core/hooks.py", "core/module.py"):
        for node in ast.walk(ast.parse((package / source).read_text())):
            if isinstance(node, ast.FunctionDef):
                names.add(node.name)
    return names


def test_the_readme_lists_the_per_step_hooks_by_their_lightning_names():
    hooks = per_step_hooks()
    assert "training_step" in hooks, hooks
    assert hooks.index("on_train_batch_start") < hooks.index("on_train_batch_end"), hooks
    unknown = sorted(set(hooks) - lightning_hook_names())
    assert not unknown, f"not hooks of Lightning's Callback or LightningModule: {unknown}"
