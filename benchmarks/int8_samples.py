"""int8's one-time costs against its sample sizes: does a smaller calibration sample, or a
smaller task-check sample, still decide the same way?

For each calibration size the backbone is quantised on that many of the folder's images
(the build's seeded sample, `embed.quantise.pick_samples`), and every image of the folder
is embedded with float32 and int8; the task check (`embed.quantise.task_check`) is then run
on the first k images of the build's seeded check order for each check size, and the
neighbour overlap@10 of int8 against float32 is measured on the dev sets as well (photos
that are not in the folder's breeds: they show whether int8 keeps look-alikes outside the
calibration's distribution). Prints one row per (calibration, check) pair: conversion
seconds, check seconds, top-1 float32 -> int8, drop, overlap@10, verdict.

    python benchmarks/int8_samples.py --backbone mobilenet_v2 --image-size 160 \\
        --weights ../shared/data/weights/mobilenet_v2_160_dogs_no_top.weights.h5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"


def embed_all(model, items, config) -> tuple[np.ndarray, list]:
    """L2-normalised vectors of every readable item, and their labels."""
    from embed.build import load_payloads
    from embed.int8_runtime import l2_rows
    from embed.pipeline import iter_payload_batches

    payloads = load_payloads(SimpleNamespace(kind="folder"), items)
    vectors, labels = [], []
    by_id = {it.row_id: it for it in items}
    for batch in iter_payload_batches([it.row_id for it in items], payloads, config):
        if batch.ok.any():
            vectors.append(l2_rows(model.run(batch.inputs[batch.ok])))
            labels += [by_id[i].label for i in batch.row_ids[batch.ok].tolist()]
    return np.concatenate(vectors), labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="mobilenet_v2")
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--weights", default=str(SHARED / "weights"
                                            / "mobilenet_v2_160_dogs_no_top.weights.h5"))
    p.add_argument("--folder", default=str(SHARED / "woof-sample"))
    p.add_argument("--calibration", type=int, nargs="+", default=[25, 50, 100, 200])
    p.add_argument("--check", type=int, nargs="+", default=[100, 200, 300, 400, 600])
    args = p.parse_args()

    from embed.build import load_payloads
    from embed.embedder import load_embedder
    from embed.litert_model import TFLiteModel
    from embed.pipeline import iter_payload_batches
    from embed.quantise import export_int8, neighbour_overlap, pick_samples, task_check
    from embed.sources import folder_source

    embedder = load_embedder(args.backbone, args.weights, args.image_size, "litert")
    config = embedder.reader_config(32)
    source = folder_source(args.folder)
    samples = pick_samples(source.items)
    check_order = samples.check
    dev = [it for name in ("not-dogs-dev", "unknown-breed-dev")
           for it in folder_source(str(SHARED / name)).items]
    float_model = TFLiteModel(embedder.runtime.float_runtime.describe()["cache_file"], 1, 4, 2)
    ref, labels = embed_all(float_model, check_order, config)
    ref_dev, _ = embed_all(float_model, dev, config)
    print(f"{args.backbone} @ {args.image_size}, {len(check_order)} check-order images,"
          f" {len(dev)} dev-set photos")
    print(f"{'calib':>5} {'conv s':>6} {'check':>5} {'check s':>7} {'fits s':>6} {'top1 f32':>8}"
          f" {'int8':>6} {'drop':>5} {'ovl@10':>6} {'dev ovl':>7} verdict")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.calibration:
            pool = pick_samples(source.items, calibration_items=n).calibration
            payloads = load_payloads(source, pool)

            def calibration(pool=pool, payloads=payloads):
                for b in iter_payload_batches([it.row_id for it in pool], payloads, config):
                    yield b.inputs[b.ok]

            path = Path(tmp) / f"int8-{n}.tflite"
            start = time.perf_counter()
            export_int8(embedder.model, path, calibration)
            conversion = time.perf_counter() - start
            int8 = TFLiteModel(path, 1, 4, 2)
            start = time.perf_counter()
            cand, _ = embed_all(int8, check_order, config)
            embed_s = (time.perf_counter() - start) / len(check_order)
            dev_overlap = neighbour_overlap(ref_dev, embed_all(int8, dev, config)[0])
            for k in args.check:
                start = time.perf_counter()
                judged = task_check(ref[:k], cand[:k], labels[:k])
                fits = time.perf_counter() - start  # the logistic-regression folds
                took = fits + k * embed_s * 2  # both models embed the check sample
                print(f"{n:>5} {conversion:>6.1f} {k:>5} {took:>7.1f} {fits:>6.1f}"
                      f" {judged['top1_float32']:>8} {judged['top1_int8']:>6}"
                      f" {judged['top1_drop_points']:>5} {judged['overlap_at_10']:>6}"
                      f" {dev_overlap:>7.3f} {'pass' if judged['passed'] else 'FAIL'}",
                      flush=True)


if __name__ == "__main__":
    main()
