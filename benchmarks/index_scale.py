"""Peak memory, time and recall of index builds against collection size and memory budget.

Writes seeded synthetic unit vectors as a bundle through the real shard writer (ShardWriter,
metadata, manifest), then, for each memory budget, builds the index with `auto` in a fresh
process and reads that process's own peak RSS (``os.wait4``), and measures single-query
latency through `LookalikeIndex` (IVF lists memory-mapped) in another fresh process.

The vectors: 1000 clusters (random unit centres); each vector is its centre plus a 32-d latent
offset (norm about 0.5, the same random subspace for all clusters) plus isotropic noise (norm
about 0.15), normalised. Neighbours are decided by the latent offset, as photos of one breed
differ by pose and colour, so IVF finds the right lists easily and the codes decide recall.

    python benchmarks/index_scale.py                                 # 100k x 1280 at 1G and 2G
    python benchmarks/index_scale.py --rows 1000000 --budgets 2G --workdir /tmp/index_scale
    python benchmarks/index_scale.py --rows 1000000 --dim 256

Target (issue 9, item 7): peak RSS of a build within budget + one shard + 400 MB; 1M x 1280
under a 2G budget with recall@10 >= 0.9. Writing 1M x 1280 (4.9 GB of shards) took 2 min and
its IVF1024,SQ8 build 18 min on 2 busy cores (load 4-6); 100k x 1280 (HNSW) 3.5 min a build.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLUSTERS, LATENT, SPREAD, NOISE = 1000, 32, 0.5, 0.15
SLACK = 400 << 20  # the target: budget + one shard + this
QUERIES, WARMUP = 200, 20


def structure(dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The clusters' unit centres and an orthonormal latent basis (LATENT x dim)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = np.linalg.qr(rng.standard_normal((dim, LATENT)))[0].T.astype(np.float32)
    return centres, basis


def synthetic(n: int, dim: int, number: int, seed: int,
              parts: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Block `number` of n seeded unit vectors (blocks are independent of each other)."""
    centres, basis = parts
    rng = np.random.default_rng([seed, number])
    x = centres[rng.integers(0, CLUSTERS, n)]
    x += SPREAD / np.sqrt(LATENT) * (rng.standard_normal((n, LATENT), dtype=np.float32) @ basis)
    x += NOISE / np.sqrt(dim) * rng.standard_normal((n, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def write_bundle(root: Path, n: int, dim: int, rows_per_shard: int, seed: int) -> float:
    """A bundle of n synthetic vectors through the real writer; seconds taken."""
    from embed.bundle import SCHEMA_VERSION, Bundle
    from embed.shards import ShardWriter, merged_tables

    start = time.perf_counter()
    bundle = Bundle(root, writable=True)
    bundle.write_manifest({"schema_version": SCHEMA_VERSION, "backbone": {
        "name": "synthetic", "image_size": 8, "dim": dim, "preprocessing": "tf"}})
    writer = ShardWriter(bundle, dim, rows_per_shard)
    parts = structure(dim, seed)
    for number, first in enumerate(range(0, n, rows_per_shard)):
        rows = min(rows_per_shard, n - first)
        writer.add([{"row_id": i, "path": f"{i}.jpg", "label": f"c{i % 97}", "split": "train",
                     "sha256": "", "width": 8, "height": 8, "reason": ""}
                    for i in range(first, first + rows)],
                   synthetic(rows, dim, number, seed, parts))
    shards = writer.close()
    bundle.write_metadata(merged_tables(bundle, shards)[0])
    bundle.update_manifest(embeddings={"shards": shards, "rows_per_shard": rows_per_shard},
                           counts={"embedded": n},
                           history=[{"op": "synthetic", "seed": seed}])
    return time.perf_counter() - start


# ---- what runs in the fresh processes -------------------------------------------------------
def child_build(bundle_dir: str, budget: str) -> None:
    from embed.bundle import Bundle
    from index.lookalikes import build_bundle_index

    bundle = Bundle(bundle_dir, writable=True)
    start = time.perf_counter()
    record = build_bundle_index(bundle, "auto", budget)
    seconds = time.perf_counter() - start
    bundle.update_manifest(index=record)
    print(json.dumps({"record": record, "seconds": seconds}))


def child_query(bundle_dir: str) -> None:
    from embed.bundle import Bundle
    from index.lookalikes import LookalikeIndex

    bundle = Bundle(bundle_dir)
    start = time.perf_counter()
    lookalikes = LookalikeIndex(bundle)
    load = time.perf_counter() - start
    dim, seed = lookalikes.dim, int(bundle.manifest.model_dump().get("seed", 0))
    queries = synthetic(QUERIES + WARMUP, dim, 10**9, seed, structure(dim, seed))  # unseen
    raw, api = [], []
    for i, query in enumerate(queries):
        start = time.perf_counter()
        lookalikes.index.search(query[None], 10)
        middle = time.perf_counter()
        lookalikes.search(query, k=10)
        if i >= WARMUP:
            raw.append(middle - start)
            api.append(time.perf_counter() - middle)
    raw_ms, api_ms = np.array(raw) * 1e3, np.array(api) * 1e3
    status = Path("/proc/self/status").read_text().split()
    anon, file = (int(status[status.index(key) + 1]) << 10 for key in ("RssAnon:", "RssFile:"))
    print(json.dumps({"load_s": load, "anon": anon, "file": file,
                      "p50_ms": float(np.percentile(raw_ms, 50)),
                      "p99_ms": float(np.percentile(raw_ms, 99)),
                      "search_p50_ms": float(np.percentile(api_ms, 50))}))


def run_child(args: list[str], timeout: float) -> tuple[dict, int]:
    """(its JSON line, its own peak RSS in bytes), killed after `timeout` seconds."""
    import threading

    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=REPO)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    output = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    timer.cancel()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{args[0]} failed ({code}; killed after {timeout:.0f} s?):\n"
                         f"{output[-3000:]}")
    return json.loads(output.strip().splitlines()[-1]), usage.ru_maxrss * 1024


def mib(n: float) -> str:
    return f"{n / (1 << 20):,.0f}M"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--budgets", nargs="+", default=["1G", "2G"])
    parser.add_argument("--rows-per-shard", type=int, default=4096)  # embed.build's default
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="Keep bundles here (reused when present); default: a temporary one.")
    parser.add_argument("--timeout", type=float, default=3600, help="Seconds per child.")
    args = parser.parse_args()
    from index.choice import parse_budget

    work = args.workdir or Path(tempfile.mkdtemp(prefix="index_scale-"))
    shard_bytes = args.rows_per_shard * args.dim * 4
    header = (f"{'rows x dim':>14} {'budget':>6} {'index':>16} {'estimate':>9} {'peak RSS':>9}"
              f" {'target':>7} {'build s':>8} {'recall@10':>9} {'nprobe':>6} {'p50 ms':>7}"
              f" {'p99 ms':>7} {'search()':>8} {'query RSS':>9}")
    lines = []
    print(header, flush=True)
    try:
        for n in args.rows:
            root = work / f"bundle-{n}x{args.dim}-s{args.seed}-r{args.rows_per_shard}"
            if not (root / "metadata.parquet").is_file():
                shutil.rmtree(root, ignore_errors=True)
                seconds = write_bundle(root, n, args.dim, args.rows_per_shard, args.seed)
                print(f"wrote {n} x {args.dim} in {seconds:.0f} s ({mib(n * args.dim * 4)} of"
                      f" shards, {mib(shard_bytes)} each) to {root}", flush=True)
            for budget in args.budgets:
                built, peak = run_child(["_build", str(root), budget], args.timeout)
                record = built["record"]
                queried, query_peak = run_child(["_query", str(root)], args.timeout)
                limit = parse_budget(budget) + shard_bytes + SLACK
                line = (f"{n:>8} x {args.dim:<4} {budget:>6} {record['factory']:>16}"
                        f" {mib(record['params']['bytes']):>9} {mib(peak):>9}"
                        f" {'ok' if peak <= limit else 'OVER':>7} {built['seconds']:>8.0f}"
                        f" {record['recall@10']:>9.3f} {record['params'].get('nprobe', '-'):>6}"
                        f" {queried['p50_ms']:>7.2f} {queried['p99_ms']:>7.2f}"
                        f" {queried['search_p50_ms']:>8.2f} {mib(query_peak):>9}")
                lines.append(line)
                print(line, flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\ntarget: peak RSS <= budget + one shard ({mib(shard_bytes)}) + {mib(SLACK)};"
          " p50/p99: one query, FAISS alone; search(): LookalikeIndex.search p50 (with rows)")
    print(header)
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_build":
        child_build(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "_query":
        child_query(sys.argv[2])
    else:
        main()
