"""The whole user journey on a tiny demo corpus (real Whisper-base, Resemblyzer, MiniLM weights):
prepare → extract → train SER/TER → fuse → report, then a cached re-run, then predict."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.demo import DemoConfig, run_demo
from models.predict import predict
from models.runs import RunPaths, read_json, read_predictions
from pipeline.corpus import load_corpus

TINY = DemoConfig(per_cell=2, ser_steps=12, ser_batch=8, ter_epochs=3)


def mean_test_ua(paths: RunPaths) -> float:
    """Mean over folds of the test rows' unweighted accuracy (mean per-class recall of the
    argmax), computed here from the predictions files alone."""
    names, uas = read_json(paths.config)["classes"], []  # the probability columns' order
    for fold in paths.fold_names():
        rows = [r for r in read_predictions(paths.predictions(fold)) if r["split"] == "test"]
        classes = sorted({r["label"] for r in rows})
        recall = [np.mean([names[int(np.argmax(r["probs"]))] == c
                           for r in rows if r["label"] == c]) for c in classes]
        uas.append(float(np.mean(recall)))
    return float(np.mean(uas))


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    first = run_demo(work, TINY, say=lambda s: None)
    return work, first


def test_demo_end_to_end(demo_dir):
    work, out = demo_dir
    report = Path(out["report"]).read_text()
    assert "## ser / small" in report and "## ter / cnn" in report and "## fusion / small+cnn" in report
    assert (work / "report" / "confusion_fusion_small_cnn.png").stat().st_size > 1000
    assert (work / "report" / "alpha_ser_small.png").exists()
    assert out["html"] == str(work / "report" / "index.html")  # the page with the error browser
    assert 'id="mmer-data"' in Path(out["html"]).read_text()
    assert any((work / "report" / "audio").glob("demo_*.wav"))  # the misclassified utterances' audio
    assert set(out["ua"]) == {"SER small", "TER cnn", "fusion (weights searched on validation)",
                              "fusion (paper's fixed weights)"}
    runs = {"SER small": ("ser", "small"), "TER cnn": ("ter", "cnn"),
            "fusion (weights searched on validation)": ("fusion", "small+cnn"),
            "fusion (paper's fixed weights)": ("fusion", "small+cnn-paper")}
    for name, (task, run) in runs.items():  # the summary is what the predictions files say
        assert out["ua"][name] == pytest.approx(mean_test_ua(RunPaths(work, task, run))), name
    print(f"\n[demo] UA: {out['ua']}")
    params = json.loads((work / "stage_params.json").read_text())
    assert params["speech"]["model"] == "whisper-base"  # real weights, labelled in the report


def test_demo_second_run_reuses_everything(demo_dir, monkeypatch):
    work, _ = demo_dir
    import pipeline.extract as extract
    monkeypatch.setattr(extract, "run_shard", lambda *a, **k: pytest.fail("a shard was recomputed"))
    import models.trainer as trainer
    monkeypatch.setattr(trainer.CheckpointWriter, "submit", lambda *a, **k: pytest.fail("a fold retrained"))
    first_ua = json.loads((work / "runs" / "ser" / "small" / "metrics.json").read_text())["mean"]["ua"]
    out = run_demo(work, TINY, say=lambda s: None)
    assert out["ua"]["SER small"] == first_ua  # the reused folds, not new ones


def test_predict_on_a_demo_wav(demo_dir):
    work, _ = demo_dir
    utt = load_corpus(work).utterances[0]
    preds = predict(work, [utt.audio, str(work / "missing.wav")], [utt.text, None])
    ok = next(p for p in preds if p.file == utt.audio)
    assert ok.label in ("neutral", "happy", "sad", "angry") and ok.text is not None
    assert abs(sum(ok.probs.values()) - 1) < 1e-5
    bad = next(p for p in preds if p.file.endswith("missing.wav"))
    assert bad.label is None and "missing" in bad.error


def test_predict_weights_windows_as_the_run_was_evaluated(demo_dir):
    # a run trained with --window-weighting frames is also applied that way by predict
    work, _ = demo_dir
    import soundfile as sf
    utt = max(load_corpus(work).utterances, key=lambda u: sf.info(u.audio).frames)  # several windows
    assert sf.info(utt.audio).duration > 1.92  # more than one 96-frame window
    config = work / "runs" / "ser" / "small" / "config.json"
    original = config.read_text()
    try:
        equal = predict(work, [utt.audio])[0].speech
        conf = json.loads(original)
        conf["inputs"]["window_weighting"] = "frames"
        config.write_text(json.dumps(conf))
        frames = predict(work, [utt.audio])[0].speech
    finally:
        config.write_text(original)
    assert equal.keys() == frames.keys()
    assert max(abs(equal[k] - frames[k]) for k in equal) > 1e-6


def test_predict_keeps_input_order_and_each_inputs_row(demo_dir):
    """Case 4: a failed file in the middle never shifts the others' results."""
    work, _ = demo_dir
    a, b = load_corpus(work).utterances[:2]
    bad = work / "not_audio.wav"
    bad.write_bytes(b"this is not a wav file")
    preds = predict(work, [a.audio, str(bad), b.audio], [a.text, None, b.text])
    assert [p.file for p in preds] == [a.audio, str(bad), b.audio]
    assert preds[1].label is None and preds[1].error
    alone = predict(work, [b.audio], [b.text])[0]
    assert preds[2].probs == pytest.approx(alone.probs) and preds[2].transcript == b.text


def test_predict_uses_the_runs_own_feature_settings(demo_dir):
    """Case 9: stage parameters changed after training (extract -s text -p text.layer=0 saves
    them) do not change what predict feeds the trained models."""
    work, _ = demo_dir
    utt = load_corpus(work).utterances[3]
    before = predict(work, [utt.audio], [utt.text])[0]
    params_file = work / "stage_params.json"
    original = params_file.read_text()
    try:
        params = json.loads(original)
        params.setdefault("text", {})["layer"] = 0
        params_file.write_text(json.dumps(params))
        after = predict(work, [utt.audio], [utt.text])[0]
    finally:
        params_file.write_text(original)
    assert after.text == pytest.approx(before.text) and after.probs == pytest.approx(before.probs)


def test_demo_report_carries_its_claims(demo_dir):
    work, out = demo_dir
    report = Path(out["report"]).read_text()
    assert "95 % bootstrap confidence" in report and "## Paired tests" in report
    assert "| fusion/small+cnn | ser/small |" in report and "## Setup of each run" in report
    assert "![learning curves](curves_ser_small.png)" in report and "(curves_ter_cnn.svg)" in report
    for name in ("curves_ser_small", "curves_ter_cnn", "alpha_ser_small", "confusion_ser_small"):
        assert (work / "report" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert b"<svg" in (work / "report" / f"{name}.svg").read_bytes()[:400]
    conf = json.loads((work / "runs" / "ser" / "small" / "config.json").read_text())
    prov = conf["provenance"]
    assert prov["corpus"] != "unknown" and "commit" in prov and prov["versions"]["torch"]
    assert set(conf["stages"]) == {"speech", "mel", "phones", "speaker"}


def test_predict_command_exits_1_when_an_input_failed(demo_dir):
    from click.testing import CliRunner
    from cli import cli
    work, _ = demo_dir
    utt = load_corpus(work).utterances[0]
    bad = work / "empty.wav"
    bad.write_bytes(b"")
    out = CliRunner().invoke(cli, ["predict", utt.audio, str(bad), "--text", utt.text, "--text", "",
                                   "-w", str(work)])
    assert out.exit_code == 1
    assert "1 of 2 input(s) failed" in " ".join(out.output.split())


@pytest.mark.parametrize("seconds", [10.0, 0.006])
def test_predict_on_a_silent_or_tiny_file_gives_that_files_row(demo_dir, seconds):
    """A lone silent 10-s file or a 6-ms file: a label or that file's own error, no traceback."""
    import numpy as np
    import soundfile as sf
    work, _ = demo_dir
    path = work / f"odd_{seconds}.wav"
    sf.write(path, np.zeros(int(16000 * seconds), np.float32), 16000)
    (p,) = predict(work, [str(path)])
    assert p.file == str(path) and (p.label is not None) != (p.error is not None)
    if p.error:
        assert len(p.error.splitlines()) == 1


def test_predict_formats_paths_and_language(demo_dir, monkeypatch):
    from click.testing import CliRunner
    from cli import cli
    work, _ = demo_dir
    utt = load_corpus(work).utterances[5]
    monkeypatch.chdir(Path(utt.audio).parent)  # a file below the current folder: shown relative
    out = CliRunner().invoke(cli, ["predict", utt.audio, "--text", utt.text, "--format", "tsv",
                                   "-w", str(work)])
    assert out.exit_code == 0, out.output
    header, row = out.stdout.strip().splitlines()
    assert header.split("\t") == ["file", "label", "neutral", "happy", "sad", "angry", "text"]
    cells = row.split("\t")
    assert cells[0] == Path(utt.audio).name and cells[-1] == utt.text
    assert abs(sum(float(x) for x in cells[2:6]) - 1) < 0.01
    assert "Loading weights" not in out.output  # no third-party progress bars
    bad = CliRunner().invoke(cli, ["predict", utt.audio, "--transcribe", "--language", "de",
                                   "-w", str(work)])
    assert bad.exit_code == 2 and "only transcribes English" in " ".join(bad.output.split())


def test_predict_goes_through_long_lists_in_chunks(demo_dir, monkeypatch):
    """Bounded memory on long lists: files go through CHUNK at a time, with progress after each;
    the rows (a bad file among them) are those of one pass over all files."""
    import models.predict as mp
    work, _ = demo_dir
    utts = load_corpus(work).utterances[:4]
    files = [u.audio for u in utts[:2]] + [str(work / "gone.wav")] + [u.audio for u in utts[2:]]
    texts = [u.text for u in utts[:2]] + [None] + [u.text for u in utts[2:]]
    whole = predict(work, files, texts)
    monkeypatch.setattr(mp, "CHUNK", 2)
    seen = []
    chunked = predict(work, files, texts, progress=seen.append)
    assert seen == [2, 2, 1]
    assert [(p.file, p.label, p.error) for p in chunked] == [(p.file, p.label, p.error) for p in whole]
    for a, b in zip(chunked, whole):
        assert all(abs(a.probs[c] - b.probs[c]) < 1e-5 for c in b.probs)


def test_predict_command_shows_progress_on_lists_longer_than_a_chunk(demo_dir, monkeypatch):
    from click.testing import CliRunner
    import models.predict as mp
    from cli import cli
    work, _ = demo_dir
    a, b = load_corpus(work).utterances[:2]
    monkeypatch.setattr(mp, "CHUNK", 1)
    res = CliRunner().invoke(cli, ["predict", a.audio, b.audio, "--format", "tsv", "-w", str(work)])
    assert res.exit_code == 0, res.output
    assert "predict" in res.stderr and "2/2" in res.stderr
    assert len([ln for ln in res.stdout.splitlines() if ln.strip()]) == 3  # header + 2 rows


def test_predict_list_file_is_batch_mode(demo_dir, tmp_path):
    """--list: paths relative to the list's folder, comments and blank lines skipped, rows in
    order after any AUDIO given; a listed file that does not exist is named with its line."""
    from click.testing import CliRunner
    from cli import cli
    work, _ = demo_dir
    utts = load_corpus(work).utterances[:3]
    listing = Path(utts[1].audio).parent / "batch.txt"
    listing.write_text(f"# a batch\n{Path(utts[1].audio).name}\n\n{utts[2].audio}\n")
    out = CliRunner().invoke(cli, ["predict", utts[0].audio, "--list", str(listing), "--format", "tsv",
                                   "-w", str(work)])
    assert out.exit_code == 0, out.output
    rows = [r.split("\t")[0] for r in out.stdout.strip().splitlines()[1:]]
    assert [Path(r).name for r in rows] == [Path(u.audio).name for u in utts]
    listing.write_text("nosuch.wav\n")
    bad = CliRunner().invoke(cli, ["predict", "--list", str(listing), "-w", str(work)])
    assert bad.exit_code == 2 and "batch.txt:1: 'nosuch.wav' is not a file" in " ".join(bad.output.split())
    none = CliRunner().invoke(cli, ["predict", "-w", str(work)])
    assert none.exit_code == 2 and "--list FILE" in none.output


def test_demo_recipe_trains_a_reference_head_beside_the_paper_model(demo_dir):
    """`demo --recipe cpu` sets --ser-config head-linear: the head is trained on the same cache
    and folds, fused and reported next to `small`, and predict loads it."""
    import dataclasses

    from click.testing import CliRunner

    from commands.results import demo
    from commands.recipes import SHIPPED, read_recipe
    assert read_recipe(SHIPPED / "cpu.toml")["demo"] == {"ser-config": "head-linear"}
    assert "head-linear" in next(p for p in demo.params if p.name == "ser_config").type.choices
    work, _ = demo_dir
    out = run_demo(work, dataclasses.replace(TINY, ser_config="head-linear", recipe="cpu@test"),
                   say=lambda s: None)
    assert set(out["ua"]) == {"SER head-linear", "TER cnn", "fusion (weights searched on validation)",
                              "fusion (paper's fixed weights)"}
    assert out["ua"]["SER head-linear"] == pytest.approx(mean_test_ua(RunPaths(work, "ser", "head-linear")))
    assert read_json(RunPaths(work, "ser", "head-linear").config)["recipe"] == "cpu@test"
    report = Path(out["report"]).read_text()
    assert "## ser / head-linear" in report and "## ser / small" in report
    assert "## fusion / head-linear+cnn" in report
    utt = load_corpus(work).utterances[0]
    from features.mel import MelExtractor
    from features.speaker import SpeakerExtractor
    with pytest.MonkeyPatch.context() as mp:  # a head reads only encoder layers: nothing else computed
        mp.setattr(SpeakerExtractor, "__call__", lambda *a: pytest.fail("speaker stage computed"))
        mp.setattr(MelExtractor, "__call__", lambda *a: pytest.fail("mel stage computed"))
        (p,) = predict(work, [utt.audio], [utt.text], ser_run="head-linear")
    assert p.label is not None and abs(sum(p.probs.values()) - 1) < 1e-5
    assert CliRunner().invoke(demo, ["--help"]).exit_code == 0


def test_predict_with_a_head_on_whisper_imports_no_transformers(demo_dir, tmp_path):
    """`predict --ser-run head-linear --list` (issue #19: cold start ≤ 3 s, ≥ 20 files/s on the
    2-core VM) imports no transformers (2 s), torch._dynamo (1 s), scipy, librosa, Resemblyzer
    or Dask, and gives each file what predicting it alone gives (batched encoder, shared windows)."""
    import dataclasses
    import subprocess
    import sys
    work, _ = demo_dir
    run_demo(work, dataclasses.replace(TINY, ser_config="head-linear", recipe="cpu@test"),
             say=lambda s: None)  # the head (cached when the test above trained it)
    utts = load_corpus(work).utterances[1:6]
    listing = tmp_path / "files.txt"
    listing.write_text("".join(f"{u.audio}\n" for u in utts))
    heavy = ("transformers", "torch._dynamo", "scipy.signal", "librosa", "resemblyzer", "dask")
    argv = ["cli.py", "predict", "--list", str(listing), "--ser-run", "head-linear", "--format", "json",
            "-w", str(work)]
    code = ("import json, runpy, sys\n"
            f"sys.argv = {argv!r}\n"
            "try:\n"
            f"    runpy.run_path({str(Path(__file__).parents[2] / 'cli.py')!r}, run_name='__main__')\n"
            "except SystemExit:\n"
            "    pass\n"
            f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         check=True)
    *rows, imported = out.stdout.strip().splitlines()
    assert json.loads(imported) == []
    rows = json.loads("\n".join(rows))
    assert len(rows) == len(utts)
    for u, row in zip(utts, rows):
        (alone,) = predict(work, [u.audio], ser_run="head-linear")
        assert row["label"] == alone.label and row["probs"] == pytest.approx(alone.probs, abs=1e-5)


def test_inspect_draws_one_utterance_with_its_window_probabilities(demo_dir, tmp_path):
    """`inspect UTT_ID`: the figure (PNG + SVG) and per-window probabilities whose mean is the
    score the run's predictions file holds for that utterance."""
    from click.testing import CliRunner

    from cli import cli
    from models.inspect_utt import inspect_utterance
    work, _ = demo_dir
    utt = load_corpus(work).utterances[0]
    r = inspect_utterance(work, utt.id, "small", tmp_path / "u.png")
    assert r.figure.stat().st_size > 10_000 and r.figure.with_suffix(".svg").exists()
    paths = RunPaths(work, "ser", "small")
    row = next(row for fold in paths.fold_names() for row in read_predictions(paths.predictions(fold))
               if row["id"] == utt.id and row["split"] == "test")
    assert r.window_probs.shape[1] == 4 and np.allclose(r.window_probs.sum(1), 1, atol=1e-5)
    window = read_json(paths.config)["inputs"]["window_weighting"]
    if window == "equal":  # the run's score is the plain mean of its windows
        np.testing.assert_allclose(r.window_probs.mean(0), row["probs"], atol=1e-4)
    out = CliRunner().invoke(cli, ["inspect", "nosuch", "-w", str(work)])
    assert out.exit_code == 1 and "'nosuch' is not an utterance id" in out.output


def test_inspect_of_a_head_run_shows_the_cached_mel(demo_dir, tmp_path, monkeypatch):
    """A head reads only encoder layers, so its source stands zeros in for the mel: `inspect`
    drew a blank spectrogram. It reads the mel stage itself, and the axes span the utterance."""
    import dataclasses
    import models.inspect_utt as iu
    from pipeline.store import StageReader
    work, _ = demo_dir
    run_demo(work, dataclasses.replace(TINY, ser_config="head-linear", recipe="cpu@test"),
             say=lambda s: None)  # cached when an earlier test trained it
    utt = load_corpus(work).utterances[0]
    drawn = {}
    real_draw = iu._draw
    monkeypatch.setattr(iu, "_draw", lambda *a, **k: (drawn.update(mel=a[3]), real_draw(*a, **k)))
    r = iu.inspect_utterance(work, utt.id, "head-linear", tmp_path / "h.png")
    with StageReader(work, "mel") as reader:
        cached = reader.get(utt.id, "mel")
    assert np.abs(cached).max() > 0 and np.array_equal(drawn["mel"], cached)
    assert r.figure.stat().st_size > 10_000
