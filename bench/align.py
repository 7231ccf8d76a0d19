"""Benchmark the embedded phone aligner against manual and synthetic ground truth.

(a) EmoDB (German, 2 s clips, manual phone labels in ``lablaut/``, valid for the first 2 s);
(b) speech synthesized by espeak-ng with a different voice, rate and pitch than the aligner's
    own reference voice, plus leading/trailing silence and noise, so that the phone times are
    known exactly (XED English subtitle lines as text).

Both sides are cut to the part of the transcript the audio holds: the transcript's phones up
to the last one that matches a reference phone (Needleman-Wunsch on phone symbols; times play no
part). Predicted phones (base ARPAbet) are matched to the reference phones the same way, and the
mean absolute error of the matched phones' start and end boundaries is reported (a reference
start at 0 s or end at the 2 s clip limit is not a boundary); a word the aligner wrongly calls
"not found" keeps its phones at the clip end, so that it counts. Frame agreement compares broad
phone classes (silence, vowel, stop, fricative, nasal, ...) per 20 ms frame, taking the aligner's
frames from what the ``phones`` stage stores. The **uniform baseline**, computed in the same run,
spreads the same visible phones evenly over the true speech span (first to last reference
phone: an oracle it gets for free). Target: aligner error <= 50 % of the baseline's. The DTW
step costs were tuned on every third EmoDB file; ``emodb_held_out`` reports the other two thirds.

    python bench/align.py --emodb /work/shared/data/emodb4 --synthetic 100 [--limit 50]
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np


from features import espeak  # noqa: E402
from features.aligner import EmbeddedAligner, EmbeddedConfig  # noqa: E402
from features.espeak_phones import to_arpabet  # noqa: E402
from features.phone_vocab import BROAD_CLASS, VOCAB, frame_ids, segments  # noqa: E402
from features.pronounce import _needleman_wunsch  # noqa: E402
from features.transcript import parse_transcript  # noqa: E402

SR = 16_000
CLASSES = ["sil", "vowel", "stop", "affricate", "fricative", "nasal", "liquid", "glide", "unk"]


def read_lablaut(path: Path, limit_s: float = 2.0) -> list[tuple[str, float, float]]:
    """Reference phones (base ARPAbet or "sil", start, end) clipped to ``limit_s``.

    Bursts (``!t``), aspiration (``tasp``) and feature-only lines (``+lar``, empty phone) extend
    the previous segment; ``.``, ``(`` (pause, non-speech) are silence.
    """
    lines = path.read_text().splitlines()
    body = lines[lines.index("#") + 1:] if "#" in lines else []
    segs: list[list] = []
    prev_end = 0.0
    for line in body:
        parts = line.split("\t")
        head = parts[0].split()
        if len(head) < 2:
            continue
        end = float(head[0])
        sym = head[2] if len(head) > 2 else ""
        sym = sym.split("+")[0] if not sym.startswith(("+", "-")) else ""
        start, prev_end = prev_end, end
        if start >= limit_s:
            break
        end = min(end, limit_s)
        cont = (not sym) or sym.startswith("!") or sym.endswith(("asp", "sap"))
        if cont and segs:
            segs[-1][2] = end
            continue
        if sym in (".", "(", "(gef", "") or sym.startswith("("):
            segs.append(["sil", start, end])
            continue
        sym = {"H": "h"}.get(sym.lstrip("_"), sym.lstrip("_"))  # H: breathy h ("dem Holz")
        # "4" (and "?") is EmoDB's glottal stop before vowel-initial words ("und", "Agnes")
        arpa = ("sil",) if sym in ("4", "?") else to_arpabet(sym, "de")
        if not arpa:
            if segs:
                segs[-1][2] = end
            continue
        edges = np.linspace(start, end, len(arpa) + 1)
        segs.extend([p, edges[i], edges[i + 1]] for i, p in enumerate(arpa))
    return [(p, a, b) for p, a, b in segs if b > a]


def _class_of_id(i: int) -> str:
    name = VOCAB[i]
    if i == 0:
        return "sil"
    base = name.rsplit("_", 1)[0]
    return BROAD_CLASS.get(base, "unk")


def frame_classes(phones: list[tuple[str, float, float]], n_samples: int) -> np.ndarray:
    """(T,) class index per 20 ms frame from (base phone or "sil", start, end) segments."""
    ids = {p: k for k, p in enumerate(sorted({p for p, _, _ in phones}))}
    segs = [(ids[p] + 1, a, b) for p, a, b in phones]  # 0 = uncovered
    fr = frame_ids(segs, n_samples)
    inv = {k + 1: p for p, k in ids.items()}
    return np.array([CLASSES.index("sil" if f == 0 or inv[f] == "sil"
                                   else BROAD_CLASS.get(inv[f], "unk")) for f in fr])


def visible_phones(aligner: EmbeddedAligner, text: str, language: str, ref):
    """The transcript's phones as [(word index, base phone)], cut after the last one that
    matches a reference phone (EmoDB clips stop mid-sentence; the reference says where)."""
    tr = parse_transcript(text)
    _, words = aligner.synthesize(tr.words, tr.spans, tr.speech_text(), language)
    full = [(k, p) for k, w in enumerate(words) if w is not None for p in w.phones]
    r = [x[0] for x in ref if x[0] != "sil"]
    pairs = _needleman_wunsch([p for _, p in full], r)
    hits = [i for i, j in pairs if i is not None and j is not None and full[i][1] == r[j]]
    return full[: (max(hits) + 1 if hits else 0)]


def predicted_phones(alignment, visible, duration: float):
    """(base phone, start, end) of the visible words; a word the aligner did not find keeps its
    phones, placed at the end of the clip (so that missing words count as errors)."""
    out = []
    last_word = visible[-1][0] if visible else -1
    for k, w in enumerate(alignment.words[: last_word + 1]):
        if w.case == "success":
            out += [(ph.rsplit("_", 1)[0], min(a, duration), min(b, duration)) for ph, a, b in w.phones]
        else:
            out += [(p, duration, duration) for kk, p in visible if kk == k]
    return out


def uniform_like(phones, span: tuple[float, float]):
    """Phones (names) evenly spread over ``span``."""
    if not phones:
        return []
    edges = np.linspace(span[0], span[1], len(phones) + 1)
    return [(p, edges[i], edges[i + 1]) for i, p in enumerate(phones)]


def boundary_errors(pred, ref, limit_s: float) -> np.ndarray:
    """|start| and |end| differences (s) of predicted/reference phones matched by symbol.

    A reference start at 0 (the file start, not a boundary) or an end at the clip limit is
    skipped.
    """
    r = [x for x in ref if x[0] != "sil"]
    pairs = _needleman_wunsch([p[0] for p in pred], [x[0] for x in r])
    errs = []
    for i, j in pairs:
        if i is not None and j is not None and pred[i][0] == r[j][0]:
            if r[j][1] > 1e-3:
                errs.append(abs(pred[i][1] - r[j][1]))
            if r[j][2] < limit_s - 1e-3:
                errs.append(abs(pred[i][2] - r[j][2]))
    return np.array(errs)


def with_silence(phones, duration):
    """Fill the gaps of a phone list with "sil" so frame classes see silence."""
    out, t = [], 0.0
    for p, a, b in sorted(phones, key=lambda x: x[1]):
        if a > t:
            out.append(("sil", t, a))
        out.append((p, a, b))
        t = max(t, b)
    if t < duration:
        out.append(("sil", t, duration))
    return out


def evaluate(items, aligner: EmbeddedAligner, language: str, limit_s: float | None):
    """items: (utt_id, audio (n,) float32 16 kHz, text, reference phones). Returns a summary."""
    errs_a, errs_u, agree_a, agree_u, cpu = [], [], [], [], []
    not_found = 0
    for utt, audio, text, ref in items:
        t0 = time.process_time()
        al = aligner.align(audio, text, language)
        cpu.append(time.process_time() - t0)
        dur = len(audio) / SR if limit_s is None else min(limit_s, len(audio) / SR)
        visible = visible_phones(aligner, text, language, ref)
        not_found += sum(w.case != "success" for w in al.words[: visible[-1][0] + 1])
        pred = predicted_phones(al, visible, dur)
        speech = [x for x in ref if x[0] != "sil"]
        uni = uniform_like([p for _, p in visible], (speech[0][1], speech[-1][2]))
        errs_a.append(boundary_errors(pred, ref, dur))
        errs_u.append(boundary_errors(uni, ref, dur))
        n = int(round(dur * SR))
        ref_c = frame_classes(with_silence(ref, dur), n)
        ids = frame_ids(segments(al.words, al.tokens_before, dur), n)  # what the stage stores
        agree_a.append((np.array([CLASSES.index(_class_of_id(i)) for i in ids]) == ref_c).mean())
        agree_u.append((frame_classes(with_silence(uni, dur), n) == ref_c).mean())
    ea, eu = np.concatenate(errs_a), np.concatenate(errs_u)
    return {
        "utterances": len(cpu), "matched_boundaries": int(len(ea)),
        "aligner_boundary_error_ms": 1000 * float(ea.mean()),
        "uniform_boundary_error_ms": 1000 * float(eu.mean()),
        "ratio": float(ea.mean() / eu.mean()),
        "aligner_median_ms": 1000 * float(np.median(ea)),
        "uniform_median_ms": 1000 * float(np.median(eu)),
        "aligner_within_20ms": float((ea <= 0.02).mean()),
        "aligner_frame_class_agreement": float(np.mean(agree_a)),
        "uniform_frame_class_agreement": float(np.mean(agree_u)),
        "words_not_found_in_audible_part": not_found,
        "cpu_s_per_utterance": float(np.mean(cpu)), "cpu_s_max": float(np.max(cpu)),
    }


def emodb_items(root: Path, limit: int | None):
    import soundfile as sf

    rows = list(csv.DictReader(open(root / "manifest.csv", encoding="utf-8")))
    out = []
    for row in rows:
        lab = root / "lablaut" / f"{row['id']}xx.lablaut"
        ref = read_lablaut(lab) if lab.exists() else []
        if not [x for x in ref if x[0] != "sil"]:
            continue  # 08a01Wa has an empty label file
        audio, sr = sf.read(root / row["audio"], dtype="float32")
        assert sr == SR
        out.append((row["id"], audio, row["text"], ref))
        if limit and len(out) >= limit:
            break
    return out


def synthetic_items(n: int, seed: int = 0):
    """espeak speech in random voices with known phone times (XED English lines)."""
    from scipy.signal import resample_poly

    rng = np.random.default_rng(seed)
    lines = [ln.split("\t", 1)[-1].strip() for ln in
             open("/work/shared/data/xed_en/neu_en.txt", encoding="utf-8")]
    lines = [ln for ln in lines if 3 <= len(ln.split()) <= 20]
    variants = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5"]
    out = []
    for k in range(n):
        text = lines[int(rng.integers(len(lines)))]
        syn = espeak.synthesize(text, voice="en-us", variant=str(rng.choice(variants)),
                                rate=int(rng.integers(120, 240)), pitch=int(rng.integers(20, 90)),
                                pitch_range=int(rng.integers(20, 90)))
        audio = resample_poly(syn.audio, SR, syn.sample_rate).astype(np.float32)
        lead = float(rng.uniform(0.05, 0.6))
        audio = np.concatenate([np.zeros(int(lead * SR), np.float32), audio,
                                np.zeros(int(rng.uniform(0.05, 0.5) * SR), np.float32)])
        audio += rng.normal(0, 10 ** (-float(rng.uniform(35, 55)) / 20), len(audio)).astype(np.float32)
        ref = []
        for sym, a, b in syn.phonemes:
            arpa = to_arpabet(sym, "en")
            if not arpa:
                ref.append(("sil", a + lead, b + lead))
                continue
            edges = np.linspace(a + lead, b + lead, len(arpa) + 1)
            ref += [(p, edges[i], edges[i + 1]) for i, p in enumerate(arpa)]
        out.append((f"syn{k:04d}", audio, text, ref))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--emodb", type=Path, default=Path("/work/shared/data/emodb4"))
    ap.add_argument("--limit", type=int, default=None, help="EmoDB files (default: all)")
    ap.add_argument("--synthetic", type=int, default=100, help="synthetic utterances (0: skip)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--device", default="cpu", help="ignored: the aligner is CPU only")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    aligner = EmbeddedAligner(EmbeddedConfig())
    aligner.align(np.zeros(1600, np.float32) + 1e-3, "warm up", "en")  # CMUdict load
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
                          f"{platform.python_version()}"}
    if args.emodb and args.emodb.exists():
        items = emodb_items(args.emodb, args.limit)
        results["emodb"] = evaluate(items, aligner, "de", 2.0)
        # the aligner's DTW settings were tuned on every third file: report the rest apart
        held_out = [it for k, it in enumerate(items) if k % 3]
        if held_out and not args.limit:
            results["emodb_held_out"] = evaluate(held_out, aligner, "de", 2.0)
    if args.synthetic:
        results["synthetic_en"] = evaluate(synthetic_items(args.synthetic), aligner, "en", None)
    print(f"machine: {results['machine']}")
    for name, r in results.items():
        if name == "machine":
            continue
        print(f"\n== {name}: {r['utterances']} utterances, {r['matched_boundaries']} matched boundaries")
        print(f"  boundary error  aligner {r['aligner_boundary_error_ms']:.1f} ms "
              f"(median {r['aligner_median_ms']:.1f}, {100 * r['aligner_within_20ms']:.0f}% <= 20 ms)"
              f" | uniform {r['uniform_boundary_error_ms']:.1f} ms (median {r['uniform_median_ms']:.1f})"
              f" | ratio {r['ratio']:.2f}"
              f" ({'meets' if r['ratio'] <= 0.5 else 'misses'} target <= 0.50)")
        print(f"  frame class agreement  aligner {100 * r['aligner_frame_class_agreement']:.1f}% "
              f"| uniform {100 * r['uniform_frame_class_agreement']:.1f}%")
        print(f"  cpu per utterance {1000 * r['cpu_s_per_utterance']:.0f} ms (max "
              f"{1000 * r['cpu_s_max']:.0f}); words not found {r['words_not_found_in_audible_part']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
