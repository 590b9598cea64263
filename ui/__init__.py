"""Streamlit helpers the pages share: the frame (config, notice, menu), cached loaders and rendering.

Never imported by ``tumor``; the pages call ``ui.frame.page_frame`` first.
"""
