"""The warning about a Python that recompiles torch on every command."""
from __future__ import annotations

import importlib.util
import os

from core.bytecode import advice, uncached


def test_no_warning_where_python_writes_bytecode():
    assert uncached(dont_write=False) == []


def test_a_module_without_cached_bytecode_is_named(tmp_path, monkeypatch):
    pkg = tmp_path / "bigpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert uncached(("bigpkg", "no_such_package_here"), dont_write=True) == ["bigpkg"]
    assert "compileall" in advice(["bigpkg"]) and str(tmp_path) in advice(["bigpkg"])
    cached = importlib.util.cache_from_source(str(pkg / "__init__.py"))
    os.makedirs(os.path.dirname(cached), exist_ok=True)
    with open(cached, "wb") as f:
        f.write(b"")  # present: Python would read it (here its content does not matter)
    assert uncached(("bigpkg",), dont_write=True) == []
