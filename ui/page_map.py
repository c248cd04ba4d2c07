"""Map: every embedding in 2-D (UMAP, PCA for tiny bundles), coloured by breed, the query
marked; hover for a photo, click a point for its look-alikes."""

import altair as alt
import streamlit as st

from ui import browse, core, widgets

ctx = widgets.context()
widgets.enter_scope("map")
ref = widgets.bundle_ref()
st.title("Map of the embeddings")
methods = browse.projection_methods()
asked = st.radio("Projection", methods, horizontal=True, key="map_method") if len(
    methods) > 1 else methods[0]
table = widgets.map_data(ref, asked)
method, why = browse.projection_for(asked, len(table))
breeds = sorted(table["breed"].unique())
shown = st.multiselect("Breeds to colour", breeds, key="map_breeds",
                       placeholder="all breeds (pick some to pick them out)")
st.caption(f"{len(table):,} photos projected with **{method}**"
           + (f" ({why})" if why else "") + "; nearby points look alike to the model. Hover"
           " for the photo, its breed and file; click a point to see that photo and its"
           " look-alikes (double-click clears).")

query = widgets.current_query()
neighbours = []
if query is not None and query.position is None:
    neighbours = [h.position for h in ctx.index.search_filtered(query.vector, 5)]
marked = browse.query_point(table, query, neighbours)

table = table.assign(shown=table["breed"].isin(shown) if shown else True)
point = alt.selection_point(name="dog", fields=["position"], on="click", clear="dblclick")
tooltip = ["breed:N", "file:N"] + (["image:N"] if "image" in table else [])
palette = list(browse.PALETTE)
colour = alt.Color("breed:N", scale=alt.Scale(domain=breeds, range=palette),
                   legend=alt.Legend(title="breed", columns=2 if len(breeds) > 15 else 1,
                                     symbolLimit=60) if len(breeds) <= 60 else None)
base = alt.Chart(table).mark_circle(size=30 if len(table) < 5000 else 12, stroke="#333333",
                                    strokeWidth=0.3).encode(
    x=alt.X("x:Q", axis=None),
    y=alt.Y("y:Q", axis=None),
    color=alt.condition("datum.shown", colour, alt.value("#dddddd")),
    opacity=alt.condition(point, alt.value(0.9), alt.value(0.35)),
    tooltip=tooltip,
).add_params(point)
layers = [base]
if marked is not None:
    spot = alt.Chart(alt.Data(values=[{"x": marked[0], "y": marked[1],
                                       "what": f"query: {query.name}"}]))
    layers.append(spot.mark_point(shape="cross", size=600, strokeWidth=4, color="black",
                                  filled=True).encode(x="x:Q", y="y:Q", tooltip=["what:N"]))
    layers.append(spot.mark_text(dx=14, dy=-14, fontWeight="bold", fontSize=14).encode(
        x="x:Q", y="y:Q", text="what:N"))
chart = alt.layer(*layers).properties(height=560)
event = st.altair_chart(chart, on_select="rerun", selection_mode="dog", key="map_chart",
                        width="stretch")
chosen = browse.selected_position(event)
if chosen is not None and st.session_state.get("map_applied") != chosen:
    st.session_state["map_applied"] = chosen
    widgets.use_row(chosen)
    st.rerun()

with st.expander("…or pick a photo by breed and file name, or place your own",
                 expanded=query is None):
    widgets.dataset_picker(ctx, "map_pick")
    limit = core.max_upload_mb()
    widgets.handle_photo(st.file_uploader(f"Your photo (up to {limit} MB)", key="map_upload",
                                          max_upload_size=limit), "map_upload")

if widgets.current_query() is not query:  # a photo chosen below: draw the map with its mark
    st.rerun()
if query is not None:
    st.divider()
    if marked is not None:
        st.caption(f"The black cross marks {query.name}"
                   + (" among its 5 nearest photos." if query.position is None else "."))
    widgets.query_panel(ctx, query)
