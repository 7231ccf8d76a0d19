"""Packaged text encoders (features/text_models.py): a split zip joined in order, extracted once,
weights verified; a missing package or a damaged part says how to install it."""
from __future__ import annotations

import io
import zipfile

import pytest

import features.text_models as tm
from core.errors import StageError
from core.hashing import file_checksum
from tests.fixtures.encoders import save_tiny_text_encoder


def _split_package(tmp_path, monkeypatch, corrupt: bool = False):
    """A tiny encoder zipped under a root folder and split in three parts, as mpnet-base ships."""
    folder = save_tiny_text_encoder(tmp_path / "enc", "bert")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in folder.iterdir():
            zf.write(p, f"tiny/{p.name}")
    data = buf.getvalue()
    cuts = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    parts = []
    for i in range(3):
        part = tmp_path / f"tiny.zip.00{i + 1}"
        part.write_bytes(data[cuts[i]:cuts[i + 1]])
        parts.append((f"tiny-part-{i + 1}", str(part)))
    sha = "0" * 64 if corrupt else file_checksum(folder / "model.safetensors")
    monkeypatch.setitem(tm.PACKAGED, "tiny", tm.Packaged("tiny-model", tuple(parts), "tiny", sha,
                                                         "pip install tiny-parts"))
    monkeypatch.setattr(tm, "part_path", lambda dist, file: tm.Path(file))
    monkeypatch.setenv("MMER_MODEL_CACHE", str(tmp_path / "cache"))
    return folder


def test_a_split_package_is_joined_extracted_once_and_loads(tmp_path, monkeypatch):
    from features.base import ItemInput
    from features.text import TextConfig, TextExtractor
    original = _split_package(tmp_path, monkeypatch)
    got = tm.packaged_folder("tiny")
    assert got == tmp_path / "cache" / "tiny-model" and (got / ".verified").exists()
    assert file_checksum(got / "model.safetensors") == file_checksum(original / "model.safetensors")
    assert tm.packaged_folder("tiny") == got  # second call: no extraction
    out = TextExtractor(TextConfig(model="tiny"))([ItemInput("u", text="so happy")])[0]
    assert out["tokens"].shape[1] == 32


def test_damaged_or_missing_packages_say_how_to_install(tmp_path, monkeypatch):
    _split_package(tmp_path, monkeypatch, corrupt=True)
    with pytest.raises(StageError, match="model.safetensors has sha256 .* reinstall it: pip install tiny-parts"):
        tm.packaged_folder("tiny")
    assert not (tmp_path / "cache" / "tiny-model").exists()  # nothing half-extracted is kept
    monkeypatch.undo()
    monkeypatch.setenv("MMER_MODEL_CACHE", str(tmp_path / "cache2"))
    monkeypatch.setitem(tm.PACKAGED, "absent", tm.Packaged("absent", (("no-such-dist-xyz", "a.zip"),), "",
                                                           "0" * 64, "pip install absent"))
    with pytest.raises(StageError, match="package no-such-dist-xyz is not installed; install it with: "
                                         "pip install absent"):
        tm.packaged_folder("absent")
