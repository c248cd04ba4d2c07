"""Precision and recall of every audit signal against problems planted in a copy of woof-sample.

Copies ../shared/data/woof-sample to a work folder and plants, seeded:

- moved: 5 % of the photos moved into another breed's folder (the label is wrong);
- near: resized + recompressed (some lightly cropped) copies beside their originals; the
  build's seeded hold-out puts some of the pairs across train and test (split leaks);
- exact: byte-identical copies under new names;
- not_dog: cats and objects from ../shared/data/not-dogs-dev dropped into breed folders;
- low_quality: photos degraded in place (blurred, darkened, brightened, shrunk).

The plants never share a photo, so each has one truth. Then it builds a bundle with the CLI as
it is (`embed-dogs build-index`, dog-tuned MobileNetV2 160), audits it from the bundle's own
files (`ui.audit_report.audit_bundle`) and prints, per kind, precision and recall against the
plants, and the unplanted findings for a person to judge.

    python benchmarks/audit_planted.py                      # plants, builds, audits (~5 min)
    python benchmarks/audit_planted.py --workdir /tmp/ap    # keep (and reuse) the bundle

Measured (665 rows: 600 + 15 exact + 30 near copies + 20 non-dogs; 30 moved, 12 degraded),
precision / recall, seed 0 | seed 1:

    exact_duplicate  1.00 / 1.00           | 1.00 / 1.00
    near_duplicate   0.75 / 1.00 (30/30)   | 0.71 / 1.00   threshold 0.775 | 0.799 (Youden)
    split_leak       0.85 / 1.00 (11/11)   | 0.67 / 1.00 (8/8)
    label            0.59 / 0.90 (27/30)   | 0.43 / 0.93   1.5 | 2.2 rows per moved photo
    not_a_dog        0.90 / 0.95 (19/20)   | 0.67 / 0.90   any kind: 19/20 | 20/20
    low_quality      0.92 / 0.75 (9/12)    | 0.92 / 0.75   planted "light" (80 % white) 0/3
After audit-wire (seed 0, a fresh build): the build keeps near-duplicate groups in one split
(31 groups, 11 crossed, 11 photos moved, its threshold 0.799 from 40 photos x 5 copies, 9.9 s
of an 80 s build under load), so planted pairs across the split fell from 11 to 1 (split_leak
0.33 / 1.00 (1/1)); washed-out photos (low_quality) are found: light 3/3, low_quality 0.82 /
1.00 (12/12; the 2 unplanted are a white-background studio shot and a dingo on pale sand).
The other kinds are unchanged (label 0.59 / 0.90, 1.5 rows per moved photo).
Most unplanted near-duplicates and label rows are real: woof-sample (Imagewoof, from ImageNet)
has re-cropped copies of one photo and photos filed under the wrong breed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"
WEIGHTS = DATA / "weights" / "mobilenet_v2_160_dogs_no_top.weights.h5"
MOVED, NEAR, EXACT, CATS, OBJECTS, LOW_EACH = 0.05, 30, 15, 10, 10, 3


def _rel(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def plant(src: Path, dst: Path, seed: int) -> dict:
    """Copy `src` to `dst`, plant the problems, return the truth (paths relative to dst)."""
    from embed.perturb import perturb

    shutil.copytree(src, dst)
    rng = np.random.default_rng(seed)
    photos = sorted(p for p in dst.glob("*/*") if p.is_file())
    breeds = sorted(p.name for p in dst.iterdir() if p.is_dir())
    order = rng.permutation(len(photos))
    n_moved = round(MOVED * len(photos))
    cut = np.cumsum([n_moved, NEAR, EXACT, 4 * LOW_EACH])
    moved_i, near_i, exact_i, low_i = np.split(order, cut)[:4]
    truth: dict = {"moved": {}, "near": [], "exact": [], "not_dog": {}, "low_quality": {}}
    for i in moved_i:
        p = photos[i]
        other = [b for b in breeds if b != p.parent.name]
        target = dst / other[int(rng.integers(len(other)))] / p.name
        p.rename(target)
        truth["moved"][_rel(target, dst)] = p.parent.name
    for n, i in enumerate(near_i):
        p = photos[i]
        copy = p.with_name(f"{p.stem}_copy.jpg")
        keep = 0.92 if n % 3 == 2 else 1.0  # every third one also lightly cropped
        copy.write_bytes(perturb(p.read_bytes(), float(rng.uniform(0.5, 0.8)),
                                 int(rng.integers(50, 76)), keep, rng))
        truth["near"].append([_rel(p, dst), _rel(copy, dst)])
    for i in exact_i:
        p = photos[i]
        copy = p.with_name(f"{p.stem}_dup{p.suffix}")
        shutil.copyfile(p, copy)
        truth["exact"].append([_rel(p, dst), _rel(copy, dst)])
    kinds = ["blurry", "dark", "light", "tiny"]
    for n, i in enumerate(low_i):
        p, kind = photos[i], kinds[n % 4]
        img = Image.open(p).convert("RGB")
        if kind == "blurry":
            img = img.filter(ImageFilter.GaussianBlur(6))
        elif kind == "dark":
            img = ImageEnhance.Brightness(img).enhance(0.12)
        elif kind == "light":
            img = Image.blend(img, Image.new("RGB", img.size, (255, 255, 255)), 0.8)
        else:
            img = img.resize((round(img.width * 72 / min(img.size)),
                              round(img.height * 72 / min(img.size))))
        img.save(p, "JPEG", quality=90)
        truth["low_quality"][_rel(p, dst)] = kind
    for kind, count in (("cat", CATS), ("objects", OBJECTS)):
        pool = sorted((DATA / "not-dogs-dev" / kind).glob("*"))
        for j in rng.choice(len(pool), count, replace=False):
            breed = breeds[int(rng.integers(len(breeds)))]
            target = dst / breed / f"planted_{kind}_{pool[j].name}"
            shutil.copyfile(pool[j], target)
            truth["not_dog"][_rel(target, dst)] = kind
    return truth


def build(source: Path, out: Path) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ui", "build-index", "--source", str(source),
                    "--out", str(out), "--backbone", "mobilenet_v2", "--image-size", "160",
                    "--weights", str(WEIGHTS)], cwd=REPO, check=True)
    return time.perf_counter() - start


def prepared(work: Path, seed: int) -> tuple[Path, dict]:
    """The planted folder and its bundle, reused from `work` when complete."""
    source, bundle, truth_file = work / "photos", work / "bundle", work / "truth.json"
    if not (truth_file.is_file() and (bundle / "manifest.json").is_file()):
        shutil.rmtree(source, ignore_errors=True)
        truth = plant(DATA / "woof-sample", source, seed)
        print(f"planted into {source}: " + ", ".join(
            f"{k} {len(v)}" for k, v in truth.items()), flush=True)
        print(f"built the bundle in {build(source, bundle):.0f} s", flush=True)
        truth_file.write_text(json.dumps(truth, indent=1))
    return bundle, json.loads(truth_file.read_text())


# ---- scoring against the plants -----------------------------------------------------------
def _pr(hits: int, flagged: int, found: int, planted: int) -> tuple[str, str]:
    precision = f"{hits / flagged:.2f} ({hits}/{flagged})" if flagged else "-"
    recall = f"{found / planted:.2f} ({found}/{planted})" if planted else "-"
    return precision, recall


def score(findings, truth: dict, table, root: Path) -> list[tuple[str, ...]]:
    """(kind, precision, recall, note) per kind; paths relative to the planted folder."""
    rel = findings.assign(path=[_rel(Path(p), root) for p in findings["path"]],
                          related_path=[_rel(Path(p), root) if p else "" for p in
                                        findings["related_path"]])
    split = dict(zip([_rel(Path(p), root) for p in table["path"]], table["split"], strict=True))
    by = {k: rel[rel["issue"] == k] for k in rel["issue"].unique()}
    empty = rel.iloc[:0]

    def pairs(kind: str) -> set[frozenset]:
        f = by.get(kind, empty)
        return {frozenset(p) for p in zip(f["path"], f["related_path"], strict=True)}

    rows = []
    for kind, planted in (("exact_duplicate", truth["exact"]), ("near_duplicate", truth["near"])):
        want = {frozenset(p) for p in planted}
        got = pairs(kind) | (pairs("split_leak") if kind == "near_duplicate" else set())
        rows.append((kind, *_pr(len(pairs(kind) & want), len(pairs(kind)), len(want & got),
                                len(want)), "pairs; near: found as near_duplicate or split_leak"))
    leaks = {frozenset(p) for p in truth["near"] + truth["exact"]
             if {split[p[0]], split[p[1]]} == {"train", "test"}}
    rows.append(("split_leak", *_pr(len(pairs("split_leak") & leaks), len(pairs("split_leak")),
                                    len(pairs("split_leak") & leaks), len(leaks)),
                 "planted pairs that the build put across train/test"))
    lab = by.get("label", empty)
    moved = truth["moved"]
    hits = lab[lab["path"].isin(moved)]
    right = sum(moved[p] == s for p, s in zip(hits["path"], hits["suggested_label"], strict=True))
    on_plants = lab["path"].isin(truth["not_dog"]).sum()
    rows.append(("label", *_pr(len(hits), len(lab), len(hits), len(moved)),
                 f"{len(lab) / len(moved):.1f} label rows per moved photo; suggestion right for"
                 f" {right}/{len(hits)}; {on_plants} more rows are planted non-dogs"))
    nd = by.get("not_a_dog", empty)
    not_dog = truth["not_dog"]
    any_kind = rel[rel["issue"].isin(["not_a_dog", "label", "outlier"])]["path"]
    caught = {p: any_kind.eq(p).any() for p in not_dog}
    rows.append(("not_a_dog", *_pr(nd["path"].isin(not_dog).sum(), len(nd),
                                   nd["path"].isin(not_dog).sum(), len(not_dog)),
                 f"any of not_a_dog/label/outlier: {sum(caught.values())}/{len(not_dog)}"
                 f" (cats {sum(v for p, v in caught.items() if not_dog[p] == 'cat')},"
                 f" objects {sum(v for p, v in caught.items() if not_dog[p] != 'cat')})"))
    out = by.get("outlier", empty)
    planted_any = set(moved) | set(not_dog)
    rows.append(("outlier", *_pr(out["path"].isin(planted_any).sum(), len(out),
                                 len(set(out["path"]) & planted_any), len(planted_any)),
                 "truth: moved photos and non-dogs (far from the breed they are filed under)"))
    low = by.get("low_quality", empty)
    lowq = truth["low_quality"]
    hit_paths = set(low["path"]) & set(lowq)
    found_by_kind = {k: sum(p in hit_paths for p, v in lowq.items() if v == k)
                     for k in ("blurry", "dark", "light", "tiny")}
    note = ", ".join(f"{k} {n}/{list(lowq.values()).count(k)}" for k, n in found_by_kind.items())
    rows.append(("low_quality", *_pr(low["path"].isin(lowq).sum(), len(low), len(hit_paths),
                                     len(lowq)), f"planted found: {note}"))
    return rows


def unplanted(findings, truth: dict, root: Path, per_kind: int) -> None:
    planted = (set(truth["moved"]) | set(truth["not_dog"]) | set(truth["low_quality"])
               | {p for pair in truth["near"] + truth["exact"] for p in pair})
    print(f"\nunplanted findings (up to {per_kind} per kind, for a person to judge):")
    for kind, group in findings.groupby("issue", sort=False):
        rel = [_rel(Path(p), root) for p in group["path"]]
        mask = [p not in planted for p in rel]
        rest = group[mask]
        print(f"  {kind}: {len(rest)} of {len(group)}")
        for _, r in rest.head(per_kind).iterrows():
            related = f" ~ {_rel(Path(r['related_path']), root)}" if r["related_path"] else ""
            print(f"    {r['score']:.3f} {_rel(Path(r['path']), root)}{related}: {r['why']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="Keep the planted photos and bundle here (reused when present).")
    parser.add_argument("--csv", type=Path, default=None, help="Also write the findings here.")
    parser.add_argument("--show", type=int, default=5, help="Unplanted findings per kind.")
    args = parser.parse_args()
    from embed.bundle import Bundle
    from ui.audit_report import compose_findings, compute_signals

    work = args.workdir or Path(tempfile.mkdtemp(prefix="audit_planted-"))
    try:
        bundle_dir, truth = prepared(work, args.seed)
        bundle = Bundle.open(bundle_dir)
        timings: dict[str, float] = {}
        signals = compute_signals(bundle, timings=timings)
        table = bundle.metadata()
        findings = compose_findings(table, signals)
        if args.csv:
            findings.to_csv(args.csv, index=False)
        root = bundle.source_root
        src = bundle.manifest.source
        if src.get("near_duplicate_groups") is not None:
            bt = src.get("near_duplicate_threshold")
            print(f"build: {src.get('near_duplicate_groups')} near-duplicate groups kept in one"
                  f" split ({src.get('near_duplicate_groups_crossing')} crossed,"
                  f" {src.get('near_duplicate_rows_moved')} photos moved), threshold"
                  f" {bt['value']:.4f} from {bt['copies']} copies, in"
                  f" {src.get('near_duplicate_seconds'):.1f} s")
        print(f"\n{len(table)} rows; findings per kind: "
              + ", ".join(f"{k} {v}" for k, v in findings["issue"].value_counts().items()))
        t = signals.threshold
        print(f"near-duplicate threshold {t.value:.4f}: {t.how}; copies kept"
              f" {t.copy_recall:.3f} of {t.copies}, distinct neighbours kept"
              f" {t.neighbour_rate:.3f} of {t.neighbours}")
        if signals.gate is not None:
            print(f"gate (from the manifest): not_a_dog below {signals.gate.not_dog_threshold}")
        print("seconds per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
        print(f"\n{'kind':<16} {'precision':<16} {'recall':<16} note")
        for kind, precision, recall, note in score(findings, truth, table, root):
            print(f"{kind:<16} {precision:<16} {recall:<16} {note}")
        unplanted(findings, truth, root, args.show)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
