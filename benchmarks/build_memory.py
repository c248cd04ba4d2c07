"""Peak memory of `embed-dogs build-index` against collection size: it must not grow with it.

Writes N seeded synthetic JPEGs of photo size (500x375 and 375x500, smooth content with some
noise, ~30-60 KB each) in a few class folders, then runs the real CLI on each collection in a
fresh subprocess and reads that process's own peak RSS (``os.wait4``). A small build with an
empty LiteRT cache runs first, so conversion is reported on its own line and the measured
builds start from a warm cache, as every build after the first does.

    python benchmarks/build_memory.py                      # 1,000 and 5,000 images
    python benchmarks/build_memory.py --sizes 1000 5000 --backbone efficientnet_v2_b0
    python benchmarks/build_memory.py --phases --sizes 5000  # where the memory goes

Targets (issue 3): peak ≤ 1.5 GB at 5,000 images, and 5k/1k within 10 %.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # --phases imports this checkout, not an installed embed-dogs
    sys.path.insert(0, str(REPO))
TARGET_BYTES = 1.5e9
CLASSES = ("beagle", "chihuahua", "samoyed", "pug")


def write_jpegs(root: Path, n: int, seed: int = 0) -> Path:
    """n seeded JPEGs: low-frequency colour fields plus noise, so they compress like photos."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = (500, 375) if i % 4 else (375, 500)
        folder = root / CLASSES[i % len(CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
        arr = np.asarray(img, np.int16) + rng.normal(0, 12, (h, w, 3)).astype(np.int16)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(
            folder / f"img_{i:05d}.jpg", quality=90
        )
    return root


def subset(src: Path, dst: Path, n: int) -> Path:
    """The first n images of src (by name), hard-linked into dst."""
    files = sorted(src.rglob("*.jpg"), key=lambda p: p.name)[:n]
    for f in files:
        target = dst / f.parent.name / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(f, target)
    return dst


def run_build(source: Path, out: Path, args: argparse.Namespace, cache: Path) -> dict:
    """One `embed-dogs build-index` in a fresh process: its peak RSS, wall time and rate."""
    cmd = [
        sys.executable, "-m", "ui", "build-index", "--source", str(source), "--out", str(out),
        "--backbone", args.backbone, "--weights", args.weights, "--overwrite",
    ]
    if args.image_size:
        cmd += ["--image-size", str(args.image_size)]
    if args.batch_size:
        cmd += ["--batch-size", str(args.batch_size)]
    env = {**os.environ, "EMBED_DOGS_CACHE": str(cache), "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.perf_counter()
    # cwd: `-m ui` runs this checkout, not whichever embed-dogs the environment installed
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"build-index failed ({code}):\n{output[-3000:]}")
    n = sum(1 for _ in source.rglob("*.jpg"))
    manifest = _manifest(out)
    return {
        "images": n,
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux: KiB
        "wall_s": wall,
        "images_per_s": n / wall,
        "embed_images_per_s": manifest.get("embeddings", {}).get("images_per_second"),
        "runtime": manifest.get("backbone", {}).get("runtime", {}).get("name"),
    }


def _manifest(out: Path) -> dict:
    import json

    path = out / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def phases(args: argparse.Namespace, source: Path, cache: Path) -> None:
    """RSS after each step of a build, in this process (the breakdown behind the peak)."""
    import resource

    def rss() -> str:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        now = pages * os.sysconf("SC_PAGE_SIZE") / 2**20
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return f"RSS {now:6.0f} MiB   peak {peak:6.0f} MiB"

    os.environ["EMBED_DOGS_CACHE"] = str(cache)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    print(f"  start                          {rss()}")
    import tensorflow  # noqa: F401

    print(f"  import tensorflow              {rss()}")
    from embed.build import embed_source_into
    from embed.bundle import new_manifest
    from embed.staging import staged_bundle
    from ui.workflows import (
        BuildConfig,
        fit_default_head,
        index_bundle,
        open_build_embedder,
        open_build_source,
    )

    out = Path(tempfile.mkdtemp(prefix="phases-")) / "bundle"
    config = BuildConfig(source=str(source), out=out, backbone=args.backbone,
                         weights=args.weights, image_size=args.image_size, overwrite=True,
                         **({"batch_size": args.batch_size} if args.batch_size else {}))
    embedder = open_build_embedder(config)
    print(f"  backbone + LiteRT loaded       {rss()}   runtime={embedder.runtime.name}")
    src = open_build_source(config)
    with staged_bundle(out, overwrite=True) as bundle:
        bundle.write_manifest(new_manifest(embedder.identity(), src.describe()))
        first = [True]

        def progress(_: int) -> None:
            if first[0]:
                print(f"  first batch (parity check)     {rss()}")
                first[0] = False

        stats = embed_source_into(bundle, src, embedder, config.batch_size,
                                  on_progress=progress)
        print(f"  all {stats.embedded + stats.skipped} images embedded      {rss()}")
        index_bundle(bundle, config.index_kind, config.memory_budget)
        print(f"  index built                    {rss()}")
        if src.labelled and stats.embedded:
            fit_default_head(bundle)
            print(f"  logistic-regression head       {rss()}")
    shutil.rmtree(out.parent, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000])
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--weights", default="none", help="none (random), imagenet or a file")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="default: the CLI's")
    p.add_argument("--workdir", type=Path, default=None, help="keep images here (reused)")
    p.add_argument("--cache", type=Path, default=None,
                   help="a LiteRT cache to use and keep (default: a fresh one, converted in the"
                        " first run and removed)")
    p.add_argument(
        "--phases", action="store_true", help="RSS step by step, in-process, largest size only"
    )
    args = p.parse_args(argv)

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="build-memory-")
        work = Path(tmp.name)
    else:
        work = args.workdir.resolve()
        work.mkdir(parents=True, exist_ok=True)
    biggest = max(args.sizes)
    pool = work / f"pool-{biggest}"
    if len(list(pool.rglob("*.jpg"))) != biggest:
        shutil.rmtree(pool, ignore_errors=True)
        t = time.perf_counter()
        write_jpegs(pool, biggest)
        print(f"wrote {biggest} JPEGs in {time.perf_counter() - t:.0f} s")
    cache = args.cache or Path(tempfile.mkdtemp(prefix="litert-cache-", dir=work))
    first = "given cache" if args.cache else "empty cache"
    load = os.getloadavg()
    print(
        f"backbone={args.backbone} image_size={args.image_size or 'default'} "
        f"weights={args.weights} batch={args.batch_size or 'CLI default'} cpus={os.cpu_count()} "
        f"load={load[0]:.2f},{load[1]:.2f},{load[2]:.2f}"
    )
    try:
        warm = subset(pool, work / f"set-64-{time.time_ns()}", 64)
        res = run_build(warm, work / "out-warm", args, cache)
        if args.phases:
            n = max(args.sizes)
            print(f"phases, {n} images (warm LiteRT cache, in this process):")
            phases(args, subset(pool, work / f"set-{n}-{time.time_ns()}", n), cache)
            return 0
        print(
            f"  conversion run (64 images, {first})  peak RSS "
            f"{res['peak_rss_bytes'] / 2**20:6.0f} MiB  wall {res['wall_s']:5.1f} s"
        )
        results = {}
        for n in args.sizes:
            src = subset(pool, work / f"set-{n}-{time.time_ns()}", n)
            res = run_build(src, work / f"out-{n}", args, cache)
            results[n] = res
            print(
                f"  {n:6d} images  peak RSS {res['peak_rss_bytes'] / 2**20:6.0f} MiB "
                f"({res['peak_rss_bytes'] / 1e9:.2f} GB)  wall {res['wall_s']:6.1f} s  "
                f"{res['images_per_s']:6.1f} img/s end to end  "
                f"(embedding stage {res['embed_images_per_s']} img/s)  runtime={res['runtime']}"
            )
        lo, hi = min(results), max(results)
        ratio = results[hi]["peak_rss_bytes"] / results[lo]["peak_rss_bytes"]
        peak = results[hi]["peak_rss_bytes"]
        flat = "met" if ratio <= 1.10 else "NOT met"
        print(
            f"  peak {hi}/{lo} = {ratio:.3f} (target ≤ 1.10: {flat})"
            f"   peak at {hi} = {peak / 1e9:.2f} GB (target ≤ 1.5 GB: "
            f"{'met' if peak <= TARGET_BYTES else 'NOT met'})"
        )
    finally:
        for d in work.glob("set-*"):
            shutil.rmtree(d, ignore_errors=True)
        for d in work.glob("out-*"):
            shutil.rmtree(d, ignore_errors=True)
        if not args.cache:
            shutil.rmtree(cache, ignore_errors=True)
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
