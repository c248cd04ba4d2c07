"""Map: every embedding in 2-D, coloured by breed; click a point for its look-alikes."""

import altair as alt
import streamlit as st

from ui import browse, widgets

LEGEND_MAX_BREEDS = 30

ctx = widgets.context()
ref = widgets.bundle_ref()
st.title("Map of the embeddings")
methods = browse.projection_methods()
method = st.radio("Projection", methods, horizontal=True, key="map_method") if len(
    methods) > 1 else methods[0]
table = widgets.map_data(ref, method)
st.caption(f"{len(table):,} photos projected with {method}; nearby points look alike to the"
           " model. Hover for breed and file; click a point to see that photo and its"
           " look-alikes (double-click clears).")
many = table["breed"].nunique() > LEGEND_MAX_BREEDS
point = alt.selection_point(name="dog", fields=["position"], on="click", clear="dblclick")
chart = alt.Chart(table).mark_circle(size=30 if len(table) < 5000 else 12, stroke="#333333",
                                     strokeWidth=0.3).encode(
    x=alt.X("x:Q", axis=None),
    y=alt.Y("y:Q", axis=None),
    # category10 has no washed-out colour for up to 10 breeds; a thin outline keeps the
    # paler ones of tableau20 visible on white when there are more
    color=alt.Color("breed:N", legend=None if many else alt.Legend(title="breed"),
                    scale=alt.Scale(scheme="category10" if table["breed"].nunique() <= 10
                                    else "tableau20")),
    opacity=alt.condition(point, alt.value(0.9), alt.value(0.35)),
    tooltip=["breed:N", "file:N"],
).add_params(point).properties(height=560)
event = st.altair_chart(chart, on_select="rerun", selection_mode="dog", key="map_chart",
                        width="stretch")
chosen = browse.selected_position(event)
if chosen is not None and st.session_state.get("map_applied") != chosen:
    st.session_state["map_applied"] = chosen
    widgets.use_row(chosen)

with st.expander("…or pick a photo by breed and file name"):
    widgets.dataset_picker(ctx, "map_pick")

query = widgets.current_query()
if query is not None:
    st.divider()
    widgets.query_panel(ctx, query)
