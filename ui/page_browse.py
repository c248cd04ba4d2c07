"""Browse: a breed's photos page by page; any photo's look-alikes."""

import streamlit as st

from ui import browse, widgets

PER_PAGE = 24
COLUMNS = 6

ctx = widgets.context()
widgets.enter_scope("browse")
ref = widgets.bundle_ref()
groups = widgets.breed_groups(ref)
names = widgets.file_names(ref)
st.title("Browse the dataset")
left, right = st.columns([3, 1])
breed = left.selectbox("Breed", list(groups), key="browse_breed",
                       format_func=lambda b: f"{widgets.pretty(b)} ({len(groups[b])})")
pages = max(1, -(-len(groups[breed]) // PER_PAGE))
page = right.number_input(f"Page (of {pages})", 1, pages, key="browse_page")
rows, pages = browse.page_slice(groups[breed], int(page), PER_PAGE)
query = widgets.current_query()
if query is not None:  # above the grid, where a click on "look-alikes" can be seen
    with st.container(border=True):
        st.subheader("Selected photo")
        widgets.query_panel(ctx, query)
    st.divider()
for start in range(0, len(rows), COLUMNS):
    for column, position in zip(st.columns(COLUMNS), rows[start:start + COLUMNS], strict=False):
        with column:
            widgets.show_row_image(ctx, int(position))
            st.caption(names[int(position)])
            st.button("look-alikes", key=f"browse_{position}", on_click=widgets.use_row,
                      args=(int(position),))
