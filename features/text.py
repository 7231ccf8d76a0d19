"""The ``text`` stage: token features of a transcript from a Hugging Face text encoder.

Output per utterance: ``{"tokens": (N, D) float16}``, the hidden states of the real tokens
(special tokens such as [CLS]/[SEP] or <s>/</s>, and padding, removed using the tokenizer's
special-tokens mask), N <= max_length - 2, so the true length is the array's first dimension.

``official_slicing=True`` reproduces the official code instead: the transcript is lowercased,
padded to ``max_length`` tokens, and ``hidden[1:-1]`` is kept -> (max_length - 2, D). That drops
[CLS] and the last *padding* position, keeping [SEP] and the padding positions' hidden states.

A transcript that is missing, empty, or has no word outside bracketed non-speech tokens
(``[LAUGHTER]``, ``!``) gets no feature: an ItemError is returned and recorded, and fusion falls back to speech alone.
``official_brackets=True`` applies the official rule instead: any transcript starting with ``[``.

Models: a folder with ``config.json``, tokenizer files and weights (BERT, RoBERTa, ...), or a
packaged short name (:mod:`features.text_models`): ``minilm-l6`` (all-MiniLM-L6-v2, 384-d, the
default) or ``mpnet-base`` (all-mpnet-base-v2, 768-d, an optional install), extracted once under
``~/.cache/mmer/models`` with their weights verified.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from core.errors import ItemError, StageError
from features.base import Extractor, ItemInput, Output, torch
from features.text_models import PACKAGED, packaged_folder

log = logging.getLogger(__name__)

SHORT_NAMES = tuple(PACKAGED)
_BRACKETED = re.compile(r"\[[^\]]*\]")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".h5", ".msgpack")
_MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model")


@dataclass(frozen=True)
class TextConfig:
    model: str = "minilm-l6"  # short name or path to a Hugging Face text-encoder folder
    layer: int = -1  # hidden state: -1 = last layer, 0 = embedding output, k = layer k
    max_length: int = 122  # tokens including the two special tokens (official: 122)
    official_slicing: bool = False  # reproduce the official lowercase + pad + [1:-1] output
    official_brackets: bool = False  # official: every transcript starting with "[" gets no feature
    batch_size: int = 16


def resolve_model(spec: str) -> Path:
    """A short name or a folder path -> the model folder."""
    if spec in PACKAGED:
        return packaged_folder(spec)
    path = Path(spec).expanduser()
    if not (path / "config.json").exists():
        raise StageError(f"text model {spec!r}: not a short name ({', '.join(SHORT_NAMES)}) and "
                         "not a folder with config.json (a Hugging Face text encoder)")
    return path


def model_files(folder: Path) -> list[Path]:
    """The files that determine the output: weights, config and tokenizer files."""
    files = [p for p in folder.iterdir() if p.is_file()
             and (p.name.endswith(_WEIGHT_SUFFIXES) or p.name in _MODEL_FILES)]
    if not any(p.name.endswith(_WEIGHT_SUFFIXES) for p in files):
        raise StageError(f"text model folder {folder} has no weight files")
    return files


def model_checksum(spec: str) -> str:
    """Checksum over the model's weights, config and tokenizer files (memoised file hashes)."""
    from core.hashing import files_checksum

    return files_checksum(model_files(resolve_model(spec)))


def usable_text(text: str | None, official_brackets: bool) -> str | None:
    """The transcript to encode, or None when it has no text feature (see module docstring)."""
    if text is None:
        return None
    text = text.replace("\n", " ").strip()
    if official_brackets:
        return None if not text or text.startswith("[") else text
    return text if re.search(r"\w", _BRACKETED.sub(" ", text)) else None


class TextExtractor(Extractor):
    """Hidden states of a text encoder for each real token of the transcript."""

    name = "text"
    VERSION = 1
    Config = TextConfig
    layout = {"tokens": {"dims": "N,D", "dtype": "float16"}}

    def __init__(self, config: TextConfig | None = None, device: str = "cpu"):
        super().__init__(config, device)
        from transformers import AutoTokenizer

        from features.bert_encoder import load_plain_text_encoder
        from features.hf_load import from_pretrained

        cfg = self.config
        if cfg.max_length < 3:
            raise StageError(f"text.max_length={cfg.max_length}: must be >= 3")
        self.folder = resolve_model(cfg.model)
        self.tokenizer = from_pretrained(AutoTokenizer, self.folder, "text.model")
        # BERT / RoBERTa in plain torch (the same numbers, no transformers modeling import)
        self.model = load_plain_text_encoder(self.folder, device)
        if self.model is None:
            from transformers import AutoModel

            self.model = from_pretrained(AutoModel, self.folder, "text.model").to(device).eval()
        n_layers = self.model.config.num_hidden_layers
        if not -(n_layers + 1) <= cfg.layer <= n_layers:
            raise StageError(f"text.layer={cfg.layer}: {cfg.model} has hidden states 0..{n_layers}")
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit and cfg.max_length > limit:
            raise StageError(f"text.max_length={cfg.max_length} exceeds the model's {limit} positions")

    @classmethod
    def weights_checksum(cls, config: TextConfig) -> str:
        return model_checksum(config.model)

    def attrs(self) -> dict:
        mc = self.model.config
        return {"dim": int(mc.hidden_size), "layer": self.config.layer, "model_type": mc.model_type,
                "num_hidden_layers": int(mc.num_hidden_layers),
                "tokens": ("official: hidden[1:-1] of the max_length-padded sequence"
                           if self.config.official_slicing else "real tokens, special tokens removed")}

    def __call__(self, items: Sequence[ItemInput]) -> list[Output | ItemError]:
        out: list[Output | ItemError | None] = [None] * len(items)
        todo = []
        for k, item in enumerate(items):
            text = usable_text(item.text, self.config.official_brackets)
            if text is None:
                out[k] = ItemError(item.utt_id, "no text feature: transcript missing, empty or "
                                                "only bracketed non-speech tokens")
            else:
                todo.append((k, text.lower() if self.config.official_slicing else text))
        bs = max(1, self.config.batch_size)
        for start in range(0, len(todo), bs):
            chunk = todo[start:start + bs]
            feats = self._encode([t for _, t in chunk])
            for (k, _), f in zip(chunk, feats):
                out[k] = {"tokens": f} if len(f) else ItemError(
                    items[k].utt_id, "no text feature: the tokenizer produced no tokens")
        return out  # type: ignore[return-value]

    def _encode(self, texts: list[str]) -> list[np.ndarray]:
        """Per text an (N_i, D) float16 array (see the module docstring for N_i)."""
        with torch.no_grad():
            return self._encode_batch(texts)

    def _encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        official = self.config.official_slicing
        enc = self.tokenizer(texts, padding="max_length" if official else True, truncation=True,
                             max_length=self.config.max_length, return_tensors="pt",
                             return_special_tokens_mask=True)
        special = enc.pop("special_tokens_mask")  # (B, L) 1 for [CLS]/[SEP]/<s>/</s>/padding
        enc = {k: v.to(self.device) for k, v in enc.items()}
        want_all = self.config.layer != -1
        res = self.model(**enc, output_hidden_states=want_all)
        hidden = res.hidden_states[self.config.layer] if want_all else res.last_hidden_state
        hidden = hidden.float().cpu()  # (B, L, D)
        if official:
            return [h[1:-1].numpy().astype(np.float16) for h in hidden]  # (max_length - 2, D)
        keep = (enc["attention_mask"].cpu() == 1) & (special == 0)  # (B, L)
        return [h[m].numpy().astype(np.float16) for h, m in zip(hidden, keep)]
