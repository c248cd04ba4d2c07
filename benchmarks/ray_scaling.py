"""The same photos through the local engine and through Ray with 1 and 2 workers.

Every run is a real `build_bundle` (listing, model load, embedding, index, head) on the same
CPUs: the local engine uses every core in one process, Ray's workers share them. Per run:

- embed s / img/s: the embedding stage's wall time. Local: the reader -> mapper -> writer
  loop (its model is already loaded). Ray: submitting the pipeline to the last shard
  written, so it includes starting the actors (each imports TensorFlow, loads its model).
- start s: Ray: the part of that before the first shard started (actor start-up), a fixed
  cost a run pays once however many photos it embeds. The cluster's own start counts only in
  total s (the whole build-index, listing to the head's report).
- busy s / img/s once running: Ray: first shard started to last shard written.
- first batch s: a fresh process's first batch pays TensorFlow's cold start (tracing the
  Keras model for the LiteRT parity check) and the check itself, about 2-3 s on 2 cores; the
  local process pays it once, every Ray actor once (the longest shown).
- warm img/s: the rate after each process's first batch; local: from the progress of its
  batches; Ray: the sum of its workers' rates (per worker: its items after its first batch
  over its busy time after it), so the per-shard reader start-up, scheduling and the workers'
  share of the cores stay in. `overhead (warm)` compares it with the local rate: Ray's cost
  at the same CPU count once running.
- CPU s per 1000 img: CPU time of the embedding (every thread of the local process, or of
  the Ray actors during their shards plus the driver meanwhile; Ray's daemons not counted),
  first batches included. Other jobs on a shared machine change it less than wall time.

Then it checks that each Ray bundle equals the local one (rows, cosine per row, index, head)
and projects N-node throughput from the measured per-worker warm rates (nodes like this
machine, linear: embedding shares nothing between workers; it assumes a shared filesystem
fast enough for the photos).

    python benchmarks/ray_scaling.py --backbone mobilenet_v2 --image-size 160 \\
        --weights ../shared/data/weights/mobilenet_v2_160_dogs_no_top.weights.h5

Check `uptime` first: other jobs on the machine distort every wall-time figure; each
configuration runs --repeats times, interleaved, and the best warm rate counts.
"""

from __future__ import annotations

import argparse
import os
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
DEFAULT_WEIGHTS = REPO.parent / "shared" / "data" / "weights" / (
    "mobilenet_v2_160_dogs_no_top.weights.h5")
STANFORD_DOGS = 20_580


def run(args: argparse.Namespace, out: Path, engine: str, workers: int | None
        ) -> dict[str, Any]:
    from ui.workflows import BuildConfig, build_bundle

    marks: list[tuple[float, int]] = []  # local: (time, images so far) after each batch

    def on_source(source: Any) -> Any:
        def advance(n: int) -> None:
            marks.append((time.perf_counter(), (marks[-1][1] if marks else 0) + n))

        return advance

    started = time.perf_counter()
    result = build_bundle(BuildConfig(
        source=str(args.folder), out=out, backbone=args.backbone, weights=args.weights,
        image_size=args.image_size, batch_size=args.batch_size, runtime=args.runtime,
        overwrite=True, engine=engine, workers=workers), on_source=on_source)
    total = time.perf_counter() - started
    stats, manifest = result.stats, result.manifest
    record = manifest.embeddings.get("engine") or {}
    row = {"engine": engine, "workers": record.get("workers", 1),
           "threads": record.get("threads_per_worker", record.get("cluster_cpus")),
           "images": stats.processed, "embed_s": stats.seconds,
           "rate": stats.images_per_second, "total_s": total, "bundle": result.bundle}
    cpu = float(record.get("cpu_seconds", 0.0)) + float(record.get("driver_cpu_seconds", 0.0))
    row["cpu_per_k"] = 1000 * cpu / max(1, stats.processed)
    if engine == "ray":
        workers_ = record["per_worker"]
        warm = [w["warm_images_per_second"] or 0.0 for w in workers_]
        row.update(busy_s=record["busy_span_seconds"],
                   running=record["steady_images_per_second"],
                   start_s=record["pipeline_seconds"] - record["busy_span_seconds"],
                   cold_s=max(w["cold_start_seconds"] for w in workers_),
                   warm=sum(warm), per_worker=warm,
                   rss=[w.get("peak_rss_mb", 0.0) for w in workers_])
    else:
        (t0, n0), (t1, n1) = marks[0], marks[-1]
        warm = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        row.update(busy_s=stats.seconds, running=stats.images_per_second, start_s=0.0,
                   cold_s=stats.seconds - (t1 - t0), warm=warm, per_worker=[warm], rss=[])
    return row


def per_worker_rates(row: dict[str, Any]) -> str:
    return ", ".join(f"{rate:.1f}" for rate in row["per_worker"])


def replicate(folder: Path, target: Path, copies: int) -> Path:
    """`copies` hard-linked copies of every photo (breed folders kept), for a larger run."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            for k in range(copies):
                link = target / path.parent.relative_to(folder) / f"{k}_{path.name}"
                link.parent.mkdir(parents=True, exist_ok=True)
                os.link(path, link)
    return target


def equality(local: Path, other: Path) -> str:
    from embed.bundle import Bundle

    a, b = Bundle.open(local), Bundle.open(other)
    columns = ["row_id", "path", "label", "split", "sha256", "width", "height"]
    same = a.metadata()[columns].equals(b.metadata()[columns])
    cosines = np.einsum("ij,ij->i", a.embeddings(), b.embeddings())
    heads = [x.manifest.heads["logreg"].metrics.get("top1") if "logreg" in x.manifest.heads
             else None for x in (a, b)]
    return (f"rows equal {same} ({len(cosines)} rows), cosine min {cosines.min():.7f}"
            f" mean {cosines.mean():.7f}, index {a.manifest.model_dump()['index']['kind']} /"
            f" {b.manifest.model_dump()['index']['kind']}, logreg top-1 {heads[0]} / {heads[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--runtime", default="litert")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", default="1,2", help="Ray pool sizes to run, e.g. 1,2")
    parser.add_argument("--copies", type=int, default=1,
                        help="embed the folder this many times over (hard-linked copies), to"
                        " see the fixed per-process costs amortise")
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs per configuration, interleaved; the best steady rate counts"
                        " (a shared machine's other jobs only ever slow a run down)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f};"
          f" {os.cpu_count()} CPUs; {args.folder}")

    configs = [("local", None)] + [("ray", int(w)) for w in args.workers.split(",") if w]
    best: dict[tuple[str, int | None], dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ray-scaling-") as tmp:
        if args.copies > 1:
            args.folder = replicate(args.folder, Path(tmp) / "photos", args.copies)
        for repeat in range(args.repeats):
            for engine, workers in configs:
                out = Path(tmp) / f"{engine}{workers or ''}-{repeat}"
                row = run(args, out, engine, workers)
                print(f"  run {repeat + 1}: {engine} {workers or ''}: warm {row['warm']:.1f}"
                      f" img/s, {row['cpu_per_k']:.1f} CPU s per 1000, load"
                      f" {os.getloadavg()[0]:.2f}", flush=True)
                if (engine, workers) not in best or row["warm"] > best[engine, workers]["warm"]:
                    best[engine, workers] = row
        rows = [best[c] for c in configs]
        checks = [(r["workers"], equality(rows[0]["bundle"], r["bundle"])) for r in rows[1:]]
    local = rows[0]
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print("| engine | workers x threads | images | embed s | img/s | start s | busy s |"
          " img/s once running | first batch s | warm img/s | overhead (warm) |"
          " CPU s per 1000 img | overhead (CPU) | per-worker warm img/s | total s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        first = r is local
        warm = "-" if first else f"{1 - r['warm'] / local['warm']:+.1%}"
        cpu = "-" if first else f"{r['cpu_per_k'] / local['cpu_per_k'] - 1:+.1%}"
        print(f"| {r['engine']} | {r['workers']} x {r['threads']} | {r['images']} |"
              f" {r['embed_s']:.1f} | {r['rate']:.1f} | {r['start_s']:.1f} | {r['busy_s']:.1f} |"
              f" {r['running']:.1f} | {r['cold_s']:.1f} | {r['warm']:.1f} | {warm} |"
              f" {r['cpu_per_k']:.1f} | {cpu} | {per_worker_rates(r)} | {r['total_s']:.1f} |")
    for r in rows[1:]:
        print(f"peak memory per worker ({r['workers']} x {r['threads']}):"
              f" {', '.join(f'{m:.0f} MB' for m in r['rss'])}")
    print()
    for workers, line in checks:
        print(f"equality, local vs ray {workers} worker(s): {line}")
    top = max(rows[1:], key=lambda r: r["warm"]) if rows[1:] else local
    node_rate = top["warm"]
    cores = os.cpu_count() or 1
    print()
    print(f"projection from the measured per-worker rates once warm ({top['workers']} x"
          f" {top['threads']} on {cores} cores: {per_worker_rates(top)} img/s, so"
          f" {node_rate:.1f} img/s per node), nodes like this one, linear:")
    print("| nodes | workers | img/s | Stanford Dogs (20,580) | 1M photos |")
    print("|---|---|---|---|---|")
    for nodes in (1, 2, 4, 8, 16):
        rate = node_rate * nodes
        print(f"| {nodes} | {top['workers'] * nodes} | {rate:.0f} |"
              f" {STANFORD_DOGS / rate / 60:.1f} min | {1e6 / rate / 3600:.2f} h |")
    print(f"(plus, once per run: {top['start_s']:.0f} s of actor start-up and"
          f" {top['cold_s']:.1f} s of first batch here, and the cluster's own start)")


if __name__ == "__main__":
    main()
