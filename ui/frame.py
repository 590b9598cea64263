"""The frame every page draws first: page config, the "not for diagnosis" notice and the menu.

The app uses Streamlit's own ``pages/`` convention (``app.py`` is the Analyze
page; ``pages/*.py`` are Gallery, Model card and About), so every page works
by deep link (``/gallery``, ``/model_card``, ``/about``) on a fresh server.
Streamlit's automatic sidebar of file names is hidden in
``.streamlit/config.toml``; this menu replaces it.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

PAGE_TITLE = "Brain tumour MRI demo"
PAGE_ICON = ":material/neurology:"
DISCLAIMER = (
    "**Research demo, not for diagnosis.** Results come from models trained on "
    "public datasets and may be wrong; never use them for patient care."
)


@dataclass(frozen=True)
class MenuItem:
    """One entry of the menu: the page script (relative to the app root), its title and icon."""

    path: str
    title: str
    icon: str


MENU: tuple[MenuItem, ...] = (
    MenuItem("app.py", "Analyze", ":material/biotech:"),
    MenuItem("pages/gallery.py", "Gallery", ":material/photo_library:"),
    MenuItem("pages/model_card.py", "Model card", ":material/analytics:"),
    MenuItem("pages/about.py", "About", ":material/info:"),
)


def disclaimer() -> None:
    """The "research demo, not for diagnosis" banner."""
    st.warning(DISCLAIMER, icon=":material/warning:")


def menu() -> None:
    """A row of page links, in ``MENU`` order."""
    for column, item in zip(st.columns(len(MENU)), MENU, strict=True):
        column.page_link(item.path, label=item.title, icon=item.icon)


def page_frame(title: str) -> None:
    """Page config, then the notice and the menu; call it first on every page.

    Args:
        title: the page's own title, shown in the browser tab after the app's.
    """
    st.set_page_config(page_title=f"{title} · {PAGE_TITLE}", page_icon=PAGE_ICON, layout="wide")
    menu()
    disclaimer()
