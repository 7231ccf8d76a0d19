"""Untrusted files and strings: no pickled code runs, no shell strings, no network but Gentle.

The pickles below would create a marker file if anything unpickled them with the standard
unpickler; every test checks that the marker does not exist afterwards.
"""
from __future__ import annotations

import ast
import builtins
import functools
import logging
import os
import subprocess
from pathlib import Path

import pytest
import torch

from core.errors import StageError
from features.fairseq_convert import load_checkpoint as load_fairseq
from models.checkpoint import load_checkpoint
from models.folds import make_folds
from models.runs import RunPaths, read_json, read_predictions
from models.trainer import TrainConfig, train_fold
from tests.fixtures.corpora import make_corpus
from tests.fixtures.tasks import LinearTask
from tests.reliability.runner import REPO

PRODUCT = [REPO / "cli.py"] + [p for d in ("core", "pipeline", "features", "models", "commands", "bench")
                               for p in sorted((REPO / d).rglob("*.py"))]


class Payload:
    """Unpickling this with the standard unpickler calls ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker: Path) -> dict[str, Payload]:
    return {
        "builtins.open": Payload(builtins.open, str(marker), "w"),
        "os.system": Payload(os.system, f"touch {marker}"),
        "subprocess.Popen": Payload(subprocess.Popen, ["touch", str(marker)]),
        "functools.partial": Payload(functools.partial(Path.touch, marker)),
        "builtins.exec": Payload(builtins.exec, f"open({str(marker)!r}, 'w')"),
    }


@pytest.mark.parametrize("kind", list(payloads(Path("x"))))
def test_fairseq_loader_refuses_code(tmp_path, kind):
    marker = tmp_path / "pwned"
    torch.save({"model": {"w": torch.ones(2)}, "args": payloads(marker)[kind]}, tmp_path / "x.pt")
    with pytest.raises(StageError, match="refusing to load"):
        load_fairseq(tmp_path / "x.pt")
    assert not marker.exists()


def test_fairseq_loader_refuses_unknown_classes(tmp_path):
    """A class the allowlist does not know (here one of this module) is refused, not built."""
    torch.save({"model": {}, "cfg": Payload(Payload, print, "never")}, tmp_path / "x.pt")
    with pytest.raises(StageError, match="refusing to load global"):
        load_fairseq(tmp_path / "x.pt")


def _fold(tmp_path, name: str):
    corpus = make_corpus(n_groups=2, per_class=3)
    (fold,) = make_folds(corpus, "G0", val_fraction=0.25)
    task = LinearTask(corpus)
    cfg = TrainConfig(steps=12, batch_size=4, lr=0.05, eval_every=4, progress=False)
    paths = RunPaths(tmp_path / name, "toy", "run")
    return task, fold, cfg, paths


@pytest.mark.parametrize("damage", ["pickled code", "truncated"])
def test_trainer_checkpoint_is_a_miss_and_never_runs_code(tmp_path, caplog, damage):
    """A resumable checkpoint holding pickled code (or cut short) is refused with a warning,
    moved aside as ``checkpoint.pt.corrupt``, and the fold retrains to the same result."""
    task, fold, cfg, clean = _fold(tmp_path, "clean")
    train_fold(task, fold, cfg, clean)
    task, fold, cfg, paths = _fold(tmp_path, "bad")
    ckpt = paths.checkpoint("G0")
    ckpt.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    if damage == "pickled code":
        torch.save({"step": 4, "model": payloads(marker)["builtins.open"]}, ckpt)
    else:
        torch.save(torch.load(clean.checkpoint("G0"), weights_only=True), ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:300])
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(ckpt) is None
    assert "unreadable" in caplog.text and ckpt.with_name("checkpoint.pt.corrupt").exists()
    assert not marker.exists()
    ckpt.with_name("checkpoint.pt.corrupt").replace(ckpt)  # as a resumed run would find it
    train_fold(task, fold, cfg, paths)
    assert not marker.exists()
    assert read_predictions(paths.predictions("G0")) == read_predictions(clean.predictions("G0"))
    a, b = (read_json(p.fold_metrics("G0")) for p in (clean, paths))
    assert a["test"] == b["test"] and a["history"] == b["history"]


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.AST) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return f"{_name(func.value)}.{func.attr}"
    return "?"


def _kw(call: ast.Call, key: str):
    return next((k.value for k in call.keywords if k.arg == key), None)


def unsafe_calls(source: str, where: str) -> list[str]:
    """Shell strings, eval/exec, unrestricted unpickling and pickle-enabled loads in ``source``."""
    problems = []
    for call in _calls(ast.parse(source, where)):
        name, at = _name(call.func), f"{where}:{call.lineno}"
        shell = _kw(call, "shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            problems.append(f"{at}: shell=")
        if name in ("os.system", "os.popen", "eval", "exec", "pickle.load", "pickle.loads",
                    "yaml.load", "marshal.loads") or name.startswith(("os.exec", "os.spawn")):
            problems.append(f"{at}: {name}()")
        if name.startswith("subprocess.") and call.args and not isinstance(
                call.args[0], (ast.List, ast.Tuple)):
            problems.append(f"{at}: {name} with a command that is not a literal list")
        if name == "torch.load":
            wo = _kw(call, "weights_only")
            safe = isinstance(wo, ast.Constant) and wo.value is True
            restricted = _kw(call, "pickle_module") is not None  # fairseq's restricted one
            if not (safe or restricted):
                problems.append(f"{at}: torch.load without weights_only=True")
        if name.endswith("np.load") or name == "numpy.load":
            ap = _kw(call, "allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                problems.append(f"{at}: np.load(allow_pickle=...)")
    return problems


def test_the_static_check_flags_unsafe_calls():
    bad = """
import os, subprocess, torch, numpy as np
subprocess.run("sox " + path, shell=True)
subprocess.check_output(f"ffmpeg -i {path}")
os.system("rm " + path)
torch.load(p)
torch.load(p, weights_only=False)
np.load(p, allow_pickle=True)
eval(expr)
subprocess.run(["git", "rev-parse"], shell=False)
torch.load(p, weights_only=True)
"""
    assert len(unsafe_calls(bad, "bad.py")) == 8  # the two last lines are fine


def test_product_code_has_no_shell_no_eval_and_only_safe_loads():
    """Static check of cli.py, core/, pipeline/, features/, models/, commands/, bench/."""
    problems = [x for p in PRODUCT for x in unsafe_calls(p.read_text(), str(p.relative_to(REPO)))]
    assert problems == []


def test_only_the_gentle_client_speaks_http():
    """No product module imports an HTTP or socket client except features/gentle.py, which only
    talks to the server the user configured (no hub downloads, no telemetry)."""
    banned = {"urllib.request", "requests", "httpx", "http.client", "socket", "aiohttp",
              "urllib3", "ftplib", "smtplib"}
    found = []
    for path in PRODUCT:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            hit = [n for n in names if n in banned]
            if hit and path.relative_to(REPO).as_posix() != "features/gentle.py":
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: {hit}")
    assert found == []


def test_a_killed_checkpoint_write_leaves_no_temp_file_behind(tmp_path):
    task, fold, cfg, paths = _fold(tmp_path, "run")
    litter = paths.checkpoint("G0").with_name("checkpoint.pt.tmp99999")
    litter.parent.mkdir(parents=True)
    litter.write_bytes(b"half a checkpoint")  # what a SIGKILL inside torch.save leaves
    train_fold(task, fold, cfg, paths)
    assert list(litter.parent.glob("checkpoint.pt.tmp*")) == []
