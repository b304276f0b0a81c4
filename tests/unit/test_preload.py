"""The worker's code must not change under it while dpkg replaces its files (``preload``): every module
that ours or rq's code imports inside a function must already be imported by ``preload()``.

Found by reading the source (every function-level ``import``/``from … import`` of both packages), checked
in a fresh interpreter that ran only ``preload()``. It fails when a lazy import of a module that
``preload`` does not import is added (or ``preload`` stops importing one), naming it."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from rq_worker_service.preload import PACKAGES, SKIPPED


def _module_of(path: Path, root: Path, package: str) -> tuple[str, bool]:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_package else module.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def lazy_imports(package: str) -> dict[str, str]:
    """module imported inside a function → where (the first such place)."""
    root = Path(importlib.util.find_spec(package).origin).parent
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        module, is_package = _module_of(path, root, package)
        if module.startswith(SKIPPED):
            continue
        for function in ast.walk(ast.parse(path.read_text())):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = _absolute(node, module, is_package)
                    names = [base] + [f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}")]
                for name in names:
                    found.setdefault(name, f"{module}:{node.lineno}")
    return found


def test_every_lazily_imported_module_is_preloaded():
    lazy = {}
    for package in PACKAGES:
        lazy.update(lazy_imports(package))
    assert "rq_worker_service.journal" in lazy  # the scan sees our own lazy imports (the test could not fail otherwise)
    assert any(name.startswith("rq.") for name in lazy)  # and rq's
    loaded = json.loads(subprocess.run(
        [sys.executable, "-c", "import json, sys\nfrom rq_worker_service.preload import preload\npreload()\n"
                               "print(json.dumps(sorted(sys.modules)))"],
        check=True, capture_output=True, text=True).stdout)
    missing = {name: where for name, where in lazy.items()
               if name not in loaded and _is_module(name) and not name.startswith(SKIPPED)}
    assert not missing, f"imported inside a function but not by preload(): {missing}"


def test_the_scan_finds_a_lazy_import(tmp_path, monkeypatch):
    """The scan itself: a function-level import in a package is reported (relative and absolute)."""
    package = tmp_path / "lazypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    import colorsys\n    from . import b\n")
    (package / "b.py").write_text("import os\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    found = lazy_imports("lazypkg")
    assert set(found) == {"colorsys", "lazypkg", "lazypkg.b"}
    assert found["colorsys"] == "lazypkg.a:2"
