"""Analyze (the home page): upload a slice, DICOM or NIfTI volume, or take a gallery pick."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from tumor.errors import InputError
from ui import common as ui
from ui.frame import page_frame

page_frame("Analyze")

NIFTI_MAGIC = (b"n+1\x00", b"ni1\x00")


def is_volume_file(name: str | None, data: bytes) -> bool:
    """NIfTI by name or by the header magic at byte 344."""
    lower = (name or "").lower()
    return lower.endswith((".nii", ".nii.gz")) or data[344:348] in NIFTI_MAGIC


def window_inputs(key: str, default: tuple[float, float] | None) -> tuple[float, float] | None:
    """Window center/width inputs, initialised from the file's own window."""
    if default is None:
        return None
    c1, c2 = st.columns(2)
    center = c1.number_input(
        "Window center",
        value=float(default[0]),
        step=max(abs(default[1]) / 50, 1e-3),
        key=f"wc_{key}",
        format="%.4g",
    )
    width = c2.number_input(
        "Window width",
        value=float(default[1]),
        min_value=1e-6,
        step=max(abs(default[1]) / 25, 1e-3),
        key=f"ww_{key}",
        format="%.4g",
    )
    window = (float(center), float(width))
    return None if np.allclose(window, default) else window


def show_meta(meta: dict) -> None:
    """The non-identifying header fields tumor.io kept."""
    if meta:
        rows = [{"Field": k.replace("_", " "), "Value": str(v)} for k, v in meta.items()]
        st.dataframe(rows, hide_index=True, width="stretch")


def analyse_slice(pipeline, scan, key: str, name: str | None, expert_mask=None, dicom=None) -> None:
    """Analyses one slice (cached) and renders the result; ``dicom`` is (bytes, frame) of a DICOM upload."""
    try:
        analysis = ui.analyze_cached(key, pipeline, scan)
    except (InputError, ValueError) as exc:
        # ValueError: the pipeline's own shape check (e.g. a slice under 8 px).
        ui.show_input_error(exc)
        return
    ui.render_analysis(
        pipeline,
        analysis,
        key=key,
        source_name=name,
        scan_meta=dict(scan.meta),
        expert_mask=expert_mask,
        dicom=dicom,
    )


def run_single(pipeline, data: bytes, name: str | None, digest: str, case=None) -> None:
    """An image or a DICOM slice (with frame and window controls)."""
    try:
        if case is not None:
            _, scan = ui.case_scan(case)
            digest = ui.case_key(case, data)
        else:
            scan = ui.read_scan_cached(digest, data, name, None, None)
    except InputError as exc:
        ui.show_input_error(exc)
        return
    if scan.kind == "nifti":
        run_volume(pipeline, data, name, digest)
        return
    frame, window = 0, None
    if scan.kind == "dicom":
        with st.expander("DICOM: frame, window/level and header fields", expanded=True):
            if scan.n_frames > 1:
                frame = st.slider("Frame", 0, scan.n_frames - 1, 0, key=f"frame_{digest}")
            window = window_inputs(digest, scan.window)
            show_meta(scan.meta)
        if frame or window is not None:
            try:
                scan = ui.read_scan_cached(digest, data, name, frame, window)
            except InputError as exc:
                ui.show_input_error(exc)
                return
    expert = ui.read_expert_mask(case, scan.shape) if case is not None else None
    dicom = (data, frame) if scan.kind == "dicom" and case is None else None
    analyse_slice(pipeline, scan, f"{digest}:{frame}:{window}", name, expert, dicom)


def volume_plot(p_tumor, areas, current: int) -> go.Figure:
    """P(tumour) and outlined area per slice."""
    x = list(range(len(p_tumor)))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=list(p_tumor), name="P(tumour)", mode="lines"))
    if areas is not None:
        fig.add_trace(go.Bar(x=x, y=list(areas), name="Tumour area (px)", yaxis="y2", opacity=0.35))
    fig.add_vline(x=current, line_dash="dot", line_color="gray")
    fig.update_layout(
        height=260,
        margin={"l": 0, "r": 0, "t": 10, "b": 0},
        xaxis={"title": "Slice"},
        yaxis={"title": "P(tumour)", "range": [0, 1]},
        yaxis2={
            "title": "Area (px)",
            "overlaying": "y",
            "side": "right",
            "showgrid": False,
        },
        legend={"orientation": "h", "y": 1.15},
    )
    return fig


def run_volume(pipeline, data: bytes, name: str | None, digest: str) -> None:
    """A NIfTI volume: plane, slice and window controls, whole-volume sweep."""
    try:
        volume = ui.read_volume_cached(digest, data, name)
    except InputError as exc:
        ui.show_input_error(exc)
        return
    slice_key = f"slice_{digest}"
    c1, c2 = st.columns([1, 3])
    plane = c1.radio(
        "Plane",
        ["axial", "coronal", "sagittal"],
        horizontal=False,
        key=f"plane_{digest}",
    )
    n = volume.n_slices(plane)
    state_key = f"{slice_key}_{plane}"
    index = c2.slider("Slice", 0, n - 1, n // 2, key=state_key)
    with c2:
        window = window_inputs(f"{digest}_vol", volume.default_window)
    sx, sy, sz = volume.spacing_mm
    st.caption(
        f"{n} {plane} slices · voxel {sx:.2f} × {sy:.2f} × {sz:.2f} mm · "
        "shown upright in radiological convention (patient left on image right)."
    )
    try:
        scan = volume.slice(int(index), plane, window)
    except InputError as exc:
        ui.show_input_error(exc)
        return
    analyse_slice(pipeline, scan, f"{digest}:{plane}:{index}:{window}", name)

    st.divider()
    st.subheader("Whole volume")
    results = st.session_state.setdefault("volume_results", {})
    result_key = f"{digest}:{plane}"
    if st.button(f"Analyse the whole volume ({n} {plane} slices)", key=f"sweep_{digest}"):
        bar = st.progress(0.0, text="Analysing slices…")

        def progress(done: int, total: int) -> None:
            bar.progress(min(1.0, done / max(total, 1)), text=f"{done} of {total} slices")

        try:
            results[result_key] = pipeline.analyze_volume(volume, plane=plane, progress=progress)
        except InputError as exc:
            ui.show_input_error(exc)
        bar.empty()
    result = results.get(result_key)
    if result is None:
        st.caption("Runs both models on every slice; takes a while on a CPU.")
        return
    p_tumor = getattr(result, "p_tumor", None) or []
    areas = getattr(result, "tumor_area_px", None)
    largest = getattr(result, "largest_slice", None)
    if largest is None:
        largest = getattr(result, "largest_index", None)
    volume_ml = getattr(result, "tumor_volume_ml", None)
    a, b, c = st.columns(3)
    a.metric("Slices with tumour", sum(1 for p in p_tumor if p >= pipeline.tumor_threshold))
    b.metric("Largest-tumour slice", "—" if largest is None else int(largest))
    c.metric(
        "Tumour volume",
        ui.fmt(volume_ml, ".1f", "—") + (" ml" if volume_ml is not None else ""),
    )
    st.plotly_chart(volume_plot(p_tumor, areas, int(index)), key=f"volplot_{result_key}")
    if largest is not None and int(largest) != int(index):
        st.button(
            "Show the largest-tumour slice",
            on_click=lambda: st.session_state.__setitem__(state_key, int(largest)),
            key=f"jump_{result_key}",
        )
    st.caption(
        "Volume = outlined voxels × voxel volume, summed over slices; a rough "
        "estimate from a 2-D model, not a volumetric segmentation."
    )


pipeline = ui.require_pipeline()
st.title("Analyse a brain MRI")
uploaded = st.file_uploader(
    "Drop a brain MRI slice or volume here",
    type=ui.UPLOAD_TYPES,
    help="PNG, JPEG, TIFF, BMP or WebP slices; DICOM (.dcm or no extension); "
    "NIfTI volumes (.nii, .nii.gz). Files stay in memory and are never saved.",
)

case = None
if uploaded is not None:
    st.session_state.pop(ui.GALLERY_PICK_KEY, None)  # an upload replaces a gallery pick
    data, name = uploaded.getvalue(), uploaded.name
else:
    pick = st.session_state.get(ui.GALLERY_PICK_KEY)
    case = ui.find_case(pick) if isinstance(pick, str) else None
    if case is None:
        st.info(
            "Upload a scan above, or pick a real case from the gallery. Accepted: "
            "PNG/JPEG/TIFF/BMP/WebP slices, DICOM and NIfTI volumes."
        )
        st.page_link(
            "pages/gallery.py",
            label="Open the gallery",
            icon=":material/photo_library:",
        )
        st.stop()
    try:
        data, name = case.image.read_bytes(), case.image.name
    except OSError:
        st.error(f"Gallery case {case.id} is missing its image file.")
        st.stop()
    c1, c2 = st.columns([5, 1], vertical_alignment="center")
    c1.info(
        f"Gallery case **{case.id}** — expert label: {ui.label(case.label)}, "
        f"source: {ui.source_label(case.source)}. Expert outline in green, model in red."
    )
    if c2.button("Clear", key="clear_pick"):
        st.session_state.pop(ui.GALLERY_PICK_KEY, None)
        st.rerun()

digest = ui.digest(data)
if case is None and is_volume_file(name, data):
    run_volume(pipeline, data, name, digest)
else:
    run_single(pipeline, data, name, digest, case)
