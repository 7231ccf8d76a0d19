"""What a run records about how it was made: code commit (+ dirty flag), command line, package
versions, device and a fingerprint of the corpus it was trained on."""
from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "numpy", "transformers", "h5py", "scikit-learn", "ctranslate2")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_version() -> dict[str, Any]:
    """``{"commit", "dirty"}`` of this project's own repository; "unknown" when the project is
    not a git checkout itself (a copy inside another repository must not report that one's)."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != REPO:
        return {"commit": "unknown", "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": _git("rev-parse", "--short=12", "HEAD") or "unknown",
            "dirty": bool(status) if status is not None else None}


def project_version() -> str:
    """This code's version: its own pyproject.toml where it runs from a checkout (an editable
    install's package metadata keeps the version of the last ``pip install -e``, however far
    the checkout has moved since), else the installed package's."""
    import tomllib
    try:
        return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        pass
    try:
        return metadata.version("mmer")
    except metadata.PackageNotFoundError:  # run from a copy that setup.sh has not installed
        return "not installed"


def corpus_fingerprint(workdir: str | Path) -> str:
    """sha256 (16 hex) of the prepared corpus file: ids, audio paths, speakers, labels, groups."""
    try:
        return hashlib.sha256((Path(workdir) / "corpus.jsonl").read_bytes()).hexdigest()[:16]
    except OSError:
        return "unknown"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def provenance(workdir: str | Path, device: str = "") -> dict[str, Any]:
    """Everything recorded in a run's config.json at training time."""
    return {**code_version(), "command": " ".join(sys.argv), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "corpus": corpus_fingerprint(workdir), "versions": versions(), "device": str(device),
            "host": platform.node()}
