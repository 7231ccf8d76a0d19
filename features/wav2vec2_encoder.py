"""wav2vec 2.0 and HuBERT encoders in plain torch, without importing transformers (≈ 3 s of a cold
``extract``: transformers' wav2vec2 modeling module pulls in its loading machinery and torch._dynamo).

The modules have transformers' ``Wav2Vec2Model`` / ``HubertModel`` parameter names and their op
order (CNN front end with layer or group norm, feature projection, a weight-normed positional
convolution, post-LN or pre-LN "stable layer norm" blocks through ``scaled_dot_product_attention``),
so they load the same weights and compute the same numbers: ``tests/features/test_wav2vec2_encoder.py``
checks every hidden state against transformers, bit for bit, on tiny random configs. Where a folder
asks for something not implemented here (adapters, a batch-normed positional convolution, another
model type, weights under other names) :func:`load_plain_encoder` returns None and the caller loads
it with transformers instead.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from features.plain_weights import ACTIVATIONS, Container, load_plain

log = logging.getLogger(__name__)

#: (class transformers builds, prefix of its weights inside a pretraining / CTC checkpoint)
_KINDS = {"wav2vec2": ("Wav2Vec2Model", "wav2vec2."), "hubert": ("HubertModel", "hubert.")}
#: config keys whose non-default value asks for something this module does not compute
_UNSUPPORTED = {"add_adapter": False, "adapter_attn_dim": None, "conv_pos_batch_norm": False}


@dataclass(frozen=True)
class Wav2Vec2EncoderConfig:
    """What the encoder needs of a transformers ``Wav2Vec2Config`` / ``HubertConfig`` (same names
    and defaults)."""

    model_type: str = "wav2vec2"
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    feat_extract_norm: str = "group"
    feat_extract_activation: str = "gelu"
    conv_dim: tuple[int, ...] = (512,) * 7
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    conv_bias: bool = False
    num_conv_pos_embeddings: int = 128
    num_conv_pos_embedding_groups: int = 16
    do_stable_layer_norm: bool = False
    feat_proj_layer_norm: bool = True  # HuBERT's option; wav2vec2 always has it

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Wav2Vec2EncoderConfig | None":
        """From a transformers config dict, or None (with the reason logged) where it asks for
        what this module does not compute."""
        why = None
        if d.get("model_type") not in _KINDS:
            why = f"model_type {d.get('model_type')!r}"
        elif any(d.get(k, default) != default for k, default in _UNSUPPORTED.items()):
            why = "adapters or a batch-normed positional convolution"
        elif {d.get("hidden_act", "gelu"), d.get("feat_extract_activation", "gelu")} - set(ACTIVATIONS):
            why = f"activation {d.get('hidden_act')!r} / {d.get('feat_extract_activation')!r}"
        elif d.get("feat_extract_norm", "group") not in ("group", "layer"):
            why = f"feat_extract_norm {d.get('feat_extract_norm')!r}"
        if why:
            log.debug("plain wav2vec2 encoder: not for %s", why)
            return None
        known = {f.name: f for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known}
        if d["model_type"] == "wav2vec2":
            values.pop("feat_proj_layer_norm", None)
        return cls(**values)

    @property
    def kind(self) -> str:
        """The transformers class these weights belong to (stored in the stage's attributes)."""
        return _KINDS[self.model_type][0]


class _ConvLayer(nn.Module):
    """One CNN front-end layer: conv, then layer norm over channels, group norm over time, or none."""

    def __init__(self, cfg: Wav2Vec2EncoderConfig, i: int, norm: str | None):
        super().__init__()
        self.conv = nn.Conv1d(cfg.conv_dim[i - 1] if i else 1, cfg.conv_dim[i], cfg.conv_kernel[i],
                              stride=cfg.conv_stride[i], bias=cfg.conv_bias)
        self.norm = norm
        if norm == "layer":
            self.layer_norm = nn.LayerNorm(cfg.conv_dim[i])
        elif norm == "group":
            self.layer_norm = nn.GroupNorm(cfg.conv_dim[i], cfg.conv_dim[i])
        self.act = ACTIVATIONS[cfg.feat_extract_activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm == "layer":
            x = self.layer_norm(x.transpose(-2, -1)).transpose(-2, -1)
        elif self.norm == "group":
            x = self.layer_norm(x)
        return self.act(x)


class _PositionalConv(nn.Module):
    """The weight-normed grouped convolution (weight = g · v / ‖v‖ over all but the kernel axis)."""

    def __init__(self, cfg: Wav2Vec2EncoderConfig):
        super().__init__()
        d, k, groups = cfg.hidden_size, cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups
        self.weight_g = nn.Parameter(torch.empty(1, 1, k))
        self.weight_v = nn.Parameter(torch.empty(d, d // groups, k))
        self.bias = nn.Parameter(torch.empty(d))
        self.groups, self.padding, self.trim = groups, k // 2, 1 - k % 2
        self.act = ACTIVATIONS[cfg.feat_extract_activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D)."""
        weight = torch._weight_norm(self.weight_v, self.weight_g, 2)  # as torch's weight_norm
        y = F.conv1d(x.transpose(1, 2), weight, self.bias, padding=self.padding, groups=self.groups)
        if self.trim:
            y = y[:, :, :-self.trim]
        return self.act(y).transpose(1, 2)


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.head_dim = dim // heads
        self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.q_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, D), boolean mask (B, 1, T, T) of keys to attend or None -> (B, T, D)."""
        shape = (*x.shape[:-1], -1, self.head_dim)
        q, k, v = (p(x).view(shape).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim ** -0.5)
        return self.out_proj(out.transpose(1, 2).contiguous().reshape(*x.shape[:-1], -1).contiguous())


class _FeedForward(nn.Module):
    def __init__(self, cfg: Wav2Vec2EncoderConfig):
        super().__init__()
        self.intermediate_dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.output_dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output_dense(self.act(self.intermediate_dense(x)))


class _Layer(nn.Module):
    """A Transformer block: post-LN (base models) or pre-LN (``do_stable_layer_norm``, large)."""

    def __init__(self, cfg: Wav2Vec2EncoderConfig):
        super().__init__()
        self.attention = _Attention(cfg.hidden_size, cfg.num_attention_heads)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.feed_forward = _FeedForward(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.pre_ln = cfg.do_stable_layer_norm

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.pre_ln:
            x = x + self.attention(self.layer_norm(x), mask)
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.attention(x, mask))
        return self.final_layer_norm(x + self.feed_forward(x))


class _Projection(nn.Module):
    def __init__(self, cfg: Wav2Vec2EncoderConfig):
        super().__init__()
        self.layer_norm = (nn.LayerNorm(cfg.conv_dim[-1], eps=cfg.layer_norm_eps)
                           if cfg.feat_proj_layer_norm else nn.Identity())
        self.projection = nn.Linear(cfg.conv_dim[-1], cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.layer_norm(x))


class _Encoder(nn.Module):
    def __init__(self, cfg: Wav2Vec2EncoderConfig):
        super().__init__()
        self.pos_conv_embed = Container({"conv": _PositionalConv(cfg)})
        self.layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))


class Wav2Vec2Encoder(nn.Module):
    """A wav2vec2 / HuBERT model without pretraining heads: ``forward(audio, attention_mask,
    output_hidden_states=True)`` answers as transformers' model does (``hidden_states``: the first
    layer's input, then every layer's output; ``last_hidden_state``: after the final layer norm of a
    pre-LN encoder)."""

    def __init__(self, cfg: Wav2Vec2EncoderConfig):
        super().__init__()
        self.config, self.kind = cfg, cfg.kind
        norms = ([cfg.feat_extract_norm] * len(cfg.conv_dim) if cfg.feat_extract_norm == "layer"
                 else ["group"] + [None] * (len(cfg.conv_dim) - 1))
        self.feature_extractor = Container({"conv_layers": nn.ModuleList(
            _ConvLayer(cfg, i, norm) for i, norm in enumerate(norms))})
        self.feature_projection = _Projection(cfg)
        self.encoder = _Encoder(cfg)

    def frame_mask(self, attention_mask: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, samples) 0/1 -> (B, frames) bool: the first conv-output-length frames of each item."""
        n = attention_mask.sum(-1)
        for k, s in zip(self.config.conv_kernel, self.config.conv_stride):
            n = torch.div(n - k, s, rounding_mode="floor") + 1
        return torch.arange(frames, device=n.device)[None, :] < n[:, None]

    def forward(self, audio: torch.Tensor, attention_mask: torch.Tensor | None = None,
                output_hidden_states: bool = True) -> SimpleNamespace:
        x = audio[:, None]
        for conv in self.feature_extractor.conv_layers:
            x = conv(x)
        x = self.feature_projection(x.transpose(1, 2))  # (B, T, D)
        mask = None
        if attention_mask is not None:
            valid = self.frame_mask(attention_mask, x.shape[1])  # (B, T)
            x = x.masked_fill(~valid[..., None], 0)  # padded frames enter the positional conv as 0
            mask = valid[:, None, None, :].expand(-1, -1, x.shape[1], -1)  # (B, 1, T, T)
        enc = self.encoder
        x = x + enc.pos_conv_embed.conv(x)
        if not self.config.do_stable_layer_norm:
            x = enc.layer_norm(x)
        states = [x]
        for layer in enc.layers:
            x = layer(x, mask)
            states.append(x)
        last = enc.layer_norm(x) if self.config.do_stable_layer_norm else x
        return SimpleNamespace(hidden_states=tuple(states) if output_hidden_states else None,
                               last_hidden_state=last)


def weight_norm_names(key: str) -> str:
    """weight norm's ``parametrizations.weight.original0/1`` as ``weight_g``/``weight_v``."""
    key = key.replace(".parametrizations.weight.original0", ".weight_g")
    return key.replace(".parametrizations.weight.original1", ".weight_v")


def _make(config: Mapping[str, Any]):
    cfg = Wav2Vec2EncoderConfig.from_dict(config)
    if cfg is None:
        return None
    with torch.device("meta"):
        return Wav2Vec2Encoder(cfg), _KINDS[cfg.model_type][1]


def load_plain_encoder(folder: Path, device: torch.device, dtype: torch.dtype) -> Wav2Vec2Encoder | None:
    """The folder's wav2vec2 / HuBERT encoder in ``dtype`` on ``device``, or None where this module
    does not compute what transformers would, or cannot read the folder (the caller then loads it
    with transformers, whose loader reports what is wrong with a broken one)."""
    return load_plain(folder, _make, "plain-torch wav2vec2 encoder", device, dtype, weight_norm_names)
