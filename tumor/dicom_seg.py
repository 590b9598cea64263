"""DICOM Segmentation objects of the tumour mask, written with highdicom.

A SEG references its source instances by UID, so 3D Slicer or OHIF draws it over
the scan it came from. It copies only what the SEG standard needs to reference
and place the mask on its source: the Study, Series, SOP Instance and Frame of
Reference UIDs and the image geometry. The Patient module's Type 2 fields
(name, ID, birth date, sex) and the study's accession number, ID, date, time and
referring physician are present but empty, as the standard allows; nothing else
from the source header (institution, device, other patient fields) is copied.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from tumor.errors import InputError

# What a SEG copies from each source header: UIDs to reference it and the
# geometry to place the mask on it. Nothing here identifies the patient.
REFERENCE_KEYS: tuple[str, ...] = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "Modality",
    "SpecificCharacterSet",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "PixelSpacing",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "SliceThickness",
    "SpacingBetweenSlices",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
)
# Type 2 fields of the Patient and General Study modules: present, left empty.
EMPTY_KEYS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
# What a SEG cannot do without: the references, then the geometry of a single-frame
# source (a multi-frame one keeps its geometry in its functional groups).
PLACEMENT_KEYS: tuple[str, ...] = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
)
ALGORITHM_NAME = "brain-tumour MRI demo cascade"
MANUFACTURER = "brain-tumour MRI demo (research, not for diagnosis)"
SEG_SERIES_NUMBER = 9900  # high, so that viewers list it after the scan's own series


def reference_header(ds: Dataset) -> Dataset:
    """A copy of a source header holding only what a SEG needs to reference it.

    Args:
        ds: a DICOM image header (pixel data not needed).

    Returns:
        A new dataset with ``REFERENCE_KEYS`` copied and ``EMPTY_KEYS`` empty.
    """
    out = Dataset()
    for key in REFERENCE_KEYS:
        if key in ds:
            out[key] = ds[key]
    for key in EMPTY_KEYS:
        setattr(out, key, None)
    return out


def build_seg(
    sources: Sequence[Dataset],
    masks: np.ndarray,
    *,
    model_version: str,
    mask_threshold: float | None = None,
    series_number: int = SEG_SERIES_NUMBER,
) -> Dataset:
    """A binary DICOM SEG of the tumour mask over its source instances.

    Args:
        sources: the source headers, either single-frame instances of one
            series in slice order, or exactly one multi-frame instance.
        masks: bool (N, Rows, Columns), one mask per source instance (or per
            frame of the one multi-frame source); empty frames are left out.
        model_version: the model version the segment is labelled with.
        mask_threshold: the probability threshold the masks were cut at,
            recorded in the content description when given.
        series_number: the SEG's series number.

    Returns:
        The SEG as a ``highdicom.seg.Segmentation`` (a pydicom ``Dataset``).

    Raises:
        InputError: the sources cannot carry a SEG (no Frame of Reference, no
            geometry, mixed sizes), or the masks do not match them.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    masks = np.asarray(masks, dtype=bool)
    headers = [reference_header(ds) for ds in sources]
    if masks.ndim != 3 or not headers:
        raise InputError(f"A SEG needs masks of shape (N, rows, columns) and a source. Received: shape={masks.shape}.")
    n_frames = int(headers[0].get("NumberOfFrames", 1) or 1) if len(headers) == 1 else len(headers)
    rows, cols = int(headers[0].get("Rows", 0)), int(headers[0].get("Columns", 0))
    if masks.shape != (n_frames, rows, cols):
        raise InputError(
            f"The masks do not match the DICOM source: masks {masks.shape}, source {n_frames} frame(s) "
            f"of {rows}x{cols} pixels."
        )
    if not masks.any():
        raise InputError("The mask is empty: there is no tumour segmentation to export.")
    needed = PLACEMENT_KEYS if len(headers) > 1 or n_frames == 1 else PLACEMENT_KEYS[:5]
    missing = [key for key in needed if any(key not in h for h in headers)]
    if missing:
        raise InputError(
            f"This DICOM cannot carry a SEG: it lacks {', '.join(missing)}, which a SEG needs to reference the "
            "scan and place the mask on it."
        )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Tumour (automatic)",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=ALGORITHM_NAME, version=model_version, family=codes.cid7162.ArtificialIntelligence
        ),
    )
    try:
        return hd.seg.Segmentation(
            source_images=headers,
            pixel_array=masks,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[segment],
            series_instance_uid=hd.UID(),
            series_number=series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=ALGORITHM_NAME,
            software_versions=model_version,
            device_serial_number="none",
            # LO values: at most 64 characters.
            series_description=f"Automatic tumour segmentation, model {model_version}"[:64],
            content_label="TUMOUR",
            content_description=_content_description(model_version, mask_threshold),
            content_qualification=hd.ContentQualificationValues.RESEARCH,
        )
    except (ValueError, TypeError, AttributeError, KeyError) as err:
        # highdicom names the missing or inconsistent attribute, never its value.
        raise InputError(f"A DICOM SEG cannot be made for this series: {err}") from err


def _content_description(model_version: str, mask_threshold: float | None) -> str:
    text = f"Research demo, not for diagnosis; model {model_version}"
    if mask_threshold is not None:
        text += f", mask at p>={mask_threshold:g}"
    return text[:64]  # an LO value


def seg_to_bytes(seg: Dataset) -> bytes:
    """The SEG as the bytes of a DICOM Part 10 file."""
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def read_header(data: bytes) -> Dataset:
    """The header of a DICOM file's bytes, without its pixel data.

    Raises:
        InputError: the bytes are not a readable DICOM file.
    """
    try:
        with warnings.catch_warnings():
            # pydicom's warnings can echo header values; nothing from an upload is logged.
            warnings.simplefilter("ignore")
            return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as err:
        raise InputError("The DICOM file could not be read: it is corrupt or truncated. Export it again.") from err


def seg_for_upload(dicom_bytes: bytes, analysis, *, frame: int = 0, threshold: float | None = None) -> bytes:
    """The DICOM SEG download for one analysed DICOM upload.

    Args:
        dicom_bytes: the uploaded DICOM file.
        analysis: the ``tumor.pipeline.Analysis`` of ``frame`` of that file.
        frame: the analysed frame (0 for a single-frame file).
        threshold: the mask threshold (default: the shipped one).

    Returns:
        The bytes of a DICOM Part 10 SEG file referencing the upload.

    Raises:
        InputError: the mask is empty at ``threshold``, or the file cannot
            carry a SEG (no Frame of Reference or geometry, mask of another
            size than the DICOM grid).
    """
    ds = read_header(dicom_bytes)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 0 <= frame < n_frames:
        raise InputError(f"Frame {frame!r} is out of range: this DICOM has {n_frames} frame(s).")
    mask = np.asarray(analysis.mask(threshold), dtype=bool)
    masks = np.zeros((n_frames, *mask.shape), dtype=bool)
    masks[frame] = mask
    used = analysis.default_mask_threshold if threshold is None else float(threshold)
    return seg_to_bytes(build_seg([ds], masks, model_version=analysis.model_version, mask_threshold=used))


__all__ = ["build_seg", "read_header", "reference_header", "seg_for_upload", "seg_to_bytes"]
