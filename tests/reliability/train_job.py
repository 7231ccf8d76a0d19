"""A small real training run for kill tests: ``python -m tests.reliability.train_job ter|ser WORKDIR STEPS``.

Trains one fold of TER (the text CNN on separable in-memory token features) or SER (the tiny
AutoVC-like model on an in-memory source) with the shared trainer, on CPU, one thread. Prints
``TRAIN-READY`` once imports and data are in place. Re-running the same command resumes from
the fold's checkpoint; :func:`run` is also called in-process for the uninterrupted reference.
"""
from __future__ import annotations

import sys
from pathlib import Path


def run(task: str, workdir: str | Path, steps: int, on_ready=None) -> None:
    import torch
    torch.set_num_threads(1)
    from pipeline.corpus import write_corpus
    from tests.fixtures.corpora import make_corpus
    corpus = make_corpus(n_groups=2, per_class=4)
    write_corpus(workdir, corpus)
    if task == "ter":
        from models.ter import TERConfig
        from models.run_folds import train_run
        from models.ter_train import TERRun
        from models.trainer import TrainConfig
        from tests.fixtures.stores import separable_token_features
        reader = separable_token_features(corpus, dim=16)
        spec = TERRun(run="soak", model=TERConfig(max_tokens=16),
                      train=TrainConfig(steps=steps, batch_size=4, lr=1e-3, eval_every=10, checkpoint_every=10,
                                        progress=False))
        if on_ready:
            on_ready()
        train_run(workdir, spec, "G0", "cpu", corpus=corpus,
                  task=spec.make_task(workdir, corpus, reader))
    elif task == "ser":
        from models.runs import RunPaths
        from models.ser import make_config
        from models.ser_train import SERRun
        from models.trainer import TrainConfig, train_fold
        from tests.fixtures.ser import TINY_SER, ser_source
        source = ser_source(corpus, frames=(60, 120))
        spec = SERRun(model=make_config("small", **TINY_SER),
                      train=TrainConfig(batch_size=2, steps=steps, eval_every=5, checkpoint_every=5, lr=1e-3,
                                        progress=False))
        if on_ready:
            on_ready()
        (fold,) = spec.split.folds(corpus, "G0")
        train_fold(spec.make_task(workdir, corpus, source), fold, spec.train,
                   RunPaths(workdir, "ser", spec.run))
    else:
        raise SystemExit(f"unknown task {task!r}")


if __name__ == "__main__":
    task, workdir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    run(task, workdir, steps, on_ready=lambda: print("TRAIN-READY", flush=True))
