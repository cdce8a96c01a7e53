"""DESIGN.md's layering: imports only go down sdk <- calibration <- training <- export."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "sdk": {"torch", "transformers", "training", "export", "calibration"},
    "calibration": {"torch", "transformers", "training", "export"},
    "training": {"export", "calibration"},
    "export": set(),
}


# The one place allowed to name upper-layer modules as strings: the CLI's command table, whose dispatcher
# loads only the command the user asked for.
COMMAND_TABLE = Path("sdk/cli.py")
LOADERS = {"import_module", "__import__", "find_spec", "run_module"}
PACKAGES = ("sdk", "calibration", "training", "export")


def _imports(path: Path, source: str | None = None, rel: Path | None = None) -> set[str]:
    """Top-level modules `path` imports: import statements, and imports hidden in strings (a constant passed
    to importlib.import_module / __import__ / find_spec / runpy.run_module, or any string constant naming a
    project module as "package.module") outside the CLI's command table."""
    tree = ast.parse(source if source is not None else path.read_text(), filename=str(path))
    out: set[str] = set()
    table = rel == COMMAND_TABLE
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and not table:
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            if name in LOADERS and node.args and isinstance(node.args[0], ast.Constant) \
                    and isinstance(node.args[0].value, str):
                out.add(node.args[0].value.split(".")[0])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and not table:
            v = node.value.strip()
            head, dot, rest = v.partition(".")
            if dot and head in PACKAGES and rest.replace(".", "").replace("_", "").isalnum() and " " not in v:
                out.add(head)
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_lower_layers(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        hit = _imports(path, rel=path.relative_to(ROOT)) & FORBIDDEN[package]
        if hit:
            bad.append(f"{path.relative_to(ROOT)}: {sorted(hit)}")
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_import_sdk_is_light() -> None:
    code = (
        "import sys, time; t=time.perf_counter(); import sdk, sdk.analyzer; dt=time.perf_counter()-t; "
        "heavy=[m for m in ('torch','transformers','onnxruntime','training','export','calibration') if m in sys.modules]; "
        "print(heavy); print(dt)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    heavy = out.stdout.splitlines()[0]
    assert heavy == "[]", f"import sdk pulled in {heavy}"


def test_hidden_string_imports_are_caught(tmp_path: Path) -> None:
    """A planted importlib call or module-path string in a temp sdk tree is a violation; the command table
    is not."""
    planted = {
        "loader.py": "import importlib\nm = importlib.import_module('training.model')\n",
        "dunder.py": "m = __import__('export.pipeline')\n",
        "named.py": "MODULE = 'calibration.reader'\n",
    }
    for name, code in planted.items():
        hit = _imports(tmp_path / "sdk" / name, code, Path("sdk") / name) & FORBIDDEN["sdk"]
        assert hit, f"{name} hides an upper-layer import that was not caught"
    clean = "msg = 'see training.model for details'\nx = 'sdk.preprocess'\n"
    assert not _imports(tmp_path / "c.py", clean, Path("sdk/c.py")) & FORBIDDEN["sdk"]
    table = "Command('train', 'export.commands.train')\n"
    assert not _imports(tmp_path / "cli.py", table, COMMAND_TABLE) & FORBIDDEN["sdk"]
