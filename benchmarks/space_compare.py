"""Which look-alike space to serve: raw embeddings against spaces learned on the train split,
and whether test-time flip averaging pays.

For each bundle given (build them once, e.g. woof-sample with the dog-tuned MobileNetV2 at
160 px and with ``mobilenet_025`` ImageNet), with the bundle's own train/test split:

- per space: same-breed precision@5 and 1-NN accuracy of the test photos against the train
  rows; the within-breed overlap@10 (each test photo's 10 nearest same-breed train photos in
  the space against those in the raw space); near-copies found first (every photo resized to
  half and recompressed at JPEG quality 75, embedded with the bundle's serving embedder,
  searched among all the bundle's rows); the share of the gap between raw precision@5 and the
  head's top-1 that the space closes;
- flip averaging: the mean of a photo's and its mirror image's embeddings (renormalised), for
  the queries, the gallery, or both, in the raw and the default space, with the head's top-1
  (refitted on the gallery vectors as they are) and the embedding cost.

    KERAS_HOME=... python benchmarks/space_compare.py --out /tmp/space-bundles \
        /tmp/space-bundles/v2dogs /tmp/space-bundles/m025

The extra photos are embedded once per bundle and cached under --out (space_data.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from space_data import NEAR_COPY, extras  # noqa: E402  (the path is set just above)

from classify.logreg import fit_logreg  # noqa: E402
from embed.bundle import Bundle  # noqa: E402
from index.quality import near_copy_first, neighbour_figures, within_label_overlap  # noqa: E402
from index.space import BLEND_WEIGHT, fit_space  # noqa: E402

SPACES: list[tuple[str, str, float]] = [
    ("lda", "lda", 1.0), ("logit", "logit", 1.0),
    *[(f"blend w={w}", "blend", w) for w in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)],
    ("blend_logit w=0.5", "blend_logit", 0.5),
]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def head_top1(x_train, y_train, x_test, y_test) -> float:
    return round(float(np.mean(fit_logreg(x_train, y_train).predict(x_test) == y_test)), 4)


def compare(bundle_dir: Path, cache: Path) -> dict[str, Any]:
    bundle = Bundle.open(bundle_dir)
    table = bundle.metadata()
    vectors = bundle.embeddings()
    labels = table["label"].astype(str).to_numpy()
    train = (table["split"] == "train").to_numpy()
    test = (table["split"] == "test").to_numpy()
    more = extras(bundle_dir, cache)
    x_tr, y_tr, x_te, y_te = vectors[train], labels[train], vectors[test], labels[test]
    head = head_top1(x_tr, y_tr, x_te, y_te)
    raw = neighbour_figures(x_te, y_te, x_tr, y_tr)
    gap = head - raw["precision@5"]
    rows = [{"space": "raw", **raw, "within@10": 1.0,
             "near_copy_first": near_copy_first(more["near_copies"], np.arange(len(vectors)),
                                                vectors),
             "gap_closed": 0.0, "dims": int(vectors.shape[1])}]
    for name, kind, weight in SPACES:
        space = fit_space(x_tr, y_tr, kind, blend_weight=weight)
        l_tr, l_te = space.apply(x_tr), space.apply(x_te)
        fig = neighbour_figures(l_te, y_te, l_tr, y_tr)
        rows.append({"space": name, **fig,
                     "within@10": within_label_overlap(l_te, l_tr, x_te, x_tr, y_te, y_tr),
                     "near_copy_first": near_copy_first(space.apply(more["near_copies"]),
                                                        np.arange(len(vectors)),
                                                        space.apply(vectors)),
                     "gap_closed": round((fig["precision@5"] - raw["precision@5"]) / gap, 3)
                     if gap > 0 else None,
                     "dims": space.dim_out})
    return {"bundle": str(bundle_dir), "backbone": bundle.manifest.model_dump()["backbone"]["name"],
            "image_size": bundle.manifest.model_dump()["backbone"]["image_size"], "head_top1": head,
            "queries": int(test.sum()), "gallery": int(train.sum()), "spaces": rows,
            "flip": flips(vectors, more, labels, train, test)}


def flips(vectors, more, labels, train, test) -> list[dict[str, Any]]:
    """Flip averaging for queries, gallery or both, in the raw and the default space."""
    averaged = _unit(vectors + more["rows_flipped"])
    y_tr, y_te = labels[train], labels[test]
    seconds = float(more["seconds_rows_plain_and_flipped"])
    per_photo_ms = 1000 * seconds / (2 * len(vectors))  # one pass of one photo
    out = []
    for gallery_name, gallery in (("plain", vectors), ("flip-avg", averaged)):
        space = fit_space(gallery[train], y_tr, "blend", blend_weight=BLEND_WEIGHT)
        model = fit_logreg(gallery[train], y_tr)
        for query_name, queries in (("plain", vectors), ("flip-avg", averaged)):
            q = queries[test]
            row = {"gallery": gallery_name, "queries": query_name,
                   "raw": neighbour_figures(q, y_te, gallery[train], y_tr),
                   "blend": neighbour_figures(space.apply(q), y_te, space.apply(gallery[train]),
                                              y_tr),
                   "head_top1": round(float(np.mean(model.predict(q) == y_te)), 4),
                   "embed_ms_per_query": round(per_photo_ms * (2 if query_name != "plain"
                                                               else 1), 2)}
            out.append(row)
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [f"### {result['backbone']} {result['image_size']} px ({result['bundle']}): "
             f"{result['queries']} test queries, {result['gallery']} train gallery, head "
             f"top-1 {result['head_top1']:.3f}", "",
             "| space | dims | precision@5 | 1-NN | gap closed | within-breed overlap@10 |"
             " near-copy first |", "|---|---|---|---|---|---|---|"]
    for r in result["spaces"]:
        gap = "-" if r["gap_closed"] is None else f"{r['gap_closed']:.0%}"
        lines.append(f"| {r['space']} | {r['dims']} | {r['precision@5']:.3f} | {r['nn1']:.3f}"
                     f" | {gap} | {r['within@10']:.3f} | {r['near_copy_first']:.2%} |")
    lines += ["", "| gallery | queries | raw p@5 | raw 1-NN | blend p@5 | blend 1-NN |"
              " head top-1 | embed ms/query |", "|---|---|---|---|---|---|---|---|"]
    for r in result["flip"]:
        lines.append(f"| {r['gallery']} | {r['queries']} | {r['raw']['precision@5']:.3f} |"
                     f" {r['raw']['nn1']:.3f} | {r['blend']['precision@5']:.3f} |"
                     f" {r['blend']['nn1']:.3f} | {r['head_top1']:.3f} |"
                     f" {r['embed_ms_per_query']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="cache and results folder")
    args = parser.parse_args()
    results = [compare(b, args.out) for b in args.bundles]
    print(f"near-copy: {NEAR_COPY}\n")
    for result in results:
        print(markdown(result) + "\n")
    (args.out / "space_compare.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
