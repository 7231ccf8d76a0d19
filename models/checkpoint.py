"""Checkpoints that ``torch.load(weights_only=True)`` can read, written atomically.

A checkpoint is a plain dict of tensors, dicts, lists, str, int, float, bool and None: model and
optimizer state, the best-so-far model, step, RNG states, the config dict and the feature stage
keys. It reloads without the original command line (nanoGPT-style).
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import zipfile
from pathlib import Path
from typing import Any

import torch

from core.atomic import writer_alive
from core.errors import TrainingError

log = logging.getLogger(__name__)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temp file in the same folder, then rename over ``path``. A failed
    write (disk full) removes its temp file and raises TrainingError; the previous checkpoint
    stays, so the same command resumes from it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(path.name + ".tmp*"):  # left by a writer killed mid-save
        if not writer_alive(stale):
            stale.unlink(missing_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        torch.save(state, tmp)
        tmp.replace(path)
    except (OSError, RuntimeError) as e:  # torch reports ENOSPC as a RuntimeError
        tmp.unlink(missing_ok=True)
        # torch words ENOSPC as "[enforce fail …] unexpected pos …": also ask the file system
        full = getattr(e, "errno", None) == errno.ENOSPC or "No space left" in str(e) \
            or "file write failed" in str(e) or shutil.disk_usage(path.parent).free < 1 << 20
        raise TrainingError(f"cannot write checkpoint {path}: "
                            + ("disk full" if full else str(e).splitlines()[0])
                            + "; free disk space and re-run the same command (training resumes "
                              "from the last checkpoint)") from None


def safe_load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint dict loaded with ``weights_only=True`` (no pickled code runs). TorchScript
    archives (which torch.load would hand to torch.jit.load) and anything that is not a dict are
    refused with a ValueError."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist()):
                raise ValueError("a TorchScript archive, not a checkpoint")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f"holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The checkpoint at ``path``, or None if absent. A corrupt file is moved aside (a miss)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return safe_load(path, map_location)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a cache miss
        bad = path.with_name(path.name + ".corrupt")
        log.warning("checkpoint %s is unreadable (%s); moved to %s, starting the fold afresh", path, e, bad)
        path.replace(bad)
        return None


def capture_rng(generator: torch.Generator) -> dict[str, Any]:
    """RNG states that training consumes: torch's global CPU/CUDA RNGs and the batch generator."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state:
        if not torch.cuda.is_available():
            raise TrainingError("this checkpoint was written on a GPU run; resume it with a GPU")
        torch.cuda.set_rng_state_all(state["cuda"])


def snapshot(obj: Any) -> Any:
    """A copy of a checkpoint's dicts, lists and tensors (tensors on the CPU) that training can go
    on mutating while the copy is written: optimizer moments change in place, lists grow."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class CheckpointWriter:
    """Writes checkpoints in a background thread so that the training loop does not wait for
    the disk: ``submit`` snapshots the state (one device-to-host copy) and returns; the next
    ``submit`` or ``wait`` waits for the previous write and re-raises its error (disk full)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, state: dict[str, Any], wait: bool = False) -> None:
        self.wait()
        copy = snapshot(state)
        if wait:
            save_checkpoint(self.path, copy)
            return

        def write() -> None:
            try:
                save_checkpoint(self.path, copy)
            except BaseException as e:  # noqa: BLE001 - re-raised in the training thread
                self._error = e
        self._thread = threading.Thread(target=write, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's state (for the best-so-far model)."""
    return snapshot(model.state_dict())


def from_record(cls: type, record: dict[str, Any]):
    """A config dataclass from its JSON record (config.json, a checkpoint's config): lists back
    to tuples, fields the class no longer has ignored."""
    import dataclasses
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k in names})


def model_record(config: dict[str, Any], task: str, run: str) -> dict[str, Any]:
    """The model part of a run's config.json (or a checkpoint's config); a run recorded before
    run specs (mmer 0.5: no ``inputs``) is a TrainingError that says to retrain it."""
    if "inputs" not in config or not isinstance(config.get("model"), dict):
        raise TrainingError(f"{task} run {run!r} was trained by an older version of this toolkit "
                            "(its configuration predates run specs); retrain it", then=f"train {task} --run {run}")
    return config["model"]
