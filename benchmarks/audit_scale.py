"""Time and peak memory of each audit stage on a large synthetic bundle (100k x 1280 default).

Writes seeded synthetic unit vectors as a bundle through the real shard writer (as
benchmarks/index_scale.py does), with problems planted so every signal has work: 1 % exact
copies (same sha256), 1 % near copies (the vector plus a little noise), 2 % labels flipped to
another breed. Then runs `ui.audit_report.compute_signals` on it, stage by stage, and prints
each stage's seconds and the process's peak RSS during it (Linux: VmHWM, reset between stages
through /proc/self/clear_refs). Low quality reads photos, which synthetic vectors do not have:
its rate is measured by benchmarks/audit_planted.py (photos/s) and extrapolated here.

The vectors: BREEDS breeds with random unit centres; each vector is its breed's centre plus a
LATENT-d offset (norm about SPREAD, one random subspace shared by all breeds, so breeds
overlap as real ones do) plus isotropic noise, normalised.

    python benchmarks/audit_scale.py                     # 100k x 1280
    python benchmarks/audit_scale.py --rows 20000 --workdir /tmp/audit_scale

Measured, 100k x 1280 on 2 shared AMD EPYC cores (load 1-4): read 2.8 s, kNN graph (exact
IndexFlatIP, k=16) 152 s, label issues (5-fold logreg + cleanlab) 102 s at 2.8 GB peak RSS,
outliers 2.8 s, not a dog 0.7 s (read off the graph), the rest under 1 s: 261 s in all. Under
load 7-8 the graph took 505 s and, before not-a-dog reused the graph, its second exact pass
302 s. Low quality reads every photo: about 130 photos/s on one core, 13 min for 100k.

After label issues moved to 256 principal components above 256 MB of float64 features
(classify.label_issues.features; audit-wire): label issues 1,371 MB peak (2,348 MB with
--no-reduce, which already avoids the old full-row copy), the largest stage peak 1,477 MB (not
a dog); flipped labels found 0.974, precision 0.921 (--no-reduce: 0.982, 0.940); the label
stage 1.6x slower in one process (178 s vs 110 s).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BREEDS, LATENT, SPREAD, NOISE = 120, 64, 1.1, 0.5
EXACT, NEAR, FLIPPED, NEAR_NOISE = 0.01, 0.01, 0.02, 0.15


def make_rows(n: int, dim: int, seed: int, flipped: list | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vectors, labels, sha256) with the plants in place; `flipped` (a list) receives the
    positions whose label was flipped."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((BREEDS, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    latent = min(LATENT, dim // 2)
    basis = np.linalg.qr(rng.standard_normal((dim, latent)))[0].T.astype(np.float32)
    breed = rng.integers(0, BREEDS, n)
    x = centres[breed]
    x += SPREAD / np.sqrt(latent) * (rng.standard_normal((n, latent), dtype=np.float32) @ basis)
    x += NOISE / np.sqrt(dim) * rng.standard_normal((n, dim), dtype=np.float32)
    hashes = np.array([hashlib.sha256(f"{seed}-{i}".encode()).hexdigest() for i in range(n)],
                      dtype=object)
    order = rng.permutation(n)
    n_exact, n_near, n_flip = (round(f * n) for f in (EXACT, NEAR, FLIPPED))
    exact, near = order[:n_exact], order[n_exact:n_exact + n_near]
    flip = order[n_exact + n_near:n_exact + n_near + n_flip]
    source = order[-(n_exact + n_near):]  # distinct originals for the copies
    x[exact], hashes[exact], breed[exact] = x[source[:n_exact]], hashes[source[:n_exact]], \
        breed[source[:n_exact]]
    x[near] = x[source[n_exact:]] + NEAR_NOISE / np.sqrt(dim) * rng.standard_normal(
        (n_near, dim), dtype=np.float32)
    breed[near] = breed[source[n_exact:]]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = breed.copy()
    labels[flip] = (breed[flip] + rng.integers(1, BREEDS, n_flip)) % BREEDS
    if flipped is not None:
        flipped.extend(int(i) for i in flip)
    return x, np.array([f"breed_{b:03d}" for b in labels], dtype=object), hashes


def write_bundle(root: Path, n: int, dim: int, seed: int, rows_per_shard: int = 4096) -> float:
    from classify.gate import GATE_VERSION, keep_threshold, knn_similarity
    from embed.bundle import SCHEMA_VERSION, Bundle
    from embed.shards import ShardWriter, merged_tables

    start = time.perf_counter()
    x, labels, hashes = make_rows(n, dim, seed)
    split = np.where(np.random.default_rng(seed + 1).random(n) < 0.2, "test", "train")
    bundle = Bundle(root, writable=True)
    bundle.write_manifest({"schema_version": SCHEMA_VERSION, "backbone": {
        "name": "synthetic", "image_size": 160, "dim": dim, "preprocessing": "tf"}})
    writer = ShardWriter(bundle, dim, rows_per_shard)
    for first in range(0, n, rows_per_shard):
        rows = range(first, min(n, first + rows_per_shard))
        writer.add([{"row_id": i, "path": f"{labels[i]}/{i}.jpg", "label": labels[i],
                     "split": split[i], "sha256": hashes[i], "width": 500, "height": 375,
                     "reason": ""} for i in rows], x[first:first + len(rows)])
    shards = writer.close()
    bundle.write_metadata(merged_tables(bundle, shards)[0])
    # a gate as fit_gate records it, from a sample of test rows against all others
    test = np.flatnonzero(split == "test")[:2000]
    knn = knn_similarity(x[test], x, 5, hashes[test], hashes)
    threshold = keep_threshold(knn)
    bundle.update_manifest(embeddings={"shards": shards, "rows_per_shard": rows_per_shard},
                           counts={"embedded": n}, history=[{"op": "synthetic", "seed": seed}],
                           gate={"version": GATE_VERSION, "k": 5, "dog_threshold": threshold,
                                 "not_dog_threshold": threshold * 0.9, "heads": {}})
    return time.perf_counter() - start


def peak_probe() -> tuple[dict[str, int], object]:
    """Per-stage peak RSS (bytes) and the hook that records it."""
    peaks: dict[str, int] = {}
    clear = Path("/proc/self/clear_refs")

    def after(stage: str) -> None:
        status = Path("/proc/self/status").read_text().split()
        peaks[stage] = int(status[status.index("VmHWM:") + 1]) << 10
        print(f"  {stage} done, peak RSS {peaks[stage] / 2**20:,.0f}M", flush=True)
        with contextlib.suppress(OSError):
            clear.write_text("5")  # reset VmHWM to the current RSS

    return peaks, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="Keep the bundle here (reused when present).")
    parser.add_argument("--no-reduce", action="store_true",
                        help="Label issues on the full vectors at any size (the memory before"
                        " classify.label_issues.REDUCE_ABOVE), to compare.")
    parser.add_argument("--photos-per-s", type=float, default=None,
                        help="Low quality's measured rate (audit_planted) to extrapolate.")
    args = parser.parse_args()
    from embed.bundle import Bundle
    from index.duplicates import calibrate_threshold
    from ui.audit_report import KINDS, compose_findings, compute_signals

    if args.no_reduce:
        import classify.label_issues as label_issues

        label_issues.REDUCE_ABOVE = float("inf")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="audit_scale-"))
    root = work / f"bundle-{args.rows}x{args.dim}-s{args.seed}"
    try:
        if not (root / "metadata.parquet").is_file():
            shutil.rmtree(root, ignore_errors=True)
            seconds = write_bundle(root, args.rows, args.dim, args.seed)
            print(f"wrote {args.rows} x {args.dim} in {seconds:.0f} s to {root}", flush=True)
        bundle = Bundle(root, writable=True)
        # the copies' similarities need photos; here: near copies as the generator makes them
        rng = np.random.default_rng(args.seed)
        start = time.perf_counter()
        copy_sims = 1 - rng.uniform(0.001, 0.02, 500)
        threshold = calibrate_threshold(copy_sims, rng.uniform(0.3, 0.9, 2000))
        calibrate_s = time.perf_counter() - start
        peaks, after = peak_probe()
        after("start")
        timings: dict[str, float] = {}
        kinds = tuple(k for k in KINDS if k != "low_quality")
        start = time.perf_counter()
        signals = compute_signals(bundle, kinds, threshold=threshold, timings=timings,
                                  after_stage=after)
        findings = compose_findings(bundle.metadata(), signals)
        after("compose")
        total = time.perf_counter() - start
        timings["compose"] = total - sum(timings.values())
        cpus = Path("/proc/cpuinfo").read_text().count("processor")
        print(f"\n{args.rows} x {args.dim} on {cpus} CPUs; the vectors alone:"
              f" {args.rows * args.dim * 4 / 2**20:,.0f} MiB")
        print(f"{'stage':<18} {'seconds':>8} {'peak RSS':>10}")
        for stage, seconds in timings.items():
            print(f"{stage:<18} {seconds:>8.1f} {peaks.get(stage, 0) / 2**20:>9,.0f}M")
        # clear_refs resets ru_maxrss too; "start" is writing the synthetic bundle, not audit
        process_peak = max(v for k, v in peaks.items() if k != "start") / 2**20
        print(f"{'total':<18} {total:>8.1f} {process_peak:>9,.0f}M (the largest stage peak)")
        print(f"(threshold calibration on given similarities: {calibrate_s * 1e3:.1f} ms;"
              " embedding its copies is a fixed 100 photos x 5 edits, see audit_planted)")
        if args.photos_per_s:
            print(f"low quality, extrapolated: {args.rows / args.photos_per_s / 60:.0f} min at"
                  f" {args.photos_per_s:.0f} photos/s")
        counts = findings["issue"].value_counts()
        n = args.rows
        print("findings: " + ", ".join(f"{k} {v}" for k, v in counts.items())
              + f"  (planted: exact {round(EXACT * n)}, near {round(NEAR * n)},"
                f" flipped labels {round(FLIPPED * n)})")
        del signals, bundle
        planted: list[int] = []
        make_rows(args.rows, args.dim, args.seed, planted)  # after the peaks
        stored = pd.read_parquet(root / "metadata.parquet", columns=["row_id", "path"])
        flipped = set(stored["path"][stored["row_id"].isin(planted)])
        label_rows = findings[findings["issue"] == "label"]
        hits = label_rows["path"].isin(flipped).sum()
        print(f"label: {hits / max(len(flipped), 1):.3f} of {len(flipped)} flipped labels"
              f" found, precision {hits / max(len(label_rows), 1):.3f}"
              f" ({len(label_rows) / max(len(flipped), 1):.2f} label rows per flipped one)")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
