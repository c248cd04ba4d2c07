"""Report: the breed heads' test metrics, the photos behind them, the open-set gate and the
bundle's manifest facts, in tables with words for column names."""

import pandas as pd
import streamlit as st

from ui import browse, facts, report_view, widgets

ctx = widgets.context()
ref = widgets.bundle_ref()
st.title("Report")
leakage = browse.leakage_note(ctx.bundle)
if leakage:
    st.warning(leakage, icon=":material/warning:")
heads = widgets.reports(ref)
if not heads:
    st.info("This bundle has no breed head (its source was unlabelled or had no test split).")
for head in heads:
    m = head.metrics
    st.header(f"Breed head: {head.name}")
    if m.get("top1") is None:
        st.info("No test images, so no test metrics.")
        continue
    a, b, c = st.columns(3)
    a.metric("Top-1 accuracy", f"{m['top1']:.1%}")
    b.metric("Top-5 accuracy", f"{m['top5']:.1%}")
    c.metric("Test images", f"{m['test_images']:,}")
    a.caption(facts.interval_caption(m, "top1"))
    b.caption(facts.interval_caption(m, "top5"))
    record = ctx.bundle.manifest.heads.get(head.name)
    validation = (record.get("validation") or {}).get("top1") if record else None
    if validation is not None:
        c.caption(f"validation top-1 {validation:.1%} (chooses the serving head)")
    table_col, plot_col = st.columns(2)
    with table_col:
        st.subheader("Per breed")
        st.dataframe(head.per_breed.rename(columns=browse.PER_BREED_COLUMNS), hide_index=True,
                     width="stretch",
                     column_config={name: st.column_config.NumberColumn(format="%.2f")
                                    for name in ("Precision", "Recall", "F1")})
        st.subheader("Most confused")
        pairs = browse.human_confusions(m.get("most_confused") or [])
        if pairs.empty:
            st.write("No confusions on the test split.")
        else:
            st.dataframe(pairs, hide_index=True, width="stretch")
    with plot_col:
        st.subheader("Confusion matrix")
        if head.confusion_png is not None:
            st.image(str(head.confusion_png), width="stretch")
            st.caption("Pick a cell below to see the photos behind it.")
        else:
            st.write("No confusion-matrix image in the bundle.")

report_view.test_photo_views(ctx)

st.header("Look-alike space")
st.caption("Look-alikes are searched in a space fitted on the train split's breeds (raw"
           " embedding beside shrinkage LDA), measured on the test split against the raw one.")
st.table(pd.DataFrame(facts.space_facts(ctx.bundle.manifest), columns=["What", "Value"])
         .set_index("What"))

st.header("Open-set gate")
st.caption("Before naming a breed the app checks for evidence that the photo is a dog of one"
           " of this bundle's breeds. Thresholds come from the train split only.")
st.table(pd.DataFrame(facts.gate_facts(ctx.bundle.manifest), columns=["What", "Value"])
         .set_index("What"))
dev = browse.gate_dev_table(ctx.bundle)
if dev is not None:
    st.subheader("Measured on other photos")
    st.caption("From `embed-dogs evaluate --not-dogs … --unknown-breeds …`: AUROC, the share"
               " of wrong photos let through at 95% dog recall, and how each set was called.")
    st.table(browse.human_gate_dev(dev).set_index("Photo set"))

st.header("Bundle")
st.table(pd.DataFrame(facts.manifest_facts(ctx.bundle.manifest), columns=["What", "Value"])
         .set_index("What"))
