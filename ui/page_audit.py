"""Audit: the stored findings as galleries per kind, with filters and a CSV download of the
chosen rows for `embed-dogs remove --from-file`. Reads what `embed-dogs audit` stored."""

import pandas as pd
import streamlit as st

from ui import audit_view, widgets
from ui.audit_report import SCORES
from ui.audit_store import stored_audit
from ui.thumbnails import placeholder

ctx = widgets.context()
ref = widgets.bundle_ref()
st.title("Audit")
audit = stored_audit(ctx.bundle)
if audit.state == "absent":
    st.info(f"No audit yet: run `embed-dogs audit --bundle {ctx.bundle.root}`",
            icon=":material/fact_check:")
    st.stop()
if audit.state == "damaged":
    st.error(audit.message)
    st.stop()
if audit.state == "stale":
    st.warning(f"**Stale.** {audit.message}", icon=":material/warning:")
findings = audit.findings
section = audit.section
counts = pd.DataFrame([{"kind": k, "findings": n} for k, n in section.counts.items()])
st.dataframe(counts, hide_index=True)
if section.threshold is not None:
    t = section.threshold
    st.caption(f"Near-duplicate cut: similarity ≥ {t.value:.3f}, calibrated on {t.copies}"
               f" edited copies of this bundle's photos ({t.copy_recall:.0%} of them above"
               f" it, {t.neighbour_rate:.1%} of distinct same-breed neighbours).")
present = audit_view.kinds_present(findings)
if not present:
    st.success("The audit found nothing.")
    st.stop()
chosen = st.multiselect("Kinds", present, default=present, key="audit_kinds")
per_kind = st.number_input("Findings shown per kind", 1, 200, 8, key="audit_per_kind")
where = audit_view.positions_by_path(ctx.index.metadata, ctx.bundle.source_root)


@st.cache_data(show_spinner=False, max_entries=2)
def typical(_ref_identity: str) -> dict[str, list[int]]:
    return audit_view.typical_positions(ctx.bundle.embeddings(), ctx.index.metadata["label"])


selected: list[int] = []
shown = audit_view.filtered(findings, chosen)
for kind in chosen:
    rows = shown[shown["issue"] == kind]
    st.header(f"{kind.replace('_', ' ')} ({len(rows)})")
    st.caption(f"score: {SCORES[kind]}")
    for index, row in rows.head(int(per_kind)).iterrows():
        with st.container(border=True):
            cells = audit_view.cells(row, where, typical(ref.identity) if kind == "label"
                                     else {})
            for column, (caption, position) in zip(st.columns(max(len(cells), 2)), cells,
                                                   strict=False):
                with column:
                    if position is None:
                        st.image(placeholder(text="not in the bundle"), width="stretch")
                    else:
                        widgets.show_row_image(ctx, position)
                    st.caption(caption)
            st.markdown(f"**{row['label'] or 'unlabelled'}** · {row['split']} · score"
                        f" {row['score']:.3f} · {row['why']}")
            if st.checkbox("select for removal", key=f"audit_select_{index}"):
                selected.append(index)
picked = shown.loc[selected] if selected else shown
st.download_button(
    f"Download the {len(picked)} {'selected' if selected else 'shown kinds'} findings as CSV",
    audit_view.removal_csv(picked), file_name="audit.csv", mime="text/csv",
    key="audit_download")
st.caption("Then: `embed-dogs remove --bundle B --from-file audit.csv` (`--dry-run` first;"
           " `--issue KIND` keeps one kind).")
