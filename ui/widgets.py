"""Shared Streamlit pieces: cached loading per bundle, the query panel with its predictions and
look-alike gallery, and the dataset picker. Logic lives in `ui.core`; this module lays it out."""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import streamlit as st

from embed.errors import EmbedDogsError
from ui import browse, core, facts
from ui.thumbnails import PREVIEW_SIZE, THUMB_SIZE, has_file, placeholder, thumbnail

QUERY = "query"
GALLERY_K = "gallery_k"
GALLERY_FILTER = "gallery_filter"
DEFAULT_K = 12
MAX_K = 48
GALLERY_COLUMNS = 4
PERSISTENT_WIDGETS = {GALLERY_K: DEFAULT_K, GALLERY_FILTER: "all"}
LOOKALIKE_TOGGLE = "show_lookalikes"
SPACE_TOGGLE = "learned_space"


# ---- loading, once per bundle version -------------------------------------------------------
@st.cache_resource(show_spinner="Loading the model, index and breed head…", max_entries=2)
def load_context(ref: core.BundleRef, space: str | None = None) -> Any:
    """Model, index and head of a bundle (ui.workflows.QueryContext), shared by sessions: its
    interpreter serialises calls, the index and tables are only read. Keyed by the bundle's
    identity, so a rebuild, `add` or `remove` is picked up on the next rerun. `space`: None
    (the learned look-alike space when current, as the CLI) or "raw" (the sidebar toggle)."""
    from ui.workflows import open_for_queries

    # the CLI's head, image heads too
    return open_for_queries(ref.path, accepts_images=True, space=space)


def space_choice() -> str | None:
    """The sidebar's look-alike space: None (learned when the bundle has one) or "raw"."""
    return None if st.session_state.get(SPACE_TOGGLE, True) else "raw"


@st.cache_resource(show_spinner=False, max_entries=2)
def load_vectors(ref: core.BundleRef) -> core.ShardVectors:
    """Memory-mapped embeddings for looking up a dataset image's vector."""
    return core.ShardVectors(load_context(ref).bundle)


@st.cache_data(show_spinner=False, max_entries=4)
def breed_groups(ref: core.BundleRef) -> dict[str, np.ndarray]:
    """Breed -> bundle positions."""
    return browse.breed_positions(load_context(ref).index.metadata)


@st.cache_data(show_spinner=False, max_entries=4)
def file_names(ref: core.BundleRef) -> list[str]:
    """Caption per bundle position."""
    return [core.file_name(p) for p in load_context(ref).index.metadata["path"].astype(str)]


@st.cache_data(show_spinner="Projecting the embeddings to 2-D… (UMAP compiles itself the"
               " first time the app draws a map: about 10 s)", max_entries=4)
def map_data(ref: core.BundleRef, method: str) -> Any:
    """The map page's table (position, x, y, breed, file, hover thumbnail)."""
    return browse.map_table(load_context(ref).bundle, method, thumbs=True)


@st.cache_data(show_spinner=False, max_entries=4)
def reports(ref: core.BundleRef) -> list[browse.HeadReport]:
    """The report page's tables."""
    return browse.head_reports(load_context(ref).bundle)


def bundle_path() -> str | None:
    """The bundle given on the command line (`-- --bundle DIR`) or in $EMBED_DOGS_BUNDLE."""
    return core.bundle_from_args(sys.argv[1:], os.environ)


def bundle_ref() -> core.BundleRef:
    """The current bundle and its identity now (app.py has checked that it loads)."""
    path = bundle_path()
    assert path is not None
    return core.BundleRef.of(path)


def try_context(path: str | None) -> tuple[Any | None, str | None]:
    """(context, None), or (None, what is wrong) for a missing or unusable bundle."""
    if not path:
        return None, "No bundle was given."
    try:
        return load_context(core.BundleRef.of(path), space_choice()), None
    except EmbedDogsError as exc:
        return None, str(exc)
    except (OSError, ValueError, KeyError) as exc:  # a damaged bundle
        return None, f"the bundle {path} could not be opened: {exc!r}"


def context() -> Any:
    """The current bundle's context (app.py has checked that it loads)."""
    return load_context(bundle_ref(), space_choice())


def keep_widget_state() -> None:
    """Keep gallery settings when switching pages (Streamlit drops unrendered widgets' state)."""
    for key, default in PERSISTENT_WIDGETS.items():
        st.session_state[key] = st.session_state.get(key, default)


# ---- the query: one per page (and per Identify source) ---------------------------------------
QUERY_SCOPE = "query_scope"
PICKERS = ("identify_pick", "map_pick")


def enter_scope(scope: str) -> None:
    """The page (or Identify source) now shown: its query is its own, so a photo chosen on one
    page does not follow the user to another."""
    st.session_state[QUERY_SCOPE] = scope


def _query_key() -> str:
    return f"{QUERY}:{st.session_state.get(QUERY_SCOPE, 'identify_upload')}"


def current_query() -> core.Query | None:
    return st.session_state.get(_query_key())


def set_query(query: core.Query | None) -> None:
    if query is None:
        st.session_state.pop(_query_key(), None)
    else:
        st.session_state[_query_key()] = query


UPLOAD_GENERATION = "upload_generation"


def uploader_key() -> str:
    """The upload widget's key: a new one empties the widget (see `use_row`)."""
    return f"identify_upload_{st.session_state.get(UPLOAD_GENERATION, 0)}"


def clear_query() -> None:
    """The clear button: this page's query goes, and the widgets that chose it let go."""
    set_query(None)
    st.session_state[UPLOAD_GENERATION] = st.session_state.get(UPLOAD_GENERATION, 0) + 1
    for picker in PICKERS:
        st.session_state.pop(f"{picker}_row", None)
    st.session_state.pop("map_applied", None)


def clear_button() -> None:
    st.button("Clear", key="clear_query", icon=":material/close:", on_click=clear_query,
              help="Forget this photo and start again")


def use_row(position: int) -> None:
    """Button callback: a dataset image becomes the query (and the uploader lets go of the
    photo it showed, which is no longer the query)."""
    st.session_state[UPLOAD_GENERATION] = st.session_state.get(UPLOAD_GENERATION, 0) + 1
    set_query(core.query_from_row(load_vectors(bundle_ref()), context().index.metadata,
                                  position))


pretty = core.pretty_breed


def show_row_image(ctx: Any, position: int, size: int = THUMB_SIZE, square: bool = True) -> None:
    """A dataset image's cached thumbnail, or a placeholder when it has no file."""
    row = ctx.index.metadata.iloc[int(position)]
    thumb = thumbnail(str(row["path"]), str(row["sha256"]), size, square=square)
    st.image(str(thumb) if thumb else placeholder(size), width="stretch")


def handle_photo(file: Any, source: str) -> None:
    """An uploaded or camera photo becomes the query once; a bad one leaves a message."""
    seen = f"{source}_seen"
    if file is None:
        st.session_state.pop(seen, None)
        return
    file_id = getattr(file, "file_id", None) or f"{file.name}:{file.size}"
    if st.session_state.get(seen, (None, None))[0] != file_id:
        try:
            set_query(core.query_from_upload(file.name, file.getvalue(), context().embedder))
            st.session_state[seen] = (file_id, None)
        except core.UploadRejected as exc:
            set_query(None)  # the previous photo's answer must not stand under the error
            st.session_state[seen] = (file_id, str(exc))
    problem = st.session_state[seen][1]
    if problem:
        st.error(problem, icon=":material/warning:")


def dataset_picker(ctx: Any, key: str) -> None:
    """Breed and file selectboxes plus a random pick; choosing one sets the query."""
    ref = bundle_ref()
    groups = breed_groups(ref)
    names = file_names(ref)

    def picked() -> None:
        position = st.session_state.get(f"{key}_row")
        if position is not None:
            use_row(int(position))

    def random_pick() -> None:
        rows = groups[st.session_state[f"{key}_breed"]]
        use_row(int(np.random.default_rng().choice(rows)))

    left, middle, right = st.columns([2, 3, 1], vertical_alignment="bottom")
    breed = left.selectbox("Breed", list(groups), key=f"{key}_breed",
                           format_func=lambda b: f"{pretty(b)} ({len(groups[b])})")
    middle.selectbox("Photo", groups[breed].tolist(), index=None, key=f"{key}_row",
                     placeholder="choose a photo", format_func=lambda p: names[p],
                     on_change=picked)
    right.button("Random", key=f"{key}_random", on_click=random_pick, width="stretch")


# ---- predictions and gallery -----------------------------------------------------------------
def prediction_block(ctx: Any, query: core.Query) -> core.Prediction | None:
    """Top breeds as a bar chart, with an honest "not sure" under the threshold."""
    import altair as alt

    prediction = core.predict(ctx, query)
    if prediction is None:
        st.info("This bundle has no breed head (its source was unlabelled), so no breed is"
                " predicted; the look-alikes below still work." if ctx.predictor is None else
                f"The {ctx.predictor.name} head reads photos, and this photo's file is not"
                " available, so no breed is predicted; the look-alikes below still work.")
        return None
    if not prediction.names_a_breed:
        gate_refusal(ctx, prediction)
        return prediction
    if prediction.sure:
        st.success(f"**{pretty(prediction.breed)}** ({prediction.probability:.0%})")
    elif not prediction.confident:
        st.warning(f"**Maybe {pretty(prediction.breed)}** ({prediction.probability:.0%})."
                   f" {prediction.why}", icon=":material/help:")
    else:
        st.warning(f"**Not sure.** The best guess, {pretty(prediction.breed)}, has only"
                   f" {prediction.probability:.0%}.")
    st.caption(f"Top {len(prediction.ranked)} breeds from the {ctx.predictor.name} head. The"
               f" app says *not sure* when the top probability is below"
               f" {prediction.threshold:.0%}.")
    table = prediction.table()
    table["breed"] = table["breed"].map(pretty)
    chart = alt.Chart(table).mark_bar().encode(
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%")),
        y=alt.Y("breed:N", sort="-x", title=None, axis=alt.Axis(labelLimit=220)),
        tooltip=["breed", alt.Tooltip("probability:Q", format=".1%")],
    ).properties(height=36 * len(table) + 30)
    st.altair_chart(chart, width="stretch")
    return prediction


def gate_refusal(ctx: Any, prediction: core.Prediction) -> None:
    """"Not a dog" or "a dog, but not a breed I know" instead of a breed; the head's closest
    breeds only folded away, for reference."""
    if prediction.verdict == "not_a_dog":
        st.error(f"**{prediction.headline}.**", icon=":material/block:")
    else:
        st.warning(f"**{prediction.headline}.**", icon=":material/help:")
    st.caption(f"{prediction.why} The breed head always names one of its breeds, so its"
               " guesses are not shown as an answer.")
    with st.expander("The head's closest breeds (for reference only)"):
        st.dataframe(prediction.table().assign(breed=lambda t: t["breed"].map(pretty)),
                     hide_index=True, width="stretch",
                     column_config={"probability": st.column_config.NumberColumn(
                         format="percent")})


def lookalikes_hidden(query: core.Query, prediction: core.Prediction | None) -> bool:
    """After "not a dog" the look-alikes are dogs the photo only resembles a little: they stay
    behind a toggle. A dog of an unknown breed is still a dog: its look-alikes are shown."""
    if prediction is None or prediction.verdict != "not_a_dog":
        return False
    key = f"{LOOKALIKE_TOGGLE}_{query.position}_{query.name}"
    return not st.toggle("Show the closest dataset photos anyway", key=key, value=False)


def gallery(ctx: Any, query: core.Query, prediction: core.Prediction | None) -> None:
    """The k nearest dataset images, filterable by breed, each usable as the next query."""
    st.subheader("Look-alikes")
    if lookalikes_hidden(query, prediction):
        st.caption("Hidden: the photo does not look like a dog, so its nearest photos are"
                   " only distant look-alikes.")
        return
    breed = prediction.breed if prediction and prediction.names_a_breed else query.label
    options = list(core.FILTERS) if breed else ["all"]
    if st.session_state.get(GALLERY_FILTER) not in options:
        st.session_state[GALLERY_FILTER] = "all"
    left, right = st.columns([1, 2])
    k = left.slider("How many", 1, MAX_K, key=GALLERY_K)
    same = (core.FILTERS["same"] if prediction and prediction.names_a_breed
            else "Same breed as this photo")

    def label(mode: str) -> str:
        return f"{same} ({pretty(breed)})" if mode == "same" else core.FILTERS[mode]

    if len(options) > 1:
        mode = right.radio("Show", options, key=GALLERY_FILTER, horizontal=True,
                           format_func=label)
    else:  # no breed to filter by (an unknown breed): a one-option radio only puzzles
        mode = "all"
        unknown = prediction is not None and prediction.verdict == "unknown_breed"
        right.caption("Nearest photos of every breed: this dog's breed is not one the bundle"
                      " knows." if unknown else "Nearest photos of every breed.")
    hits = ctx.index.search_filtered(query.vector, int(k), breed=breed, mode=mode,
                                     exclude=query.position)
    if not hits:
        st.info("No dataset image matches this filter.")
        return
    names = file_names(bundle_ref())
    for start in range(0, len(hits), GALLERY_COLUMNS):
        columns = st.columns(GALLERY_COLUMNS)
        for column, hit in zip(columns, hits[start:start + GALLERY_COLUMNS], strict=False):
            with column:
                show_row_image(ctx, hit.position)
                st.markdown(f"**{pretty(hit.label)}** · similarity {hit.score:.2f}")
                st.caption(names[hit.position])
                st.button("use as query", key=f"use_{hit.position}", on_click=use_row,
                          args=(hit.position,))


@st.dialog("Full size", width="large")
def full_size(ctx: Any, query: core.Query) -> None:
    """The query photo as large as the page allows: a dataset photo from its file, an upload
    from its display copy."""
    if query.position is not None:
        row = ctx.index.metadata.iloc[int(query.position)]
        path = str(row["path"])
        if has_file(path):
            st.image(path, width="stretch")
        else:
            st.image(placeholder(PREVIEW_SIZE), width="stretch")
        st.caption(path)
    elif query.image is not None:
        st.image(query.image, width="stretch")
        st.caption(query.name)


def query_panel(ctx: Any, query: core.Query) -> None:
    """The query photo beside its predicted breeds, then its look-alikes."""
    photo, predictions = st.columns([2, 3])
    with photo:
        if query.image is not None:
            st.image(query.image, width="stretch")
        elif query.position is not None:
            show_row_image(ctx, query.position, PREVIEW_SIZE, square=False)
        where = "dataset photo" if query.position is not None else "your photo"
        labelled = f", labelled **{pretty(query.label)}**" if query.label else ""
        st.markdown(f"Query: `{query.name}` ({where}{labelled})")
        left, right = st.columns(2)
        if left.button("View full size", key="full_size", icon=":material/open_in_full:"):
            full_size(ctx, query)
        with right:
            clear_button()
    with predictions:
        prediction = prediction_block(ctx, query)
    gallery(ctx, query, prediction)


def missing_bundle_page(path: str | None, problem: str | None) -> None:
    """What to do when there is no usable bundle: the reason and the commands that fix it."""
    st.title("embed-dogs")
    st.error(f"**No bundle to show.** {problem or ''}", icon=":material/pets:")
    st.markdown("The app shows one *bundle*: the folder `embed-dogs build-index` writes. Build"
                " one, then start the app on it:")
    st.code(core.build_instructions(path), language="bash")
    st.markdown("Or run `streamlit run ui/app.py -- --bundle DIR`, or set"
                f" `{core.BUNDLE_ENV}=DIR`.")


def table_height(rows: int) -> int:
    """Pixels that show a dataframe's header and `rows` rows and no more: Streamlit's grid
    draws 35 px a row plus 3 px of border (a taller box showed part of an empty row)."""
    return (rows + 1) * 35 + 3


def sidebar_facts(ctx: Any) -> None:
    """Which bundle is open and what it knows: its breeds and how many photos each."""
    counts = facts.breed_counts(ctx.index.metadata)
    known = [c for c in counts if c[0] != core.UNLABELLED]
    with st.sidebar:
        st.markdown(f"**{ctx.bundle.root.name}**: {len(ctx.index.metadata):,} photos,"
                    f" {len(known)} breeds")
        if ctx.predictor is None:
            st.caption("No breed head: look-alikes only.")
        with st.expander("Breeds and photos", expanded=len(counts) <= 12):
            st.dataframe(
                [{"breed": pretty(b) if b != core.UNLABELLED else b, "photos": n}
                 for b, n in counts],
                hide_index=True, width="stretch", height=min(table_height(len(counts)), 420),
                column_config={"breed": st.column_config.TextColumn("Breed"),
                               "photos": st.column_config.NumberColumn("Photos")})
        st.toggle("Learned look-alike space", key=SPACE_TOGGLE, value=True,
                  help="Look-alikes in the space fitted on the bundle's breeds (off: the raw"
                       " embedding). The gate's verdicts are the same either way.")
        if ctx.space_note:
            st.caption(ctx.space_note)
