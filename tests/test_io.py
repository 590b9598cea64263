"""Tests for tumor.io: images, DICOM and NIfTI read from memory."""

from __future__ import annotations

import gzip
import io
import itertools
import logging
import os
import re
import struct
import warnings
import zlib
from pathlib import Path

import cv2
import nibabel
import numpy as np
import pydicom
import pytest
from conftest import dicom_bytes
from PIL import Image
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from tumor.errors import InputError
from tumor.io import SAFE_META_KEYS, Scan, read_image, read_scan, read_volume

PHI_VALUES = ("Doe^Jane", "PHI-12345", "19700101", "ACC-998877", "St Example Hospital")


# --- fixtures built in memory -------------------------------------------------


def _gradient(h: int = 48, w: int = 64) -> np.ndarray:
    """A fixed RGB test pattern with distinct channels."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) % 256], axis=2).astype(np.uint8)


def _pil_bytes(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _gray16() -> np.ndarray:
    # A 16-bit ramp from 1000 to 5000: shifted >> 8 it would be dark (3..19).
    return np.tile(np.linspace(1000, 5000, 64), (48, 1)).astype(np.uint16)


def _png16_gray() -> bytes:
    ok, buf = cv2.imencode(".png", _gray16())
    assert ok
    return buf.tobytes()


def _tiff16_gray() -> bytes:
    return _pil_bytes(Image.fromarray(_gray16()), "TIFF")


def _png16_rgb() -> bytes:
    bgr = np.repeat(_gray16()[:, :, None], 3, axis=2)
    ok, buf = cv2.imencode(".png", bgr)
    assert ok
    return buf.tobytes()


def _rgba_png() -> bytes:
    rgba = np.dstack([_gradient(), np.full((48, 64), 255, np.uint8)])
    rgba[:, :32, 3] = 0  # left half fully transparent
    return _pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG")


FORMATS = {
    "png_gray8": lambda: _pil_bytes(Image.fromarray(_gradient()[:, :, 0]), "PNG"),
    "png_rgb8": lambda: _pil_bytes(Image.fromarray(_gradient()), "PNG"),
    "png_rgba8": _rgba_png,
    "png_palette": lambda: _pil_bytes(Image.fromarray(_gradient()).convert("P"), "PNG"),
    "png_gray16": _png16_gray,
    "png_rgb16": _png16_rgb,
    "tiff_gray16": _tiff16_gray,
    "tiff_rgb8": lambda: _pil_bytes(Image.fromarray(_gradient()), "TIFF"),
    "jpeg_rgb": lambda: _pil_bytes(Image.fromarray(_gradient()), "JPEG", quality=95),
    "jpeg_cmyk": lambda: _pil_bytes(Image.fromarray(_gradient()).convert("CMYK"), "JPEG"),
    "tiff_cmyk": lambda: _pil_bytes(Image.fromarray(_gradient()).convert("CMYK"), "TIFF"),
    "bmp_rgb": lambda: _pil_bytes(Image.fromarray(_gradient()), "BMP"),
    "webp_rgb": lambda: _pil_bytes(Image.fromarray(_gradient()), "WEBP", lossless=True),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_read_image_accepts_format(fmt):
    rgb = read_image(FORMATS[fmt]())
    assert rgb.shape == (48, 64, 3)
    assert rgb.dtype == np.uint8
    assert rgb.max() > rgb.min()


@pytest.mark.parametrize("fmt", ["png_gray16", "tiff_gray16", "png_rgb16"])
def test_sixteen_bit_uses_full_range(fmt):
    rgb = read_image(FORMATS[fmt]())
    assert rgb.min() == 0
    assert rgb.max() == 255
    # The ramp stays a ramp: brightness increases left to right.
    assert rgb[0, 0, 0] < rgb[0, 32, 0] < rgb[0, 63, 0]


@pytest.mark.parametrize(
    ("fmt", "expected_rgb"),
    [
        ("png_rgb8", (255, 0, 63)),  # lossless formats keep exact values
        ("png_palette", None),
        ("tiff_rgb8", (255, 0, 63)),
        ("bmp_rgb", (255, 0, 63)),
    ],
)
def test_lossless_pixel_values(fmt, expected_rgb):
    rgb = read_image(FORMATS[fmt]())
    if expected_rgb is None:  # palette quantises: only near the original
        assert np.abs(rgb[0, 63].astype(int) - [255, 0, 63]).max() <= 40
    else:
        assert tuple(rgb[0, 63]) == expected_rgb


def test_rgba_transparent_part_composited_over_black():
    rgb = read_image(_rgba_png())
    assert rgb[:, :32].max() == 0
    np.testing.assert_array_equal(rgb[:, 32:], _gradient()[:, 32:])


def test_cmyk_jpeg_colours_are_roughly_kept():
    rgb = read_image(FORMATS["jpeg_cmyk"]())
    expected = _gradient().astype(int)
    assert np.abs(rgb.astype(int) - expected).mean() < 12


def test_read_image_from_path(tmp_path):
    path = tmp_path / "slice.png"
    path.write_bytes(FORMATS["png_rgb8"]())
    np.testing.assert_array_equal(read_image(path), _gradient())
    np.testing.assert_array_equal(read_image(str(path)), _gradient())


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def png_chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        return struct.pack(">I", len(body)) + kind + body + crc

    # A tiny file whose header declares a huge image: a decompression bomb.
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def _pdf_bytes() -> bytes:
    return b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< >>\n%%EOF\n"


FAILURES = {
    "empty": (lambda: b"", "empty"),
    "truncated_png": (lambda: FORMATS["png_rgb8"]()[:120], "corrupt or truncated"),
    "truncated_jpeg": (lambda: FORMATS["jpeg_rgb"]()[:300], "corrupt or truncated"),
    "text": (lambda: b"hello, this is a text file\n" * 10, "not an image"),
    "random_bytes": (lambda: bytes(range(256)) * 4, "not an image"),
    "pdf": (_pdf_bytes, "PDF"),
    "all_black": (lambda: _pil_bytes(Image.new("RGB", (32, 32)), "PNG"), "blank"),
    # Brightest pixel 2 of 255, as the navoneel_no slices of the training data are.
    "near_black": (
        lambda: _pil_bytes(Image.fromarray((_gradient() // 100).astype(np.uint8)), "PNG"),
        "almost entirely black: its brightest pixel is 2 of 255",
    ),
    "all_gray16": (
        lambda: _pil_bytes(Image.fromarray(np.full((32, 32), 700, np.uint16)), "TIFF"),
        "blank",
    ),
    "tiny": (
        lambda: _pil_bytes(Image.fromarray(np.arange(48, dtype=np.uint8).reshape(6, 8)), "PNG"),
        "too small",
    ),
    "huge_dimensions": (lambda: _png_header_only(60000, 60000), "too large"),
    "too_many_bytes": (lambda: b"\x89PNG" + bytes(41 * 1024 * 1024), "too large"),
    "huge_bmp_header": (lambda: _huge_bmp(), "too large"),
}


def _huge_bmp() -> bytes:
    """A small BMP whose header claims 20000 x 20000 pixels."""
    data = bytearray(_pil_bytes(Image.fromarray(_gradient()), "BMP"))
    data[18:26] = struct.pack("<ii", 20000, 20000)
    return bytes(data)


def test_oversized_file_on_disk_refused_before_reading(tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as f:
        f.truncate(41 * 1024 * 1024)  # sparse: costs no disk
    with pytest.raises(InputError, match=r"too large \(41\.0 MB"):
        read_image(path)


def test_missing_file_is_input_error(tmp_path):
    with pytest.raises(InputError, match=r"missing\.png"):
        read_image(tmp_path / "missing.png")


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_read_image_rejects(case):
    make, message = FAILURES[case]
    with pytest.raises(InputError, match=message):
        read_image(make())


def test_input_error_is_value_error():
    with pytest.raises(ValueError):
        read_image(b"")


def test_read_scan_plain_image_is_read_only():
    scan = read_scan(FORMATS["png_rgb8"](), name="slice.png")
    assert scan.kind == "image"
    assert scan.pixel_spacing_mm is None
    assert scan.orientation is None
    assert not scan.rgb.flags.writeable
    np.testing.assert_array_equal(scan.rgb, _gradient())


# --- DICOM --------------------------------------------------------------------


def _dicom(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    spacing: tuple[float, float] | None = (0.5, 0.8),
    iop: tuple[float, ...] | None = (1, 0, 0, 0, 1, 0),
    with_pixels: bool = True,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = PHI_VALUES[0]
    ds.PatientID = PHI_VALUES[1]
    ds.PatientBirthDate = PHI_VALUES[2]
    ds.AccessionNumber = PHI_VALUES[3]
    ds.InstitutionName = PHI_VALUES[4]
    ds.Modality = "MR"
    ds.SeriesDescription = "T1 AX POST"
    ds.SliceThickness = "5"
    frames = pixels if pixels.ndim == 3 else pixels[None]
    ds.Rows, ds.Columns = frames.shape[1:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = frames.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept or 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    if iop is not None:
        ds.ImageOrientationPatient = list(iop)
    if with_pixels and transfer_syntax == ExplicitVRLittleEndian:
        ds.PixelData = frames.astype(np.uint16).tobytes()
    elif with_pixels:
        ds.PixelData = encapsulate([b"\x00\x01" * 16])
        ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _ramp16(h: int = 16, w: int = 20, lo: int = 0, hi: int = 1000) -> np.ndarray:
    return np.tile(np.linspace(lo, hi, w), (h, 1)).astype(np.uint16)


def test_dicom_detected_by_preamble_not_name():
    scan = read_scan(_dicom(_ramp16()), name="photo.png")
    assert scan.kind == "dicom"
    assert scan.rgb.shape == (16, 20, 3)
    assert scan.rgb.dtype == np.uint8


def test_monochrome1_is_inverted():
    m2 = read_scan(_dicom(_ramp16(), photometric="MONOCHROME2")).rgb
    m1 = read_scan(_dicom(_ramp16(), photometric="MONOCHROME1")).rgb
    assert m2[0, 0, 0] < m2[0, -1, 0]
    np.testing.assert_array_equal(m1, 255 - m2)


def test_rescale_and_header_window():
    # Stored 0..1000 with slope 2, intercept -1000 -> -1000..1000.
    # Window center 0 width 1000 shows -500..500: the outer quarters clip.
    scan = read_scan(_dicom(_ramp16(), slope=2, intercept=-1000, window=(0, 1000)))
    row = scan.rgb[0, :, 0]
    assert scan.window == (0.0, 1000.0)
    assert row[0] == 0 and row[3] == 0  # -1000, -684 are below -500
    assert row[-1] == 255 and row[-4] == 255
    assert 138 <= row[10] <= 143  # stored 526 -> +52 -> 552/1000 of 255
    assert scan.meta["window"] == "center 0, width 1000"


def test_multi_valued_header_window_uses_first():
    scan = read_scan(_dicom(_ramp16(), window=([500, 40], [1000, 80])))
    assert scan.window == (500.0, 1000.0)


def test_window_argument_overrides_header():
    data = _dicom(_ramp16(), window=(500, 1000))
    header = read_scan(data)
    override = read_scan(data, window=(250.0, 100.0))
    assert header.window == (500.0, 1000.0)
    assert override.window == (250.0, 100.0)
    assert override.rgb[0, 3, 0] == 0  # 157.9 < 200
    assert override.rgb[0, 8, 0] == 255  # 421 > 300


def test_percentile_window_without_header():
    scan = read_scan(_dicom(_ramp16(lo=3000, hi=4000)))
    center, width = scan.window
    assert 3000 <= center - width / 2 < 3100
    assert 3900 < center + width / 2 <= 4000
    assert scan.rgb.min() == 0 and scan.rgb.max() == 255


@pytest.mark.parametrize("window", [(0, 0), (10, -5), (float("nan"), 10), ("a", 1)])
def test_bad_window_argument(window):
    with pytest.raises(InputError, match="window"):
        read_scan(_dicom(_ramp16()), window=window)


def test_multiframe_choice_and_range():
    frames = np.stack([_ramp16(), _ramp16()[:, ::-1], _ramp16()])
    data = _dicom(frames, window=(500, 1000))
    first = read_scan(data)
    second = read_scan(data, frame=1)
    assert first.n_frames == second.n_frames == 3
    np.testing.assert_array_equal(second.rgb, first.rgb[:, ::-1])
    assert second.meta["frame"] == "2 of 3"
    for bad in (3, -1):
        with pytest.raises(InputError, match=f"Frame {bad} is out of range.*3 frame"):
            read_scan(data, frame=bad)


def test_missing_pixel_data():
    with pytest.raises(InputError, match="has no pixel data"):
        read_scan(_dicom(_ramp16(), with_pixels=False))


def test_unsupported_transfer_syntax_is_named():
    data = _dicom(_ramp16(), transfer_syntax="1.2.840.10008.1.2.4.100")  # MPEG2
    with pytest.raises(InputError, match=r"1\.2\.840\.10008\.1\.2\.4\.100"):
        read_scan(data)


def test_truncated_dicom():
    data = _dicom(_ramp16())
    with pytest.raises(InputError):
        read_scan(data[: len(data) - 200])


@pytest.mark.parametrize(
    ("iop", "expected"),
    [
        ((1, 0, 0, 0, 1, 0), ("L", "P")),  # standard axial
        ((-1, 0, 0, 0, -1, 0), ("R", "A")),
        ((1, 0, 0, 0, 0, -1), ("L", "I")),  # coronal
        ((0, 1, 0, 0, 0, -1), ("P", "I")),  # sagittal
        ((0.9, 0.3, 0.1, -0.3, 0.9, 0.2), ("L", "P")),  # oblique: dominant axis
        (None, None),
    ],
)
def test_dicom_orientation(iop, expected):
    assert read_scan(_dicom(_ramp16(), iop=iop)).orientation == expected


@pytest.mark.parametrize(("spacing", "expected"), [((0.5, 0.8), (0.5, 0.8)), (None, None)])
def test_dicom_spacing(spacing, expected):
    assert read_scan(_dicom(_ramp16(), spacing=spacing)).pixel_spacing_mm == expected


def test_dicom_meta_has_display_fields_and_no_phi():
    scan = read_scan(_dicom(_ramp16(), window=(500, 1000)))
    assert scan.meta["modality"] == "MR"
    assert scan.meta["series_description"] == "T1 AX POST"
    assert scan.meta["slice_thickness_mm"] == "5"
    assert scan.meta["photometric_interpretation"] == "MONOCHROME2"
    assert set(scan.meta) <= set(SAFE_META_KEYS)
    text = repr(scan) + repr(scan.meta)
    for value in PHI_VALUES:
        assert value not in text
        assert value.split("^")[0] not in text


def test_errors_do_not_echo_phi():
    for data in (
        _dicom(_ramp16(), with_pixels=False),
        _dicom(np.zeros((4, 4), np.uint16)),
    ):
        with pytest.raises(InputError) as info:
            read_scan(data)
        for value in PHI_VALUES:
            assert value not in str(info.value)


# --- NIfTI --------------------------------------------------------------------

SHAPE = (40, 50, 30)
ZOOMS = (0.9, 1.1, 2.0)
LESION = (slice(10, 20), slice(30, 38), slice(12, 16))  # 10 x 8 x 4 voxels, RAS
LESION_WINDOW = (250.0, 100.0)  # brain (100) -> 0, lesion (400) -> 255


def _nifti(affine_flip: bool = False, gz: bool = False, four_d: bool = False) -> bytes:
    data = np.zeros(SHAPE, np.float32)
    data[4:-4, 4:-4, 2:-2] = 100.0  # "brain"
    data[LESION] = 400.0
    affine = np.diag([*ZOOMS, 1.0])
    if affine_flip:  # stored LPS-like: flip x and y, so canonicalisation must undo it
        data = data[::-1, ::-1, :]
        affine = np.diag([-ZOOMS[0], -ZOOMS[1], ZOOMS[2], 1.0])
        affine[:3, 3] = [(SHAPE[0] - 1) * ZOOMS[0], (SHAPE[1] - 1) * ZOOMS[1], 0]
    if four_d:
        data = np.stack([data, np.zeros_like(data)], axis=3)
    img = nibabel.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm")
    raw = img.to_bytes()
    return gzip.compress(raw) if gz else raw


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({}, "brain.nii"),
        ({"gz": True}, "brain.nii.gz"),
        ({"gz": True}, None),  # found by the magic inside the gzip
        ({"affine_flip": True}, None),
    ],
)
def test_volume_lesion_volume_and_area(kwargs, name):
    volume = read_volume(_nifti(**kwargs), name=name)
    assert volume.data.shape == SHAPE
    assert volume.data.dtype == np.float32
    assert volume.spacing_mm == pytest.approx(ZOOMS)
    lesion_voxels = int((volume.data > 300).sum())
    assert lesion_voxels == 10 * 8 * 4
    assert lesion_voxels * volume.voxel_volume_ml == pytest.approx(320 * 0.9 * 1.1 * 2.0 / 1000)
    scan = volume.slice(13, "axial", window=LESION_WINDOW)
    rows, cols = scan.pixel_spacing_mm
    area_mm2 = int((scan.rgb[:, :, 0] == 255).sum()) * rows * cols
    assert area_mm2 == pytest.approx(10 * 8 * 0.9 * 1.1)


def test_axial_slice_is_upright_radiological():
    volume = read_volume(_nifti(affine_flip=True))
    scan = volume.slice(13, "axial", window=LESION_WINDOW)
    # Display is (Y, X): 50 rows, 40 columns.
    assert scan.rgb.shape == (50, 40, 3)
    assert scan.orientation == ("L", "P")
    assert scan.pixel_spacing_mm == pytest.approx((1.1, 0.9))
    ys, xs = np.nonzero(scan.rgb[:, :, 0] == 255)
    # RAS x grows to the patient's right, so the lesion at x 10..19 is on the
    # patient's left -> image right half; y 30..37 (anterior) -> upper half.
    assert xs.min() == 40 - 20 and xs.max() == 40 - 11
    assert ys.min() == 50 - 38 and ys.max() == 50 - 31


@pytest.mark.parametrize(
    ("plane", "index", "shape", "orientation", "spacing"),
    [
        ("coronal", 33, (30, 40), ("L", "I"), (2.0, 0.9)),
        ("sagittal", 15, (30, 50), ("P", "I"), (2.0, 1.1)),
    ],
)
def test_other_planes(plane, index, shape, orientation, spacing):
    volume = read_volume(_nifti())
    scan = volume.slice(index, plane, window=LESION_WINDOW)
    assert scan.rgb.shape[:2] == shape
    assert scan.orientation == orientation
    assert scan.pixel_spacing_mm == pytest.approx(spacing)
    ys, _ = np.nonzero(scan.rgb[:, :, 0] == 255)
    # Lesion z 12..15 -> superior up: rows 30-16 .. 30-13.
    assert ys.min() == 30 - 16 and ys.max() == 30 - 13


def test_volume_window_is_volume_wide():
    volume = read_volume(_nifti())
    empty_slice = volume.slice(0, "axial")  # outside the brain: all zero
    assert empty_slice.rgb.max() == 0
    assert empty_slice.window == volume.default_window


def test_read_scan_nifti_defaults_to_middle_slice():
    scan = read_scan(_nifti(gz=True), name="brain.nii.gz")
    assert scan.kind == "nifti"
    assert scan.n_frames == SHAPE[2]
    assert scan.meta["frame"] == f"{SHAPE[2] // 2 + 1} of {SHAPE[2]}"


def test_four_d_takes_first_volume_with_note():
    volume = read_volume(_nifti(four_d=True))
    assert volume.data.shape == SHAPE
    assert int((volume.data > 300).sum()) == 320
    assert "first" in volume.meta["note"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: _nifti()[:200], "truncated"),
        (lambda: gzip.compress(_nifti())[:100], "truncated"),
        (lambda: FORMATS["png_rgb8"](), "not a NIfTI"),
        (lambda: _dicom(_ramp16()), "DICOM"),
    ],
)
def test_read_volume_rejects(make, message):
    with pytest.raises(InputError, match=message):
        read_volume(make(), name="upload.nii.gz" if message == "truncated" else None)


@pytest.mark.parametrize(("index", "plane"), [(30, "axial"), (-1, "axial"), (0, "oblique")])
def test_slice_out_of_range(index, plane):
    volume = read_volume(_nifti())
    with pytest.raises(InputError, match=str(index) if plane == "axial" else "plane"):
        volume.slice(index, plane)


def test_scan_is_frozen():
    scan = read_scan(FORMATS["png_rgb8"]())
    assert isinstance(scan, Scan)
    with pytest.raises(AttributeError):
        scan.kind = "dicom"  # type: ignore[misc]


def test_a_dark_but_visible_slice_is_accepted():
    dark = (_gradient().astype(np.float32) * 8 / 255).astype(np.uint8)  # brightest pixel 8
    assert read_image(_pil_bytes(Image.fromarray(dark), "PNG")).max() == 8


# --- formats told apart, and shown rightly ------------------------------------


def _bare_dataset(data: bytes) -> bytes:
    """The same DICOM as a bare data set: no preamble, no 'DICM', no file meta."""
    ds = pydicom.dcmread(io.BytesIO(data))
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    write_dataset(fp, ds)
    return fp.getvalue()


def _deflated(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("variant", "marker"),
    [
        (lambda d: d[128:], b"DICM"),  # preamble stripped: starts with the prefix
        (_bare_dataset, b"\x08\x00"),  # no preamble, prefix or file meta at all
        (_deflated, b"DICM"),  # Deflated Explicit VR Little Endian
    ],
)
def test_dicom_variants_read_like_the_original(variant, marker):
    original = _dicom(_ramp16(), window=(500, 1000))
    data = variant(original)
    assert data[:4].startswith(marker) or data[128:132] == marker
    scan = read_scan(data)
    assert scan.kind == "dicom"
    np.testing.assert_array_equal(scan.rgb, read_scan(original).rgb)


def _palette_dicom() -> bytes:
    """Index 0..3 in four column bands; the 16-bit palette maps them to black, red, green, blue."""
    data = pydicom.dcmread(io.BytesIO(_dicom(_ramp16())))
    data.PhotometricInterpretation = "PALETTE COLOR"
    data.BitsAllocated, data.BitsStored, data.HighBit = 8, 8, 7
    data.PixelData = (np.arange(20)[None, :].repeat(16, 0) // 5).astype(np.uint8).tobytes()
    lut = [[0, 65535, 0, 0], [0, 0, 65535, 0], [0, 0, 0, 65535]]  # red, green, blue
    for i, values in enumerate(lut):
        data.add_new(0x00281101 + i, "US", [4, 0, 16])  # descriptor: 4 entries from index 0, 16 bits
        data.add_new(0x00281201 + i, "OW", np.array(values, np.uint16).tobytes())
    buf = io.BytesIO()
    data.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_palette_colour_dicom_goes_through_its_lut():
    scan = read_scan(_palette_dicom())
    assert [tuple(scan.rgb[8, c]) for c in (2, 7, 12, 17)] == [(0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255)]
    assert scan.meta["photometric_interpretation"] == "PALETTE COLOR"
    assert scan.window is None


def _with_header(data: bytes, **fields) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"NumberOfFrames": -3}, r"NumberOfFrames = -3; a frame count must be at least 1"),
        ({"Rows": 3, "Columns": 3}, r"too small to analyse \(3x3 pixels"),
        ({"Rows": 10, "Columns": 10}, r"too small to analyse \(10x10 pixels"),
    ],
)
def test_dicom_header_values_refused_with_the_true_reason(fields, message):
    with pytest.raises(InputError, match=message):
        read_scan(_with_header(_dicom(_ramp16()), **fields))


def test_minc2_is_named_unsupported():
    hdf5 = b"\x89HDF\r\n\x1a\n" + bytes(4096)
    for data, name in ((hdf5, "brain.mnc"), (hdf5, None), (gzip.compress(hdf5), "brain.mnc.gz")):
        with pytest.raises(InputError, match=r"MINC .* not support"):
            read_scan(data, name=name)
        with pytest.raises(InputError, match=r"MINC .* not support"):
            read_volume(data, name=name)


def _nifti_image(data: np.ndarray, affine=None, cls=nibabel.Nifti1Image) -> bytes:
    return cls(data, np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine).to_bytes()


def test_nifti_variants_not_supported_are_named():
    ramp = np.arange(20 * 20 * 4, dtype=np.float32).reshape(20, 20, 4)
    rgb = np.zeros((20, 20, 4), [("R", "u1"), ("G", "u1"), ("B", "u1")])
    cases = [
        (_nifti_image(ramp, cls=nibabel.Nifti2Image), "NIfTI-2 file, which this app does not support"),
        (_nifti_image(rgb), r"RGB colour NIfTI volume \(RGB24\), which this app does not support"),
        (_nifti_image(ramp.astype(np.complex64)), r"complex values \(complex64\)"),
    ]
    for data, message in cases:
        for reader in (read_volume, lambda d: read_scan(d, name="v.nii")):
            with pytest.raises(InputError, match=message) as info:
                reader(data)
            assert "corrupt" not in str(info.value)


def test_nifti_spacing_inconsistent_with_the_affine_comes_from_the_affine():
    img = nibabel.Nifti1Image(np.arange(20 * 20 * 4, dtype=np.float32).reshape(20, 20, 4), np.diag([2.0, 2, 2, 1]))
    img.header["pixdim"][1:4] = 0  # what some converters write
    img.header.set_xyzt_units("mm")
    volume = read_volume(img.to_bytes())
    assert volume.spacing_mm == (2.0, 2.0, 2.0)
    assert "voxel size taken from the sform affine; the header's pixdim (0 x 0 x 0) disagrees" in volume.meta["note"]
    assert read_scan(img.to_bytes(), name="v.nii").pixel_spacing_mm == (2.0, 2.0)


def test_nifti_without_any_voxel_size_assumes_1mm_with_a_note():
    img = nibabel.Nifti1Image(np.arange(20 * 20 * 4, dtype=np.float32).reshape(20, 20, 4), None)
    img.header["pixdim"][1:4] = 0
    img.header["sform_code"] = img.header["qform_code"] = 0
    volume = read_volume(img.to_bytes())
    assert volume.spacing_mm == (1.0, 1.0, 1.0)
    assert "voxel size missing from the header (pixdim 0); assumed 1 mm" in volume.meta["note"]


@pytest.mark.parametrize("kwargs", [{}, {"affine_flip": True}, {"four_d": True}, {"gz": True}])
def test_read_scan_slice_equals_the_volume_slice(kwargs):
    data = _nifti(**kwargs)
    volume = read_volume(data)
    for frame in (None, 0, 13, SHAPE[2] - 1):
        scan = read_scan(data, name="v.nii.gz", frame=frame)
        expected = volume.slice(SHAPE[2] // 2 if frame is None else frame, "axial")
        np.testing.assert_array_equal(scan.rgb, expected.rgb)
        assert scan.window == expected.window == volume.default_window
        assert scan.meta == expected.meta
        assert scan.pixel_spacing_mm == expected.pixel_spacing_mm


def test_gzip_stream_cap_is_enforced_while_reading():
    from tumor.io import _Gunzip

    stream = _Gunzip(gzip.compress(bytes(10_000)), limit=4096)
    assert stream.read(4000) == bytes(4000)
    with pytest.raises(InputError, match="inflates to more than"):
        stream.read(200)


def test_memory_error_becomes_input_error(monkeypatch):
    import tumor.io

    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(tumor.io, "_decode_image", exhausted)
    with pytest.raises(InputError, match="too large to decode in the memory"):
        read_image(FORMATS["png_rgb8"]())


def _dicom_with_phi_in_a_uid() -> bytes:
    """A name typed into the transfer syntax UID, which every reader parses: pydicom warns with it."""
    data = _dicom(_ramp16())
    assert data.count(b"1.2.840.10008.1.2.1\x00") == 1
    return data.replace(b"1.2.840.10008.1.2.1\x00", PHI_VALUES[0].encode().ljust(20))


def test_pydicom_itself_would_echo_the_bad_value():
    # Without the guard, the name reaches the warnings (and the pydicom logger): the test below can fail.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pydicom.dcmread(io.BytesIO(_dicom_with_phi_in_a_uid()))
    assert any(PHI_VALUES[0] in str(w.message) for w in caught)


def test_no_header_value_reaches_stderr_logs_or_warnings(capsys, caplog):
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match="transfer syntax") as info:
            read_scan(_dicom_with_phi_in_a_uid())
        read_scan(_with_header(_dicom(_ramp16()), NumberOfFrames=0))  # pydicom warns about 0 frames
        read_scan(_nifti(gz=True), name="v.nii.gz")
        read_volume(_nifti(gz=True))
    assert PHI_VALUES[0] not in str(info.value)
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "")
    assert [r.getMessage() for r in caplog.records if r.name.split(".")[0] in ("pydicom", "nibabel", "PIL")] == []
    assert [str(w.message) for w in caught] == []
    for value in PHI_VALUES:
        assert value not in caplog.text


# --- the upload budget: each class of hostile input in issue 30 ----------------
#
# Each case is a small file built here in a few lines. All are read in one
# child process, one after another; before each read the kernel's peak-RSS
# mark is reset (/proc/self/clear_refs), so "growth" is how far that one read
# raised the process's resident memory. The bounds are those of the issue:
# 10 s and 1.5 GB whatever happens, no accepted slice costing more than about
# 10x its size, and nothing costing more than 1 GB. Run with -rP to see the
# measured figures.

try:  # ISA-L compresses a gigabyte of zeros in a tenth of a second; zlib takes seconds
    from isal import isal_zlib as _deflate_lib
except ImportError:  # pragma: no cover
    _deflate_lib = zlib

MB = 1_000_000
TIME_BOUND_S = 10.0  # a hang bound (the issue's), not a speed claim: the figures are printed
RSS_BOUND = 1_500_000_000  # the bound on resident memory, whatever the input
SMALL_SLICE_FLOOR = 16 * MB  # "10x the slice" for slices under 1.6 MB: blocks and the window sample


def _deflate(chunks, wbits: int) -> bytes:
    """gzip (wbits 31), zlib (15) or raw deflate (-15) of a stream of chunks."""
    comp = _deflate_lib.compressobj(1, _deflate_lib.DEFLATED, wbits)
    return b"".join([comp.compress(chunk) for chunk in chunks] + [comp.flush()])


def _zeros(n_bytes: int, chunk: int = 1 << 24):
    for start in range(0, n_bytes, chunk):
        yield bytes(min(chunk, n_bytes - start))


def _nifti1_header(shape, dtype=np.int16, affine=None) -> bytes:
    header = nibabel.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(np.eye(4) if affine is None else affine, code=1)
    header.set_xyzt_units("mm")
    header["vox_offset"] = 352
    return header.binaryblock + bytes(4)


def _brain_planes(shape, dtype=np.int16):
    """Each axial plane of a volume: a square "brain" of 100 with a brighter "lesion" of 400."""
    x, y, z = shape[:3]
    plane = np.zeros((x, y), dtype)
    plane[x // 5 : 4 * x // 5, y // 5 : 4 * y // 5] = 100
    plane[2 * x // 5 : x // 2, 2 * y // 5 : y // 2] = 400
    raw = plane.tobytes(order="F")
    for _ in range(z * int(np.prod(shape[3:], dtype=np.int64))):
        yield raw


def _large_legal_niigz() -> bytes:
    # 512 x 512 x 400 int16: 105 M voxels, 210 MB inflated, under 1 MB on disk.
    shape = (512, 512, 400)
    return _deflate(itertools.chain([_nifti1_header(shape)], _brain_planes(shape)), 31)


def _four_d_lps_niigz() -> bytes:
    # 128 x 128 x 64 x 100 int16 stored LPS: 100 volumes that the old reader reoriented all together.
    shape = (128, 128, 64, 100)
    affine = np.diag([-2.0, -2.0, 2.0, 1.0])
    return _deflate(itertools.chain([_nifti1_header(shape, affine=affine)], _brain_planes(shape)), 31)


def _huge_niigz() -> bytes:
    # 1024 x 1024 x 512 int16: a 1 MB file that inflates to 1 GB.
    shape = (1024, 1024, 512)
    return _deflate(itertools.chain([_nifti1_header(shape)], _zeros(2**30)), 31)


def _gzip_bomb() -> bytes:
    return _deflate(_zeros(2**30 + 2**26), 31)  # 1.06 GiB of zeros, no header


def _bomb_after_a_small_volume() -> bytes:
    shape = (64, 64, 32)
    return _deflate(itertools.chain([_nifti1_header(shape)], _brain_planes(shape), _zeros(2**30)), 31)


def _float64_past_the_inflate_cap() -> bytes:
    shape = (400, 400, 1250)  # 200 M voxels, under the voxel cap; as float64 1.6 GB to inflate
    return _deflate([_nifti1_header(shape, np.float64), bytes(2**20)], 31)


def _dicom_dataset(rows: int, cols: int, bits: int = 16, **fields) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
    ds.PatientName, ds.Modality = PHI_VALUES[0], "MR"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    for keyword, value in fields.items():
        setattr(ds, keyword, value)
    return ds


def _dicom_file(ds: Dataset, transfer_syntax: str) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _deflated_dicom_bomb() -> bytes:
    # A 1 MB deflated DICOM whose data set inflates to 1 GB: pixel data declared as 1 GiB of zeros.
    head = _dicom_file(_dicom_dataset(16384, 32768), DeflatedExplicitVRLittleEndian)
    meta_end = 132 + 12 + int.from_bytes(head[140:144], "little")  # after (0002,0000) and its group
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, _dicom_dataset(16384, 32768))
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 2**30)
    return head[:meta_end] + _deflate(itertools.chain([body.getvalue(), pixel_header], _zeros(2**30)), -15)


def _rle_frame(rows: int, cols: int) -> bytes:
    """A valid RLE header for two segments (16-bit), each holding a single 128-byte run."""
    segment = b"\x81\x00"  # replicate the next byte 128 times
    header = struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13))
    return header + segment + segment


def _rle_dicom(rows: int, cols: int) -> bytes:
    ds = _dicom_dataset(rows, cols)
    ds.PixelData = encapsulate([_rle_frame(rows, cols)])
    return _dicom_file(ds, RLELossless)


def _jpeg(rows: int = 64, cols: int = 64) -> bytes:
    gray = np.tile(np.linspace(0, 255, cols), (rows, 1)).astype(np.uint8)
    return _pil_bytes(Image.fromarray(gray), "JPEG", quality=90)


def _jpeg_dicom(rows: int, cols: int, jpeg: bytes) -> bytes:
    ds = _dicom_dataset(rows, cols, bits=8)
    ds.PixelData = encapsulate([jpeg])
    return _dicom_file(ds, JPEGBaseline8Bit)


def _jpeg_declaring(rows: int, cols: int) -> bytes:
    """A 64 x 64 JPEG whose frame header (SOF0) is patched to claim rows x cols."""
    data = bytearray(_jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", rows, cols)
    return bytes(data)


def _png16_rgba(width: int = 7000, height: int = 7000) -> bytes:
    """A 49 MP 16-bit RGBA PNG (just under the 50 MP limit), streamed: ramps, fully opaque."""
    # Ramps of 500 px: a row then repeats within deflate's 32 KB window, and the file stays small.
    ramp = np.resize(np.linspace(0, 65535, 500), width).astype(">u2")
    row = b"\x00" + np.stack([ramp, ramp[::-1], ramp, np.full(width, 65535, ">u2")], axis=1).tobytes()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    idat = _deflate(itertools.repeat(row, height), 15)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _native_dicom_49mp() -> bytes:
    ds = _dicom_dataset(7000, 7000, WindowCenter=500, WindowWidth=1000)
    ds.PixelData = np.resize(np.arange(0, 1000, 2, dtype=np.uint16), 7000 * 7000).tobytes()
    return _dicom_file(ds, ExplicitVRLittleEndian)


# id: (build, reader, upload name, expected: a message regex, or the accepted shape; growth bound in bytes)
BUDGET_CASES = {
    "nii.gz 105 M voxels, read_scan": (_large_legal_niigz, "scan", "big.nii.gz", (512, 512), "10x slice"),
    "nii.gz 105 M voxels, read_volume": (_large_legal_niigz, "volume", "big.nii.gz", (512, 512, 400), "volume"),
    "nii.gz 1 MB -> 1 GB": (
        _huge_niigz,
        "scan",
        "huge.nii.gz",
        r"too large: 1024 x 1024 x 512 is 537 M voxels \(the limit is 256 M\)",
        32 * MB,
    ),
    "4-D LPS nii.gz, read_scan": (_four_d_lps_niigz, "scan", "fmri.nii.gz", (128, 128), "10x slice"),
    "4-D LPS nii.gz, read_volume": (_four_d_lps_niigz, "volume", "fmri.nii.gz", (128, 128, 64), "volume"),
    "gzip bomb named .nii.gz": (
        _gzip_bomb,
        "scan",
        "bomb.nii.gz",
        r"has no NIfTI-1 header .*: it is corrupt or not NIfTI",  # the first 348 bytes say so: no more is inflated
        32 * MB,
    ),
    "gzip bomb after a small volume": (_bomb_after_a_small_volume, "scan", "b.nii.gz", (64, 64), "10x slice"),
    "float64 header past the inflate cap": (
        _float64_past_the_inflate_cap,
        "scan",
        "f.nii.gz",
        r"would inflate to 1\.49 GB .* the most this app reads from a \.nii\.gz is 1 GB",
        32 * MB,
    ),
    "deflated DICOM 1 MB -> 1 GB": (
        _deflated_dicom_bomb,
        "scan",
        "d.dcm",
        r"deflated DICOM inflates to more than 200 MB",
        600 * MB,
    ),
    "RLE DICOM header 65535 x 65535": (
        lambda: _rle_dicom(65535, 65535),
        "scan",
        "r.dcm",
        r"too large \(65535x65535 pixels",
        32 * MB,
    ),
    "RLE DICOM header 7000 x 7000, 1 KB of data": (
        lambda: _rle_dicom(7000, 7000),
        "scan",
        "r.dcm",
        r"could not be decoded \(RLE Lossless\): it is corrupt, truncated or does not match the header",
        300 * MB,
    ),
    "JPEG DICOM header 9000 x 9000": (
        lambda: _jpeg_dicom(9000, 9000, _jpeg()),
        "scan",
        "j.dcm",
        r"too large \(9000x9000 pixels",
        32 * MB,
    ),
    "JPEG DICOM frame claims 9000 x 9000": (
        lambda: _jpeg_dicom(64, 64, _jpeg_declaring(9000, 9000)),
        "scan",
        "j.dcm",
        r"compressed frame is too large \(9000x9000 pixels",
        32 * MB,
    ),
    "16-bit RGBA PNG 7000 x 7000": (_png16_rgba, "scan", "p.png", (7000, 7000), "10x slice"),
    "DICOM 7000 x 7000 16-bit, uncompressed": (_native_dicom_49mp, "scan", "n.dcm", (7000, 7000), "10x slice"),
}

_PROBE = r"""
import gc, json, sys, time
from tumor.errors import InputError
from tumor.io import read_scan, read_volume

def memory():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}

results = {}
for warm in sys.argv[2:]:  # warm-up, one small file of each kind: lazy imports are not the reads' cost
    read_scan(open(warm, "rb").read(), name=warm.rsplit("/", 1)[-1])
for case in json.loads(open(sys.argv[1]).read()):
    data = open(case["path"], "rb").read()
    reader = read_volume if case["reader"] == "volume" else read_scan
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak-RSS mark := the current RSS
    before = memory()["VmRSS"]
    start = time.perf_counter()
    out, array, result = None, None, {}
    try:
        out = reader(data, name=case["name"])
        array = out.rgb if case["reader"] == "scan" else out.data
        result = {"shape": list(array.shape[:2] if case["reader"] == "scan" else array.shape),
                  "nbytes": int(array.nbytes), "dtype": str(array.dtype), "writeable": bool(array.flags.writeable)}
    except InputError as err:
        result = {"error": str(err)}
    except BaseException as err:
        result = {"crash": repr(err)[:500]}
    result["seconds"] = time.perf_counter() - start
    result["growth"] = memory()["VmHWM"] - before
    result["peak_rss"] = memory()["VmHWM"]
    del out, array
    results[case["id"]] = result
print(json.dumps(results))
"""


def _can_reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def budget(tmp_path_factory) -> dict[str, dict]:
    if not _can_reset_peak_rss():
        pytest.skip("needs Linux /proc/self/clear_refs to measure each read's peak memory")
    import json
    import subprocess
    import sys

    folder = tmp_path_factory.mktemp("budget")
    cases, built = [], {}
    for i, (case_id, (build, reader, name, _, _)) in enumerate(BUDGET_CASES.items()):
        if build not in built:
            built[build] = folder / f"case{i}"
            built[build].write_bytes(build())
        cases.append({"id": case_id, "path": str(built[build]), "reader": reader, "name": name})
    (folder / "cases.json").write_text(json.dumps(cases))
    warm = {
        "warm.png": FORMATS["png_rgb8"](),
        "warm.nii.gz": _nifti(gz=True),
        "warm.dcm": dicom_bytes(_gradient()[:, :, 0]),
    }
    for name, data in warm.items():
        (folder / name).write_bytes(data)
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-c", _PROBE, str(folder / "cases.json"), *(str(folder / name) for name in warm)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(run.stdout)
    print(f"\n{'case':45} {'seconds':>8} {'growth MB':>10} {'peak RSS MB':>12}  outcome")
    for case_id, r in results.items():
        outcome = r.get("error") or r.get("crash") or f"accepted {tuple(r['shape'])} {r['dtype']}"
        print(f"{case_id:45} {r['seconds']:8.2f} {r['growth'] / MB:10.1f} {r['peak_rss'] / MB:12.1f}  {outcome}")
    return results


@pytest.mark.slow
@pytest.mark.parametrize("case_id", list(BUDGET_CASES))
def test_hostile_input_stays_within_the_budget(budget, case_id):
    _, reader, _, expected, bound = BUDGET_CASES[case_id]
    result = budget[case_id]
    assert "crash" not in result, result["crash"]
    assert result["seconds"] < TIME_BOUND_S
    assert result["peak_rss"] < RSS_BOUND
    if isinstance(expected, str):
        assert "error" in result, f"accepted: {result}"
        assert re.search(expected, result["error"]), result["error"]
        assert "corrupt" not in result["error"] or "corrupt" in expected
        assert result["growth"] < bound
    else:
        assert "error" not in result, result["error"]
        assert tuple(result["shape"]) == expected
        assert result["dtype"] == ("uint8" if reader == "scan" else "float32")
        assert not result["writeable"]
        if bound == "10x slice":  # with a floor for small slices: the working blocks take a few MB
            assert result["growth"] < max(10 * result["nbytes"], SMALL_SLICE_FLOOR)
        else:  # the volume itself, plus working blocks of a few MB
            assert result["growth"] < result["nbytes"] + 32 * MB
        assert result["growth"] < 1_000_000_000 or bound == "volume"


def test_a_wrong_element_length_is_called_corrupt_not_missing_pixels():
    data = bytearray(_dicom(_ramp16()))
    at = data.index(b"\x08\x00\x3e\x10LO")  # SeriesDescription: its length now swallows the rest
    data[at + 6 : at + 8] = struct.pack("<H", 0xFFF0)
    with pytest.raises(InputError, match="pixel data cannot be reached"):
        read_scan(bytes(data))


def test_nifti_datatype_without_a_voxel_type_is_named():
    img = nibabel.Nifti1Image(np.arange(20 * 20 * 4, dtype=np.int16).reshape(20, 20, 4), np.eye(4))
    img.header["datatype"] = 0
    with pytest.raises(InputError, match="datatype code 0, which has no voxel type"):
        read_volume(img.header.binaryblock + bytes(4) + img.get_fdata().astype(np.int16).tobytes("F"))


def test_sniff_kind_follows_read_scans_rules_from_the_first_bytes():
    from tumor.io import sniff_kind

    dicom = _dicom(_ramp16())
    nifti_gz = _nifti(gz=True)
    png = _pil_bytes(Image.fromarray(_gradient()), "PNG")
    assert sniff_kind(dicom[:4096]) == "dicom"
    assert sniff_kind(dicom[128:][:4096]) == "dicom"  # preamble stripped: "DICM" at byte 0
    assert sniff_kind(nifti_gz[:4096]) == "nifti"  # by the gzipped header's magic, without a name
    assert sniff_kind(b"", "scan.nii.gz") == "nifti"  # by the name
    assert sniff_kind(png[:4096], "slice.png") == "image"
    assert sniff_kind(b"\x1f\x8b\x08garbage") == "image"  # a damaged gzip head: read_scan says why
    assert read_scan(dicom).kind == "dicom" and read_scan(nifti_gz).kind == "nifti"
