"""The weight files of a transformers folder, read without transformers (for the plain-torch
encoders: ``features/wav2vec2_encoder.py``, ``features/bert_encoder.py``)."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Mapping

import torch
from torch.nn import functional as F

log = logging.getLogger(__name__)

#: transformers' ``ACT2FN`` names that the plain encoders compute the same way
ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu, "swish": F.silu}


class Container(torch.nn.Module):
    """Named children, keeping transformers' parameter paths (``attention.self.query``, ...)."""

    def __init__(self, children: dict[str, torch.nn.Module]):
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)


#: the weight files transformers reads from a folder, in its order of preference
_WEIGHTS = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
            "pytorch_model.bin")


def weight_files(folder: Path) -> list[Path]:
    """The files transformers would load (the first of _WEIGHTS there; an index names its
    shards), not every ``*.safetensors`` a folder happens to hold; [] if none."""
    for name in _WEIGHTS:
        path = folder / name
        if path.is_file():
            if not name.endswith(".index.json"):
                return [path]
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            return [folder / Path(s).name for s in shards]  # names, never paths out of the folder
    return []


def read_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    """The tensors of ``files``, memory-mapped on the CPU. (Moved to a GPU tensor by tensor
    afterwards: 0.20 s for wav2vec2-large on an H200, against 0.24-0.30 s through safetensors'
    own CUDA loading, which also leaves 9 page-locked staging blocks cached for the run.)"""
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(f))
        else:
            state.update(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
    return state


def module_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor], prefix: str,
                 rename=lambda key: key) -> dict[str, torch.Tensor]:
    """``state``'s tensors under ``module``'s names: ``prefix`` (a pretraining or task
    checkpoint's base-model prefix) dropped, ``rename`` applied, keys outside ``module``'s
    top-level children (heads, poolers, quantizers) left out."""
    children = tuple(f"{name}." for name, _ in module.named_children())
    renamed = ((rename(key.removeprefix(prefix)), value) for key, value in state.items())
    return {key: value for key, value in renamed if key.startswith(children)}


def matching_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor], prefix: str, what: str,
                   rename=lambda key: key) -> dict[str, torch.Tensor] | None:
    """:func:`module_state`, or None (logged) unless its tensors are exactly ``module``'s."""
    out = module_state(module, state, prefix, rename)
    out.pop("embeddings.position_ids", None)  # a buffer older transformers saved, never a weight
    expected = set(module.state_dict())
    if set(out) != expected:
        log.debug("%s: weights do not match (missing %s, unexpected %s)", what,
                  sorted(expected - set(out))[:5], sorted(set(out) - expected)[:5])
        return None
    return out


def assign_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], device: torch.device,
                   dtype: torch.dtype) -> torch.nn.Module:
    """``module`` (built on the meta device) given ``state`` on ``device``, floating tensors in
    ``dtype`` (cast there, not on the host); eval mode, no gradients."""
    state = {k: v.to(device).to(dtype) if v.is_floating_point() else v.to(device) for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval().requires_grad_(False)


def load_plain(folder: Path, make, what: str, device: torch.device, dtype: torch.dtype,
               rename=lambda key: key) -> torch.nn.Module | None:
    """A plain-torch encoder of ``folder``: ``make(config dict)`` gives (the module built on the
    meta device, its weights' prefix in task checkpoints) or None where it does not compute that
    config; the weights transformers would read are then given to it on ``device`` in ``dtype``.
    None (logged) where the folder is not one it computes, or cannot be read: the caller then
    loads it with transformers, whose loader reports what is wrong with a broken one."""
    try:
        cfg_file, files = folder / "config.json", weight_files(folder)
        if not cfg_file.is_file() or not files:
            return None
        made = make(json.loads(cfg_file.read_text()))
        if made is None:
            return None
        module, prefix = made
        state = matching_state(module, read_weights(files), prefix, what, rename)
    except Exception as e:  # noqa: BLE001 - a broken config or weights file: transformers decides
        log.debug("%s: cannot read %s (%s)", what, folder, e)
        return None
    if state is None:
        return None
    log.debug("%s: %s (no transformers modeling import), weights from %s", folder, what,
              ", ".join(f.name for f in files))
    return assign_weights(module, state, device, dtype)
