"""The ``speech`` stage (``wav2vec`` until 0.7): all hidden states of a speech encoder per 20 ms frame, fp16 (T, L, D).

Backends (``SpeechEncoderConfig.model``):

* a transformers folder: Wav2Vec2 and HuBERT run on the plain-torch encoder of
  ``features/wav2vec2_encoder.py`` (the same numbers, no transformers import); WavLM,
  Data2VecAudio (``AutoModel``), Whisper (its encoder, run by ``features/whisper_ct2.py``) and
  whatever that encoder does not compute load through transformers;
* a fairseq wav2vec 2.0 checkpoint (``*.pt``), converted in memory (``features/fairseq_convert.py``);
* an installed CTranslate2 Whisper short name (``whisper-tiny.en``, ``whisper-base``).

Frames: the audio is padded with ``features.frames.pad_for_frames`` so the 400/320 CNN front end
yields exactly ``num_frames(n)`` frames (Whisper windows are framed the same way).

Layers: L = Transformer layers + 1: the input of the first layer, then every layer's output; the
last is taken after the encoder's final layer norm when the model has one (pre-LN "stable layer
norm" wav2vec2-large, WavLM-large, Whisper), i.e. what the model returns as ``last_hidden_state``.
(transformers 5.x's own ``hidden_states[-1]`` is pre-norm for wav2vec2 but post-norm for Whisper;
we use one rule for all.)

Batching: utterances are sorted by length and packed so that ``batch size x longest`` stays under
``frame_budget`` encoder frames, with attention masks over the padding. Models whose CNN uses
group norm (``feat_extract_norm == "group"``, e.g. wav2vec2-base) normalise over time, and
data2vec-audio's stacked positional convolutions leak padded frames into valid ones, so padding
would change their output: they only batch utterances of identical length.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from core.errors import ItemError, StageError
from core.hashing import files_checksum
from features.base import Extractor, ItemInput, Output, torch
from features.encoder_runtime import (attention_backends, auto_frame_budget, compute_dtype,  # noqa: F401
                                      PassClock, batch_fits, encoder_autocast, finite_items,
                                      host_blocks_note, normalized_input, padded_batch, plan_batches,
                                      prefix_mask)
from features.frames import FRAME_RATE, HOP, WIN, num_frames

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeechEncoderConfig:
    #: transformers folder, fairseq ``.pt`` checkpoint, or installed CTranslate2 Whisper short name
    model: str = "whisper-base"
    #: "auto": bf16 autocast on CUDA (fp16 where bf16 is unsupported), fp32 on CPU;
    #: or "float32", "bfloat16", "float16" (autocast; CUDA only for the half types)
    dtype: str = "auto"
    #: encoder frames per forward pass, padding included (50 frames = 1 s); bounds memory.
    #: 0 = sized from the GPU's free memory, at most 16,000 frames and 512 MiB of fp16 outputs
    #: (wav2vec2-large: 10,485 frames); 3000 on the CPU
    frame_budget: int = 0
    #: Whisper only: run each window at its own length instead of padding to 30 s (faster on short
    #: clips; deep layers drift from the faithful output, see features/whisper_ct2.py)
    unpadded_whisper: bool = False
    #: per-utterance zero-mean unit-variance input: "auto" (as the model was trained), "true", "false"
    normalize: str = "auto"
    #: fields that change speed and memory, not what is computed: not part of the stage identity
    RUNTIME: ClassVar[tuple[str, ...]] = ("frame_budget",)


class _HFBackend:
    """A wav2vec2-family ``*Model`` on padded raw audio; returns (B, T, L, D) per batch."""

    def __init__(self, model: torch.nn.Module, normalize: bool, source: str):
        cfg = model.config
        stride = int(np.prod(cfg.conv_stride))
        field = 1
        for k, s in zip(reversed(cfg.conv_kernel), reversed(cfg.conv_stride)):
            field = (field - 1) * s + k
        if stride != HOP or field != WIN:
            raise StageError(f"{source}: CNN front end has stride {stride} / receptive field {field}; "
                             f"the shared frame grid needs {HOP} / {WIN}")
        self.model = model.eval().requires_grad_(False)
        self.normalize = normalize
        # Outputs that padding would change: group-norm CNNs normalise over time, and data2vec's
        # stacked positional convolutions carry padded frames into valid ones (HF and fairseq).
        self.padding_sensitive = (getattr(cfg, "feat_extract_norm", "layer") == "group"
                                  or cfg.model_type == "data2vec-audio")
        self.num_layers = cfg.num_hidden_layers + 1
        self.dim = cfg.hidden_size
        self.kind = getattr(model, "kind", type(model).__name__)  # the transformers class's name

    def cost(self, n_samples: int) -> int:
        return num_frames(n_samples)

    def group_key(self, n_samples: int) -> int | None:
        return n_samples if self.padding_sensitive else None

    def run(self, audios: Sequence[np.ndarray], device: torch.device) -> tuple[torch.Tensor, list[int]]:
        """(B, T_max, L, D) float16 on ``device`` and each utterance's num_frames(n)."""
        x, sizes = padded_batch(audios)  # (B, S) numpy
        x = torch.from_numpy(x).to(device)
        if self.normalize:  # on the device: a CPU pass here would hold the GIL the writes need
            x = normalized_input(x, [len(a) for a in audios])
        mask = None  # 1 over each row's padded audio, built on the device
        if not self.padding_sensitive and len(set(sizes.tolist())) > 1:
            mask = prefix_mask(sizes, x.shape[1], device).long()
        with attention_backends(device):
            out = self.model(x, attention_mask=mask, output_hidden_states=True)
        states = list(out.hidden_states)  # L x (B, T', D)
        states[-1] = out.last_hidden_state  # after the final layer norm (module docstring)
        lengths = [num_frames(len(a)) for a in audios]
        # fp16 per layer before stacking (autocast mixes bf16 and fp32 outputs), outside autocast
        with torch.autocast(device.type, enabled=False):
            feats = torch.stack([h[:, :max(lengths)].to(torch.float16) for h in states], dim=2)
        return feats, lengths


class _WhisperBackend:
    """A Whisper encoder through :class:`features.whisper_ct2.WhisperFrames`."""

    def __init__(self, encoder, unpadded: bool):
        from features.whisper_ct2 import WhisperFrames

        self.frames = WhisperFrames(encoder, unpadded=unpadded)
        self.num_layers, self.dim = self.frames.num_layers, self.frames.dim
        self.kind = "WhisperEncoder"
        self.model = self.frames

    def cost(self, n_samples: int) -> int:
        return self.frames.cost(n_samples)

    def group_key(self, n_samples: int) -> int | None:
        return None

    def run(self, audios: Sequence[np.ndarray], device: torch.device) -> tuple[torch.Tensor, list[int]]:
        feats = self.frames(list(audios))  # (T_i, L, D) each
        with torch.autocast(device.type, enabled=False):
            feats = [f.to(torch.float16) for f in feats]
            return torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), [len(f) for f in feats]


def model_files(model: str) -> list[Path]:
    """The files that hold ``model``'s weights (and architecture), for its checksum."""
    from features.ct2_reader import CT2_MODELS, ct2_files

    if model in CT2_MODELS:
        return ct2_files(model)
    path = Path(model).expanduser()
    if path.is_dir():
        files = [p for p in sorted(path.iterdir()) if p.suffix in (".safetensors", ".bin")]
        if not files:
            raise StageError(f"{path}: no weight files (*.safetensors, *.bin) in this folder")
        return files + [p for p in [path / "config.json"] if p.is_file()]
    if path.is_file() and path.suffix == ".pt":
        return [path]
    raise StageError(f"speech.model={model!r} is neither a transformers folder, a fairseq .pt "
                     f"checkpoint nor an installed Whisper short name ({', '.join(CT2_MODELS)})")


def pads_to_30s(cfg: SpeechEncoderConfig) -> bool:
    """Whether ``cfg`` runs a Whisper encoder on whole 30-s windows (its faithful mode), read
    from the model's name or its folder's config.json without loading it."""
    from features.ct2_reader import CT2_MODELS
    if cfg.unpadded_whisper:
        return False
    if cfg.model in CT2_MODELS:
        return True
    try:
        conf = json.loads((Path(cfg.model).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(conf, dict) and conf.get("model_type") == "whisper"


def _trained_normalized(path: Path, feat_extract_norm: str) -> bool:
    pre = path / "preprocessor_config.json"
    if pre.is_file():
        return bool(json.loads(pre.read_text()).get("do_normalize", True))
    # transformers' convention: layer-norm front ends were trained on normalised input
    return feat_extract_norm == "layer"


def _hf_folder(path: Path, cfg: SpeechEncoderConfig, device: torch.device):
    from features.wav2vec2_encoder import load_plain_encoder

    # straight into the compute dtype (float32 on the CPU, bf16/fp16 under CUDA autocast) and
    # straight onto the device: no float32 copy on the host
    dtype = compute_dtype(device, cfg.dtype)
    plain = load_plain_encoder(path, device, dtype)  # wav2vec2 / HuBERT without transformers
    if plain is not None:
        return _HFBackend(plain, _normalize(cfg, _trained_normalized(path, plain.config.feat_extract_norm)),
                          str(path))
    from transformers import AutoConfig, AutoModel

    from features.hf_load import from_pretrained
    mcfg = from_pretrained(AutoConfig, path, "speech.model")
    load = {"dtype": dtype}  # and onto the device where accelerate is installed
    if device.type == "cuda" and importlib.util.find_spec("accelerate") is not None:
        load["device_map"] = str(device)
    if mcfg.model_type == "whisper":
        from transformers import WhisperModel

        model = from_pretrained(WhisperModel, path, "speech.model", **load)
        return _WhisperBackend(model.get_encoder(), cfg.unpadded_whisper)
    model = from_pretrained(AutoModel, path, "speech.model", **load)
    trained = _trained_normalized(path, getattr(mcfg, "feat_extract_norm", "layer"))
    return _HFBackend(model, _normalize(cfg, trained), str(path))


def _normalize(cfg: SpeechEncoderConfig, trained: bool) -> bool:
    if cfg.normalize not in ("auto", "true", "false"):
        raise StageError(f"speech.normalize={cfg.normalize!r}: expected auto, true or false")
    return trained if cfg.normalize == "auto" else cfg.normalize == "true"


def load_backend(cfg: SpeechEncoderConfig, device: torch.device | str = "cpu"):
    """The backend for ``cfg.model`` (folder, ``.pt`` or installed short name); a transformers
    folder is loaded in the compute dtype onto ``device``, the others on the CPU (moved later)."""
    from features.ct2_reader import CT2_MODELS
    from features.whisper_ct2 import load_ct2_whisper

    model_files(cfg.model)  # raises a clear StageError for an unusable ``model``
    if cfg.model in CT2_MODELS:
        encoder, _ = load_ct2_whisper(cfg.model)
        return _WhisperBackend(encoder, cfg.unpadded_whisper)
    path = Path(cfg.model).expanduser()
    if path.is_dir():
        return _hf_folder(path, cfg, torch.device(device))
    from features.fairseq_convert import load_fairseq_wav2vec2

    model, trained_normalized = load_fairseq_wav2vec2(path)
    return _HFBackend(model, _normalize(cfg, trained_normalized), str(path))


def check_audio(item: ItemInput) -> np.ndarray:
    """The item's audio as float32, or an ItemError for audio no encoder can take."""
    a = item.audio
    if a is None or len(a) == 0:
        raise ItemError(item.utt_id, "no audio samples")
    a = np.asarray(a, dtype=np.float32)
    if a.ndim != 1:
        raise ItemError(item.utt_id, f"expected mono audio (n,), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ItemError(item.utt_id, "audio contains NaN or infinite samples")
    return a


class SpeechEncoderExtractor(Extractor):
    """All hidden states of a speech encoder: ``{"feats": float16 (T, L, D)}`` per utterance."""

    name = "speech"
    #: 2: a transformers folder is loaded in the compute dtype on CUDA (bf16 weights, not float32
    #: ones under autocast)
    VERSION = 2
    Config = SpeechEncoderConfig
    layout = {"feats": {"dims": "T,L,D", "dtype": "float16", "frame_rate": FRAME_RATE}}

    def __init__(self, config: SpeechEncoderConfig | None = None, device: str = "cpu",
                 backend=None):
        super().__init__(config, device)
        self.torch_device = torch.device(device)
        encoder_autocast(self.torch_device, self.config.dtype)  # validate now, not per batch
        self.backend = backend if backend is not None else load_backend(self.config, self.torch_device)
        self.backend.model.to(self.torch_device)
        self.frame_budget = self.config.frame_budget or auto_frame_budget(
            self.torch_device, self.backend.num_layers, self.backend.dim)
        # items per engine call: enough that a GPU's budget is filled by typical 2-8 s utterances
        self.items_per_call = max(32, min(256, self.frame_budget // 250))
        self.clock = PassClock()
        log.info("speech: %s (%s), L=%d D=%d on %s, %d frames per forward pass", self.config.model,
                 self.backend.kind, self.backend.num_layers, self.backend.dim, device, self.frame_budget)

    def runtime_note(self) -> str:
        """Per shard for ``extract -v``: the forward passes' parts and, on CUDA, the page-locked
        blocks."""
        blocks = host_blocks_note() if self.torch_device.type == "cuda" else ""
        return "; ".join(x for x in (self.clock.note(), blocks) if x)

    @classmethod
    def from_model(cls, model: torch.nn.Module, config: SpeechEncoderConfig | None = None,
                   device: str = "cpu", normalize: bool = True) -> "SpeechEncoderExtractor":
        """Wrap an in-memory transformers wav2vec2-family model (benchmarks, tests)."""
        ext = cls(config or SpeechEncoderConfig(model="<in-memory>"), device,
                  backend=_HFBackend(model, normalize, "in-memory model"))
        h = hashlib.sha256()
        for name, t in sorted(model.state_dict().items()):
            h.update(name.encode() + t.detach().float().cpu().numpy().tobytes())
        ext._checksum = h.hexdigest()
        return ext

    @classmethod
    def weights_checksum(cls, config: SpeechEncoderConfig) -> str:
        return files_checksum(model_files(config.model))

    def attrs(self) -> dict:
        return {"num_layers": self.backend.num_layers, "dim": self.backend.dim,
                "frame_rate": FRAME_RATE, "encoder": self.backend.kind,
                "layers": "0 = input of the first Transformer layer; i = output of layer i; "
                          "the last after the encoder's final layer norm where it has one"}

    def fits_call(self, items: Sequence[ItemInput], item: ItemInput) -> bool:
        """Whether ``item`` joins the engine's call holding ``items``: only while the call stays
        one forward pass (:func:`batch_fits`, plan_batches' rule), so that a call's outputs are
        one page-locked block on a GPU and the writer starts after one batch
        (backends whose batches group equal lengths only are cut by ``items_per_call`` alone)."""
        if item.audio is None or self.backend.group_key(len(item.audio)) is not None:
            return True
        longest = max(self.backend.cost(len(x.audio)) for x in (*items, item) if x.audio is not None)
        return batch_fits(len(items) + 1, longest, self.frame_budget)

    def _run(self, audios: list[np.ndarray]) -> list[np.ndarray | None]:
        """(T_i, L, D) fp16 per audio, or None where the real frames overflow float16."""
        self.clock.start()
        with torch.inference_mode(), encoder_autocast(self.torch_device, self.config.dtype):
            feats, lengths = self.backend.run(audios, self.torch_device)  # (B, T_max, L, D) fp16
            self.clock.lap("encoder call")
            finite = finite_items(feats, lengths)  # on the device: a CPU pass over fp16 costs ~1 s/GB
            self.clock.lap("device wait")  # finite_items' .tolist() waits for the pass
        if feats.is_cuda:  # one copy per batch into page-locked memory (torch caches these blocks)
            # always a block of the largest batch's size, of which a prefix is used: page-locking
            # costs ~0.3 s a block, and torch's cache keeps blocks by size class (2026-11-30)
            numel = max(feats.numel(), self.frame_budget * self.backend.num_layers * self.backend.dim)
            block = torch.empty(numel, dtype=feats.dtype, pin_memory=True)
            host = block[:feats.numel()].view(feats.shape).copy_(feats).numpy()
        else:
            host = feats.numpy()
        self.clock.lap("copies")
        return [host[i, :n] if ok else None for i, (n, ok) in enumerate(zip(lengths, finite))]

    def __call__(self, items: Sequence[ItemInput]) -> list[Output | ItemError]:
        results: list[Output | ItemError | None] = [None] * len(items)
        audios: dict[int, np.ndarray] = {}
        for i, item in enumerate(items):
            try:
                audios[i] = check_audio(item)
            except ItemError as e:
                results[i] = e
        idx = list(audios)
        lengths = [len(audios[i]) for i in idx]
        for batch in plan_batches(lengths, self.backend.cost, self.frame_budget,
                                  self.backend.group_key):
            members = [idx[j] for j in batch]
            try:
                outs = self._run([audios[i] for i in members])
            except RuntimeError as e:  # e.g. out of memory: retry alone so one item can't sink all
                if len(members) == 1:
                    results[members[0]] = ItemError(items[members[0]].utt_id, f"encoder failed: {e}")
                    continue
                log.warning("batch of %d failed (%s); retrying one by one", len(members), e)
                outs = []
                for i in members:
                    try:
                        outs.append(self._run([audios[i]])[0])
                    except RuntimeError as e1:
                        outs.append(ItemError(items[i].utt_id, f"encoder failed: {e1}"))
            for i, out in zip(members, outs):
                if isinstance(out, ItemError):
                    results[i] = out
                elif out is None:
                    results[i] = ItemError(items[i].utt_id, "encoder output overflows float16")
                else:
                    results[i] = {"feats": out}
        return results  # type: ignore[return-value]
