"""Speaker-ID probe on the SER encoder's codes: how much speaker identity the bottleneck keeps.

As in the paper: each utterance's codes (every window's ``crop/f`` codes of ``2d`` values, in
time order) are flattened and zero-padded or truncated to 2048 values; an MLP
2048 → 1024 → 1024 → n_speakers is trained on speaker-dependent 80/20 splits (5-fold,
stratified by speaker) and its test accuracy averaged. Lower accuracy = better disentanglement.

The codes of an utterance come from the SER model of the fold in which it was a *test*
utterance, so the encoder never saw it during training.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from core.errors import TrainingError
from features.frames import FRAME_RATE
from models.runs import RunPaths, read_json, write_json
from models.ser import SERModel
from models.ser_data import ResidentSet, StreamingSet, iter_windows
from pipeline.corpus import Corpus, load_corpus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeConfig:
    input_size: int = 2048
    #: "flatten" (paper): every window's codes in time order, zero-padded/truncated to input_size
    #: (with f=2, d=128 that keeps only the first 8 codes = 16 frames); "mean": the codes' mean
    #: over the utterance's real frames (2d values, zero-padded), the same coverage for any d, f.
    pooling: str = "flatten"
    hidden: tuple[int, ...] = (1024, 1024)
    activation: str = "none"  # "none": linear layers as written in the paper; "relu"
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-4
    n_splits: int = 5
    seed: int = 0


class SpeakerProbe(nn.Module):
    """(B, 2048) → (B, n_speakers)."""

    def __init__(self, n_speakers: int, cfg: ProbeConfig = ProbeConfig()):
        super().__init__()
        dims = [cfg.input_size, *cfg.hidden]
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b)] + ([nn.ReLU()] if cfg.activation == "relu" else [])
        self.net = nn.Sequential(*layers, nn.Linear(dims[-1], n_speakers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@torch.no_grad()
def code_vectors(model: SERModel, data: ResidentSet | StreamingSet, size: int = 2048,
                 max_windows: int = 256, pooling: str = "flatten") -> np.ndarray:
    """(n, size): each utterance's codes, flattened in time order or mean-pooled (see ProbeConfig)."""
    if pooling not in ("flatten", "mean"):
        raise TrainingError(f"probe pooling must be flatten or mean, not {pooling!r}")
    model.eval()
    f = model.cfg.freq
    per_utt: list[list[torch.Tensor]] = [[] for _ in range(len(data))]
    for owner, b in iter_windows(data, model.cfg.crop, max_windows):
        codes = model.encode(b.feats, b.spk).float().cpu()  # (W, crop/f, 2d)
        for i, c, n in zip(owner, codes, b.frames.tolist()):
            # flatten keeps padded windows whole (as the paper); mean uses codes whose block starts
            # on a real frame
            per_utt[i].append(c.flatten() if pooling == "flatten" else c[: -(-n // f)])
    out = np.zeros((len(data), size), dtype=np.float32)
    for i, parts in enumerate(per_utt):
        v = (torch.cat(parts) if pooling == "flatten" else torch.cat(parts).mean(0)).numpy()[:size]
        out[i, :len(v)] = v
    return out


def flatten_frames_seen(dim_neck: int, freq: int, size: int = 2048) -> int:
    """Frames of an utterance whose codes fit the first ``size`` flattened values (2d per code)."""
    return (size // (2 * dim_neck)) * freq


def probe_accuracy(x: np.ndarray, speakers: Sequence[str], cfg: ProbeConfig = ProbeConfig(),
                   device: str = "cpu") -> dict:
    """Mean test accuracy of the probe over ``cfg.n_splits`` speaker-stratified 80/20 splits."""
    from sklearn.model_selection import StratifiedKFold

    names = sorted(set(speakers))
    y = np.array([names.index(s) for s in speakers])
    min_count = np.bincount(y).min()
    if min_count < cfg.n_splits:
        raise TrainingError(f"speaker probe: a speaker has only {min_count} utterance(s); "
                            f"{cfg.n_splits}-fold speaker-dependent splits need at least {cfg.n_splits}")
    skf = StratifiedKFold(cfg.n_splits, shuffle=True, random_state=cfg.seed)
    accs = []
    for k, (tr, te) in enumerate(skf.split(x, y)):
        torch.manual_seed(cfg.seed * 1000 + k)
        net = SpeakerProbe(len(names), cfg).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        xt, yt = torch.from_numpy(x[tr]).to(device), torch.from_numpy(y[tr]).to(device)
        g = torch.Generator().manual_seed(cfg.seed * 1000 + k)
        net.train()
        for _ in range(cfg.epochs):
            for idx in torch.randperm(len(tr), generator=g).split(cfg.batch_size):
                loss = nn.functional.cross_entropy(net(xt[idx]), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            pred = net(torch.from_numpy(x[te]).to(device)).argmax(-1).cpu().numpy()
        accs.append(float((pred == y[te]).mean()))
    return {"accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)), "per_split": accs,
            "n": len(y), "n_speakers": len(names), "chance": float(np.bincount(y).max() / len(y))}


def run_codes(workdir, run: str, corpus: Corpus | None = None, source=None, device: str = "cpu",
              size: int = 2048, pooling: str = "flatten") -> tuple[list[str], np.ndarray]:
    """Code vectors of every test utterance of a finished SER run: (ids, (n, size))."""
    from models.ser_train import iter_test_folds

    ids_all, xs = [], []
    for _, model, test, data in iter_test_folds(workdir, run, corpus, source, device):
        xs.append(code_vectors(model, data, size, pooling=pooling))
        ids_all += test
    return ids_all, np.concatenate(xs)


def probe_speaker(workdir, run: str, cfg: ProbeConfig = ProbeConfig(), device: str = "cpu",
                  corpus: Corpus | None = None, source=None) -> dict:
    """Codes of run ``run`` → probe accuracy; writes ``runs/ser/<run>/probe_speaker.json``."""
    corpus = corpus or load_corpus(workdir)
    config = RunPaths(workdir, "ser", run).config
    if config.exists() and "head" in read_json(config).get("model", {}):
        raise TrainingError(f"SER run {run!r} is a reference head: it has no encoder codes to probe "
                            "(the speaker probe is for the paper's network)")
    ids, x = run_codes(workdir, run, corpus, source, device, cfg.input_size, cfg.pooling)
    spk = {u.id: u.speaker for u in corpus.utterances}
    result = {"run": run, **probe_accuracy(x, [spk[i] for i in ids], cfg, device),
              "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()}}
    if cfg.pooling == "flatten":
        model = read_json(RunPaths(workdir, "ser", run).config)["model"]
        seen = flatten_frames_seen(model["dim_neck"], model["freq"], cfg.input_size)
        result["frames_seen"] = seen
        if seen < model["crop"]:
            log.warning("flatten pooling: %d-value vectors hold only the first %d frames (%.2f s) of "
                        "each utterance for this run's codes (d=%d, f=%d); --pooling mean covers every "
                        "frame and compares runs of different d, f fairly", cfg.input_size, seen,
                        seen / FRAME_RATE, model["dim_neck"], model["freq"])
    name = "probe_speaker.json" if cfg.pooling == "flatten" else f"probe_speaker_{cfg.pooling}.json"
    write_json(RunPaths(workdir, "ser", run).root / name, result)
    log.info("speaker probe on %s codes: accuracy %.3f (chance %.3f, %d speakers)", run,
             result["accuracy"], result["chance"], result["n_speakers"])
    return result
