"""The logistic-regression head: one seeded scikit-learn Pipeline, saved with skops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from classify.breed_head import BreedHead
from classify.evaluation import train_breeds
from embed.atomic import atomic_path
from embed.environment import one_blas_thread
from embed.errors import BundleError

DEFAULT_C = 1.0
SEED = 0

# Exactly the types a logreg head file may contain; anything else is refused on load.
TRUSTED_TYPES = [
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.linear_model._logistic.LogisticRegression",
]


def make_logreg_pipeline(c: float = DEFAULT_C, max_iter: int = 2000) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([
        ("scale", StandardScaler()),
        ("logreg", LogisticRegression(C=c, max_iter=max_iter, random_state=SEED)),
    ])


def fit_logreg(vectors: np.ndarray, labels: np.ndarray, c: float = DEFAULT_C) -> Any:
    """Fit on the train split; needs at least two breeds."""
    train_breeds(labels)
    with one_blas_thread():  # lbfgs on small matrices: a second BLAS thread only spins
        return make_logreg_pipeline(c).fit(vectors, labels)


def save_head(pipeline: Any, path: str | Path) -> None:
    import skops.io as sio

    with atomic_path(path) as tmp:
        sio.dump(pipeline, tmp)


def load_head(path: str | Path) -> Any:
    """Load with an explicit allow-list: a swapped file with other types is refused."""
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"no logistic-regression head at {path}; rebuild with build-index")
    try:
        untrusted = [t for t in sio.get_untrusted_types(file=path) if t not in TRUSTED_TYPES]
    except Exception as exc:  # not a skops file: zip, JSON or schema errors
        raise BundleError(
            f"{path} is not a readable head file ({type(exc).__name__}); refit it with"
            " `embed-dogs train --head logreg`"
        ) from None
    if untrusted:
        raise BundleError(
            f"{path} contains types that are not trusted ({', '.join(untrusted)}); refusing"
            " to load it. Rebuild the head with `embed-dogs build-index`"
        )
    pipeline = sio.load(path, trusted=TRUSTED_TYPES)
    # skops trusts many scikit-learn types by default; a head is exactly this pipeline
    found = [type(step).__module__ + "." + type(step).__qualname__
             for _, step in getattr(pipeline, "steps", [])]
    expected = TRUSTED_TYPES[1:]
    if type(pipeline).__qualname__ != "Pipeline" or found != expected:
        shown = ", ".join(found) or f"{type(pipeline).__module__}.{type(pipeline).__qualname__}"
        raise BundleError(
            f"{path} holds types that are not trusted for a head ({shown}); refusing to use"
            " it. Rebuild the head with `embed-dogs train --head logreg`"
        )
    return pipeline


SERVING_FILE = "logreg_serving.npz"  # the fitted numbers alone, for queries without sklearn


def serving_arrays(pipeline: Any) -> dict[str, np.ndarray]:
    """The fitted scaler and logistic regression as plain arrays."""
    scale, logreg = pipeline.named_steps["scale"], pipeline.named_steps["logreg"]
    return {"mean": np.asarray(scale.mean_, np.float64),
            "scale": np.asarray(scale.scale_, np.float64),
            "coef": np.asarray(logreg.coef_, np.float64),
            "intercept": np.asarray(logreg.intercept_, np.float64),
            "classes": np.asarray(logreg.classes_).astype(str)}


def proba_from_arrays(arrays: dict[str, np.ndarray], vectors: np.ndarray) -> np.ndarray:
    """What `Pipeline.predict_proba` computes, in numpy: scale, linear scores, then softmax
    (several breeds) or the logistic function (two)."""
    x = (np.atleast_2d(np.asarray(vectors, np.float64)) - arrays["mean"]) / arrays["scale"]
    scores = x @ arrays["coef"].T + arrays["intercept"]
    if scores.shape[1] == 1:
        p = 1.0 / (1.0 + np.exp(-scores[:, 0]))
        return np.stack([1.0 - p, p], axis=1)
    scores -= scores.max(axis=1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=1, keepdims=True)


def save_serving_arrays(pipeline: Any, path: str | Path, check_on: np.ndarray) -> bool:
    """Write the serving arrays when they reproduce the pipeline's probabilities on
    `check_on` (a few train rows); returns whether they did."""
    arrays = serving_arrays(pipeline)
    rows = np.atleast_2d(check_on)[:64]
    if len(rows) and not np.allclose(proba_from_arrays(arrays, rows),
                                     pipeline.predict_proba(rows), atol=1e-6):
        return False
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return True


class LogregHead(BreedHead):
    """A loaded logistic-regression head: stored or query vectors in, breeds out. Runs the
    scikit-learn pipeline, or its serving arrays (the same numbers, without importing
    scikit-learn, whose import alone costs seconds)."""

    name = "logreg"
    needs_images = False

    def __init__(self, pipeline: Any = None, arrays: dict[str, np.ndarray] | None = None
                 ) -> None:
        if pipeline is None and arrays is None:
            raise ValueError("a logreg head needs its pipeline or its serving arrays")
        self.pipeline = pipeline
        self.arrays = arrays

    @property
    def classes(self) -> np.ndarray:
        if self.arrays is not None:
            return self.arrays["classes"]
        return np.asarray(self.pipeline.classes_)

    def predict_proba(
        self, vectors: np.ndarray, inputs: np.ndarray | None = None
    ) -> np.ndarray:
        if self.arrays is not None:
            return proba_from_arrays(self.arrays, vectors)
        return self.pipeline.predict_proba(np.atleast_2d(vectors))


def load_serving_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Plain arrays only (no pickles): safe to load from any bundle."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in ("mean", "scale", "coef", "intercept", "classes")}
