"""Mistakes on the command line get one line naming the item and the fix (exit 1 or 2), checked
before anything is saved."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import cli
from tests.fixtures.corpora import tone_corpus


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tone_corpus(tmp_path_factory.mktemp("cli"), n=4, seconds=(0.3, 0.4))


@pytest.mark.parametrize("args, message", [
    (["extract", "-s", "speech", "-p", "speech.model=nosuch"], "speech.model='nosuch' is neither"),
    (["verify", "-s", "melx"], "unknown stage 'melx'"),
    (["extract", "-s", "mel", "--gpus", "a,b"], "--gpus 'a,b': expected GPU indices"),
    (["train", "ser", "-m", "dim_neck=abc"], "dim_neck='abc': expected int"),
    (["train", "ser", "-m", "freq=1.5"], "freq='1.5': expected int"),
    (["train", "ter", "--device", "cuda:x"], "expected auto, cpu, cuda or cuda:N"),
    (["report", "-w", "/nonexistent/typo"], "holds no prepared corpus"),
    (["predict", "tests/__init__.py", "--ser-run", "nope"], "no trained ser run 'nope'"),
])
def test_one_line_errors(work, args, message):
    if "-w" not in args:
        args = [*args, "-w", work]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code in (1, 2), out.output
    text = " ".join(out.output.split())
    assert message in text and "Traceback" not in text, text


@pytest.mark.parametrize("prog, shown", [("mmer", "`mmer extract --stage mel`"),
                                          ("cli.py", "`python cli.py extract --stage mel`")])
def test_the_fix_is_named_as_the_user_invoked_us(tmp_path, prog, shown):
    """The library names the step (``extract --stage mel``); the command line adds its own name."""
    work = tone_corpus(tmp_path, n=2, seconds=(0.3, 0.4))
    out = CliRunner().invoke(cli, ["train", "ser", "--config", "spec", "-w", work], prog_name=prog)
    text = " ".join(out.output.split())
    assert out.exit_code == 1 and f"stage 'mel' has no features in {work}: run {shown}" in text, text


@pytest.mark.parametrize("args, message", [
    (["--fold", "S9"], "ser run 'small' has no current fold 'S9'; current folds: A, B"),
    (["--text", "hello", "--ter-run", "nope"], "no trained ter run 'nope'"),
])
def test_predict_checks_its_runs_first(tmp_path, args, message):
    import numpy as np
    from tests.fixtures.audio import write_tone
    from tests.fixtures.runs import fake_run
    fake_run(tmp_path, "ser", "small", ["A", "B"], np.random.default_rng(0), 1.0)
    wav = write_tone(tmp_path / "x.wav", 0.5)
    out = CliRunner().invoke(cli, ["predict", wav, *args, "-w", str(tmp_path)])
    assert out.exit_code == 1 and message in " ".join(out.output.split()), out.output


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("args, message", [
    (["extract", "-s", "mel", "--gpus", "0"], "--gpus 0: no CUDA GPU is visible"),
    (["train", "ser", "--device", "cuda"], "--device cuda: no CUDA GPU is visible"),
])
def test_asking_for_a_gpu_on_a_cpu_machine(work, args, message):
    out = CliRunner().invoke(cli, [*args, "-w", work])
    assert out.exit_code == 1 and message in " ".join(out.output.split()), out.output


def test_a_bad_stage_parameter_is_not_remembered(work):
    CliRunner().invoke(cli, ["extract", "-s", "speech", "-p", "speech.model=nosuch", "-w", work])
    assert not (Path(work) / "stage_params.json").exists()
    out = CliRunner().invoke(cli, ["status", "-s", "mel", "-w", work])  # status still works
    assert out.exit_code == 0, out.output


def test_the_installed_console_command():
    """setup.sh installs the project: `mmer` is `python cli.py`, and says its version and commit."""
    import subprocess
    import sys
    mmer = Path(sys.executable).parent / "mmer"
    if not mmer.exists():
        pytest.skip("the project is not installed in this environment (run setup.sh)")
    out = subprocess.run([str(mmer), "--version"], capture_output=True, text=True, timeout=60,
                         cwd="/")
    assert out.returncode == 0 and out.stdout.startswith("mmer 0.") and "commit" in out.stdout
    out = subprocess.run([str(mmer), "extract", "--help"], capture_output=True, text=True,
                         timeout=60, cwd="/")
    assert out.returncode == 0 and "Usage: mmer extract" in out.stdout


def test_the_version_is_the_checkouts_own_not_the_last_installs(monkeypatch):
    """An editable install's metadata keeps the version of the last `pip install -e` (this VM's
    .venv said 0.8.4 at 0.8.8): `--version` reads the checkout's pyproject.toml."""
    import tomllib
    from importlib import metadata

    from cli import _version_message
    want = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]["version"]
    monkeypatch.setattr(metadata, "version", lambda name: "0.0.1")  # a stale install
    assert _version_message().startswith(f"mmer {want}, commit ")


def test_consistent_options(work):
    """-v works after the subcommand; --amp is the same option in train ser and train ter;
    probe names its run with --run (--config still accepted)."""
    out = CliRunner().invoke(cli, ["status", "-s", "mel", "-v", "-w", work])
    assert out.exit_code == 0, out.output
    from tests.test_readme_commands import parse
    for args in (["train", "ter", "--amp", "--folds", "all"], ["train", "ter", "--amp", "off"],
                 ["train", "ser", "--amp"], ["probe", "speaker", "--run", "x"],
                 ["probe", "speaker", "--config", "x"]):
        parse(args)


def test_json_for_scripts(tmp_path):
    """status and fuse print their result as JSON on stdout with --json (train: test_any_classes)."""
    import json
    import numpy as np
    from tests.fixtures.runs import fake_run
    rng = np.random.default_rng(0)
    fake_run(tmp_path, "ser", "small", ["A", "B"], rng, 1.0)
    fake_run(tmp_path, "ter", "cnn", ["A", "B"], rng, 1.5)
    out = CliRunner().invoke(cli, ["fuse", "--json", "-w", str(tmp_path)])
    assert out.exit_code == 0, out.output
    fused = json.loads(out.stdout)
    assert set(fused["weights"]) == {"A", "B"} and 0 <= fused["searched"]["pooled"]["ua"] <= 1
    out = CliRunner().invoke(cli, ["status", "-s", "mel", "--json", "-w", str(tmp_path)])
    assert out.exit_code == 0, out.output
    state = json.loads(out.stdout)
    assert state["stages"][0]["stage"] == "mel" and state["stages"][0]["shards"]["missing"] == 1
    assert {(r["task"], r["run"]) for r in state["runs"]} >= {("ser", "small"), ("ter", "cnn")}


def test_log_file_and_shell_completion(work, tmp_path):
    import os
    import subprocess
    import sys
    log = tmp_path / "run.log"
    CliRunner().invoke(cli, ["extract", "-s", "mel", "--workers", "1", "-w", work])
    out = CliRunner().invoke(cli, ["--log-file", str(log), "extract", "-s", "mel", "--force", "--workers", "1",
                                   "-w", work])
    assert out.exit_code == 0, out.output
    assert "INFO pipeline.engine: mel: replaced shard-" in log.read_text()  # time, level, origin
    mmer = Path(sys.executable).parent / "mmer"
    if mmer.exists():  # click's completion for the installed command
        script = subprocess.run([str(mmer)], env=dict(os.environ, _MMER_COMPLETE="bash_source"),
                                capture_output=True, text=True, timeout=60).stdout
        assert "_mmer_completion" in script


def test_a_failed_report_says_what_is_left(work, monkeypatch):
    """Disk full while writing the report: the message says whether an earlier report.md is
    still there, never that one is 'intact' when there was none."""
    import errno
    import models.report

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(models.report, "write_report", full)
    report_md = Path(work) / "report" / "report.md"
    report_md.unlink(missing_ok=True)
    out = CliRunner().invoke(cli, ["report", "-w", work])
    assert out.exit_code == 1 and "no report.md was written" in " ".join(out.output.split())
    report_md.parent.mkdir(exist_ok=True)
    report_md.write_text("# an earlier report\n")
    out = CliRunner().invoke(cli, ["report", "-w", work])
    assert out.exit_code == 1 and "the previous report.md in" in " ".join(out.output.split())
    assert report_md.read_text() == "# an earlier report\n"


def test_the_papers_schedule_on_a_cpu_points_to_the_cpu_recipe(work):
    """`train ser` with the paper's 1 M steps on a CPU warns before anything starts (here the
    missing features stop it next) and names the measured CPU choice."""
    out = CliRunner().invoke(cli, ["train", "ser", "--device", "cpu", "-w", work])
    text = " ".join(out.output.split())
    assert "1,000,000 steps per fold on the CPU take days" in text and "--recipe cpu" in text, text
    assert out.exit_code == 1, text
