"""IEMOCAP reader (Busso et al., 2008), official release layout::

    IEMOCAP_full_release/
      Session1/ … Session5/
        dialog/EmoEvaluation/<dialog>.txt   [START - END]<TAB>UTT_ID<TAB>LABEL<TAB>[V, A, D]
        dialog/transcriptions/<dialog>.txt  UTT_ID [START-END]: text
        sentences/wav/<dialog>/<UTT_ID>.wav  16 kHz mono 16-bit

The label of an utterance is the header label of its EmoEvaluation block (the release's
majority label). The paper's 4-class protocol keeps neu, hap+exc (merged into happy), sad and
ang and drops everything else (fru, sur, fea, dis, oth, xxx). Speaker = session + gender letter
of the utterance id's last part (``Ses01F_impro01_M003`` → ``Ses01M``); group = session.
Transcripts keep bracketed tokens such as ``[LAUGHTER]``.

On the full release this yields **5,531 utterances: 1,085 / 1,023 / 1,151 / 1,031 / 1,241 in
sessions 1–5**, the count every peer reports; :func:`read_iemocap` checks it when all five
sessions are present.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from core.errors import CorpusError
from pipeline.corpus import DEFAULT_CLASSES, Utterance
from pipeline.labels import LabelPolicy

log = logging.getLogger(__name__)

EXPECTED_PER_SESSION = {"Ses01": 1085, "Ses02": 1023, "Ses03": 1151, "Ses04": 1031, "Ses05": 1241}
#: The release's label codes, named (``--classes`` and ``--map`` use these names).
CODE_NAMES = {"neu": "neutral", "hap": "happy", "exc": "excited", "sad": "sad", "ang": "angry",
              "fru": "frustrated", "sur": "surprised", "fea": "fearful", "dis": "disgusted",
              "oth": "other", "xxx": "no agreement"}
#: The paper's protocol: four classes, excited merged into happy, the rest left out.
PAPER_POLICY = LabelPolicy(DEFAULT_CLASSES, {"excited": "happy"}, aliases=False)

_HEADER = re.compile(r"^\[(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\]\t(\S+)\t(\S+)\t")
_TRANSCRIPT = re.compile(r"^(Ses\d\d[MF]_\S+_[MF][A-Za-z]*\d+)\s*\[[^\]]*\]:\s?(.*)$")


def speaker_of(utt_id: str) -> str:
    """``Ses01F_impro01_M003`` → ``Ses01M`` (session + gender of the speaking actor)."""
    return utt_id[:5] + utt_id.rsplit("_", 1)[1][0]


def read_transcripts(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = _TRANSCRIPT.match(line.strip())
        if m:  # other lines (e.g. M-/F- prefixed non-utterances) are not utterances
            out[m.group(1)] = m.group(2).strip()
    return out


def read_iemocap(root: str | Path, policy: LabelPolicy = PAPER_POLICY
                 ) -> tuple[list[Utterance], list[tuple[str, str, str]], dict]:
    """(utterances, rejected rows (id, source, reason), stats) from an IEMOCAP release root.
    Utterances whose label ``policy`` does not keep are counted in ``stats``, not rejected."""
    root = Path(root)
    sessions = sorted(p for p in root.glob("Session[1-5]") if p.is_dir())
    if not sessions:
        raise CorpusError(f"{root} has no Session1..Session5 folders; pass the "
                          "IEMOCAP_full_release folder")
    utts: list[Utterance] = []
    rejected: list[tuple[str, str, str]] = []
    dropped: dict[str, int] = {}
    for sess in sessions:
        evals = sorted((sess / "dialog" / "EmoEvaluation").glob("*.txt"))
        if not evals:
            raise CorpusError(f"{sess}/dialog/EmoEvaluation has no <dialog>.txt files")
        for ev in evals:
            dialog = ev.stem
            tr_path = sess / "dialog" / "transcriptions" / f"{dialog}.txt"
            texts = read_transcripts(tr_path) if tr_path.exists() else {}
            for line in ev.read_text(encoding="utf-8", errors="replace").splitlines():
                m = _HEADER.match(line)
                if not m:
                    continue
                utt_id, code = m.group(3), m.group(4)
                label = policy.canonical(CODE_NAMES.get(code, code))
                if label is None:
                    dropped[code] = dropped.get(code, 0) + 1
                    continue
                wav = sess / "sentences" / "wav" / dialog / f"{utt_id}.wav"
                if not wav.exists():
                    rejected.append((utt_id, str(wav), "audio file missing"))
                    continue
                text = texts.get(utt_id)
                if text is None:
                    rejected.append((utt_id, str(tr_path), "no transcript (kept; no text feature)"))
                utts.append(Utterance(
                    id=utt_id, audio=str(wav.resolve()), speaker=speaker_of(utt_id),
                    label=label, group=utt_id[:5], text=text, language="en"))
    stats = {"dropped_by_protocol": dropped}
    per_session = {s: sum(1 for u in utts if u.group == s) for s in sorted({u.group for u in utts})}
    if len(sessions) == 5 and not rejected and policy == PAPER_POLICY:
        if per_session != EXPECTED_PER_SESSION:
            log.warning("IEMOCAP: expected %s utterances per session (5,531), got %s — is this "
                        "the official release?", EXPECTED_PER_SESSION, per_session)
        stats["matches_official_count"] = per_session == EXPECTED_PER_SESSION
    return utts, rejected, stats
