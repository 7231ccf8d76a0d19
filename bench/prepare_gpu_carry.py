"""Prepare what bench/gpu_ser_accuracy.sh needs on a GPU host that has no espeak-ng, no Resemblyzer,
no CTranslate2 Whisper packages and a 64 MiB upload limit (the device tool's), on this CPU machine:

  OUT/emo_flac         emodb4 as lossless FLAC + its manifest (14 MB instead of 23 MB of wav)
  OUT/emo_work         a work directory with the phones and speaker stages extracted here
  OUT/whisper-base-hf  the packaged Whisper-base encoder as an fp16 transformers folder (41 MB)

    python -m bench.prepare_gpu_carry --out .carry     # then: run with carry [".carry", ...]

Nothing here is committed (``.carry/`` is ignored): the data stays in ../shared/data.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import soundfile as sf

from bench.ser_accuracy import EMODB, prepare_and_extract  # noqa: E402
from features.whisper_ct2 import export_hf_folder  # noqa: E402

LIMIT = 64 * 2**20


def to_flac(data: Path, out: Path) -> Path:
    """A copy of a manifest corpus with every audio file as 16-bit FLAC (same samples)."""
    with open(data / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        audio, sr = sf.read(data / r["audio"], dtype="int16")
        rel = Path(r["audio"]).with_suffix(".flac")
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(out / rel, audio, sr, subtype="PCM_16", format="FLAC")
        r["audio"] = str(rel)
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return out


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=EMODB)
    ap.add_argument("--out", type=Path, default=Path(".carry"))
    args = ap.parse_args()
    flac = to_flac(args.data, args.out / "emo_flac")
    work = args.out / "emo_work"
    prepare_and_extract(work, flac, "whisper-base", True, "cpu", stages=("phones", "speaker"))
    (work / "cache" / "audio_hashes.json").unlink(missing_ok=True)  # recomputed there
    export_hf_folder("whisper-base", args.out / "whisper-base-hf")
    parts = {p: size(args.out / p) for p in ("emo_flac", "emo_work", "whisper-base-hf")}
    for p, n in parts.items():
        print(f"{args.out / p}: {n / 2**20:.1f} MiB")
    total = sum(parts.values())
    print(f"total {total / 2**20:.1f} MiB of the {LIMIT / 2**20:.0f} MiB carry limit (plus the wheels "
          f"and the working tree)")


if __name__ == "__main__":
    main()
