"""``predict``: emotion of new audio files with trained checkpoints, no cache needed.

Features are computed on the fly with the same stage parameters the work directory was trained
with (``stage_params.json``); the new speaker's embedding is the file's own Resemblyzer
embedding. SER probabilities are averaged over the folds' models (an ensemble) or taken from
one fold; with a transcript (given, or transcribed with the installed Whisper model) the TER
probabilities are fused with the weights ``fuse`` chose (mean over folds), else the paper's.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from features.base import ItemInput
from models.fusion import PAPER_WEIGHTS
from models.runs import RunPaths, read_json
from pipeline.audio import load_audio
from pipeline.errors import ItemError, TrainingError
from pipeline.plan import load_params
from pipeline.stages import get_stage

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    file: str
    label: str | None
    probs: dict[str, float]
    speech: dict[str, float]
    text: dict[str, float] | None
    transcript: str | None
    error: str | None = None


def _extract(workdir: Path, stage: str, items: list[ItemInput], device: str) -> list:
    st = get_stage(stage)
    cfg = st.make_config(load_params(workdir).get(stage))
    return st.build(cfg, device)(items)


def _ser_models(workdir: Path, run: str, fold: str | None, device: str):
    from models.ser import SERConfig, SERModel
    paths = RunPaths(workdir, "ser", run)
    folds = [fold] if fold else paths.fold_names()
    if not folds or not paths.config.exists():
        raise TrainingError(f"no trained SER run in {paths.root}: run `python cli.py train ser`")
    conf = read_json(paths.config)
    cfg = SERConfig(**{k: tuple(v) if isinstance(v, list) else v
                       for k, v in conf["model"]["model"].items()})
    run_cfg = conf["model"]["run"]
    select = run_cfg.get("select", "last")
    models = []
    for f in folds:
        ckpt = torch.load(paths.checkpoint(f), map_location="cpu", weights_only=True)
        m = SERModel(cfg)
        m.load_state_dict(ckpt["best_model"] if select == "val" and ckpt.get("best_model")
                          else ckpt["model"])
        models.append(m.to(device).eval())
    return cfg, models, run_cfg.get("window_weighting", "equal")


def _ter_models(workdir: Path, run: str, fold: str | None):
    from models.ter_train import model_from_checkpoint
    paths = RunPaths(workdir, "ter", run)
    folds = [fold] if fold else paths.fold_names()
    return [model_from_checkpoint(torch.load(paths.checkpoint(f), map_location="cpu",
                                             weights_only=True)) for f in folds]


def fusion_weights(workdir: Path, ser_run: str, ter_run: str) -> tuple[float, float]:
    cfg = RunPaths(workdir, "fusion", f"{ser_run}+{ter_run}").config
    if not cfg.exists():
        return PAPER_WEIGHTS
    per = read_json(cfg)["per_fold"].values()
    return float(np.mean([w["w1"] for w in per])), float(np.mean([w["w2"] for w in per]))


def transcribe(audio: np.ndarray) -> str:
    """English transcript of 16 kHz audio with the installed Whisper tiny.en (CTranslate2)."""
    import ctranslate2
    import tokenizers
    from transformers import WhisperFeatureExtractor
    from features.whisper_ct2 import ct2_files
    folder = ct2_files("whisper-tiny.en")[0].parent  # a complete CTranslate2 model folder
    feats = WhisperFeatureExtractor(feature_size=80)(audio, sampling_rate=16000,
                                                     return_tensors="np").input_features
    tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    prompt = [tok.token_to_id("<|startoftranscript|>"), tok.token_to_id("<|notimestamps|>")]
    w = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
    res = w.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats, np.float32)),
                     [prompt], max_length=200)
    return tok.decode(res[0].sequences_ids[0]).strip()


def predict(workdir: str | Path, files: Sequence[str], texts: Sequence[str | None] | None = None,
            ser_run: str = "small", ter_run: str = "cnn", fold: str | None = None,
            do_transcribe: bool = False, device: str = "cpu") -> list[Prediction]:
    from models.ser_data import ArraySource, load_set
    from models.ser_train import window_probs
    from models.ter import TextCNN, pad_tokens
    workdir = Path(workdir)
    classes = read_json(RunPaths(workdir, "ser", ser_run).metrics)["classes"]
    cfg, ser_models, weighting = _ser_models(workdir, ser_run, fold, device)  # as the run was evaluated
    texts = list(texts) if texts is not None else [None] * len(files)
    out: list[Prediction] = []
    items, ids = [], []
    for k, f in enumerate(files):
        try:
            audio = load_audio(f, f)
        except ItemError as e:
            out.append(Prediction(f, None, {}, {}, None, None, error=e.reason))
            continue
        if texts[k] is None and do_transcribe:
            texts[k] = transcribe(audio)
        ids.append(f"file{k}")
        items.append(ItemInput(f"file{k}", audio, texts[k], "en", f"spk{k}"))
    if not items:
        return out
    enc = _extract(workdir, "wav2vec", items, device) if cfg.input == "encoder" else None
    mel = _extract(workdir, "mel", items, device)
    spk = _extract(workdir, "speaker", items, device)
    good = [i for i, it in enumerate(items)
            if not any(isinstance(r[i], ItemError) for r in (mel, spk) + ((enc,) if enc else ()))]
    src = ArraySource(
        mel={items[i].utt_id: mel[i]["mel"] for i in good},
        phones={items[i].utt_id: np.zeros(len(mel[i]["mel"]), np.int64) for i in good},
        speakers={items[i].speaker: spk[i]["embed"] for i in good},
        encoder={items[i].utt_id: enc[i]["feats"] for i in good} if enc else None)
    gid = [items[i].utt_id for i in good]
    data = load_set(src, gid, {items[i].utt_id: items[i].speaker for i in good},
                    {u: 0 for u in gid}, cfg.input == "encoder", device, "yes")
    p_speech = np.mean([window_probs(m, data, cfg.crop, weighting=weighting) for m in ser_models], axis=0)
    text_items = [items[i] for i in good if items[i].text]
    p_text: dict[str, np.ndarray] = {}
    if text_items:
        tok = _extract(workdir, "text", text_items, device)
        ter_models = _ter_models(workdir, ter_run, fold)
        feats = {it.utt_id: r["tokens"] for it, r in zip(text_items, tok)
                 if not isinstance(r, ItemError)}
        if feats and ter_models:
            x, lengths = pad_tokens(list(feats.values()), ter_models[0].config.max_tokens)
            with torch.no_grad():
                probs = np.mean([TextCNN.probabilities(m(x, lengths)).numpy()
                                 for m in ter_models], axis=0)
            p_text = dict(zip(feats, probs))
    w1, w2 = fusion_weights(workdir, ser_run, ter_run)
    for row, i in enumerate(good):
        it = items[i]
        ps = p_speech[row]
        pt = p_text.get(it.utt_id)
        p = ps if pt is None else (w1 * ps + w2 * pt) / (w1 + w2)
        out.append(Prediction(files[i], classes[int(np.argmax(p))],
                              dict(zip(classes, map(float, p))), dict(zip(classes, map(float, ps))),
                              dict(zip(classes, map(float, pt))) if pt is not None else None,
                              it.text))
    for i, it in enumerate(items):
        if i not in good:
            reason = next(r[i].reason for r in (mel, spk) + ((enc,) if enc else ())
                          if isinstance(r[i], ItemError))
            out.append(Prediction(files[i], None, {}, {}, None, it.text, error=reason))
    return out
