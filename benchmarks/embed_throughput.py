"""Embedding throughput on CPU: the tutorial way against the product's pipeline and runtimes,
float32 against int8, at one or more input sizes, with int8's accuracy deltas, in one run.

Modes, each run in its own fresh process so that its peak RSS is its own:
  a   tutorial: keras.utils.load_img + resize, then Keras `model.predict` per batch
  b   product pipeline (threaded reader, decode + resize) with the Keras runtime
  c   product pipeline with the LiteRT (XNNPACK) float32 runtime
  d   bare LiteRT float32 on tensors decoded beforehand: the ceiling for c. Two layouts are
      timed and the faster one is the ceiling: one single-threaded interpreter per core fed
      concurrently (what the pipeline uses), and one interpreter with a thread per core.
  c8  product pipeline with the int8 runtime (`--runtime litert-int8`), calibrated and
      task-checked on the folder exactly as build-index does (embed.build.prepare_runtime)
  d8  bare LiteRT int8, as d
  r   the reader alone (read, hash, decode, resize, preprocess; no model): where the time
      goes besides the invoke
  i   c, d, c8 and d8 interleaved in one process, pass after pass: the ratios c/d, c8/d8
      and int8/float32 from passes run side by side in time. On a shared virtual machine
      the speed of the cores drifts by up to 40 % within minutes (measured: bare float32 at
      160 px ran at 405 and at 571 img/s a minute apart), so ratios of modes run minutes
      apart in separate processes are mostly noise; these are the headline ratios.

Every row also shows the process CPU milliseconds per image: on a machine whose cores the
model already fills, the end-to-end CPU is the bare model's plus the reader's, and the
ceiling c/d is roughly invoke / (invoke + reader).

Each figure is the median images/s over --repeats full passes; one warm-up batch and the
one-time work (conversion, parity check, calibration, task check) are excluded. With the
c and c8 modes, the accuracy deltas of int8 against float32 on the folder are printed too:
logistic-regression top-1 (5-fold cross-validation averaged over 3 fold assignments),
same-breed precision@5 (test-split queries against the train split) and neighbour
overlap@10.

    python benchmarks/embed_throughput.py --backbone mobilenet_v2 --sizes 160 224 \
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
    "c": "pipeline + LiteRT float32",
    "d": "bare LiteRT float32",
    "c8": "pipeline + LiteRT int8",
    "d8": "bare LiteRT int8",
    "r": "reader only (decode, resize)",
    "i": "c, d, c8, d8 interleaved",
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


CPU_MS: list[float] = []  # process CPU ms per image of each timed pass, in this process


def _timed_passes(one_pass: Any, repeats: int) -> list[float]:
    """Images/s per full pass; `one_pass` returns the number of images it embedded. The
    process CPU time per image of each pass goes to CPU_MS."""
    rates = []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        n = one_pass()
        rates.append(n / (time.perf_counter() - start))
        CPU_MS.append((time.process_time() - cpu) / max(n, 1) * 1e3)
    return rates


def _runtime_for(mode: str) -> str:
    return {"a": "keras", "b": "keras", "c": "litert", "d": "litert", "r": "keras"}.get(
        mode, "litert-int8")


def _bare_pass(runtime: Any, decoded: list[np.ndarray], pool: Any) -> Any:
    """One pass of the bare model over inputs decoded beforehand, one batch per interpreter
    at a time (the pipeline's layout); returns the number of images."""
    total = sum(len(x) for x in decoded)

    def one() -> int:
        list(pool.map(runtime.embed, decoded))
        return total
    return one


def interleaved(runtime: Any, items: list[Any], config: Any, repeats: int
                ) -> dict[str, Any]:
    """c, d, c8, d8 one pass each per round, `repeats` rounds: every ratio is taken within a
    round and the median over rounds is reported."""
    from concurrent.futures import ThreadPoolExecutor

    from embed.pipeline import iter_embedded_batches, iter_image_batches_threads

    float_rt = runtime.float_
    decoded = [b.inputs[b.ok] for b in iter_image_batches_threads(items, config)]
    vectors: dict[str, list[np.ndarray]] = {"c": [], "c8": []}

    def pipeline(rt: Any, key: str) -> Any:
        def one() -> int:
            vectors[key].clear()
            for step in iter_embedded_batches(items, config, rt):
                vectors[key].append(step.vectors)
            return sum(len(v) for v in vectors[key])
        return one

    with ThreadPoolExecutor(max(1, float_rt.concurrency)) as pool:
        passes = {"c": pipeline(float_rt, "c"), "d": _bare_pass(float_rt, decoded, pool),
                  "c8": pipeline(runtime, "c8"), "d8": _bare_pass(runtime, decoded, pool)}
        for one in passes.values():  # warm-up, outside the timing
            one()
        rounds: dict[str, list[float]] = {k: [] for k in passes}
        cpu: dict[str, list[float]] = {k: [] for k in passes}  # process CPU ms per image
        for _ in range(repeats):
            for key, one in passes.items():
                rounds[key].extend(_timed_passes(one, 1))
                cpu[key].append(CPU_MS[-1])
    ratios = {
        "c/d": [c / d for c, d in zip(rounds["c"], rounds["d"], strict=True)],
        "c8/d8": [c / d for c, d in zip(rounds["c8"], rounds["d8"], strict=True)],
        "d8/d": [c / d for c, d in zip(rounds["d8"], rounds["d"], strict=True)],
        "c8/c": [c / d for c, d in zip(rounds["c8"], rounds["c"], strict=True)],
    }
    # the same ratios from CPU time (images per CPU-second): what a machine with the cores to
    # itself would see; other processes' load moves wall time far more than CPU time
    cpu_ratios = {
        "c/d": [d / c for c, d in zip(cpu["c"], cpu["d"], strict=True)],
        "c8/d8": [d / c for c, d in zip(cpu["c8"], cpu["d8"], strict=True)],
        "d8/d": [d / c for c, d in zip(cpu["d8"], cpu["d"], strict=True)],
        "c8/c": [d / c for c, d in zip(cpu["c8"], cpu["c"], strict=True)],
    }
    return {"rounds": rounds, "ratios": ratios, "round_cpu_ms": cpu, "cpu_ratios": cpu_ratios,
            "vectors_c": np.concatenate(vectors["c"]),
            "vectors_c8": np.concatenate(vectors["c8"])}


def auto_choice(args: dict[str, Any], source: Any, result: dict[str, Any],
                paid: dict[str, float]) -> dict[str, Any]:
    """What `--runtime auto` chooses for this folder (a real build's preparation, so with
    what this run cached), and what its rule says on this run's own interleaved figures for
    this folder and for 100,000 images, cold (one-time costs as paid here) and warm."""
    from embed.build import prepare_runtime
    from embed.embedder import load_embedder
    from embed.environment import cpu_cores
    from embed.int8_choice import Outlook, decide_int8, read_speed, remaining_costs
    from embed.quantise import CHECK_ITEMS

    auto = load_embedder(args["backbone"], args["weights"], args["image_size"], "auto")
    prepare_runtime(source, auto, args["batch_size"])
    d, d8 = (statistics.median(result["rounds"][k]) for k in ("d", "d8"))
    cores = cpu_cores()
    record = read_speed(auto.runtime.float_runtime.describe()["cache_key"])
    rows = min(len(source.items), CHECK_ITEMS)
    cold = remaining_costs(record, False, False, rows, cores)  # as last paid here, or priors
    cold.update({k: paid[f"int8 {k}"] for k in ("conversion", "check") if f"int8 {k}" in paid})
    rule = {f"{n:,} images, {state}": decide_int8(Outlook(n, cores / d, d8 / d, cores,
                                                          costs)).line
            for n in (len(source.items), 100_000)
            for state, costs in (("cold", cold), ("warm", {}))}
    return {"chose": auto.runtime.describe().get("decision"), "rule": rule}


def run_mode(mode: str, args: dict[str, Any]) -> dict[str, Any]:
    """One mode, start to finish, in the current process."""
    from concurrent.futures import ThreadPoolExecutor

    import keras

    from embed.backbones import preprocess
    from embed.build import prepare_runtime
    from embed.embedder import load_embedder
    from embed.environment import cpu_cores
    from embed.litert_model import TFLiteModel
    from embed.pipeline import ReaderConfig, iter_embedded_batches, iter_image_batches_threads
    from embed.sources import folder_source

    embedder = load_embedder(args["backbone"], args["weights"], args["image_size"],
                             _runtime_for(mode))
    source = folder_source(args["folder"])
    items = source.items[: args["limit"]]
    size, bs, prep = embedder.image_size, args["batch_size"], embedder.spec.preprocessing
    config = ReaderConfig(size, prep, bs)
    result: dict[str, Any] = {"images": len(items)}
    runtime = embedder.runtime
    if mode in ("c8", "d8", "i"):
        prepare_runtime(source, embedder, bs)  # calibration + task check, as a build does
        if not runtime.use_int8_ and runtime._int8_model is not None:
            runtime.use_int8_ = True  # measure int8 anyway; the verdict is printed
            result["forced_int8"] = True

    if mode == "i":
        result.update(interleaved(runtime, items, config, args["repeats"]))
        result["rates"] = result["rounds"]["c8"]
        int8 = runtime.describe().get("int8") or {}
        paid = {k: v for k, v in runtime.seconds.items()  # only work done in this run
                if (k == "int8 conversion" and int8.get("converted"))
                or (k == "int8 check" and "top1_float32" in int8 and not int8.get("check_cached"))}
        result["auto"] = auto_choice(args, source, result, paid)
    elif mode == "a":
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

    elif mode == "r":
        reader = ReaderConfig(size, prep, bs, threads=cpu_cores())

        def read() -> int:
            return sum(len(b.row_ids) for b in iter_image_batches_threads(items, reader))

        read()
        result["rates"] = _timed_passes(read, args["repeats"])

    elif mode in ("b", "c", "c8"):
        vectors: list[np.ndarray] = []

        def pipeline(items: list[Any]) -> int:
            vectors.clear()
            n = 0
            for step in iter_embedded_batches(items, config, runtime):
                vectors.append(step.vectors)
                n += len(step.vectors)
            return n

        pipeline(items[:bs])  # warm-up; for LiteRT this is the parity-checked first batch
        result["rates"] = _timed_passes(lambda: pipeline(items), args["repeats"])
        if mode != "b":
            result["vectors"] = np.concatenate(vectors)

    else:  # d, d8
        decoded = [b.inputs[b.ok] for b in iter_image_batches_threads(items, config)]
        runtime.embed(decoded[0])  # warm-up + parity check
        total = sum(len(x) for x in decoded)
        replicas = getattr(runtime, "concurrency", 1)
        with ThreadPoolExecutor(replicas) as pool:

            def concurrent() -> int:
                list(pool.map(runtime.embed, decoded))
                return total

            layouts = {f"{replicas}x1": _timed_passes(concurrent, args["repeats"])}
        wide = TFLiteModel(runtime.cache_file, num_threads=cpu_cores(), max_rows=8)
        wide.run(decoded[0])

        def one_wide() -> int:
            for inputs in decoded:
                wide.run(inputs)
            return total

        layouts[f"1x{cpu_cores()}"] = _timed_passes(one_wide, args["repeats"])
        result["layouts"] = {k: statistics.median(v) for k, v in layouts.items()}
        result["rates"] = max(layouts.values(), key=statistics.median)

    result["cpu_ms"] = statistics.median(CPU_MS)
    result["runtime"] = runtime.describe()
    result["fixed"] = {k: round(v, 2) for k, v in (
        getattr(getattr(runtime, "float_", runtime), "seconds_", {}) | getattr(
            runtime, "seconds_", {})).items()}
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


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            flags = sorted({w for w in Path("/proc/cpuinfo").read_text().split()
                            if w.startswith("avx512")})
            return f"{line.split(':', 1)[1].strip()} ({' '.join(flags) or 'no AVX-512'})"
    return "unknown CPU"


def accuracy(folder: str, limit: int | None, reference: np.ndarray, candidate: np.ndarray
             ) -> dict[str, float]:
    """int8 against float32 on the folder's own labels and split."""
    from embed.quantise import (
        CHECK_REPEATS,
        OVERLAP_K,
        cross_validated_top1,
        fold_of,
        neighbour_overlap,
    )
    from embed.sources import folder_source
    from index.quality import same_label_precision_at_k

    items = folder_source(folder).items[:limit]
    labels = np.array([it.label for it in items], dtype=object)
    train = np.array([it.split == "train" for it in items])
    out: dict[str, float] = {}
    for name, x in (("float32", reference), ("int8", candidate)):
        tops = [cross_validated_top1(x, list(labels), fold_of(list(labels), seed=r))
                for r in range(CHECK_REPEATS)]
        out[f"top1_{name}"] = float(np.mean(tops))
        out[f"p@5_{name}"] = same_label_precision_at_k(x[~train], labels[~train], x[train],
                                                       labels[train], 5)
    out[f"overlap@{OVERLAP_K}"] = neighbour_overlap(reference, candidate)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--folder",
        type=Path,
        default=DEFAULT_FOLDER,
        help="image folder (default ../shared/data/woof-sample; synthetic if absent)",
    )
    p.add_argument("--backbone", default="mobilenet_v2", help="registry name")
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="input sizes, each a block of the table (default: the backbone's own)")
    p.add_argument("--image-size", type=int, default=None, help="one size (same as --sizes N)")
    p.add_argument("--weights", default="none", help="none (random), imagenet or a file")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--modes", default="a,b,c,d,c8,d8,r,i",
                   help="comma-separated subset of a,b,c,d,c8,d8,r,i (or letters, e.g. abcd)")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="LiteRT cache root (sets EMBED_DOGS_CACHE; default: the user cache)",
    )
    args = p.parse_args(argv)
    if args.repeats < 3:
        p.error("--repeats must be at least 3 (the figure is a median)")
    args.modes = args.modes.split(",") if "," in args.modes or args.modes in MODES else list(
        args.modes)
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        p.error(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    args.sizes = args.sizes or [args.image_size]
    return args


def run_size(size: int | None, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    shared = {
        "folder": str(folder), "backbone": args.backbone, "image_size": size,
        "weights": args.weights, "batch_size": args.batch_size, "repeats": args.repeats,
        "limit": args.limit,
    }
    print(f"\n{args.backbone} at {size or 'its default size'} px, load {_load()}")
    results: dict[str, dict[str, Any]] = {}
    for mode in args.modes:
        res = run_isolated(mode, shared)
        results[mode] = res
        if "error" in res:
            print(f"  ({mode:>2}) {MODES[mode]:<28} FAILED: {res['error']}")
            continue
        if mode == "i":
            print(f"  ({mode:>2}) {MODES[mode]:<28} (ratios below)  peak RSS "
                  f"{res['peak_rss_mb']:5.0f} MiB  runtime={res['runtime']['name']}")
            continue
        res["median"] = statistics.median(res["rates"])
        extra = ""
        if "layouts" in res:
            extra = "  layouts " + ", ".join(f"{k}: {v:.0f}" for k, v in res["layouts"].items())
        if res.get("forced_int8"):
            extra += "  (int8 failed its task check; measured anyway)"
        print(f"  ({mode:>2}) {MODES[mode]:<28} {res['median']:7.1f} img/s  CPU "
              f"{res['cpu_ms']:5.2f} ms/img  peak RSS {res['peak_rss_mb']:5.0f} MiB  "
              f"runtime={res['runtime']['name']}{extra}")

    def ratio(x: str, y: str) -> str:
        if "median" in results.get(x, {}) and "median" in results.get(y, {}):
            return f"{results[x]['median'] / results[y]['median']:.2f}"
        return "n/a"

    print(f"  c/d = {ratio('c', 'd')}   c8/d8 = {ratio('c8', 'd8')}   int8/float32: bare "
          f"d8/d = {ratio('d8', 'd')}, end to end c8/c = {ratio('c8', 'c')}   against the "
          f"tutorial: c/a = {ratio('c', 'a')}, c8/a = {ratio('c8', 'a')}, b/a = {ratio('b', 'a')}")
    for mode in ("c", "c8"):
        if "fixed" in results.get(mode, {}):
            print(f"  one-time costs ({mode}, not in the figures above): "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in results[mode]["fixed"].items()))
    if "ratios" in results.get("i", {}):
        res = results["i"]
        rates = "  ".join(f"{k} {statistics.median(v):.1f}" for k, v in res["rounds"].items())
        print(f"  interleaved, {len(res['rounds']['c'])} rounds, img/s: {rates}")
        print("  interleaved ratios (median of rounds [min-max]): " + "   ".join(
            f"{k} = {statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]"
            for k, v in res["ratios"].items()))
        ratios = {k: statistics.median(v) for k, v in res["ratios"].items()}
        print(f"  end-to-end int8 gain against the bare one: (c8/c) / (d8/d) ="
              f" {ratios['c8/c'] / ratios['d8/d']:.2f} (target >= 0.85)")
        if res.get("cpu_ratios"):
            cpu_ms = "  ".join(f"{k} {statistics.median(v):.2f}"
                               for k, v in res["round_cpu_ms"].items())
            print(f"  CPU ms/image (median of rounds): {cpu_ms}")
            print("  the same ratios by CPU time (img per CPU-s): " + "   ".join(
                f"{k} = {statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]"
                for k, v in res["cpu_ratios"].items()))
            by_cpu = {k: statistics.median(v) for k, v in res["cpu_ratios"].items()}
            print(f"  by CPU time: (c8/c) / (d8/d) = {by_cpu['c8/c'] / by_cpu['d8/d']:.2f}")
        if res.get("auto"):
            print(f"  --runtime auto chose: {res['auto']['chose']}")
            for case, line in res["auto"]["rule"].items():
                print(f"    auto's rule on these figures, {case}: {line}")
    int8 = (results.get("c8", results.get("i", {})).get("runtime") or {}).get("int8")
    if int8:
        print(f"  build's int8 task check: passed={int8.get('passed')} top-1 "
              f"{int8.get('top1_float32')} -> {int8.get('top1_int8')} "
              f"({int8.get('top1_drop_points')} points), overlap@10 {int8.get('overlap_at_10')}"
              f" on {int8.get('rows')} images" + (" (cached verdict)" if int8.get(
                  "check_cached") else ""))
    pair = None
    if "vectors_c" in results.get("i", {}):
        pair = results["i"]["vectors_c"], results["i"]["vectors_c8"]
    elif "vectors" in results.get("c", {}) and "vectors" in results.get("c8", {}):
        pair = results["c"]["vectors"], results["c8"]["vectors"]
    if pair is not None:
        acc = accuracy(str(folder), args.limit, *pair)
        print(f"  accuracy on {len(pair[0])} images, float32 -> int8: top-1 "
              f"{acc['top1_float32']:.4f} -> {acc['top1_int8']:.4f} "
              f"({100 * (acc['top1_int8'] - acc['top1_float32']):+.2f} points), precision@5 "
              f"{acc['p@5_float32']:.4f} -> {acc['p@5_int8']:.4f} "
              f"({100 * (acc['p@5_int8'] - acc['p@5_float32']):+.2f} points), overlap@10 "
              f"{acc['overlap@10']:.3f}")
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the chosen modes at each size and print one table per size."""
    args = parse_args(argv)
    if args.cache_dir:
        os.environ["EMBED_DOGS_CACHE"] = str(Path(args.cache_dir).resolve())
    tmp = None
    folder = args.folder
    if not folder.is_dir():
        tmp = tempfile.TemporaryDirectory(prefix="embed-bench-")
        folder = write_synthetic_jpegs(Path(tmp.name))
        print(f"{args.folder} not found; using synthetic JPEGs in {folder}")
    print(f"weights={args.weights} batch={args.batch_size} repeats={args.repeats} "
          f"folder={folder} cpus={os.cpu_count()} CPU {cpu_name()}")
    failed = False
    for size in args.sizes:
        results = run_size(size, args, folder)
        failed = failed or any("error" in r for r in results.values())
    print(f"\nload average at the end: {_load()}")
    if tmp is not None:
        tmp.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
