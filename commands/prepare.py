"""``prepare iemocap|manifest|demo``: read a corpus into the work directory and summarise it."""
from __future__ import annotations

import time

import click

from commands.common import WORKDIR, ProjectGroup


@click.group(cls=ProjectGroup)
def prepare() -> None:
    """Read a corpus into the work directory (corpus.jsonl, rejected.tsv) and summarise it."""


def _prepare_and_summarise(run, workdir: str) -> None:
    """Run ``run()`` (a prepare_* call) and print its summary with the time it took."""
    t = time.perf_counter()
    result = run()
    _summary(result, time.perf_counter() - t, workdir)


def _summary(result, seconds: float, workdir: str) -> None:
    from commands.display import console, table
    c = result.corpus
    rows = [[g] + [n[k] for k in c.classes] + [sum(n.values())] for g, n in result.table().items()]
    totals = [sum(r[i + 1] for r in rows) for i in range(len(c.classes) + 1)]
    rows.append(["total"] + totals)
    console.print(table(f"{c.name}: utterances per group × class", ["group", *c.classes, "all"],
                        rows))
    console.print(f"speakers: {len(c.speakers)} ({', '.join(c.speakers[:12])}"
                  f"{' …' if len(c.speakers) > 12 else ''}); audio: {result.seconds / 3600:.2f} h; "
                  f"rejected: {len(result.rejected)}; kept with remarks: {len(result.notes)}; "
                  f"prepared in {seconds:.1f} s")
    console.print(f"classes ({len(c.classes)}): {', '.join(c.classes)}")
    for warning in result.class_warnings() + result.language_warnings():
        console.print(f"  [yellow]note[/yellow]: {warning}")
    for item, src, reason in result.rejected[:10]:
        console.print(f"  [red]rejected[/red] {item}: {reason} ({src})")
    if len(result.rejected) > 10:
        console.print(f"  … {len(result.rejected) - 10} more in rejected.tsv")
    _warn_trained_runs(workdir)


def _warn_trained_runs(workdir: str) -> None:
    """After a prepare over a work dir with trained runs: which of their folds it made stale."""
    from models.trained import run_states
    from commands.display import console
    runs = run_states(workdir)
    changed = [r for r in runs if r.stale]
    if changed:
        console.print(f"[yellow]note[/yellow]: this work directory holds {len(runs)} trained run(s); "
                      "the corpus now differs for " + ", ".join(
                          f"{r.task}/{r.run} ({len(r.stale)} fold(s))" for r in changed)
                      + ". `train` retrains those folds; `fuse`, `report` and `predict` leave them "
                        "out until then.")

CLASSES = click.option("--classes", default=None, metavar="A,B,C",
                       help="The classes, in this order; rows with other labels are rejected "
                            "(default: every label the corpus has).")
MAP = click.option("--map", "maps", multiple=True, metavar="OLD=NEW",
                   help="Rename or merge a label before anything else, e.g. excited=happy "
                        "(repeatable).")


def label_options(command):
    """--classes and --map: the class set of a corpus read from its own labels."""
    return CLASSES(MAP(command))


@prepare.command("iemocap")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@label_options
@WORKDIR
def prepare_iemocap_cmd(root: str, classes, maps, workdir: str) -> None:
    """IEMOCAP from its official release folder ROOT (IEMOCAP_full_release), leave-one-session-out
    groups. Default: the paper's 4 classes, excited merged into happy. Other protocols name the
    release's labels: neutral, happy, excited, sad, angry, frustrated, surprised, fearful,
    disgusted, other; e.g. --classes neutral,happy,sad,angry,excited,frustrated (6 classes)."""
    from pipeline.labels import LabelPolicy
    from pipeline.prepare import prepare_iemocap
    policy = LabelPolicy.parse(classes, maps) if classes or maps else None
    if policy is not None and policy.classes is None:
        raise click.BadParameter("with --map, also name the classes to keep", param_hint="--classes")
    _prepare_and_summarise(lambda: prepare_iemocap(workdir, root, policy), workdir)


@prepare.command("manifest")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@label_options
@WORKDIR
def prepare_manifest_cmd(manifest: str, classes, maps, workdir: str) -> None:
    """Your own corpus from a CSV or JSONL MANIFEST with columns id,audio,speaker,label
    (optional text,group,start,end,language,split; audio paths relative to the manifest). A
    text-only corpus leaves out audio and gives text; a split column (train/dev/test) trains on
    train, selects on dev and reports on test instead of leave-one-group-out. The classes
    are the labels it has (common spellings of neutral/happy/sad/angry normalised; a rare label
    close to another is rejected as a typo), or exactly --classes."""
    from pipeline.labels import LabelPolicy
    from pipeline.prepare import prepare_manifest
    policy = LabelPolicy.parse(classes, maps)
    _prepare_and_summarise(lambda: prepare_manifest(workdir, manifest, policy), workdir)


@prepare.command("demo")
@click.option("--per-cell", type=int, default=12, show_default=True,
              help="Utterances per speaker × emotion (6 speakers × 4 emotions).")
@click.option("--seed", type=int, default=0, show_default=True)
@WORKDIR
def prepare_demo_cmd(per_cell: int, seed: int, workdir: str) -> None:
    """The built-in demo corpus: English sentences spoken by espeak-ng voices with
    emotion-dependent prosody, generated offline in seconds."""
    from pipeline.prepare import prepare_demo
    _prepare_and_summarise(lambda: prepare_demo(workdir, per_cell, seed), workdir)
