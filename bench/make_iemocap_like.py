"""An IEMOCAP-shaped corpus in the official release layout, for full-scale rehearsals.

5 sessions × 2 speakers (one female, one male actor per session), the paper's 5,531 4-class
utterances with IEMOCAP's per-session counts (1,085 / 1,023 / 1,151 / 1,031 / 1,241) and
roughly its class balance, plus utterances with other labels (fru, sur, xxx, …) that the
reader must drop; utterance lengths drawn like IEMOCAP's (log-normal, median ≈ 3.5 s, clipped
to 0.6–20 s, ≈ 7 h in all). Audio is espeak-ng speech (one voice per actor, emotional prosody
as in the demo corpus) concatenated to the target length with noise: synthetic, not IEMOCAP.
EmoEvaluation and transcription files follow the exact release formats, so
``python cli.py prepare iemocap ROOT/IEMOCAP_full_release`` reads it unchanged.

    python bench/make_iemocap_like.py ROOT [--scale 0.25] [--workers 16]
"""
from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.iemocap import EXPECTED_PER_SESSION  # noqa: E402

SR = 16000
CLASS_SHARE = {"neu": 0.309, "hap": 0.108, "exc": 0.188, "sad": 0.196, "ang": 0.199}
OTHER = {"fru": 0.35, "xxx": 0.45, "sur": 0.03, "fea": 0.01, "oth": 0.01, "dis": 0.01}
OTHER_RATIO = 0.8  # IEMOCAP has ≈ 4,500 more utterances with other labels; we keep fewer
EMOTION_OF = {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry"}
VOICES = {"F": ["en+f2", "en-us+f4", "en+f3", "en+f1", "en-us+f2"],
          "M": ["en+m3", "en-us+m1", "en+m7", "en+m2", "en-us+m3"]}
POOL = 12  # synthesized sentences per actor × emotion


def _pool(args):
    """Synthesize the sentence pool of one actor × emotion: list of (text, 16 kHz audio)."""
    voice, emotion, seed = args
    import soxr
    from features.espeak import synthesize
    from pipeline.demo_corpus import JITTER, PROSODY, SENTENCES
    rng = np.random.default_rng(seed)
    out = []
    sentences = SENTENCES[emotion] + SENTENCES["neutral"]
    for k in range(POOL):
        text = sentences[k % len(sentences)]
        p, r, w, v = np.round(np.array(PROSODY[emotion], float) + rng.normal(0, JITTER)).astype(int)
        s = synthesize(text, voice=voice, pitch=int(np.clip(p, 0, 99)), pitch_range=int(np.clip(r, 0, 99)),
                       rate=int(np.clip(w, 90, 300)), volume=int(np.clip(v, 30, 200)), seed=int(seed + k))
        out.append((text, soxr.resample(s.audio, s.sample_rate, SR).astype(np.float32)))
    return (voice, emotion), out


def _write(job):
    """Write one utterance's wav by concatenating pool clips up to its target length."""
    path, seconds, clips, seed = job
    import soundfile as sf
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    parts, used, texts = [], 0, []
    while used < n:
        text, audio = clips[int(rng.integers(len(clips)))]
        parts += [audio, np.zeros(int(rng.uniform(0.05, 0.3) * SR), np.float32)]
        texts.append(text)
        used += len(audio) + len(parts[-1])
    x = np.concatenate(parts)[:n] * 10 ** (rng.uniform(-6, 0) / 20)
    x = x + rng.normal(0, 0.003, n)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.clip(x, -1, 1).astype(np.float32), SR, subtype="PCM_16")
    return texts


def build(root: Path, scale: float = 1.0, workers: int = 8, seed: int = 0) -> dict:
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    release = root / "IEMOCAP_full_release"
    codes, shares = list(CLASS_SHARE), np.array(list(CLASS_SHARE.values()))
    others, oshares = list(OTHER), np.array(list(OTHER.values()))
    plan = []  # (session, dialog, utt_id, code, seconds)
    for s in range(1, 6):
        n4 = max(4, round(EXPECTED_PER_SESSION[f"Ses0{s}"] * scale))
        labels = list(rng.choice(codes, n4, p=shares / shares.sum()))
        labels += list(rng.choice(others, round(n4 * OTHER_RATIO), p=oshares / oshares.sum()))
        rng.shuffle(labels)
        per_dialog = 60
        for d0 in range(0, len(labels), per_dialog):
            k = d0 // per_dialog
            dialog = f"Ses0{s}{'FM'[k % 2]}_" + (f"impro{k + 1:02d}" if k % 3 else f"script{k + 1:02d}_1")
            count = {"F": 0, "M": 0}
            for code in labels[d0:d0 + per_dialog]:
                g = "FM"[int(rng.integers(2))]
                utt = f"{dialog}_{g}{count[g]:03d}"
                count[g] += 1
                sec = float(np.clip(rng.lognormal(np.log(3.5), 0.62), 0.6, 20.0))
                plan.append((s, dialog, utt, code, sec))
    voices = {(s, g): VOICES[g][s - 1] for s in range(1, 6) for g in "FM"}
    jobs = [(v, e, seed + 97 * i) for i, (v, e) in enumerate(
        (v, e) for v in voices.values() for e in ("neutral", "happy", "sad", "angry"))]
    with ProcessPoolExecutor(workers) as ex:
        pools = dict(ex.map(_pool, jobs))
        wav_jobs = []
        for i, (s, dialog, utt, code, sec) in enumerate(plan):
            g = utt.rsplit("_", 1)[1][0]
            emotion = EMOTION_OF.get(code, "neutral")
            path = release / f"Session{s}" / "sentences" / "wav" / dialog / f"{utt}.wav"
            wav_jobs.append((str(path), sec, pools[(voices[(s, g)], emotion)], seed + i))
        texts = list(ex.map(_write, wav_jobs, chunksize=32))
    by_dialog: dict[tuple[int, str], list] = {}
    for (s, dialog, utt, code, sec), txt in zip(plan, texts):
        by_dialog.setdefault((s, dialog), []).append((utt, code, sec, " ".join(txt)))
    for (s, dialog), rows in by_dialog.items():
        d = release / f"Session{s}" / "dialog"
        (d / "EmoEvaluation").mkdir(parents=True, exist_ok=True)
        (d / "transcriptions").mkdir(parents=True, exist_ok=True)
        ev, tr, t = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""], [], 1.0
        for utt, code, sec, text in rows:
            ev += [f"[{t:.4f} - {t + sec:.4f}]\t{utt}\t{code}\t[2.5000, 2.5000, 2.5000]",
                   "C-E1:\tNeutral;\t()", "C-E3:\tNeutral;\t()", "A-E1:\tval 3; act 2; dom  2;\t()", ""]
            if rng.random() < 0.03:
                text = "[LAUGHTER] " + text
            tr.append(f"{utt} [{t:08.4f}-{t + sec:08.4f}]: {text}")
            t += sec + 0.5
        (d / "EmoEvaluation" / f"{dialog}.txt").write_text("\n".join(ev) + "\n")
        (d / "transcriptions" / f"{dialog}.txt").write_text("\n".join(tr) + "\n")
    four = [p for p in plan if p[3] in EMOTION_OF]
    return {"root": str(release), "utterances_4class": len(four), "utterances_all": len(plan),
            "hours_4class": sum(p[4] for p in four) / 3600, "seconds_to_build": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of IEMOCAP's utterance count")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(build(a.root, a.scale, a.workers, a.seed))


if __name__ == "__main__":
    main()
