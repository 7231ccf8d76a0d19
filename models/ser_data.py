"""SER data layer: 96-frame crops of encoder layers, mel and phones, plus the speaker mean.

A *source* (:mod:`models.ser_sources`) gives per-utterance arrays. A *set* serves training crops
and inference windows:

- :class:`ResidentSet` concatenates every utterance's frames into one tensor on the device
  (encoder layers fp16 (N, L, D), mel (N, 80), phone ids (N,)) with offsets; a batch of random
  crops is drawn with index arithmetic on the device, no Python loop per crop. ``subset()`` shares
  the storage, so one load can serve several folds.
- :class:`StreamingSet` reads each crop from the source (the fallback when a fold does not fit).

Both draw crop positions from one ``torch.Generator`` so that a checkpoint of its state resumes
the batch sequence exactly. Padded frames (utterances shorter than the crop) are zeros in every
input, the mel target and the phone one-hots.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np

import torch
import torch.nn.functional as F

from core.errors import TrainingError
from models.layer_weights import CropFrames
from models.ser_sources import ALL, Source
from pipeline.rows import prefetch

log = logging.getLogger(__name__)

N_PHONES = 128
#: Threads reading a resident set's utterances ahead of the copies to the device.
READ_THREADS = min(8, os.cpu_count() or 1)


@dataclass
class Batch:
    """A batch of crops (all on one device)."""

    feats: torch.Tensor | CropFrames  # (B, crop, L, D) fp16 (mel input: (B, crop, 1, 80)), or left in the corpus
    mel: torch.Tensor  # (B, crop, 80) float32 target
    phones: torch.Tensor  # (B, crop, 128) one-hot float32, zero rows on padding
    spk: torch.Tensor  # (B, 256) float32
    labels: torch.Tensor  # (B,) int64
    frames: torch.Tensor  # (B,) int64 real (unpadded) frames per crop


def _aligned(source: Source, u: str, use_encoder: bool, sl: slice = ALL
             ) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(encoder (T, L, D) | None, mel (T, 80), phones (T,)) frames ``sl``, trimmed to a common length."""
    enc = source.encoder(u, sl) if use_encoder else None
    mel, ph = source.mel(u, sl), np.asarray(source.phones(u, sl)).reshape(-1)
    lens = [len(mel), len(ph)] + ([len(enc)] if enc is not None else [])
    t = min(lens)
    if max(lens) - t > 1:  # the frame grid is shared (features/frames.py); 1 frame of slack
        log.warning("%s: frame counts differ (encoder/mel/phones %s); trimming to %d", u, lens, t)
    return (enc[:t] if enc is not None else None), mel[:t], ph[:t]


def crop_positions(lengths: torch.Tensor, batch: int, crop: int, gen: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform utterance (with replacement) and uniform start: (B,) row, (B,) start frame."""
    dev = gen.device
    rows = torch.randint(len(lengths), (batch,), generator=gen, device=dev)  # (B,)
    room = (lengths.to(dev)[rows] - crop).clamp(min=0)  # (B,) last valid start
    start = (torch.rand(batch, generator=gen, device=dev) * (room + 1)).long().clamp(max=room)
    return rows, start


class ResidentSet:
    """All frames of a set of utterances concatenated on one device."""

    def __init__(self, ids: list[str], feats: torch.Tensor | None, mel: torch.Tensor, phones: torch.Tensor,
                 offsets: torch.Tensor, spk: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor | None = None):
        self.all_ids = ids
        self.feats = feats  # (N, L, D) fp16, or None: the mel is the input
        self.mel = mel  # (N, 80) float32
        self.phones = phones  # (N,) int16
        self.offsets = offsets  # (U + 1,) int64, utterance u = frames offsets[u]:offsets[u+1]
        self.spk = spk  # (U, 256) float32
        self.labels = labels  # (U,) int64 (-1: unknown)
        self.rows = torch.arange(len(ids), device=mel.device) if rows is None else rows  # (n,) in use
        self.lengths = (offsets[1:] - offsets[:-1])[self.rows]  # (n,)
        self.device = mel.device
        self.gen_device = mel.device  # crop positions are drawn where the frames are
        self._held: frozenset[str] | None = None  # all_ids as a set, made when first asked
        self._windows: dict[int, tuple] = {}  # crop -> window_index(crop), made when first asked

    @property
    def ids(self) -> list[str]:
        return [self.all_ids[i] for i in self.rows.tolist()]

    def __len__(self) -> int:
        return len(self.rows)

    def holds(self, ids: Sequence[str]) -> bool:
        """Whether every one of ``ids`` is in the storage (``subset`` can take them)."""
        if self._held is None:
            self._held = frozenset(self.all_ids)
        return self._held.issuperset(ids)

    def subset(self, ids: Sequence[str]) -> "ResidentSet":
        """A view on some utterances (shares the frame storage)."""
        index = {u: i for i, u in enumerate(self.all_ids)}
        rows = torch.tensor([index[u] for u in ids], dtype=torch.long, device=self.device)
        return ResidentSet(self.all_ids, self.feats, self.mel, self.phones, self.offsets, self.spk,
                           self.labels, rows)

    def sample(self, batch: int, crop: int, gen: torch.Generator, in_place: bool = False) -> Batch:
        """``batch`` random crops of ``crop`` frames, gathered on the device; ``in_place``: the
        encoder frames left in the corpus (:class:`CropFrames`) for a compiled layer average."""
        r, start = crop_positions(self.lengths, batch, crop, gen)
        r, start = r.to(self.device), start.to(self.device)
        u = self.rows[r]  # (B,) utterance index in storage
        t = torch.arange(crop, device=self.device)  # (crop,)
        valid = (start[:, None] + t) < self.lengths[r][:, None]  # (B, crop)
        idx = torch.where(valid, self.offsets[u][:, None] + start[:, None] + t, self.offsets[u][:, None])
        return self._gather(idx, valid, u, in_place)

    def _gather(self, idx: torch.Tensor, valid: torch.Tensor, u: torch.Tensor, in_place: bool = False) -> Batch:
        """Frames ``idx`` (B, crop) with ``valid`` mask → Batch (invalid frames zeroed)."""
        m = valid[..., None]  # (B, crop, 1)
        mel = self.mel[idx].float().mul_(m)  # (B, crop, 80)
        if self.feats is None:
            feats = mel[:, :, None, :].half()  # (B, crop, 1, 80)
        else:
            feats = CropFrames(self.feats, idx, valid)
            feats = feats if in_place else feats.gather()  # (B, crop, L, D)
        ph = F.one_hot(self.phones[idx].long().clamp(0, N_PHONES - 1), N_PHONES).float() * m  # (B, crop, 128)
        return Batch(feats, mel, ph, self.spk[u], self.labels[u], valid.sum(1))

    def window_index(self, crop: int) -> tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every utterance cut into non-overlapping windows of ``crop`` frames, the last one
        zero-padded, in order: each window's utterance (its index in this set), frame indices
        (W, crop), valid mask (W, crop) and storage row (W,). Computed once per crop on the host
        (a validation pass then costs no per-utterance work or device synchronisation)."""
        if crop not in self._windows:
            n, rows = self.lengths.cpu(), self.rows.cpu()
            per = -(-n // crop)  # windows per utterance
            owner = torch.repeat_interleave(torch.arange(len(n)), per)  # (W,)
            first = torch.cumsum(per, 0) - per  # each utterance's first window
            t = (torch.arange(len(owner)) - first[owner])[:, None] * crop + torch.arange(crop)  # (W, crop)
            valid = t < n[owner][:, None]
            o = self.offsets.cpu()[rows[owner]][:, None]
            self._windows[crop] = (owner.tolist(), torch.where(valid, o + t, o).to(self.device),
                                   valid.to(self.device), rows[owner].to(self.device))
        return self._windows[crop]

    def windows(self, crop: int, max_windows: int) -> Iterator[tuple[list[int], Batch]]:
        """:meth:`window_index`'s windows, at most ``max_windows`` a batch: (window→utterance, Batch)."""
        owner, idx, valid, rows = self.window_index(crop)
        for s in range(0, len(owner), max_windows):
            e = s + max_windows
            yield owner[s:e], self._gather(idx[s:e], valid[s:e], rows[s:e])

    def utterance(self, i: int, crop: int) -> Batch:
        """Utterance ``i`` of this set cut into non-overlapping windows, last one zero-padded."""
        u = int(self.rows[i])
        o, n = int(self.offsets[u]), int(self.offsets[u + 1] - self.offsets[u])
        w = -(-n // crop)
        t = torch.arange(w * crop, device=self.device).view(w, crop)  # (W, crop)
        valid = t < n
        uu = torch.full((w,), u, dtype=torch.long, device=self.device)
        return self._gather(torch.where(valid, o + t, o), valid, uu)


class StreamingSet:
    """Same interface as :class:`ResidentSet`, reading each crop from the source (CPU side)."""

    def __init__(self, source: Source, ids: list[str], speakers: Mapping[str, str], labels: Mapping[str, int],
                 use_encoder: bool, device: str | torch.device):
        self.source, self.all_ids, self.use_encoder = source, list(ids), use_encoder
        self.speakers, self.label_of = speakers, labels
        self.lengths = torch.tensor([source.length(u) for u in ids], dtype=torch.long)
        self.device = torch.device(device)
        self.gen_device = torch.device("cpu")

    @property
    def ids(self) -> list[str]:
        return self.all_ids

    def __len__(self) -> int:
        return len(self.all_ids)

    def subset(self, ids: Sequence[str]) -> "StreamingSet":
        return StreamingSet(self.source, list(ids), self.speakers, self.label_of, self.use_encoder, self.device)

    def _item(self, u: str, start: int, crop: int) -> tuple:
        return _aligned(self.source, u, self.use_encoder, slice(start, start + crop))

    def sample(self, batch: int, crop: int, gen: torch.Generator) -> Batch:
        rows, start = crop_positions(self.lengths, batch, crop, gen)
        items = [(self.all_ids[r], self._item(self.all_ids[r], s, crop))
                 for r, s in zip(rows.tolist(), start.tolist())]
        return self._collate(items, crop)

    def utterance(self, i: int, crop: int) -> Batch:
        u = self.all_ids[i]
        enc, mel, ph = _aligned(self.source, u, self.use_encoder)
        w = -(-len(mel) // crop)
        items = [(u, ((enc[k * crop:(k + 1) * crop] if enc is not None else None),
                      mel[k * crop:(k + 1) * crop], ph[k * crop:(k + 1) * crop])) for k in range(w)]
        return self._collate(items, crop)

    def _collate(self, items: list, crop: int) -> Batch:
        def pad(x: np.ndarray) -> np.ndarray:
            return np.concatenate([x, np.zeros((crop - len(x),) + x.shape[1:], x.dtype)]) if len(x) < crop else x

        mel = torch.from_numpy(np.stack([pad(np.asarray(m, np.float32)) for _, (_, m, _) in items]))
        n = torch.tensor([len(m) for _, (_, m, _) in items])
        valid = (torch.arange(crop)[None] < n[:, None])[..., None]  # (B, crop, 1)
        if self.use_encoder:
            feats = torch.from_numpy(np.stack([pad(np.asarray(e, np.float16)) for _, (e, _, _) in items]))
        else:
            feats = mel[:, :, None, :].half()
        ph = torch.from_numpy(np.stack([pad(np.asarray(p, np.int64)) for _, (_, _, p) in items]))
        ph = F.one_hot(ph.clamp(0, N_PHONES - 1), N_PHONES).float() * valid
        spk = torch.from_numpy(np.stack([self.source.speaker_mean(self.speakers[u]) for u, _ in items]))
        labels = torch.tensor([self.label_of.get(u, -1) for u, _ in items])
        dev = self.device
        return Batch(feats.to(dev), mel.to(dev), ph.to(dev), spk.float().to(dev), labels.to(dev), n.to(dev))


def resident_bytes(source: Source, ids: Sequence[str], use_encoder: bool) -> int:
    """Bytes a :class:`ResidentSet` of ``ids`` needs (fp16 layers, fp32 mel, int16 phones)."""
    n = sum(source.length(u) for u in ids)
    per_frame = 80 * 4 + 2
    if use_encoder and ids:
        l, d = source.encoder_shape(ids[0])
        per_frame += l * d * 2
    return n * per_frame


def free_bytes(device: torch.device) -> int:
    """Free memory on ``device`` (GPU: CUDA's count; CPU: available physical pages)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()  # blocks cached by the allocator count as free here
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def fits(source: Source, ids: Sequence[str], use_encoder: bool, device: torch.device, reserve_bytes: int,
         otherwise: str) -> bool:
    """Whether a resident set of ``ids`` fits: on a GPU with ``reserve_bytes`` to spare for the
    model, on the CPU in 60 % of the available memory (logged, with ``otherwise`` if not)."""
    need, free = resident_bytes(source, ids, use_encoder), free_bytes(device)
    ok = need + reserve_bytes <= free if device.type == "cuda" else need <= 0.6 * free
    log.info("SER features: %.2f GB for %d utterances, %.2f GB free on %s -> %s", need / 1e9, len(ids),
             free / 1e9, device, "resident" if ok else otherwise)
    return ok


def load_resident(source: Source, ids: Sequence[str], speakers: Mapping[str, str], labels: Mapping[str, int],
                  use_encoder: bool, device: str | torch.device) -> ResidentSet:
    """Read every utterance once into concatenated device tensors."""
    device = torch.device(device)
    ids = list(ids)
    lens = [source.length(u) for u in ids]
    offsets = torch.tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.long)
    n = int(offsets[-1])
    feats = None
    if use_encoder:
        l, d = source.encoder_shape(ids[0])
        feats = torch.empty((n, l, d), dtype=torch.float16, device=device)  # (N, L, D)
    mel = torch.zeros((n, 80), dtype=torch.float32, device=device)  # (N, 80)
    phones = torch.zeros((n,), dtype=torch.int16, device=device)  # (N,)
    t0 = time.perf_counter()
    # threads read ahead (pipeline.rows reads without the GIL) while this one copies to the device
    arrays = prefetch(lambda u: _aligned(source, u, use_encoder), ids, threads=READ_THREADS,
                      ahead=2 * READ_THREADS)
    for i, (enc, m, ph) in enumerate(arrays):
        o, t = int(offsets[i]), len(m)  # t == lens[i]
        if feats is not None:
            feats[o:o + t] = torch.from_numpy(np.asarray(enc, dtype=np.float16)).to(device)
        mel[o:o + t] = torch.from_numpy(np.asarray(m, dtype=np.float32)).to(device)
        phones[o:o + t] = torch.from_numpy(np.asarray(ph, dtype=np.int16)).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    gb, sec = (feats.nbytes if feats is not None else 0) / 1e9, time.perf_counter() - t0
    log.log(logging.INFO if sec > 2 else logging.DEBUG,  # worth a line when it takes a while
            "resident on %s: %d utterances, %.1f GB of layers in %.1f s (%.2f GB/s)",
            device, len(ids), gb, sec, gb / max(sec, 1e-9))
    spk = torch.from_numpy(np.stack([np.asarray(source.speaker_mean(speakers[u]), np.float32) for u in ids]))
    lab = torch.tensor([labels.get(u, -1) for u in ids], dtype=torch.long)
    return ResidentSet(ids, feats, mel, phones, offsets.to(device), spk.to(device), lab.to(device))


def load_set(source: Source, ids: Sequence[str], speakers: Mapping[str, str], labels: Mapping[str, int],
             use_encoder: bool, device: str | torch.device, resident: str = "auto",
             reserve_bytes: int = 8 << 30) -> ResidentSet | StreamingSet:
    """Resident when ``resident`` is "yes", or "auto" and it fits with ``reserve_bytes`` to spare."""
    device = torch.device(device)
    if resident not in ("auto", "yes", "no"):
        raise TrainingError(f"resident must be auto, yes or no, not {resident!r}")
    if resident == "auto":
        resident = "yes" if fits(source, ids, use_encoder, device, reserve_bytes, "streaming") else "no"
    if resident == "yes":
        return load_resident(source, ids, speakers, labels, use_encoder, device)
    return StreamingSet(source, list(ids), speakers, labels, use_encoder, device)


def iter_windows(data: ResidentSet | StreamingSet, crop: int, max_windows: int = 256
                 ) -> Iterator[tuple[list[int], Batch]]:
    """Windows of consecutive utterances grouped up to ``max_windows``: (window→utterance, Batch)
    (a resident set's at most ``max_windows`` a batch, an utterance's windows maybe split)."""
    if isinstance(data, ResidentSet):
        yield from data.windows(crop, max_windows)
        return
    owner: list[int] = []
    parts: list[Batch] = []
    for i in range(len(data)):
        b = data.utterance(i, crop)
        owner += [i] * len(b.labels)
        parts.append(b)
        if len(owner) >= max_windows:
            yield owner, _cat(parts)
            owner, parts = [], []
    if parts:
        yield owner, _cat(parts)


def _cat(parts: list[Batch]) -> Batch:
    return Batch(*(torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Batch)))


# The sources lived here before models/ser_sources.py; scripts that import them from here still work.
from models.ser_sources import ArraySource, StoreKeys, StoreSource, usable  # noqa: E402,F401
