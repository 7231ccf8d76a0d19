"""The plain-torch BERT / RoBERTa text encoder against transformers' models."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from features.bert_encoder import BertEncoder, BertEncoderConfig, load_plain_text_encoder
from features.text_models import packaged_folder
from tests.fixtures.encoders import save_tiny_text_encoder
from tests.fixtures.data import XED
from tests.fixtures.fresh import fresh_python

torch.set_num_threads(1)
TEXTS = ["hello world", "i am so happy!", "sad", "angry , angry world . i am sad and happy"]


def _compare(folder: Path, texts: list[str]) -> None:
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    ref_model = AutoModel.from_pretrained(folder).eval()
    plain = load_plain_text_encoder(folder, "cpu")
    assert isinstance(plain, BertEncoder)
    for batch in (texts, texts[:1]):  # padded, and a batch with no padding (no mask at all)
        enc = tok(batch, padding=True, truncation=True, max_length=64, return_tensors="pt")
        with torch.no_grad():
            ref = ref_model(**enc, output_hidden_states=True)
            out = plain(**enc, output_hidden_states=True)
        assert len(out.hidden_states) == len(ref.hidden_states)
        for i, (a, b) in enumerate(zip(out.hidden_states, ref.hidden_states)):
            assert torch.equal(a, b), f"{folder.name}: hidden state {i} differs (max {(a - b).abs().max()})"
        assert torch.equal(out.last_hidden_state, ref.last_hidden_state)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_every_hidden_state_equals_transformers_bit_for_bit(tmp_path, kind):
    _compare(save_tiny_text_encoder(tmp_path / kind, kind), TEXTS)


def test_the_packaged_minilm_on_real_subtitles_bit_for_bit():
    lines = XED.read_text(encoding="utf-8").splitlines()[:24] if XED.is_file() else TEXTS
    _compare(packaged_folder("minilm-l6"), [ln.split("\t")[0] for ln in lines])


@pytest.mark.parametrize("change", [{"model_type": "mpnet"}, {"is_decoder": True},
                                    {"position_embedding_type": "relative_key"}, {"hidden_act": "gelu_new"}])
def test_what_it_does_not_compute_is_left_to_transformers(tmp_path, change):
    folder = save_tiny_text_encoder(tmp_path / "bert", "bert")
    cfg = json.loads((folder / "config.json").read_text())
    assert BertEncoderConfig.from_dict(cfg) is not None
    assert BertEncoderConfig.from_dict({**cfg, **change}) is None
    (folder / "config.json").write_text(json.dumps({**cfg, **change}))
    assert load_plain_text_encoder(folder, "cpu") is None


def test_task_checkpoints_load_their_encoder(tmp_path):
    """A BertForMaskedLM folder (``bert.`` prefix, an LM head, no pooler)."""
    import transformers as tf

    base = tf.BertModel.from_pretrained(save_tiny_text_encoder(tmp_path / "base", "bert"),
                                        add_pooling_layer=False).eval()
    mlm = tf.BertForMaskedLM(base.config)
    mlm.bert.load_state_dict(base.state_dict())
    mlm.save_pretrained(tmp_path / "mlm")
    plain = load_plain_text_encoder(tmp_path / "mlm", "cpu")
    ids = torch.tensor([[2, 40, 41, 3]])
    with torch.no_grad():
        assert torch.equal(plain(ids).last_hidden_state, base(ids).last_hidden_state)


def test_the_text_stage_never_imports_transformers_modeling_code(tmp_path):
    folder = save_tiny_text_encoder(tmp_path / "bert", "bert")
    code = ("import sys\n"
            "from features.base import ItemInput\n"
            "from features.text import TextConfig, TextExtractor\n"
            f"ext = TextExtractor(TextConfig(model={str(folder)!r}))\n"
            "out = ext([ItemInput('u', text='hello world')])\n"
            "assert out[0]['tokens'].shape == (2, 32), out\n"
            "print(type(ext.model).__name__, any(m.startswith('transformers.models.bert.modeling') "
            "for m in sys.modules))\n")
    assert fresh_python(code) == ["BertEncoder", "False"]


@pytest.mark.gpu  # pytest -m gpu tests/features/test_bert_encoder.py on a CUDA host
@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_the_text_stage_on_cuda_equals_transformers_bit_for_bit(tmp_path, kind):
    """The text stage's features on a GPU (fp32, padded batches), at BERT-large's widths and heads
    (2 of its 24 layers), from the plain encoder and from transformers' model."""
    import numpy as np
    from transformers import AutoModel

    from features.base import ItemInput
    from features.text import TextConfig, TextExtractor

    folder = save_tiny_text_encoder(tmp_path / kind, kind, hidden=1024, layers=2, num_attention_heads=16,
                                    intermediate_size=4096)
    ext = TextExtractor(TextConfig(model=str(folder)), device="cuda")
    assert isinstance(ext.model, BertEncoder)
    items = [ItemInput(f"u{i}", text=t) for i, t in enumerate(TEXTS)]
    plain = ext(items)
    ext.model = AutoModel.from_pretrained(folder).to("cuda").eval()
    for a, b in zip(plain, ext(items)):
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
