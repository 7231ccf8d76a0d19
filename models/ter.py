"""The text emotion model: the official 1-D CNN over Transformer token features.

Conv1d in->256 (k1) -> 256->256 (k1) -> 256->128 (k8) -> 128->64 (k4), ReLU after each, padding 1
(as the official code), average pooling over time, Linear 64->n_classes. Input: token features
zero-padded to ``max_tokens`` (official 122) with their true lengths.

Pooling: "masked" (default) averages the output positions that a real token sequence of length n
produces, ``clamp(n + 8*padding - 10, 1, ...)``, so padding does not dilute short sentences;
"official" averages the first ``max_tokens - 4`` positions whatever the length (AvgPool1d(118) on
122 tokens). ``sigmoid_logits`` reproduces the official sigmoid before the cross-entropy (and before
the softmax at inference).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TERConfig:
    input_dim: int = 1024  # token feature size (taken from the features: 1024 BERT-large, 384 MiniLM)
    n_classes: int = 4
    max_tokens: int = 122  # N': inputs are zero-padded (or truncated) to this many tokens
    channels: tuple[int, ...] = (256, 256, 128, 64)
    kernels: tuple[int, ...] = (1, 1, 8, 4)
    conv_padding: int = 1  # official: padding=1 on every conv, even the kernel-1 ones
    pooling: str = "masked"  # "masked" | "official"
    sigmoid_logits: bool = False  # official quirk: sigmoid on the logits before cross-entropy
    dropout: float = 0.0  # before the final linear layer (official: none)

    @property
    def trim_margin(self) -> int:
        """Zero tokens kept after the longest sentence when a batch is trimmed (masked pooling):
        enough that the valid outputs never reach a conv's own padding, so trimming is exact."""
        return sum(k - 1 for k in self.kernels) + 2 * self.conv_padding  # >= the receptive field

    def batch_length(self, longest: int) -> int:
        """Tokens a batch needs: all ``max_tokens`` for official pooling, else longest + margin."""
        if self.pooling == "official":
            return self.max_tokens
        return min(self.max_tokens, max(longest + self.trim_margin, sum(self.kernels)))

    def out_length(self, n: int | torch.Tensor):
        """Conv-stack output length for an input of length ``n``."""
        return n + len(self.kernels) * 2 * self.conv_padding - sum(k - 1 for k in self.kernels)


class TextCNN(nn.Module):
    def __init__(self, config: TERConfig):
        super().__init__()
        if config.pooling not in ("masked", "official"):
            raise ValueError(f"pooling must be 'masked' or 'official', not {config.pooling!r}")
        if config.out_length(config.max_tokens) < 1:
            raise ValueError(f"max_tokens={config.max_tokens} is too short for kernels {config.kernels}")
        self.config = config
        dims = (config.input_dim, *config.channels)
        self.convs = nn.ModuleList(
            nn.Conv1d(i, o, k, padding=config.conv_padding) for i, o, k in zip(dims, dims[1:], config.kernels))
        self.dropout = nn.Dropout(config.dropout)
        self.fc = nn.Linear(config.channels[-1], config.n_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, N', D) zero-padded tokens, (B,) true lengths -> (B, C) logits."""
        cfg = self.config
        h = x.float().transpose(1, 2)  # (B, D, N')
        for conv in self.convs:
            h = F.relu(conv(h))  # (B, C_i, T_i)
        t_out = h.shape[-1]
        if cfg.pooling == "official":
            pooled = h[..., :min(t_out, cfg.max_tokens - 4)].mean(-1)  # (B, 64)
        else:
            valid = cfg.out_length(lengths.to(h.device)).clamp(1, t_out)  # (B,)
            mask = torch.arange(t_out, device=h.device)[None, :] < valid[:, None]  # (B, T)
            pooled = (h * mask[:, None, :]).sum(-1) / valid[:, None].to(h.dtype)  # (B, 64)
        logits = self.fc(self.dropout(pooled))  # (B, C)
        return torch.sigmoid(logits) if cfg.sigmoid_logits else logits

    @staticmethod
    def probabilities(logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities from ``forward``'s output (softmax of sigmoid, if official)."""
        return torch.softmax(logits, dim=-1)


def pad_tokens(feats: list, max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (n_i, D) arrays -> (B, max_tokens, D) zero-padded float16 tensor, (B,) lengths."""
    d = feats[0].shape[1]
    out = torch.zeros(len(feats), max_tokens, d, dtype=torch.float16)
    lengths = torch.zeros(len(feats), dtype=torch.long)
    for i, f in enumerate(feats):
        n = min(len(f), max_tokens)
        out[i, :n] = torch.as_tensor(f[:n])
        lengths[i] = n
    return out, lengths
