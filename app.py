"""Entry point: page config and navigation (each page draws the disclaimer).

Run with ``streamlit run app.py``. No model code lives here.
"""

import streamlit as st

st.set_page_config(
    page_title="Brain tumour MRI demo",
    page_icon=":material/neurology:",
    layout="wide",
)

pages = [
    st.Page("views/analyze.py", title="Analyze", icon=":material/biotech:", default=True),
    st.Page("views/gallery.py", title="Gallery", icon=":material/photo_library:"),
    st.Page("views/model_card.py", title="Model card", icon=":material/analytics:"),
    st.Page("views/about.py", title="About", icon=":material/info:"),
]
page = st.navigation(pages, position="top")
page.run()
