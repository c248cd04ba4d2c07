"""Where the pipeline's CPU time per image goes beyond the bare model, stage by stage, in the
pipeline's own layout (issue 21's end-to-end int8 target).

The pipeline runs one worker per interpreter, each reading, hashing, decoding, resizing and
embedding whole batches (`embed.pipeline.iter_embedded_batches`). This script runs the same
layout with each stage timed by the worker's thread CPU clock, for the float32 and the int8
model of a build (`--runtime litert-int8`: converted and checked as a build does, cached),
and beside it the bare model over the same pixels preprocessed beforehand (mode d of
`embed_throughput.py`). Rounds are interleaved; medians are printed. What the pipeline adds
per image is r = pipeline - bare; the end-to-end ratio (c8/c)/(d8/d) follows from r and the
two bare costs: (1 + r/f) / (1 + r/q).

    python benchmarks/reader_stages.py --backbone mobilenet_v2 --image-size 160 \\
        --weights ../shared/data/weights/mobilenet_v2_160_dogs_no_top.weights.h5
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_FOLDER = REPO.parent / "shared" / "data" / "woof-sample"


def timed_batch(model: Any, paths: list[str], size: int, table: np.ndarray,
                clock: dict[str, int]) -> None:
    """One worker's batch, as `embed.pipeline.read_batch` + `embed_image_batch` do it for
    JPEGs (decode_image's steps spelled out), each stage on the thread CPU clock."""
    import simplejpeg

    from embed.images import jpeg_orientation, resize_square
    from embed.runtimes import l2_normalise

    def stage(key: str, fn: Any, *args: Any) -> Any:
        start = time.thread_time_ns()
        out = fn(*args)
        clock[key] = clock.get(key, 0) + time.thread_time_ns() - start
        return out

    begin = time.thread_time_ns()
    pixels = np.zeros((len(paths), size, size, 3), np.uint8)
    for i, path in enumerate(paths):
        data = stage("read file", lambda p: Path(p).read_bytes(), path)
        stage("sha256", lambda d: hashlib.sha256(d).hexdigest(), data)
        stage("JPEG header + EXIF", lambda d: (simplejpeg.decode_jpeg_header(d),
                                               jpeg_orientation(d)), data)
        decoded = stage("JPEG decode (DCT-scaled)", lambda d: simplejpeg.decode_jpeg(
            d, "RGB", min_height=size, min_width=size), data)
        resized = stage("resize (OpenCV)", resize_square, decoded, size)
        stage("copy into the batch", pixels.__setitem__, i, resized)
    out = stage("table lookup into the input + invoke", model.run_pixels, pixels, table)
    stage("L2 normalise", l2_normalise, out)
    clock["pipeline, all stages"] = (clock.get("pipeline, all stages", 0)
                                     + time.thread_time_ns() - begin)


def measure(model: Any, paths: list[str], size: int, preprocessing: str, batch: int,
            rounds: int) -> dict[str, float]:
    """Median ms per image of each stage and of the bare model, over interleaved rounds."""
    from embed.backbones import preprocess_pixels, preprocess_table
    from embed.images import read_and_decode

    table = preprocess_table(preprocessing)
    if table is None:
        raise SystemExit(f"preprocessing {preprocessing!r} is not a table lookup")
    chunks = [paths[i:i + batch] for i in range(0, len(paths), batch)]
    inputs = [preprocess_pixels(np.stack([read_and_decode(p, size)[1].pixels for p in chunk]),
                                preprocessing) for chunk in chunks]
    figures: dict[str, list[float]] = {}
    workers = model.replicas
    for round_ in range(rounds + 1):  # the first round warms up
        clocks = [dict[str, int]() for _ in chunks]
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda job: timed_batch(model, job[0], size, table, job[1]),
                          zip(chunks, clocks, strict=True)))
        cpu = time.process_time()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(model.run, inputs))
        bare = (time.process_time() - cpu) / len(paths) * 1e3
        if round_ == 0:
            continue
        total: dict[str, int] = {}
        for clock in clocks:
            for key, ns in clock.items():
                total[key] = total.get(key, 0) + ns
        for key, ns in total.items():
            figures.setdefault(key, []).append(ns / len(paths) / 1e6)
        figures.setdefault("bare model (process CPU)", []).append(bare)
    return {key: statistics.median(values) for key, values in figures.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--weights", default="imagenet")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--limit", type=int, default=None)
    args = p.parse_args(argv)

    from embed.build import prepare_runtime
    from embed.embedder import load_embedder
    from embed.litert_model import TFLiteModel
    from embed.sources import folder_source

    embedder = load_embedder(args.backbone, args.weights, args.image_size, "litert-int8")
    source = folder_source(str(args.folder))
    prepare_runtime(source, embedder, args.batch_size)  # conversion and check, cached
    runtime = embedder.runtime
    files = {"float32": runtime.float_.cache_file, "int8": runtime.int8_file}
    paths = [str(item.ref) for item in source.items[: args.limit]
             if str(item.ref).lower().endswith((".jpg", ".jpeg"))]
    size, prep = embedder.image_size, embedder.spec.preprocessing
    results = {}
    for name, path in files.items():
        if path is None:
            print(f"no {name} model (int8: {runtime.describe().get('int8')})")
            continue
        model = TFLiteModel(path, runtime.float_.num_threads, replicas=runtime.float_.replicas)
        results[name] = measure(model, paths, size, prep, args.batch_size, args.rounds)
    print(f"{len(paths)} JPEGs at {size} px, {args.rounds} rounds, CPU ms per image (medians)")
    keys = list(next(iter(results.values())))
    print(f"  {'stage':40s}" + "".join(f"{name:>10s}" for name in results))
    for key in keys:
        print(f"  {key:40s}" + "".join(f"{res[key]:10.3f}" for res in results.values()))
    r = {name: res["pipeline, all stages"] - res["bare model (process CPU)"]
         for name, res in results.items()}
    print("  r = pipeline - bare: " + ", ".join(f"{k} {v:.3f}" for k, v in r.items()))
    if len(results) == 2:
        f, q = (results[k]["bare model (process CPU)"] for k in ("float32", "int8"))
        rf, rq = r["float32"], r["int8"]
        print(f"  (c8/c)/(d8/d) by CPU = {((f + rf) / (q + rq)) / (f / q):.3f} (target >= 0.85)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
