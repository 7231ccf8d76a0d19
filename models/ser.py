"""The AutoVC-like cross-representation SER network (Makiuchi et al., ASRU 2021; DESIGN.md §1).

A learnable weighted average of the L cached encoder layers (or the mel spectrogram, for the
paper's ablation) is concatenated with the speaker mean and squeezed through a narrow BLSTM
bottleneck that emits one code every ``freq`` frames. The codes feed an emotion classifier and,
upsampled, an AutoVC decoder that must rebuild the mel spectrogram from them, the speaker
embedding and the phone sequence. Loss = MSE(L_r1) + MSE(L_r2) + cross-entropy(L_e).

Shapes: B batch, T frames (a 96-frame crop in training), L layers, D feature dim, C = 2·d.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import TrainingError
from models.compiled import CompiledInTraining
from models.layer_weights import LayerWeights


@dataclass(frozen=True)
class SERConfig:
    """Architecture of one SER model; presets in :data:`PRESETS`."""

    name: str = "small"
    input: str = "encoder"  # "encoder": cached speech-encoder layers; "mel": the spectrogram
    n_layers: int = 25  # L (wav2vec2-large: 25; Whisper base: 7; mel input: 1)
    feat_dim: int = 1024  # D (mel input: 80)
    layer_weighting: str = "raw"  # "raw": Σα·x/Σα with α init 1 (official); "softmax"
    dim_neck: int = 8  # d: BLSTM units per direction in the bottleneck
    freq: int = 48  # f: one code every f frames (must divide crop)
    crop: int = 96  # frames per training crop / inference window
    dim_spk: int = 256  # speaker embedding (Resemblyzer)
    n_mels: int = 80
    n_phones: int = 128  # one-hot phone vocabulary
    dim_phone: int = 128  # phone-encoder BLSTM units per direction (output 2·dim_phone)
    dim_conv: int = 512  # encoder / phone-encoder conv channels
    dim_pre: int = 512  # decoder's first LSTM and convs
    dim_dec: int = 1024  # decoder's 2-layer LSTM
    n_classes: int = 4
    classifier_hidden: int = 128
    classifier_act: str = "none"  # official: no non-linearity between the linear layers; "relu"
    dropout: float = 0.5

    def __post_init__(self):
        if self.crop % self.freq:
            raise TrainingError(f"SER config {self.name!r}: freq={self.freq} must divide crop={self.crop}")
        if self.layer_weighting not in ("raw", "softmax"):
            raise TrainingError(f"layer_weighting must be 'raw' or 'softmax', not {self.layer_weighting!r}")
        if self.classifier_act not in ("none", "relu"):
            raise TrainingError(f"classifier_act must be 'none' or 'relu', not {self.classifier_act!r}")
        if self.input not in ("encoder", "mel"):
            raise TrainingError(f"input must be 'encoder' or 'mel', not {self.input!r}")

    @property
    def reads(self) -> tuple[str, ...]:
        """The cached inputs it learns from: its input (encoder layers, or the mel for spec),
        the mel it reconstructs, the phones its decoder reads and the speaker means."""
        return (("encoder",) if self.input == "encoder" else ()) + ("mel", "phones", "speaker")

    @property
    def n_codes(self) -> int:
        """Codes per crop: crop / f (small: 2, large: 48)."""
        return self.crop // self.freq

    @property
    def code_size(self) -> int:
        """Classifier input: 2d · crop/f (small: 32)."""
        return 2 * self.dim_neck * self.n_codes

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, SERConfig] = {
    "small": SERConfig(name="small", dim_neck=8, freq=48),  # the paper's best
    "large": SERConfig(name="large", dim_neck=128, freq=2),  # better reconstruction, worse emotion
    "spec": SERConfig(name="spec", input="mel", n_layers=1, feat_dim=80, dim_neck=8, freq=48),
}

#: Narrower convolutions/LSTMs, same architecture, for CPU runs (demo, benches): ~20× fewer FLOPs.
CPU_WIDTHS: dict[str, int] = {"dim_conv": 64, "dim_pre": 64, "dim_dec": 128, "dim_phone": 32}


def make_config(preset: str = "small", **overrides: Any) -> SERConfig:
    """A preset with fields overridden (e.g. ``n_layers=7, feat_dim=512`` for Whisper base)."""
    if preset not in PRESETS:
        raise TrainingError(f"unknown SER config {preset!r}; presets: {', '.join(PRESETS)}")
    base = PRESETS[preset]
    if base.input == "mel":  # the mel ablation's input size is the mel's, whatever the encoder
        overrides = {k: v for k, v in overrides.items() if k not in ("n_layers", "feat_dim")}
    return dataclasses.replace(base, **overrides)


# --- building blocks (AutoVC's ConvNorm / LinearNorm: Xavier init with the activation's gain) --

def conv_norm(c_in: int, c_out: int, k: int = 5, gain: str = "relu") -> nn.Conv1d:
    conv = nn.Conv1d(c_in, c_out, k, padding=(k - 1) // 2)
    nn.init.xavier_uniform_(conv.weight, gain=nn.init.calculate_gain(gain))
    return conv


def linear_norm(d_in: int, d_out: int, gain: str = "linear") -> nn.Linear:
    lin = nn.Linear(d_in, d_out)
    nn.init.xavier_uniform_(lin.weight, gain=nn.init.calculate_gain(gain))
    return lin


class ConvStack(CompiledInTraining, nn.ModuleList):
    """(Conv1d + BatchNorm) blocks, each followed by ``act`` (the last one only if ``last_act``):
    (B, C, T) → (B, C', T)."""

    def __init__(self, blocks, act=F.relu, last_act: bool = True):
        super().__init__(blocks)
        self.act, self.last_act = act, last_act

    def run(self, h: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
        """h (B, C, T) → (B, C', T). ``side`` (B, S), when given, is an input constant in time
        that the first convolution reads beside h (its weight's last S input channels): the same
        as convolving h with ``side`` repeated along T and concatenated, without building that."""
        if h.is_cuda:
            return self._run_channels_last(h, side)
        for i, (conv, norm) in enumerate(self):
            h = F.conv1d(h, conv.weight[:, : h.shape[1]], conv.bias, padding=conv.padding)  # h's columns
            if i == 0 and side is not None:
                h = h + _side_term(conv, side, h.shape[-1])
            h = norm(h)
            if self.last_act or i < len(self) - 1:
                h = self.act(h)
        return h

    def _run_channels_last(self, h: torch.Tensor, side: torch.Tensor | None = None) -> torch.Tensor:
        """The same blocks as (1 × k) 2-D convolutions on a channels-last (B, C, 1, T) view: the
        (B, C, T) inputs are transposes of the LSTMs' (B, T, C), which is that layout already, so
        cuDNN runs without layout copies, and the output's transpose is what the next LSTM reads
        (1.3–1.6× the 1-D stacks on an H200, bench/ser_step_parts.py; same weights, same math)."""
        x = h.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        for i, (conv, norm) in enumerate(self):
            x = F.conv2d(x, conv.weight[:, : x.shape[1]].unsqueeze(2), conv.bias, padding=(0, conv.padding[0]))
            if i == 0 and side is not None:
                x = x + _side_term(conv, side, x.shape[-1]).unsqueeze(2)
            x = _batch_norm(norm, x)
            if self.last_act or i < len(self) - 1:
                x = self.act(x)
        return x.squeeze(2)


def _side_term(conv: nn.Conv1d, side: torch.Tensor, t: int) -> torch.Tensor:
    """What ``conv``'s last S input channels add to its (B, C', T) output when they read ``side``
    (B, S) at every frame: per tap k, W[:, -S:, k] · side, summed over the taps that land inside
    the T frames (all but at the edges, where the zero padding cuts some off)."""
    s, k, pad = side.shape[1], conv.kernel_size[0], conv.padding[0]
    taps = torch.einsum("bs,osk->bok", side.to(conv.weight.dtype), conv.weight[:, -s:])  # (B, C', k)
    pos = torch.arange(t, device=side.device)[:, None] + torch.arange(k, device=side.device) - pad
    inside = ((pos >= 0) & (pos < t)).to(taps.dtype)  # (T, k): tap k of frame t reads a real frame
    return torch.einsum("bok,tk->bot", taps, inside)


def _batch_norm(norm: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """``norm`` (a BatchNorm1d: its weights, running statistics and momentum) applied to a
    (B, C, 1, T) input, which BatchNorm1d's own forward refuses."""
    momentum = norm.momentum or 0.0
    if norm.training and norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
        if norm.momentum is None:  # a cumulative average, as _BatchNorm.forward does
            momentum = 1.0 / float(norm.num_batches_tracked)
    return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                        norm.training or norm.running_mean is None, momentum, norm.eps)


def conv_stack(c_in: int, c_out: int, n: int = 3) -> ConvStack:
    """n × (Conv1d k5 + BatchNorm + ReLU)."""
    return ConvStack(
        nn.Sequential(conv_norm(c_in if i == 0 else c_out, c_out), nn.BatchNorm1d(c_out)) for i in range(n)
    )


_RNN_AUTOCAST_OK: dict[tuple[str, int | None], bool] = {}


def _rnn_autocast_ok(device: torch.device) -> bool:
    """Whether cuDNN LSTMs run under this device's autocast dtype (checked once per device)."""
    key = (device.type, device.index)
    if key not in _RNN_AUTOCAST_OK:
        dtype = torch.get_autocast_dtype(device.type)
        try:
            lstm = nn.LSTM(8, 8, batch_first=True).to(device)
            with torch.autocast(device.type, dtype=dtype):
                out, _ = lstm(torch.randn(2, 3, 8, device=device, dtype=dtype))
            out.float().sum().backward()
            _RNN_AUTOCAST_OK[key] = True
        except RuntimeError as e:
            logging.getLogger(__name__).warning("LSTMs under %s autocast fail on %s (%s); they run in "
                                                "float32", dtype, device, str(e).splitlines()[0])
            _RNN_AUTOCAST_OK[key] = False
    return _RNN_AUTOCAST_OK[key]


def run_lstm(lstm: nn.LSTM, x: torch.Tensor) -> torch.Tensor:
    """``lstm(x)`` outputs; in float32 where the autocast dtype has no cuDNN RNN kernel."""
    if x.is_cuda and torch.is_autocast_enabled("cuda") and not _rnn_autocast_ok(x.device):
        with torch.autocast("cuda", enabled=False):
            return lstm(x.float())[0]
    return lstm(x)[0]


class Encoder(nn.Module):
    """Conv stack + BLSTM bottleneck; codes every ``freq`` frames (AutoVC)."""

    def __init__(self, cfg: SERConfig):
        super().__init__()
        self.dim_neck, self.freq = cfg.dim_neck, cfg.freq
        self.convs = conv_stack(cfg.feat_dim + cfg.dim_spk, cfg.dim_conv)
        self.lstm = nn.LSTM(cfg.dim_conv, cfg.dim_neck, 2, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor, spk: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), spk (B, S) → codes (B, T/f, 2d); T must be a multiple of f."""
        t = x.shape[1]
        if t % self.freq:
            raise TrainingError(f"encoder input has {t} frames, not a multiple of freq={self.freq}")
        h = self.convs(x.transpose(1, 2), spk)  # (B, 512, T): the speaker read at every frame
        out = run_lstm(self.lstm, h.transpose(1, 2))  # (B, T, 2d)
        fwd = out[:, self.freq - 1 :: self.freq, : self.dim_neck]  # forward state at i+f-1: (B, T/f, d)
        bwd = out[:, :: self.freq, self.dim_neck :]  # backward state at i: (B, T/f, d)
        return torch.cat([fwd, bwd], -1)  # (B, T/f, 2d)


class PhoneEncoder(nn.Module):
    """One-hot phones (B, T, 128) → (B, T, 2·dim_phone)."""

    def __init__(self, cfg: SERConfig):
        super().__init__()
        self.convs = conv_stack(cfg.n_phones, cfg.dim_conv)
        self.lstm = nn.LSTM(cfg.dim_conv, cfg.dim_phone, 2, batch_first=True, bidirectional=True)

    def forward(self, phones: torch.Tensor) -> torch.Tensor:
        h = self.convs(phones.transpose(1, 2))  # (B, 512, T)
        return run_lstm(self.lstm, h.transpose(1, 2))  # (B, T, 256)


class Decoder(nn.Module):
    """AutoVC decoder: LSTM 512 → 3 conv 512 k5 → 2-layer LSTM 1024 → Linear 80."""

    def __init__(self, cfg: SERConfig):
        super().__init__()
        d_in = 2 * cfg.dim_neck + cfg.dim_spk + 2 * cfg.dim_phone
        self.lstm1 = nn.LSTM(d_in, cfg.dim_pre, 1, batch_first=True)
        self.convs = conv_stack(cfg.dim_pre, cfg.dim_pre)
        self.lstm2 = nn.LSTM(cfg.dim_pre, cfg.dim_dec, 2, batch_first=True)
        self.proj = linear_norm(cfg.dim_dec, cfg.n_mels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = run_lstm(self.lstm1, x)  # (B, T, 512)
        h = self.convs(h.transpose(1, 2))  # (B, 512, T)
        h = run_lstm(self.lstm2, h.transpose(1, 2))  # (B, T, 1024)
        return self.proj(h)  # (B, T, 80)


class Postnet(nn.Module):
    """5 convs (512 channels, tanh) predicting a residual on the decoder's mel."""

    def __init__(self, cfg: SERConfig, n: int = 5):
        super().__init__()
        chans = [cfg.n_mels] + [cfg.dim_pre] * (n - 1) + [cfg.n_mels]
        self.convs = ConvStack(
            (nn.Sequential(conv_norm(chans[i], chans[i + 1], gain="tanh" if i < n - 1 else "linear"),
                           nn.BatchNorm1d(chans[i + 1])) for i in range(n)),
            act=torch.tanh, last_act=False)  # 512 channels between, tanh; no activation at the end

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.convs(mel.transpose(1, 2)).transpose(1, 2)  # (B, T, 80)


class Classifier(nn.Module):
    """Flattened codes (B, 2d·T/f) → logits (B, n_classes)."""

    def __init__(self, cfg: SERConfig):
        super().__init__()
        h, relu = cfg.classifier_hidden, cfg.classifier_act == "relu"
        layers: list[nn.Module] = [nn.Linear(cfg.code_size, h)] + ([nn.ReLU()] if relu else [])
        layers += [nn.Linear(h, h)] + ([nn.ReLU()] if relu else [])
        layers += [nn.Dropout(cfg.dropout), nn.Linear(h, cfg.n_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.net(codes.flatten(1))  # (B, n_classes)


class SERModel(nn.Module):
    """Layer weights → encoder → (classifier, decoder + postnet)."""

    def __init__(self, cfg: SERConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = LayerWeights(cfg.n_layers, cfg.layer_weighting)
        self.encoder = Encoder(cfg)
        self.classifier = Classifier(cfg)
        self.phone_encoder = PhoneEncoder(cfg)
        self.decoder = Decoder(cfg)
        self.postnet = Postnet(cfg)

    def encode(self, feats: torch.Tensor, spk: torch.Tensor) -> torch.Tensor:
        """feats (B, T, L, D), spk (B, 256) → codes (B, T/f, 2d)."""
        return self.encoder(self.layers(feats), spk)

    def classify(self, feats: torch.Tensor, spk: torch.Tensor) -> torch.Tensor:
        """Logits only (inference): feats (B, crop, L, D) → (B, n_classes)."""
        return self.classifier(self.encode(feats, spk))

    def forward(self, feats: torch.Tensor, spk: torch.Tensor, phones: torch.Tensor) -> dict[str, torch.Tensor]:
        """feats (B, T, L, D), spk (B, 256), phones (B, T, 128) one-hot → logits, mel_r1, mel_r2."""
        codes = self.encode(feats, spk)  # (B, T/f, 2d)
        logits = self.classifier(codes)  # (B, n_classes)
        b, t = feats.shape[:2]
        up = codes.repeat_interleave(self.cfg.freq, dim=1)  # (B, T, 2d): upsampling by repetition
        dec_in = torch.cat(
            [up, spk.to(up.dtype)[:, None, :].expand(b, t, -1), self.phone_encoder(phones.to(up.dtype))], -1
        )  # (B, T, 2d + 256 + 256)
        mel_r1 = self.decoder(dec_in)  # (B, T, 80)
        mel_r2 = mel_r1 + self.postnet(mel_r1)  # (B, T, 80)
        return {"codes": codes, "logits": logits, "mel_r1": mel_r1, "mel_r2": mel_r2}


def ser_loss(out: dict[str, torch.Tensor], mel: torch.Tensor, labels: torch.Tensor,
             class_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """L = MSE(mel_r1, mel) + MSE(mel_r2, mel) + CE(logits, labels) (class-weighted when
    ``class_weights`` (C,) is given); terms computed in float32."""
    r1 = F.mse_loss(out["mel_r1"].float(), mel.float())
    r2 = F.mse_loss(out["mel_r2"].float(), mel.float())
    ce = F.cross_entropy(out["logits"].float(), labels, weight=class_weights)
    return {"loss": r1 + r2 + ce, "r1": r1, "r2": r2, "ce": ce}
