"""Gallery: real held-out test slices, expert outline (green) vs model (red)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from tumor.errors import InputError
from ui import common as ui
from ui.frame import page_frame

page_frame("Gallery")

COLUMNS = 4

CREDITS = """
**Data credits and licences**

- **LGG FLAIR slices** — Buda M, Saha A, Mazurowski MA. *Association of genomic
  subtypes of lower-grade gliomas with shape features automatically extracted by
  a deep learning algorithm.* Computers in Biology and Medicine 2019; and
  Mazurowski MA et al., J Neurooncol 2017. Images from The Cancer Imaging
  Archive (TCIA), TCGA-LGG collection.
  Licence **CC BY-NC-SA 4.0 — non-commercial use only**.
- **figshare T1 contrast-enhanced slices** — Cheng J et al. *Enhanced performance
  of brain tumor classification via tumor region augmentation and partition.*
  PLoS ONE 2015; and Cheng J et al., PLoS ONE 2016. figshare, DOI
  [10.6084/m9.figshare.1512427](https://doi.org/10.6084/m9.figshare.1512427).
  Licence **CC BY 4.0**.
"""


def pick(case_id: str) -> None:
    st.session_state[ui.GALLERY_PICK_KEY] = case_id


def case_tile(pipeline, case: ui.GalleryCase) -> None:
    """Thumbnail comparison, Dice and the button that opens the full analysis."""
    from tumor.metrics import dice
    from tumor.overlay import draw_comparison

    with st.container(border=True):
        st.markdown(f"**{ui.label(case.label)}** · {ui.source_label(case.source)}")
        try:
            data, scan = ui.case_scan(case)
            analysis = ui.analyze_cached(ui.case_key(case, data), pipeline, scan)
        except (InputError, OSError, ValueError) as exc:
            st.error(f"Case {case.id} cannot be shown: {exc}")
            return
        expert = ui.read_expert_mask(case, scan.shape)
        predicted = analysis.mask()
        st.image(
            draw_comparison(np.asarray(analysis.image), expert, predicted),
            width="stretch",
        )
        verdict = f"Model: {ui.label(analysis.predicted_class)} ({analysis.p_tumor:.0%} tumour)"
        if expert.any() or predicted.any():
            verdict += f" · Dice {dice(expert, predicted):.2f}"
        st.caption(verdict)
        if st.button("Analyse", key=f"open_{case.id}", icon=":material/biotech:", width="stretch"):
            pick(case.id)
            st.switch_page("app.py")


st.title("Gallery of real test cases")
st.markdown(
    "Slices from the **held-out test split** (never seen in training). Expert "
    "outline in :green[**green**], model outline in :red[**red**]. "
    "Open a case to see the full analysis, exactly as for an upload."
)
cases = ui.load_gallery()
if not cases:
    st.info("The gallery has not been built yet (gallery/index.csv is missing).")
else:
    pipeline = ui.require_pipeline()
    labels = sorted({c.label for c in cases})
    chosen = st.pills(
        "Filter by expert label",
        labels,
        selection_mode="multi",
        default=labels,
        format_func=ui.label,
        key="gallery_filter",
    )
    shown = [c for c in cases if c.label in (chosen or labels)]
    with st.spinner("Analysing the gallery (first visit only)…"):
        for start in range(0, len(shown), COLUMNS):
            for col, case in zip(st.columns(COLUMNS), shown[start : start + COLUMNS], strict=False):
                with col:
                    case_tile(pipeline, case)
st.divider()
st.markdown(CREDITS)
licences = sorted({(c.source, c.license, c.credit) for c in cases})
if licences:
    st.dataframe(
        [{"Source": s, "Licence": lic, "Credit": cred} for s, lic, cred in licences],
        hide_index=True,
        width="stretch",
    )
