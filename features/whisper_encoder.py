"""Whisper's audio encoder in plain torch, without importing transformers (≈ 2 s of a cold start).

The module has transformers' ``WhisperEncoder`` parameter names and its op order (conv stem with
GELU, learned positions, pre-LN self-attention blocks with q scaled before the product and a
bias-free k, GELU FFN, a final layer norm), so it loads the same state dict and computes the same
numbers, to float32 rounding (on the CPU its projections are oneDNN's matmul, :func:`linear`):
``tests/features/test_whisper_encoder.py`` checks every layer against transformers on a tiny
random config. :func:`encoder_states` runs either module (they share attribute names) and
is the one definition of the layers the ``speech`` stage stores.

Only what the CTranslate2 Whisper packages hold is implemented: GELU activations, no embedding
scale; :meth:`WhisperEncoderConfig.from_dict` refuses other configs.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from core.errors import StageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WhisperEncoderConfig:
    """The encoder half of a transformers ``WhisperConfig`` (same field names)."""

    d_model: int
    num_mel_bins: int
    encoder_layers: int
    encoder_attention_heads: int
    encoder_ffn_dim: int
    max_source_positions: int  # encoder frames of one 30 s window (1,500)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "WhisperEncoderConfig":
        """From a transformers ``WhisperConfig`` dict (extra keys ignored); StageError for what
        this module does not compute (another activation, a scaled embedding)."""
        if d.get("activation_function", "gelu") != "gelu" or d.get("scale_embedding", False):
            raise StageError(f"Whisper config with activation {d.get('activation_function')!r} and "
                             f"scale_embedding={d.get('scale_embedding')}: only GELU and no scale "
                             "are implemented (features/whisper_encoder.py)")
        return cls(**{f.name: int(d[f.name]) for f in dataclasses.fields(cls)})

    def to_dict(self) -> dict[str, Any]:
        """A dict ``WhisperConfig(**d)`` and :meth:`from_dict` both read."""
        return {**dataclasses.asdict(self), "model_type": "whisper",
                "activation_function": "gelu", "scale_embedding": False}


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``; for float32 inference on the CPU through oneDNN's matmul, as torch.compile's
    CPU inference does, rather than MKL's sgemm: the same products summed in another order
    (outputs within 1e-5), 1.3–1.6× faster on a 2-core AMD EPYC (bench/RESULTS.md, predict)."""
    if _ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32 and layer.weight.dtype == torch.float32 \
            and not (torch.is_grad_enabled() and (x.requires_grad or layer.weight.requires_grad)):
        try:
            return _ONEDNN[0](x, layer.weight, layer.bias, "none", [], "")
        except RuntimeError as e:  # a build or CPU whose oneDNN refuses: torch's own path from now on
            _ONEDNN.clear()
            log.info("oneDNN linear unavailable (%s); Whisper layers use torch's matmul", str(e).splitlines()[0])
    return layer(x)


def _onednn_linear() -> list:
    """[oneDNN's linear op] where this torch build has it, else []."""
    if not torch.backends.mkldnn.is_available():
        return []
    try:
        return [torch.ops.mkldnn._linear_pointwise]
    except (AttributeError, RuntimeError):  # torch builds without it: no such operator
        return []


#: [the op] while oneDNN's linear can be used; emptied at its first failure.
_ONEDNN: list = _onednn_linear()


class WhisperSelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.head_dim = dim // heads
        self.scaling = self.head_dim ** -0.5
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, T, D), additive mask (B, 1, 1, T) or None -> (B, T, D)."""
        b, t, _ = x.shape
        shape = (b, t, -1, self.head_dim)
        # q scaled before the product, as Whisper (and transformers) do: the order changes bits
        q = (linear(self.q_proj, x) * self.scaling).view(shape).transpose(1, 2).contiguous()  # (B, H, T, d)
        k = linear(self.k_proj, x).view(shape).transpose(1, 2).contiguous()
        v = linear(self.v_proj, x).view(shape).transpose(1, 2).contiguous()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)  # (B, H, T, d)
        return linear(self.out_proj, out.transpose(1, 2).contiguous().reshape(b, t, -1))


class WhisperEncoderLayer(nn.Module):
    """Pre-LN block: x + attn(ln(x)), then + fc2(gelu(fc1(ln(x))))."""

    def __init__(self, cfg: WhisperEncoderConfig):
        super().__init__()
        self.self_attn = WhisperSelfAttention(cfg.d_model, cfg.encoder_attention_heads)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.d_model)
        self.fc1 = nn.Linear(cfg.d_model, cfg.encoder_ffn_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_dim, cfg.d_model)
        self.final_layer_norm = nn.LayerNorm(cfg.d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), mask)  # (B, T, D)
        x = x + linear(self.fc2, F.gelu(linear(self.fc1, self.final_layer_norm(x))))
        if x.dtype == torch.float16:  # as transformers: keep fp16 activations finite
            bound = torch.finfo(x.dtype).max - 1000
            x = torch.clamp(x, min=-bound, max=bound)
        return x


class WhisperEncoder(nn.Module):
    """Whisper's encoder: ``forward(mel, lengths)`` gives every hidden state (B, T, L, D)."""

    def __init__(self, cfg: WhisperEncoderConfig):
        super().__init__()
        self.config = cfg
        self.conv1 = nn.Conv1d(cfg.num_mel_bins, cfg.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(cfg.d_model, cfg.d_model, kernel_size=3, stride=2, padding=1)
        # given its (uninitialised) weight: a normal_ init on the meta device imports
        # torch._dynamo (1.1 s of a cold start), and the weight is always loaded
        self.embed_positions = nn.Embedding(cfg.max_source_positions, cfg.d_model,
                                            _weight=torch.empty(cfg.max_source_positions, cfg.d_model))
        self.layers = nn.ModuleList(WhisperEncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(cfg.d_model)

    @classmethod
    def from_state_dict(cls, cfg: WhisperEncoderConfig,
                        state: Mapping[str, torch.Tensor]) -> "WhisperEncoder":
        """Built on the meta device and given ``state``'s tensors (no random initialisation of
        weights about to be replaced); every weight must be there (strict: a RuntimeError names
        what is missing). Eval mode, no gradients."""
        with torch.device("meta"):
            enc = cls(cfg)
        enc.load_state_dict(dict(state), strict=True, assign=True)
        return enc.eval().requires_grad_(False)

    def forward(self, mel: torch.Tensor, lengths: Sequence[int] | None = None) -> torch.Tensor:
        return encoder_states(self, mel, lengths)

    def to_transformers(self):
        """transformers' ``WhisperEncoder`` with these weights (exports, cross-checks)."""
        from transformers import WhisperConfig
        from transformers.models.whisper.modeling_whisper import WhisperEncoder as HFEncoder

        cfg = WhisperConfig(**self.config.to_dict(), decoder_layers=1, decoder_attention_heads=1)
        with torch.device("meta"):
            hf = HFEncoder(cfg)
        hf.load_state_dict(self.state_dict(), strict=True, assign=True)
        return hf.eval().requires_grad_(False)


def encoder_states(enc: nn.Module, mel: torch.Tensor, lengths: Sequence[int] | None = None) -> torch.Tensor:
    """All hidden states of a Whisper encoder (this module's or transformers'), (B, n_mels, 2T)
    -> (B, T, L, D), L = layers + 1: the input of the first layer, then each layer's output, the
    last after the final layer norm (transformers' ``hidden_states`` with ``output_hidden_states``).

    ``lengths``: real encoder frames per item (default: all T). Mel frames beyond 2*len must be
    0: they then act as the conv's own zero padding, and padded frames are masked out of
    attention, so a batch equals its items run alone.
    """
    t_max = mel.shape[-1] // 2
    x = F.gelu(enc.conv1(mel))
    x = F.gelu(enc.conv2(x)).permute(0, 2, 1)  # (B, T, D)
    x = x + enc.embed_positions.weight[:t_max]
    mask = None
    if lengths is not None and min(lengths) < t_max:
        valid = torch.arange(t_max, device=x.device)[None, :] < torch.tensor(
            lengths, device=x.device)[:, None]  # (B, T)
        mask = torch.zeros(valid.shape, dtype=x.dtype, device=x.device)
        mask = mask.masked_fill(~valid, torch.finfo(x.dtype).min)[:, None, None, :]  # (B, 1, 1, T)
    states = [x]
    for layer in enc.layers:
        x = layer(x, mask)
        states.append(x)
    states[-1] = enc.layer_norm(x)  # the readout of the last layer (features/whisper_ct2.py)
    return torch.stack(states, dim=2)  # (B, T, L, D)
