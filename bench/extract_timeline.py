"""Where a cold ``cli.py extract`` spends what the in-process product does not (#19, target 2).

One corpus (``bench.extract_speech``'s synthetic speech and random-weight wav2vec2 folder,
``--minutes`` of audio), three kinds of run, each logged at DEBUG with timestamps:
  function, cold  ``pipeline.extract.extract`` in a fresh process (imports, CUDA start, model load
                  and all, no command-line layer); then
  function, warm  the same call again in that process (what bench/extract_speech.py's "product"
                  times: model, CUDA and page-locked blocks ready);
  cli             ``python cli.py -v --log-file F extract -s speech --force`` in a fresh process.
Each run is ``--force`` over the same work directory. Printed per run: wall seconds, when the
stage was planned and the extractor ready (from the process's start), every shard's seconds,
and the last shard's publish → the end (exit for a process, return for the warm call).

    python -m bench.extract_timeline --device cuda --minutes 120
    python -m bench.extract_timeline --minutes 3 --arch tiny   # CPU check of the code path
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def child(work: str, log: str, gpus: str | None, intervals: list[float]) -> None:
    """Two ``extract`` calls in this process, logged to ``log`` between marker lines; then, for
    each of ``intervals`` in turn (twice), one more under that thread switch interval."""
    import logging
    logging.basicConfig(filename=log, level=logging.DEBUG, format=FORMAT)
    from pipeline.extract import extract
    gpu_list = [int(g) for g in gpus.split(",")] if gpus else None
    default = sys.getswitchinterval()
    runs = [("cold", default), ("warm", default)]
    runs += [(f"switch{si * 1e3:g}ms_{rep}", si) for rep in (1, 2) for si in intervals]
    for run, si in runs:
        sys.setswitchinterval(si)
        logging.getLogger("timeline").info("run %s starts at %.3f", run, time.time())
        extract(Path(work), ["speech"], force=True, workers=1, gpus=gpu_list)
        logging.getLogger("timeline").info("run %s returned at %.3f", run, time.time())


def _stamp(line: str) -> float | None:
    m = STAMP.match(line)
    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if m else None


def timeline(lines: list[str], t0: float, t_end: float) -> dict:
    """The events of one run's log lines: seconds from ``t0`` (its start) to planning, the
    extractor, each shard and the last publish; the last publish → ``t_end``."""
    out: dict = {"wall_s": round(t_end - t0, 2), "shards_s": []}
    last_publish = None
    for ln in lines:
        t = _stamp(ln)
        if t is None:
            continue
        if "planned speech" in ln:
            out["planned_at_s"] = round(t - t0, 2)
        elif "extractor ready" in ln:
            out["extractor_ready_at_s"] = round(t - t0, 2)
        elif m := re.search(r"speech shard \d+: \d+ items in ([\d.]+) s", ln):
            out["shards_s"].append(float(m.group(1)))
            out.setdefault("first_shard", ln.split("speech shard ", 1)[1].strip())
        elif "replaced shard" in ln or "published" in ln or "wrote shard" in ln:
            last_publish = t
    if last_publish is not None:
        out["last_publish_to_end_s"] = round(t_end - last_publish, 2)
    return out


def split_runs(path: Path) -> dict[str, tuple[list[str], float, float]]:
    """The child's log cut at its markers: {run: (lines, start, end)}."""
    runs: dict[str, tuple[list[str], float, float]] = {}
    cur, lines, start = None, [], 0.0
    for ln in path.read_text().splitlines():
        if m := re.search(r"run (\S+) starts at ([\d.]+)", ln):
            cur, lines, start = m.group(1), [], float(m.group(2))
        elif (m := re.search(r"run (\S+) returned at ([\d.]+)", ln)) and cur:
            runs[cur] = (lines, start, float(m.group(2)))
            cur = None
        elif cur:
            lines.append(ln)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--minutes", type=float, default=120.0)
    ap.add_argument("--arch", default="large")
    ap.add_argument("--dir", default="/tmp/extract_timeline")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--switch-intervals", default="", metavar="S,S",
                    help="also time warm in-process runs under these sys.setswitchinterval values "
                         "(seconds; each twice, alternating)")
    ap.add_argument("--child", nargs=4, metavar=("WORK", "LOG", "GPUS", "INTERVALS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        work, log, gpus, intervals = args.child
        return child(work, log, None if gpus == "-" else gpus,
                     [float(x) for x in intervals.split(",") if x and x != "-"])
    from bench.extract_speech import machine, make_corpus, product_workdir, run_product
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    corpus = make_corpus(root / "wav", args.minutes)
    work, folder = product_workdir(root, corpus, args.arch)
    cuda = args.device.startswith("cuda")
    run_product(work, {"model": str(folder)}, [0] if cuda else None, force=False)  # the cache exists
    gpus = "0" if cuda else "-"
    log_fn, log_cli = root / "function.log", root / "cli.log"
    for p in (log_fn, log_cli):
        p.unlink(missing_ok=True)
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "bench.extract_timeline", "--child", str(work), str(log_fn), gpus,
                    args.switch_intervals or "-"],
                   check=True, cwd=REPO)
    t_fn_end = time.time()
    runs = split_runs(log_fn)
    cold_lines, _, cold_end = runs["cold"]
    warm_lines, warm_start, warm_end = runs["warm"]
    result = {"machine": machine(args.device), "minutes": args.minutes, "utterances": len(corpus),
              "function_cold": timeline(cold_lines, t0, cold_end),
              "function_warm": timeline(warm_lines, warm_start, warm_end),
              "function_process_exit_s": round(t_fn_end - max(end for *_, end in runs.values()), 2)}
    for name, (lines, start, end) in runs.items():
        if name.startswith("switch"):
            result[f"function_{name}"] = timeline(lines, start, end)
    extra = ["--gpus", "0"] if cuda else []
    t0 = time.time()
    subprocess.run([sys.executable, str(REPO / "cli.py"), "-v", "--log-file", str(log_cli), "extract", "-s",
                    "speech", "--force", "-w", str(work), *extra], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result["cli"] = timeline(log_cli.read_text().splitlines(), t0, time.time())
    print(f"machine: {result['machine']}; {len(corpus)} utterances, {args.minutes:.0f} min of audio")
    for name in ["function_cold", "function_warm", *(k for k in result if k.startswith("function_switch")), "cli"]:
        r = result[name]
        print(f"{name:<14} wall {r['wall_s']:6.2f} s  planned at {r.get('planned_at_s', '-')}  extractor ready "
              f"at {r.get('extractor_ready_at_s', '-')}  shards {sum(r['shards_s']):.2f} s "
              f"{[round(s, 2) for s in r['shards_s']]}  last publish -> end {r.get('last_publish_to_end_s', '-')}")
        if "first_shard" in r:
            print(f"{'':<14} shard {r['first_shard']}")
    print(f"function process: warm return -> exit {result['function_process_exit_s']} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
