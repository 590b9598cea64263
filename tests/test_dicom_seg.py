"""DICOM SEG: written with highdicom, read back, referencing its sources, copying no patient field."""

from __future__ import annotations

import io
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
import pytest

from tests.conftest import dicom_bytes, phantom
from tests.test_batch import dicom_series
from tumor.dicom_seg import build_seg, read_header, seg_for_upload, seg_to_bytes
from tumor.errors import InputError

IDENTIFYING = (b"Doe^Jane", b"SECRET-123", b"19700101", b"Secret Hospital")


@dataclass
class StubAnalysis:
    """What seg_for_upload reads of a tumor.pipeline.Analysis: mask(threshold) and model_version."""

    prob_map: np.ndarray
    model_version: str = "9.9.9"
    default_mask_threshold: float = 0.5

    def mask(self, threshold=None):
        return self.prob_map >= (self.default_mask_threshold if threshold is None else threshold)


def _blob(size: int = 32) -> np.ndarray:
    y, x = np.mgrid[:size, :size]
    return np.exp(-((x - 20) ** 2 + (y - 12) ** 2) / 30.0).astype(np.float32)


def test_seg_for_upload_reads_back_as_the_mask_over_the_upload():
    data = dicom_series([phantom(32)])[0]
    analysis = StubAnalysis(_blob())
    seg_bytes = seg_for_upload(data, analysis, threshold=0.3)
    seg = hd.seg.segread(io.BytesIO(seg_bytes))
    source = pydicom.dcmread(io.BytesIO(data))
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert [r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence] == [source.SOPInstanceUID]
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    mask = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1], combine_segments=True)
    assert np.array_equal(mask[0].astype(bool), analysis.mask(0.3))
    assert not np.array_equal(analysis.mask(0.3), analysis.mask())  # the threshold was the one asked for
    segment = seg.SegmentSequence[0]
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentAlgorithmName == "brain-tumour MRI demo cascade"
    assert "9.9.9" in seg.SeriesDescription and seg.ContentQualification == "RESEARCH"
    assert seg.ContentDescription.endswith("model 9.9.9, mask at p>=0.3")


def test_seg_copies_no_patient_identifying_field():
    data = dicom_series([phantom(32)])[0]
    seg_bytes = seg_for_upload(data, StubAnalysis(_blob()))
    for value in IDENTIFYING:
        assert value in data and value not in seg_bytes
    seg = pydicom.dcmread(io.BytesIO(seg_bytes))
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyDate"):
        assert key in seg and seg.get(key) in ("", None)
    assert "InstitutionName" not in seg
    # The only contributing equipment is highdicom itself, never the source's scanner.
    assert [e.Manufacturer for e in seg.ContributingEquipmentSequence] == ["Highdicom open-source contributors"]


def test_series_seg_references_every_instance_and_keeps_positive_frames():
    series = dicom_series([phantom(32), phantom(32) // 2, phantom(32) // 3])
    headers = [read_header(d) for d in series]
    masks = np.zeros((3, 32, 32), bool)
    masks[0, 5:9, 5:9] = True
    masks[2, 20:30, 1:4] = True
    seg = hd.seg.segread(io.BytesIO(seg_to_bytes(build_seg(headers, masks, model_version="1.0"))))
    uids = [h.SOPInstanceUID for h in headers]
    referenced = [r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert sorted(referenced) == sorted(uids)
    assert seg.NumberOfFrames == 2  # the empty middle slice is left out
    back = seg.get_pixels_by_source_instance(uids, segment_numbers=[1], combine_segments=True)
    assert np.array_equal(back.astype(bool), masks)


@pytest.mark.parametrize(
    "data, mask, match",
    [
        (dicom_series([phantom(32)])[0], np.zeros((32, 32)), "mask is empty"),
        (dicom_bytes(phantom(32)), _blob(), "lacks StudyInstanceUID, SeriesInstanceUID, FrameOfReferenceUID"),
        (dicom_series([phantom(32)])[0], _blob(16), "do not match"),
        (b"not a dicom file at all", _blob(), "could not be read"),
    ],
    ids=["empty mask", "no geometry", "other size", "not DICOM"],
)
def test_seg_for_upload_refuses_with_a_clear_message(data, mask, match):
    with pytest.raises(InputError, match=match):
        seg_for_upload(data, StubAnalysis(mask))


def test_seg_for_upload_checks_the_frame():
    with pytest.raises(InputError, match="out of range"):
        seg_for_upload(dicom_series([phantom(32)])[0], StubAnalysis(_blob()), frame=1)
