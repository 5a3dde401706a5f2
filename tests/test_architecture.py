"""The stage order is a checked contract: layers, no import circles, imports at the top, ruff clean."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "adkit"


def test_layers_contract_holds():
    """``[tool.importlinter]`` in pyproject.toml: every stage imports only the stages below it."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    out = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "0 broken" in out.stdout, out.stdout[-3000:]


def test_no_import_circles():
    graph = grimp.build_graph("adkit")
    circles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back:
                circles.append(f"{module} -> {' -> '.join(back)}")
    assert not circles, "\n".join(circles)


def function_imports(path: Path) -> list[str]:
    """``file:line`` of every import statement inside a function body."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [f"{path.relative_to(ROOT)}:{n.lineno}" for n in ast.walk(node)
                      if isinstance(n, (ast.Import, ast.ImportFrom))]
    return found


def test_imports_sit_at_the_top_of_modules():
    """The command line may import a stage per subcommand (so ``adkit --help`` stays quick); no other module does."""
    hidden = [hit for path in sorted(PACKAGE.rglob("*.py")) if path.name != "cli.py" for hit in function_imports(path)]
    assert not hidden, hidden


def test_ruff_is_clean():
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    out = subprocess.run([exe, "check", "adkit", "tests", "benchmarks", "notebooks"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-3000:]
