"""Whether this Python recompiles the model libraries on every command.

Container images often set ``PYTHONDONTWRITEBYTECODE=1`` and ship packages without ``__pycache__``:
every process then compiles torch's and transformers' sources before it can start (8–10 s of a
cold ``extract`` on an H200 host, bench/RESULTS.md 2026-12-01). ``python -m compileall`` once on
the site-packages (or unsetting the variable) removes that cost.
"""
from __future__ import annotations

import importlib.util
import os
import sys

#: libraries whose import dominates a cold command
HEAVY = ("torch", "transformers")


def uncached(modules: tuple[str, ...] = HEAVY, dont_write: bool | None = None) -> list[str]:
    """The installed ``modules`` whose package bytecode is neither cached nor going to be (Python
    told not to write it); [] when Python writes bytecode (only its first run compiles)."""
    if not (sys.flags.dont_write_bytecode if dont_write is None else dont_write):
        return []
    out = []
    for name in modules:
        spec = importlib.util.find_spec(name)  # does not import it
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        if not os.path.exists(importlib.util.cache_from_source(spec.origin)):
            out.append(name)
    return out


def advice(names: list[str]) -> str:
    site = sorted({os.path.dirname(os.path.dirname(importlib.util.find_spec(n).origin)) for n in names})
    return (f"Python is not caching bytecode (PYTHONDONTWRITEBYTECODE is set) and {', '.join(names)} "
            f"ship(s) none: every command compiles their sources first (≈ 10 s). Run once "
            f"`python -m compileall -q {' '.join(site)}` (or unset PYTHONDONTWRITEBYTECODE)")
