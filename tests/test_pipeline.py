from pathlib import Path

import numpy as np

from embed.embedder import load_embedder
from embed.pipeline import ReaderConfig, iter_image_batches
from embed.sources import ImageItem, folder_source
from tests.conftest import TINY, TINY_DIM, TINY_SIZE


def test_reader_batches_in_row_order_and_flags_bad_files(dataset: Path, tmp_path: Path) -> None:
    good = sorted((dataset / "samoyed").glob("*.jpg"))[:5]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    refs = [*map(str, good[:2]), str(bad), *map(str, good[2:])]
    items = [ImageItem(100 + i, r, None, "none") for i, r in enumerate(refs)]
    batches = list(iter_image_batches(items, ReaderConfig(TINY_SIZE, "tf", 4)))
    assert [len(b.row_ids) for b in batches] == [4, 2]
    row_ids = np.concatenate([b.row_ids for b in batches])
    assert row_ids.tolist() == list(range(100, 106))
    ok = np.concatenate([b.ok for b in batches])
    assert ok.tolist() == [True, True, False, True, True, True]
    assert "corrupt" in batches[0].reasons[2] or "not an image" in batches[0].reasons[2]
    inputs = batches[0].inputs
    assert inputs.dtype == np.float32 and inputs.shape == (4, TINY_SIZE, TINY_SIZE, 3)
    assert inputs[0].min() >= -1.0 and inputs[0].max() <= 1.0  # "tf" preprocessing
    assert len(batches[0].sha256[0]) == 64 and batches[0].widths[0] == 48


def test_embedded_batches_are_unit_vectors_for_ok_rows_only(dataset: Path) -> None:
    src = folder_source(dataset)
    embedder = load_embedder(TINY, "none", runtime="keras")
    steps = list(embedder.embedded_batches(src.items, 8))
    vectors = np.concatenate([s.vectors for s in steps])
    assert vectors.shape == (30, TINY_DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    # the same image embedded alone gives the same vector (no batch effects)
    single = embedder.embed_image_bytes(Path(src.items[3].ref).read_bytes())
    np.testing.assert_allclose(single, vectors[3], atol=1e-5)


def test_pipeline_threads_are_set_deliberately(monkeypatch) -> None:
    from embed.environment import cpu_cores
    from embed.pipeline import decode_threads, pipeline_options

    options = pipeline_options(3)
    assert options.threading.private_threadpool_size == 3
    assert options.threading.max_intra_op_parallelism == 1
    assert options.autotune.enabled is False  # its teardown cost ~1.5 s per pass
    assert options.deterministic is True
    monkeypatch.delenv("EMBED_DOGS_DECODE_THREADS", raising=False)
    assert decode_threads() == cpu_cores()
    monkeypatch.setenv("EMBED_DOGS_DECODE_THREADS", "1")
    assert decode_threads() == 1


def test_one_decode_thread_gives_the_same_batches(dataset: Path) -> None:
    items = folder_source(dataset).items[:10]
    one = list(iter_image_batches(items, ReaderConfig(TINY_SIZE, "tf", 4, threads=1)))
    two = list(iter_image_batches(items, ReaderConfig(TINY_SIZE, "tf", 4, threads=2)))
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a.row_ids, b.row_ids)
        np.testing.assert_array_equal(a.inputs, b.inputs)


class RecordingRuntime:
    """A runtime serving `concurrency` calls at once: returns each row's mean pixel, and
    records which threads embedded and how many calls overlapped."""

    name = "fake"

    def __init__(self, concurrency: int) -> None:
        import threading

        self.concurrency = concurrency
        self.threads: set[str] = set()
        self.active = 0
        self.most_active = 0
        self._lock = threading.Lock()

    def embed(self, batch: np.ndarray) -> np.ndarray:
        import threading
        import time

        with self._lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            self.threads.add(threading.current_thread().name)
        time.sleep(0.02)  # an invoke: the GIL is free meanwhile
        with self._lock:
            self.active -= 1
        return np.stack([batch.reshape(len(batch), -1).mean(1), np.ones(len(batch))], 1)

    def embed_pixels(self, pixels: np.ndarray, preprocessing: str) -> np.ndarray:
        from embed.backbones import preprocess_pixels

        return self.embed(preprocess_pixels(pixels, preprocessing))


def test_concurrent_workers_decode_and_embed_in_order(dataset: Path, tmp_path: Path) -> None:
    from embed.pipeline import iter_embedded_batches

    good = sorted(dataset.rglob("*.jpg"))[:20]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    refs = [*map(str, good[:7]), str(bad), *map(str, good[7:])]
    items = [ImageItem(i, r, None, "none") for i, r in enumerate(refs)]
    config = ReaderConfig(TINY_SIZE, "tf", 4)
    serial = list(iter_embedded_batches(items, config, RecordingRuntime(1)))
    runtime = RecordingRuntime(3)
    parallel = list(iter_embedded_batches(items, config, runtime))
    assert runtime.most_active > 1 and len(runtime.threads) > 1  # really side by side
    assert [s.batch.row_ids.tolist() for s in parallel] == [list(range(i, min(i + 4, 21)))
                                                          for i in range(0, 21, 4)]
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a.vectors, b.vectors)
        assert a.batch.reasons == b.batch.reasons and a.batch.sha256 == b.batch.sha256
    assert parallel[1].batch.ok.tolist() == [True, True, True, False]
    assert len(parallel[1].vectors) == 3  # only the usable rows are embedded


def test_reader_takes_encoded_bytes_like_files(dataset: Path) -> None:
    from embed.pipeline import iter_payload_batches

    files = sorted(dataset.rglob("*.jpg"))[:6]
    config = ReaderConfig(TINY_SIZE, "tf", 4)
    from_files = list(iter_payload_batches(list(range(6)), [str(f) for f in files], config))
    from_bytes = list(iter_payload_batches(list(range(6)), [f.read_bytes() for f in files],
                                           config))
    for a, b in zip(from_files, from_bytes, strict=True):
        np.testing.assert_array_equal(a.inputs, b.inputs)
        assert a.sha256 == b.sha256 and a.widths.tolist() == b.widths.tolist()


def test_preprocess_pixels_matches_preprocess() -> None:
    from embed.backbones import preprocess
    from embed.pipeline import preprocess_pixels

    pixels = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    for mode in ("tf", "caffe", "none"):
        got = preprocess_pixels(pixels, mode)
        assert got.dtype == np.float32
        want = np.asarray(preprocess(pixels.astype(np.float32), mode), np.float32)
        np.testing.assert_array_equal(got, want)
