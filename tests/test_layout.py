"""The package layout's rules: the import-linter contracts of pyproject.toml hold (and catch a broken one),
no module imports itself through a circle, and a build never loads torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("dynamo_depth", "builders", "train", "eval", "bench")
CONTRACTS = (  # the names in pyproject.toml's [tool.importlinter], as lint-imports prints them (wrapped)
    "Data flow:", "Library layers:", "The build side never imports torch", "Builders never import the loader",
    "The loader never imports the networks", "No import circle between the modules",
)
LINT = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True, no_logo=True))"


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", LINT], cwd=root, env=env, text=True, capture_output=True,
                          timeout=120)


def test_import_contracts_hold() -> None:
    proc = _lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in CONTRACTS:
        assert name in proc.stdout, (name, proc.stdout)
    assert "Contracts: 6 kept, 0 broken." in proc.stdout, proc.stdout


def test_a_forbidden_import_is_caught(tmp_path: Path) -> None:
    """A copy of the tree where the builders' spec imports the loader: two contracts break, named."""
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    spec = tmp_path / "builders" / "spec.py"
    spec.write_text(spec.read_text() + "\nimport dynamo_depth.data  # noqa: E402,F401\n")
    proc = _lint_imports(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Contracts: 4 kept, 2 broken." in proc.stdout, proc.stdout
    assert "builders is not allowed to import torch" in proc.stdout, proc.stdout
    assert "builders.spec -> dynamo_depth.data" in proc.stdout, proc.stdout


def test_no_module_imports_itself_through_a_circle() -> None:
    """Every import m -> d (top-level, function-local or TYPE_CHECKING) has no chain back d -> ... -> m."""
    sys.path.insert(0, str(REPO))
    try:
        graph = grimp.build_graph(*PACKAGES, cache_dir=None)
    finally:
        sys.path.remove(str(REPO))
    circles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain is not None:
                circles.append(" -> ".join((module, *chain)))
    assert circles == [], "\n".join(circles)


def test_a_build_never_loads_torch(tmp_path: Path) -> None:
    """``python -m builders.kitti ... --workers 0`` (the driver and the unit tasks in one process): no torch."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    raw, out = tmp_path / "raw", tmp_path / "out"
    subprocess.run([sys.executable, "-m", "dynamo_depth", "synth", "kitti", str(raw), "--sequences", "1",
                    "--frames", "4", "--small"], cwd=REPO, env=env, check=True, capture_output=True, timeout=300)
    probe = ("import atexit, runpy, sys\n"
             "atexit.register(lambda: print('torch loaded:', 'torch' in sys.modules, flush=True))\n"
             f"sys.argv = ['builders.kitti', {str(raw)!r}, {str(out)!r}, '--workers', '0', '--quiet']\n"
             "runpy.run_module('builders.kitti', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, text=True, capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "torch loaded: False" in proc.stdout, proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["kitti-train-000000.tar", "manifest.index", "manifest.json"]
