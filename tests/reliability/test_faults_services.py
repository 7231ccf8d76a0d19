"""Faults round two (issue 18), continued: untrusted checkpoints and model folders, services
that accept connections and never answer, clusters, read-only work directories."""
from __future__ import annotations

import io
import json
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import StageError, TrainingError
from features.base import ItemInput
from features.fairseq_convert import RestrictedUnpickler
from features.gentle import GentleClient, GentleConfig, GentleUnavailable
from models.trained import load_run
from pipeline.extract import extract
from tests.fixtures.corpora import tone_corpus
from tests.fixtures.encoders import save_tiny_text_encoder
from tests.fixtures.runs import fake_run
from tests.fixtures.stores import shard_files
from tests.reliability.runner import REPO
from tests.reliability.test_untrusted import Payload


class Silent:
    """A TCP server that accepts connections and never says a word (or answers GETs only)."""

    def __init__(self, answer_get: bool = False):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.answer_get, self.conns = answer_get, []
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            if self.answer_get:
                head = conn.recv(65536)
                if head.startswith(b"GET"):
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nGentle")
                    conn.close()

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def test_a_hung_gentle_server_is_not_treated_as_present():
    srv = Silent()
    try:
        client = GentleClient(GentleConfig(url=f"http://{srv.address}", timeout_s=0.5, retries=0))
        t = time.perf_counter()
        with pytest.raises(GentleUnavailable, match="accepts connections but does not answer"):
            client.check()
        assert time.perf_counter() - t < 5
    finally:
        srv.close()


def test_a_gentle_server_that_stops_answering_stops_the_stage_instead_of_caching_fallbacks():
    from features.phones import PhonesConfig, PhonesExtractor
    srv = Silent(answer_get=True)
    try:
        ext = PhonesExtractor(PhonesConfig(aligner="gentle", gentle_url=f"http://{srv.address}",
                                           gentle_timeout_s=0.3, gentle_retries=0))
        audio = (0.1 * np.sin(np.arange(16000) / 10)).astype(np.float32)
        items = [ItemInput(f"u{i}", audio, "hello there", "en", "s") for i in range(5)]
        with pytest.raises(GentleUnavailable, match="3 utterances in a row"):
            ext(items)  # a StageError: the shard is not published, so it is retried next run
    finally:
        srv.close()


def test_a_silent_scheduler_times_out_and_force_deletes_nothing(tmp_path, monkeypatch):
    import pipeline.scheduler as scheduler
    monkeypatch.setattr(scheduler, "CONNECT_TIMEOUT_S", 1.0)
    work = tone_corpus(tmp_path, n=3, seconds=(0.3, 0.4))
    extract(work, ["mel"], workers=1)
    before = [p.stat().st_ino for p in shard_files(work, "mel")]
    srv = Silent()
    try:
        t = time.perf_counter()
        with pytest.raises(StageError, match="did not answer within 1 s.*nothing was changed"):
            extract(work, ["mel"], force=True, scheduler=f"tcp://{srv.address}")
        assert time.perf_counter() - t < 15
    finally:
        srv.close()
    assert [p.stat().st_ino for p in shard_files(work, "mel")] == before  # nothing deleted


def test_a_relative_work_dir_means_the_same_folder_on_the_cluster(tmp_path):
    """`extract --scheduler ... -w work` from another directory than the workers' one."""
    from distributed import Client, LocalCluster
    work = Path(tone_corpus(tmp_path, n=3, seconds=(0.3, 0.4)))
    name = f"work-relative-{os.getpid()}"
    (tmp_path / name).symlink_to(work, target_is_directory=True)
    with LocalCluster(n_workers=1, processes=False, protocol="tcp://", dashboard_address=None) as cluster, \
            Client(cluster):
        out = subprocess.run([sys.executable, str(REPO / "cli.py"), "extract", "-s", "mel",
                              "--scheduler", cluster.scheduler_address, "-w", name],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not (Path.cwd() / name).exists()  # the workers' own directory got nothing
    assert len(shard_files(work, "mel")) == 1


def test_class_attributes_cannot_be_set_by_a_checkpoint():
    """BUILD on an allowed class (argparse.Namespace.__eq__ = ...) would change it process-wide."""
    import argparse
    before = argparse.Namespace.__eq__
    evil = (b"\x80\x02cargparse\nNamespace\nN}X\x06\x00\x00\x00__eq__K\x01s\x86b.")
    with pytest.raises(pickle.UnpicklingError, match="refusing to set attributes"):
        RestrictedUnpickler(io.BytesIO(evil)).load()
    assert argparse.Namespace.__eq__ is before
    ns = RestrictedUnpickler(io.BytesIO(pickle.dumps(argparse.Namespace(a=1), 2))).load()
    assert ns.a == 1  # instances still load


def test_an_unknown_torch_rebuild_function_is_refused():
    evil = b"\x80\x02ctorch._utils\n_rebuild_no_such_thing\n)R."
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        RestrictedUnpickler(io.BytesIO(evil)).load()


@pytest.mark.parametrize("kind", ["pickled os.system", "torchscript", "garbage"])
def test_an_unloadable_run_checkpoint_is_a_one_line_error(tmp_path, kind):
    rng = np.random.default_rng(0)
    paths = fake_run(tmp_path, "ter", "cnn", ["A", "B"], rng, 1.0)
    marker = tmp_path / "pwned"
    ckpt = paths.checkpoint("A")
    if kind == "pickled os.system":
        torch.save({"model": Payload(os.system, f"touch {marker}")}, ckpt)
    elif kind == "torchscript":
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), ckpt)
    else:
        ckpt.write_bytes(b"\x00" * 64)
    run = load_run(tmp_path, "ter", "cnn")
    with pytest.raises(TrainingError, match="cannot be loaded safely.*retrain the fold"):
        run.selected_state("A")
    assert not marker.exists()


def test_a_model_folder_with_its_own_code_is_never_run_or_prompted_for(tmp_path):
    from features.text import TextConfig, TextExtractor
    folder = save_tiny_text_encoder(tmp_path / "m")
    (folder / "modeling_evil.py").write_text(f"open({str(tmp_path / 'pwned')!r}, 'w')\n")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(cfg))
    out = subprocess.run([sys.executable, "-c", "from features.text import TextConfig, TextExtractor;"
                          f"TextExtractor(TextConfig(model={str(folder)!r}))"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert "[y/N]" not in out.stdout + out.stderr  # never a prompt
    assert not (tmp_path / "pwned").exists()
    try:  # either the standard BERT class loads, or a one-line StageError names the folder
        TextExtractor(TextConfig(model=str(folder)))
    except StageError as e:
        assert str(folder) in str(e)


def test_a_cluster_that_cannot_import_the_project_is_one_line_with_the_fix():
    """The scheduler unpickles the task graph: without the repository on its PYTHONPATH the
    error that comes back (re-raised in the client) names the fix."""
    from pipeline.scheduler import cluster_errors
    with pytest.raises(StageError, match="cannot import this project.*PYTHONPATH"):
        with cluster_errors("tcp://host:8786"):
            raise ModuleNotFoundError("No module named 'pipeline'")
    with pytest.raises(KeyError):  # anything else is not disguised
        with cluster_errors("tcp://host:8786"):
            raise KeyError("x")
