"""Randomly initialised models of the paper's real architectures, as Hugging Face folders.

wav2vec2-large (LV-60k layout: 24 layers, 1024-d, layer-norm CNN, stable layer norm) and
BERT-large (24 layers, 1024-d) with the real uncased WordPiece tokenizer (the vocabulary of
MiniLM-L6 is BERT's 30,522-token uncased vocabulary). The real pretrained weights are not
obtainable offline; these folders exercise exactly the code paths and tensor shapes.

    python bench/make_random_models.py --out /tmp/random-models [--tokenizer DIR]
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch


WAV2VEC2_LARGE_LV60 = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
    feat_proj_dropout=0.0, hidden_dropout=0.0, attention_dropout=0.0, layerdrop=0.0)
BERT_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096, vocab_size=30522)


def make(out: Path, tokenizer: Path | None, seed: int = 0) -> dict[str, Path]:
    from transformers import BertConfig, BertModel, Wav2Vec2Config, Wav2Vec2Model
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    w2v = out / "wav2vec2-large-random"
    if not (w2v / "config.json").exists():
        Wav2Vec2Model(Wav2Vec2Config(**WAV2VEC2_LARGE_LV60)).save_pretrained(w2v)
    bert = out / "bert-large-random"
    if not (bert / "config.json").exists():
        BertModel(BertConfig(**BERT_LARGE)).save_pretrained(bert)
        if tokenizer is None:
            from features.text_models import packaged_folder
            tokenizer = packaged_folder("minilm-l6")
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                     "special_tokens_map.json"):
            if (Path(tokenizer) / name).exists():
                shutil.copy(Path(tokenizer) / name, bert / name)
    return {"speech": w2v, "text": bert}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, default=None,
                    help="folder with BERT uncased tokenizer files (default: MiniLM's)")
    a = ap.parse_args()
    for k, v in make(a.out, a.tokenizer).items():
        print(f"{k}: {v}")


if __name__ == "__main__":
    main()
