"""The Report page's photo views: the misclassified test photos and the photos behind a cell of
the confusion matrix (the serving head's answers on the stored test vectors)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from ui import browse, core, widgets

GALLERY_MAX = 48
COLUMNS = 6


@st.cache_data(show_spinner="Predicting the test photos…", max_entries=4)
def test_predictions(ref: core.BundleRef) -> Any:
    ctx = widgets.load_context(ref)
    return browse.test_predictions(ctx.bundle, ctx.predictor)


def photo_grid(ctx: Any, rows: Any, key: str) -> None:
    """Test photos in a grid, each captioned true -> predicted, usable as a query elsewhere."""
    shown = rows.head(GALLERY_MAX)
    for start in range(0, len(shown), COLUMNS):
        for column, (_, row) in zip(st.columns(COLUMNS), shown.iloc[start:start + COLUMNS]
                                    .iterrows(), strict=False):
            with column:
                widgets.show_row_image(ctx, int(row["position"]))
                right = row["true"] == row["predicted"]
                st.caption(f"{'✓' if right else '✗'} {core.pretty_breed(row['true'])} →"
                           f" {core.pretty_breed(row['predicted'])} ({row['probability']:.0%})"
                           f" · {core.file_name(row['path'])}")
    if len(rows) > GALLERY_MAX:
        st.caption(f"…and {len(rows) - GALLERY_MAX} more.")


def test_photo_views(ctx: Any) -> None:
    """The misclassified gallery and the confusion-matrix cell explorer."""
    predictions = test_predictions(widgets.bundle_ref())
    head = ctx.predictor.name if ctx.predictor else None
    st.header("Test photos behind the numbers")
    if predictions is None:
        st.info("The serving head reads photos, not stored vectors; classify the test photos"
                " with `embed-dogs classify` to see its answers." if head else
                "This bundle has no breed head.")
        return
    if predictions.empty:
        st.info("No labelled test photos.")
        return
    st.caption(f"The serving head ({head}) on the {len(predictions)} held-out test photos.")
    wrong = predictions[predictions["true"] != predictions["predicted"]]
    st.subheader(f"Misclassified test photos ({len(wrong)})")
    if wrong.empty:
        st.success("Every test photo was named correctly.")
    else:
        photo_grid(ctx, wrong.sort_values("probability", ascending=False), "wrong")

    st.subheader("Confusion matrix cells")
    cells = browse.confusion_cells(predictions)
    labels = {f"{t}|{p}": f"{core.pretty_breed(t)} → {core.pretty_breed(p)} ({n} photo"
                          f"{'' if n == 1 else 's'})" for t, p, n in cells}
    chosen = st.selectbox("True breed → predicted breed", list(labels), key="report_cell",
                          format_func=labels.get,
                          help="Every non-empty cell of the matrix, mistakes first")
    if chosen:
        true, predicted = chosen.split("|", 1)
        rows = predictions[(predictions["true"] == true) & (predictions["predicted"] == predicted)]
        photo_grid(ctx, rows, "cell")
