"""Query latency as a user meets it: every step a cold process, wall time and peak RSS.

In one run, for this checkout and (optionally) a baseline commit checked out into a temporary
git worktree and run with the same Python:

- build a bundle of the photos (not timed here: `build_memory.py` and `embed_throughput.py`
  measure builds), then, each as a fresh process,
- `search` one image, `classify` 20 images and `classify` 1,000 images,
- `python -c "import tensorflow"` as the yardstick.

    python benchmarks/query_latency.py                         # this checkout only
    python benchmarks/query_latency.py --baseline-commit a46827b

Targets (issue 10): search at most 25 % of the baseline's wall time and at most 400 MB peak
RSS; classify throughput on 1,000 images not lower than the baseline's.
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

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def cold(command: list[str], cwd: Path, env: dict[str, str]) -> dict:
    """Run one command in a fresh process; its wall time, CPU time (user + sys) and peak RSS
    (os.wait4)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    errors = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{errors[-3000:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "peak_mb": usage.ru_maxrss / 1024}


def photo_sets(source: Path, work: Path, large: int = 1000) -> tuple[Path, Path, Path]:
    """One photo, 20 photos, and `large` photos (the source repeated under new names)."""
    photos = sorted(p for p in source.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    small, big = work / "twenty", work / "thousand"
    small.mkdir()
    big.mkdir()
    for i, p in enumerate(photos[:20]):
        os.link(p, small / f"{i:04d}{p.suffix}")
    for i in range(large):
        p = photos[i % len(photos)]
        os.link(p, big / f"{i:04d}{p.suffix}")
    return photos[0], small, big


def measure(name: str, cwd: Path, module: str, bundle: Path, photos: tuple[Path, Path, Path],
            build_args: list[str], env: dict[str, str], out: Path) -> dict:
    py = [sys.executable, "-m", module]
    if not (bundle / "manifest.json").is_file():
        print(f"[{name}] building {bundle.name} …", flush=True)
        cold([*py, "build-index", "--out", str(bundle), *build_args], cwd, env)
    one, twenty, large = photos
    n_large = sum(1 for _ in large.iterdir())
    cold([*py, "search", str(one), "--bundle", str(bundle)], cwd, env)  # warm the page cache
    rows = {"search 1 image": cold([*py, "search", str(one), "--bundle", str(bundle)], cwd,
                                   env)}
    for label, folder, n in (("classify 20 images", twenty, 20),
                             (f"classify {n_large:,} images", large, n_large)):
        result = cold([*py, "classify", str(folder), "--bundle", str(bundle), "--out",
                       str(out / f"{name}-{n}.csv")], cwd, env)
        result["images_per_s"] = n / result["wall_s"]
        rows[label] = result
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--photos", type=Path, default=SHARED / "woof-sample")
    p.add_argument("--weights", default=str(SHARED / "weights"
                                            / "mobilenet_v2_160_dogs_no_top.weights.h5"),
                   help="a weights file, imagenet, or none (random: a quick smoke run)")
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--baseline-commit", help="also measure this commit (a temporary worktree)")
    p.add_argument("--large", type=int, default=1000, help="photos in the large classify run")
    p.add_argument("--cache", type=Path, default=None,
                   help="the LiteRT cache to use and keep (default: a fresh, cold one)")
    args = p.parse_args(argv)
    if not args.photos.is_dir() or not (args.weights in ("none", "imagenet")
                                        or Path(args.weights).is_file()):
        raise SystemExit(f"need photos at {args.photos} and weights at {args.weights}")

    work = Path(tempfile.mkdtemp(prefix="query-latency-"))
    cache = args.cache or work / "cache"
    env = {**os.environ, "EMBED_DOGS_CACHE": str(cache), "TF_CPP_MIN_LOG_LEVEL": "2"}
    build_args = ["--source", str(args.photos), "--backbone", "mobilenet_v2", "--image-size",
                  str(args.image_size), "--weights", str(args.weights)]
    photos = photo_sets(args.photos, work, args.large)
    results = {}
    try:
        if args.baseline_commit:
            base = work / "baseline"
            subprocess.run(["git", "worktree", "add", "--detach", str(base),
                            args.baseline_commit], cwd=REPO, check=True, capture_output=True)
            results[f"baseline {args.baseline_commit}"] = measure(
                "baseline", base, "embed", work / "bundle-baseline", photos, build_args, env,
                work)
        results["this checkout"] = measure("current", REPO, "ui", work / "bundle-current",
                                           photos, build_args, env, work)
        yardstick = cold([sys.executable, "-c", "import tensorflow"], REPO, env)
    finally:
        if args.baseline_commit:
            subprocess.run(["git", "worktree", "remove", "--force", str(work / "baseline")],
                           cwd=REPO, capture_output=True)

    print(f"\nCPU: {_cpu()}; {os.cpu_count()} cores; dog-tuned mobilenet_v2 @"
          f" {args.image_size} px, LiteRT")
    print(f"{'step':24} " + "  ".join(f"{k:>26}" for k in results))
    for step in next(iter(results.values())):
        cells = []
        for r in results.values():
            row = r[step]
            rate = f" {row['images_per_s']:6.1f}/s" if "images_per_s" in row else " " * 9
            cells.append(f"{row['wall_s']:6.2f} s {row['peak_mb']:6.0f} MB{rate}")
        print(f"{step:24} " + "  ".join(f"{c:>26}" for c in cells))
    print(f"{'import tensorflow':24} {yardstick['wall_s']:6.2f} s {yardstick['peak_mb']:6.0f} MB")
    if len(results) == 2:
        base, cur = results.values()
        s = cur["search 1 image"]["wall_s"] / base["search 1 image"]["wall_s"]
        large = f"classify {args.large:,} images"
        c = cur[large]["images_per_s"] / base[large]["images_per_s"]
        print(f"\nsearch wall time: {s:.0%} of the baseline (target <= 25 %);"
              f" peak {cur['search 1 image']['peak_mb']:.0f} MB (target <= 400 MB)")
        print(f"{large}: {c:.2f}x the baseline's throughput (target >= 1)")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
