"""A warm-cache build's wall time, CPU time and peak memory, and the Ray actors' start-up,
for one or more checkouts interleaved in one run (issue 21's start-up targets).

Each measurement is a fresh `embed-dogs build-index` process (as a user runs it) on a folder
of `--per-breed` photos of each of woof-sample's 10 breeds (4 x 10 = 40 by default), with a
model cache warmed once beforehand (the LiteRT model, its parity verdict and the weights'
facts in `$EMBED_DOGS_CACHE`). Wall, user+sys CPU and the child's peak RSS come from
`os.wait4`. With `--ray`, a `--engine ray --workers 1` build is run too, and the actors'
start-up is read from its manifest: the pipeline's wall time less its busy span (first
shard started to last one written), i.e. from the driver's actor creation to the first
shard's start, Ray Data's planning included.

Checkouts run in turns, round after round, so that the machine's drift hits them alike:

    python benchmarks/startup.py --rounds 3 --ray --repo . --repo ../main

Targets (issue 21): warm 40-photo build <= 4 s wall and <= 500 MB peak; actor ready <= 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from query_latency import cold  # noqa: E402  (the path is set just above)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
WEIGHTS = DATA / "weights" / "mobilenet_v2_160_dogs_no_top.weights.h5"


def make_folder(root: Path, per_breed: int) -> Path:
    """`per_breed` photos of each woof-sample breed, copied (nothing is written to shared)."""
    for breed in sorted((DATA / "woof-sample").iterdir()):
        if breed.is_dir():
            (root / breed.name).mkdir(parents=True)
            for photo in sorted(breed.glob("*.jpg"))[:per_breed]:
                shutil.copy(photo, root / breed.name / photo.name)
    return root


def run_build(repo: Path, source: Path, out: Path, env: dict[str, str], *extra: str
              ) -> dict[str, float]:
    """One build-index process: wall s, user+sys CPU s, peak RSS MB."""
    cmd = [sys.executable, "-m", "ui", "build-index", "--source", str(source), "--out",
           str(out), "--overwrite", "--backbone", "mobilenet_v2", "--image-size", "160",
           "--weights", str(WEIGHTS), *extra]
    run = cold(cmd, repo, {**env, "PYTHONPATH": str(repo)})
    return {"wall": run["wall_s"], "cpu": run["cpu_s"], "peak_mb": run["peak_mb"]}


def actor_start(out: Path) -> float:
    """Pipeline wall time less busy span, from a Ray build's manifest."""
    engine = json.loads((out / "manifest.json").read_text())["embeddings"]["engine"]
    return float(engine["pipeline_seconds"]) - float(engine["busy_span_seconds"])


def median(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} [{min(values):.2f}-{max(values):.2f}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", action="append", default=None,
                   help="checkout to measure (repeat to interleave several); default: this one")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--per-breed", type=int, default=4)
    p.add_argument("--ray", action="store_true", help="also a --engine ray build per round")
    p.add_argument("--work", default=None, help="folder for photos, caches and bundles")
    args = p.parse_args(argv)
    repos = [Path(r).resolve() for r in (args.repo or [str(REPO)])]
    work = Path(args.work or tempfile.mkdtemp(prefix="startup-"))
    source = work / "photos"  # a work folder of an earlier run is reused as it is
    if not source.exists():
        make_folder(source, args.per_breed)
    keras_home = work / "keras-home"
    if not keras_home.exists():
        shutil.copytree(DATA / "keras-home", keras_home)
    figures: dict[str, dict[str, list[float]]] = {str(r): {} for r in repos}
    envs = {}
    for i, repo in enumerate(repos):  # warm each checkout's own cache once
        envs[repo] = {**os.environ, "KERAS_HOME": str(keras_home),
                      "EMBED_DOGS_CACHE": str(work / f"cache-{i}")}
        run_build(repo, source, work / f"warm-{i}", envs[repo])
    for round_ in range(args.rounds):
        for i, repo in enumerate(repos):
            row = figures[str(repo)]
            local = run_build(repo, source, work / f"b-{i}", envs[repo])
            for key, value in local.items():
                row.setdefault(key, []).append(value)
            if args.ray:
                out = work / f"r-{i}"
                ray = run_build(repo, source, out, envs[repo], "--engine", "ray",
                                "--workers", "1")
                row.setdefault("ray_wall", []).append(ray["wall"])
                row.setdefault("actor_start", []).append(actor_start(out))
            print(f"round {round_ + 1} {repo}: " + ", ".join(
                f"{k} {v[-1]:.2f}" for k, v in row.items()), flush=True)
    print(f"\nmedians [min-max] of {args.rounds} rounds; load {os.getloadavg()}")
    for repo, row in figures.items():
        print(repo)
        for key, values in row.items():
            print(f"  {key:12s} {median(values)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
