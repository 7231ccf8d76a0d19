"""Which trained run a command reads when the user names none: the paper's model when trained,
else the only trained run (``--recipe cpu`` trains ``head-linear``, and ``fuse`` used to stop at
"no trained ser run 'small'"), else an error naming the runs and the option."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from core.errors import TrainingError
from models.runs import RunPaths, read_json
from models.trained import choose_run
from tests.fixtures.runs import fake_run


def _runs(workdir, task, *names):
    rng = np.random.default_rng(0)
    for name in names:
        fake_run(workdir, task, name, ["A", "B"], rng, 1.0)


def test_a_named_run_is_taken_as_given(tmp_path):
    _runs(tmp_path, "ser", "head-linear")
    assert choose_run(tmp_path, "ser", "other", "small", "--ser-run") == ("other", None)


def test_the_preferred_run_wins_when_trained(tmp_path):
    _runs(tmp_path, "ser", "head-linear", "small")
    assert choose_run(tmp_path, "ser", None, "small", "--ser-run") == ("small", None)


def test_the_only_trained_run_is_taken_and_said(tmp_path):
    _runs(tmp_path, "ser", "head-linear")
    name, note = choose_run(tmp_path, "ser", None, "small", "--ser-run")
    assert name == "head-linear" and "the only one trained" in note and "--ser-run" in note


def test_no_run_keeps_the_preferred_name_so_the_error_says_what_to_train(tmp_path):
    assert choose_run(tmp_path, "ter", None, "cnn", "--ter-run") == ("cnn", None)


def test_several_other_runs_are_an_error_naming_them_and_the_option(tmp_path):
    _runs(tmp_path, "ser", "head-linear", "head-mlp")
    with pytest.raises(TrainingError, match=r"no ser run 'small'.*head-linear, head-mlp; choose one "
                                            r"with --run NAME"):
        choose_run(tmp_path, "ser", None, "small", "--run")


def test_fuse_after_the_cpu_recipe_runs_without_naming_the_runs(tmp_path):
    """What `train ser --recipe cpu` + `train ter --recipe cpu` leave: head-linear and cnn."""
    _runs(tmp_path, "ser", "head-linear")
    _runs(tmp_path, "ter", "cnn")
    out = CliRunner().invoke(cli, ["fuse", "-w", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert "SER run 'head-linear': the only one trained" in " ".join(out.output.split())
    fused = RunPaths(tmp_path, "fusion", "head-linear+cnn")
    assert read_json(fused.config)["ser_run"] == "head-linear"


def test_speech_only_predict_reads_no_ter_run(tmp_path):
    """Several TER runs and no transcript: nothing to choose, so no error about them."""
    from tests.fixtures.audio import write_tone
    _runs(tmp_path, "ser", "small")
    _runs(tmp_path, "ter", "text-linear", "text-mlp")
    wav = write_tone(tmp_path / "x.wav", 0.5)
    out = CliRunner().invoke(cli, ["predict", wav, "--fold", "S9", "-w", str(tmp_path)])
    text = " ".join(out.output.split())
    assert out.exit_code == 1 and "has no current fold 'S9'" in text and "--ter-run" not in text, text
    out = CliRunner().invoke(cli, ["predict", wav, "--text", "hi", "-w", str(tmp_path)])
    text = " ".join(out.output.split())
    assert out.exit_code == 1 and "text-linear, text-mlp; choose one with --ter-run NAME" in text, text


def test_a_run_stopped_before_its_first_fold_is_not_a_choice(tmp_path):
    """`train ser` interrupted in its first fold leaves runs/ser/small/config.json only: the
    head trained before is still the only trained run."""
    from models.runs import RunPaths, write_json
    _runs(tmp_path, "ser", "head-linear")
    write_json(RunPaths(tmp_path, "ser", "small").config, {"task": "ser", "classes": []})
    name, note = choose_run(tmp_path, "ser", None, "small", "--ser-run")
    assert name == "head-linear" and note
