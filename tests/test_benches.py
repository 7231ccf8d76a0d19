"""The benches still run against the product (they call its functions and commands, so a change
of the product's API breaks them): each on a tiny CPU setting, its JSON summary checked."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench(tmp_path: Path, module: str, *args: str) -> dict:
    out = tmp_path / "summary.json"
    where = {"bench.ser_speed": ["--out", str(out)], "bench.ser_step_parts": ["--json", str(out)],
             "bench.text_cold_start": ["--json", str(out)], "bench.layer_gather_probe": ["--json", str(out)]}.get(
        module, ["--json", str(out), "--dir", str(tmp_path / "scratch")])
    done = subprocess.run([sys.executable, "-m", module, *args, *where], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("module, args, check", [
    ("bench.train_speed", ("--hours", "0.02", "--crops", "64", "--batch-size", "8", "--layers", "3",
                           "--dim", "16", "--warm"),
     lambda s: s["steps"] == 8 and s["crops_per_s"]["cli"] > 0 and 0 < s["loop_over_steps"] and s["warm_up_s"] > 0),
    ("bench.ter_command_speed", ("--utterances", "60", "--dim", "16", "--max-tokens", "12", "--steps", "4",
                                 "--batch-size", "8"),
     lambda s: s["folds"] == 5 and s["cli_s"] > 0 and s["in_process_s"] > 0),
    ("bench.ser_speed", ("--config", "spec", "--hours", "0.02", "--batches", "2", "--steps", "2",
                         "--warmup", "1", "--infer-utts", "5"),
     lambda s: s["rows"][0]["crops_per_s"] > 0 and s["inference"]["utterances"] == 5),
    ("bench.ser_step_parts", ("--batch", "2", "--iters", "1"),
     lambda s: s["whole_ms"] > 0 and len(s["parts_ms"]) == 9 and s["variants"]["conv_stacks"]["encoder convs"][
         "largest_gap"] < 1e-3),
    ("bench.extract_speech", ("--arch", "tiny", "--minutes", "0.5", "--official-minutes", "0.1",
                              "--whisper-minutes", "0", "--base-param", "frame_budget=1500", "--paired"),
     lambda s: s["product_s"] > 0 and s["cli_s"] > 0 and s["base_cli_s"] > 0 and s["utterances"] > 0
     and len(s["product_paired_s"]) == 1 and s["cli_over_product_paired"] > 0
     and 0 < s["bare_start_s"] < s["cli_s"] and s["cli_over_product_load_start"] > s["cli_over_product"]),
    ("bench.text_cold_start", ("--runs", "1", "--sentences", "2"),
     lambda s: s["this_s"] > 0 and s["encoder"]["this"] == "BertEncoder" and s["sentences"] == 2),
    ("bench.extract_timeline", ("--arch", "tiny", "--minutes", "0.3", "--switch-intervals", "0.001"),
     lambda s: all(len(s[k]["shards_s"]) == 1 for k in ("function_cold", "function_warm",
                                                          "function_switch1ms_1", "cli"))
     and s["cli"]["extractor_ready_at_s"] > s["cli"]["planned_at_s"] > 0 and s["cli"]["wall_s"] > 0),
    ("bench.encoder_contention", ("--arch", "tiny", "--minutes", "0.3", "--repeats", "1"),
     lambda s: set(s["rows"]) == {"encoder", "extractor", "+ writes", "+ decoding", "+ both"}
     and s["rows"]["extractor"]["over_extractor"] == 1.0 and s["calls"] >= 1
     and all(r["seconds"] > 0 and "encoder call" in r["split"] for r in s["rows"].values())),
    ("bench.batch_prep_probe", ("--items", "4", "--repeats", "2"),
     lambda s: s["items"] == 4 and all(r["alone"] > 0 and r["beside_busy_thread"] > 0 for r in s["ms"].values())
     and set(s["ms"]) == {"product", "0.8.5"} and s["product_over_previous"]["alone"] > 0),
    ("bench.extract_processes", ("--arch", "tiny", "--minutes", "1", "--reps", "1"),
     lambda s: set(s["rows"]) == {"1", "2"} and s["shards"] >= 1 and s["feature_bytes"] > 0
     and all(r["median_s"] > 0 and r["over_one"] > 0 for r in s["rows"].values())),
    ("bench.layer_gather_probe", ("--frames", "4000", "--batch", "8", "--layers", "3", "--dim", "16",
                                  "--iters", "1"),
     lambda s: not [k for k in s if k.endswith("error")] and s["in place ms"] > 0 and s["fwd unrolled ms"] > 0
     and s["in place max|Δout|"] < 1e-5 and s["in place max|Δgrad|/max|grad|"] < 1e-4
     and s["bwd two-step max|Δ|/max"] < 1e-4),
], ids=["train_speed", "ter_command_speed", "ser_speed", "ser_step_parts", "extract_speech",
        "text_cold_start", "extract_timeline", "encoder_contention", "batch_prep_probe", "extract_processes",
        "layer_gather_probe"])
def test_a_bench_runs_on_the_cpu(tmp_path, module, args, check):
    assert check(_bench(tmp_path, module, *args))


def test_the_extract_ab_bench_runs_on_the_cpu(tmp_path):
    """bench/extract_all_ab.py on a tiny corpus, this checkout as its own baseline (one pair)."""
    from tests.fixtures.corpora import tone_corpus
    work = tone_corpus(tmp_path / "c", n=4, seconds=(0.3, 0.4))
    s = _bench(tmp_path, "bench.extract_all_ab", "--work", str(work), "--base", str(REPO), "--runs", "1",
               "--stages", "mel")
    assert s["stages"] == ["mel"] and len(s["this_s"]) == len(s["base_s"]) == 1
    assert s["this_s"][0] > 0 and s["base_s"][0] > 0 and s["ratio_of_medians"] > 0


def test_the_extract_cli_pair_bench_runs_on_an_extracted_work_dir(tmp_path):
    """bench/extract_cli_pair.py over a prepared work dir (a tiny random wav2vec2, on the CPU):
    one cold CLI run paired with one warm in-process run, on the corpus's own audio length."""
    from bench.extract_speech import make_corpus, product_workdir
    corpus = make_corpus(tmp_path / "wav", 0.1)
    work, model = product_workdir(tmp_path, corpus, "tiny")
    out = tmp_path / "pair.json"
    done = subprocess.run([sys.executable, "-m", "bench.extract_cli_pair", str(work), "-p", f"model={model}",
                           "--gpus", "", "--pairs", "1", "--json", str(out)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    s = json.loads(out.read_text())
    assert abs(s["audio_hours"] * 3600 - sum(n for *_, n in corpus) / 16000) < 1e-6
    assert len(s["cli_s"]) == len(s["product_s"]) == 1 and s["product_s"][0] > 0
    assert s["cli_over_product_paired"] == s["product_s"][0] / s["cli_s"][0]
    # measured, not compared: on a busy 2-core VM a bare start outlasted this tiny corpus's whole CLI run
    assert s["bare_start_what"] == "Python + torch" and s["bare_start_s"] > 0
