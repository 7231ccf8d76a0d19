"""Shared test helpers: fixture corpora, fake stage readers, synthetic training tasks."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from pipeline.corpus import DEFAULT_CLASSES, Corpus, Utterance


# --- corpora and feature readers (models) -------------------------------------------------------

def make_corpus(n_groups: int = 3, per_class: int = 6, classes: Sequence[str] = DEFAULT_CLASSES,
                name: str = "synthetic", texts: bool = True) -> Corpus:
    """A corpus of ``n_groups`` groups (one speaker each) with ``per_class`` utterances per class."""
    utts = []
    for g in range(n_groups):
        for c, label in enumerate(classes):
            for k in range(per_class):
                uid = f"g{g}_{label}_{k:03d}"
                utts.append(Utterance(id=uid, audio=f"/nonexistent/{uid}.wav", speaker=f"spk{g}",
                                      label=label, group=f"G{g}",
                                      text=f"sentence {k} of {label}" if texts else None))
    return Corpus(name, tuple(classes), tuple(utts))


class FakeStageReader:
    """In-memory stand-in for ``pipeline.store.StageReader`` (same methods)."""

    def __init__(self, data: dict[str, dict[str, np.ndarray]], failed: dict[str, str] | None = None,
                 attrs: dict | None = None):
        self._data = data
        self.failed = dict(failed or {})
        self.attrs = dict(attrs or {"fingerprint": "fake"})

    def ids(self) -> list[str]:
        return list(self._data)

    def get(self, utt_id: str, name: str) -> np.ndarray:
        return self._data[utt_id][name]

    def extra(self, key: str):
        raise KeyError(key)


def separable_token_features(corpus: Corpus, dim: int = 16, seed: int = 0,
                             min_len: int = 3, max_len: int = 12) -> FakeStageReader:
    """Per-utterance fp16 token features (N, dim) whose mean direction encodes the class."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(corpus.classes), dim)) * 2.0
    index = {c: i for i, c in enumerate(corpus.classes)}
    data = {}
    for u in corpus.utterances:
        n = int(rng.integers(min_len, max_len + 1))
        tokens = centers[index[u.label]] + rng.normal(size=(n, dim))
        data[u.id] = {"tokens": tokens.astype(np.float16)}
    return FakeStageReader(data)


class LinearTask:
    """A minimal trainer Task: Gaussian class clusters, a linear (+dropout) model, in memory."""

    name = "toy"

    def __init__(self, corpus: Corpus, dim: int = 8, seed: int = 0, batch_size: int = 8,
                 dropout: float = 0.1, missing: Sequence[str] = ()):
        self.corpus, self.dim, self.batch_size, self.dropout = corpus, dim, batch_size, dropout
        rng = np.random.default_rng(seed)
        centers = rng.normal(size=(len(corpus.classes), dim)) * 3.0
        index = {c: i for i, c in enumerate(corpus.classes)}
        self.y = {u.id: index[u.label] for u in corpus.utterances}
        self.x = {u.id: (centers[self.y[u.id]] + rng.normal(size=dim)).astype(np.float32)
                  for u in corpus.utterances if u.id not in set(missing)}
        self.prepared_ids: list[str] = []

    def config_dict(self) -> dict:
        return {"model": {"dim": self.dim, "dropout": self.dropout}}

    def feature_keys(self) -> dict[str, str]:
        return {"toy": "v1"}

    def available(self, ids):
        return [i for i in ids if i in self.x]

    def utterance_keys(self, ids):
        """A key per feature vector: it changes when the vector does."""
        return {i: self.x[i].tobytes().hex()[:16] for i in ids}

    def build_model(self):
        return torch.nn.Sequential(torch.nn.Dropout(self.dropout),
                                   torch.nn.Linear(self.dim, len(self.corpus.classes)))

    def prepare(self, train_ids, device, seed):
        from models.trainer import EpochSampler
        self.prepared_ids = list(train_ids)
        self.X = torch.tensor(np.stack([self.x[i] for i in train_ids]), device=device)
        self.Y = torch.tensor([self.y[i] for i in train_ids], device=device)
        self.sampler = EpochSampler(len(train_ids), self.batch_size, seed)

    def train_batch(self, step, generator):
        idx = self.sampler.indices(step)
        # Extra noise from the trainer's generator, so resume must restore it too.
        noise = torch.randn(len(idx), self.dim, generator=generator) * 0.1
        return self.X[idx] + noise, self.Y[idx]

    def loss(self, model, batch):
        x, y = batch
        ce = torch.nn.functional.cross_entropy(model(x), y)
        return ce, {"ce": ce}

    def predict(self, model, ids):
        x = torch.tensor(np.stack([self.x[i] for i in ids]))
        return torch.softmax(model(x), dim=-1).numpy()


# --- audio, corpora on disk and a test-only stage (pipeline) ------------------------------------

def write_tone(path, seconds: float = 1.0, sr: int = 16000, freq: float = 220.0,
               channels: int = 1, subtype: str = "PCM_16", seed: int = 0) -> str:
    """A tone plus a little noise as a WAV file; returns the path as str."""
    import soundfile as sf
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(len(t))
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    sf.write(str(path), x.astype(np.float32), sr, subtype=subtype)
    return str(path)


def write_manifest(workdir, rows: list[dict], name: str = "manifest.csv") -> str:
    """A CSV manifest in ``workdir`` from dict rows (columns from the first row)."""
    import csv
    from pathlib import Path
    path = Path(workdir) / name
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return str(path)


def tone_corpus(root, n: int = 8, seconds=(0.5, 1.7), n_speakers: int = 2) -> str:
    """A prepared work directory ``root/work`` with ``n`` tone utterances; returns workdir."""
    from pathlib import Path
    from pipeline.prepare import prepare_manifest
    root = Path(root)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    labels = list(DEFAULT_CLASSES)
    rows = []
    for i in range(n):
        dur = seconds[0] + (seconds[1] - seconds[0]) * i / max(1, n - 1)
        write_tone(root / "wav" / f"u{i:02d}.wav", dur, freq=150 + 40 * i, seed=i)
        rows.append({"id": f"u{i:02d}", "audio": f"wav/u{i:02d}.wav",
                     "speaker": f"s{i % n_speakers}", "label": labels[i % 4],
                     "text": f"utterance number {i}"})
    workdir = root / "work"
    prepare_manifest(workdir, write_manifest(root, rows))
    return str(workdir)


def register_toy_stages() -> None:
    """Test-only stages: ``toy`` (frame energies) and ``toy2`` (depends on toy), counting calls.

    Idempotent: every caller shares the same classes (``register_toy_stages.classes``)."""
    if getattr(register_toy_stages, "classes", None):
        return
    from dataclasses import dataclass
    from features.base import Extractor, run_each
    from features.frames import num_frames
    from pipeline.stages import Stage, register

    @dataclass(frozen=True)
    class ToyConfig:
        scale: float = 1.0

    class Toy(Extractor):
        name, VERSION, Config = "toy", 1, ToyConfig
        calls: list = []

        def __call__(self, items):
            Toy.calls.extend(i.utt_id for i in items)
            def one(it):
                t = num_frames(len(it.audio))
                e = np.array([np.sum(it.audio[k * 320:(k + 1) * 320] ** 2) for k in range(t)])
                out = {"energy": (e * self.config.scale).astype(np.float32)}
                if it.utt_id == "u05":  # a kept item with a remark, as an aligner fallback is
                    out["_note"] = np.bytes_(b"fallback used")
                return out
            return run_each(items, one)

    class Toy2(Extractor):
        name, VERSION, Config = "toy2", 1, ToyConfig
        calls: list = []

        def __call__(self, items):
            Toy2.calls.extend(i.utt_id for i in items)
            return [{"total": np.array([it.upstream["toy"]["energy"].sum() * self.config.scale],
                                       np.float32)} for it in items]

    register(Stage("toy", ToyConfig, lambda c, d: Toy(c, d), version=1, test_only=True,
                   shard_size=3))
    register(Stage("toy2", ToyConfig, lambda c, d: Toy2(c, d), version=1, upstream=("toy",),
                   needs_audio=False, test_only=True, shard_size=3))
    register_toy_stages.classes = (Toy, Toy2)


# --- tiny text encoders of the real architectures (features/text.py) ----------------------------

_BERT_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz",
               "hello", "world", "i", "am", "so", "happy", "sad", "angry", "!", ",", ".", "##s", "##ing"]


def _byte_level_vocab() -> dict[str, int]:
    """RoBERTa/GPT-2 byte-level BPE vocabulary: specials, the 256 byte symbols, a few words."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for c in cs:
        vocab.setdefault(chr(c), len(vocab))
    vocab["<mask>"] = len(vocab)
    return vocab


def save_tiny_text_encoder(folder, kind: str = "bert", hidden: int = 32, layers: int = 2,
                           max_positions: int = 130, **overrides):
    """A random-weight BERT or RoBERTa (real config/model/tokenizer classes) saved to ``folder``.

    Returns the folder. Sizes are tiny; pass overrides (e.g. hidden_size=1024) for real sizes.
    """
    from transformers import (BertConfig, BertModel, BertTokenizer, RobertaConfig, RobertaModel,
                              RobertaTokenizer)

    torch.manual_seed(0)
    sizes = {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": 2,
             "intermediate_size": 2 * hidden, **overrides}
    if kind == "bert":
        tok = BertTokenizer(vocab={w: i for i, w in enumerate(_BERT_WORDS)})
        cfg = BertConfig(vocab_size=len(_BERT_WORDS), max_position_embeddings=max_positions, **sizes)
        model = BertModel(cfg)
    elif kind == "roberta":
        vocab = _byte_level_vocab()
        tok = RobertaTokenizer(vocab=vocab, merges=[])
        # as roberta-large: pad 1, bos 0, eos 2, positions offset by pad + 1, one token type
        cfg = RobertaConfig(vocab_size=len(vocab), max_position_embeddings=max_positions + 2,
                            pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1, **sizes)
        model = RobertaModel(cfg)
    else:
        raise ValueError(kind)
    model.eval().save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# --- tiny speech encoders (features) ------------------------------------------------------------

#: Architectures of the ``wav2vec`` stage's transformers backend; "wav2vec2-group" is the
#: wav2vec2-base style (group-norm CNN, post-LN Transformer), "wav2vec2" the large style.
SPEECH_ARCHS = ("wav2vec2", "wav2vec2-group", "hubert", "wavlm", "data2vec-audio", "whisper")


def tiny_speech_model(arch: str, seed: int = 0):
    """A tiny random transformers model of a real speech-encoder architecture (eval mode).

    The CNN front ends keep the real kernels and strides (400-sample field, 320 hop) so the
    frame grid is the real one; widths are tiny (8 channels, 16-d, 2 layers).
    """
    import transformers as tf

    torch.manual_seed(seed)
    cnn = dict(conv_dim=(8,) * 7, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=32, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    if arch == "wav2vec2":
        model = tf.Wav2Vec2Model(tf.Wav2Vec2Config(feat_extract_norm="layer", do_stable_layer_norm=True, **cnn))
    elif arch == "wav2vec2-group":
        model = tf.Wav2Vec2Model(tf.Wav2Vec2Config(feat_extract_norm="group", do_stable_layer_norm=False, **cnn))
    elif arch == "hubert":
        model = tf.HubertModel(tf.HubertConfig(feat_extract_norm="layer", do_stable_layer_norm=True, **cnn))
    elif arch == "wavlm":
        model = tf.WavLMModel(tf.WavLMConfig(feat_extract_norm="layer", do_stable_layer_norm=True,
                                             num_buckets=32, max_bucket_distance=100, **cnn))
    elif arch == "data2vec-audio":
        cnn.pop("num_conv_pos_embedding_groups"), cnn.pop("num_conv_pos_embeddings")
        model = tf.Data2VecAudioModel(tf.Data2VecAudioConfig(conv_pos_kernel_size=5, num_conv_pos_embeddings=5,
                                                             num_conv_pos_embedding_groups=2, **cnn))
    elif arch == "whisper":
        model = tf.WhisperModel(tf.WhisperConfig(
            d_model=16, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=32,
            decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=32, num_mel_bins=80,
            max_source_positions=1500, max_target_positions=16, vocab_size=64,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1))
    else:
        raise ValueError(f"unknown tiny speech architecture {arch!r}; known: {SPEECH_ARCHS}")
    with torch.no_grad():  # random, non-trivial layer norms and biases
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layer_norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def speech_audio(n_samples: int, seed: int = 0) -> np.ndarray:
    """Speech-like test audio: a few harmonics with a slow envelope plus noise, float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / 16000
    f0 = 120 + 40 * rng.random()
    x = sum(np.sin(2 * np.pi * f0 * k * t + rng.random() * 6) / k for k in range(1, 6))
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t + rng.random() * 6)
    return (0.2 * x * env + 0.01 * rng.standard_normal(n_samples)).astype(np.float32)


# --- SER fixtures (models/ser*.py) ----------------------------------------------------------------

#: Narrow SER widths for fast CPU tests (same architecture, fewer channels/units).
TINY_SER = {"dim_conv": 32, "dim_pre": 32, "dim_dec": 32, "dim_phone": 16, "classifier_hidden": 32}


def ser_source(corpus: Corpus, n_layers: int = 3, dim: int = 16, frames=(60, 220), seed: int = 0,
               signal: float = 2.0):
    """An in-memory SER source (``models.ser_data.ArraySource``): encoder layers (T, L, D) fp16 whose
    mean encodes the class (``signal`` = separation), mel (T, 80) in [0, 1], phone ids (T,), and
    one unit-norm 256-d mean per speaker."""
    from models.ser_data import ArraySource
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(corpus.classes), dim)) * signal
    index = {c: i for i, c in enumerate(corpus.classes)}
    enc, mel, ph = {}, {}, {}
    for u in corpus.utterances:
        t = int(rng.integers(frames[0], frames[1] + 1))
        x = centers[index[u.label]][None, None, :] + rng.normal(size=(t, n_layers, dim))
        enc[u.id] = x.astype(np.float16)
        mel[u.id] = rng.random((t, 80)).astype(np.float16)
        ph[u.id] = rng.integers(0, 40, t).astype(np.int16)
    spk = {}
    for s in corpus.speakers:
        v = rng.normal(size=256)
        spk[s] = (v / np.linalg.norm(v)).astype(np.float32)
    return ArraySource(mel, ph, spk, enc)


# --- finished runs (fusion/report) ---------------------------------------------------------------

def fake_folds(workdir, groups: Sequence[str], per_group: int = 20):
    """The corpus of fake runs (written once: ``per_group`` utterances per group, labels in
    turn) and its folds (validation 20 % of the other groups, split seed 0)."""
    from pathlib import Path
    from models.folds import make_folds
    from pipeline.corpus import load_corpus, write_corpus
    if not (Path(workdir) / "corpus.json").exists():
        utts = [Utterance(f"{g}_{i:02d}", f"/nonexistent/{g}_{i:02d}.wav", f"spk{g}",
                          DEFAULT_CLASSES[i % 4], g) for g in groups for i in range(per_group)]
        write_corpus(workdir, Corpus("fake", DEFAULT_CLASSES, tuple(utts)))
    return make_folds(load_corpus(workdir), ",".join(groups), val_fraction=0.2, seed=0)


def fake_run(workdir, task, run, folds, rng, informative, skip=()):
    """A finished run of random predictions whose true-class logit is raised by ``informative``,
    recorded like a trained run (config with the split, fold digests) on the ``fake_folds`` corpus."""
    from models.metrics import classification_metrics
    from models.run_identity import fold_digest
    from models.runs import RunPaths, prediction_rows, write_json, write_predictions
    from models.run_folds import summarize_run
    from pipeline.corpus import load_corpus
    CLASSES = list(DEFAULT_CLASSES)
    fold_list = fake_folds(workdir, folds)
    labels = {u.id: u.label for u in load_corpus(workdir).utterances}
    paths = RunPaths(workdir, task, run)
    write_json(paths.config, {"task": task, "classes": CLASSES, "train": {"select": "val"},
                              "split": {"val_fraction": 0.2, "split_seed": 0}})
    for fold in fold_list:
        rows = []
        for split in ("test", "val"):
            ids = [u for u in getattr(fold, split) if u not in skip]
            y = [labels[u] for u in ids]
            logits = rng.normal(0, 1, (len(ids), 4))
            logits[np.arange(len(ids)), [CLASSES.index(c) for c in y]] += informative
            p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            rows += prediction_rows(ids, p, dict(zip(ids, y)), fold.name, split)
        write_predictions(paths.predictions(fold.name), rows)
        t = [r for r in rows if r["split"] == "test"]
        write_json(paths.fold_metrics(fold.name), {"test": classification_metrics(
            [r["label"] for r in t], [int(np.argmax(r["probs"])) for r in t], CLASSES),
            "fold_digest": fold_digest(fold, labels)})
    summarize_run(paths, CLASSES, folds)
    return paths


def write_ser_store(workdir, corpus: Corpus, source) -> None:
    """The prepared corpus and the four SER stages (wav2vec, mel, phones, speaker + its per-speaker
    means) written as real shards and indexes, from an in-memory source (``ser_source``). Each
    utterance carries the key that the corpus implies, so the trainers' freshness check passes."""
    import json
    from pathlib import Path
    import h5py
    from pipeline.corpus import write_corpus
    from pipeline.plan import finalize_name, published_keys
    from pipeline.store import ShardWriter, current_pointer, shard_name, stage_dir

    write_corpus(workdir, corpus)
    ids = [u.id for u in corpus.utterances]
    stages = {"wav2vec": ("feats", source.encoder), "mel": ("mel", source.mel),
              "phones": ("ids", source.phones),
              "speaker": ("embed", lambda u: np.zeros(4, np.float32))}
    for stage in stages:
        current_pointer(workdir, stage).parent.mkdir(parents=True, exist_ok=True)
        current_pointer(workdir, stage).write_text(json.dumps(
            {"identity": f"{stage}-test-identity", "shards": [shard_name(0, "testkey")]}))
    keys = published_keys(workdir, list(stages), corpus)
    for stage, (name, get) in stages.items():
        d = stage_dir(workdir, stage, f"{stage}-test-identity")
        d.mkdir(parents=True, exist_ok=True)
        w = ShardWriter(Path(d) / shard_name(0, "testkey"), {"identity": {"stage": stage}})
        for u in ids:
            w.write(u, {name: get(u)}, {"key": keys[stage][u]})
        w.commit()
    extra = finalize_name(keys["speaker"], list(corpus.utterances))
    with h5py.File(stage_dir(workdir, "speaker", "speaker-test-identity") / extra, "w") as f:
        for s in corpus.speakers:
            f.create_dataset(s, data=source.speaker_mean(s))
    pointer = current_pointer(workdir, "speaker")
    pointer.write_text(json.dumps({**json.loads(pointer.read_text()), "extra": extra}))


# --- shard-store inspection (pipeline tests) -----------------------------------------------------

def shard_files(workdir, stage: str) -> list:
    """Published shard files of ``stage`` under every identity, sorted."""
    from pathlib import Path
    return sorted(Path(workdir, "cache", stage).glob("*/shard-*.h5"))


def stage_arrays(workdir, stage: str) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, str]]:
    """Every cached output of ``stage`` ({utt: {name: array}}, read through the checksums) and
    its failed items ({utt: reason}), for comparing two work directories exactly."""
    from pipeline.store import StageReader
    with StageReader(workdir, stage) as r:
        out = {}
        for u in r.ids():
            names = list(r._file(u)[u].keys())  # noqa: SLF001 - test inspection
            out[u] = {n: r.get(u, n) for n in names}
        return out, dict(r.failed)
