"""Command line: ``python cli.py --help``. A thin click layer over pipeline/ and models/
(``train`` and ``probe`` live in models/cli_train.py, ``predict`` in models/cli_predict.py)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import click

from models.cli_predict import predict
from models.cli_train import probe, train
from pipeline.cli_base import JSON_OUT, WORKDIR, ProjectGroup, emit_json


def _setup_logging(verbose: bool, log_file: str | None = None) -> None:
    from rich.logging import RichHandler
    from pipeline.progress import console
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)])
    if log_file:  # every message with its time and origin, for unattended runs
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(to_file)
        root.setLevel(min(root.level or level, level))
        click.get_current_context().call_on_close(lambda: (root.removeHandler(to_file),
                                                           to_file.close()))
    for noisy in ("distributed", "urllib3", "numba", "h5py", "matplotlib", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _version_message() -> str:
    from importlib import metadata
    from models.provenance import code_version
    try:
        version = metadata.version("mmer")
    except metadata.PackageNotFoundError:  # run from a checkout that setup.sh has not installed
        version = "not installed"
    code = code_version()
    dirty = " (uncommitted changes)" if code["dirty"] else ""
    return f"mmer {version}, commit {code['commit']}{dirty}"


def _print_version(ctx: click.Context, _param, value: bool) -> None:
    if value:
        click.echo(_version_message())
        ctx.exit()


@click.group(cls=ProjectGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.option("--log-file", type=click.Path(dir_okay=False), default=None,
              help="Also write every log message, with time and origin, to this file.")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and the code commit, then exit.")
def cli(verbose: bool, log_file: str | None) -> None:
    """Multimodal emotion recognition from high-level speech and text features
    (Makiuchi, Uto & Shinoda, ASRU 2021), re-implemented.

    Typical flow: prepare → extract → train ser / train ter → fuse → report.
    """
    _setup_logging(verbose, log_file)


# --------------------------------------------------------------------------- prepare
@cli.group(cls=ProjectGroup)
def prepare() -> None:
    """Read a corpus into the work directory (corpus.jsonl, rejected.tsv) and summarise it."""


def _summary(result, seconds: float, workdir: str) -> None:
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
    console.print(f"classes ({len(c.classes)}): {', '.join(c.classes)}")
    for warning in result.class_warnings():
        console.print(f"  [yellow]note[/yellow]: {warning}")
    for item, src, reason in result.rejected[:10]:
        console.print(f"  [red]rejected[/red] {item}: {reason} ({src})")
    if len(result.rejected) > 10:
        console.print(f"  … {len(result.rejected) - 10} more in rejected.tsv")
    _warn_trained_runs(workdir)


def _warn_trained_runs(workdir: str) -> None:
    """After a prepare over a work dir with trained runs: which of their folds it made stale."""
    from models.trained import run_states
    from pipeline.progress import console
    runs = run_states(workdir)
    changed = [r for r in runs if r["stale"]]
    if changed:
        console.print(f"[yellow]note[/yellow]: this work directory holds {len(runs)} trained run(s); "
                      "the corpus now differs for " + ", ".join(
                          f"{r['task']}/{r['run']} ({len(r['stale'])} fold(s))" for r in changed)
                      + ". `train` retrains those folds; `fuse`, `report` and `predict` leave them "
                        "out until then.")

CLASSES = click.option("--classes", default=None, metavar="A,B,C",
                       help="The classes, in this order; rows with other labels are rejected "
                            "(default: every label the corpus has).")
MAP = click.option("--map", "maps", multiple=True, metavar="OLD=NEW",
                   help="Rename or merge a label before anything else, e.g. excited=happy "
                        "(repeatable).")


@prepare.command("iemocap")
@click.argument("root", type=click.Path(exists=True, file_okay=False))
@CLASSES
@MAP
@WORKDIR
def prepare_iemocap_cmd(root: str, classes, maps, workdir: str) -> None:
    """IEMOCAP from its official release folder ROOT (IEMOCAP_full_release), leave-one-session-out
    groups. Default: the paper's 4 classes, excited merged into happy. Other protocols name the
    release's labels: neutral, happy, excited, sad, angry, frustrated, surprised, fearful,
    disgusted, other; e.g. --classes neutral,happy,sad,angry,excited,frustrated (6 classes)."""
    from pipeline.labels import LabelPolicy
    from pipeline.prepare import prepare_iemocap
    t = time.perf_counter()
    policy = LabelPolicy.parse(classes, maps) if classes or maps else None
    if policy is not None and policy.classes is None:
        raise click.BadParameter("with --map, also name the classes to keep", param_hint="--classes")
    _summary(prepare_iemocap(workdir, root, policy), time.perf_counter() - t, workdir)


@prepare.command("manifest")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@CLASSES
@MAP
@WORKDIR
def prepare_manifest_cmd(manifest: str, classes, maps, workdir: str) -> None:
    """Your own corpus from a CSV or JSONL MANIFEST with columns id,audio,speaker,label
    (optional text,group,start,end,language; audio paths relative to the manifest). The classes
    are the labels it has (common spellings of neutral/happy/sad/angry normalised; a rare label
    close to another is rejected as a typo), or exactly --classes."""
    from pipeline.labels import LabelPolicy
    from pipeline.prepare import prepare_manifest
    t = time.perf_counter()
    policy = LabelPolicy.parse(classes, maps)
    _summary(prepare_manifest(workdir, manifest, policy), time.perf_counter() - t, workdir)


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
    _summary(prepare_demo(workdir, per_cell, seed), time.perf_counter() - t, workdir)


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
@click.option("--reset-params", is_flag=True,
              help="Forget the remembered parameters of the --stage stages (all with 'all') "
                   "before applying --param: back to the defaults.")
@click.option("--force", is_flag=True, help="Recompute even up-to-date shards of these stages.")
@click.option("--rehash", is_flag=True,
              help="Hash every audio file again instead of trusting its size and modification "
                   "time (for tools that rewrite files in place keeping both).")
@click.option("--workers", type=int, default=None,
              help="CPU worker processes (default: one per core, at most one per shard; "
                   "1 = run in this process).")
@click.option("--gpus", default=None, metavar="0,1",
              help="GPUs for GPU stages, one worker process each (default: all visible).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Use an existing Dask cluster; its workers must see the work directory.")
@WORKDIR
def extract(stages, param, reset_params, force, rehash, workers, gpus, scheduler, workdir) -> None:
    """Compute features into the HDF5 shard cache; only what changed is recomputed.

    Parameters given with -p are remembered in WORKDIR/stage_params.json and used by later runs;
    --reset-params forgets them for the named stages.
    """
    from pipeline.extract import extract as run
    from pipeline.progress import console, stage_progress, table
    from pipeline.scheduler import parse_gpus
    t = time.perf_counter()
    with stage_progress() as prog:
        reports = run(workdir, list(stages), _parse_params(stages, param), force=force,
                      workers=workers, gpus=parse_gpus(gpus), scheduler=scheduler, progress=prog,
                      reset_params=reset_params, rehash=rehash)
    rows = [[r.stage, r.identity, r.shards_total, r.computed, r.reused, len(r.failed),
             len(r.notes)] for r in reports]
    console.print(table("extract", ["stage", "key", "shards", "computed", "reused", "failed items",
                                    "kept with remarks"], rows))
    for r in reports:
        for utt, reason in list(r.failed.items())[:5]:
            console.print(f"  [yellow]{r.stage}[/yellow] failed {utt}: {reason}")
        for utt, note in list(r.notes.items())[:3]:
            console.print(f"  [yellow]{r.stage}[/yellow] {utt}: {note}")
    console.print(f"done in {time.perf_counter() - t:.1f} s")


@cli.command()
@click.option("--stage", "-s", "stages", multiple=True, help="Only these stages.")
@JSON_OUT
@WORKDIR
def status(stages, as_json, workdir) -> None:
    """Per stage: complete / stale / missing shards, failed items, bytes, key, why stale; then
    the trained runs: folds current for the corpus, stale (and why), missing."""
    from models.trained import run_states
    from pipeline.extract import status as get
    from pipeline.progress import console, human_bytes, table
    rows = get(workdir, list(stages) or None)
    if as_json:
        return emit_json({"stages": rows, "runs": run_states(workdir)})
    console.print(table(f"status of {workdir}",
                        ["stage", "key", "complete", "stale", "missing", "failed items",
                         "kept with remarks", "on disk"],
                        [[r["stage"], r["key"], r["shards"]["complete"], r["shards"]["stale"],
                          r["shards"]["missing"], len(r["failed"]), len(r["notes"]),
                          human_bytes(r["bytes"])]
                         for r in rows]))
    for r in rows:
        for why in r["why_stale"]:
            console.print(f"  [yellow]{r['stage']}[/yellow] stale: {why}")
        for utt, reason in list(r["failed"].items())[:5]:
            console.print(f"  [red]{r['stage']}[/red] failed {utt}: {reason}")
        for path in r.get("orphans", []):
            console.print(f"  [yellow]{r['stage']}[/yellow] orphan shard {path} (never read; "
                          "`gc` removes it)")
    _run_status(workdir)


def _run_status(workdir: str) -> None:
    """Trained runs: folds current for the corpus, stale (and why), missing."""
    from models.trained import run_states
    from pipeline.progress import console, table
    runs = run_states(workdir)
    if not runs:
        return
    console.print(table("trained runs", ["run", "current folds", "stale", "missing"],
                        [[f"{r['task']}/{r['run']}", len(r["current"]), len(r["stale"]),
                          len(r["missing"])] for r in runs]))
    for r in runs:
        for fold, why in list(r["stale"].items())[:5]:
            console.print(f"  [yellow]{r['task']}/{r['run']}[/yellow] fold {fold} stale: {why}")


# --------------------------------------------------------------------------- verify
@cli.command()
@click.option("--stage", "-s", "stages", multiple=True, help="Only these stages (default: all cached).")
@click.option("--repair", is_flag=True,
              help="Delete corrupt and orphaned shards, so that the next `extract` recomputes them.")
@WORKDIR
def verify(stages, repair, workdir) -> None:
    """Read every cached feature and check it against its stored checksum; list orphaned shards
    (never read). Read-only unless --repair; exit status 1 if any corrupt shard was found."""
    from core.errors import CacheError
    from pipeline.progress import console
    from pipeline.verify import verify_cache
    from pipeline.stages import get_stage
    for name in stages:
        get_stage(name)  # an unknown stage is an error, not "0 shards verified"
    out = verify_cache(workdir, list(stages) or None, repair=repair)
    for path, problems in out["corrupt"].items():
        console.print(f"  [red]corrupt[/red] {path}: {'; '.join(problems[:3])}")
    for path in out["orphans"]:
        console.print(f"  orphan {path}: not listed in its stage's index; never read"
                      + ("; removed" if repair else " (`verify --repair` or `gc` removes it)"))
    if out["corrupt"]:
        raise CacheError(f"{len(out['corrupt'])} of {out['shards']} shard(s) corrupt"
                         + ("; deleted: run `python cli.py extract` to recompute them" if repair
                            else ": run `python cli.py verify --repair`, then `extract`"))
    console.print(f"{out['shards']} shard(s) verified, no corruption found")


@cli.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be removed, with sizes.")
@click.option("--runs", "with_runs", is_flag=True,
              help="Also remove trained runs with no fold trained on the current corpus.")
@WORKDIR
def gc(dry_run, with_runs, workdir) -> None:
    """Remove cached features that nothing current references: earlier stage settings no trained
    run used, orphaned shards, unused speaker means (and with --runs, stale runs)."""
    from models.trained import collect_garbage
    from pipeline.gc import remove
    from pipeline.progress import console, human_bytes
    items = collect_garbage(workdir, with_runs)
    for g in items:
        console.print(f"  {human_bytes(g.nbytes):>9}  {g.path}  ({g.why})")
    total = sum(g.nbytes for g in items)
    if dry_run:
        console.print(f"{len(items)} item(s), {human_bytes(total)} would be freed (dry run)")
        return
    console.print(f"{len(items)} item(s) removed, {human_bytes(remove(items))} freed")


# --------------------------------------------------------------------------- fuse / report / demo / predict
@cli.command()
@click.option("--ser-run", default="small", show_default=True, help="SER run (runs/ser/<name>).")
@click.option("--ter-run", default="cnn", show_default=True, help="TER run (runs/ter/<name>).")
@click.option("--grid", type=int, default=21, show_default=True,
              help="Number of speech weights λ in [0, 1] tried on validation predictions.")
@JSON_OUT
@WORKDIR
def fuse(ser_run, ter_run, grid, as_json, workdir) -> None:
    """Late fusion p = w1·p_speech + w2·p_text. Weights are searched per fold on validation
    predictions inside the training groups (never the test fold); the paper's fixed
    (0.6, 1.0) is evaluated too. Utterances without text fall back to speech alone."""
    from models.fusion import FusionConfig, fuse as run
    from pipeline.progress import console, table
    out = run(workdir, FusionConfig(ser_run, ter_run, grid))
    rows = [[kind, f"{100 * m['mean']['wa']:.1f}", f"{100 * m['mean']['ua']:.1f}",
             f"{100 * m['pooled']['ua']:.1f}", m["speech_only"]]
            for kind, m in out.items() if kind != "weights"]
    console.print(table(f"fusion {ser_run}+{ter_run}", ["weights", "WA", "UA", "pooled UA",
                                                         "speech-only utts"], rows))
    console.print("weights per fold (w1, w2): " + ", ".join(
        f"{f} ({w['w1']:.2f}, {w['w2']:.2f})" for f, w in out["weights"].items()))
    if as_json:
        emit_json(out)


@cli.command()
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Report folder (default: <workdir>/report).")
@click.option("--compare", nargs=2, multiple=True, metavar="TASK/RUN TASK/RUN",
              help="Also test one run against another (paired), e.g. --compare ser/small ser/large.")
@WORKDIR
def report(out, compare, workdir) -> None:
    """Write report.md: pooled UA/WA with 95 % bootstrap CIs, per-fold tables, per-class
    precision/recall/F1, chance and majority lines, paired tests of fusion against each modality
    (and of --compare pairs), each run's setup (commit, corpus, features, command), confusion
    matrices, layer weights and speaker-probe results. Runs trained on another corpus are set
    apart. Written atomically: on failure the previous report stays intact."""
    from models.report import write_report
    from core.errors import MMERError
    from pipeline.progress import console
    if not (Path(workdir) / "corpus.json").exists():
        raise click.BadParameter(f"{workdir} holds no prepared corpus (run `prepare` first, or "
                                 "check --workdir)", param_hint="--workdir")
    folder = Path(out) if out else Path(workdir) / "report"
    had_report = (folder / "report.md").exists()
    try:
        path = write_report(workdir, out, list(compare))
    except OSError as e:
        kept = (f"the previous report.md in {folder} is intact" if had_report
                else f"no report.md was written in {folder}")
        raise MMERError(f"report not written ({e.strerror or e}); {kept}") from e
    console.print(f"report: {path}")


@cli.command()
@click.option("--quick", is_flag=True, help="A tiny corpus and few steps (a smoke test, ~1-2 min).")
@WORKDIR
def demo(quick, workdir) -> None:
    """The whole journey on the built-in espeak-ng corpus, offline on CPU: prepare → extract
    (real Whisper-base, Resemblyzer, MiniLM weights) → train SER + TER → fuse → report.
    A second run reuses every cached stage and trained fold."""
    from models.demo import QUICK, DemoConfig, run_demo
    from pipeline.progress import console, stage_progress, table
    t = time.perf_counter()
    with stage_progress() as prog:
        out = run_demo(workdir, QUICK if quick else DemoConfig(), progress=prog,
                       say=console.print)
    console.print(table("demo: UA (mean over leave-one-session-out folds)", ["model", "UA %"],
                        [[k, f"{100 * v:.1f}"] for k, v in out["ua"].items()]))
    console.print("time: " + ", ".join(f"{k} {v:.0f} s" for k, v in out["times"].items()) +
                  f"; total {time.perf_counter() - t:.0f} s")
    console.print(f"report: [bold]{out['report']}[/bold]")


cli.add_command(predict)
cli.add_command(train)
cli.add_command(probe)

def main() -> None:
    """The `mmer` console command (the same as `python cli.py`)."""
    cli()


if __name__ == "__main__":
    main()
