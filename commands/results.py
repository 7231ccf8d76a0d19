"""``fuse``, ``report``, ``demo``: from trained runs to results."""
from __future__ import annotations

import time
from pathlib import Path

import click

from commands.common import JSON_OUT, WORKDIR, chosen_run, emit_json, run_option
from commands.recipes import RECIPE, recipe_used


@click.command()
@run_option("ser")
@run_option("ter")
@click.option("--grid", type=int, default=21, show_default=True,
              help="Number of speech weights λ in [0, 1] tried on validation predictions.")
@JSON_OUT
@WORKDIR
def fuse(ser_run, ter_run, grid, as_json, workdir) -> None:
    """Late fusion p = w1·p_speech + w2·p_text. Weights are searched per fold on validation
    predictions inside the training groups (never the test fold); the paper's fixed
    (0.6, 1.0) is evaluated too. Utterances without text fall back to speech alone."""
    from models.fusion import FusionConfig, fuse as run
    from commands.display import console, table
    ser_run, ter_run = chosen_run(workdir, "ser", ser_run), chosen_run(workdir, "ter", ter_run)
    out = run(workdir, FusionConfig(ser_run, ter_run, grid))
    rows = [[kind, f"{100 * m['mean']['wa']:.1f}", f"{100 * m['mean']['ua']:.1f}",
             f"{100 * m['pooled']['ua']:.1f}", m["speech_only"]]
            for kind, m in (("searched on validation", out.searched), ("paper's fixed", out.paper))]
    console.print(table(f"fusion {ser_run}+{ter_run}", ["weights", "WA", "UA", "pooled UA",
                                                         "speech-only utts"], rows))
    console.print("weights per fold (w1, w2): " + ", ".join(
        f"{f} ({w['w1']:.2f}, {w['w2']:.2f})" for f, w in out.weights.items()))
    if as_json:
        emit_json(out)


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Report folder (default: <workdir>/report).")
@click.option("--compare", nargs=2, multiple=True, metavar="TASK/RUN TASK/RUN",
              help="Also test one run against another (paired), e.g. --compare ser/small ser/large.")
@click.option("--html-audio", type=click.Choice(["errors", "all", "none"]), default="errors",
              show_default=True,
              help="Audio copied into the report folder for index.html's error browser: the "
                   "utterances some run misclassified, every test utterance, or none.")
@WORKDIR
def report(out, compare, html_audio, workdir) -> None:
    """Write report.md: pooled UA/WA with 95 % bootstrap CIs, per-fold tables, per-class
    precision/recall/F1, chance and majority lines, paired tests of fusion against each modality
    (and of --compare pairs), each run's setup (commit, corpus, features, command), confusion
    matrices, layer weights and speaker-probe results. Runs trained on another corpus are set
    apart. Beside it, index.html: the same report as one self-contained page (opens from the
    file system) with an error browser: click a confusion-matrix cell to list its utterances
    with audio, transcript and speech/text/fused probabilities. Written atomically: on failure
    the previous report stays intact."""
    from models.html_report import HTML_NAME
    from models.report import write_report
    from core.errors import MMERError
    from commands.display import console
    if not (Path(workdir) / "corpus.json").exists():
        raise click.BadParameter(f"{workdir} holds no prepared corpus (run `prepare` first, or "
                                 "check --workdir)", param_hint="--workdir")
    folder = Path(out) if out else Path(workdir) / "report"
    had_report = (folder / "report.md").exists()
    try:
        path = write_report(workdir, out, list(compare), html_audio)
    except OSError as e:
        kept = (f"the previous report.md in {folder} is intact" if had_report
                else f"no report.md was written in {folder}")
        raise MMERError(f"report not written ({e.strerror or e}); {kept}") from e
    console.print(f"report: {path}")
    console.print(f"html: {path.parent / HTML_NAME}")


@click.command()
@click.option("--quick", is_flag=True, help="A tiny corpus and few steps (a smoke test, ~1-2 min).")
@click.option("--ser-config", default="small", show_default=True,
              type=click.Choice(["small", "large", "head-linear", "head-mlp", "head-attentive"]),
              help="The SER model: the paper's network (CPU widths, short schedule) or a reference head.")
@RECIPE
@WORKDIR
def demo(quick, ser_config, workdir) -> None:
    """The whole journey on the built-in espeak-ng corpus, offline on CPU: prepare → extract
    (real Whisper-base, Resemblyzer, MiniLM weights) → train SER + TER → fuse → report.
    A second run reuses every cached stage and trained fold."""
    import dataclasses

    from commands.display import console, stage_progress, table
    from models.demo import QUICK, DemoConfig, run_demo
    t = time.perf_counter()
    config = dataclasses.replace(QUICK if quick else DemoConfig(), ser_config=ser_config,
                                 recipe=recipe_used())
    with stage_progress() as prog:
        out = run_demo(workdir, config, progress=prog, say=console.print)
    console.print(table("demo: UA (mean over leave-one-session-out folds)", ["model", "UA %"],
                        [[k, f"{100 * v:.1f}"] for k, v in out["ua"].items()]))
    console.print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in out["times"].items()) +
                  f"; total {time.perf_counter() - t:.0f} s")
    console.print(f"report: [bold]{out['report']}[/bold]")
    console.print(f"html: [bold]{out['html']}[/bold] (error browser: open it in a browser)")


@click.command()
@click.argument("utt_id")
@run_option("ser")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Figure path (PNG; an SVG is written beside it). Default: <workdir>/report/inspect_<id>.png")
@WORKDIR
def inspect(utt_id, ser_run, out, workdir) -> None:
    """One utterance in one figure: waveform, cached mel spectrogram, phone alignment, and the
    class probabilities of each inference window of the fold that tested it."""
    from commands.display import console
    from models.inspect_utt import inspect_utterance
    r = inspect_utterance(workdir, utt_id, chosen_run(workdir, "ser", ser_run), out)
    mean = r.window_probs.mean(0)
    console.print(f"{utt_id}: label {r.label}; fold {r.fold}; {len(r.window_probs)} window(s); mean P: "
                  + ", ".join(f"{c} {p:.2f}" for c, p in zip(r.classes, mean)))
    console.print(f"figure: {r.figure}")
