"""The open-set gate before (classify/gate.py, as a bundle stores it) and after
(classify/gate_evidence.py), on the same photos.

For each bundle: the test split's dogs, and the dev photos of ../shared/data (cats, objects,
English springers: a breed woof-sample lacks). Shares of `dog` / `unknown_breed` /
`not_a_dog`, and for the new gate also `dog` shown as a sure breed (the head and most of the 5
nearest look-alikes in the default learned space agree), with Wilson 95 % intervals.

- before: thresholds as the bundle's build fitted them (on its test split, the very dogs
  reported here, so that row is optimistic); test dogs scored against all other rows, dev
  photos against all rows, with the stored logistic-regression head's top probability floor;
- after: fitted on the train split only (breeds left out in turn, and 5 folds); test dogs and
  dev photos scored against the train rows, which the thresholds saw but the test photos
  never did. The dev photos only chose the signals and report; no threshold is fitted on them.

    python benchmarks/gate_compare.py --out /tmp/space-bundles B1 B2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from space_data import extras  # noqa: E402  (the path is set just above)

from classify.gate import (  # noqa: E402
    DOG,
    NOT_A_DOG,
    UNKNOWN_BREED,
    Gate,
    held_out_scores,
    knn_similarity,
    top_probability,
)
from classify.gate_evidence import fit_evidence_gate  # noqa: E402
from classify.heads import load_predictor  # noqa: E402
from classify.intervals import wilson_interval  # noqa: E402
from embed.bundle import Bundle  # noqa: E402
from index.space import fit_space  # noqa: E402

DEV = ("cats", "objects", "springers")


def shares(verdicts: list[str], confident: list[bool] | None = None) -> dict[str, Any]:
    n = len(verdicts)
    row: dict[str, Any] = {"n": n}
    for v in (DOG, UNKNOWN_BREED, NOT_A_DOG):
        hits = sum(x == v for x in verdicts)
        row[v] = round(hits / n, 4)
        row[f"{v}_ci95"] = [round(b, 4) for b in wilson_interval(hits, n)]
    if confident is not None:
        hits = sum(confident)
        row["sure_breed"] = round(hits / n, 4)
        row["sure_breed_ci95"] = [round(b, 4) for b in wilson_interval(hits, n)]
    return row


def before(bundle: Bundle, more: dict[str, np.ndarray]) -> dict[str, Any]:
    gate = Gate.from_manifest(bundle.manifest)
    head = load_predictor(bundle, "logreg")
    held = held_out_scores(bundle, gate.k)
    out = {"test dogs": shares(gate.verdicts(held.knn, top_probability(
        head.predict_proba(held.vectors)), "logreg"))}
    vectors = bundle.embeddings()
    for name in DEV:
        x = more[name]
        out[name] = shares(gate.verdicts(knn_similarity(x, vectors, gate.k),
                                         top_probability(head.predict_proba(x)), "logreg"))
    return out


def after(bundle: Bundle, more: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict]:
    splits = bundle.split_arrays()
    (x_tr, y_tr), (x_te, _) = splits["train"], splits["test"]
    start = time.perf_counter()
    gate = fit_evidence_gate(x_tr, y_tr)
    fit_seconds = time.perf_counter() - start
    head = load_predictor(bundle, "logreg")
    space = fit_space(x_tr, y_tr)
    gallery = space.apply(x_tr)
    out = {}
    for name, x in (("test dogs", x_te), *((n, more[n]) for n in DEV)):
        proba = head.predict_proba(x)
        head_breeds = np.asarray(head.classes)[proba.argmax(axis=1)]
        nearest = np.argsort(-(space.apply(x) @ gallery.T), axis=1)[:, :gate.k]
        answers = gate.verdicts(x, knn_similarity(x, x_tr, gate.k), head_breeds,
                                y_tr[nearest])
        out[name] = shares([a.verdict for a in answers],
                           [a.verdict == DOG and a.confident for a in answers])
    record = {**gate.record, "fit_seconds": round(fit_seconds, 2)}
    return out, record


def compare(bundle_dir: Path, cache: Path) -> dict[str, Any]:
    bundle = Bundle.open(bundle_dir)
    more = extras(bundle_dir, cache)
    new, record = after(bundle, more)
    return {"bundle": str(bundle_dir), "backbone": bundle.manifest.model_dump()["backbone"]["name"],
            "before": before(bundle, more), "after": new, "record": record}


def _pct(row: dict[str, Any], key: str) -> str:
    low, high = row[f"{key}_ci95"]
    return f"{row[key]:.1%} ({low:.0%}-{high:.0%})"


def markdown(result: dict[str, Any]) -> str:
    lines = [f"### {result['backbone']} ({result['bundle']})", "",
             "| gate | set | n | dog | unknown_breed | not_a_dog | dog shown as sure breed |",
             "|---|---|---|---|---|---|---|"]
    for gate in ("before", "after"):
        for name, row in result[gate].items():
            sure = _pct(row, "sure_breed") if "sure_breed" in row else "-"
            lines.append(f"| {gate} | {name} | {row['n']} | {_pct(row, DOG)} |"
                         f" {_pct(row, UNKNOWN_BREED)} | {_pct(row, NOT_A_DOG)} | {sure} |")
    for gate in ("before", "after"):
        cats, objects = result[gate]["cats"], result[gate]["objects"]
        hits = round(cats[NOT_A_DOG] * cats["n"]) + round(objects[NOT_A_DOG] * objects["n"])
        n = cats["n"] + objects["n"]
        low, high = wilson_interval(hits, n)
        lines.append(f"\n{gate}: cats+objects not_a_dog {hits}/{n} = {hits / n:.1%}"
                     f" ({low:.0%}-{high:.0%})")
    lines.append(f"\nafter: thresholds {result['record']['thresholds']};"
                 f" figures {result['record']['figures']};"
                 f" fit {result['record']['fit_seconds']} s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="cache and results folder")
    args = parser.parse_args()
    results = [compare(b, args.out) for b in args.bundles]
    for result in results:
        print(markdown(result) + "\n")
    (args.out / "gate_compare.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
