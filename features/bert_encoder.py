"""BERT and RoBERTa text encoders in plain torch, without transformers' modeling code (≈ 2 s of
a cold ``text`` stage or ``predict --text``; the tokenizer stays transformers').

The modules have transformers' ``BertModel`` / ``RobertaModel`` parameter names and op order
(word + token-type + position embeddings and a layer norm; post-LN blocks through
``scaled_dot_product_attention``; RoBERTa's positions counted from its padding id), so they load
the same weights and compute the same numbers: ``tests/features/test_bert_encoder.py`` checks
every hidden state against transformers bit for bit (tiny random configs and the packaged
MiniLM). Other text models (MPNet, ...) and anything else not computed here load through
transformers: :func:`load_plain_text_encoder` returns None for them.
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

#: prefix of the encoder's weights inside a pretraining / task checkpoint
_PREFIX = {"bert": "bert.", "roberta": "roberta."}
#: config values this module computes (anything else: transformers)
_REQUIRED = {"is_decoder": False, "add_cross_attention": False, "chunk_size_feed_forward": 0,
             "position_embedding_type": "absolute"}


@dataclass(frozen=True)
class BertEncoderConfig:
    """What the encoder needs of a transformers ``BertConfig`` / ``RobertaConfig``."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BertEncoderConfig | None":
        """From a transformers config dict, or None where it asks for what is not computed here."""
        if (d.get("model_type") not in _PREFIX or d.get("hidden_act", "gelu") not in ACTIVATIONS
                or any(d.get(k, v) not in (v, None) for k, v in _REQUIRED.items())):
            log.debug("plain text encoder: not for model_type %r", d.get("model_type"))
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names and v is not None})


class _Embeddings(nn.Module):
    def __init__(self, cfg: BertEncoderConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.roberta, self.pad = cfg.model_type == "roberta", cfg.pad_token_id

    def forward(self, ids: torch.Tensor, token_types: torch.Tensor | None) -> torch.Tensor:
        if self.roberta:  # positions count the real tokens from padding id + 1, as fairseq does
            real = ids.ne(self.pad).int()
            positions = (torch.cumsum(real, dim=1).type_as(real) * real).long() + self.pad
        else:
            positions = torch.arange(ids.shape[1], device=ids.device)[None]
        if token_types is None:
            token_types = torch.zeros_like(ids)
        x = self.word_embeddings(ids) + self.token_type_embeddings(token_types)
        return self.LayerNorm(x + self.position_embeddings(positions))


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.head_dim = dim // heads
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        shape = (*x.shape[:-1], -1, self.head_dim)
        q, k, v = (p(x).view(shape).transpose(1, 2) for p in (self.query, self.key, self.value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim ** -0.5)
        return out.transpose(1, 2).contiguous().reshape(*x.shape[:-1], -1).contiguous()


class _DenseNorm(nn.Module):
    """``LayerNorm(dense(x) + residual)`` (BERT's attention output and layer output)."""

    def __init__(self, d_in: int, d_out: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        self.LayerNorm = nn.LayerNorm(d_out, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Layer(nn.Module):
    def __init__(self, cfg: BertEncoderConfig):
        super().__init__()
        d, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.attention = Container({"self": _SelfAttention(d, cfg.num_attention_heads),
                                    "output": _DenseNorm(d, d, eps)})
        self.intermediate = Container({"dense": nn.Linear(d, cfg.intermediate_size)})
        self.output = _DenseNorm(cfg.intermediate_size, d, eps)
        self.act = ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention.output(self.attention.self(x, mask), x)
        return self.output(self.act(self.intermediate.dense(x)), x)


class BertEncoder(nn.Module):
    """``forward(input_ids, attention_mask, token_type_ids, output_hidden_states)`` answers as
    transformers' model does (``hidden_states``: the embeddings, then every layer's output)."""

    def __init__(self, cfg: BertEncoderConfig):
        super().__init__()
        self.config = cfg
        self.embeddings = _Embeddings(cfg)
        self.encoder = Container({"layer": nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))})

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                output_hidden_states: bool = False) -> SimpleNamespace:
        x = self.embeddings(input_ids, token_type_ids)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):  # as transformers: no
            real = attention_mask.bool()  # mask at all where nothing is padded
            mask = real[:, None, None, :].expand(-1, -1, real.shape[1], -1)  # (B, 1, T, T)
        states = [x]
        for layer in self.encoder.layer:
            x = layer(x, mask)
            states.append(x)
        return SimpleNamespace(last_hidden_state=x,
                               hidden_states=tuple(states) if output_hidden_states else None)


def _make(config: Mapping[str, Any]):
    cfg = BertEncoderConfig.from_dict(config)
    if cfg is None:
        return None
    with torch.device("meta"):
        return BertEncoder(cfg), _PREFIX[cfg.model_type]


def load_plain_text_encoder(folder: Path, device: str | torch.device) -> BertEncoder | None:
    """The folder's BERT / RoBERTa encoder (float32, eval mode) on ``device``, or None where this
    module does not compute it or cannot read the folder (the caller loads it with transformers)."""
    return load_plain(folder, _make, "plain-torch text encoder", torch.device(device), torch.float32)
