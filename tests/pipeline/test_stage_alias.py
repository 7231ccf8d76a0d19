"""The stage ``speech`` was called ``wav2vec`` until 0.7 (it runs Whisper by default): the old
name still works everywhere a user names a stage, with a warning, and maps to the same cache."""
from __future__ import annotations

import json
import logging

from click.testing import CliRunner

import pipeline.stages as stages
from cli import cli
from pipeline.plan import load_params
from pipeline.store import StageReader
from tests.fixtures.corpora import make_corpus
from tests.fixtures.ser import ser_source
from tests.fixtures.stores import write_ser_store


def test_the_old_name_is_the_speech_stage_with_one_warning(caplog, monkeypatch):
    monkeypatch.setattr(stages, "_WARNED", set())
    with caplog.at_level(logging.WARNING):
        assert stages.get_stage("wav2vec") is stages.get_stage("speech")
        stages.get_stage("wav2vec")
    assert caplog.text.count("now called 'speech'") == 1
    assert "wav2vec" not in stages.stage_names()


def test_remembered_parameters_and_the_cache_follow_the_new_name(tmp_path):
    (tmp_path / "stage_params.json").write_text(json.dumps(
        {"wav2vec": {"model": "whisper-tiny.en"}, "mel": {"n_mels": 40}}))
    assert load_params(tmp_path) == {"speech": {"model": "whisper-tiny.en"}, "mel": {"n_mels": 40}}
    corpus = make_corpus(n_groups=1, per_class=1)
    write_ser_store(tmp_path, corpus, ser_source(corpus))
    assert (tmp_path / "cache" / "speech" / "current.json").exists()
    with StageReader(tmp_path, "wav2vec") as old, StageReader(tmp_path, "speech") as new:
        assert old.stage == "speech" and old.ids() == new.ids()


def test_the_command_line_takes_the_old_name(tmp_path):
    """`-s wav2vec -p wav2vec.model=…` reaches the speech stage (its error names the new field)
    and nothing bad is remembered; `train ser --encoder-stage wav2vec` is accepted too."""
    out = CliRunner().invoke(cli, ["extract", "-s", "wav2vec", "-p", "wav2vec.model=nosuch",
                                   "-w", str(tmp_path)])
    assert out.exit_code == 1 and "speech.model='nosuch' is neither" in " ".join(out.output.split())
    assert not (tmp_path / "stage_params.json").exists()
    helped = CliRunner().invoke(cli, ["train", "ser", "--help"])
    assert "--encoder-stage TEXT" in helped.output and "[default: speech]" in helped.output
