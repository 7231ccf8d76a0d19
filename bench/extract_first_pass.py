"""Where a cold process's first ``extract -s speech`` pass loses time against a warm pass.

Runs the product's ``pipeline.extract.extract`` twice in one fresh process on a synthetic corpus
with a random wav2vec2 architecture (``bench/extract_speech.py``'s corpus and folder): the first
pass under ``torch.profiler`` (CPU + CUDA activity), the second timed plainly. Prints both
times and the CUDA runtime calls and operators that took the most host time in the first pass
(page-locked allocations, device allocations, kernel selection show up there).

    python -m bench.extract_first_pass --minutes 30
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bench.extract_speech import load_model, make_corpus, product_workdir, run_product  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--arch", default="large")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/extract_first_pass"))
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device, gpus = ("cuda", [0]) if cuda else ("cpu", None)
    corpus = make_corpus(args.dir / "wav", args.minutes)
    work, folder = product_workdir(args.dir, corpus, args.arch)
    params = {"model": str(folder)}
    _, t_load = load_model(params, device)
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t_first = run_product(work, params, gpus, force=False)
    t_warm = run_product(work, params, gpus)
    t_warm2 = run_product(work, params, gpus)
    print(f"model load {t_load:.1f} s; first pass {t_first:.1f} s (profiled), warm {t_warm:.1f} s, "
          f"{t_warm2:.1f} s")
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                      max_name_column_width=50)
    print(table)


if __name__ == "__main__":
    main()
