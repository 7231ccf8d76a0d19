"""The text stage: real MiniLM features, special-token handling of BERT and RoBERTa, no-text items."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from core.errors import ItemError, StageError
from features.base import ItemInput
from features.text import TextConfig, TextExtractor, model_checksum, usable_text
from pipeline.plan import stage_identity
from pipeline.stages import get_stage
from tests.fixtures.encoders import save_tiny_text_encoder

torch.set_num_threads(1)
SENTENCES = ["I can't believe you did that to me!", "Well, that is wonderful news."]


@pytest.fixture(scope="module")
def minilm():
    return TextExtractor(TextConfig(model="minilm-l6"))


def _reference(folder, text: str, layer: int = -1, max_length: int = 512) -> torch.Tensor:
    """Hidden states of ``text`` alone (no padding), special tokens included: (L, D)."""
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        out = model(**tok(text, return_tensors="pt", truncation=True, max_length=max_length),
                    output_hidden_states=True)
    return out.hidden_states[layer][0]


def test_minilm_real_features(minilm):
    out = minilm([ItemInput(f"u{i}", text=t) for i, t in enumerate(SENTENCES)])
    tok = minilm.tokenizer
    for text, o in zip(SENTENCES, out):
        x = o["tokens"]
        assert x.dtype == np.float16 and x.shape == (len(tok.tokenize(text)), 384)
        assert np.isfinite(x).all()
        ref = _reference(minilm.folder, text)[1:-1].numpy()  # drop [CLS] and [SEP]
        np.testing.assert_allclose(x.astype(np.float32), ref, atol=2e-3)
    a, b = (o["tokens"].astype(np.float32).mean(0) for o in out)
    assert np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) < 0.95  # different sentences differ
    assert minilm.attrs()["dim"] == 384
    assert minilm.weights_checksum(minilm.config) == model_checksum("minilm-l6")


def test_official_slicing_keeps_sep_and_padding(minilm):
    official = TextExtractor(TextConfig(official_slicing=True, max_length=20))
    text = SENTENCES[1]
    (o,), (mine,) = official([ItemInput("u", text=text)]), minilm([ItemInput("u", text=text)])
    n = len(mine["tokens"])
    assert o["tokens"].shape == (18, 384)
    np.testing.assert_allclose(o["tokens"][:n].astype(np.float32), mine["tokens"].astype(np.float32), atol=2e-3)
    sep = _reference(official.folder, text)[-1].numpy()
    np.testing.assert_allclose(o["tokens"][n].astype(np.float32), sep, atol=2e-3)  # [SEP] is kept


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_special_tokens_dropped_for_real_architectures(tmp_path, kind):
    folder = save_tiny_text_encoder(tmp_path / kind, kind)
    ext = TextExtractor(TextConfig(model=str(folder), max_length=24, batch_size=3))
    texts = ["hello world", "i am so happy!", "sad", "angry angry angry angry angry angry angry angry"]
    out = ext([ItemInput(f"u{i}", text=t) for i, t in enumerate(texts)])
    for text, o in zip(texts, out):
        n_real = len(ext.tokenizer.tokenize(text))
        assert _reference(folder, text).shape[0] == n_real + 2  # one start and one end special token
        want = _reference(folder, text, max_length=24)[1:-1]  # truncated to 22 real tokens
        assert o["tokens"].shape == (min(n_real, 22), ext.attrs()["dim"])
        np.testing.assert_allclose(o["tokens"].astype(np.float32), want.numpy(), atol=2e-3)
    assert out[-1]["tokens"].shape[0] == (22 if kind == "roberta" else 8)  # byte-level: truncated
    ids = ext.tokenizer("i am so happy!")["input_ids"]
    specials = (ext.tokenizer.cls_token_id, ext.tokenizer.sep_token_id)
    assert (ids[0], ids[-1]) == specials  # [CLS]/[SEP] for BERT, <s>/</s> for RoBERTa


def test_layer_option_and_bad_layer(tmp_path):
    folder = save_tiny_text_encoder(tmp_path / "b", "bert", layers=3)
    (o,) = TextExtractor(TextConfig(model=str(folder), layer=1))([ItemInput("u", text="hello world")])
    np.testing.assert_allclose(o["tokens"].astype(np.float32), _reference(folder, "hello world", 1)[1:-1].numpy(),
                               atol=2e-3)
    with pytest.raises(StageError):
        TextExtractor(TextConfig(model=str(folder), layer=4))
    with pytest.raises(StageError):
        TextExtractor(TextConfig(model=str(tmp_path / "nowhere")))


def test_no_text_feature_items(tmp_path):
    ext = TextExtractor(TextConfig(model=str(save_tiny_text_encoder(tmp_path / "b", "bert"))))
    items = [ItemInput("none", text=None), ItemInput("empty", text="  "), ItemInput("br", text="[LAUGHTER]"),
             ItemInput("brs", text="[BREATHING] [GARBAGE] !"), ItemInput("ok", text="[LAUGHTER] hello")]
    out = ext(items)
    assert [type(o).__name__ for o in out] == ["ItemError"] * 4 + ["dict"]
    assert all("no text feature" in o.reason for o in out[:4])
    assert usable_text("[LAUGHTER] hello", official_brackets=True) is None  # official rule
    assert usable_text("hello [LAUGHTER]", official_brackets=True) == "hello [LAUGHTER]"


def test_stage_registration_and_checksum(tmp_path):
    stage = get_stage("text")
    assert stage.needs_text and not stage.needs_audio
    cfg = stage.make_config({"model": str(tmp_path), "max_length": "64", "official_slicing": "true"})
    assert cfg.max_length == 64 and cfg.official_slicing
    a = save_tiny_text_encoder(tmp_path / "a", "bert")
    b = save_tiny_text_encoder(tmp_path / "b", "bert", hidden=16)
    assert model_checksum(str(a)) != model_checksum(str(b))
    assert stage_identity(stage, TextConfig(model=str(a)))["weights"] == model_checksum(str(a))


@pytest.mark.slow
def test_bert_large_sized_features(tmp_path):
    """BERT-large dimensions (1024-d, 16 heads), random weights; 2 layers to stay quick."""
    folder = save_tiny_text_encoder(tmp_path / "bl", "bert", hidden=1024, layers=2, max_positions=512,
                                    num_attention_heads=16, intermediate_size=4096)
    ext = TextExtractor(TextConfig(model=str(folder)))
    (o,) = ext([ItemInput("u", text="hello world")])
    assert o["tokens"].shape == (2, 1024)
