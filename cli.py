"""Command line: ``python cli.py --help``. A thin click layer over pipeline/ and models/."""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import click

from pipeline.errors import MMERError

WORKDIR = click.option("--workdir", "-w", type=click.Path(file_okay=False), default="work",
                       show_default=True, help="Work directory: corpus, feature cache, runs.")


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler
    from pipeline.progress import console
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    for noisy in ("distributed", "urllib3", "numba", "h5py", "matplotlib", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _Group(click.Group):
    """Turns project errors into a one-line message and exit status 1 (no traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MMERError as e:
            click.secho(f"error: {e}", fg="red", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """Multimodal emotion recognition from high-level speech and text features
    (Makiuchi, Uto & Shinoda, ASRU 2021), re-implemented.

    Typical flow: prepare → extract → train ser / train ter → fuse → report.
    """
    _setup_logging(verbose)


# --------------------------------------------------------------------------- prepare
@cli.group(cls=_Group)
def prepare() -> None:
    """Read a corpus into the work directory (corpus.jsonl, rejected.tsv) and summarise it."""


def _summary(result, seconds: float) -> None:
    from pipeline.progress import console, table
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
    for item, src, reason in result.rejected[:10]:
        console.print(f"  [red]rejected[/red] {item}: {reason} ({src})")
    if len(result.rejected) > 10:
        console.print(f"  … {len(result.rejected) - 10} more in rejected.tsv")


@prepare.command("iemocap")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@WORKDIR
def prepare_iemocap_cmd(root: str, workdir: str) -> None:
    """IEMOCAP from its official release folder ROOT (IEMOCAP_full_release): 4 classes,
    excited merged into happy, leave-one-session-out groups."""
    from pipeline.prepare import prepare_iemocap
    t = time.perf_counter()
    _summary(prepare_iemocap(workdir, root), time.perf_counter() - t)


@prepare.command("manifest")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@WORKDIR
def prepare_manifest_cmd(manifest: str, workdir: str) -> None:
    """Your own corpus from a CSV or JSONL MANIFEST with columns id,audio,speaker,label
    (optional text,group,start,end,language; audio paths relative to the manifest)."""
    from pipeline.prepare import prepare_manifest
    t = time.perf_counter()
    _summary(prepare_manifest(workdir, manifest), time.perf_counter() - t)


@prepare.command("demo")
@click.option("--per-cell", type=int, default=12, show_default=True,
              help="Utterances per speaker × emotion (6 speakers × 4 emotions).")
@click.option("--seed", type=int, default=0, show_default=True)
@WORKDIR
def prepare_demo_cmd(per_cell: int, seed: int, workdir: str) -> None:
    """The built-in demo corpus: English sentences spoken by espeak-ng voices with
    emotion-dependent prosody, generated offline in seconds."""
    from pipeline.prepare import prepare_demo
    t = time.perf_counter()
    _summary(prepare_demo(workdir, per_cell, seed), time.perf_counter() - t)


# --------------------------------------------------------------------------- extract / status
def _parse_params(stage: tuple[str, ...], param: tuple[str, ...]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for p in param:
        if "=" not in p or "." not in p.split("=", 1)[0]:
            raise click.BadParameter(f"{p!r}: expected STAGE.FIELD=VALUE, e.g. mel.n_mels=80",
                                     param_hint="--param")
        key, value = p.split("=", 1)
        st, field = key.split(".", 1)
        out.setdefault(st, {})[field] = value
    return out


@cli.command()
@click.option("--stage", "-s", "stages", multiple=True, default=("all",), show_default=True,
              help="Stage to bring up to date (repeatable), or 'all'. Upstream stages run first.")
@click.option("--param", "-p", multiple=True, metavar="STAGE.FIELD=VALUE",
              help="Stage parameter, remembered in the work directory (repeatable).")
@click.option("--force", is_flag=True, help="Recompute even up-to-date shards of these stages.")
@click.option("--workers", type=int, default=None,
              help="CPU worker processes (default: one per core, at most one per shard; "
                   "1 = run in this process).")
@click.option("--gpus", default=None, metavar="0,1",
              help="GPUs for GPU stages, one worker process each (default: all visible).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Use an existing Dask cluster; its workers must see the work directory.")
@WORKDIR
def extract(stages, param, force, workers, gpus, scheduler, workdir) -> None:
    """Compute features into the HDF5 shard cache; only what changed is recomputed."""
    from pipeline.extract import extract as run
    from pipeline.progress import console, human_bytes, stage_progress, table
    from pipeline.scheduler import parse_gpus
    t = time.perf_counter()
    with stage_progress() as prog:
        reports = run(workdir, list(stages), _parse_params(stages, param), force=force,
                      workers=workers, gpus=parse_gpus(gpus), scheduler=scheduler, progress=prog)
    rows = [[r.stage, r.identity, r.shards_total, r.computed, r.reused, len(r.failed)]
            for r in reports]
    console.print(table("extract", ["stage", "key", "shards", "computed", "reused", "failed items"],
                        rows))
    for r in reports:
        for utt, reason in list(r.failed.items())[:5]:
            console.print(f"  [yellow]{r.stage}[/yellow] failed {utt}: {reason}")
    console.print(f"done in {time.perf_counter() - t:.1f} s")


@cli.command()
@click.option("--stage", "-s", "stages", multiple=True, help="Only these stages.")
@WORKDIR
def status(stages, workdir) -> None:
    """Per stage: complete / stale / missing shards, failed items, bytes, key, why stale."""
    from pipeline.extract import status as get
    from pipeline.progress import console, human_bytes, table
    rows = get(workdir, list(stages) or None)
    console.print(table(f"status of {workdir}",
                        ["stage", "key", "complete", "stale", "missing", "failed items", "on disk"],
                        [[r["stage"], r["key"], r["shards"]["complete"], r["shards"]["stale"],
                          r["shards"]["missing"], len(r["failed"]), human_bytes(r["bytes"])]
                         for r in rows]))
    for r in rows:
        for why in r["why_stale"]:
            console.print(f"  [yellow]{r['stage']}[/yellow] stale: {why}")
        for utt, reason in list(r["failed"].items())[:5]:
            console.print(f"  [red]{r['stage']}[/red] failed {utt}: {reason}")


@cli.group(cls=_Group)
def train() -> None:
    """Train a model with leave-one-group-out cross-validation."""


if __name__ == "__main__":
    cli()
