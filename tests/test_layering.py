"""STYLE 1: split by who may sign. An `ast` walk over every module checks who imports whom.

* `gateway/` never imports `ca/` or `keys/` (it talks to the CA over HTTP only);
* `policy/` imports nothing of ours except `policy`;
* only `ca/` imports `keys/`.
"""

from __future__ import annotations

import ast
import gc
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = ("ca", "gateway", "policy", "keys", "common", "demo")


def _imports(path: Path) -> set[str]:
    """Top-level packages of ours that a module imports (absolute and relative)."""
    # No garbage collection inside ast.parse: a finalizer that runs there (an event loop or
    # task left by an earlier test, logging as it goes) trips CPython 3.11's "AST
    # constructor recursion depth mismatch" SystemError.
    enabled = gc.isenabled()
    gc.disable()
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    finally:
        if enabled:
            gc.enable()
    package = path.relative_to(ROOT).parts[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: stays inside the same package
                found.add(package)
            elif node.module:
                found.add(node.module.split(".")[0])
    return found & set(OURS)


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize(("package", "forbidden"), [
    ("gateway", {"ca", "keys"}),
    ("policy", set(OURS) - {"policy"}),
    ("common", {"ca", "keys", "gateway", "demo"}),
])
def test_forbidden_imports_STYLE_1(package: str, forbidden: set[str]) -> None:
    """No module of `package` imports one of `forbidden`."""
    modules = _modules(package)
    assert modules, f"no modules found under {package}/"
    offenders = {str(m.relative_to(ROOT)): sorted(_imports(m) & forbidden) for m in modules}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_ca_imports_keys_STYLE_1() -> None:
    """`keys/` (the CA's signing keys) is imported by `ca/` and itself only."""
    offenders = [
        str(m.relative_to(ROOT)) for package in OURS if package not in ("ca", "keys")
        for m in _modules(package) if "keys" in _imports(m)
    ]
    assert offenders == []


def test_walker_sees_a_violation() -> None:
    """The twin: the walker does find an import when there is one."""
    sample = ROOT / "gateway" / "app.py"
    assert "policy" in _imports(sample) and "gateway" in _imports(sample)
