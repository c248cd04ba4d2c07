"""The interfaces and the composition root: the `embed-dogs` CLI (`ui.cli` and its
`cli_*` modules), the Streamlit app, and the library functions both call (`ui.workflows`).

`ui.core`, `ui.browse`, `ui.facts` and `ui.thumbnails` hold the app's logic as plain functions
(no Streamlit), so they are tested directly; `ui.widgets` renders shared pieces; `ui.app` is
the app's entry point.
"""
