"""Tests for tumor.report: the JSON dict and the PDF."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from tumor.io import read_scan
from tumor.measure import measure
from tumor.report import DISCLAIMER, report_dict, report_pdf

PHI = {
    "PatientName": "Doe^Jane",
    "PatientID": "PHI-12345",
    "PatientBirthDate": "19700101",
    "AccessionNumber": "ACC-998877",
    "InstitutionName": "St Example Hospital",
}


def _dicom_with_phi() -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    ds.Modality = "MR"
    ds.SeriesDescription = "T2 AX"
    ds.Rows, ds.Columns = 32, 32
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.5, 0.5]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelData = np.tile(np.arange(32, dtype=np.uint16) * 30, (32, 1)).tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _report(**overrides) -> dict:
    scan = read_scan(_dicom_with_phi())
    mask = np.zeros((32, 32), bool)
    mask[2:10, 18:26] = True
    args = {
        "probabilities": {
            "no_tumor": 0.1,
            "glioma": 0.7,
            "meningioma": 0.15,
            "pituitary": 0.05,
        },
        "p_tumor": 0.9,
        "predicted": "glioma",
        "behaviour": "Gliomas grow from glial cells \u2014 often infiltrative.",
        "threshold": 0.5,
        "measurements": measure(mask, spacing_mm=scan.pixel_spacing_mm, orientation=scan.orientation),
        "model_version": "1.2.0",
        "weights_sha256": {"classifier": "ab" * 32, "segmenter": "cd" * 32},
        # A caller passing raw header fields must not leak them.
        "scan_meta": {**scan.meta, **PHI, "patient_name": "Doe^Jane"},
        "source_name": "/uploads/slice_007.dcm",
        "created": datetime(2026, 3, 4, 12, 30, tzinfo=timezone(timedelta(hours=2))),
    }
    args.update(overrides)
    return report_dict(**args)


def _overlay() -> np.ndarray:
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :, 0] = 120
    return rgb


def test_report_dict_contents():
    report = _report()
    assert set(report) == {
        "title",
        "disclaimer",
        "created_utc",
        "source_name",
        "prediction",
        "measurements",
        "model",
        "scan",
    }
    assert report["disclaimer"] == "Research demo, not for diagnosis."
    assert report["created_utc"] == "2026-03-04T10:30:00+00:00"
    assert report["source_name"] == "slice_007.dcm"
    assert report["prediction"]["predicted"] == "glioma"
    assert report["prediction"]["probabilities"]["glioma"] == 0.7
    assert report["measurements"]["area_px"] == 64
    assert report["measurements"]["area_mm2"] == pytest.approx(16.0)
    assert report["measurements"]["bbox"] == [18, 2, 8, 8]
    assert report["measurements"]["position"] == "patient's left, anterior"
    assert report["scan"]["modality"] == "MR"
    assert report["model"]["version"] == "1.2.0"


def test_report_dict_is_json_serialisable():
    report = _report()
    assert json.loads(json.dumps(report, allow_nan=False)) == report


def test_naive_datetime_is_taken_as_utc():
    report = _report(created=datetime(2026, 1, 2, 3, 4, 5))
    assert report["created_utc"] == "2026-01-02T03:04:05+00:00"
    assert _report(created=datetime(2026, 1, 2, tzinfo=UTC))["created_utc"].endswith("+00:00")


def test_report_without_measurements():
    report = _report(measurements=None, source_name=None)
    assert report["measurements"] is None
    pdf = report_pdf(report, _overlay(), compress=False)
    assert b"Tumour outline" in pdf


def test_phi_never_in_report_json_or_pdf():
    report = _report()
    text = json.dumps(report)
    raw_pdf = report_pdf(report, _overlay(), compress=False)
    for value in PHI.values():
        for needle in (value, value.split("^")[0]):
            assert needle not in text
            assert needle.encode("latin-1") not in raw_pdf
    assert not set(report["scan"]) & {"PatientName", "patient_name", *PHI}


def test_pdf_contents():
    raw = report_pdf(_report(), _overlay(), compress=False)
    assert raw.startswith(b"%PDF")
    for needle in (
        DISCLAIMER,
        "Brain tumour MRI analysis",
        "glioma",
        "70.0 %",
        "0.50",
        "16.0 mm2",
        "1.2.0",
        "sha256 abababababab",
        "2026-03-04T10:30:00+00:00",
        "glial cells - often",  # em dash made latin-1 safe
    ):
        assert needle.encode("latin-1") in raw, needle
    assert b"/Subtype /Image" in raw
    assert "\u2014".encode() not in raw


def test_pdf_without_spacing_shows_pixels_only():
    mask = np.zeros((32, 32), bool)
    mask[0:4, 0:4] = True
    report = _report(measurements=measure(mask))
    raw = report_pdf(report, _overlay(), compress=False)
    assert b"16 px" in raw
    assert b"mm2" not in raw
    assert b"pixel spacing unknown" in raw


def test_compressed_pdf_is_smaller_and_valid():
    report = _report()
    compressed = report_pdf(report, _overlay())
    assert compressed.startswith(b"%PDF")
    assert DISCLAIMER.encode() not in compressed
    assert len(compressed) < len(report_pdf(report, _overlay(), compress=False))


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"p_tumor": 1.5}, ValueError, "p_tumor.*1.5"),
        ({"threshold": float("nan")}, ValueError, "threshold"),
        ({"probabilities": {"glioma": -0.1}}, ValueError, "glioma.*-0.1"),
        ({"created": "2026-01-01"}, TypeError, "2026-01-01"),
    ],
)
def test_report_dict_rejects(overrides, error, message):
    with pytest.raises(error, match=message):
        _report(**overrides)


def test_report_pdf_rejects_bad_image():
    with pytest.raises(ValueError, match=r"shape=\(32, 48\)"):
        report_pdf(_report(), np.zeros((32, 48), np.uint8))
