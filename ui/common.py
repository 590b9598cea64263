"""Streamlit helpers shared by the pages: cached loaders and result rendering.

Not a page itself; the frame every page draws first is ``ui.frame``. Model work happens in
``tumor``; this module only caches it and draws what it returns. Uploaded
bytes stay in memory: nothing here writes them to disk or logs them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from tumor.errors import InputError, WeightsError

# Paths and display constants, gathered here.
ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_DIR_ENV = "TUMOR_WEIGHTS_DIR"  # overrides the weights folder (tests use it)
GALLERY_DIR_ENV = "TUMOR_GALLERY_DIR"
DEFAULT_WEIGHTS_DIR = ROOT / "weights"
DEFAULT_GALLERY_DIR = ROOT / "gallery"
UPLOAD_TYPES = None  # any file: DICOM often has no extension; tumor.io sniffs content
CLASS_LABELS = {
    "no_tumor": "No tumour",
    "glioma": "Glioma",
    "meningioma": "Meningioma",
    "pituitary": "Pituitary adenoma",
}
SOURCE_LABELS = {
    "lgg": "LGG · FLAIR",
    "figshare": "figshare · T1 contrast",
}
SHORT_HASH = 12  # hex digits of a sha256 shown in the UI
# Added to the outline's caption when the weights route segmenters by the kind of slice (Analysis.segmenter_route).
ROUTE_NOTES = {
    "grey": " · greyscale slice: outlined by the segmenters for greyscale scans",
    "colour": " · colour composite: outlined by the segmenters for multi-sequence composites",
}
GALLERY_PICK_KEY = "gallery_pick"  # session_state key the gallery hands to Analyze
OUTLINE_REQUEST_KEY = "outline_requested"  # session_state key prefix: the user asked for an outline of a negative slice
OUTLINE_REQUESTED_NOTE = "requested by the user; the classifier found no tumour"  # as tumor.report.OUTLINE_REQUESTED
OUTLINE_REQUESTED_CAPTION = "Outline requested by the user (red; the classifier found no tumour)"


def weights_dir() -> Path:
    """The weights folder: ``$TUMOR_WEIGHTS_DIR`` or ``<repo>/weights``."""
    return Path(os.environ.get(WEIGHTS_DIR_ENV) or DEFAULT_WEIGHTS_DIR)


def gallery_dir() -> Path:
    """The gallery folder: ``$TUMOR_GALLERY_DIR`` or ``<repo>/gallery``."""
    return Path(os.environ.get(GALLERY_DIR_ENV) or DEFAULT_GALLERY_DIR)


# --- loading and caching --------------------------------------------------------


@st.cache_resource(show_spinner="Loading the models (the first start ever compiles them: about two minutes)…")
def _load_pipeline(path: str):
    # Once per server, shared by every session (the Pipeline is thread-safe). The compiled networks
    # (tumor.runtime) load in about a second and never import TensorFlow; the first start ever also
    # builds them from the verified weights, in a subprocess, into a cache keyed by their sha256.
    # Imported here so that pages without a model (About, Model card) load nothing.
    from tumor.pipeline import Pipeline

    return Pipeline.from_weights_dir(path)


def require_pipeline():
    """Returns the shared Pipeline, or shows the weights error and stops.

    Never falls back to untrained weights: without verified weights nothing is
    predicted.
    """
    try:
        return _load_pipeline(str(weights_dir()))
    except WeightsError as exc:
        st.error(f"The model cannot be loaded, so nothing will be predicted. {exc}")
        st.stop()


def digest(data: bytes) -> str:
    """sha256 hex digest of the bytes, used as a cache key."""
    return hashlib.sha256(data).hexdigest()


# Per-slice caches are shared by every session of the server, so they are bounded by count and age:
# a slice of the upload budget's largest size (50 MP) weighs about 150 MB as RGB.
SLICE_CACHE_ENTRIES = 16
CACHE_TTL_S = 3600


@st.cache_resource(max_entries=SLICE_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner=False)
def read_scan_cached(
    key: str,
    _data: bytes,
    name: str | None,
    frame: int | None,
    window: tuple[float, float] | None,
):
    """tumor.io.read_scan, cached by the bytes' digest ``key`` (the Scan is read-only, so it is shared, not copied)."""
    from tumor.io import read_scan

    return read_scan(_data, name=name, frame=frame, window=window)


@st.cache_resource(max_entries=2, ttl=CACHE_TTL_S, show_spinner="Reading the volume…")
def read_volume_cached(key: str, _data: bytes, name: str | None):
    """tumor.io.read_volume, cached by digest; the Volume is read-only."""
    from tumor.io import read_volume

    return read_volume(_data, name=name)


@st.cache_resource(max_entries=SLICE_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner="Analysing the slice…")
def analyze_cached(key: str, _pipeline, _scan):
    """Runs both models once per distinct slice (``key`` names the slice).

    Threshold, contour/fill and opacity controls only call Analysis methods on
    the cached result and never re-run a model. ``cache_resource`` hands every
    rerun the same object (safe: Analysis is frozen and its arrays read-only),
    so its cached brain mask is computed once, not once per rerun.
    """
    return _pipeline.analyze(_scan)


@st.cache_resource(max_entries=SLICE_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner="Outlining on request…")
def outline_cached(key: str, _pipeline, _analysis):
    """The segmenter run at the user's request on a slice the classifier called negative (once per slice)."""
    return _pipeline.outline_on_request(_analysis)


@st.cache_data(max_entries=SLICE_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner="Writing the DICOM SEG…")
def dicom_seg_cached(
    key: str, threshold: float, _data: bytes, frame: int, _analysis
) -> tuple[bytes | None, str | None]:
    """The DICOM SEG of an analysed DICOM upload at ``threshold``: (bytes, None), or (None, why not)."""
    from tumor.dicom_seg import seg_for_upload

    try:
        return seg_for_upload(_data, _analysis, frame=frame, threshold=threshold), None
    except InputError as exc:
        return None, str(exc)


@st.cache_resource(max_entries=SLICE_CACHE_ENTRIES, ttl=CACHE_TTL_S, show_spinner="Computing Grad-CAM…")
def grad_cam_cached(key: str, _pipeline, _analysis) -> np.ndarray:
    """Grad-CAM of an analysed slice, computed once on demand (read-only array)."""
    heat = _pipeline.grad_cam(_analysis)
    heat.setflags(write=False)
    return heat


# --- gallery ------------------------------------------------------------------------


@dataclass(frozen=True)
class GalleryCase:
    """One row of gallery/index.csv, with paths made absolute."""

    id: str
    image: Path
    mask: Path | None
    label: str
    source: str
    pixel_spacing_mm: float | None
    license: str
    credit: str


def load_gallery() -> list[GalleryCase]:
    """Reads gallery/index.csv; an empty list when the gallery is missing."""
    folder = gallery_dir()
    index = folder / "index.csv"
    if not index.is_file():
        return []
    cases = []
    with index.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            spacing = (row.get("pixel_spacing_mm") or "").strip()
            mask = (row.get("mask") or "").strip()
            cases.append(
                GalleryCase(
                    id=row["id"],
                    image=folder / row["image"],
                    mask=folder / mask if mask else None,
                    label=(row.get("label") or "").strip(),
                    source=(row.get("source") or "").strip(),
                    pixel_spacing_mm=float(spacing) if spacing else None,
                    license=(row.get("license") or "").strip(),
                    credit=(row.get("credit") or "").strip(),
                )
            )
    return cases


def find_case(case_id: str) -> GalleryCase | None:
    """The gallery case with this id, or None."""
    return next((c for c in load_gallery() if c.id == case_id), None)


def read_expert_mask(case: GalleryCase, shape: tuple[int, int]) -> np.ndarray:
    """The expert mask as bool (H, W); all False for a case without a mask."""
    if case.mask is None or not case.mask.is_file():
        return np.zeros(shape, dtype=bool)
    mask = np.asarray(Image.open(case.mask).convert("L")) > 127
    if mask.shape != shape:
        mask = (
            np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.NEAREST)) > 127
        )
    return mask


def case_scan(case: GalleryCase):
    """Reads a gallery slice, attaching its known pixel spacing."""
    import dataclasses

    data = case.image.read_bytes()
    scan = read_scan_cached(digest(data), data, case.image.name, None, None)
    if case.pixel_spacing_mm and scan.pixel_spacing_mm is None:
        s = float(case.pixel_spacing_mm)
        scan = dataclasses.replace(scan, pixel_spacing_mm=(s, s))
    return data, scan


def case_key(case: GalleryCase, data: bytes) -> str:
    """Cache key of a gallery slice: content plus the spacing attached to it."""
    return f"{digest(data)}:{case.pixel_spacing_mm}"


# --- formatting -----------------------------------------------------------------


def label(name: str | None) -> str:
    """Display name of a class key."""
    if not name:
        return "—"
    return CLASS_LABELS.get(name, name.replace("_", " ").capitalize())


def source_label(source: str | None) -> str:
    """Display name of a gallery source key."""
    if not source:
        return "unknown source"
    return SOURCE_LABELS.get(source.lower(), source)


def get_path(data: Any, *keys: str) -> Any:
    """Nested dict lookup returning None when any key is missing."""
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def fmt(value: Any, spec: str = ".3f", missing: str = "not available") -> str:
    """Formats a number, or says it is not available."""
    if value is None:
        return missing
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return missing


def png_bytes(array: np.ndarray) -> bytes:
    """Encodes a uint8 RGB or grayscale array as PNG."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def short_hashes(weights_sha256: dict[str, str] | None) -> str:
    """``file: first 12 hex`` for each weights file."""
    if not weights_sha256:
        return "not available"
    return ", ".join(f"{Path(k).name} `{v[:SHORT_HASH]}`" for k, v in weights_sha256.items())


def load_metrics() -> dict | None:
    """weights/metrics.json, or None when missing or unreadable."""
    path = weights_dir() / "metrics.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def headline_metrics(metrics: dict | None) -> list[tuple[str, str]]:
    """Test-set numbers worth showing next to every result."""
    return [
        ("Detection AUC", fmt(get_path(metrics, "detection", "auc"))),
        ("Sensitivity", fmt(get_path(metrics, "detection", "sensitivity"))),
        ("Specificity", fmt(get_path(metrics, "detection", "specificity"))),
        ("Type accuracy", fmt(get_path(metrics, "type", "accuracy"))),
        (
            "Dice (tumour slices)",
            fmt(get_path(metrics, "segmentation", "tumor_slice_dice_mean")),
        ),
    ]


INTERVAL_LABELS = {
    "auc": "AUC",
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "type_accuracy": "type accuracy",
    "lgg_patient_dice_mean": "LGG Dice per patient",
    "figshare_slice_dice_mean": "figshare Dice per slice",
}


def interval_caption(metrics: dict | None) -> str | None:
    """The test figures' bootstrap intervals in one line; None when metrics.json holds none that are readable."""
    intervals = get_path(metrics, "confidence", "intervals")
    level = get_path(metrics, "confidence", "level")
    if not isinstance(intervals, dict) or not isinstance(level, (int, float)):
        return None
    parts = []
    for key, label in INTERVAL_LABELS.items():
        span = intervals.get(key)
        if isinstance(span, list) and len(span) == 2 and all(isinstance(v, (int, float)) for v in span):
            parts.append(f"{label} {span[0]:.3f}–{span[1]:.3f}")
    if not parts:
        return None
    return (
        f"{level:.0%} bootstrap intervals over the test split (whole LGG patients resampled; figshare by slice, "
        "so its intervals are too narrow): " + " · ".join(parts)
    )


def probability_chart(probabilities: dict[str, float]) -> go.Figure:
    """Horizontal bar chart of the four class probabilities."""
    keys = list(probabilities)
    values = [float(probabilities[k]) for k in keys]
    top = max(range(len(values)), key=values.__getitem__) if values else -1
    fig = go.Figure(
        go.Bar(
            x=values,
            y=[label(k) for k in keys],
            orientation="h",
            marker_color=["#d62728" if i == top else "#7f7f7f" for i in range(len(keys))],
            text=[f"{v:.1%}" for v in values],
            textposition="auto",
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        height=200,
        margin={"l": 0, "r": 10, "t": 10, "b": 0},
        xaxis={"range": [0, 1], "tickformat": ".0%", "title": "Probability"},
        yaxis={"autorange": "reversed"},
    )
    return fig


def show_input_error(exc: InputError) -> None:
    """Shows a user-facing message for a file that cannot be analysed."""
    st.error(f"This file cannot be analysed: {exc}")


# --- result rendering ---------------------------------------------------------------


def _base_name(source_name: str | None) -> str:
    stem = Path(source_name or "scan").name
    for suffix in (".nii.gz", ".nii", ".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:60] or "scan"


def overlay_controls(pipeline, *, enabled: bool) -> tuple[float, str, float, bool]:
    """The display controls; none of them re-runs a model.

    Returns:
        (mask threshold, "contour" | "fill", fill opacity, Grad-CAM on).
    """
    c1, c2, c3, c4 = st.columns([3, 2, 2, 2], vertical_alignment="bottom")
    min_fraction = float(getattr(pipeline, "min_component_fraction", 0.0))
    speck_note = (
        f" Outlined parts smaller than {min_fraction:.2%} of the slice are left out (chosen on validation data)."
        if min_fraction
        else ""
    )
    threshold = c1.slider(
        "Mask threshold",
        min_value=0.05,
        max_value=0.95,
        value=float(getattr(pipeline, "mask_threshold", 0.5)),
        step=0.05,
        key="mask_threshold",
        disabled=not enabled,
        help="Pixels whose tumour probability is at least this value are outlined. "
        "Changing it re-draws the outline without re-running the model." + speck_note,
    )
    mode = c2.radio(
        "Draw as",
        ["contour", "fill"],
        horizontal=True,
        key="overlay_mode",
        disabled=not enabled,
    )
    opacity = c3.slider(
        "Fill opacity",
        min_value=0.1,
        max_value=0.9,
        value=0.4,
        step=0.05,
        key="overlay_opacity",
        disabled=not enabled or mode != "fill",
    )
    cam = c4.toggle(
        "Grad-CAM",
        key="grad_cam",
        help="Where the classifier looked. Computed on demand (a few seconds).",
    )
    return float(threshold), str(mode), float(opacity), bool(cam)


def render_measurements(analysis, threshold: float) -> None:
    """Area, share of brain, diameters (mm only with known spacing), position."""
    m = analysis.measurements(threshold)
    st.markdown("##### Measurements")
    if m.area_px == 0:
        st.info("No pixel reaches this threshold: lower it to outline the tumour.")
        return
    a, b = st.columns(2)
    a.metric("Tumour area", f"{m.area_px:,} px")
    b.metric(
        "Share of brain",
        fmt(m.percent_of_brain, ".1f", "unknown") + (" %" if m.percent_of_brain is not None else ""),
    )
    if m.area_mm2 is not None:
        c, d = st.columns(2)
        c.metric("Area", f"{m.area_mm2:,.1f} mm²")
        if m.long_axis_mm is not None and m.short_axis_mm is not None:
            d.metric(
                "Long × short axis",
                f"{m.long_axis_mm:.0f} × {m.short_axis_mm:.0f} mm",
                help=f"{m.long_axis_mm:.1f} mm × {m.short_axis_mm:.1f} mm: longest "
                "diameter of the largest region and its width at right angles.",
            )
    else:
        st.caption(
            "Pixel spacing unknown for this file, so sizes are in pixels only"
            + (
                f": long × short axis {m.long_axis_px:.0f} × {m.short_axis_px:.0f} px."
                if m.long_axis_px is not None and m.short_axis_px is not None
                else "."
            )
        )
    regions = "1 region" if m.n_components == 1 else f"{m.n_components} separate regions"
    st.markdown(f"**Outline:** {regions}; **position:** {m.position}.")


def render_model_info(pipeline, analysis) -> None:
    """Model version, short weights hashes and headline test metrics."""
    version = getattr(analysis, "model_version", None) or getattr(pipeline, "version", "?")
    hashes = getattr(analysis, "weights_sha256", None) or getattr(pipeline, "weights_sha256", None)
    metrics = getattr(pipeline, "metrics", None)
    with st.container(border=True):
        st.markdown(f"**Model** `{version}` · weights {short_hashes(hashes)}")
        n = get_path(metrics, "n_slices")
        st.caption(
            "Test split"
            + (f" ({n} slices)" if n is not None else "")
            + ": "
            + " · ".join(f"{k} {v}" for k, v in headline_metrics(metrics))
        )


def render_downloads(
    analysis,
    threshold: float,
    source_name: str | None,
    scan_meta,
    *,
    key: str = "",
    dicom: tuple[bytes, int] | None = None,
) -> None:
    """Overlay PNG, mask PNG, JSON and PDF reports (built only when clicked), and a DICOM SEG for a DICOM upload.

    ``dicom`` is the uploaded DICOM's bytes and the analysed frame; the SEG is
    offered when the outline at ``threshold`` has a pixel.
    """
    base = _base_name(source_name)
    meta = dict(scan_meta or {})

    def overlay_png() -> bytes:
        return png_bytes(analysis.overlay(threshold))

    def mask_png() -> bytes:
        return png_bytes(analysis.mask(threshold).astype(np.uint8) * 255)

    def report_json() -> bytes:
        report = analysis.report(threshold, source_name=source_name, scan_meta=meta)
        return json.dumps(report, indent=2).encode("utf-8")

    def report_pdf() -> bytes:
        return bytes(analysis.pdf(threshold, source_name=source_name, scan_meta=meta))

    st.markdown("##### Downloads")
    c1, c2, c3, c4 = st.columns(4)
    c1.download_button(
        "Overlay PNG",
        overlay_png,
        f"{base}_overlay.png",
        "image/png",
        on_click="ignore",
    )
    c2.download_button("Mask PNG", mask_png, f"{base}_mask.png", "image/png", on_click="ignore")
    c3.download_button(
        "JSON report",
        report_json,
        f"{base}_report.json",
        "application/json",
        on_click="ignore",
    )
    c4.download_button(
        "PDF report",
        report_pdf,
        f"{base}_report.pdf",
        "application/pdf",
        on_click="ignore",
    )
    if dicom is not None and analysis.mask(threshold).any():
        state = "requested" if getattr(analysis, "outline_requested", False) else "cascade"
        seg, why_not = dicom_seg_cached(f"{key}:{state}", float(threshold), dicom[0], dicom[1], analysis)
        if seg is not None:
            st.download_button(
                "DICOM SEG (opens over the scan in 3D Slicer or OHIF)",
                seg,
                f"{base}_seg.dcm",
                "application/dicom",
                on_click="ignore",
                help="A DICOM Segmentation of this outline at the current threshold, referencing the uploaded "
                "instance by its UIDs. No patient name, ID or date is copied into it.",
            )
        else:
            st.caption(f"No DICOM SEG for this file: {why_not}")


def render_verdict(analysis) -> None:
    """Tumour / no tumour, P(tumour), the likely type and what it usually means."""
    from tumor.pipeline import DETECTION_FUSED  # loaded with the pipeline already; pages without one skip it

    p = float(analysis.p_tumor)
    if analysis.tumor_detected:
        st.markdown("### :red[Tumour detected]")
    else:
        st.markdown("### :green[No tumour detected]")
    a, b = st.columns(2)
    a.metric(
        "P(tumour)",
        f"{p:.1%}",
        help="From the classifiers and how strongly the greyscale segmenters mark a tumour on this greyscale slice "
        "(segmentation-guided detection)."
        if analysis.detection == DETECTION_FUSED
        else None,
    )
    b.metric(
        "Most likely type",
        label(analysis.tumor_type) if analysis.tumor_detected else "—",
    )
    if analysis.behaviour:
        st.markdown(analysis.behaviour)
    st.caption(
        "The type is read from the image pattern, not from tissue; only histology and a clinician can establish it."
    )
    st.plotly_chart(
        probability_chart(analysis.probabilities),
        config={"displayModeBar": False},
        key="class_probabilities",
    )


def render_analysis(
    pipeline,
    analysis,
    *,
    key: str,
    source_name: str | None,
    scan_meta: dict | None = None,
    expert_mask: np.ndarray | None = None,
    dicom: tuple[bytes, int] | None = None,
) -> None:
    """The full result of one slice: image with outline, verdict, numbers.

    Args:
        pipeline: the loaded Pipeline (for Grad-CAM and model facts).
        analysis: the cached Analysis of the slice.
        key: cache key of the slice (for Grad-CAM).
        source_name: file name shown in reports (no path).
        scan_meta: non-identifying scan fields for the reports.
        expert_mask: the expert outline of a gallery case, drawn in green.
        dicom: the uploaded DICOM's bytes and analysed frame, for the DICOM SEG download.
    """
    from tumor.metrics import dice
    from tumor.overlay import draw_comparison, draw_heatmap

    requested_key = f"{OUTLINE_REQUEST_KEY}:{key}"
    if not analysis.tumor_detected and st.session_state.get(requested_key):
        analysis = outline_cached(key, pipeline, analysis)
    outlined = analysis.prob_map is not None
    left, right = st.columns([3, 2], gap="large")
    with left:
        threshold, mode, opacity, cam = overlay_controls(pipeline, enabled=outlined)
        images, captions = [], []
        if outlined:
            images.append(analysis.overlay(threshold, mode=mode, opacity=opacity))
            route = ROUTE_NOTES.get(analysis.segmenter_route, "")
            who = OUTLINE_REQUESTED_CAPTION if getattr(analysis, "outline_requested", False) else "Model outline (red)"
            captions.append(f"{who}, threshold {threshold:.2f}{route}")
        else:
            images.append(np.asarray(analysis.image))
            captions.append("No tumour outlined: the segmenter runs only on positive slices")
        if expert_mask is not None:
            predicted = analysis.mask(threshold)
            images.append(draw_comparison(np.asarray(analysis.image), expert_mask, predicted))
            captions.append(f"Expert (green) vs model (red) · Dice {dice(expert_mask, predicted):.2f}")
        if cam:
            heat = grad_cam_cached(key, pipeline, analysis)
            images.append(draw_heatmap(np.asarray(analysis.image), heat, opacity=0.45))
            n_cls = len(getattr(pipeline, "classifiers", ()))
            of_which = f" (first of {n_cls} averaged classifiers)" if n_cls > 1 else ""
            captions.append(f"Grad-CAM for '{label(analysis.predicted_class)}'{of_which}")
        for col, image, caption in zip(st.columns(len(images)), images, captions, strict=False):
            col.image(image, caption=caption, width="stretch")
        if analysis.orientation:
            right_dir, down_dir = analysis.orientation
            st.caption(f"Image right → patient {right_dir}; image down → patient {down_dir}.")
        if not outlined:
            st.button(
                "Outline anyway (run the segmenter)",
                key=f"outline_button:{key}",
                icon=":material/draw:",
                on_click=st.session_state.__setitem__,
                args=(requested_key, True),
                help="The classifier found no tumour, so the segmenter did not run. This runs it on this slice; "
                "the verdict stays 'no tumour' and the reports say the outline was requested.",
            )
    with right:
        render_verdict(analysis)
        if getattr(analysis, "outline_requested", False):
            st.warning(f"Outline {OUTLINE_REQUESTED_NOTE}.", icon=":material/draw:")
        if outlined:
            render_measurements(analysis, threshold)
        render_downloads(analysis, threshold, source_name, scan_meta, key=key, dicom=dicom)
        render_model_info(pipeline, analysis)
