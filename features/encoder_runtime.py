"""How the ``speech`` stage runs an encoder on a device: compute dtype and autocast, attention
backends, the frame budget per forward pass and length-sorted batches, input normalisation on
the device, and the finiteness check of outputs (features/speech_encoder.py uses these)."""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Sequence

import numpy as np

from core.errors import StageError
from features.base import torch
from features.frames import LEFT_PAD, padded_length

log = logging.getLogger(__name__)


def batch_fits(count: int, longest: int, budget: int) -> bool:
    """Whether ``count`` items padded to the ``longest`` one's cost stay within ``budget``: the
    rule of :func:`plan_batches`, and of a speech extractor's engine calls of one pass each."""
    return count * longest <= budget


def plan_batches(lengths: Sequence[int], cost, budget: int, group_key=lambda n: None) -> list[list[int]]:
    """Indices grouped into batches: sorted by length, :func:`batch_fits` the budget.

    Items with different ``group_key`` never share a batch. An item costlier than the budget
    runs alone.
    """
    order = sorted(range(len(lengths)), key=lambda i: (str(group_key(lengths[i])), -lengths[i]))
    batches: list[list[int]] = []
    cur: list[int] = []
    cur_max, cur_key = 0, None
    for i in order:
        c, k = cost(lengths[i]), group_key(lengths[i])
        if cur and (k != cur_key or not batch_fits(len(cur) + 1, max(cur_max, c), budget)):
            batches.append(cur)
            cur, cur_max = [], 0
        cur.append(i)
        cur_max, cur_key = max(cur_max, c), k
    if cur:
        batches.append(cur)
    return batches


def compute_dtype(device: torch.device, dtype: str) -> torch.dtype:
    """What the encoder computes in: float32 on the CPU or with ``dtype=float32``; else bf16
    (``auto`` where the GPU supports it, fp16 where not) or the half type asked for."""
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise StageError(f"speech.dtype={dtype!r}: expected auto, float32, bfloat16 or float16")
    if device.type != "cuda" or dtype == "float32":
        return torch.float32
    if dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return getattr(torch, dtype)


def encoder_autocast(device: torch.device, dtype: str):
    half = compute_dtype(device, dtype)
    if half == torch.float32:
        if dtype in ("bfloat16", "float16") and device.type != "cuda":
            log.warning("speech.dtype=%s applies on CUDA only; running float32 on %s", dtype, device)
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=half)


#: bytes of device memory per encoder frame and (layer x dim), a generous bound on what a
#: forward pass keeps (every layer's states, the stacked fp16 copy, FFN and attention buffers)
_BYTES_PER_FRAME_VALUE = 12
#: the largest automatic budget (5 min of audio per forward pass): on an H200 the encoder alone
#: then runs ~2,000x real time, far above what a disk takes (bench/RESULTS.md, 2026-11-30)
_MAX_AUTO_BUDGET = 16_000
#: a forward pass's fp16 outputs go to one page-locked host block, which torch's allocator rounds
#: up to a power of two: 16,000 frames of wav2vec2-large (819 MB) took 1-GiB blocks, 10,000 take
#: 512-MiB ones — half the page-locked memory to pin at the start and release at exit, at equal
#: pass speed (a cold `extract` of 2 h: 19.0 s against 19.5 s over 3 pairs, not significant;
#: bench/RESULTS.md round seven)
HOST_BLOCK_BYTES = 2 ** 29


def auto_frame_budget(device: torch.device, num_layers: int, dim: int) -> int:
    """Frames per forward pass for ``frame_budget=0``: a third of the GPU's free memory, at most
    :data:`HOST_BLOCK_BYTES` of fp16 outputs (3000 on the CPU, where larger batches do not pay)."""
    if device.type != "cuda":
        return 3000
    free, _ = torch.cuda.mem_get_info(device)
    budget = int(free / 3 / (num_layers * dim * _BYTES_PER_FRAME_VALUE))
    return max(500, min(_MAX_AUTO_BUDGET, HOST_BLOCK_BYTES // (2 * num_layers * dim), budget))


def attention_backends(device: torch.device):
    """Memory-efficient or flash attention on CUDA, not cuDNN's: cuDNN builds a graph for every
    new sequence length (16 ms a layer on an H200), and in an extraction nearly every batch has
    a new length (4.3 s of a 15-s first pass, bench/extract_first_pass.py)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def padded_batch(audios: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(B, S) float32: each audio as :func:`features.frames.pad_for_frames` pads it, then zeros
    to the longest; and each row's padded length. Built in numpy, not with torch's CPU ops:
    those run OpenMP regions, which stall while the writer's and decoder's threads hold cores
    (on the 2-core VM 0.8.5's torch-built batch of a pass took 2.3-3.1x as long beside one busy
    thread, this one no longer: ``python -m bench.batch_prep_probe``)."""
    sizes = np.array([padded_length(len(a)) for a in audios])
    x = np.zeros((len(audios), int(sizes.max())), np.float32)
    for row, a in zip(x, audios):
        row[LEFT_PAD:LEFT_PAD + len(a)] = a
    return x, sizes


def normalized_input(x: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """Each row of frame-padded audio (B, S) at zero mean and unit variance over its real
    samples, zeros elsewhere: what normalising each utterance before padding it gives."""
    idx = torch.arange(x.shape[1], device=x.device)[None]
    n = torch.tensor(lengths, device=x.device, dtype=x.dtype)[:, None]
    real = ((idx >= LEFT_PAD) & (idx < LEFT_PAD + n)).to(x.dtype)
    mean = (x * real).sum(1, keepdim=True) / n
    var = (((x - mean) * real) ** 2).sum(1, keepdim=True) / n
    return (x - mean) / torch.sqrt(var + 1e-7) * real


def prefix_mask(lengths: Sequence[int], size: int, device: torch.device) -> torch.Tensor:
    """(B, size) bool on ``device``: True at the first ``lengths[i]`` positions of row i."""
    return torch.arange(size, device=device)[None] < torch.as_tensor(lengths, device=device)[:, None]


def finite_items(feats: torch.Tensor, lengths: Sequence[int]) -> list[bool]:
    """Per item of a padded (B, T, ...) batch: are all its real frames finite? (padding ignored)"""
    bad = (~torch.isfinite(feats)).flatten(2).any(2)  # (B, T)
    return (~(bad & prefix_mask(lengths, feats.shape[1], feats.device)).any(1)).tolist()


def host_blocks_note() -> str:
    """``page-locked blocks: N (X GiB), Y s allocating`` on CUDA (what ``extract -v`` shows per
    shard), else ''."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return ""
    stats = torch.cuda.host_memory_stats()
    n = stats.get("num_host_alloc", 0)
    gib = stats.get("allocated_bytes.current", 0) / 2 ** 30
    secs = stats.get("host_alloc_time.total", 0) / 1e6
    return f"page-locked blocks {n} ({gib:.1f} GiB), {secs:.2f} s allocating them"


class PassClock:
    """Where a speech extractor's forward passes spend their time since the last :meth:`note`
    (``extract -v`` shows it per shard): the encoder call — preparing the batch and running the
    model, which on a GPU returns once its kernels are queued, so a long call there is the Python
    thread, not the GPU —, then waiting for the device to finish, then the device → host copies."""

    PARTS = ("encoder call", "device wait", "copies")

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(self.PARTS, 0.0)
        self._t = 0.0

    def start(self) -> None:
        self._t = time.perf_counter()

    def lap(self, part: str) -> None:
        t = time.perf_counter()
        self.seconds[part] += t - self._t
        self._t = t

    def note(self) -> str:
        """``forward passes: encoder call X s, device wait Y s, copies Z s``; a fresh count."""
        out = "forward passes: " + ", ".join(f"{k} {v:.2f} s" for k, v in self.seconds.items())
        self.seconds = dict.fromkeys(self.PARTS, 0.0)
        return out
