"""pipeline.rows: GIL-free row reads of shard datasets equal h5py's, and the bounded prefetch."""
import threading
import time

import h5py
import numpy as np
import pytest

from pipeline.rows import _byte_span, prefetch, read_rows
from pipeline.store import ShardWriter

SLICES = [slice(None), slice(0, 1), slice(3, 17), slice(10, None), slice(-5, None), slice(5, 500),
          slice(8, 8), slice(0, 20, 2)]


@pytest.fixture
def shard(tmp_path):
    """A shard written by the store's own writer: (T, L, D) fp16 layers, (T, 80) fp32, (T,) int16."""
    rng = np.random.default_rng(0)
    arrays = {"layers": rng.standard_normal((23, 3, 8)).astype(np.float16),
              "mel": rng.standard_normal((23, 80)).astype(np.float32),
              "ids": rng.integers(0, 99, 23).astype(np.int16), "empty": np.zeros((0, 4), np.float32)}
    w = ShardWriter(tmp_path / "s.h5", {"stage": "t"})
    w.write("utt/1", arrays, {"key": "k"})
    with h5py.File(w.commit(), "r") as f:
        yield f["utt/1"], arrays


@pytest.mark.parametrize("sl", SLICES, ids=str)
def test_read_rows_equals_h5py_for_every_slice(shard, sl):
    group, arrays = shard
    for name, want in arrays.items():
        got = read_rows(group[name], sl)
        assert got.dtype == want.dtype and got.shape == want[sl].shape, name
        np.testing.assert_array_equal(got, want[sl], err_msg=name)


def test_the_stores_layers_take_the_pread_path(shard):
    """The store writes contiguous datasets, so the fast path is the one actually used."""
    group, _ = shard
    for name in ("layers", "mel", "ids"):
        assert _byte_span(group[name], slice(None)) is not None, name


def test_chunked_or_compressed_datasets_go_through_h5py(tmp_path):
    data = np.arange(600, dtype=np.float32).reshape(100, 6)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f.create_dataset("gz", data=data, compression="gzip", chunks=(10, 6))
        f.create_dataset("chunked", data=data, chunks=(7, 6))
    with h5py.File(tmp_path / "c.h5", "r") as f:
        for name in ("gz", "chunked"):
            assert _byte_span(f[name], slice(None)) is None
            np.testing.assert_array_equal(read_rows(f[name], slice(12, 40)), data[12:40])


def test_a_truncated_file_is_an_error_not_short_data(tmp_path):
    data = np.ones((1000, 64), np.float32)
    with h5py.File(tmp_path / "t.h5", "w") as f:
        f.create_dataset("x", data=data)
    with h5py.File(tmp_path / "t.h5", "r") as f:
        ds = f["x"]
        offset = ds.id.get_offset()
        with open(tmp_path / "t.h5", "r+b") as raw:
            raw.truncate(offset + 100)
        with pytest.raises(OSError, match="ends before"):
            read_rows(ds)


def test_prefetch_keeps_order_and_stays_bounded():
    running, most = [0], [0]
    lock = threading.Lock()

    def work(i):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.002 * (i % 3))  # finish out of order
        with lock:
            running[0] -= 1
        return i * i

    started = []
    out = []
    for r in prefetch(lambda i: (started.append(i), work(i))[1], range(40), threads=4, ahead=6):
        assert len(started) <= len(out) + 6 + 1  # never more than `ahead` items beyond the consumer
        out.append(r)
    assert out == [i * i for i in range(40)]
    assert 1 < most[0] <= 4


def test_prefetch_raises_the_items_error():
    def work(i):
        if i == 5:
            raise ValueError("item 5 is bad")
        return i

    got = []
    with pytest.raises(ValueError, match="item 5"):
        for r in prefetch(work, range(10), threads=2, ahead=3):
            got.append(r)
    assert got == [0, 1, 2, 3, 4]
