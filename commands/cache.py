"""``extract``, ``status``, ``verify``, ``gc``: the feature cache."""
from __future__ import annotations

import time

import click

from commands.common import JSON_OUT, WORKDIR, emit_json
from commands.recipes import RECIPE, recipe_used


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


@click.command()
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
@RECIPE
@WORKDIR
def extract(stages, param, reset_params, force, rehash, workers, gpus, scheduler, workdir) -> None:
    """Compute features into the HDF5 shard cache; only what changed is recomputed.

    Parameters given with -p are remembered in WORKDIR/stage_params.json and used by later runs;
    --reset-params forgets them for the named stages. With GPUs, the CPU stages (mel, phones)
    run beside the GPU stages (speech, speaker, text). Interrupted or failed runs keep every
    completed shard: run the same command again to go on.
    """
    from pipeline.extract import extract as run
    from commands.display import console, stage_progress, table
    from pipeline.scheduler import parse_gpus
    if param:  # what this run changes, before anything is computed
        console.print("parameters: " + ", ".join(param)
                      + (f" (recipe {recipe_used()})" if recipe_used() else ""))
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


@click.command()
@click.option("--stage", "-s", "stages", multiple=True, help="Only these stages.")
@JSON_OUT
@WORKDIR
def status(stages, as_json, workdir) -> None:
    """Per stage: complete / stale / missing shards, failed items, bytes, key, why stale; then
    the trained runs: folds current for the corpus, stale (and why), missing."""
    from models.trained import run_states
    from pipeline.extract import status as get
    from commands.display import console, human_bytes, table
    rows = get(workdir, list(stages) or None)
    if as_json:
        return emit_json({"stages": rows, "runs": run_states(workdir)})
    console.print(table(f"status of {workdir}",
                        ["stage", "key", "complete", "stale", "missing", "failed items",
                         "kept with remarks", "on disk"],
                        [[r.stage, r.key, r.shards["complete"], r.shards["stale"],
                          r.shards["missing"], len(r.failed), len(r.notes), human_bytes(r.bytes)]
                         for r in rows]))
    for r in rows:
        for why in r.why_stale:
            console.print(f"  [yellow]{r.stage}[/yellow] stale: {why}")
        for utt, reason in list(r.failed.items())[:5]:
            console.print(f"  [red]{r.stage}[/red] failed {utt}: {reason}")
        for path in r.orphans:
            console.print(f"  [yellow]{r.stage}[/yellow] orphan shard {path} (never read; "
                          "`gc` removes it)")
    _run_status(workdir)


def _run_status(workdir: str) -> None:
    """Trained runs: folds current for the corpus, stale (and why), missing."""
    from models.trained import run_states
    from commands.display import console, table
    runs = run_states(workdir)
    if not runs:
        return
    console.print(table("trained runs", ["run", "current folds", "stale", "missing"],
                        [[f"{r.task}/{r.run}", len(r.current), len(r.stale),
                          len(r.missing)] for r in runs]))
    for r in runs:
        for fold, why in list(r.stale.items())[:5]:
            console.print(f"  [yellow]{r.task}/{r.run}[/yellow] fold {fold} stale: {why}")


# --------------------------------------------------------------------------- verify
@click.command()
@click.option("--stage", "-s", "stages", multiple=True, help="Only these stages (default: all cached).")
@click.option("--repair", is_flag=True,
              help="Delete corrupt and orphaned shards, so that the next `extract` recomputes them.")
@WORKDIR
def verify(stages, repair, workdir) -> None:
    """Read every cached feature and check it against its stored checksum; list orphaned shards
    (never read). Read-only unless --repair; exit status 1 if any corrupt shard was found."""
    from core.errors import CacheError
    from commands.display import console
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
                         + ("; deleted, to be recomputed" if repair else ""),
                         then=("extract",) if repair else ("verify --repair", "extract"))
    console.print(f"{out['shards']} shard(s) verified, no corruption found")


@click.command()
@click.option("--dry-run", is_flag=True, help="Only list what would be removed, with sizes.")
@click.option("--runs", "with_runs", is_flag=True,
              help="Also remove trained runs with no fold trained on the current corpus.")
@WORKDIR
def gc(dry_run, with_runs, workdir) -> None:
    """Remove cached features that nothing current references: earlier stage settings no trained
    run used, orphaned shards, unused speaker means (and with --runs, stale runs)."""
    from models.trained import collect_garbage
    from pipeline.gc import remove
    from commands.display import console, human_bytes
    items = collect_garbage(workdir, with_runs)
    for g in items:
        console.print(f"  {human_bytes(g.nbytes):>9}  {g.path}  ({g.why})")
    total = sum(g.nbytes for g in items)
    if dry_run:
        console.print(f"{len(items)} item(s), {human_bytes(total)} would be freed (dry run)")
        return
    console.print(f"{len(items)} item(s) removed, {human_bytes(remove(items))} freed")
