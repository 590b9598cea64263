"""Shared fixtures: sample files and a tiny stand-in pipeline for UI tests.

The stand-in follows the ``tumor.pipeline`` API with a fixed blob as its
"probability map", so the pages can be tested fast and without weights. Tests
against the real models live beside them and skip when weights are missing.

The compiled networks (``tumor.runtime``) of the real weights are built once
into ``runs/test-cache`` (ignored by git) and reused by every later session,
the browser tests' servers included, unless ``TUMOR_CACHE_DIR`` names another
folder.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tumor.measure import brain_mask, measure
from tumor.overlay import draw_mask
from tumor.report import report_dict, report_pdf

ROOT = Path(__file__).resolve().parents[1]

try:  # Hypothesis comes with requirements-dev.txt
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover
    settings = None
if settings is not None:
    # ci (the default): a fixed, bounded set of examples that fits the suite's budget.
    # long: `pytest tests/test_fuzz.py --hypothesis-profile=long` for a local hunt.
    _quiet_checks = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
    settings.register_profile(
        "ci", max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=_quiet_checks
    )
    settings.register_profile(
        "long", max_examples=2000, deadline=None, database=None, suppress_health_check=_quiet_checks
    )
    settings.load_profile("ci")
HAS_WEIGHTS = (ROOT / "weights" / "manifest.json").is_file()
HAS_GALLERY = (ROOT / "gallery" / "index.csv").is_file()
os.environ.setdefault("TUMOR_CACHE_DIR", str(ROOT / "runs" / "test-cache"))


def phantom(size: int = 128) -> np.ndarray:
    """A bright disc (head) with a brighter blob (lesion) right of centre."""
    y, x = np.mgrid[:size, :size]
    c = size / 2
    img = np.where((x - c) ** 2 + (y - c) ** 2 < (0.4 * size) ** 2, 90.0, 0.0)
    img += 120.0 * np.exp(-((x - 0.62 * size) ** 2 + (y - c) ** 2) / (2 * (0.08 * size) ** 2))
    return np.clip(img, 0, 255).astype(np.uint8)


def png_bytes(gray: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG")
    return buffer.getvalue()


def dicom_bytes(gray: np.ndarray, spacing: float = 0.5, frames: int = 1) -> bytes:
    """A minimal MR DICOM with PixelSpacing and an identifying name."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET-123"
    ds.Rows, ds.Columns = gray.shape
    ds.PixelSpacing = [spacing, spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    pixels = np.stack([gray.astype(np.uint16) * (4 + i) for i in range(frames)])
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def nifti_bytes(n: int = 8, size: int = 64) -> bytes:
    import nibabel

    vol = np.stack([phantom(size).astype(np.float32)] * n, axis=2)
    return nibabel.Nifti1Image(vol, np.diag([1.0, 1.0, 2.0, 1.0])).to_bytes()


@dataclass(frozen=True, eq=False)
class FakeAnalysis:
    """Follows tumor.pipeline.Analysis; the map is the phantom's brightness."""

    image: np.ndarray
    prob_map: np.ndarray | None
    pixel_spacing_mm: tuple[float, float] | None
    orientation: tuple[str, str] | None
    probabilities: dict = field(
        default_factory=lambda: {
            "no_tumor": 0.05,
            "glioma": 0.8,
            "meningioma": 0.1,
            "pituitary": 0.05,
        }
    )
    p_tumor: float = 0.95
    tumor_detected: bool = True
    predicted_class: str = "glioma"
    tumor_type: str | None = "glioma"
    behaviour: str = "Gliomas are usually malignant."
    model_version: str = "fake-0"
    weights_sha256: dict = field(default_factory=lambda: {"fake.weights.h5": "ab" * 32})
    segmenter_route: str | None = None
    outline_requested: bool = False
    detection: str = "classifier"

    def mask(self, threshold: float | None = None) -> np.ndarray:
        if self.prob_map is None:
            return np.zeros(self.image.shape[:2], dtype=bool)
        return self.prob_map >= (0.5 if threshold is None else threshold)

    def measurements(self, threshold: float | None = None):
        return measure(
            self.mask(threshold),
            spacing_mm=self.pixel_spacing_mm,
            orientation=self.orientation,
            brain=brain_mask(self.image),
        )

    def overlay(self, threshold=None, *, mode="contour", opacity=0.4) -> np.ndarray:
        return draw_mask(self.image, self.mask(threshold), mode=mode, opacity=opacity)

    def report(self, threshold=None, *, source_name=None, scan_meta=None) -> dict:
        from datetime import datetime

        return report_dict(
            probabilities=self.probabilities,
            p_tumor=self.p_tumor,
            predicted=self.predicted_class,
            behaviour=self.behaviour,
            threshold=0.5 if threshold is None else threshold,
            measurements=self.measurements(threshold),
            model_version=self.model_version,
            weights_sha256=self.weights_sha256,
            scan_meta=scan_meta or {},
            source_name=source_name,
            created=datetime(2026, 1, 1, tzinfo=UTC),
            outline_requested=self.outline_requested,
        )

    def pdf(self, threshold=None, *, source_name=None, scan_meta=None) -> bytes:
        report = self.report(threshold, source_name=source_name, scan_meta=scan_meta)
        return report_pdf(report, self.overlay(threshold))


@dataclass
class FakeVolumeAnalysis:
    p_tumor: list
    tumor_area_px: list
    largest_slice: int
    tumor_volume_ml: float


class FakePipeline:
    """Counts model runs so tests can prove the controls never re-run one.

    Follows ``tumor.pipeline.Pipeline``: one frozen ``Settings``, read through
    the same properties, and the same entry points.
    """

    def __init__(self) -> None:
        from tumor.pipeline import Settings

        self.runs = 0
        self.negative = False  # True: every slice reads as tumour-free (the segmenter does not run)
        self.settings = Settings(tumor_threshold=0.5, mask_threshold=0.5, version="fake-0")
        self.classifiers, self.segmenters = (), ()
        self.weights_sha256 = {"fake.weights.h5": "ab" * 32}
        self.metrics = {"n_slices": 10, "detection": {"auc": 0.99}}

    @property
    def version(self) -> str:
        return self.settings.version

    @property
    def tumor_threshold(self) -> float:
        return self.settings.tumor_threshold

    @property
    def mask_threshold(self) -> float:
        return self.settings.mask_threshold

    @property
    def min_component_fraction(self) -> float:
        return self.settings.min_component_fraction

    def analyze(self, scan, *, spacing_mm=None, orientation=None) -> FakeAnalysis:
        rgb = np.asarray(getattr(scan, "rgb", scan))
        if min(rgb.shape[:2]) < 8:  # as tumor.pipeline does
            raise ValueError(f"Expected a slice at least 8x8. Received: shape={rgb.shape}")
        self.runs += 1
        gray = rgb[..., 0].astype(np.float32) / 255.0
        if self.negative:
            return FakeAnalysis(
                image=rgb,
                prob_map=None,
                probabilities={"no_tumor": 0.9, "glioma": 0.05, "meningioma": 0.03, "pituitary": 0.02},
                p_tumor=0.1,
                tumor_detected=False,
                predicted_class="no_tumor",
                tumor_type=None,
                behaviour="No tumour detected on this slice.",
                pixel_spacing_mm=spacing_mm or getattr(scan, "pixel_spacing_mm", None),
                orientation=orientation or getattr(scan, "orientation", None),
            )
        return FakeAnalysis(
            image=rgb,
            prob_map=gray,
            pixel_spacing_mm=spacing_mm or getattr(scan, "pixel_spacing_mm", None),
            orientation=orientation or getattr(scan, "orientation", None),
        )

    def outline_on_request(self, analysis):
        import dataclasses

        if analysis.prob_map is not None:
            return analysis
        self.runs += 1
        gray = np.asarray(analysis.image)[..., 0].astype(np.float32) / 255.0
        return dataclasses.replace(analysis, prob_map=gray, outline_requested=True)

    def analyze_batch(self, images) -> list[FakeAnalysis]:
        return [self.analyze(image) for image in images]

    def grad_cam(self, analysis) -> np.ndarray:
        self.runs += 1
        return analysis.prob_map.astype(np.float32)

    def analyze_volume(self, volume, plane="axial", progress=None) -> FakeVolumeAnalysis:
        n = volume.n_slices(plane)
        for i in range(n):
            if progress:
                progress(i + 1, n)
        return FakeVolumeAnalysis([0.9] * n, [100] * n, n // 2, 1.5)


@pytest.fixture
def fake_pipeline(monkeypatch):
    """Makes every page use a fresh FakePipeline, with empty caches."""
    import streamlit as st

    from ui import common as ui_common

    fake = FakePipeline()
    monkeypatch.setattr(ui_common, "_load_pipeline", lambda path: fake)
    st.cache_data.clear()
    st.cache_resource.clear()
    yield fake
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def tiny_gallery(tmp_path, monkeypatch) -> Path:
    """A two-case gallery (tumour with mask, and healthy) in a temp folder."""
    folder = tmp_path / "gallery"
    folder.mkdir()
    img = phantom()
    (folder / "t1.png").write_bytes(png_bytes(img))
    (folder / "t1_mask.png").write_bytes(png_bytes(((img > 150) * 255).astype(np.uint8)))
    (folder / "h1.png").write_bytes(png_bytes(img // 2))
    (folder / "index.csv").write_text(
        "id,image,mask,label,source,pixel_spacing_mm,license,credit\n"
        "t1,t1.png,t1_mask.png,glioma,lgg,,CC BY-NC-SA 4.0,Buda et al. 2019\n"
        "h1,h1.png,,no_tumor,kaggle,,unknown,unverified\n"
    )
    monkeypatch.setenv("TUMOR_GALLERY_DIR", str(folder))
    return folder
