"""Cold start of the ``text`` stage's extractor: a fresh Python process builds the product's own
``features.text.TextExtractor`` (what ``extract -s text`` and ``predict --text`` build) for a
text model and encodes a few XED English subtitles (/work/shared/data/xed_en) — imports, model
load and the first batch, i.e. what a cold command pays before its first shard.

``--base DIR`` (a checkout of another commit, e.g. ``git worktree add /tmp/base REV``) runs the
same in that checkout, alternating with this one; medians of ``--runs`` each, the ratio, the
machine. (0.8.4: BERT/RoBERTa models such as the packaged MiniLM run on a plain-torch encoder;
only transformers' tokenizer is imported.)

    python -m bench.text_cold_start --base /tmp/base --runs 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
XED = Path("/work/shared/data/xed_en/en-annotated.tsv")
FALLBACK = ["I am so happy to see you again", "Leave me alone !", "That is terrible news ."]

_CHILD = """
import sys, time
t0 = time.perf_counter()
from features.base import ItemInput
from features.text import TextConfig, TextExtractor
ext = TextExtractor(TextConfig(model=sys.argv[1]))
out = ext([ItemInput(f"u{i}", text=t) for i, t in enumerate(sys.argv[2:])])
assert any(isinstance(o, dict) for o in out), out[:3]  # a bracketed-only subtitle is an item error
print(time.perf_counter() - t0, type(ext.model).__name__)
"""


def sentences(n: int) -> list[str]:
    if not XED.is_file():
        return FALLBACK[:n]
    lines = XED.read_text(encoding="utf-8").splitlines()
    return [ln.split("\t")[0] for ln in lines if len(ln.split("\t")[0].split()) >= 3][:n]


def cold(repo: Path, model: str, texts: list[str]) -> tuple[float, str]:
    """(seconds from the first import to the encoded batch, the model class) in a new process
    that imports ``repo``'s code."""
    env = {**os.environ, "PYTHONPATH": str(repo)}
    out = subprocess.run([sys.executable, "-c", _CHILD, model, *texts], cwd=repo, env=env,
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{repo}: the text extractor failed:\n{out.stderr[-2000:]}")
    out = out.stdout.split()
    return float(out[0]), out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm-l6", help="text.model (packaged name or folder)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sentences", type=int, default=8)
    ap.add_argument("--base", type=lambda p: Path(p).resolve(), default=None,
                    help="a checkout of the baseline commit, run alternately")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    texts = sentences(args.sentences)
    times: dict[str, list[float]] = {"this": [], "base": []}
    kinds = {}
    for _ in range(args.runs):
        for name, repo in (("this", REPO), ("base", args.base)):
            if repo is not None:
                t, kinds[name] = cold(repo, args.model, texts)
                times[name].append(t)
    summary = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
               "model": args.model, "sentences": len(texts), "runs": times, "encoder": kinds,
               "this_s": statistics.median(times["this"])}
    print(f"machine: {summary['machine']}; {args.model}, {len(texts)} sentences, fresh processes")
    print(f"this checkout ({kinds['this']}): {summary['this_s']:.2f} s (median of {args.runs}: "
          + ", ".join(f"{t:.2f}" for t in times["this"]) + ")")
    if times["base"]:
        summary["base_s"] = statistics.median(times["base"])
        summary["base_over_this"] = summary["base_s"] / summary["this_s"]
        print(f"baseline {args.base} ({kinds['base']}): {summary['base_s']:.2f} s ("
              + ", ".join(f"{t:.2f}" for t in times["base"]) + f"); this / baseline "
              f"{summary['this_s'] / summary['base_s']:.2f} = {summary['base_over_this']:.2f}x faster")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
