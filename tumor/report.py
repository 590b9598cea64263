"""The analysis report: a JSON-ready dict and a one-page PDF.

Only scan fields on ``tumor.io.SAFE_META_KEYS`` are copied, so patient
identifiers cannot reach a report even if a caller passes them.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict
from datetime import UTC, datetime

import numpy as np
from fpdf import FPDF
from PIL import Image

from tumor.io import SAFE_META_KEYS
from tumor.measure import Measurements

TITLE = "Brain tumour MRI analysis"
DISCLAIMER = "Research demo, not for diagnosis."
OUTLINE_REQUESTED = "requested by the user; the classifier found no tumour"
MAX_TEXT = 120  # longest free-text value copied into a report

# Core PDF fonts are latin-1 only; these characters get ASCII stand-ins.
_REPLACEMENTS = {
    "\u00b2": "^2",
    "\u00b3": "^3",
    "\u2014": "-",
    "\u2013": "-",
    "\u2212": "-",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2026": "...",
    "\u00b5": "u",
    "\u2264": "<=",
    "\u2265": ">=",
}


def report_dict(
    *,
    probabilities: dict[str, float],
    p_tumor: float,
    predicted: str,
    behaviour: str,
    threshold: float,
    measurements: Measurements | None,
    model_version: str,
    weights_sha256: dict[str, str],
    scan_meta: dict[str, str],
    source_name: str | None,
    created: datetime,
    segmenter_route: str | None = None,
    outline_requested: bool = False,
    typing: str = "classifier",
    detection: str = "classifier",
) -> dict:
    """Gathers one analysis into a JSON-serialisable report.

    Args:
        probabilities: class name -> probability in [0, 1].
        p_tumor: probability that the slice shows a tumour, in [0, 1].
        predicted: the predicted class name.
        behaviour: plain-words description of the tumour type's behaviour.
        threshold: decision threshold on ``p_tumor``, in [0, 1].
        measurements: the mask's measurements, or None without a mask.
        model_version: version string of the weights.
        weights_sha256: weights file name -> SHA-256 hex digest.
        scan_meta: the scan's display fields; only ``SAFE_META_KEYS`` are kept.
        source_name: the uploaded file's base name, or None.
        created: when the analysis ran; a naive datetime is taken as UTC.
        segmenter_route: "grey" or "colour" when the weights route segmenters
            by the kind of slice; then ``model.segmenter_route`` says which drew the mask.
        outline_requested: the classifier found no tumour and the user asked
            for the outline anyway; ``prediction.outline`` then says so.
        typing: what chose the tumour type (``tumor.pipeline.Analysis.typing``).
        detection: what gave P(tumour) (``tumor.pipeline.Analysis.detection``).

    Returns:
        A dict of str, float, int, None, lists and dicts only, with keys
        title, disclaimer, created_utc, source_name, prediction, measurements,
        model and scan.
    """
    if not isinstance(created, datetime):
        raise TypeError(f"created must be a datetime. Received: {created!r}")
    created_utc = created.replace(tzinfo=UTC) if created.tzinfo is None else created.astimezone(UTC)
    probs = {str(k): _probability(v, f"probabilities[{k!r}]") for k, v in probabilities.items()}
    return {
        "title": TITLE,
        "disclaimer": DISCLAIMER,
        "created_utc": created_utc.isoformat(timespec="seconds"),
        "source_name": _base_name(source_name),
        "prediction": {
            "predicted": _short(predicted),
            "behaviour": _short(behaviour, 400),
            "p_tumor": _probability(p_tumor, "p_tumor"),
            "threshold": _probability(threshold, "threshold"),
            "probabilities": probs,
            **({"outline": OUTLINE_REQUESTED} if outline_requested else {}),
        },
        "measurements": _measurements_dict(measurements),
        "model": {
            "version": _short(model_version),
            "weights_sha256": {_short(k): _short(v, 64) for k, v in weights_sha256.items()},
            **({"segmenter_route": _short(segmenter_route)} if segmenter_route else {}),
            "typing": _short(typing),
            "detection": _short(detection),
        },
        "scan": {k: _short(scan_meta[k]) for k in SAFE_META_KEYS if k in scan_meta},
    }


def report_pdf(report: dict, overlay_rgb: np.ndarray, *, compress: bool = True) -> bytes:
    """Renders a report from ``report_dict`` as a one-page PDF.

    Args:
        report: the dict returned by ``report_dict``.
        overlay_rgb: uint8 (H, W, 3) RGB image to show (the slice with its
            overlay), embedded as PNG from memory.
        compress: compress the page streams; False keeps the text readable in
            the raw bytes (for tests).

    Returns:
        The PDF file's bytes (they start with ``%PDF``).
    """
    if overlay_rgb.ndim != 3 or overlay_rgb.shape[2] != 3 or overlay_rgb.dtype != np.uint8:
        raise ValueError(
            "Expected an RGB uint8 image of shape (H, W, 3). "
            f"Received: shape={overlay_rgb.shape}, dtype={overlay_rgb.dtype}"
        )
    pdf = FPDF(format="A4")
    pdf.set_compression(compress)
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    pdf.set_title(_latin1(report.get("title", TITLE)))
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, _latin1(report.get("title", TITLE)), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "B", 11)
    pdf.set_text_color(180, 0, 0)
    pdf.cell(0, 7, _latin1(DISCLAIMER), new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    pdf.set_font("Helvetica", "", 9)
    line = f"Created (UTC): {report.get('created_utc', '')}"
    if report.get("source_name"):
        line += f"    File: {report['source_name']}"
    pdf.cell(0, 6, _latin1(line), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)

    png = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(overlay_rgb)).save(png, format="PNG")
    png.seek(0)
    height, width = overlay_rgb.shape[:2]
    shown_w = min(100.0, 100.0 * width / height)
    pdf.image(png, x=pdf.l_margin, w=shown_w)
    pdf.ln(3)

    prediction = report.get("prediction", {})
    _heading(pdf, "Classification")
    for name, p in prediction.get("probabilities", {}).items():
        _row(pdf, str(name), f"{100 * p:.1f} %")
    _row(pdf, "Predicted", str(prediction.get("predicted", "")))
    _row(pdf, "P(tumour)", f"{100 * prediction.get('p_tumor', float('nan')):.1f} %")
    _row(pdf, "Threshold", f"{prediction.get('threshold', float('nan')):.2f}")
    if prediction.get("outline"):
        _row(pdf, "Outline", str(prediction["outline"]))
    if prediction.get("behaviour"):
        pdf.set_font("Helvetica", "", 9)
        pdf.multi_cell(0, 5, _latin1(prediction["behaviour"]), new_x="LMARGIN", new_y="NEXT")

    _heading(pdf, "Measurements")
    m = report.get("measurements")
    if not m or not m.get("area_px"):
        _row(pdf, "Tumour outline", "none")
    else:
        _row(pdf, "Area", _with_mm(f"{m['area_px']} px", m.get("area_mm2"), "mm2"))
        if m.get("percent_of_brain") is not None:
            _row(pdf, "Share of brain area", f"{m['percent_of_brain']:.1f} %")
        if m.get("long_axis_px") is not None:
            _row(
                pdf,
                "Long axis",
                _with_mm(f"{m['long_axis_px']:.1f} px", m.get("long_axis_mm")),
            )
            _row(
                pdf,
                "Short axis",
                _with_mm(f"{m['short_axis_px']:.1f} px", m.get("short_axis_mm")),
            )
        _row(pdf, "Regions", str(m.get("n_components", "")))
        _row(pdf, "Position", str(m.get("position", "")))
        if m.get("area_mm2") is None:
            _row(pdf, "Scale", "pixel spacing unknown: sizes in pixels only")

    scan = report.get("scan", {})
    if scan:
        _heading(pdf, "Scan")
        for key in SAFE_META_KEYS:
            if key in scan:
                _row(pdf, key.replace("_", " "), str(scan[key]))

    _heading(pdf, "Model")
    model = report.get("model", {})
    _row(pdf, "Version", str(model.get("version", "")))
    for name, digest in model.get("weights_sha256", {}).items():
        _row(pdf, str(name), f"sha256 {str(digest)[:12]}")
    return bytes(pdf.output())


def _latin1(text: str) -> str:
    for char, stand_in in _REPLACEMENTS.items():
        text = text.replace(char, stand_in)
    return text.encode("latin-1", errors="replace").decode("latin-1")


def _heading(pdf: FPDF, text: str) -> None:
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 12)
    pdf.cell(0, 7, _latin1(text), new_x="LMARGIN", new_y="NEXT")


def _row(pdf: FPDF, label: str, value: str) -> None:
    pdf.set_font("Helvetica", "", 10)
    pdf.cell(55, 6, _latin1(label))
    pdf.cell(0, 6, _latin1(value), new_x="LMARGIN", new_y="NEXT")


def _with_mm(px_text: str, mm: float | None, unit: str = "mm") -> str:
    return px_text if mm is None else f"{mm:.1f} {unit} ({px_text})"


def _probability(value: float, name: str) -> float:
    number = float(value)
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise ValueError(f"{name} must be a probability in [0, 1]. Received: {value!r}")
    return number


def _short(value: object, limit: int = MAX_TEXT) -> str:
    return " ".join(str(value).split())[:limit]


def _base_name(name: str | None) -> str | None:
    if name is None:
        return None
    return _short(name.replace("\\", "/").rsplit("/", 1)[-1])


def _measurements_dict(m: Measurements | None) -> dict | None:
    if m is None:
        return None
    out = {}
    for key, value in asdict(m).items():
        if isinstance(value, tuple):
            value = [v.item() if isinstance(v, np.generic) else v for v in value]
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out


__all__ = ["DISCLAIMER", "report_dict", "report_pdf"]
