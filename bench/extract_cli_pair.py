"""Target 2 of #19 on a corpus already prepared and extracted (e.g. the full-scale rehearsal's
work dir): cold ``cli.py extract -s speech --force`` runs, each followed by the same extraction
in this warm process (``pipeline.extract.extract``, what the command runs), and the median of
the pairs' ratios; beside them a bare Python + torch (+ CUDA) start in a new process.
``bench/extract_speech.py --paired`` does the same on a corpus it synthesises; this one times a
corpus of any size the disk (or /dev/shm) already holds, without a second copy of its layers.

    python3 -m bench.extract_cli_pair WORK -p model=MODEL_DIR --gpus 0 --pairs 2 --json OUT.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from bench.cli_timing import bare_start, cli_runs
from bench.extract_speech import load_model, machine, run_product
from pipeline.corpus import load_corpus


def audio_seconds(work: Path) -> float:
    """Seconds of speech the corpus's utterances hold (segments where they are cut from files)."""
    total = 0.0
    for u in load_corpus(work).utterances:
        if not u.audio:
            continue
        if u.start is not None and u.end is not None:
            total += u.end - u.start
        else:
            total += sf.info(u.audio).duration
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path, help="a work dir with a prepared corpus")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="FIELD=VALUE",
                    help="speech stage parameters (e.g. model=DIR), as the CLI's -p speech.FIELD=VALUE")
    ap.add_argument("--gpus", default="0", help="GPU index for both ('' = CPU)")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    params = dict(p.split("=", 1) for p in args.param)
    cuda = bool(args.gpus)
    gpus = [int(g) for g in args.gpus.split(",")] if cuda else None
    secs, host = audio_seconds(args.work), machine("cuda" if cuda else "cpu")
    print(f"machine: {host}; {secs / 3600:.2f} h of audio in {args.work}")
    _, t_load = load_model(params, "cuda" if cuda else "cpu")
    t_first = run_product(args.work, params, gpus)  # warm-up: this process's first pass over the shapes
    warm = lambda: run_product(args.work, params, gpus)  # noqa: E731
    runs = cli_runs(args.work, args.gpus or None, params, args.pairs, None, {}, warm)
    start, what = bare_start(cuda)
    cli, prod = runs["runs"]["cli"], runs["runs"]["product"]
    out = {"machine": host, "audio_hours": secs / 3600, "model_load_s": t_load,
           "product_first_pass_s": t_first, "cli_s": cli, "product_s": prod,
           "cli_over_product_paired": runs["paired_ratio"], "bare_start_s": start, "bare_start_what": what,
           "cli_over_product_load_start": float(np.median([(p + t_load + start) / c for p, c in zip(prod, cli)])),
           "cli_x_real_time": secs / float(np.median(cli))}
    print(json.dumps(out, indent=2))
    print(f"cold CLI {np.median(cli):.1f} s against the warm product's {np.median(prod):.1f} s: paired median "
          f"ratio {runs['paired_ratio']:.3f} (target >= 0.9); counting the {t_load:.2f}-s load and a bare "
          f"{what} start of {start:.2f} s: {out['cli_over_product_load_start']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"bench wall {time.perf_counter() - t0:.1f} s")
