"""Whether a fold's checkpoint resumes: the same configuration (error otherwise), the same data
and features (else the fold retrains, saying why), and whether it is already finished."""
from __future__ import annotations

import logging

from core.errors import TrainingError
from models.checkpoint import load_checkpoint
from models.run_identity import explain_change
from models.runs import RunPaths

log = logging.getLogger(__name__)

# Fields that may change between a run and its resumption without invalidating the checkpoint.
RESUMABLE_CHANGES = {"steps", "epochs", "progress", "patience", "checkpoint_every",
                     "checkpoint_minutes"}


def check_resumable(ckpt: dict, record: dict, path) -> None:
    old, new = dict(ckpt["config"]), dict(record)
    old_train = {k: v for k, v in old.pop("train").items() if k not in RESUMABLE_CHANGES}
    new_train = {k: v for k, v in new.pop("train").items() if k not in RESUMABLE_CHANGES}
    if old != new or old_train != new_train:
        raise TrainingError(f"{path} was written with another configuration; use another run name "
                            f"or delete that folder to start afresh")


def load_unless_changed(task: str, fold: str, record: dict, keys: dict, data: dict,
                        paths: RunPaths) -> dict | None:
    """The fold's checkpoint if it was made from exactly ``data`` (else its outputs are removed
    and the fold retrains, saying why); a changed configuration is an error."""
    ckpt = load_checkpoint(paths.checkpoint(fold))
    if ckpt is None:
        return None
    check_resumable(ckpt, record, paths.checkpoint(fold))
    changes = explain_change(ckpt.get("data"), data)
    old_keys = dict(ckpt.get("feature_keys") or {})
    if old_keys != dict(keys):
        changes.append("feature stages changed (" + ", ".join(
            f"{s}: {str(old_keys.get(s))[:12]} -> {str(keys.get(s))[:12]}"
            for s in sorted(set(old_keys) | set(keys)) if old_keys.get(s) != keys.get(s)) + ")")
    if not changes:
        return ckpt
    log.warning("%s fold %s: retraining from the start: %s", task, fold, "; ".join(changes))
    for old in (paths.checkpoint(fold), paths.predictions(fold), paths.fold_metrics(fold)):
        old.unlink(missing_ok=True)
    return None


def already_done(ckpt: dict | None, steps: int, paths: RunPaths, fold: str) -> bool:
    """Whether the checkpoint is a finished fold of exactly this schedule (a longer one resumes)."""
    if ckpt is None:
        return False
    if ckpt["step"] > steps:
        raise TrainingError(
            f"{paths.checkpoint(fold)} is at step {ckpt['step']} > the {steps} steps asked for "
            f"(an earlier, longer schedule): ask for at least {ckpt['step']} steps (--steps, or "
            f"--crops = steps × batch size) to resume it, or use another --run name or delete "
            f"that fold's folder to start afresh")
    return bool(ckpt["done"] and (ckpt["step"] == steps or ckpt["stopped_early"])
                and paths.fold_metrics(fold).exists())
