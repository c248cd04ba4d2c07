"""Embedding throughput on CPU: the tutorial way against the product's pipeline and runtimes.

Modes, each run in its own fresh process so that its peak RSS is its own:
  a  tutorial: keras.utils.load_img + resize, then Keras `model.predict` per batch
  b  product pipeline (tf.data decode/resize, prefetch) with the Keras runtime
  c  product pipeline with the LiteRT (XNNPACK) runtime
  d  bare LiteRT inference on tensors decoded beforehand: the ceiling for c

Each figure is the median images/s over --repeats full passes; one warm-up batch (model
tracing, LiteRT conversion/parity check, tf.data start-up) is excluded.

    python benchmarks/embed_throughput.py --backbone mobilenet_v2 --image-size 160 \
        --weights ../shared/data/weights/mobilenet_v2_160_dogs_no_top.weights.h5
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEFAULT_FOLDER = REPO.parent / "shared" / "data" / "woof-sample"
MODES = {
    "a": "tutorial: load_img + model.predict",
    "b": "pipeline + Keras runtime",
    "c": "pipeline + LiteRT runtime",
    "d": "bare LiteRT on decoded tensors",
}


def write_synthetic_jpegs(root: Path, n: int = 240, classes: int = 4, seed: int = 0) -> Path:
    """Seeded random JPEGs of a typical photo size in a few class folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i:04d}.jpg", quality=90)
    return root


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _batches(seq: list[Any], size: int) -> list[list[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def _timed_passes(one_pass: Any, repeats: int) -> list[float]:
    """Seconds per full pass; `one_pass` returns the number of images it embedded."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        n = one_pass()
        rates.append(n / (time.perf_counter() - start))
    return rates


def run_mode(mode: str, args: dict[str, Any]) -> dict[str, Any]:
    """One mode, start to finish, in the current process."""
    import keras

    from embed.backbones import preprocess
    from embed.embedder import load_embedder
    from embed.pipeline import ReaderConfig, iter_embedded_batches, iter_image_batches
    from embed.sources import folder_source

    runtime = "litert" if mode in ("c", "d") else "keras"
    embedder = load_embedder(args["backbone"], args["weights"], args["image_size"], runtime)
    items = folder_source(args["folder"]).items[: args["limit"]]
    size, bs, prep = embedder.image_size, args["batch_size"], embedder.spec.preprocessing
    config = ReaderConfig(size, prep, bs)
    result: dict[str, Any] = {"images": len(items)}

    if mode == "a":
        model = embedder.model
        paths = [item.ref for item in items]

        def tutorial(paths: list[str]) -> int:
            for chunk in _batches(paths, bs):
                pixels = np.stack(
                    [
                        keras.utils.img_to_array(keras.utils.load_img(p, target_size=(size, size)))
                        for p in chunk
                    ]
                )
                model.predict(preprocess(pixels, prep), verbose=0)
            return len(paths)

        tutorial(paths[:bs])  # warm-up
        result["rates"] = _timed_passes(lambda: tutorial(paths), args["repeats"])

    elif mode in ("b", "c"):

        def pipeline(items: list[Any]) -> int:
            n = 0
            for step in iter_embedded_batches(items, config, embedder.runtime):
                n += len(step.vectors)
            return n

        pipeline(items[:bs])  # warm-up; for LiteRT this is the parity-checked first batch
        result["rates"] = _timed_passes(lambda: pipeline(items), args["repeats"])

    else:  # d
        decoded = [b.inputs[b.ok] for b in iter_image_batches(items, config)]
        embedder.runtime.embed(decoded[0])  # warm-up + parity check

        def bare() -> int:
            for inputs in decoded:
                embedder.runtime.embed(inputs)
            return sum(len(x) for x in decoded)

        result["rates"] = _timed_passes(bare, args["repeats"])

    result["runtime"] = embedder.runtime.describe()
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def _child(mode: str, args: dict[str, Any], queue: Any) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        queue.put(run_mode(mode, args))
    except BaseException as exc:  # report, don't hang the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})
        raise


def run_isolated(mode: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run a mode in a fresh spawned process, so each peak RSS is that mode's alone."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(mode, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _load() -> str:
    """The 1/5/15-minute load average: other processes share these cores."""
    return ",".join(f"{x:.2f}" for x in os.getloadavg())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--folder",
        type=Path,
        default=DEFAULT_FOLDER,
        help="image folder (default ../shared/data/woof-sample; synthetic if absent)",
    )
    p.add_argument("--backbone", default="mobilenet_v2", help="registry name")
    p.add_argument("--image-size", type=int, default=None, help="default: the backbone's own")
    p.add_argument("--weights", default="none", help="none (random), imagenet or a file")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--modes", default="abcd", help="subset of abcd to run")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="LiteRT cache root (sets EMBED_DOGS_CACHE; default: the user cache)",
    )
    args = p.parse_args(argv)
    if args.repeats < 3:
        p.error("--repeats must be at least 3 (the figure is a median)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the chosen modes and print one table."""
    args = parse_args(argv)
    if args.cache_dir:
        os.environ["EMBED_DOGS_CACHE"] = str(Path(args.cache_dir).resolve())
    tmp = None
    folder = args.folder
    if not folder.is_dir():
        tmp = tempfile.TemporaryDirectory(prefix="embed-bench-")
        folder = write_synthetic_jpegs(Path(tmp.name))
        print(f"{args.folder} not found; using synthetic JPEGs in {folder}")
    shared = {
        "folder": str(folder),
        "backbone": args.backbone,
        "image_size": args.image_size,
        "weights": args.weights,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "limit": args.limit,
    }
    print(
        f"backbone={args.backbone} image_size={args.image_size or 'default'} "
        f"weights={args.weights} batch={args.batch_size} repeats={args.repeats} "
        f"folder={folder} cpus={os.cpu_count()} load={_load()}"
    )

    results: dict[str, dict[str, Any]] = {}
    for mode in args.modes:
        res = run_isolated(mode, shared)
        results[mode] = res
        if "error" in res:
            print(f"  ({mode}) {MODES[mode]:<36} FAILED: {res['error']}")
            continue
        res["median"] = statistics.median(res["rates"])
        rates = ", ".join(f"{r:.1f}" for r in res["rates"])
        print(
            f"  ({mode}) {MODES[mode]:<36} {res['median']:8.1f} img/s  "
            f"[{rates}]  peak RSS {res['peak_rss_mb']:.0f} MiB  "
            f"runtime={res['runtime']['name']}  n={res['images']}"
        )

    def ratio(x: str, y: str) -> str:
        if "median" in results.get(x, {}) and "median" in results.get(y, {}):
            return f"{results[x]['median'] / results[y]['median']:.2f}x"
        return "n/a"

    print(
        f"  c/a (product LiteRT vs tutorial) = {ratio('c', 'a')}   "
        f"c/d (share of bare LiteRT ceiling) = {ratio('c', 'd')}   "
        f"b/a = {ratio('b', 'a')}"
    )
    for mode in "cd":
        rt = results.get(mode, {}).get("runtime")
        if rt:
            par = rt.get("parity") or {}
            print(
                f"  parity ({mode}): mean cosine {par.get('mean_cosine', float('nan')):.6f}  "
                f"min cosine {par.get('min_cosine', float('nan')):.6f}  "
                f"passed={par.get('passed')}  threads={rt.get('num_threads')}  "
                f"cache={rt.get('cache_file')}"
            )
            break
    print(f"  load average at the end: {_load()}")
    if tmp is not None:
        tmp.cleanup()
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
