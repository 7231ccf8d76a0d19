"""``demo``: the whole journey on the built-in corpus, on 2 CPU cores in minutes.

prepare demo → extract every stage (real Whisper-base, Resemblyzer and MiniLM weights; the
embedded phone aligner) → train SER (small) and TER with leave-one-session-out folds → fuse →
report (report.md, and index.html with the error browser). A second run finds every stage
cached and every fold trained and finishes in seconds.
Step counts are far below the paper's (2 M crops per SER fold) and the SER network uses the
narrow CPU widths (same architecture, ~20x fewer FLOPs; ``models.ser.CPU_WIDTHS``): the demo
shows the pipeline working end to end on CPU, not the paper's accuracy.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

#: Stage parameters of the demo: real weights that install from the package registry.
DEMO_PARAMS = {
    "speech": {"model": "whisper-base", "unpadded_whisper": True},
    "text": {"model": "minilm-l6"},
    "phones": {"aligner": "embedded"},
}


@dataclass(frozen=True)
class DemoConfig:
    per_cell: int = 12  # utterances per speaker × emotion (6 speakers × 4 emotions)
    ser_steps: int = 250  # per fold, batch 16 (the paper: 1 M steps at batch 2)
    ser_batch: int = 16
    ter_epochs: float = 30
    seed: int = 0
    ser_config: str = "small"  # the paper's network (CPU widths), or a reference head (head-linear, ...)
    recipe: str = ""  # "name@sha" of the recipe it ran with (recorded by its runs)


QUICK = DemoConfig(per_cell=3, ser_steps=40, ser_batch=8, ter_epochs=5)


def run_demo(workdir: str | Path, config: DemoConfig = DemoConfig(),
             progress: Callable | None = None, say: Callable[[str], None] = print) -> dict:
    """Run (or resume) the demo in ``workdir``; returns timings and the report path."""
    from models.fusion import FusionConfig, fuse
    from models.html_report import HTML_NAME
    from models.report import write_report
    from models.run_folds import train_run
    from models.ter_train import TERRun
    from models.trainer import TrainConfig
    from pipeline.corpus import corpus_paths, load_corpus
    from pipeline.extract import extract
    from pipeline.prepare import prepare_demo

    workdir = Path(workdir)
    times: dict[str, float] = {}
    t = time.perf_counter()
    meta = corpus_paths(workdir)["meta"]
    if meta.exists() and load_corpus(workdir).name == "demo" and \
            len(load_corpus(workdir).utterances) == 6 * 4 * config.per_cell:
        say("demo corpus: already prepared")
    else:
        res = prepare_demo(workdir, config.per_cell, config.seed)
        say(f"demo corpus: {len(res.corpus.utterances)} utterances, {len(res.corpus.speakers)} "
            f"speakers, {res.seconds / 60:.1f} min of audio")
    times["prepare"] = time.perf_counter() - t

    t = time.perf_counter()
    reports = extract(workdir, ["all"], DEMO_PARAMS, progress=progress)
    times["extract"] = time.perf_counter() - t
    for r in reports:
        say(f"  {r.stage}: {r.computed} shard(s) computed, {r.reused} reused, "
            f"{len(r.failed)} failed item(s)")

    t = time.perf_counter()
    ser_spec = _ser_spec(config)
    ser = train_run(workdir, ser_spec, device="cpu")
    times["train ser"] = time.perf_counter() - t
    t = time.perf_counter()
    ter_train = TrainConfig(steps=0, epochs=config.ter_epochs, batch_size=32, lr=3e-4,
                            seed=config.seed)
    ter = train_run(workdir, TERRun(train=ter_train, recipe=config.recipe), device="cpu")
    times["train ter"] = time.perf_counter() - t
    t = time.perf_counter()
    fused = fuse(workdir, FusionConfig(ser_run=ser_spec.run, ter_run="cnn"))
    path = write_report(workdir)
    times["fuse + report"] = time.perf_counter() - t
    summary = {f"SER {ser_spec.run}": ser["mean"]["ua"], "TER cnn": ter["mean"]["ua"],
               "fusion (weights searched on validation)": fused.searched["mean"]["ua"],
               "fusion (paper's fixed weights)": fused.paper["mean"]["ua"]}
    return {"times": times, "ua": summary, "report": str(path), "html": str(path.parent / HTML_NAME)}


def _ser_spec(config: DemoConfig):
    """The demo's SER run: the paper's network at CPU widths on a short schedule, or a reference
    head with its own defaults."""
    from models.heads import HEAD_TRAIN, HEADS
    from models.ser import CPU_WIDTHS
    from models.ser_train import SERInputs, SERRun, model_config, ser_schedule
    from models.trainer import TrainConfig
    if config.ser_config in HEADS:
        train = dataclasses.replace(HEAD_TRAIN, seed=config.seed)
        return SERRun(run=config.ser_config, model=model_config(config.ser_config), train=train,
                      inputs=SERInputs(window_weighting="frames"), recipe=config.recipe)
    _, lr = ser_schedule(batch_size=config.ser_batch)  # the square-root rule
    train = TrainConfig(steps=config.ser_steps, batch_size=config.ser_batch, lr=lr, select="val",
                        eval_every=config.ser_steps // 6, seed=config.seed)
    return SERRun(run=config.ser_config, model=model_config(config.ser_config, **CPU_WIDTHS),
                  train=train, recipe=config.recipe)
