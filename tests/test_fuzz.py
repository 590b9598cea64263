"""Property-based fuzzing of tumor.io on mutated real seed files.

Seeds: gallery slices (JPEG), DICOMs built here with pydicom (native, multi-frame,
RLE, JPEG, deflated, palette) and small NIfTI volumes built with nibabel (plain,
gzipped, 4-D, scaled). Hypothesis mutates bytes, truncates, rewrites header
fields (DICOM sizes and transfer syntax; NIfTI dims, datatype, offset, spacing,
scaling) and corrupts gzip streams. Whatever the bytes, ``read_scan`` and
``read_volume`` must return a valid read-only result or raise ``InputError``;
each call must stay within the upload budget's time and memory bound, emit no
warning and echo no patient name.

The ``ci`` Hypothesis profile (tests/conftest.py) runs a fixed, bounded set of
examples; ``--hypothesis-profile=long`` runs many more.
"""

from __future__ import annotations

import gzip
import io
import time
import warnings
from pathlib import Path

import nibabel
import numpy as np
import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from tumor.errors import InputError
from tumor.io import Scan, Volume, read_scan, read_volume

ROOT = Path(__file__).resolve().parents[1]
PATIENT = "Fuzz^Patient"
TIME_BOUND_S = 10.0  # the bound for one read, not a speed claim
GROWTH_BOUND = 1_000_000_000  # no read may grow the process by more than 1 GB


# --- seeds ------------------------------------------------------------------------


def _gallery_seeds() -> list[bytes]:
    paths = sorted((ROOT / "gallery").glob("*.jpg"))[:3]
    return [p.read_bytes() for p in paths]


def _dataset(rows: int = 32, cols: int = 32, bits: int = 16) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = PATIENT, "FUZZ-1", "MR"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelSpacing, ds.WindowCenter, ds.WindowWidth = [0.5, 0.5], 500, 1000
    return ds


def _file(ds: Dataset, transfer_syntax: str) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _ramp(rows: int = 32, cols: int = 32, hi: int = 1000) -> np.ndarray:
    return np.tile(np.linspace(0, hi, cols), (rows, 1)).astype(np.uint16)


def _dicom_seeds() -> list[bytes]:
    native = _dataset()
    native.PixelData = _ramp().tobytes()
    frames = _dataset()
    frames.NumberOfFrames = 3
    frames.PixelData = np.stack([_ramp(), _ramp()[:, ::-1], _ramp()]).tobytes()
    rle = _dataset()
    rle.PixelData = _ramp().tobytes()
    rle.file_meta = FileMetaDataset()
    rle.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    rle.compress(RLELossless, generate_instance_uid=False)  # pydicom's own RLE encoder
    jpeg = _dataset(bits=8)
    buf = io.BytesIO()
    Image.fromarray((_ramp() // 4).astype(np.uint8)).save(buf, format="JPEG")
    jpeg.PixelData = encapsulate([buf.getvalue()])
    palette = _dataset(bits=8)
    palette.PhotometricInterpretation = "PALETTE COLOR"
    palette.PixelData = (np.arange(32)[None, :].repeat(32, 0) // 8).astype(np.uint8).tobytes()
    for i in range(3):
        palette.add_new(0x00281101 + i, "US", [4, 0, 16])
        palette.add_new(0x00281201 + i, "OW", np.roll(np.array([0, 65535, 0, 0], np.uint16), i).tobytes())
    deflated = _dataset()
    deflated.PixelData = _ramp().tobytes()
    return [
        _file(native, ExplicitVRLittleEndian),
        _file(frames, ExplicitVRLittleEndian),
        _file(rle, RLELossless),
        _file(jpeg, JPEGBaseline8Bit),
        _file(palette, ExplicitVRLittleEndian),
        _file(deflated, DeflatedExplicitVRLittleEndian),
    ]


def _volume(shape: tuple[int, ...], dtype=np.int16) -> np.ndarray:
    data = np.zeros(shape, dtype)
    data[2:-2, 2:-2, 1:-1] = 100
    data[5:9, 6:10, 3:6] = 400
    return data


def _nifti_seeds() -> list[bytes]:
    plain = nibabel.Nifti1Image(_volume((24, 20, 16)), np.diag([0.9, 1.1, 2.0, 1.0]))
    lps = nibabel.Nifti1Image(_volume((20, 24, 16, 3)), np.diag([-1.0, -1.0, 2.0, 1.0]))
    scaled = nibabel.Nifti1Image(_volume((20, 20, 12)).astype(np.float32), np.eye(4))
    scaled.header.set_slope_inter(2.0, -50.0)
    raws = [img.to_bytes() for img in (plain, lps, scaled)]
    return [*raws, gzip.compress(raws[0]), gzip.compress(raws[1])]


SEEDS = {"image": _gallery_seeds(), "dicom": _dicom_seeds(), "nifti": _nifti_seeds()}
NAMES = {"image": "slice.jpg", "dicom": "slice.dcm", "nifti": "volume.nii.gz"}


# --- mutations --------------------------------------------------------------------


@st.composite
def byte_mutations(draw, data: bytes) -> bytes:
    """Flip up to 8 bytes, mostly in the first 1 KB where the headers are; maybe truncate."""
    out = bytearray(data)
    for _ in range(draw(st.integers(0, 8))):
        limit = min(len(out), 1024) if draw(st.booleans()) else len(out)
        out[draw(st.integers(0, limit - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    return bytes(out)


TRANSFER_SYNTAXES = [
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEG2000Lossless,
    "1.2.840.10008.1.2.4.100",  # MPEG2: not decodable here
    "1.2.3.4",
]


@st.composite
def dicom_field_mutations(draw, data: bytes) -> bytes:
    """Rewrite the sizes, the pixel format and the transfer syntax the header declares."""
    ds = pydicom.dcmread(io.BytesIO(data))
    body_start = 132 + 12 + int.from_bytes(data[140:144], "little")
    fields = {
        "Rows": st.integers(0, 65535),
        "Columns": st.integers(0, 65535),
        "NumberOfFrames": st.integers(-5, 10**6),
        "BitsAllocated": st.sampled_from([0, 1, 7, 8, 12, 16, 32, 64, 65535]),
        "SamplesPerPixel": st.integers(0, 5),
        "PixelRepresentation": st.integers(0, 1),
        "PhotometricInterpretation": st.sampled_from(["MONOCHROME1", "RGB", "YBR_FULL", "PALETTE COLOR", "XYZ"]),
        "RescaleSlope": st.sampled_from([0.0, -1.0, 1e30, 1e-30]),
    }
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), max_size=3, unique=True))
    with pydicom.config.disable_value_validation():
        for keyword in chosen:
            value = draw(fields[keyword])
            setattr(ds, keyword, value)
            if keyword == "RescaleSlope":
                ds.RescaleIntercept = 0
    if chosen:
        ds.file_meta.TransferSyntaxUID = ds.file_meta.TransferSyntaxUID  # re-encoded as it was
        buf = io.BytesIO()
        try:
            ds.save_as(buf, enforce_file_format=True)
        except Exception:  # pydicom refuses some combinations: the next mutation still applies
            buf = io.BytesIO(data)
        data = buf.getvalue()
        body_start = 132 + 12 + int.from_bytes(data[140:144], "little")
    if draw(st.booleans()):
        # The file meta lies about the transfer syntax of the data set that follows.
        meta = FileMetaDataset(ds.file_meta)
        meta.TransferSyntaxUID = draw(st.sampled_from(TRANSFER_SYNTAXES))
        head = pydicom.filebase.DicomBytesIO()
        write_file_meta_info(head, meta, enforce_standard=True)
        data = data[:132] + head.getvalue() + data[body_start:]
    return data


NIFTI_FIELDS = {
    "dim": st.lists(st.integers(-2, 32767), min_size=8, max_size=8),  # int16 in the header
    "datatype": st.sampled_from([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 9]),
    "bitpix": st.sampled_from([0, 8, 16, 32, 64, 128]),
    "vox_offset": st.sampled_from([0.0, 100.0, 352.0, 353.0, 4096.0, 1e9, float("nan"), -1.0]),
    "pixdim": st.lists(
        st.sampled_from([0.0, -1.0, 1.0, 2.5, 1e-9, 1e9, float("nan"), float("inf")]), min_size=8, max_size=8
    ),
    "scl_slope": st.sampled_from([0.0, 1.0, -2.0, 1e38, float("nan"), float("inf")]),
    "scl_inter": st.sampled_from([0.0, 5.0, 1e38, float("nan"), float("inf")]),
    "qform_code": st.integers(0, 3),
    "sform_code": st.integers(0, 3),
    "quatern_b": st.sampled_from([0.0, 0.5, 2.0, float("nan")]),
    "srow_x": st.lists(st.sampled_from([0.0, 1.0, -2.0, 1e20, float("nan")]), min_size=4, max_size=4),
    "magic": st.sampled_from([b"n+1", b"ni1", b"n+2", b"xxx"]),
    "sizeof_hdr": st.sampled_from([348, 540, 0, -348]),
}


@st.composite
def nifti_field_mutations(draw, data: bytes) -> bytes:
    """Rewrite dims, datatype, offset, spacing, scaling and orientation in the 348-byte header."""
    gzipped = data[:2] == b"\x1f\x8b"
    raw = gzip.decompress(data) if gzipped else data
    header = nibabel.Nifti1Header(raw[:348], check=False)
    for field in draw(st.lists(st.sampled_from(sorted(NIFTI_FIELDS)), min_size=1, max_size=4, unique=True)):
        with np.errstate(all="ignore"):
            header[field] = draw(NIFTI_FIELDS[field])
    raw = header.binaryblock + raw[348:]
    if not gzipped:
        return raw
    stream = gzip.compress(raw)
    if draw(st.booleans()):  # corrupt the gzip stream itself: a flipped byte or a cut
        stream = bytearray(stream)
        stream[draw(st.integers(10, len(stream) - 1))] ^= draw(st.integers(1, 255))
        stream = bytes(stream[: draw(st.integers(len(stream) // 2, len(stream)))])
    return stream


# --- the property -----------------------------------------------------------------


def _peak_growth_probe():
    """(start, stop): stop() gives how far the resident set peaked above its size at start()."""

    def rss(field: str) -> int:
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith(field))
        return int(line.split()[1]) * 1024

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None

    def start() -> int:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return rss("VmRSS:")

    return start, lambda before: rss("VmHWM:") - before


PROBE = _peak_growth_probe()


def _check_read(reader, data: bytes, name: str | None) -> None:
    before = PROBE[0]() if PROBE else 0
    began = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = reader(data, name=name)
        except InputError as err:
            out = err
    seconds = time.perf_counter() - began
    growth = PROBE[1](before) if PROBE else 0
    assert seconds < TIME_BOUND_S, f"{seconds:.1f} s"
    assert growth < GROWTH_BOUND, f"{growth / 1e6:.0f} MB"
    assert [str(w.message) for w in caught] == []
    if isinstance(out, InputError):
        assert str(out) and PATIENT not in str(out)
        return
    if isinstance(out, Scan):
        rgb = out.rgb
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
        assert min(rgb.shape[:2]) >= 1 and not rgb.flags.writeable
        assert PATIENT not in repr(out) + repr(out.meta)
    else:
        assert isinstance(out, Volume)
        assert out.data.dtype == np.float32 and out.data.ndim == 3 and not out.data.flags.writeable
        assert all(np.isfinite(s) and s > 0 for s in out.spacing_mm)
        middle = out.slice(out.n_slices("axial") // 2)
        assert middle.rgb.dtype == np.uint8 and not middle.rgb.flags.writeable


def _readers(kind: str):
    if kind == "nifti":
        return [read_scan, read_volume]
    return [read_scan]


@st.composite
def mutated(draw, kind: str) -> tuple[bytes, str | None]:
    seeds = SEEDS[kind]
    data = seeds[draw(st.integers(0, len(seeds) - 1))]
    strategies = [byte_mutations(data)]
    if kind == "dicom":
        strategies.append(dicom_field_mutations(data))
    if kind == "nifti":
        strategies.append(nifti_field_mutations(data))
    data = draw(st.one_of(strategies))
    name = draw(st.sampled_from([NAMES[kind], None]))
    return data, name


@pytest.mark.skipif(not SEEDS["image"], reason="gallery/*.jpg seeds are missing")
@given(mutated("image"))
def test_fuzz_gallery_images(case):
    data, name = case
    for reader in _readers("image"):
        _check_read(reader, data, name)


@given(mutated("dicom"))
def test_fuzz_dicom(case):
    data, name = case
    for reader in _readers("dicom"):
        _check_read(reader, data, name)


@given(mutated("nifti"))
def test_fuzz_nifti(case):
    data, name = case
    for reader in _readers("nifti"):
        _check_read(reader, data, name)


def test_seeds_read_cleanly():
    # The property is only meaningful if unmutated seeds are accepted.
    for kind, seeds in SEEDS.items():
        for data in seeds:
            scan = read_scan(data, name=NAMES[kind])
            assert scan.rgb.max() > scan.rgb.min()
    assert read_volume(SEEDS["nifti"][1]).meta["note"].startswith("4-D file with 3 volumes")
