"""Whisper encoders as all-layer speech feature extractors on the shared 20 ms frame grid.

Two sources of weights, one forward (:func:`features.whisper_encoder.encoder_states`):

* CTranslate2 packages that install real pretrained weights from the package registry
  (:data:`features.ct2_reader.CT2_MODELS`): ``encoder/*`` of their ``model.bin`` is mapped onto
  :class:`features.whisper_encoder.WhisperEncoder`, plain torch with transformers' parameter
  names and numbers, so that loading it imports no transformers (the fused q/k/v ``linear_0`` is
  split by rows; its k slice has a zero bias, which the bias-free ``k_proj`` drops);
* a transformers Whisper folder: its ``WhisperEncoder`` (see ``features/speech_encoder.py``).

**Frames.** Whisper's log-mel (n_fft 400, hop 160, Whisper's own normalisation) is framed without
centering on audio padded 40 samples left, so the encoder output ``t`` (stride 2) is centred on
[0.02t, 0.02(t+1)) s exactly like every other per-frame feature (``features/frames.py``); the
first ``num_frames(n)`` encoder frames are kept. (Whisper itself centres its STFT with reflect
padding; the only difference is a 10 ms shift and zeros instead of reflection before the start.)

**Modes.** ``unpadded=False`` (default, faithful): every 30 s window is zero-padded to 30 s
(3,000 mel frames) as Whisper was trained; longer audio is cut into consecutive 30 s windows.
``unpadded=True``: a window holds only the audio (positional embeddings sliced to its length);
much faster on short clips, but deeper layers drift from the faithful output. Measured
(``bench/extract_speech.py``, emodb4: 40 clips of 2 s + 10 of 4 s, whisper-base), per-frame cosine
faithful vs unpadded, layers 0..6: mean 1.000 0.996 0.990 0.983 0.965 0.957 0.927, 5th
percentile 1.000 0.990 0.981 0.966 0.932 0.901 0.828 (tiny.en, 12 x 2 s, layers 0..4: mean
1.000 0.995 0.988 0.975 0.934). Speed on 2 s clips (2-core Xeon VM, shared and loaded, 1 thread):
tiny.en 286 vs 8 ms, base 866 vs 36 ms per second of audio (faithful vs unpadded).

**Layers.** L = encoder_layers + 1 states: the input of the first Transformer layer (conv stem +
positions), then each layer's output, where the last one is taken *after* the encoder's final
layer norm. Whisper is a pre-LN Transformer: that final norm is the readout of the last layer
(what the decoder attends to, what ``ctranslate2``'s ``encode`` returns and what transformers
returns as ``last_hidden_state``); the un-normalised last-layer output is not stored.
"""
from __future__ import annotations

import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.errors import StageError
from features.ct2_reader import ct2_files, read_ct2
from features.frames import HOP, LEFT_PAD, num_frames
from features.whisper_encoder import WhisperEncoder, WhisperEncoderConfig, encoder_states

log = logging.getLogger(__name__)

MEL_HOP = 160  # Whisper's mel hop (100 frames/s); its encoder halves it to 50 frames/s
N_FFT = 400
WINDOW_SECONDS = 30
WINDOW_FRAMES = WINDOW_SECONDS * 50  # 1,500 encoder frames per 30 s window
WINDOW_SAMPLES = WINDOW_FRAMES * HOP  # 480,000


def encoder_from_ct2(variables: dict[str, np.ndarray]) -> WhisperEncoder:
    """A float32 :class:`WhisperEncoder` holding the ``encoder/*`` variables of a CT2 Whisper."""
    v = {k[len("encoder/"):]: torch.from_numpy(np.asarray(a, dtype=np.float32))
         for k, a in variables.items() if k.startswith("encoder/")}
    n_layers = sum(1 for k in v if k.endswith("self_attention/linear_0/weight"))
    d_model, n_mels, _ = v["conv1/weight"].shape
    cfg = WhisperEncoderConfig(
        d_model=int(d_model), num_mel_bins=int(n_mels), encoder_layers=n_layers,
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        encoder_ffn_dim=int(v["layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(v["position_encodings/encodings"].shape[0]))
    sd = {"conv1.weight": v["conv1/weight"], "conv1.bias": v["conv1/bias"],
          "conv2.weight": v["conv2/weight"], "conv2.bias": v["conv2/bias"],
          "embed_positions.weight": v["position_encodings/encodings"],
          "layer_norm.weight": v["layer_norm/gamma"], "layer_norm.bias": v["layer_norm/beta"]}
    for i in range(n_layers):
        src, dst = f"layer_{i}/", f"layers.{i}."
        qkv_w, qkv_b = v[src + "self_attention/linear_0/weight"], v[src + "self_attention/linear_0/bias"]
        q_w, k_w, v_w = qkv_w.chunk(3, dim=0)
        q_b, k_b, v_b = qkv_b.chunk(3, dim=0)
        if k_b.abs().max() > 0:
            raise StageError("CTranslate2 Whisper has a non-zero key bias; HF's k_proj has none")
        sd.update({
            dst + "self_attn.q_proj.weight": q_w, dst + "self_attn.q_proj.bias": q_b,
            dst + "self_attn.k_proj.weight": k_w,
            dst + "self_attn.v_proj.weight": v_w, dst + "self_attn.v_proj.bias": v_b,
            dst + "self_attn.out_proj.weight": v[src + "self_attention/linear_1/weight"],
            dst + "self_attn.out_proj.bias": v[src + "self_attention/linear_1/bias"],
            dst + "self_attn_layer_norm.weight": v[src + "self_attention/layer_norm/gamma"],
            dst + "self_attn_layer_norm.bias": v[src + "self_attention/layer_norm/beta"],
            dst + "fc1.weight": v[src + "ffn/linear_0/weight"],
            dst + "fc1.bias": v[src + "ffn/linear_0/bias"],
            dst + "fc2.weight": v[src + "ffn/linear_1/weight"],
            dst + "fc2.bias": v[src + "ffn/linear_1/bias"],
            dst + "final_layer_norm.weight": v[src + "ffn/layer_norm/gamma"],
            dst + "final_layer_norm.bias": v[src + "ffn/layer_norm/beta"],
        })
    return WhisperEncoder.from_state_dict(cfg, sd)


def load_ct2_whisper(name: str) -> tuple[WhisperEncoder, str]:
    """(:class:`WhisperEncoder`, sha256 of model.bin) for an installed short name.

    Converting the package's model.bin takes seconds (bf16 unpacking, fused q/k/v split), so the
    converted encoder is kept in the user cache (:func:`core.paths.user_cache_dir`) under a key
    of the package files' paths, sizes and modification times: a re-installed or changed package
    is converted again; an unreadable cache entry is converted again and replaced."""
    files = ct2_files(name)
    cached = _converted_path(name, files)
    if cached.is_file():
        try:
            return _load_converted(cached)
        except Exception as e:  # noqa: BLE001 - a damaged cache entry is a miss
            log.warning("converted %s in %s is unreadable (%s); converting again", name, cached, e)
    model = read_ct2(files)
    if model.spec != "WhisperSpec":
        raise StageError(f"{name}: model.bin holds a {model.spec}, not a Whisper model")
    encoder = encoder_from_ct2(model.variables)
    _save_converted(cached, encoder, model.checksum)
    return encoder, model.checksum


def _converted_path(name: str, files: list[Path]) -> Path:
    import hashlib

    from core.paths import user_cache_dir
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return user_cache_dir() / "whisper-ct2" / f"{name}-{h.hexdigest()[:20]}.safetensors"


def _save_converted(path: Path, encoder: WhisperEncoder, checksum: str) -> None:
    """The encoder's weights and config as one safetensors file, written atomically; a cache
    that cannot be written (read-only home, full disk) only costs the next call a conversion."""
    import json
    import os

    from safetensors.torch import save_file
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, str(tmp),
                  metadata={"config": json.dumps(encoder.config.to_dict()), "checksum": checksum})
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        log.warning("cannot cache the converted Whisper encoder in %s (%s)", path.parent, e)


def _load_converted(path: Path) -> tuple[WhisperEncoder, str]:
    """The cached encoder; the config is a transformers ``WhisperConfig`` dict (entries written
    before 0.8 hold a whole one), read without importing transformers."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    cfg = WhisperEncoderConfig.from_dict(json.loads(meta["config"]))
    return WhisperEncoder.from_state_dict(cfg, load_file(str(path))), meta["checksum"]


def export_hf_folder(name: str, out: str | Path, half: bool = True) -> Path:
    """Write an installed CTranslate2 Whisper's encoder as a transformers folder (``speech.model=``).

    Only the encoder's weights are stored (the decoder is never used here; transformers initialises
    it on load and says so), in fp16 by default: Whisper-base is then 41 MB instead of the package's
    145 MB, small enough to carry to a GPU machine without the CTranslate2 packages. Loading casts
    back to float32 (see ``features/speech_encoder.py``).
    """
    from safetensors.torch import save_file

    encoder = load_ct2_whisper(name)[0].to_transformers()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = encoder.config
    cfg.dtype = "float16" if half else "float32"
    cfg.save_pretrained(out)
    state = {f"encoder.{k}": (v.half() if half else v).contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@lru_cache(maxsize=4)
def _mel_filters(n_mels: int) -> torch.Tensor:
    """(n_mels, 201) Slaney mel filters, as Whisper's ``mel_filters.npz`` (librosa's, to 1e-9):
    transformers' ``mel_filter_bank(norm="slaney", mel_scale="slaney")`` op for op, bit for bit
    (tests/features/test_whisper_encoder.py), without importing transformers."""
    def hz_to_mel(f):  # linear below 1 kHz, logarithmic above
        return np.where(f >= 1000.0, 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) * (27.0 / np.log(6.4)),
                        3.0 * f / 200.0)

    def mel_to_hz(m):
        return np.where(m >= 15.0, 1000.0 * np.exp(np.log(6.4) / 27.0 * (m - 15.0)), 200.0 * m / 3.0)

    mel_freqs = np.linspace(hz_to_mel(np.float64(0.0)), hz_to_mel(np.float64(8000.0)), n_mels + 2)
    filter_freqs = mel_to_hz(mel_freqs)  # (n_mels + 2,) band edges and centres, Hz
    fft_freqs = np.linspace(0, 8000, N_FFT // 2 + 1)  # (201,)
    diff = np.diff(filter_freqs)
    slopes = filter_freqs[None, :] - fft_freqs[:, None]  # (201, n_mels + 2)
    bank = np.maximum(np.zeros(1), np.minimum(-slopes[:, :-2] / diff[:-1], slopes[:, 2:] / diff[1:]))
    bank *= (2.0 / (filter_freqs[2:n_mels + 2] - filter_freqs[:n_mels]))[None, :]  # (201, n_mels)
    return torch.from_numpy(np.ascontiguousarray(bank.T, dtype=np.float32))


def whisper_log_mel(windows: torch.Tensor, n_mels: int) -> torch.Tensor:
    """Whisper's normalised log-mel of un-centred 400/160 frames: (B, S) -> (B, n_mels, F).

    F = (S - 400) // 160 + 1. Normalisation per window, as Whisper does per 30 s segment.
    """
    win = torch.hann_window(N_FFT, device=windows.device)
    with torch.autocast(windows.device.type, enabled=False):  # keep the spectrum in fp32
        spec = torch.stft(windows.float(), N_FFT, MEL_HOP, window=win, center=False,
                          return_complex=True)
        power = spec.abs() ** 2  # (B, 201, F)
        mel = _mel_filters(n_mels).to(windows.device) @ power  # (B, n_mels, F)
    log = torch.clamp(mel, min=1e-10).log10()
    log = torch.maximum(log, log.amax(dim=(1, 2), keepdim=True) - 8.0)
    return (log + 4.0) / 4.0


def window_audio(audio: np.ndarray, unpadded: bool) -> list[np.ndarray]:
    """Cut audio into the sample windows whose encoder frames tile ``num_frames(len(audio))``.

    Window k covers encoder frames [1500k, 1500(k+1)); it starts 40 samples before 480000k
    (left context, zeros at the very start) and holds 320*T_k + 240 samples for T_k frames
    (2*T_k mel frames). Faithful windows always have T_k = 1500 (zero padded).
    """
    total = num_frames(len(audio))
    out = []
    for start in range(0, total, WINDOW_FRAMES):
        t_k = min(WINDOW_FRAMES, total - start) if unpadded else WINDOW_FRAMES
        s0 = start * HOP - LEFT_PAD
        length = HOP * t_k + 2 * MEL_HOP - LEFT_PAD * 2  # = 320*T_k + 240
        win = np.zeros(length, dtype=np.float32)
        lo, hi = max(s0, 0), min(s0 + length, len(audio))
        if hi > lo:
            win[lo - s0:hi - s0] = audio[lo:hi]
        out.append(win)
    return out


class WhisperFrames(nn.Module):
    """All hidden states of a Whisper encoder (ours or transformers') on the 20 ms grid, for
    lists of audio."""

    def __init__(self, encoder, unpadded: bool = False):
        super().__init__()
        self.encoder = encoder.eval()
        self.unpadded = unpadded
        self.n_mels = encoder.config.num_mel_bins
        self.num_layers = encoder.config.encoder_layers + 1
        self.dim = encoder.config.d_model

    def cost(self, n_samples: int) -> int:
        """Encoder frames computed for an utterance (the unit of the batching budget)."""
        t = num_frames(n_samples)
        return t if self.unpadded else -(-t // WINDOW_FRAMES) * WINDOW_FRAMES

    def states(self, mel: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """(B, n_mels, 2*T) -> (B, T, L, D) hidden states; ``lengths`` in encoder frames
        (:func:`features.whisper_encoder.encoder_states`)."""
        return encoder_states(self.encoder, mel, lengths)

    @torch.inference_mode()
    def forward(self, audios: list[np.ndarray]) -> list[torch.Tensor]:
        """Per utterance a (num_frames(n), L, D) tensor on the encoder's device."""
        device = self.encoder.conv1.weight.device
        wins, owner, lengths = [], [], []
        for i, a in enumerate(audios):
            for w in window_audio(a, self.unpadded):
                wins.append(w)
                owner.append(i)
                lengths.append((len(w) - 240) // HOP)
        t_max = max(lengths)
        mel = torch.zeros(len(wins), self.n_mels, 2 * t_max, device=device)  # (W, n_mels, 2T)
        for size in sorted(set(len(w) for w in wins)):  # one STFT per distinct window size
            idx = [j for j, w in enumerate(wins) if len(w) == size]
            batch = torch.from_numpy(np.stack([wins[j] for j in idx])).to(device)
            m = whisper_log_mel(batch, self.n_mels)  # (k, n_mels, 2*T_k)
            mel[idx, :, :m.shape[-1]] = m
        out = self.states(mel, lengths)  # (W, T, L, D)
        per_item: list[list[torch.Tensor]] = [[] for _ in audios]
        for j, i in enumerate(owner):
            per_item[i].append(out[j, :lengths[j]])
        return [torch.cat(p, dim=0)[:num_frames(len(a))] for p, a in zip(per_item, audios)]
