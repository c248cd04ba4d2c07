"""Render time of the Streamlit app on a large synthetic bundle (default 20,000 images).

The bundle is made without embedding anything: clustered random unit vectors (one cluster per
breed) written through ShardWriter, small generated JPEGs as the "photos", the FAISS index via
build_bundle_index and the logistic-regression head via train_logreg_head. Its backbone is a
randomly initialised mobilenet_v2, so the app can rebuild it without downloads.

First the model, index and head are loaded once (what `st.cache_resource` keeps per bundle);
then each page's first render is timed with streamlit.testing.v1.AppTest in a fresh session,
with an empty thumbnail cache, so the figures include making every thumbnail shown.

    python benchmarks/ui_render.py                # builds /tmp/ui-bench-20000 unless present
    python benchmarks/ui_render.py --rows 5000 --rebuild
"""

from __future__ import annotations

import argparse
import json
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

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
APP = REPO / "ui" / "app.py"
BUDGET_S = 5.0
SHARD_ROWS = 4096


def write_photos(folder: Path, labels: list[str], seed: int = 0) -> list[str]:
    """One small distinct JPEG per row, under folder/<breed>/."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i, label in enumerate(labels):
        sub = folder / label
        sub.mkdir(parents=True, exist_ok=True)
        colour = rng.integers(0, 256, 3)
        arr = np.clip(colour + rng.normal(0, 30, (48, 64, 3)), 0, 255).astype(np.uint8)
        path = sub / f"{i:06d}.jpg"
        Image.fromarray(arr).save(path, quality=80)
        paths.append(str(path))
    return paths


def make_bundle(out: Path, rows: int, breeds: int, image_size: int = 96,
                seed: int = 0) -> dict[str, Any]:
    """A complete bundle of `rows` synthetic images in `breeds` classes; returns timings."""
    import hashlib

    import pandas as pd

    from embed.build import write_tables
    from embed.bundle import new_manifest
    from embed.embedder import load_embedder, save_serving_weights
    from embed.shards import ShardWriter
    from embed.staging import staged_bundle
    from embed.vectors import l2_normalise
    from ui.workflows import fit_default_head, index_bundle

    timings: dict[str, Any] = {}
    rng = np.random.default_rng(seed)
    embedder = load_embedder("mobilenet_v2", "none", image_size, "keras")
    dim = embedder.dim
    names = [f"breed_{b:03d}" for b in range(breeds)]
    labels = [names[i % breeds] for i in range(rows)]
    splits = ["test" if rng.random() < 0.2 else "train" for _ in range(rows)]

    start = time.perf_counter()
    photos = write_photos(out.parent / f"{out.name}-photos", labels, seed)
    timings["photos_s"] = round(time.perf_counter() - start, 1)

    centroids = rng.normal(size=(breeds, dim)).astype(np.float32)
    with staged_bundle(out, overwrite=True) as bundle:
        source = {"kind": "folder", "location": str(out.parent / f"{out.name}-photos"),
                  "splits": {s: splits.count(s) for s in ("train", "test")},
                  "split_origin": "synthetic", "breeds": breeds, "images": rows}
        bundle.write_manifest(new_manifest(embedder.identity(), source))
        save_serving_weights(embedder, bundle)  # what the app rebuilds its backbone from
        writer = ShardWriter(bundle, dim, SHARD_ROWS)
        for first in range(0, rows, SHARD_ROWS):
            idx = np.arange(first, min(rows, first + SHARD_ROWS))
            vectors = l2_normalise(centroids[idx % breeds]
                                   + rng.normal(scale=1.2, size=(len(idx), dim)))
            writer.add([{"row_id": int(i), "path": photos[i], "label": labels[i],
                         "split": splits[i],
                         "sha256": hashlib.sha256(photos[i].encode()).hexdigest(),
                         "width": 64, "height": 48, "reason": ""} for i in idx], vectors)
        shards = writer.close()
        write_tables(bundle, shards, pd.DataFrame(columns=["row_id", "path", "reason"]))
        bundle.update_manifest(
            backbone=embedder.identity(),  # now names the weights file inside the bundle
            counts={"images": rows, "embedded": rows, "skipped": 0},
            embeddings={"shards": shards, "rows_per_shard": SHARD_ROWS, "dtype": "float32",
                        "normalised": "l2"},
        )
        start = time.perf_counter()
        index_bundle(bundle)
        timings["index_s"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        fit_default_head(bundle)
        timings["head_s"] = round(time.perf_counter() - start, 1)
    return timings


def timed_run(at: Any, timeout: float = 300) -> float:
    start = time.perf_counter()
    at.run(timeout=timeout)
    seconds = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(at.exception[0].value)
    return seconds


def measure(bundle: Path) -> dict[str, float]:
    """Seconds: loading the model/index/head once, then each page's first render."""
    from streamlit.testing.v1 import AppTest

    from ui import core, widgets

    os.environ["EMBED_DOGS_BUNDLE"] = str(bundle)
    os.environ["EMBED_DOGS_CACHE"] = tempfile.mkdtemp(prefix="ui-bench-cache-")  # cold thumbs
    out: dict[str, float] = {}
    start = time.perf_counter()
    widgets.load_context(core.BundleRef.of(str(bundle.resolve())))
    out["load model, index, head (once per bundle)"] = time.perf_counter() - start

    at = AppTest.from_file(str(APP), default_timeout=300)
    out["Identify, first render"] = timed_run(at)
    at.radio(key="identify_source").set_value("Dataset")
    out["Identify, switch to dataset picker"] = timed_run(at)
    at.selectbox(key="identify_pick_row").select_index(0)
    out["Identify, pick a photo: predictions + 12 look-alikes"] = timed_run(at)
    at.radio(key="gallery_filter").set_value("other")
    out["Identify, filter: other breeds"] = timed_run(at)
    next(b for b in at.button if b.label == "use as query").click()
    out["Identify, use a look-alike as query"] = timed_run(at)
    at.switch_page("page_browse.py")
    out["Browse, first render (24 thumbnails)"] = timed_run(at)
    at.switch_page("page_map.py")
    out["Map, first render (2-D projection of all rows)"] = timed_run(at)
    out["Map, second render (cached projection)"] = timed_run(at)
    at.switch_page("page_report.py")
    out["Report, first render"] = timed_run(at)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000, help="images in the synthetic bundle")
    p.add_argument("--breeds", type=int, default=120, help="breeds (Stanford Dogs has 120)")
    p.add_argument("--out", type=Path, default=None,
                   help="bundle folder (default /tmp/ui-bench-ROWS)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the bundle even if present")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = (args.out or Path(tempfile.gettempdir()) / f"ui-bench-{args.rows}").resolve()
    build: dict[str, Any] = {}
    if args.rebuild or not (out / "manifest.json").is_file():
        print(f"building a synthetic {args.rows:,}-image bundle in {out} …", flush=True)
        build = make_bundle(out, args.rows, args.breeds)
        print(f"  built: {build}", flush=True)
    figures = measure(out)
    print(f"\nStreamlit app on {out} ({args.rows:,} images), seconds per script run (AppTest):")
    for name, seconds in figures.items():
        print(f"  {name:<55} {seconds:6.2f}")
    renders = {k: v for k, v in figures.items() if not k.startswith("load")}
    worst = max(renders, key=renders.__getitem__)
    verdict = "within" if renders[worst] < BUDGET_S else "OVER"
    print(f"\nslowest render after loading: {worst} {renders[worst]:.2f} s ({verdict} the"
          f" {BUDGET_S:.0f} s budget)")
    if args.json:
        args.json.write_text(json.dumps({"rows": args.rows, "build": build,
                                         "seconds": figures}, indent=2))
    return 0 if renders[worst] < BUDGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
