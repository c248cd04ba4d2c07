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
