"""embed-dogs app: `embed-dogs ui --bundle DIR`, or `streamlit run ui/app.py -- --bundle DIR`.

Loads the bundle once (cached per bundle path), or shows how to build one, then runs the page
chosen in the sidebar.
"""

from pathlib import Path

import streamlit as st

from ui import widgets

st.set_page_config(page_title="embed-dogs", page_icon="🐶", layout="wide")

ctx, problem = widgets.try_context(widgets.bundle_path())
if ctx is None:
    widgets.missing_bundle_page(widgets.bundle_path(), problem)
    st.stop()

widgets.keep_widget_state()
here = Path(__file__).resolve().parent
page = st.navigation([
    st.Page(here / "page_identify.py", title="Identify", icon=":material/search:",
            default=True),
    st.Page(here / "page_browse.py", title="Browse", icon=":material/grid_view:"),
    st.Page(here / "page_map.py", title="Map", icon=":material/scatter_plot:"),
    st.Page(here / "page_report.py", title="Report", icon=":material/analytics:"),
    st.Page(here / "page_audit.py", title="Audit", icon=":material/fact_check:"),
])
widgets.sidebar_facts(ctx)
page.run()
