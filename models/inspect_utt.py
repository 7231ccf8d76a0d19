"""``inspect UTT_ID``: one utterance as the SER model saw it, in one figure — waveform, cached mel
spectrogram, the phone alignment tier, and the class probabilities of each inference window of
the run's fold that tested it (the utterance's score is their mean)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.errors import TrainingError
from features.frames import FRAME_RATE
from models import figures
from pipeline.corpus import load_corpus


@dataclass
class Inspection:
    utt_id: str
    label: str
    fold: str  # the fold whose test split held the utterance
    classes: list[str]
    window_probs: np.ndarray  # (W, C): each window's class probabilities
    figure: Path  # PNG; the SVG lies beside it


def _test_fold(run, utt_id: str) -> str:
    for fold in run.folds:
        if any(r["id"] == utt_id and r["split"] == "test" for r in run.predictions(fold)):
            return fold
    raise TrainingError(f"{utt_id}: no current fold of SER run {run.paths.run!r} tested it "
                        "(no features, or its fold is stale)", then=f"train ser --run {run.paths.run}")


@torch.no_grad()
def window_scores(model, data, crop: int) -> np.ndarray:
    """(W, C) softmax of each window of the set's first utterance."""
    from models.ser_data import iter_windows
    out = [torch.softmax(model.classify(b.feats, b.spk).float(), -1) for _, b in iter_windows(data, crop)]
    return torch.cat(out).numpy()


def inspect_utterance(workdir: str | Path, utt_id: str, ser_run: str = "small",
                      out: str | Path | None = None) -> Inspection:
    """Draw ``utt_id`` (see the module docstring) to ``out`` (default: report/inspect_<id>.png)."""
    from models.ser_data import load_set
    from models.ser_sources import StoreKeys
    from models.ser_train import config_from_record, open_source, ser_model
    from models.checkpoint import model_record
    from models.trained import load_run
    from pipeline.audio import load_audio
    corpus = load_corpus(workdir)
    utt = corpus.by_id().get(utt_id)
    if utt is None:
        raise TrainingError(f"{utt_id!r} is not an utterance id of the corpus in {workdir}")
    run = load_run(workdir, "ser", ser_run, corpus)
    fold = _test_fold(run, utt_id)
    cfg = config_from_record(model_record(run.config, "ser", ser_run))
    keys = StoreKeys(**run.config["inputs"]["keys"])
    source = open_source(workdir, keys, cfg, corpus)
    data = load_set(source, [utt_id], {utt_id: utt.speaker}, {}, cfg.input == "encoder", "cpu", "yes")
    probs = window_scores(ser_model(run, fold), data, cfg.crop)  # (W, C)
    audio = load_audio(utt.id, utt.audio, utt.start, utt.end) if utt.audio else np.zeros(0, np.float32)
    path = Path(out) if out else Path(workdir) / "report" / f"inspect_{utt_id}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    # the run's mel stage, or the default one where the model reads none (a head on the encoder)
    mel = _cached(workdir, keys.mel_stage or StoreKeys.mel_stage, utt_id, keys.mel_name)
    _draw(path, utt, audio, mel, _phones(workdir, utt_id), probs, run.classes, cfg.crop,
          f"{utt_id} ({utt.label}; SER {ser_run}, fold {fold})")
    return Inspection(utt_id, utt.label, fold, list(run.classes), probs, path)


def _cached(workdir, stage: str, utt_id: str, *names: str) -> tuple[np.ndarray, ...] | np.ndarray | None:
    """The utterance's cached ``names`` arrays of ``stage`` (one array for one name), read
    whatever the model reads (a head on the encoder reads no mel); None when the stage or the
    item has none: its panel says so."""
    from pipeline.store import StageReader
    try:
        with StageReader(workdir, stage) as r:
            got = tuple(r.get(utt_id, n) for n in names)
    except Exception:  # noqa: BLE001 - no such stage or item: the panel is left empty
        return None
    return got[0] if len(got) == 1 else got


def _phones(workdir, utt_id: str) -> list[tuple[str, float, float]]:
    """(symbol, start s, end s) of the cached alignment; [] when there is none."""
    from features.phone_vocab import VOCAB
    got = _cached(workdir, "phones", utt_id, "phone_times", "phone_ids")
    if got is None:
        return []
    times, ids = got
    return [(VOCAB[int(i)] if 0 <= int(i) < len(VOCAB) else "?", float(a), float(b))
            for i, (a, b) in zip(ids, times)]


def _draw(path: Path, utt, audio: np.ndarray, mel: np.ndarray | None, phones: list, probs: np.ndarray,
          classes, crop: int, title: str) -> None:
    seconds = len(audio) / 16_000 if len(audio) else len(mel if mel is not None else probs) / FRAME_RATE
    with figures.figure(path, title, (9, 7), nrows=4) as (wave, spec, tier, win):
        wave.plot(np.arange(len(audio)) / 16_000, audio, lw=0.4)
        wave.set_ylabel("waveform")
        if mel is None:
            spec.text(0.5, 0.5, "no cached mel spectrogram (extract --stage mel)", ha="center",
                      va="center", transform=spec.transAxes)
        else:
            spec.imshow(np.asarray(mel, np.float32).T, origin="lower", aspect="auto",
                        extent=(0, len(mel) / FRAME_RATE, 0, mel.shape[1]))
        spec.set_ylabel("mel bin")
        for k, (sym, a, b) in enumerate(phones):  # alternate shades: neighbours stay apart
            tier.axvspan(a, b, alpha=0.25 if k % 2 else 0.1, lw=0)
            tier.text((a + b) / 2, 0.5, sym, ha="center", va="center", fontsize=6, rotation=90)
        tier.set_yticks([])
        tier.set_ylabel("phones")
        starts = np.arange(len(probs)) * crop / FRAME_RATE
        for c, name in enumerate(classes):
            win.step(np.append(starts, starts[-1] + crop / FRAME_RATE), np.append(probs[:, c], probs[-1, c]),
                     where="post", label=name)
        win.set_ylim(0, 1)
        win.set_ylabel("window P(class)")
        win.set_xlabel(f"seconds (windows of {crop} frames)")
        win.legend(fontsize=6, ncol=len(classes))
        for ax in (wave, spec, tier, win):
            ax.set_xlim(0, seconds)  # the utterance; a last window may reach past its end
