"""About: what the demo is and is not, data credits, how to run it."""

import streamlit as st

from ui.frame import page_frame

page_frame("About")

st.title("About this demo")
st.markdown(
    """
This is an **open research demo**. It reads one brain MRI slice (or a NIfTI
volume, slice by slice) and shows what neural networks trained on public
data make of it:

1. a **classifier** gives the probability of *no tumour*, *glioma*,
   *meningioma* and *pituitary tumour*;
2. when it finds a tumour, a **segmenter** outlines it. The outline threshold
   can be moved freely: the models run once per slice, the outline is redrawn.

Each may be a small ensemble: the shipped weights list the networks whose
outputs are averaged, and may send greyscale slices and multi-sequence colour
composites to different segmenters (the **Model card** page says which; the
outline's caption says which route a slice took). On a greyscale slice the
segmenter also runs before the verdict: from 1.10.0, P(tumour) there weighs the
classifier's probability with how strongly the outline marks a tumour, which
finds more FLAIR tumours at the cost of a few more false alarms on healthy
greyscale slices (the **Model card** gives the figures).

**What the tumour type usually implies.** Gliomas are malignant brain tumours;
meningiomas are usually benign (mostly WHO grade 1); pituitary adenomas are
benign. The app reports this as what the *predicted type usually implies*, not
as a diagnosis: grade and behaviour are settled by histology and a clinician.

### What it is not
- Not a medical device, not validated clinically, **not for diagnosis**.
- Not a 3-D segmentation: volumes are swept one 2-D slice at a time.
- Not trained on your scanner or sequence. The training data are two public
  datasets (FLAIR-based LGG composites and T1 contrast-enhanced figshare
  slices) plus healthy slices of unverified origin; other sequences,
  resolutions or pathologies are out of domain.
- Not as good as its test split suggests: on an independent held-out set it
  misses more low-grade gliomas, above all on slices that hold only FLAIR.
  The **Model card** page gives the figures and the known failure modes.

### Privacy
Uploaded files are decoded in memory and never written to disk or logged. DICOM
reports copy only non-identifying fields (modality, spacing, window…), never
patient name, ID or dates.

### Data credits
- **LGG**: Buda et al. 2019 (Computers in Biology and Medicine) and Mazurowski
  et al. 2017 (J Neurooncol); images from TCIA, TCGA-LGG collection.
  CC BY-NC-SA 4.0, non-commercial only — the trained weights inherit this.
- **figshare brain tumour dataset**: Cheng et al. 2015 and 2016 (PLoS ONE),
  DOI [10.6084/m9.figshare.1512427](https://doi.org/10.6084/m9.figshare.1512427).
  CC BY 4.0.
- **Healthy slices**: two public Kaggle collections (`nickparvar_notumor`,
  `navoneel_no`), used only as extra negatives; their sources state no
  licence, so none is in the gallery.

### Run it yourself
```bash
python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/streamlit run app.py
bash .ci/run   # tests: unit, Streamlit AppTest and a headless-browser check
```
Code: MIT licence. The **Model card** page has the metrics, limits and
licences; `docs/experiments.md` records how each version was chosen.
"""
)
