"""The Streamlit app: thin pages over `embed`, `index` and `classify`.

`ui.core` and `ui.thumbnails` hold the app's logic as plain functions (no Streamlit), so they
are tested directly; `ui.widgets` renders shared pieces; `ui.app` is the entry point.
"""
