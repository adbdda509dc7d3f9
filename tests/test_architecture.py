"""The layers stay layers (ARCHITECTURE.md): each backend package imports only packages below
it, `sync` only the bottom two, and nothing is too long to read. An ast walk over every import,
those inside functions included, so a lazy import cannot hide an upward edge."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lowest first: a package may import itself and any package before it, never one after it.
LAYERS = ("core", "labelstudio", "media", "model", "serving", "tools", "jobs", "http", "demo",
          "cli")
SYNC_MAY_IMPORT = frozenset({"core", "labelstudio"})
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 400


def _sources(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def _imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "backend":  # `from backend import jobs`
                found += [(node.lineno, f"backend.{alias.name}") for alias in node.names]
    return found


def _owner(path: Path) -> tuple[str, str | None]:
    """('backend', layer) or ('sync', None) for a source file."""
    parts = path.relative_to(ROOT).parts
    if parts[0] == "sync":
        return "sync", None
    return "backend", parts[1] if len(parts) > 2 else None


def import_violations(paths: list[Path]) -> list[str]:
    """Every import that goes up a layer, or from sync into the backend's upper layers."""
    wrong = []
    for path in paths:
        top, layer = _owner(path)
        tree = ast.parse(path.read_text(), str(path))
        for line, module in _imported_modules(tree):
            parts = module.split(".")
            where = f"{path.relative_to(ROOT)}:{line} imports {module}"
            if parts[0] == "sync" and top == "backend" and layer != "cli":
                wrong.append(f"{where}: only backend/cli may start the sync")
            if parts[0] != "backend" or len(parts) < 2 or parts[1] not in LAYERS:
                continue
            target = parts[1]
            if top == "sync":
                if target not in SYNC_MAY_IMPORT:
                    wrong.append(f"{where}: sync may import only {sorted(SYNC_MAY_IMPORT)}")
            elif layer is None:
                wrong.append(f"{where}: backend/{path.name} is outside every layer")
            elif LAYERS.index(target) > LAYERS.index(layer):
                wrong.append(f"{where}: {layer} sits below {target}")
    return wrong


def test_every_backend_module_belongs_to_a_layer() -> None:
    loose = [p.name for p in (ROOT / "backend").glob("*.py") if p.name != "__init__.py"]
    packages = {p.name for p in (ROOT / "backend").iterdir()
                if p.is_dir() and (p / "__init__.py").exists()}
    assert loose == []
    assert packages == set(LAYERS)


def test_imports_go_one_way() -> None:
    assert import_violations(_sources("backend", "sync")) == []


def test_the_check_catches_an_upward_import(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # The rule itself: an import from core into http, lazy inside a function, is found.
    fake_root = tmp_path
    (fake_root / "backend" / "core").mkdir(parents=True)
    (fake_root / "sync").mkdir()
    bad = fake_root / "backend" / "core" / "bad.py"
    bad.write_text("def f():\n    from backend.http.app import create_app\n    return create_app\n")
    worse = fake_root / "sync" / "bad.py"
    worse.write_text("import backend.jobs.queues\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    found = import_violations([bad, worse])
    assert len(found) == 2
    assert "core sits below http" in found[0]
    assert "sync may import only" in found[1]


def _long_functions(paths: list[Path]) -> list[str]:
    long = []
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    return long


def test_no_function_too_long_to_read() -> None:
    assert _long_functions(_sources("backend", "sync", "benchmarks", "scripts")) == []


def test_no_module_too_long_to_read() -> None:
    long = [f"{p.relative_to(ROOT)} ({n})"
            for p in _sources("backend", "sync", "benchmarks", "scripts", "tests")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert long == []
