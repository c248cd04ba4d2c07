"""The learned look-alike space: a linear map fitted on a bundle's labelled train rows, applied
to stored and query vectors alike with numpy (or FAISS), never TensorFlow.

Raw embeddings rank look-alikes by overall appearance, and a quarter of the five nearest can be
another breed while the breed head knows better. A projection fitted on the train split's
breeds pulls each breed together. Kinds (measured in ``benchmarks/space_compare.py``):

- ``lda``: shrinkage linear discriminant analysis (scikit-learn's ``eigen`` solver, Ledoit-Wolf
  shrinkage of the within-breed covariance): at most ``breeds - 1`` dimensions in which the
  within-breed spread is the identity, centred on the train rows' mean;
- ``logit``: the logistic-regression head's logits, centred per photo (softmax ignores a
  shift), from the head's own arrays or fitted here with the head's recipe;
- ``blend`` (the default) and ``blend_logit``: the raw vector and the learned coordinates side
  by side, ``[sqrt(1 - w) * x, sqrt(w) * p(x) / s]``, where ``s`` is the median norm of the
  train rows' learned coordinates (so ``w = 0.5`` gives both halves the same weight). The raw
  half keeps near-copies first and look-alikes within a breed in visual order; the learned
  half sorts by breed.

Every kind is one affine map followed by L2 normalisation: ``y = normalise(x @ A + b)`` (as a
FAISS ``LinearTransform`` plus ``NormalizationTransform`` in an ``IndexPreTransform`` if
wanted). The space is saved as plain arrays in an ``.npz`` with its own sha256 over the
arrays, loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embed.checked_arrays import read_checked_npz, save_checked_npz
from embed.errors import BundleError
from index.lda import lda_directions

SPACE_VERSION = 1
KINDS = ("lda", "logit", "blend", "blend_logit")
DEFAULT_KIND = "blend"
BLEND_WEIGHT = 0.5  # the learned half's share of the squared norm (measured: see README)
LOGIT_C = 1.0  # the logistic-regression head's own C (classify.logreg.DEFAULT_C)
SEED = 0
_ARRAYS = ("projection", "offset", "class_means", "classes")


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


@dataclass(frozen=True, eq=False)
class LearnedSpace:
    """A fitted space: ``y = normalise([raw_weight * x, learned_weight * (x @ P + o) * s])``
    (the raw half only when ``raw_weight > 0``)."""

    kind: str
    projection: np.ndarray  # P, (dim_in, m)
    offset: np.ndarray  # o, (m,)
    learned_scale: float  # s: 1 / median norm of the train rows' learned coordinates
    raw_weight: float  # sqrt(1 - w); 0 for lda and logit
    learned_weight: float  # sqrt(w); 1 for lda and logit
    classes: np.ndarray  # breed names, (C,)
    class_means: np.ndarray  # each breed's mean learned coordinates (x @ P + o), (C, m)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def dim_in(self) -> int:
        return int(self.projection.shape[0])

    @property
    def dim_out(self) -> int:
        m = int(self.projection.shape[1])
        return m + (self.dim_in if self.raw_weight > 0 else 0)

    def coordinates(self, vectors: np.ndarray) -> np.ndarray:
        """The learned coordinates ``x @ P + o`` (for lda, breeds have identity spread)."""
        x = np.atleast_2d(np.asarray(vectors, np.float32))
        if x.shape[1] != self.dim_in:
            raise ValueError(f"the space takes {self.dim_in}-d vectors, got {x.shape[1]}-d")
        return x @ self.projection + self.offset

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors (raw, L2-normalised embeddings) -> unit vectors of this space, float32."""
        x = np.atleast_2d(np.asarray(vectors, np.float32))
        learned = self.coordinates(x) * np.float32(self.learned_weight * self.learned_scale)
        if self.raw_weight > 0:
            learned = np.hstack([x * np.float32(self.raw_weight), learned])
        return _unit(learned)

    def breed_distances(self, vectors: np.ndarray) -> np.ndarray:
        """(n, C) Euclidean distance of each vector's learned coordinates to each breed's
        mean: for lda, a within-breed Mahalanobis distance in the discriminant subspace."""
        z = self.coordinates(vectors)
        d2 = ((z[:, None, :] - self.class_means[None, :, :].astype(np.float32)) ** 2).sum(-1)
        return np.sqrt(np.maximum(d2, 0.0))

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(A, b) with ``apply(x) == normalise(x @ A + b)``: A is (dim_in, dim_out)."""
        s = self.learned_weight * self.learned_scale
        a = self.projection * s
        b = self.offset * s
        if self.raw_weight > 0:
            a = np.hstack([np.eye(self.dim_in, dtype=np.float32) * self.raw_weight, a])
            b = np.concatenate([np.zeros(self.dim_in, np.float32), b])
        return a.astype(np.float32), b.astype(np.float32)

    def faiss_index(self, vectors: np.ndarray | None = None) -> Any:
        """An exact inner-product ``IndexPreTransform`` (LinearTransform, then
        NormalizationTransform, then IndexFlatIP) that takes raw vectors; `vectors` added."""
        import faiss

        a, b = self.affine()
        linear = faiss.LinearTransform(self.dim_in, self.dim_out, True)
        faiss.copy_array_to_vector(np.ascontiguousarray(a.T).ravel(), linear.A)
        faiss.copy_array_to_vector(b, linear.b)
        linear.is_trained = True
        index = faiss.IndexPreTransform(faiss.NormalizationTransform(self.dim_out, 2.0),
                                        faiss.IndexFlatIP(self.dim_out))
        index.prepend_transform(linear)
        if vectors is not None:
            index.add(np.ascontiguousarray(vectors, np.float32))
        return index

    # ---- persistence ----------------------------------------------------------------------
    def _entries(self) -> dict[str, np.ndarray]:
        meta = {"version": SPACE_VERSION, "kind": self.kind,
                "learned_scale": float(self.learned_scale),
                "raw_weight": float(self.raw_weight),
                "learned_weight": float(self.learned_weight), "figures": self.figures}
        return {"projection": np.asarray(self.projection, np.float32),
                "offset": np.asarray(self.offset, np.float32),
                "class_means": np.asarray(self.class_means, np.float32),
                "classes": np.asarray(self.classes).astype(str),
                "meta": np.array(json.dumps(meta, sort_keys=True))}

    def save(self, path: str | Path) -> str:
        """Write an ``.npz`` of plain arrays (atomically); returns its internal checksum."""
        return save_checked_npz(path, self._entries())

    @classmethod
    def load(cls, path: str | Path) -> LearnedSpace:
        """Read a saved space; refuses files whose arrays do not match their checksum."""
        try:
            entries, intact = read_checked_npz(path)
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path} is not a readable look-alike space ({exc})") from None
        missing = [k for k in (*_ARRAYS, "meta") if k not in entries]
        if missing or not intact:
            raise BundleError(f"{path} is damaged (missing {missing} or checksum mismatch);"
                              " refit the look-alike space")
        meta = json.loads(str(entries["meta"]))
        if meta.get("version") != SPACE_VERSION or meta.get("kind") not in KINDS:
            raise BundleError(f"{path} holds a look-alike space this version cannot read")
        return cls(meta["kind"], entries["projection"], entries["offset"],
                   float(meta["learned_scale"]), float(meta["raw_weight"]),
                   float(meta["learned_weight"]), entries["classes"], entries["class_means"],
                   dict(meta.get("figures") or {}))


# ---- fitting --------------------------------------------------------------------------------
def lda_projection(vectors: np.ndarray, labels: np.ndarray,
                   shrinkage: str | float = "auto") -> tuple[np.ndarray, np.ndarray, dict]:
    """Shrinkage LDA on the train rows: (P, o, facts), coordinates ``x @ P + o``. With the
    default Ledoit-Wolf shrinkage only the kept directions are solved (index.lda: the same
    directions as scikit-learn's full ``eigen`` solve, at a fraction of its cost)."""
    x = np.asarray(vectors, np.float64)
    m = max(1, min(len(np.unique(labels)) - 1, x.shape[1]))
    if shrinkage == "auto":
        projection, ratios = lda_directions(x, labels, m)
    else:
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrinkage).fit(x, labels)
        projection, ratios = lda.scalings_[:, :m], lda.explained_variance_ratio_[:m]
    projection = np.asarray(projection, np.float64)
    facts = {"shrinkage": shrinkage if isinstance(shrinkage, str) else float(shrinkage),
             "explained_variance_ratio": [round(float(v), 4) for v in ratios]}
    return projection, -x.mean(axis=0) @ projection, facts


def logit_projection(vectors: np.ndarray, labels: np.ndarray,
                     head: dict[str, np.ndarray] | None = None
                     ) -> tuple[np.ndarray, np.ndarray, dict]:
    """The head's centred logits as (P, o, facts). `head`: the logistic-regression head's
    serving arrays (mean, scale, coef, intercept, classes); fitted here with the same recipe
    (StandardScaler, then LogisticRegression(C=1)) when absent."""
    if head is None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(vectors)
        logreg = LogisticRegression(C=LOGIT_C, max_iter=2000, random_state=SEED)
        logreg.fit(scaler.transform(vectors), labels)
        head = {"mean": scaler.mean_, "scale": scaler.scale_, "coef": logreg.coef_,
                "intercept": logreg.intercept_, "classes": logreg.classes_}
    coef = np.asarray(head["coef"], np.float64)
    intercept = np.asarray(head["intercept"], np.float64)
    if coef.shape[0] == 1:  # two breeds: one score s, logits (-s/2, s/2)
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-1, 1]) * intercept / 2
    scale = np.asarray(head["scale"], np.float64)
    centre = np.eye(len(coef)) - 1.0 / len(coef)
    projection = (coef / scale).T @ centre
    offset = (intercept - coef @ (np.asarray(head["mean"], np.float64) / scale)) @ centre
    return projection, offset, {"head_classes": [str(c) for c in head["classes"]]}


def fit_space(vectors: np.ndarray, labels: np.ndarray, kind: str = DEFAULT_KIND,
              blend_weight: float = BLEND_WEIGHT, shrinkage: str | float = "auto",
              head: dict[str, np.ndarray] | None = None) -> LearnedSpace:
    """Fit a space on the train split's vectors and breed labels (two breeds at least).

    `blend_weight` is the learned half's share for the blends; `head` the logistic-regression
    head's serving arrays for the logit kinds. Which rows it was fitted on is the store's
    business: the bundle's manifest records `fitted_on` (index.space_store)."""
    if kind not in KINDS:
        raise ValueError(f"unknown space kind {kind!r}; known: {', '.join(KINDS)}")
    if not 0.0 < blend_weight <= 1.0:
        raise ValueError(f"blend_weight must lie in (0, 1], got {blend_weight}")
    x = np.asarray(vectors, np.float64)
    y = np.asarray(labels).astype(str)
    classes = np.unique(y)
    if len(classes) < 2 or len(x) != len(y):
        raise ValueError("a learned space needs labelled rows of at least two breeds")
    if kind in ("lda", "blend"):
        projection, offset, facts = lda_projection(x, y, shrinkage)
    else:
        projection, offset, facts = logit_projection(x, y, head)
    coords = x @ projection + offset
    median = float(np.median(np.linalg.norm(coords, axis=1)))
    blended = kind.startswith("blend")
    w = blend_weight if blended else 1.0
    means = np.stack([coords[y == c].mean(axis=0) for c in classes])
    figures = {"kind": kind, "rows": int(len(x)), "breeds": int(len(classes)),
               "dim_in": int(x.shape[1]), "learned_dims": int(projection.shape[1]),
               "blend_weight": float(w) if blended else None,
               "median_learned_norm": round(median, 6), **facts}
    return LearnedSpace(kind, projection.astype(np.float32), offset.astype(np.float32),
                        1.0 / median if median > 0 else 1.0,
                        float(np.sqrt(1.0 - w)) if blended else 0.0, float(np.sqrt(w)),
                        classes, means.astype(np.float32), figures)

