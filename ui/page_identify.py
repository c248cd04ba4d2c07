"""Identify: a photo in (upload, camera or dataset), its breed and look-alikes out."""

import streamlit as st

from ui import core, widgets

ctx = widgets.context()
st.title("Identify a dog")
source = st.radio("Photo from", ["Upload", "Camera", "Dataset"], horizontal=True,
                  key="identify_source")
if source == "Upload":
    limit = core.max_upload_mb()
    upload = st.file_uploader(
        f"A dog photo ({', '.join(t.upper() for t in core.UPLOAD_TYPES if t != 'jpeg')},"
        f" up to {limit} MB)", key=widgets.uploader_key(), max_upload_size=limit,
    )
    widgets.handle_photo(upload, "upload")
elif source == "Camera":
    widgets.handle_photo(st.camera_input("Take a photo", key="identify_camera"), "camera")
else:
    widgets.dataset_picker(ctx, "identify_pick")

query = widgets.current_query()
if query is None:
    st.info("Upload a photo, take one, or pick one from the dataset to see its breed and its"
            " look-alikes.")
else:
    st.divider()
    widgets.query_panel(ctx, query)
