"""``report``: one Markdown report over every run in a work directory, with plots.

Reads only what the trainers and ``fuse`` wrote (runs/*/*/metrics.json, predictions, alpha.json)
and the cache pointers, so every number in the report can be recomputed from saved predictions.
"""
from __future__ import annotations

import json
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from models.runs import RunPaths, read_json
from pipeline.corpus import load_corpus
from pipeline.store import cache_root

#: Paper-reported UA (%) on IEMOCAP 4-class, leave-one-session-out (Makiuchi et al., 2021).
PAPER_UA = {"ser": 70.1, "ter": 66.1, "fusion": 73.0}
TASKS = ("ser", "ter", "fusion")


def find_runs(workdir: Path) -> list[RunPaths]:
    out = []
    for task in TASKS:
        root = workdir / "runs" / task
        for d in sorted(root.glob("*")) if root.exists() else []:
            if (d / "metrics.json").exists():
                out.append(RunPaths(workdir, task, d.name))
    return out


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}"


@contextmanager
def _figure(path: Path, title: str, size: tuple[float, float]) -> Iterator[Any]:
    """A matplotlib (Agg) axes whose figure is titled, laid out and saved to ``path``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def confusion_png(cm: list[list[int]], classes: list[str], title: str, path: Path) -> None:
    cm_arr = np.asarray(cm, dtype=float)
    norm = cm_arr / np.maximum(cm_arr.sum(1, keepdims=True), 1)
    with _figure(path, title, (4.2, 3.8)) as ax:
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, f"{int(cm_arr[i, j])}\n{100 * norm[i, j]:.0f}%", ha="center",
                        va="center", fontsize=8, color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=30)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")


def alpha_png(weights: list[float], title: str, path: Path) -> None:
    with _figure(path, title, (6, 2.8)) as ax:
        ax.bar(range(len(weights)), weights)
        ax.set_xlabel("layer (0 = CNN projection / embeddings)")
        ax.set_ylabel("normalised weight")


def cm_markdown(cm: list[list[int]], classes: list[str]) -> str:
    rows = ["| true \\ predicted | " + " | ".join(classes) + " |",
            "|---" * (len(classes) + 1) + "|"]
    rows += [f"| {c} | " + " | ".join(str(v) for v in row) + " |" for c, row in zip(classes, cm)]
    return "\n".join(rows)


def metadata(workdir: Path) -> dict[str, Any]:
    meta: dict[str, Any] = {"created": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        c = load_corpus(workdir)
        meta["corpus"] = {"name": c.name, "source": c.source, "utterances": len(c.utterances),
                          "speakers": len(c.speakers), "groups": c.groups}
    except Exception as e:  # noqa: BLE001 - a report without corpus metadata is still useful
        meta["corpus"] = f"unavailable: {e}"
    stages = {}
    for ptr in sorted(cache_root(workdir).glob("*/current.json")):
        cur = json.loads(ptr.read_text())
        stages[ptr.parent.name] = {"key": cur["identity"][:16], "params": cur.get("params", {}),
                                   "weights": cur.get("weights", "")[:16]}
    meta["stages"] = stages
    try:
        repo = Path(__file__).resolve().parents[1]
        meta["commit"] = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                                        capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        meta["commit"] = "unknown"
    return meta


def write_report(workdir: str | Path, out: str | Path | None = None) -> Path:
    workdir = Path(workdir)
    out = Path(out) if out else workdir / "report"
    out.mkdir(parents=True, exist_ok=True)
    runs = find_runs(workdir)
    meta = metadata(workdir)
    lines = ["# Emotion recognition report", "",
             f"Work directory `{workdir}`, {meta['created']}, code commit `{meta['commit']}`.", ""]
    corpus = meta["corpus"]
    if isinstance(corpus, dict):
        lines += [f"Corpus **{corpus['name']}**: {corpus['utterances']} utterances, "
                  f"{corpus['speakers']} speakers, {len(corpus['groups'])} cross-validation "
                  f"groups ({', '.join(corpus['groups'])}); source: {corpus['source']}.", ""]
    if not runs:
        lines += ["No trained runs yet: run `python cli.py train ser`, `train ter`, `fuse`.", ""]
    lines += ["## Results (leave-one-group-out; % )", "",
              "| task | run | folds | WA mean ± sd | UA mean ± sd | macro-F1 | pooled WA | pooled UA "
              "| paper UA (paper-reported, IEMOCAP) |", "|---|---|---|---|---|---|---|---|---|"]
    summaries = {}
    for rp in runs:
        m = read_json(rp.metrics)
        summaries[(rp.task, rp.run)] = m
        mean, pooled = m["mean"], m["pooled"]
        lines.append(f"| {rp.task} | {rp.run} | {mean['n_folds']} | {_pct(mean['wa'])} ± "
                     f"{_pct(mean['wa_std'])} | {_pct(mean['ua'])} ± {_pct(mean['ua_std'])} | "
                     f"{_pct(mean['macro_f1'])} | {_pct(pooled['wa'])} | {_pct(pooled['ua'])} | "
                     f"{PAPER_UA[rp.task]} |")
    lines += ["", "Paper numbers are from Makiuchi et al. (ASRU 2021) on IEMOCAP with "
              "wav2vec 2.0-large and BERT-large features; they are not comparable with a "
              "different corpus or smaller encoders.", ""]
    for (task, run), m in summaries.items():
        classes = m["classes"]
        pooled = m["pooled"]
        png = out / f"confusion_{task}_{run}.png".replace("+", "_")
        confusion_png(pooled["confusion"], classes, f"{task} {run}: pooled confusion", png)
        lines += [f"## {task} / {run}", "",
                  "Per-class recall (pooled): " + ", ".join(
                      f"{c} {_pct(pooled['per_class_recall'][c])}" for c in classes), "",
                  f"![confusion]({png.name})", "", cm_markdown(pooled["confusion"], classes), "",
                  "| fold | n | WA | UA | macro-F1 |", "|---|---|---|---|---|"]
        lines += [f"| {f} | {fm['n']} | {_pct(fm['wa'])} | {_pct(fm['ua'])} | "
                  f"{_pct(fm['macro_f1'])} |" for f, fm in m["folds"].items()]
        cfg = RunPaths(workdir, task, run).config
        if task == "fusion" and cfg.exists():
            per_fold = read_json(cfg)["per_fold"]
            lines += ["", "Fusion weights per fold (w1 speech, w2 text): " + ", ".join(
                f"{f} ({v['w1']:.2f}, {v['w2']:.2f})" for f, v in per_fold.items())]
        alpha = RunPaths(workdir, task, run).root / "alpha.json"
        if alpha.exists():
            w = np.array([np.nan if v is None else v for v in read_json(alpha)["mean_weights"]],
                         dtype=float)
            if np.all(np.isfinite(w)):
                apng = out / f"alpha_{task}_{run}.png"
                alpha_png(list(w), f"{task} {run}: learned layer weights α (mean over folds)", apng)
                lines += ["", f"![layer weights]({apng.name})"]
            else:  # Σα·x/Σα with raw α: Σα can reach 0 (the official parameterisation's hazard)
                lines += ["", "Learned layer weights α: not finite in at least one fold (Σα reached "
                          "0 under the official raw-weight parameterisation; `--model "
                          "layer_weighting=softmax` avoids it); see alpha.json."]
        lines.append("")
    lines += ["## Features", "", "| stage | key | model checksum | parameters |",
              "|---|---|---|---|"]
    lines += [f"| {s} | `{v['key']}` | `{v['weights'] or '–'}` | {json.dumps(v['params'])} |"
              for s, v in meta["stages"].items()]
    (out / "metadata.json").write_text(json.dumps(meta, indent=2))
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"
