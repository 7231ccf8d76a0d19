"""Hostile corpora through ``prepare manifest`` (the real CLI) and ``extract --stage mel``: every
row gets its documented outcome (tests/reliability/hostile.py), the good rows are processed,
and no row disappears without a reason."""
from __future__ import annotations

import os
import subprocess

import pytest

from core.errors import CorpusError
from pipeline.corpus import load_corpus
from pipeline.extract import extract
from pipeline.prepare import prepare_manifest
from pipeline.store import StageReader
from tests.fixtures.corpora import write_manifest
from tests.reliability import hostile
from tests.reliability.runner import REPO
from tests.reliability.soak import PY


def _reasons(workdir) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """rejected.tsv -> ({id: rejection reasons}, {id: remarks on kept items})."""
    rejected: dict[str, list[str]] = {}
    notes: dict[str, list[str]] = {}
    lines = (workdir / "rejected.tsv").read_text(encoding="utf-8").splitlines()[1:]
    for line in lines:
        uid, _, reason = line.split("\t")
        if reason.startswith("rejected: "):
            rejected.setdefault(uid, []).append(reason[len("rejected: "):])
        else:
            notes.setdefault(uid, []).append(reason)
    return rejected, notes


def test_hostile_manifest_every_row_has_its_documented_outcome(tmp_path):
    rows, cases, raw = hostile.build(tmp_path)
    manifest = write_manifest(tmp_path / "corpus", rows)
    with open(manifest, "ab") as f:
        for line in raw.values():
            f.write(line)
    work = tmp_path / "work"
    out = subprocess.run([PY, "cli.py", "prepare", "manifest", manifest, "-w", str(work)],
                         cwd=REPO, capture_output=True, text=True, timeout=180,
                         env=dict(os.environ, COLUMNS="250"))
    text = out.stdout + out.stderr
    assert out.returncode == 0 and "Traceback" not in text, text
    n_rejected = sum(c.outcome == "rejected" for c in cases)
    assert f"rejected: {n_rejected};" in text  # the summary line counts them

    rep = extract(work, ["mel"], workers=1)[0]
    rejected, notes = _reasons(work)
    kept = {u.id for u in load_corpus(work).utterances}
    with StageReader(work, "mel") as r:
        frames = {u: r.length(u, "mel") for u in r.ids()}
        failed = dict(r.failed)
    assert failed == rep.failed

    lost, seen_ok = [], set()
    for case in cases:
        if case.outcome == "ok" and case.id not in seen_ok:
            seen_ok.add(case.id)
            assert case.id in frames, (case, failed.get(case.id), rejected.get(case.id))
            assert abs(frames[case.id] - 50 * case.seconds) <= 1, (case, frames[case.id])
            if case.reason:
                assert any(case.reason in n for n in notes.get(case.id, [])), (case, notes)
        elif case.outcome == "rejected":
            assert any(case.reason in x for x in rejected.get(case.id, [])), \
                (case, rejected.get(case.id))
        elif case.outcome == "failed":
            assert case.id in kept and case.reason in failed.get(case.id, ""), (case, failed)
        accounted = case.id in frames or case.id in failed or case.id in rejected
        if not accounted:
            lost.append(case.id)
    assert lost == []
    n_ok = sum(c.outcome == "ok" for c in cases)
    print(f"\n[reliability] hostile corpus: {len(cases)} rows tried, {n_ok} extracted, "
          f"{sum(c.outcome == 'rejected' for c in cases)} rejected at prepare, "
          f"{len(failed)} failed at extract with a reason, {len(lost)} lost")


def test_utf16_manifest_is_refused_as_a_whole(tmp_path):
    p = tmp_path / "m.csv"
    p.write_bytes("id,audio,speaker,label\nx,a.wav,s,sad\n".encode("utf-16"))
    with pytest.raises(CorpusError, match="UTF-16; re-save it as UTF-8"):
        prepare_manifest(tmp_path / "w", p)


def test_audio_swapped_for_a_two_hour_file_after_prepare(tmp_path):
    """prepare checked a short file; it was replaced by a 2-hour one before extract: the item
    fails at extraction with the length limit as its reason, the others are processed."""
    rows, cases, _ = hostile.build(tmp_path)
    keep = [r for r in rows if r["id"] in ("good", "k8", "flac")][:3]
    manifest = write_manifest(tmp_path / "corpus", keep)
    prepare_manifest(tmp_path / "w", manifest)
    target = load_corpus(tmp_path / "w").by_id()["k8"].audio
    hostile.write_long_wav(tmp_path / "corpus" / "wav" / "k8.wav", 7200.0)
    assert target.endswith("k8.wav")
    rep = extract(tmp_path / "w", ["mel"], workers=1)[0]
    assert list(rep.failed) == ["k8"] and "over the 600 s limit" in rep.failed["k8"]
    with StageReader(tmp_path / "w", "mel") as r:
        assert r.ids() == ["flac", "good"]
