"""Identify: photos in (uploads, camera or dataset), breed and look-alikes out. Each source has
its own query: the camera does not show the upload's answer."""

import streamlit as st

from ui import batch_view, core, widgets

ctx = widgets.context()
st.title("Identify a dog")
source = st.radio("Photo from", ["Upload", "Camera", "Dataset"], horizontal=True,
                  key="identify_source")
widgets.enter_scope(f"identify_{source.lower()}")
batch = False
if source == "Upload":
    limit = core.max_upload_mb()
    uploads = st.file_uploader(
        f"Dog photos ({', '.join(t.upper() for t in core.UPLOAD_TYPES if t != 'jpeg')},"
        f" up to {limit} MB each; several at once give a table)", key=widgets.uploader_key(),
        max_upload_size=limit, accept_multiple_files=True,
    ) or []
    batch = len(uploads) > 1
    if batch:
        widgets.set_query(None)
        batch_view.batch_answer(ctx, uploads)
    else:
        widgets.handle_photo(uploads[0] if uploads else None, "upload")
elif source == "Camera":
    widgets.handle_photo(st.camera_input("Take a photo", key="identify_camera"), "camera")
else:
    widgets.dataset_picker(ctx, "identify_pick")

query = widgets.current_query()
if query is None and not batch:
    st.info("Upload one or several photos, take one, or pick one from the dataset to see the"
            " breed and the look-alikes.")
elif query is not None:
    st.divider()
    widgets.query_panel(ctx, query)
