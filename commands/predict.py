"""``predict``: the click layer over :func:`models.predict.predict`."""
from __future__ import annotations

import contextlib
from pathlib import Path

import click

from commands.common import PAPER_RUNS, WORKDIR, chosen_run, run_option


@click.command()
@click.argument("audio", nargs=-1, type=click.Path(exists=True, dir_okay=False))
@click.option("--list", "list_file", type=click.Path(exists=True, dir_okay=False),
              help="Batch mode: a text file of audio paths, one per line (relative to the file's "
                   "folder; blank lines and # comments skipped), after any AUDIO given.")
@click.option("--text", "texts", multiple=True,
              help="Transcript of each AUDIO file, in order (repeat once per file).")
@click.option("--transcripts", type=click.Path(exists=True, dir_okay=False),
              help="TSV file: audio path <TAB> transcript.")
@click.option("--transcribe", is_flag=True,
              help="No transcript? Transcribe with the installed Whisper tiny.en, then fuse.")
@run_option("ser")
@run_option("ter")
@click.option("--fold", default=None, help="Use one fold's models (default: average all folds).")
@click.option("--language", default="en", show_default=True,
              help="Language of the speech and transcripts (ISO 639-1).")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "tsv"]), default="table",
              show_default=True, help="Output: a table, JSON, or tab-separated values.")
@click.option("--json", "as_json", is_flag=True, hidden=True, help="Same as --format json.")
@WORKDIR
def predict(audio, list_file, texts, transcripts, transcribe, ser_run, ter_run, fold, language, fmt,
            as_json, workdir) -> None:
    """Emotion of AUDIO files with the trained checkpoints in the work directory; features are
    computed on the fly (no cache needed). Speech alone, or fused with text when a transcript
    is given or transcribed. One row per file, in the order given; exit status 1 if any failed."""
    from models.predict import predict as run
    audio = list(audio) + (_listed(Path(list_file)) if list_file else [])
    if not audio:
        raise click.UsageError("give AUDIO files, or --list FILE")
    if texts and len(texts) != len(audio):
        raise click.BadParameter(f"{len(texts)} --text for {len(audio)} files", param_hint="--text")
    if transcribe and language != "en":
        raise click.BadParameter(f"--transcribe uses Whisper tiny.en, which only transcribes "
                                 f"English; give the {language!r} transcripts with --text or "
                                 "--transcripts", param_hint="--transcribe")
    given = list(texts) if texts else [None] * len(audio)
    if transcripts:
        rows = dict(line.rstrip("\n").split("\t", 1) for line in
                    Path(transcripts).read_text(encoding="utf-8").splitlines() if "\t" in line)
        given = [rows.get(a, g) for a, g in zip(audio, given)]
    _no_third_party_bars()
    ser_run = chosen_run(workdir, "ser", ser_run)
    if transcribe or any(given):  # speech alone reads no TER run
        ter_run = chosen_run(workdir, "ter", ter_run)
    with _progress(len(audio)) as advance:
        preds = run(workdir, list(audio), given, ser_run, ter_run or PAPER_RUNS["ter"], fold, transcribe,
                    language=language, progress=advance)
    _print_predictions(preds, "json" if as_json else fmt)
    _fail_if_any(preds)


def _no_third_party_bars() -> None:
    """No transformers / huggingface_hub progress bars in the output, without importing them
    (0.7 s of a cold start; a speech head on Whisper needs neither): they read the variable when
    first imported, and are told directly where they already are."""
    import os
    import sys
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars
        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging
        hf_logging.disable_progress_bar()


@contextlib.contextmanager
def _progress(n_files: int):
    """A progress bar (standard error) for lists longer than one chunk; else nothing."""
    from models.predict import CHUNK
    if n_files <= CHUNK:
        yield None
        return
    from commands.display import stage_progress
    with stage_progress() as start:
        yield start("predict", n_files)


def _listed(path: Path) -> list[str]:
    """The audio paths a --list file names; a missing one is an error naming its line."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        name = line.strip()
        if not name or name.startswith("#"):
            continue
        f = path.parent / name
        if not f.is_file():
            raise click.BadParameter(f"{path}:{n}: {name!r} is not a file", param_hint="--list")
        out.append(str(f))
    return out


def _print_predictions(preds, fmt: str) -> None:
    import json as _json
    import os
    from commands.display import console, table
    for p in preds:  # relative to here when below it: short, and still a path you can open
        rel = os.path.relpath(p.file)
        p.file = p.file if rel.startswith("..") else rel
    if fmt == "json":
        click.echo(_json.dumps([p.__dict__ for p in preds], indent=2, ensure_ascii=False))
        return
    classes = list(next((p.probs for p in preds if p.probs), {}))
    rows = [[p.file, p.label or f"error: {p.error}",
             *([f"{p.probs[c]:.3f}" for c in classes] if p.probs else [""] * len(classes)),
             p.transcript or ""] for p in preds]
    if fmt == "tsv":
        for r in [["file", "label", *classes, "text"]] + rows:
            click.echo("\t".join(str(x).replace("\t", " ") for x in r))
        return
    console.print(table("predictions", ["file", "label", *classes, "text"], rows))


def _fail_if_any(preds) -> None:
    """Exit status 1 when any input failed (the others were still predicted and shown)."""
    from core.errors import MMERError
    failed = [p for p in preds if p.error]
    if failed:
        raise MMERError(f"{len(failed)} of {len(preds)} input(s) failed: "
                        + "; ".join(f"{p.file}: {p.error}" for p in failed[:3]))
