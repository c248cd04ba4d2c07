"""Several uploads at once in the app: a table with thumbnails and the CSV download; the work
is `ui.batch.classify_uploads`, the same `classify_images` as the CLI's `classify`."""

from __future__ import annotations

from typing import Any

import streamlit as st


def batch_answer(ctx: Any, files: list[Any]) -> None:
    """Several uploads: one table row each (thumbnail, verdict, breed, probability, nearest
    look-alike) and the CSV `embed-dogs classify` writes, to download."""
    from ui.batch import classify_uploads

    key = tuple(getattr(f, "file_id", None) or f"{f.name}:{f.size}" for f in files)
    cached = st.session_state.get("batch_answer")
    if cached is None or cached[0] != key:
        with st.spinner(f"Classifying {len(files)} photos…"):
            answer = classify_uploads(ctx, [(f.name, f.getvalue()) for f in files])
        st.session_state["batch_answer"] = cached = (key, answer)
    answer = cached[1]
    table = answer.table
    read = int((table["problem"] == "").sum())
    st.subheader(f"{len(table)} photos")
    st.caption(f"{read} classified; the breed is named only where the open-set gate says the"
               " photo is one of this bundle's dogs. The CSV is what `embed-dogs classify`"
               " writes for the same photos.")
    shown = table if (table["problem"] != "").any() else table.drop(columns=["problem"])
    st.dataframe(
        shown, hide_index=True, width="stretch", row_height=72,
        height=72 * len(shown) + 48,  # every row visible: no scrolling inside the table
        column_config={
            "photo": st.column_config.ImageColumn("Photo", width="small"),
            "file": st.column_config.TextColumn("File"),
            "verdict": st.column_config.TextColumn("Verdict"),
            "breed": st.column_config.TextColumn("Breed"),
            "probability": st.column_config.TextColumn("Probability"),
            "look-alike": st.column_config.ImageColumn("Look-alike", width="small"),
            "look-alike breed": st.column_config.TextColumn("Its breed"),
            "similarity": st.column_config.TextColumn("Similarity"),
            "problem": st.column_config.TextColumn("Problem"),
        })
    st.download_button("Download CSV", answer.csv, file_name="predictions.csv",
                       mime="text/csv", icon=":material/download:", key="batch_csv")
