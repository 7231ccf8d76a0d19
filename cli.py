"""Command line: ``python cli.py --help``. A thin click layer over pipeline/ and models/."""
from __future__ import annotations

import errno
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
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            click.secho(f"error: disk full writing {e.filename or 'the work directory'}: free "
                        "space and re-run; completed work is kept", fg="red", err=True)
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
@click.option("--reset-params", is_flag=True,
              help="Forget the remembered parameters of the --stage stages (all with 'all') "
                   "before applying --param: back to the defaults.")
@click.option("--force", is_flag=True, help="Recompute even up-to-date shards of these stages.")
@click.option("--workers", type=int, default=None,
              help="CPU worker processes (default: one per core, at most one per shard; "
                   "1 = run in this process).")
@click.option("--gpus", default=None, metavar="0,1",
              help="GPUs for GPU stages, one worker process each (default: all visible).")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Use an existing Dask cluster; its workers must see the work directory.")
@WORKDIR
def extract(stages, param, reset_params, force, workers, gpus, scheduler, workdir) -> None:
    """Compute features into the HDF5 shard cache; only what changed is recomputed.

    Parameters given with -p are remembered in WORKDIR/stage_params.json and used by later runs;
    --reset-params forgets them for the named stages.
    """
    from pipeline.extract import extract as run
    from pipeline.progress import console, human_bytes, stage_progress, table
    from pipeline.scheduler import parse_gpus
    t = time.perf_counter()
    with stage_progress() as prog:
        reports = run(workdir, list(stages), _parse_params(stages, param), force=force,
                      workers=workers, gpus=parse_gpus(gpus), scheduler=scheduler, progress=prog,
                      reset_params=reset_params)
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
@WORKDIR
def status(stages, workdir) -> None:
    """Per stage: complete / stale / missing shards, failed items, bytes, key, why stale."""
    from pipeline.extract import status as get
    from pipeline.progress import console, human_bytes, table
    rows = get(workdir, list(stages) or None)
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


# --------------------------------------------------------------------------- verify (helper "reliability")
@cli.command()
@click.option("--stage", "-s", "stages", multiple=True, help="Only these stages (default: all cached).")
@click.option("--keep", is_flag=True, help="Only report corrupt shards; do not delete them.")
@WORKDIR
def verify(stages, keep, workdir) -> None:
    """Read every cached feature and check it against its stored checksum. Corrupt shards are
    deleted, so that the next `extract` recomputes them; exit status 1 if any was found."""
    from pipeline.errors import CacheError
    from pipeline.progress import console
    from pipeline.store import verify_cache
    out = verify_cache(workdir, list(stages) or None, remove=not keep)
    for path, problems in out["corrupt"].items():
        console.print(f"  [red]corrupt[/red] {path}: {'; '.join(problems[:3])}")
    if out["corrupt"]:
        raise CacheError(f"{len(out['corrupt'])} of {out['shards']} shard(s) corrupt"
                         + ("" if keep else "; deleted: run `python cli.py extract` to recompute them"))
    console.print(f"{out['shards']} shard(s) verified, no corruption found")
# --------------------------------------------------------------------------- end verify


@cli.group(cls=_Group)
def train() -> None:
    """Train a model with leave-one-group-out cross-validation."""


# --------------------------------------------------------------------------- SER (helper "ser")
def _device(device: str) -> str:
    if device == "auto":
        import torch
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _model_overrides(values: tuple[str, ...]) -> dict:
    from models.ser import SERConfig
    import dataclasses
    fields = {f.name: f for f in dataclasses.fields(SERConfig)}
    out = {}
    for v in values:
        key, _, val = v.partition("=")
        if key not in fields or not val:
            raise click.BadParameter(f"{v!r}: expected FIELD=VALUE with FIELD one of "
                                     f"{', '.join(sorted(fields))}", param_hint="--model")
        default = getattr(SERConfig(), key)
        out[key] = type(default)(val) if not isinstance(default, str) else val
    return out


@train.command("ser")
@click.option("--config", "preset", type=click.Choice(["small", "large", "spec"]), default="small",
              show_default=True, help="small: d=8, f=48 (the paper's); large: d=128, f=2; "
                                      "spec: mel spectrogram as input (ablation).")
@click.option("--folds", default="all", show_default=True,
              help="'all', a count k (first k groups) or comma-separated group names.")
@click.option("--crops", type=int, default=2_000_000, show_default=True,
              help="Training crops seen per fold (paper: 2 M = batch 2 × 1 M steps).")
@click.option("--steps", type=int, default=0, help="Optimizer steps per fold (overrides --crops).")
@click.option("--batch-size", type=int, default=2, show_default=True,
              help="Crops per step; the learning rate follows --lr-rule unless --lr is given.")
@click.option("--lr", type=float, default=0.0, help="Fixed learning rate (default: the rule).")
@click.option("--lr-rule", type=click.Choice(["sqrt", "linear", "none"]), default="sqrt",
              show_default=True, help="sqrt: 1e-4·sqrt(B/2) capped at 1e-3.")
@click.option("--select", type=click.Choice(["last", "val"]), default="last", show_default=True,
              help="last: the final model (official); val: best validation UA inside the training groups.")
@click.option("--run", "run_name", default="", help="Run folder name (default: the config name).")
@click.option("--widths", type=click.Choice(["paper", "cpu"]), default="paper", show_default=True,
              help="paper: the official layer widths; cpu: narrower convs/LSTMs (same architecture) "
                   "for CPU runs.")
@click.option("--model", "-m", "model_values", multiple=True, metavar="FIELD=VALUE",
              help="Free architecture values, e.g. -m dim_neck=16 -m freq=24 -m classifier_act=relu.")
@click.option("--encoder-stage", default="wav2vec", show_default=True,
              help="Cached speech-encoder stage whose layers are the input (not used by spec).")
@click.option("--window-weighting", type=click.Choice(["equal", "frames"]), default="equal", show_default=True,
              help="Inference: equal = plain mean over 96-frame windows, the zero-padded last one "
                   "included (official); frames = windows weighted by their real frames.")
@click.option("--eval-every", type=int, default=0, help="Steps between validation passes (0: ~20 per fold).")
@click.option("--amp", type=click.Choice(["bf16", "off"]), default="bf16", show_default=True,
              help="bf16 autocast on CUDA.")
@click.option("--resident", type=click.Choice(["auto", "yes", "no"]), default="auto", show_default=True,
              help="Keep a fold's training features in device memory (auto: when they fit).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--gpus", default=None, metavar="0,1", help="Run folds in parallel, one per GPU.")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Run folds on an existing Dask cluster (workers must see the work directory).")
@WORKDIR
def train_ser_cmd(preset, folds, crops, steps, batch_size, lr, lr_rule, select, run_name, widths,
                  model_values, encoder_stage, window_weighting, eval_every, amp, resident, seed, device, gpus, scheduler, workdir) -> None:
    """Train the SER model (AutoVC-like cross-representation network) with leave-one-group-out
    cross-validation; writes runs/ser/<config>/ (checkpoints, predictions, metrics, layer weights)."""
    from models.ser import CPU_WIDTHS
    from models.ser_data import StoreKeys
    from models.ser_train import SERRunConfig, train_ser
    from pipeline.progress import console
    from pipeline.scheduler import parse_gpus
    model = {**(CPU_WIDTHS if widths == "cpu" else {}), **_model_overrides(model_values)}
    cfg = SERRunConfig(preset=preset, run=run_name, model=model, crops=crops,
                       steps=steps, batch_size=batch_size, lr=lr, lr_rule=lr_rule, select=select,
                       eval_every=eval_every, seed=seed, amp=amp, resident=resident,
                       window_weighting=window_weighting, keys=StoreKeys(encoder_stage=encoder_stage))
    console.print(f"SER {cfg.run_name}: {cfg.resolved_steps()} steps × batch {batch_size} per fold, "
                  f"lr {cfg.resolved_lr():g}")
    from pipeline.scheduler import visible_gpus
    if parse_gpus(gpus) and not visible_gpus():
        raise click.UsageError("--gpus given, but no CUDA GPU is visible to torch here; drop it")
    s = train_ser(workdir, cfg, folds, device, parse_gpus(gpus), scheduler)
    m = s["mean"]
    console.print(f"SER {cfg.run_name}: UA {m['ua']:.3f} ± {m['ua_std']:.3f}, WA {m['wa']:.3f} "
                  f"(mean over {m['n_folds']} folds); pooled UA {s['pooled']['ua']:.3f}")


@cli.group(cls=_Group)
def probe() -> None:
    """Probes on trained models' representations."""


@probe.command("speaker")
@click.option("--config", "run", default="small", show_default=True,
              help="The SER run whose encoder codes are probed (small, large, or a --run name).")
@click.option("--epochs", type=int, default=60, show_default=True)
@click.option("--activation", type=click.Choice(["none", "relu"]), default="none", show_default=True,
              help="Between the probe's linear layers (paper: linear layers).")
@click.option("--pooling", type=click.Choice(["flatten", "mean"]), default="flatten", show_default=True,
              help="flatten: codes in time order cut/padded to 2048 (paper; large keeps only its first "
                   "16 frames); mean: the codes' mean over the utterance (same coverage for any d, f).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@WORKDIR
def probe_speaker_cmd(run, epochs, activation, pooling, seed, device, workdir) -> None:
    """Speaker-ID probe (2048 → 1024 → 1024 → speakers) on a SER run's encoder codes,
    speaker-dependent 80/20 splits × 5; lower accuracy = better disentanglement."""
    from models.probe import ProbeConfig, probe_speaker
    from pipeline.progress import console
    r = probe_speaker(workdir, run, ProbeConfig(epochs=epochs, activation=activation, pooling=pooling,
                                                seed=seed), _device(device))
    console.print(f"speaker probe on SER {run}: accuracy {r['accuracy']:.3f} ± {r['accuracy_std']:.3f} "
                  f"({r['n_speakers']} speakers, chance {r['chance']:.3f}, n={r['n']})")
# --------------------------------------------------------------------------- end SER


# --------------------------------------------------------------------------- TER (helper "text")
@train.command("ter")
@click.option("--folds", default="all", show_default=True,
              help="'all', a count k (first k groups) or comma-separated group names.")
@click.option("--epochs", type=float, default=20, show_default=True,
              help="Passes over each fold's training utterances.")
@click.option("--steps", type=int, default=0, help="Optimizer steps per fold (overrides --epochs).")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--lr", type=float, default=3e-4, show_default=True, help="Adam learning rate.")
@click.option("--paper", is_flag=True,
              help="The paper's schedule: batch 4, lr 1e-4, 412,800 steps per fold (overrides the above).")
@click.option("--official", is_flag=True,
              help="Reproduce the official quirks: sigmoid before the cross-entropy and average "
                   "pooling over 118 positions including padding.")
@click.option("--max-tokens", type=int, default=122, show_default=True,
              help="Token features are zero-padded/truncated to this length (official 122).")
@click.option("--select", type=click.Choice(["val", "last"]), default="val", show_default=True,
              help="val: best validation UA inside the training groups; last: the final model.")
@click.option("--eval-every", type=int, default=0, help="Steps between validation passes (0: ~20 per fold).")
@click.option("--run", "run_name", default="cnn", show_default=True, help="Run folder: runs/ter/<name>.")
@click.option("--amp", is_flag=True, help="bf16 autocast on CUDA.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@WORKDIR
def train_ter_cmd(folds, epochs, steps, batch_size, lr, paper, official, max_tokens, select, eval_every,
                  run_name, amp, seed, device, workdir) -> None:
    """Train the text model (the official 1-D CNN on cached `text` token features) with
    leave-one-group-out cross-validation; writes runs/ter/<run>/ (checkpoints, predictions, metrics)."""
    from models.ter import TERConfig
    from models.ter_train import TERRun, train_ter
    from models.trainer import TrainConfig
    from pipeline.progress import console
    if paper:
        steps, epochs, batch_size, lr = 412_800, 0.0, 4, 1e-4
    model = TERConfig(max_tokens=max_tokens, sigmoid_logits=official,
                      pooling="official" if official else "masked")
    train_cfg = TrainConfig(steps=steps, epochs=0.0 if steps else epochs, batch_size=batch_size, lr=lr,
                            seed=seed, eval_every=eval_every, select=select)
    s = train_ter(workdir, TERRun(folds=folds, run=run_name, model=model, amp=amp, train=train_cfg),
                  _device(device))
    m = s["mean"]
    console.print(f"TER {run_name}: UA {m['ua']:.3f} ± {m['ua_std']:.3f}, WA {m['wa']:.3f} "
                  f"(mean over {m['n_folds']} folds); pooled UA {s['pooled']['ua']:.3f}")


# --------------------------------------------------------------------------- fuse / report
@cli.command()
@click.option("--ser-run", default="small", show_default=True, help="SER run (runs/ser/<name>).")
@click.option("--ter-run", default="cnn", show_default=True, help="TER run (runs/ter/<name>).")
@click.option("--grid", type=int, default=21, show_default=True,
              help="Number of speech weights λ in [0, 1] tried on validation predictions.")
@WORKDIR
def fuse(ser_run, ter_run, grid, workdir) -> None:
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


@cli.command()
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Report folder (default: <workdir>/report).")
@WORKDIR
def report(out, workdir) -> None:
    """Write report.md with per-fold and pooled WA/UA/macro-F1, confusion matrices (PNG and
    Markdown), learned layer weights, the paper's numbers beside ours, and run metadata."""
    from models.report import write_report
    from pipeline.progress import console
    path = write_report(workdir, out)
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


@cli.command()
@click.argument("audio", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--text", "texts", multiple=True,
              help="Transcript of each AUDIO file, in order (repeat once per file).")
@click.option("--transcripts", type=click.Path(exists=True, dir_okay=False),
              help="TSV file: audio path <TAB> transcript.")
@click.option("--transcribe", is_flag=True,
              help="No transcript? Transcribe with the installed Whisper tiny.en, then fuse.")
@click.option("--ser-run", default="small", show_default=True)
@click.option("--ter-run", default="cnn", show_default=True)
@click.option("--fold", default=None, help="Use one fold's models (default: average all folds).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@WORKDIR
def predict(audio, texts, transcripts, transcribe, ser_run, ter_run, fold, as_json, workdir) -> None:
    """Emotion of AUDIO files with the trained checkpoints in the work directory; features are
    computed on the fly (no cache needed). Speech alone, or fused with text when a transcript
    is given or transcribed."""
    import json as _json
    from models.predict import predict as run
    from pipeline.progress import console, table
    if texts and len(texts) != len(audio):
        raise click.BadParameter(f"{len(texts)} --text for {len(audio)} files", param_hint="--text")
    given = list(texts) if texts else [None] * len(audio)
    if transcripts:
        rows = dict(line.rstrip("\n").split("\t", 1) for line in
                    Path(transcripts).read_text(encoding="utf-8").splitlines() if "\t" in line)
        given = [rows.get(a, g) for a, g in zip(audio, given)]
    preds = run(workdir, list(audio), given, ser_run, ter_run, fold, transcribe)
    if as_json:
        click.echo(_json.dumps([p.__dict__ for p in preds], indent=2))
        return
    classes = list(next((p.probs for p in preds if p.probs), {}))
    console.print(table("predictions", ["file", "label", *classes, "text"],
                        [[p.file, p.label or f"error: {p.error}",
                          *([f"{p.probs[c]:.2f}" for c in classes] if p.probs
                            else [""] * len(classes)),
                          (p.transcript or "")[:40]] for p in preds]))


if __name__ == "__main__":
    cli()
