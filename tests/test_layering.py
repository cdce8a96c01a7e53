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


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_lower_layers(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        hit = _imports(path) & FORBIDDEN[package]
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
