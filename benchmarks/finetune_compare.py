"""Logistic regression against the fine-tuned Keras head, and what re-embedding with the
fine-tuned backbone does to look-alike search.

For each backbone configuration, on one image folder (the same seeded train/test split
throughout):
  1. build a bundle (logistic-regression head included);
  2. finetune, head only: dense softmax on the stored embeddings;
  3. finetune, head on stored embeddings, then the top --unfreeze layers trained on images;
  4. the same with augmentation (head phase then runs through images too), unless --no-augment;
  5. `build-index --backbone-from` the unfrozen bundle of step 3 and compare same-breed
     precision@5 (test queries against train rows) before and after re-embedding.

    KERAS_HOME=../shared/data/keras-home python benchmarks/finetune_compare.py \
        --out /tmp/finetune-compare

Bundles are written under --out (existing base bundles are reused); a JSON and a Markdown
table of the results go there too.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if (SHARED / "keras-home").is_dir():
    os.environ.setdefault("KERAS_HOME", str(SHARED / "keras-home"))

CONFIGS: dict[str, dict[str, Any]] = {
    "mobilenet_v2_160_dogs": {
        "backbone": "mobilenet_v2", "image_size": 160,
        "weights": str(SHARED / "weights" / "mobilenet_v2_160_dogs_no_top.weights.h5"),
    },
    "mobilenet_025_imagenet": {"backbone": "mobilenet_025", "image_size": None,
                               "weights": "imagenet"},
    # random weights at 32 px: no download, seconds a step; the suite's smoke run
    "random_mobilenet_v2_32": {"backbone": "mobilenet_v2", "image_size": 32, "weights": "none"},
}
MEASURED = ("mobilenet_v2_160_dogs", "mobilenet_025_imagenet")  # what a plain run compares


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _copy(src: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)
    return Path(shutil.copytree(src, dst))


def _row(name: str, record: dict[str, Any]) -> dict[str, Any]:
    m = record["metrics"]
    return {"head": name, "top1": m["top1"], "top5": m["top5"],
            "train_seconds": record["train_seconds"],
            "path": record.get("training_path", "stored_embeddings")}


def run_config(name: str, config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Steps 1-5 for one backbone configuration."""
    from classify.finetune import FinetuneParams
    from embed.bundle import Bundle
    from index.quality import bundle_precision_at_k
    from ui.workflows import BuildConfig, build_bundle, train_head

    out = Path(args.out)
    base = out / name
    if not (base / "manifest.json").is_file():
        _log(f"[{name}] building the bundle")
        start = time.perf_counter()
        build_bundle(BuildConfig(source=str(args.source), out=base, runtime=args.runtime,
                                 batch_size=32, overwrite=True, **config))
        _log(f"[{name}] built in {time.perf_counter() - start:.0f}s")
    rows = [_row("logreg", Bundle(base).manifest.model_dump()["heads"]["logreg"])]

    def progress(phase: str, epoch: int, total: int, logs: dict[str, float]) -> None:
        _log(f"  {phase} {epoch}/{total} loss {logs.get('loss', 0):.3f}"
             f" val_loss {logs.get('val_loss', float('nan')):.3f}")

    variants = [("finetune head only", "head", FinetuneParams(epochs=args.head_epochs))]
    variants.append((f"finetune + unfreeze {args.unfreeze}", "unfrozen", FinetuneParams(
        epochs=args.head_epochs, unfreeze=args.unfreeze,
        fine_tune_epochs=args.fine_tune_epochs)))
    if args.augment:
        variants.append((f"finetune + augment + unfreeze {args.unfreeze}", "augmented",
                         FinetuneParams(epochs=args.augment_epochs, augment=True,
                                        unfreeze=args.unfreeze,
                                        fine_tune_epochs=args.fine_tune_epochs)))
    for label, suffix, params in variants:
        bundle_dir = _copy(base, out / f"{name}-{suffix}")
        _log(f"[{name}] {label}")
        record = train_head(bundle_dir, "finetune", params=params, on_epoch=progress)["record"]
        rows.append(_row(label, record))

    refit = out / f"{name}-refit"
    _log(f"[{name}] re-embedding with the fine-tuned backbone of {name}-unfrozen")
    start = time.perf_counter()
    built = build_bundle(BuildConfig(source=str(args.source), out=refit, runtime=args.runtime,
                                     batch_size=32, overwrite=True,
                                     backbone_from=out / f"{name}-unfrozen"))
    refit_seconds = time.perf_counter() - start
    rows.append(_row("logreg on re-embedded bundle",
                     built.manifest.model_dump()["heads"]["logreg"]))
    before = bundle_precision_at_k(Bundle(base), 5)
    after = bundle_precision_at_k(Bundle(refit), 5)
    return {"config": name, **config, "heads": rows,
            "precision@5": {"base": before["precision@5"], "refit": after["precision@5"],
                            "queries": before["queries"], "base_rows": before["base"]},
            "refit_build_seconds": round(refit_seconds, 1)}


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| backbone | head | top-1 | top-5 | train s |", "|---|---|---|---|---|"]
    for r in results:
        for h in r["heads"]:
            lines.append(f"| {r['config']} | {h['head']} | {h['top1']:.1%} | {h['top5']:.1%}"
                         f" | {h['train_seconds']:.1f} |")
    lines += ["", "| backbone | same-breed precision@5 base | after --backbone-from |",
              "|---|---|---|"]
    for r in results:
        p = r["precision@5"]
        lines.append(f"| {r['config']} | {p['base']:.3f} | {p['refit']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from classify.finetune import FinetuneParams  # after KERAS_HOME is set above

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SHARED / "woof-sample")
    parser.add_argument("--out", type=Path, default=Path("/tmp/finetune-compare"))
    parser.add_argument("--configs", nargs="*", default=list(MEASURED), choices=list(CONFIGS))
    parser.add_argument("--unfreeze", type=int, default=10)
    parser.add_argument("--head-epochs", type=int, default=FinetuneParams.epochs,
                        help="epochs of the new head on the frozen backbone")
    parser.add_argument("--fine-tune-epochs", type=int, default=4)
    parser.add_argument("--augment-epochs", type=int, default=5)
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--runtime", default="auto")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = [run_config(name, CONFIGS[name], args) for name in args.configs]
    (args.out / "finetune_compare.json").write_text(json.dumps(results, indent=2))
    table = markdown(results)
    (args.out / "finetune_compare.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
