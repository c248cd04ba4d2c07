"""The learned look-alike space in the bundle: fitted on the train split at build and after
every change of rows (through the caller's transaction), recorded as the manifest's `space`
section with `fitted_on`, and served only while it is current.

Queries apply it with numpy and FAISS alone: the stored raw vectors are mapped once when a
bundle is opened for queries and searched exactly (inner product); the query vector is mapped
the same way. A stale or damaged space is never served: queries fall back to the raw index and
say why.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from embed.bundle import Bundle
from embed.errors import BundleError
from index.lookalikes import LookalikeIndex
from index.quality import neighbour_figures, space_figures
from index.space import DEFAULT_KIND, LearnedSpace, fit_space

SPACES = ("raw", "learned")
log = logging.getLogger(__name__)


def fit_bundle_space(bundle: Bundle, kind: str = DEFAULT_KIND) -> dict[str, Any] | None:
    """Fit the space on the writable (staged) bundle's train split, save its arrays and
    record the `space` section; with fewer than 2 train breeds, remove it. Returns the
    section as a dict, or None."""
    splits = bundle.split_arrays()
    x_train, y_train = splits["train"]
    if len(set(y_train)) < 2:
        drop_bundle_space(bundle)
        return None
    log.info("fitting the learned look-alike space")
    try:
        space = fit_space(x_train, y_train, kind)
    except (np.linalg.LinAlgError, ValueError) as exc:  # e.g. no spread within any breed
        log.warning("no learned look-alike space: %s", exc)
        drop_bundle_space(bundle)
        return None
    figures = dict(space.figures)
    if len(splits["test"][0]):
        figures["test_split"] = space_figures(space.apply, splits["train"], splits["test"])
    space = LearnedSpace(space.kind, space.projection, space.offset, space.learned_scale,
                         space.raw_weight, space.learned_weight, space.classes,
                         space.class_means, figures)
    path = bundle.space_path
    path.parent.mkdir(parents=True, exist_ok=True)
    space.save(path)
    bundle.record_files(path)
    record = {"kind": space.kind, "file": bundle.relative(path),
              "blend_weight": figures.get("blend_weight"), "dim_in": space.dim_in,
              "dim_out": space.dim_out, "learned_dims": int(space.projection.shape[1]),
              "figures": figures, "fitted_on": bundle.current_rows().model_dump()}
    bundle.update_manifest(space=record)
    return record


def held_out_space_figures(vectors: np.ndarray, labels: np.ndarray, held: np.ndarray,
                           k: int = 5) -> dict[str, float]:
    """Raw and learned precision@k / 1-NN of the `held` rows as queries against the others,
    with the space fitted on the others only: how a backbone does on train photos it was not
    tuned on, so a choice about it never needs the test split."""
    x, y = np.asarray(vectors, np.float32), np.asarray(labels).astype(str)
    held = np.asarray(held, bool)
    space = fit_space(x[~held], y[~held])
    raw = neighbour_figures(x[held], y[held], x[~held], y[~held], k)
    learned = neighbour_figures(space.apply(x[held]), y[held], space.apply(x[~held]),
                                y[~held], k)
    return {f"precision@{k} raw": raw[f"precision@{k}"],
            f"precision@{k} learned": learned[f"precision@{k}"], "1-NN learned": learned["nn1"]}


def drop_bundle_space(bundle: Bundle) -> None:
    """Remove the space's file and section (no labelled breeds to fit it on)."""
    section = bundle.manifest.space
    if section is None:
        return
    bundle.inside(section.file).unlink(missing_ok=True)
    bundle.forget_files(section.file)
    bundle.update_manifest(space=None)


def load_bundle_space(bundle: Bundle) -> tuple[LearnedSpace | None, str]:
    """The bundle's current space, or (None, why not): none fitted, stale, or damaged."""
    section = bundle.manifest.space
    if section is None:
        return None, "this bundle has no learned space (unlabelled, or built before spaces)"
    if "space" in bundle.manifest.stale():
        return None, ("its learned space was fitted before the rows changed (stale); refit it"
                      f" with `embed-dogs train --head logreg --bundle {bundle.root}`")
    path = bundle.checked_file(section.file)
    if path is None:
        return None, (f"its learned space file {section.file} is missing or damaged; refit it"
                      f" with `embed-dogs train --head logreg --bundle {bundle.root}`")
    try:
        return LearnedSpace.load(path), ""
    except BundleError as exc:
        return None, str(exc)


def choose_space(bundle: Bundle, wanted: str | None) -> tuple[LearnedSpace | None, str]:
    """The space queries use: `wanted` "raw", "learned" or None (learned when the bundle has
    a current one). Returns (the space or None for raw, a note when learned was wanted or
    expected but raw serves)."""
    if wanted not in (None, *SPACES):
        raise BundleError(f"unknown space {wanted!r}; choose one of {', '.join(SPACES)}")
    if wanted == "raw":
        return None, ""
    space, why = load_bundle_space(bundle)
    if space is not None:
        return space, ""
    quiet = wanted is None and bundle.manifest.space is None  # unlabelled: raw, nothing to say
    return None, "" if quiet else f"look-alikes in the raw space: {why}"


class LearnedLookalikes(LookalikeIndex):
    """Look-alikes in a learned space: the bundle's stored vectors mapped once, searched
    exactly; queries are raw vectors, mapped the same way. The rows and their metadata are
    the raw index's."""

    def __init__(self, bundle: Bundle, space: LearnedSpace) -> None:
        import faiss

        super().__init__(bundle)
        self.space = space
        mapped = space.apply(bundle.embeddings())
        self.index = faiss.IndexFlatIP(mapped.shape[1])
        self.index.add(np.ascontiguousarray(mapped, np.float32))

    def _queries(self, queries: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.space.apply(super()._queries(queries)), np.float32)

    def _search_parameters(self, selector: Any, k: int, n_allowed: int) -> Any:
        import faiss

        return faiss.SearchParameters(sel=selector)
