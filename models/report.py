"""``report``: one Markdown report over every run in a work directory, with plots, and the same
report as a self-contained web page with an error browser (:mod:`models.html_report`).

Reads only what the trainers and ``fuse`` wrote (config, predictions, alpha.json, probe results)
and the cache indexes; every number is recomputed from the saved test predictions of the folds
that are current for the corpus (runs or folds trained on other data are set apart, never
mixed in). Every file is written atomically: a failed report leaves the previous one intact.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import atomic_write_text
from core.errors import CacheError, TrainingError
from models import figures
from models.html_report import AUDIO_DIR, write_html
from models.provenance import code_version, corpus_fingerprint
from models.run_eval import RunEval, evaluate, paired, summary
from models.runs import RunPaths, read_json
from models.trained import TrainedRun, find_runs, load_run
from pipeline.corpus import Corpus, load_corpus
from pipeline.store import cache_root, read_pointer

log = logging.getLogger(__name__)

#: Paper-reported UA (%) on IEMOCAP 4-class, leave-one-session-out (Makiuchi et al., 2021).
PAPER_UA = {"ser": 70.1, "ter": 66.1, "fusion": 73.0}
TASKS = ("ser", "ter", "fusion")


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}"


def cm_markdown(cm: list[list[int]], classes: list[str]) -> str:
    rows = ["| true \\ predicted | " + " | ".join(classes) + " |",
            "|---" * (len(classes) + 1) + "|"]
    rows += [f"| {c} | " + " | ".join(str(v) for v in row) + " |" for c, row in zip(classes, cm)]
    return "\n".join(rows)


def metadata(workdir: Path, c: Corpus) -> dict[str, Any]:
    meta: dict[str, Any] = {"created": time.strftime("%Y-%m-%d %H:%M:%S"), **code_version(),
                            "corpus_fingerprint": corpus_fingerprint(workdir)}
    meta["corpus"] = {"name": c.name, "source": c.source, "utterances": len(c.utterances),
                      "speakers": len(c.speakers), "groups": c.groups}
    stages = {}
    for ptr in sorted(cache_root(workdir).glob("*/current.json")):
        try:
            cur = read_pointer(workdir, ptr.parent.name, listing=False)
        except CacheError:
            continue  # a damaged index: `status` and `extract` say so; the report goes on
        stages[ptr.parent.name] = {"key": cur["identity"][:16], "params": cur.get("params", {}),
                                   "weights": cur.get("weights", "")[:16]}
    meta["stages"] = stages
    return meta


def _ci(s: dict, key: str) -> str:
    lo, hi = s["ci"][key]
    return f"{_pct(s['pooled'][key])} [{_pct(lo)}, {_pct(hi)}]"


def results_table(evals: list[RunEval], sums: dict[str, dict]) -> list[str]:
    lines = ["## Results (leave-one-group-out; %)", "",
             "Pooled over the test rows of every current fold, with 95 % bootstrap confidence "
             "intervals (utterances resampled within each fold, 1,000 replicates); mean ± sd over "
             "folds beside them.", "",
             "| task | run | folds | UA [95 % CI] | WA [95 % CI] | UA mean ± sd | macro-F1 | n "
             "| paper UA (IEMOCAP) |", "|---|---|---|---|---|---|---|---|---|"]
    for ev in evals:
        s, task = sums[ev.name], ev.run.paths.task
        lines.append(f"| {task} | {ev.run.paths.run} | {s['mean']['n_folds']} | {_ci(s, 'ua')} | "
                     f"{_ci(s, 'wa')} | {_pct(s['mean']['ua'])} ± {_pct(s['mean']['ua_std'])} | "
                     f"{_pct(s['pooled']['macro_f1'])} | {s['pooled']['n']} | {PAPER_UA[task]} |")
    if evals:
        b = sums[evals[0].name]["baselines"]
        lines += ["", f"Reference lines: chance UA {_pct(b['chance_ua'])} (any constant guess); "
                  f"majority-class WA {_pct(b['majority_wa'])}."]
    lines += ["", "Paper numbers are from Makiuchi et al. (ASRU 2021) on IEMOCAP with wav2vec "
              "2.0-large and BERT-large features; they are not comparable with a different corpus "
              "or smaller encoders.", ""]
    return lines


def paired_section(evals: list[RunEval], compare: list[tuple[str, str]]) -> list[str]:
    """Fusion vs each of its modalities, and any pairs the user named."""
    by_name = {ev.name: ev for ev in evals}
    pairs = []
    for ev in evals:
        if ev.run.paths.task == "fusion":
            cfg = ev.run.config
            pairs += [(ev.name, f"ser/{cfg.get('ser_run')}"), (ev.name, f"ter/{cfg.get('ter_run')}")]
    pairs += list(compare)
    rows = []
    for a, b in pairs:
        if a not in by_name or b not in by_name:
            rows.append(f"| {a} | {b} | – | – | – | not available (run missing or stale) |")
            continue
        t = paired(by_name[a], by_name[b])
        if t is None:
            rows.append(f"| {a} | {b} | – | – | – | no common test utterances |")
            continue
        verdict = ("a better" if t["diff"] > 0 else "b better") if t["p"] < 0.05 else \
            "no significant difference"
        rows.append(f"| {a} | {b} | {t['n']} | {_pct(t['ua_a'])} vs {_pct(t['ua_b'])} | "
                    f"{t['p']:.3f} | {verdict} |")
    if not rows:
        return []
    return ["## Paired tests", "", "Two-sided paired randomisation test of the UA difference on "
            "the test utterances both runs predicted (2,000 permutations; p < 0.05 = significant).",
            "", "| a | b | n | UA a vs b | p | verdict |", "|---|---|---|---|---|---|", *rows, ""]


def _validation_rows(config: dict) -> str:
    """", validation: …" as the run drew it (runs before held-out speakers: nothing said)."""
    folds = config.get("folds") or {}
    if any(f.get("val_speakers") for f in folds.values()):
        return ", validation: held-out speakers"
    return ", validation: utterance sample" if "val_by" in config.get("split", {}) and folds else ""


def setup_table(evals: list[RunEval], fingerprint: str) -> list[str]:
    """How each run was obtained, from what it recorded at training time."""
    lines = ["## Setup of each run", "",
             "| run | commit | trained | corpus | features (stage: key) | schedule | device | command |",
             "|---|---|---|---|---|---|---|---|"]
    for ev in evals:
        c = ev.run.config
        prov = ev.run.provenance()
        dirty = {True: " (dirty)", False: "", None: ""}[prov.get("dirty")]
        corpus = prov.get("corpus", "?")
        corpus += " (current)" if corpus == fingerprint else " (other)"
        feats = ", ".join(f"{s}: `{v.get('identity', '')[:10]}`" for s, v in c.get("stages", {}).items())
        t = c.get("train", {})
        model = c.get("model", {})
        kind = f"{model.get('name', '')}: " if isinstance(model, dict) and model.get("name") else ""
        sched = (f"{kind}{t.get('steps') or t.get('epochs', '')} {'steps' if t.get('steps') else 'epochs'}, "
                 f"batch {t.get('batch_size')}, lr {t.get('lr', 0):.3g}, select {t.get('select')}, "
                 f"class balance {t.get('class_balance', 'off')}{_validation_rows(c)}"
                 if "batch_size" in t else (c.get("weights") or "–"))
        device = prov.get("device") or c.get("device") or "–"
        shared = ev.run.data_parallel_folds()
        if shared:
            device += "; data-parallel: " + ", ".join(f"{f} on {n} GPUs" for f, n in shared.items())
        lines.append(f"| {ev.name} | `{prov.get('commit', 'unknown')}`{dirty} | {prov.get('created', '?')} "
                     f"| `{corpus}` | {feats or '–'} | {sched} | {device} | `{prov.get('command', '?')}` |")
    return lines + [""]


def run_section(ev: RunEval, s: dict, out: Path) -> list[str]:
    task, run, classes = ev.run.paths.task, ev.run.paths.run, ev.run.classes
    pooled = s["pooled"]
    png = out / f"confusion_{task}_{run}.png".replace("+", "_")
    figures.confusion_png(pooled["confusion"], classes, f"{task} {run}: pooled confusion", png)
    lines = [f"## {task} / {run}", ""]
    if ev.run.stale:
        lines += ["Left out (stale): " + "; ".join(f"fold {f}: {r}" for f, r in ev.run.stale.items()), ""]
    lines += ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    lines += [f"| {c} | {_pct(v['precision'])} | {_pct(v['recall'])} | {_pct(v['f1'])} | {v['support']} |"
              for c, v in s["per_class"].items()]
    lines += ["", f"![confusion]({png.name})", "", cm_markdown(pooled["confusion"], classes), "",
              "| fold | n | WA | UA | macro-F1 |", "|---|---|---|---|---|"]
    lines += [f"| {f} | {fm['n']} | {_pct(fm['wa'])} | {_pct(fm['ua'])} | {_pct(fm['macro_f1'])} |"
              for f, fm in s["folds"].items()]
    absent = {f: [c for c, r in fm["per_class_recall"].items() if r is None] for f, fm in s["folds"].items()}
    if any(absent.values()):
        lines += ["", "Classes absent from a test fold (no recall there; that fold's UA leaves them "
                  "out): " + "; ".join(f"{f}: {', '.join(cs)}" for f, cs in absent.items() if cs)]
    if task == "fusion":
        per_fold = ev.run.config.get("per_fold", {})
        lines += ["", "Fusion weights per fold (w1 speech, w2 text): " + ", ".join(
            f"{f} ({v['w1']:.2f}, {v['w2']:.2f})" for f, v in per_fold.items() if f in ev.run.folds)]
        lines += [f"Fold {f}: {v['note']}." for f, v in per_fold.items()
                  if f in ev.run.folds and v.get("note")]
    lines += curve_lines(ev.run, out) + alpha_lines(ev.run, out) + probe_lines(ev.run) + [""]
    return lines


def alpha_lines(run: TrainedRun, out: Path) -> list[str]:
    alpha = run.paths.root / "alpha.json"
    if not alpha.exists():
        return []
    rec = read_json(alpha)
    per_fold = [[np.nan if v is None else v for v in f["weights"]]
                for name, f in rec.get("per_fold", {}).items() if name in run.folds]
    w = np.array(per_fold or [rec["mean_weights"]], dtype=float)  # (folds, L)
    if not np.all(np.isfinite(w)):  # Σα·x/Σα with raw α: Σα can reach 0 (official parameterisation)
        return ["", "Learned layer weights α: not finite in at least one fold (Σα reached 0 under "
                "the official raw-weight parameterisation; `--model layer_weighting=softmax` avoids "
                "it); see alpha.json."]
    path = out / f"alpha_{run.paths.task}_{run.paths.run}.png"
    figures.alpha_png(w, f"{run.paths.task} {run.paths.run}: layer weights α minus uniform "
                         "(bars: mean over folds; dots: folds)", path)
    return ["", f"![layer weights]({path.name}) ([SVG]({path.with_suffix('.svg').name}))"]


def curve_lines(run: TrainedRun, out: Path) -> list[str]:
    """Per-fold learning curves (training loss, validation UA) from the folds' histories."""
    hist = {f: run.fold_metrics(f).get("history") or [] for f in run.folds}
    hist = {f: h for f, h in hist.items() if h}
    if not hist:
        return []
    path = out / f"curves_{run.paths.task}_{run.paths.run}.png"
    figures.curves_png(hist, f"{run.paths.task} {run.paths.run}: learning curves per fold", path)
    return ["", f"![learning curves]({path.name}) ([SVG]({path.with_suffix('.svg').name}))"]


def probe_lines(run: TrainedRun) -> list[str]:
    out = []
    for p in sorted(run.paths.root.glob("probe_speaker*.json")):
        r = read_json(p)
        pooling = r.get("config", {}).get("pooling", "flatten")
        out.append(f"Speaker probe on the codes ({pooling} pooling): accuracy {_pct(r.get('accuracy'))} "
                   f"(majority {_pct(r.get('chance'))}, {r.get('n_speakers')} speakers; lower = "
                   "less speaker identity).")
    return ["", *out] if out else []


def load_runs(workdir: Path, corpus: Corpus) -> tuple[list[TrainedRun], list[tuple[RunPaths, str]]]:
    """Runs with at least one fold current for the corpus, and the others with the reason."""
    good, apart = [], []
    for rp in find_runs(workdir):
        try:
            good.append(load_run(workdir, rp.task, rp.run, corpus))
        except TrainingError as e:
            apart.append((rp, str(e)))
    return good, apart


def write_report(workdir: str | Path, out: str | Path | None = None,
                 compare: list[tuple[str, str]] = (), html_audio: str = "errors") -> Path:
    """Write ``report.md``, figures, ``metadata.json`` and the HTML page ``index.html`` with its
    error browser (audio copied as ``html_audio`` says: errors | all | none) to ``out``
    (default workdir/report). report.md is written last: it is whole or the previous one."""
    workdir = Path(workdir)
    out = Path(out) if out else workdir / "report"
    corpus_obj = load_corpus(workdir)
    runs, apart = load_runs(workdir, corpus_obj)
    meta = metadata(workdir, corpus_obj)
    out.mkdir(parents=True, exist_ok=True)
    corpus = meta["corpus"]
    dirty = " (uncommitted changes)" if meta.get("dirty") else ""
    lines = ["# Emotion recognition report", "",
             f"Work directory `{workdir}`, {meta['created']}, code commit `{meta['commit']}`{dirty}.", "",
             f"Corpus **{corpus['name']}**: {corpus['utterances']} utterances, {corpus['speakers']} "
             f"speakers, {len(corpus['groups'])} cross-validation groups ({', '.join(corpus['groups'])}); "
             f"source: {corpus['source']}; fingerprint `{meta['corpus_fingerprint']}`.", ""]
    if not runs:
        lines += ["No trained runs for this corpus yet: train SER and TER, then fuse (commands "
                  "`train ser`, `train ter`, `fuse`).", ""]
    evals = [evaluate(r) for r in runs]
    sums = {ev.name: summary(ev) for ev in evals}
    lines += results_table(evals, sums) + paired_section(evals, list(compare))
    lines += setup_table(evals, meta["corpus_fingerprint"]) if evals else []
    for ev in evals:
        lines += run_section(ev, sums[ev.name], out)
    if apart:
        lines += ["## Runs set apart (not trained on the current corpus)", ""]
        lines += [f"- {rp.task}/{rp.run}: {why}" for rp, why in apart] + [""]
    lines += ["## Features (current cache)", "", "| stage | key | model checksum | parameters |",
              "|---|---|---|---|"]
    lines += [f"| {s} | `{v['key']}` | `{v['weights'] or '–'}` | {json.dumps(v['params'])} |"
              for s, v in meta["stages"].items()]
    meta["runs"] = {ev.name: {k: sums[ev.name][k] for k in ("pooled", "mean", "ci", "per_class")}
                    for ev in evals}
    page = write_html(out, evals, corpus_obj, "\n".join(lines) + "\n", html_audio)
    log.info("%s: audio of %d utterance(s) in %s (%.1f MB; --html-audio %s)", page.path,
             page.audio_files, page.path.parent / AUDIO_DIR, page.audio_bytes / 1e6, html_audio)
    atomic_write_text(out / "metadata.json", json.dumps(meta, indent=2, default=str))
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return out / "report.md"
