"""Reading uploads: plain images, DICOM slices and NIfTI volumes.

Everything is decoded from bytes in memory; nothing is written to disk or
logged. Every failure a person can cause raises ``InputError`` with a message
that says what was wrong. DICOM headers are read only for display fields on an
allowlist (``SAFE_META_KEYS``); patient-identifying fields are never copied.

Every upload is held to one budget, whatever its format, checked against the
sizes its header declares before anything large is allocated: at most
``MAX_IMAGE_PIXELS`` in one decoded slice, ``MAX_VOLUME_VOXELS`` in one
volume (a NIfTI's first volume, all frames of a DICOM), ``MAX_GUNZIP_BYTES``
inflated from a ``.nii.gz`` and ``MAX_INFLATED_DICOM_BYTES`` from a deflated
DICOM (both counted while inflating). NIfTI voxels are read in blocks, so
``read_scan`` holds one slice of a volume, never the volume, and 8-bit
mapping runs in blocks of rows. Reads run one at a time in a process, so the
budget bounds the process rather than each session, and the warnings and log
records of pydicom, nibabel and Pillow are silenced while they run because
they can echo header values.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import struct
import threading
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import nibabel
import numpy as np
import pydicom
from nibabel.arrayproxy import ArrayProxy
from nibabel.orientations import apply_orientation, io_orientation
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import get_frame
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, get_decoder, pixel_array
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from tumor.errors import InputError

try:  # ISA-L inflates runs of zeros (the shape of a bomb) about 10x faster than zlib
    from isal import isal_zlib as _inflate_lib

    _INFLATE_ERRORS: tuple[type[Exception], ...] = (_inflate_lib.error, zlib.error)
except ImportError:  # pragma: no cover - isal is pinned in requirements.txt
    _inflate_lib = zlib
    _INFLATE_ERRORS = (zlib.error,)

# Limits and conventions, gathered here. The budget, per upload:
MAX_IMAGE_PIXELS = 50_000_000  # pixels in one decoded slice, any format (decompression bombs)
MAX_SLICE_BYTES = 400_000_000  # bytes of one decoded slice before 8-bit mapping (50 MP x 8 B)
MAX_VOLUME_VOXELS = 256_000_000  # voxels in one volume: 1.02 GB as float32
MAX_IMAGE_BYTES = 40 * 1024 * 1024  # largest accepted plain image file
MAX_SCAN_BYTES = 200 * 1024 * 1024  # largest accepted DICOM / NIfTI file
MAX_GUNZIP_BYTES = 1024 * 1024 * 1024  # most bytes inflated from a .nii.gz
MAX_INFLATED_DICOM_BYTES = MAX_SCAN_BYTES  # most bytes inflated from a deflated DICOM
BLOCK_VALUES = 1 << 18  # values read or mapped to 8 bits at a time: bounds temporary memory
SAMPLE_VALUES = 1 << 18  # values a percentile window is estimated from (all, when fewer)
# Display conventions:
IMAGE_PERCENTILES = (1.0, 99.5)  # window for 16-bit and float images
SCAN_PERCENTILES = (1.0, 99.0)  # window for DICOM / NIfTI without a header one
PLANES = ("axial", "coronal", "sagittal")
MIN_SIDE = 16  # smaller than this is a thumbnail or an icon, not a slice
NEAR_BLACK_MAX = 8  # an 8-bit image whose brightest value is below this shows no anatomy

# The only keys ever put in Scan.meta; reports copy nothing else.
SAFE_META_KEYS: tuple[str, ...] = (
    "format",
    "modality",
    "series_description",
    "slice_thickness_mm",
    "pixel_spacing_mm",
    "photometric_interpretation",
    "frame",
    "plane",
    "window",
    "note",
)

Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
# Every plugin is imported now: a logger created during a read would escape _guarded().
Image.init()

_LPS_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))  # (+axis, -axis) of X, Y, Z
_QUIET_LOGGERS = ("pydicom", "nibabel", "PIL", "pylibjpeg")
_READ_LOCK = threading.RLock()


# eq=False: comparing arrays field by field is ambiguous; identity is used.
@dataclass(frozen=True, eq=False)
class Scan:
    """One displayable slice and what is known about its geometry.

    Attributes:
        rgb: read-only uint8 array (H, W, 3), RGB channel order.
        pixel_spacing_mm: (row, column) spacing in millimetres, or None when
            the source does not say.
        orientation: the patient directions that image +x (rightwards) and +y
            (downwards) point to, letters from L/R/A/P/S/I, e.g. ``("L", "P")``
            for a standard axial slice; None when unknown.
        kind: ``"image"``, ``"dicom"`` or ``"nifti"``.
        meta: non-identifying display fields, keys from ``SAFE_META_KEYS``.
        n_frames: frames (DICOM) or axial slices (NIfTI) in the source.
        window: (center, width) used to map DICOM/NIfTI values to 8 bits.
    """

    rgb: np.ndarray = field(repr=False)
    pixel_spacing_mm: tuple[float, float] | None = None
    orientation: tuple[str, str] | None = None
    kind: str = "image"
    meta: dict[str, str] = field(default_factory=dict)
    n_frames: int = 1
    window: tuple[float, float] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the slice in pixels."""
        return int(self.rgb.shape[0]), int(self.rgb.shape[1])


# eq=False: comparing arrays field by field is ambiguous; identity is used.
@dataclass(frozen=True, eq=False)
class Volume:
    """A NIfTI volume reoriented to RAS+ (closest canonical).

    Attributes:
        data: read-only float32 array (X, Y, Z) in Fortran (file) order; +X
            points to the patient's right, +Y anterior, +Z superior.
        spacing_mm: (x, y, z) voxel size in millimetres.
        meta: non-identifying display fields, keys from ``SAFE_META_KEYS``.
        default_window: (center, width) from the volume-wide 1st-99th
            percentiles (of at most ``SAMPLE_VALUES`` evenly strided voxels),
            used when a slice is asked for without a window.
    """

    data: np.ndarray = field(repr=False)
    spacing_mm: tuple[float, float, float]
    meta: dict[str, str] = field(default_factory=dict)
    default_window: tuple[float, float] = (0.5, 1.0)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres (1 ml = 1000 mm^3)."""
        x, y, z = self.spacing_mm
        return x * y * z / 1000.0

    def n_slices(self, plane: str = "axial") -> int:
        """Number of slices along ``plane`` ("axial", "coronal", "sagittal")."""
        return int(self.data.shape[_plane_axis(plane)])

    def slice(
        self,
        index: int,
        plane: str = "axial",
        window: tuple[float, float] | None = None,
    ) -> Scan:
        """Returns one slice, upright in radiological convention.

        Axial and coronal slices show the patient's left on the image right;
        axial has anterior up, coronal and sagittal have superior up, and
        sagittal has anterior on the left.

        Args:
            index: slice index along ``plane``, 0 <= index < n_slices(plane).
            plane: "axial", "coronal" or "sagittal".
            window: (center, width) in the volume's units; defaults to
                ``default_window``.

        Returns:
            A ``Scan`` of kind "nifti" with spacing and orientation set.
        """
        axis = _plane_axis(plane)
        n = self.data.shape[axis]
        _check_slice_index(index, plane, n)
        used = _check_window(window) if window is not None else self.default_window
        return _plane_scan(
            np.take(self.data, int(index), axis=axis), plane, int(index), n, self.spacing_mm, self.meta, used
        )


def read_image(source: str | os.PathLike | bytes) -> np.ndarray:
    """Decodes a PNG, JPEG, TIFF, BMP, WebP or GIF image to RGB.

    16-bit and float images are mapped to 8 bits by a robust window from the
    1st to the 99.5th percentile; alpha is composited over black (the
    background of an MRI slice); CMYK and palette images are converted.

    Args:
        source: a file path or the file's bytes.

    Returns:
        A writeable uint8 array (H, W, 3), RGB channel order.

    Raises:
        InputError: the file is empty, too large, not an image, corrupt or
            truncated, has a zero dimension, or every pixel has one value.
    """
    data = _read_bytes(source, MAX_IMAGE_BYTES)
    with _guarded():
        return _decode_image(data)


def read_scan(
    source: str | os.PathLike | bytes,
    *,
    name: str | None = None,
    frame: int | None = None,
    window: tuple[float, float] | None = None,
) -> Scan:
    """Reads an image, a DICOM slice or one axial slice of a NIfTI volume.

    DICOM is recognised by the ``DICM`` marker (at byte 128, or at byte 0
    when the preamble was stripped) or by a bare data set's first element;
    NIfTI by a ``.nii``/``.nii.gz`` name or its header magic; anything else
    is decoded as an image. Of a NIfTI, only the shown slice is kept in
    memory; the rest is streamed through once for the volume-wide window.

    Args:
        source: a file path or the file's bytes.
        name: the original file name, used only to recognise NIfTI; taken
            from ``source`` when it is a path.
        frame: DICOM frame or NIfTI axial slice to show; defaults to the first
            DICOM frame and the middle NIfTI slice.
        window: (center, width) overriding the DICOM header / percentile
            window, in modality units (ignored for plain images).

    Returns:
        A ``Scan``; its ``rgb`` is read-only uint8 (H, W, 3). For a NIfTI it
        equals ``read_volume(source).slice(frame, "axial", window)``.

    Raises:
        InputError: the file cannot be read or shown (see ``read_image``),
            the frame is out of range, the DICOM has no pixel data or uses a
            compression that cannot be decoded here, the format is not
            supported, or the upload exceeds the budget (module docstring).
    """
    if name is None and not isinstance(source, (bytes, bytearray, memoryview)):
        name = os.fspath(source)
    data = _read_bytes(source, MAX_SCAN_BYTES)
    if window is not None:
        window = _check_window(window)
    with _guarded():
        if _is_dicom(data):
            return _read_dicom(data, frame=0 if frame is None else frame, window=window)
        _refuse_other_formats(data, name)
        if _looks_like_nifti(data, name):
            return _read_nifti_slice(data, frame=frame, window=window)
        if len(data) > MAX_IMAGE_BYTES:
            raise InputError(_too_large_message(len(data), MAX_IMAGE_BYTES))
        if frame not in (None, 0):
            raise InputError(f"A plain image has a single frame; frame={frame!r} does not exist.")
        rgb = _decode_image(data, name)
        return Scan(rgb=_readonly(rgb), kind="image", meta={"format": "image"})


def sniff_kind(head: bytes, name: str | None = None) -> str:
    """What ``read_scan`` would read the file as: "dicom", "nifti" or "image".

    The same rules as ``read_scan``, from the file's first bytes (a few KB are
    enough) and its name; nothing is decoded and nothing raises. Callers that
    walk many files (``tumor.batch``) use it to group them before reading.
    """
    with _guarded():
        try:
            if _is_dicom(head):
                return "dicom"
            return "nifti" if _looks_like_nifti(head, name) else "image"
        except Exception:  # a damaged gzip head: read_scan will say why
            return "image"


def read_volume(source: str | os.PathLike | bytes, name: str | None = None) -> Volume:
    """Reads a NIfTI-1 volume (``.nii`` or ``.nii.gz``) from memory.

    Args:
        source: a file path or the file's bytes.
        name: the original file name (optional; the header magic suffices).

    Returns:
        A ``Volume`` reoriented to RAS+; a 4-D file yields its first volume
        with a note in ``meta``.

    Raises:
        InputError: the bytes are not a readable NIfTI-1 volume, use a data
            type or variant that is not supported (complex, RGB, NIfTI-2),
            or exceed the budget (module docstring).
    """
    if name is None and not isinstance(source, (bytes, bytearray, memoryview)):
        name = os.fspath(source)
    data = _read_bytes(source, MAX_SCAN_BYTES)
    with _guarded():
        if _is_dicom(data):
            raise InputError("This is a DICOM file, not a NIfTI volume; open it as a scan instead.")
        _refuse_other_formats(data, name)
        if not _looks_like_nifti(data, name):
            raise InputError(
                "This file is not a NIfTI-1 volume (no 'n+1' header magic). Upload a .nii or .nii.gz file."
            )
        return _read_nifti_volume(data)


# --- shared: bytes, silence, budget, 8-bit mapping ---------------------------------


@contextlib.contextmanager
def _guarded() -> Iterator[None]:
    """Runs one read at a time, with library warnings and log records dropped.

    pydicom's warnings and log records echo invalid header values (a name
    typed into the wrong field); nibabel's and Pillow's can too. One read at
    a time keeps the memory budget a bound on the whole process, and keeps
    ``catch_warnings``, which swaps process-wide state, from interleaving.
    """
    with _READ_LOCK:
        # list() first: another thread may add a logger while this one looks.
        names = {n for n in list(logging.root.manager.loggerDict) if n.split(".")[0] in _QUIET_LOGGERS}
        loggers = [logging.getLogger(n) for n in sorted(names | set(_QUIET_LOGGERS))]
        was_disabled = [logger.disabled for logger in loggers]
        for logger in loggers:
            logger.disabled = True
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # Pillow's bomb check is a warning below twice its limit: keep it an error.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                yield
        except MemoryError as err:
            # The budget should make this unreachable; if not, say so honestly.
            raise InputError(
                "The file is too large to decode in the memory this server has free. Upload a smaller export."
            ) from err
        finally:
            for logger, was in zip(loggers, was_disabled, strict=True):
                logger.disabled = was


def _too_large_message(n_bytes: int, limit: int) -> str:
    return (
        f"The file is too large ({n_bytes / 2**20:.1f} MB; the limit is "
        f"{limit / 2**20:.0f} MB). Export a single slice at a smaller size."
    )


def _read_bytes(source: str | os.PathLike | bytes, limit: int) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        try:
            size = os.stat(source).st_size
            if size > limit:
                raise InputError(_too_large_message(size, limit))
            with open(source, "rb") as f:
                data = f.read(limit + 1)
        except OSError as err:
            raise InputError(f"Cannot read the file {os.fspath(source)!r}: {err.strerror}.") from err
    else:
        raise InputError(f"Expected a file path or bytes. Received: {type(source).__name__}.")
    if not data:
        raise InputError("The file is empty (0 bytes). Upload the image again.")
    if len(data) > limit:
        raise InputError(_too_large_message(len(data), limit))
    return data


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f}".rstrip("0").rstrip(".")


def _check_dimensions(size: tuple[int, int], what: str = "image") -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InputError(f"The {what} has no pixels (size {width}x{height}).")
    if min(width, height) < MIN_SIDE:
        raise InputError(
            f"The {what} is too small to analyse ({width}x{height} pixels; at least "
            f"{MIN_SIDE} pixels a side are needed). Upload the slice at its original size."
        )
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(
            f"The {what} is too large ({width}x{height} pixels, {_megapixels(width * height)} megapixels; "
            f"the limit is {MAX_IMAGE_PIXELS // 1_000_000} megapixels). Export it at a smaller size."
        )


def _row_slices(array: np.ndarray) -> Iterator[slice]:
    """Row ranges of about ``BLOCK_VALUES`` values each, so temporaries stay small."""
    per_row = max(1, int(np.prod(array.shape[1:], dtype=np.int64)))
    step = max(1, BLOCK_VALUES // per_row)
    for start in range(0, array.shape[0], step):
        yield slice(start, min(array.shape[0], start + step))


def _sample(values: np.ndarray) -> np.ndarray:
    """All values when there are few, else an even 2-D stride of about ``SAMPLE_VALUES``."""
    if values.size <= SAMPLE_VALUES:
        return values
    step = math.ceil(math.sqrt(values.size / SAMPLE_VALUES))
    return values[::step, ::step]


def _finite_range(values: np.ndarray) -> tuple[float, float] | None:
    lo, hi = math.inf, -math.inf
    for rows in _row_slices(values):
        block = values[rows]
        if block.dtype.kind == "f":
            block = block[np.isfinite(block)]
        if block.size:
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    return None if lo > hi else (lo, hi)


def _robust_to_uint8(values: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    sample = _sample(values).astype(np.float64)
    finite = sample[np.isfinite(sample)]
    if finite.size == 0:
        return np.zeros(values.shape, np.uint8)
    lo, hi = np.percentile(finite, percentiles)
    if hi <= lo:
        lo, hi = _finite_range(values) or (0.0, 0.0)
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    return _apply_window(values, ((lo + hi) / 2.0, hi - lo))


def _apply_window(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    center, width = window
    lo = center - width / 2.0
    out = np.empty(values.shape, np.uint8)
    for rows in _row_slices(values):
        scaled = (np.nan_to_num(values[rows].astype(np.float64), nan=lo) - lo) / width
        out[rows] = np.round(np.clip(scaled, 0.0, 1.0) * 255.0)
    return out


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


# --- plain images -----------------------------------------------------------------

# Pillow identifies these but cannot decode them (stub plugins).
_PIL_STUBS = ("BUFR", "GRIB", "HDF5", "WMF", "EMF")


def _decode_image(data: bytes, name: str | None = None) -> np.ndarray:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        # Refuse a bomb from its header, before any decoder allocates memory.
        _check_dimensions((int.from_bytes(data[16:20]), int.from_bytes(data[20:24])))
    if data[:5] == b"%PDF-":
        raise InputError("This is a PDF document, not an image. Upload a PNG, JPEG or TIFF.")
    if data[:2] == b"\x1f\x8b":
        raise InputError(
            "This is a gzip file that does not hold a NIfTI-1 volume. Upload a .nii.gz volume, "
            "or the uncompressed DICOM or image."
        )
    try:
        img = Image.open(io.BytesIO(data))
        if img.format in _PIL_STUBS:
            raise InputError(
                f"This is a {img.format} file, which this app does not read. Upload a PNG, JPEG, TIFF, "
                "DICOM (.dcm) or NIfTI (.nii/.nii.gz) file."
            )
        _check_dimensions(img.size)
        img.seek(0)
        if not _is_png_16bit_colour(data):
            img.load()  # the 16-bit colour path decodes with OpenCV instead
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(
            f"The image is too large to open safely (over {MAX_IMAGE_PIXELS // 1_000_000} "
            "megapixels). Export it at a smaller size."
        ) from err
    except UnidentifiedImageError as err:
        hint = " It is named .dcm but has no DICOM header." if (name or "").lower().endswith(".dcm") else ""
        raise InputError(
            "The file is not an image this app can read. Upload a PNG, JPEG, TIFF, "
            f"DICOM (.dcm) or NIfTI (.nii/.nii.gz) file.{hint}"
        ) from err
    except MemoryError:
        raise
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError...
        raise InputError(
            "The image could not be decoded: the file is corrupt or truncated. Upload the original file again."
        ) from err
    rgb = _pil_to_rgb(img, data)
    if rgb.max() == rgb.min():
        raise InputError(
            f"The image is blank: every pixel has the value {int(rgb.flat[0])}. Upload a slice that shows the brain."
        )
    if rgb.max() < NEAR_BLACK_MAX:
        raise InputError(
            f"The image is almost entirely black: its brightest pixel is {int(rgb.max())} of 255, too dark to show "
            "any anatomy. If it is an 8-bit export of a 12- or 16-bit scan, upload the original file "
            "(DICOM, 16-bit PNG or TIFF, or NIfTI) instead."
        )
    return rgb


def _is_png_16bit_colour(data: bytes) -> bool:
    # IHDR: bit depth at byte 24, colour type at byte 25 (2 = RGB, 6 = RGBA).
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 25 and data[24] == 16 and data[25] in (2, 6)


def _composite16(bgra: np.ndarray) -> np.ndarray:
    rgb = bgra[:, :, 2::-1].astype(np.float64)
    if bgra.shape[2] == 4:
        rgb *= bgra[:, :, 3:4] / 65535.0
    return rgb


def _png16_colour_to_rgb(data: bytes) -> np.ndarray | None:
    # Pillow truncates 16-bit colour PNGs to 8 bits; OpenCV keeps them.
    import cv2

    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.ndim != 3 or decoded.dtype != np.uint16 or decoded.shape[2] not in (3, 4):
        return None
    # The window comes from a sample; the mapping runs a block of rows at a time.
    sample = _composite16(_sample(decoded))
    finite = sample[np.isfinite(sample)]
    lo, hi = np.percentile(finite, IMAGE_PERCENTILES)
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    out = np.zeros((*decoded.shape[:2], 3), np.uint8)
    if hi > lo:
        # float32, in place: at 49 MP the float64 route of _apply_window took seconds.
        scale = np.float32(255.0 / (hi - lo))
        if decoded.shape[2] == 3 or int(decoded[:, :, 3].min()) == 65535:
            # Opaque: one lookup per value through a 65536-entry table, the same formula.
            lut = (np.arange(65536, dtype=np.float32) - np.float32(lo)) * scale
            lut = np.rint(np.clip(lut, 0, 255)).astype(np.uint8)
            for rows in _row_slices(decoded):
                out[rows] = lut[decoded[rows][:, :, 2::-1]]
            return out
        for rows in _row_slices(decoded):
            block = decoded[rows]
            rgb = block[:, :, 2::-1].astype(np.float32)
            if block.shape[2] == 4:
                rgb *= block[:, :, 3:4] * np.float32(1 / 65535)
            rgb -= np.float32(lo)
            rgb *= scale
            np.clip(rgb, 0, 255, out=rgb)
            out[rows] = np.rint(rgb, out=rgb)
    return out


def _pil_to_rgb(img: Image.Image, data: bytes) -> np.ndarray:
    if _is_png_16bit_colour(data):
        try:
            rgb = _png16_colour_to_rgb(data)
        except MemoryError:
            raise
        except Exception as err:  # OpenCV raises cv2.error on a corrupt stream
            raise InputError(
                "The image could not be decoded: the file is corrupt or truncated. Upload the original file again."
            ) from err
        if rgb is not None:
            return rgb
        try:
            img.load()
        except Exception as err:
            raise InputError(
                "The image could not be decoded: the file is corrupt or truncated. Upload the original file again."
            ) from err
    # A broken EXIF block should not reject an otherwise good image.
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError, SyntaxError):
        img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        return _gray_to_rgb(_robust_to_uint8(np.asarray(img), IMAGE_PERCENTILES))
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"))
        rgb = np.empty((*rgba.shape[:2], 3), np.uint8)
        for rows in _row_slices(rgba):
            block = rgba[rows].astype(np.float32)
            rgb[rows] = np.round(block[:, :, :3] * (block[:, :, 3:4] / 255.0))
        return rgb
    if mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)


def _refuse_other_formats(data: bytes, name: str | None) -> None:
    """Formats that would otherwise reach a wrong reader and a wrong message."""
    head = data[:8]
    if head[:2] == b"\x1f\x8b":
        head = _gunzip_head(data, 8)
    lowered = (name or "").lower()
    if head == b"\x89HDF\r\n\x1a\n" or head[:4] in (b"CDF\x01", b"CDF\x02") or lowered.endswith((".mnc", ".mnc.gz")):
        raise InputError(
            "This is a MINC (or other HDF5 / NetCDF) file, which this app does not support. "
            "Convert it to NIfTI (for example with mnc2nii) and upload the .nii.gz."
        )


# --- DICOM -------------------------------------------------------------------------


def _has_preamble(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def _looks_like_bare_dicom(data: bytes) -> bool:
    """A data set written without preamble and prefix (still common from old scanners)."""
    if len(data) < 12 or data[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    element = int.from_bytes(data[2:4], "little")
    explicit_vr = data[4:6].isalpha() and data[4:6].isupper()
    implicit_length = int.from_bytes(data[4:8], "little")
    return element < 0x0100 and (explicit_vr or implicit_length < len(data))


def _is_dicom(data: bytes) -> bool:
    return _has_preamble(data) or data[:4] == b"DICM" or _looks_like_bare_dicom(data)


def _first_number(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def _check_window(window: tuple[float, float]) -> tuple[float, float]:
    try:
        center, width = (float(v) for v in window)
    except (TypeError, ValueError) as err:
        raise InputError(f"A window is (center, width). Received: window={window!r}.") from err
    if not (np.isfinite(center) and np.isfinite(width) and width > 0):
        raise InputError(f"A window needs a finite center and a positive width. Received: window={window!r}.")
    return center, width


def _window_from_percentiles(finite: np.ndarray) -> tuple[float, float]:
    if finite.size == 0:
        return 0.5, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, SCAN_PERCENTILES))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return lo, 1.0
    return (lo + hi) / 2.0, hi - lo


def _format_window(window: tuple[float, float]) -> str:
    return f"center {window[0]:g}, width {window[1]:g}"


def _orientation_from_iop(value: object) -> tuple[str, str] | None:
    try:
        cosines = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if cosines.shape != (6,) or not np.all(np.isfinite(cosines)):
        return None
    letters = []
    for vector in (cosines[:3], cosines[3:]):
        axis = int(np.argmax(np.abs(vector)))
        if vector[axis] == 0:
            return None
        positive, negative = _LPS_LETTERS[axis]
        letters.append(positive if vector[axis] > 0 else negative)
    return letters[0], letters[1]


def _spacing_from(value: object) -> tuple[float, float] | None:
    try:
        row, col = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if not (np.isfinite(row) and np.isfinite(col) and row > 0 and col > 0):
        return None
    return row, col


def _short_text(value: object, limit: int = 64) -> str:
    text = " ".join(str(value).split())
    return text[:limit]


def _inflate_raw(compressed: memoryview, limit: int) -> io.BytesIO:
    """Inflates a raw deflate stream, refusing as soon as it passes ``limit`` bytes."""
    inflater = _inflate_lib.decompressobj(-zlib.MAX_WBITS)
    out = io.BytesIO()
    position, pending = 0, b""
    try:
        while not inflater.eof:
            if not pending:
                if position >= len(compressed):
                    raise InputError("The deflated DICOM data set is truncated. Export the file again.")
                pending = compressed[position : position + (1 << 16)]
                position += len(pending)
            out.write(inflater.decompress(pending, limit + 1 - out.tell()))
            pending = inflater.unconsumed_tail
            if out.tell() > limit:
                raise InputError(
                    f"The deflated DICOM inflates to more than {limit / 2**20:.0f} MB, the most this app "
                    "reads from one file. Export it uncompressed, one series or frame at a time."
                )
    except _INFLATE_ERRORS as err:
        raise InputError("The deflated DICOM data set is corrupt: it does not inflate. Export the file again.") from err
    out.seek(0)
    return out


def _undefined_length_pixels(ds: Dataset) -> bool:
    try:
        return "PixelData" in ds and ds["PixelData"].is_undefined_length
    except Exception as err:
        raise InputError("The DICOM pixel data element cannot be decoded: the file is corrupt.") from err


def _not_group_2(tag: int, vr: str | None, length: int) -> bool:
    return tag >> 16 != 2


def _parse_dicom(data: bytes) -> Dataset:
    if data[:4] == b"DICM":  # the preamble was stripped; the prefix and meta remain
        data = bytes(128) + data
    try:
        if _has_preamble(data):
            fp = io.BytesIO(data)
            fp.seek(132)
            meta = FileMetaDataset(
                read_dataset(fp, is_implicit_VR=False, is_little_endian=True, stop_when=_not_group_2)
            )
            if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
                # pydicom would inflate this whole, with no limit; inflate it here, capped.
                inflated = _inflate_raw(memoryview(data)[fp.tell() :], MAX_INFLATED_DICOM_BYTES)
                ds = read_dataset(inflated, is_implicit_VR=False, is_little_endian=True)
                ds.file_meta = meta
                return ds
            ds = pydicom.dcmread(io.BytesIO(data), force=False)
        else:
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except InputError:
        raise
    except MemoryError:
        raise
    except Exception as err:
        raise InputError("The DICOM file could not be read: it is corrupt or truncated. Export it again.") from err
    # No transfer syntax (a bare data set, or a file meta without one): it follows
    # from how pydicom found the data set encoded, unless the pixels are compressed.
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        if _undefined_length_pixels(ds):
            raise InputError(
                "This DICOM has compressed pixel data but no file header naming the compression, so it "
                "cannot be decoded. Export it again as a DICOM file (Part 10) with its header."
            )
        implicit, little = ds.original_encoding
        ds.file_meta = meta if meta is not None else FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian
            if implicit or implicit is None
            else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        )
    return ds


def _get(ds: Dataset, keyword: str, default: object = None) -> object:
    """A display field, or ``default`` when it is missing or its element cannot be decoded."""
    try:
        return ds.get(keyword, default)
    except Exception:  # pydicom decodes lazily: a corrupt element raises only when read
        return default


def _header_int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    try:
        value = ds.get(keyword, None)
    except Exception as err:
        raise InputError(
            f"The DICOM header's {keyword} cannot be decoded: the file is corrupt. Export it again."
        ) from err
    if value is None or value == "":
        if default is None:
            raise InputError(
                f"The DICOM header has no {keyword}, which is needed to decode its pixels. Export the file again."
            )
        return default
    number = _first_number(value)
    if number is None or number != int(number):
        raise InputError(f"The DICOM header's {keyword} is not a whole number. Export the file again.")
    return int(number)


def _dicom_frames(ds: Dataset) -> int:
    n = _header_int(ds, "NumberOfFrames", default=1)
    if n < 0:
        raise InputError(
            f"The DICOM header says NumberOfFrames = {n}; a frame count must be at least 1. "
            "The file was written incorrectly: export it again."
        )
    return max(n, 1)  # 0 is non-conformant; pydicom reads it as one frame, and so do we


_PHOTOMETRIC = (
    "MONOCHROME1",
    "MONOCHROME2",
    "PALETTE COLOR",
    "RGB",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_PARTIAL_420",
    "YBR_ICT",
    "YBR_RCT",
    "XYB",
    "HSV",
    "ARGB",
    "CMYK",
)
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}


def _codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) that a JPEG, JPEG-LS or JPEG 2000 frame declares itself, if found."""
    if frame[:2] == b"\xff\xd8":
        pos = 2
        while pos + 4 <= len(frame):
            if frame[pos] != 0xFF:
                return None
            marker = frame[pos + 1]
            if marker == 0xFF:  # fill byte
                pos += 1
                continue
            if marker in _JPEG_SOF:
                if pos + 9 > len(frame):
                    return None
                rows, cols = struct.unpack(">HH", frame[pos + 5 : pos + 9])
                return (rows, cols) if rows and cols else None  # 0: set later (DNL, LSE)
            if marker in (0xDA, 0xD9):  # start of scan, end of image: no frame header
                return None
            if marker == 0x01 or 0xD0 <= marker <= 0xD8:
                pos += 2
                continue
            length = struct.unpack(">H", frame[pos + 2 : pos + 4])[0]
            if length < 2:
                return None
            pos += 2 + length
        return None
    siz = frame.find(b"\xff\x4f\xff\x51", 0, 4096)  # J2K SOC + SIZ, also inside a JP2 box
    if siz >= 0 and siz + 24 <= len(frame):
        x_size, y_size, x_origin, y_origin = struct.unpack(">IIII", frame[siz + 8 : siz + 24])
        if x_size > x_origin and y_size > y_origin:
            return y_size - y_origin, x_size - x_origin
    return None


def _unsupported_syntax(transfer_syntax: object) -> InputError:
    if not re.fullmatch(r"[0-9.]{1,64}", str(transfer_syntax)):
        # Not a UID: it may be anything typed into the field, so it is not echoed.
        return InputError(
            "The DICOM header's transfer syntax is not a valid UID, so its pixel data cannot be decoded. "
            "Export the series again (Explicit VR Little Endian)."
        )
    name = getattr(transfer_syntax, "name", "unknown")
    return InputError(
        f"The DICOM pixel data is compressed with transfer syntax '{name}' ({transfer_syntax}), which "
        "this app cannot decode. Export the series uncompressed (Explicit VR Little Endian)."
    )


def _decode_dicom_frame(ds: Dataset, frame: int, n_frames: int, rows: int, cols: int) -> np.ndarray:
    transfer_syntax = ds.file_meta.get("TransferSyntaxUID")
    try:
        decoder = get_decoder(transfer_syntax)
    except Exception as err:  # NotImplementedError, or a value that is not a UID
        raise _unsupported_syntax(transfer_syntax) from err
    if not decoder.is_available:
        raise _unsupported_syntax(transfer_syntax)
    if getattr(transfer_syntax, "is_encapsulated", False) and "PixelData" in ds:
        try:
            compressed = get_frame(ds.PixelData, frame, number_of_frames=n_frames)
        except Exception as err:
            raise InputError(
                f"The DICOM pixel data could not be decoded: frame {frame} cannot be found in the "
                f"compressed data ({transfer_syntax.name}); the file is corrupt or truncated."
            ) from err
        declared = _codestream_size(compressed)
        if declared is not None and declared[0] * declared[1] > MAX_IMAGE_PIXELS:
            raise InputError(
                f"The compressed frame is too large ({declared[1]}x{declared[0]} pixels; the limit is "
                f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels). Export it at a smaller size."
            )
        if declared is not None and declared != (rows, cols):
            raise InputError(
                f"The DICOM is corrupt: its header says {cols}x{rows} pixels, but the compressed "
                f"frame ({transfer_syntax.name}) holds {declared[1]}x{declared[0]}. Export it again."
            )
    try:
        return pixel_array(ds, index=frame)
    except MemoryError:
        raise
    except (AttributeError, KeyError) as err:
        raise InputError(
            "The DICOM header lacks fields needed to decode its pixels (such as BitsStored or "
            "PixelRepresentation). Export the file again."
        ) from err
    except Exception as err:
        raise InputError(
            f"The DICOM pixel data could not be decoded ({getattr(transfer_syntax, 'name', 'unknown')}): "
            "it is corrupt, truncated or does not match the header. Export it again."
        ) from err


def _palette_to_rgb(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    try:
        rgb = apply_color_lut(pixels, ds)
    except MemoryError:
        raise
    except Exception as err:
        raise InputError(
            "The DICOM is a palette-colour image whose colour table is missing or corrupt. Export it again."
        ) from err
    if rgb.dtype == np.uint8:
        return rgb
    # 16-bit table entries span 0..65535; 65535 // 257 = 255.
    out = np.empty(rgb.shape, np.uint8)
    for rows in _row_slices(rgb):
        out[rows] = np.clip(rgb[rows] // 257, 0, 255)
    return out


def _read_dicom(data: bytes, *, frame: int, window: tuple[float, float] | None) -> Scan:
    ds = _parse_dicom(data)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if b"\xe0\x7f\x10\x00" in data[132:] or b"\x7f\xe0\x00\x10" in data[132:]:
            # The pixel data tag is in the file, but parsing never reached it: an element before it
            # declares a wrong length and swallowed the rest.
            raise InputError(
                "The DICOM file is corrupt: its pixel data cannot be reached, because an element before it "
                "declares a wrong length. Export it again."
            )
        raise InputError(
            "The DICOM file has no pixel data (it may be a report, a structured document "
            "or a header-only file). Upload an image series file."
        )
    # The budget, from the header's declared sizes, before any pixel is decoded.
    rows, cols = _header_int(ds, "Rows"), _header_int(ds, "Columns")
    n_frames = _dicom_frames(ds)
    samples = _header_int(ds, "SamplesPerPixel", default=1)
    bits = _header_int(ds, "BitsAllocated")
    if bits not in (1, 8, 16, 32, 64) or not 1 <= samples <= 4:
        raise InputError(
            f"Unsupported DICOM pixel format: BitsAllocated={bits}, SamplesPerPixel={samples}. "
            "Export the series as 8- or 16-bit greyscale or RGB."
        )
    _check_dimensions((cols, rows), "DICOM image")
    slice_bytes = rows * cols * samples * max(bits // 8, 1)
    if slice_bytes > MAX_SLICE_BYTES:
        raise InputError(
            f"The DICOM frame is too large to decode: {cols}x{rows} pixels x {samples} sample(s) x "
            f"{bits} bits is {slice_bytes / 1e6:.0f} MB (the limit is {MAX_SLICE_BYTES / 1e6:.0f} MB)."
        )
    if rows * cols * n_frames > MAX_VOLUME_VOXELS:
        raise InputError(
            f"The DICOM is too large: its header declares {n_frames} frames of {cols}x{rows} pixels "
            f"({rows * cols * n_frames / 1e6:.0f} M pixels; the limit is {MAX_VOLUME_VOXELS / 1e6:.0f} M). "
            "Export fewer frames."
        )
    if not isinstance(frame, (int, np.integer)) or not 0 <= frame < n_frames:
        raise InputError(
            f"Frame {frame!r} is out of range: this DICOM has {n_frames} frame(s), numbered 0 to {n_frames - 1}."
        )
    pixels = _decode_dicom_frame(ds, int(frame), n_frames, rows, cols)
    photometric = str(_get(ds, "PhotometricInterpretation", "")).strip().upper()
    if photometric and photometric not in _PHOTOMETRIC:
        photometric = "unrecognised"  # a free-text value is not echoed: it could be anything typed there
    used_window: tuple[float, float] | None = None
    if pixels.shape[:2] != (rows, cols):
        raise InputError(
            f"The DICOM pixel data does not match its header ({cols}x{rows} pixels declared, "
            f"{pixels.shape[1]}x{pixels.shape[0]} decoded): it is corrupt. Export it again."
        )
    if samples == 1 and pixels.ndim == 2 and photometric == "PALETTE COLOR":
        rgb = _palette_to_rgb(pixels, ds)
        if rgb.max() == rgb.min():
            raise InputError(f"The image is blank: every pixel of frame {frame} has one colour.")
    elif samples == 1 and pixels.ndim == 2:
        try:
            # The window comes from a sample; the rescale and mapping run a block of rows at a time.
            sample = apply_modality_lut(_sample(pixels), ds).astype(np.float64)
            value_range = _finite_range_modality(pixels, ds)
        except MemoryError:
            raise
        except Exception as err:
            raise InputError(
                "The DICOM rescale (RescaleSlope / Intercept or Modality LUT) is invalid. Export it again."
            ) from err
        if value_range is None or value_range[0] == value_range[1]:
            value = "not a number" if value_range is None else f"{value_range[0]:g}"
            raise InputError(
                f"The image is blank: every pixel of frame {frame} has the value {value}. "
                "Choose another frame or series."
            )
        if window is not None:
            used_window = window
        else:
            center = _first_number(_get(ds, "WindowCenter"))
            width = _first_number(_get(ds, "WindowWidth"))
            if center is not None and width is not None and width > 0:
                used_window = (center, width)
            else:
                used_window = _window_from_percentiles(sample[np.isfinite(sample)])
        gray = np.empty(pixels.shape, np.uint8)
        for block in _row_slices(pixels):
            gray[block] = _apply_window(apply_modality_lut(pixels[block], ds).astype(np.float64), used_window)
        if photometric == "MONOCHROME1":
            np.subtract(255, gray, out=gray)
        rgb = _gray_to_rgb(gray)
    elif pixels.ndim == 3 and pixels.shape[2] == 3:
        # pydicom has already converted YBR to RGB.
        rgb = pixels if pixels.dtype == np.uint8 else _robust_to_uint8(pixels, IMAGE_PERCENTILES)
        if rgb.max() == rgb.min():
            raise InputError(f"The image is blank: every pixel of frame {frame} has one value.")
    else:
        raise InputError(
            f"Unsupported DICOM pixel layout. Received: shape={pixels.shape}, "
            f"SamplesPerPixel={samples}, PhotometricInterpretation={photometric!r}."
        )
    spacing = _spacing_from(_get(ds, "PixelSpacing"))
    meta = {"format": "DICOM"}
    for key, keyword, limit in (("modality", "Modality", 16), ("series_description", "SeriesDescription", 64)):
        value = _get(ds, keyword)
        if value is not None:
            meta[key] = _short_text(value, limit)
    thickness = _first_number(_get(ds, "SliceThickness"))
    if thickness is not None:
        meta["slice_thickness_mm"] = f"{thickness:g}"
    if spacing is not None:
        meta["pixel_spacing_mm"] = f"{spacing[0]:g} x {spacing[1]:g}"
    if photometric:
        meta["photometric_interpretation"] = _short_text(photometric, 16)
    meta["frame"] = f"{frame + 1} of {n_frames}"
    if used_window is not None:
        meta["window"] = _format_window(used_window)
    return Scan(
        rgb=_readonly(rgb.astype(np.uint8, copy=False)),
        pixel_spacing_mm=spacing,
        orientation=_orientation_from_iop(_get(ds, "ImageOrientationPatient")),
        kind="dicom",
        meta=meta,
        n_frames=n_frames,
        window=used_window,
    )


def _finite_range_modality(pixels: np.ndarray, ds: Dataset) -> tuple[float, float] | None:
    lo, hi = math.inf, -math.inf
    for block in _row_slices(pixels):
        values = np.asarray(apply_modality_lut(pixels[block], ds), dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size:
            lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
    return None if lo > hi else (lo, hi)


# --- NIfTI -------------------------------------------------------------------------

_NIFTI1_HEADER = 348
_NIFTI1_MIN_OFFSET = 352  # header + the 4-byte extension flag
_COMPLEX_CODES = {32: "complex64", 1792: "complex128", 2048: "complex256"}
_RGB_CODES = {128: "RGB24", 2304: "RGBA32"}


def _gunzip_head(data: bytes, n: int) -> bytes:
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[: 1 << 16], n)
    except zlib.error:
        return b""


class _Gunzip(io.IOBase):
    """A read-only file over a gzip stream, inflated only as far as it is read.

    nibabel reads the header and then blocks of voxels through it. Nothing is
    inflated beyond the bytes asked for, and asking for more than ``limit``
    bytes in all raises ``InputError`` however the stream is built.
    """

    _CHUNK_IN = 1 << 16
    _CHUNK_OUT = 1 << 20

    def __init__(self, data: bytes, limit: int) -> None:
        super().__init__()
        self._data = memoryview(data)
        self._limit = limit
        self._restart()

    def _restart(self) -> None:
        self._inflater = _inflate_lib.decompressobj(16 + zlib.MAX_WBITS)
        self._in_pos = 0
        self._pending: bytes | memoryview = b""
        self._buffer = bytearray()  # inflated and not yet read; starts at self._pos
        self._pos = 0
        self._ended = False

    def _inflate(self, want: int) -> None:
        while want > 0 and not self._ended:
            produced = self._pos + len(self._buffer)
            if produced > self._limit:
                raise InputError(
                    f"The .nii.gz file inflates to more than {self._limit / 2**30:.0f} GB, the most this app "
                    "reads. It is too large or a decompression bomb."
                )
            if not self._pending:
                if self._in_pos >= len(self._data):
                    self._ended = True  # truncated: the reader then sees a short read
                    break
                self._pending = self._data[self._in_pos : self._in_pos + self._CHUNK_IN]
                self._in_pos += len(self._pending)
            try:
                out = self._inflater.decompress(self._pending, min(want, self._limit + 1 - produced))
            except _INFLATE_ERRORS as err:
                raise InputError("The .gz file is corrupt: its stream does not inflate. Upload it again.") from err
            stalled = not out and len(self._inflater.unconsumed_tail) == len(self._pending)
            self._pending = self._inflater.unconsumed_tail
            self._buffer += out
            want -= len(out)
            if stalled and not self._inflater.eof:  # no progress on the same input: never loop on it
                raise InputError("The .gz file is corrupt: its stream does not inflate. Upload it again.")
            if self._inflater.eof:
                # A gzip file may hold several members one after another.
                end = self._in_pos - len(self._inflater.unused_data) - len(self._pending)
                if bytes(self._data[end : end + 2]) == b"\x1f\x8b":
                    self._inflater = _inflate_lib.decompressobj(16 + zlib.MAX_WBITS)
                    self._in_pos, self._pending = end, b""
                else:
                    self._ended = True
        if self._pos + len(self._buffer) > self._limit:
            raise InputError(
                f"The .nii.gz file inflates to more than {self._limit / 2**30:.0f} GB, the most this app "
                "reads. It is too large or a decompression bomb."
            )

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self._limit + 1
        while len(self._buffer) < n and not self._ended:
            self._inflate(n - len(self._buffer))
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        self._pos += len(out)
        return out

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 1:
            offset += self._pos
        elif whence != 0:
            raise io.UnsupportedOperation("a gzip stream can only seek from its start")
        if offset < self._pos:
            self._restart()
        skip = offset - self._pos
        while skip > 0:
            if not self._buffer:
                self._inflate(min(skip, self._CHUNK_OUT))
                if not self._buffer:
                    break
            taken = min(skip, len(self._buffer))
            del self._buffer[:taken]
            self._pos += taken
            skip -= taken
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


def _nifti_magic(header: bytes) -> bool:
    return len(header) >= _NIFTI1_HEADER and header[344:348] in (b"n+1\x00", b"ni1\x00")


def _nifti2_magic(header: bytes) -> bool:
    return len(header) >= 8 and header[4:8] in (b"n+2\x00", b"ni2\x00")


def _looks_like_nifti(data: bytes, name: str | None) -> bool:
    lowered = (name or "").lower()
    if lowered.endswith((".nii", ".nii.gz")):
        return True
    head = _gunzip_head(data, _NIFTI1_HEADER) if data[:2] == b"\x1f\x8b" else data[:_NIFTI1_HEADER]
    return _nifti_magic(head) or _nifti2_magic(head)


@dataclass(frozen=True)
class _NiftiLayout:
    """What the header says, checked against the budget, before any voxel is read."""

    stored_shape: tuple[int, int, int]  # (X, Y, Z) of the first volume, as stored
    dtype: np.dtype
    offset: int
    slope: float
    inter: float
    ornt: np.ndarray  # nibabel orientation: stored axis i -> RAS axis ornt[i, 0], flipped if -1
    spacing_mm: tuple[float, float, float]  # RAS order
    notes: tuple[str, ...]

    @property
    def ras_shape(self) -> tuple[int, int, int]:
        shape = [0, 0, 0]
        for i in range(3):
            shape[int(self.ornt[i, 0])] = self.stored_shape[i]
        return shape[0], shape[1], shape[2]


def _nifti_header(head: bytes) -> nibabel.Nifti1Header:
    if len(head) < _NIFTI1_HEADER:
        raise InputError(
            f"The NIfTI file is truncated: it holds {len(head)} bytes, less than its {_NIFTI1_HEADER}-byte header."
        )
    if head[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c") or _nifti2_magic(head):
        raise InputError(
            "This is a NIfTI-2 file, which this app does not support. Save the volume as NIfTI-1 "
            "(.nii or .nii.gz) and upload it again."
        )
    if head[344:348] == b"ni1\x00":
        raise InputError("This is a two-file NIfTI header (.hdr/.img pair); upload a single .nii or .nii.gz file.")
    if head[344:348] != b"n+1\x00" or head[:4] not in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c"):
        raise InputError(
            "The file is named or compressed like a NIfTI volume, but it has no NIfTI-1 header "
            "(348 bytes ending in the magic 'n+1'): it is corrupt or not NIfTI. Upload a .nii or .nii.gz file."
        )
    try:
        return nibabel.Nifti1Header(head[:_NIFTI1_HEADER], check=False)
    except Exception as err:
        raise InputError("The NIfTI header is corrupt. Export the volume again.") from err


def _nifti_affine(header: nibabel.Nifti1Header, notes: list[str]) -> np.ndarray:
    """The header's best affine (sform, else qform, else pixdim), falling back when degenerate."""
    pixdim = np.asarray(header["pixdim"], dtype=np.float64)
    zooms = pixdim[1:4]
    bad = ~(np.isfinite(zooms) & (zooms != 0))
    fixed = header.copy()
    # What nibabel's header check would fix, without its log records and in the open.
    fixed["pixdim"][1:4] = np.where(bad, 1.0, np.abs(np.nan_to_num(zooms)))
    if pixdim[0] not in (-1.0, 1.0):
        fixed["pixdim"][0] = 1.0
    candidates = []
    if int(header["sform_code"]) > 0:
        candidates.append(("sform", fixed.get_sform))
    if int(header["qform_code"]) > 0:
        candidates.append(("qform", fixed.get_qform))
    candidates.append(("pixdim", fixed.get_base_affine))
    for source, get in candidates:
        try:
            affine = np.asarray(get(), dtype=np.float64)
        except Exception:  # e.g. quaternion b, c, d of norm above 1
            continue
        if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            continue
        norms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        if np.any(bad) and source == "pixdim":
            notes.append("voxel size missing from the header (pixdim 0); assumed 1 mm")
        elif not np.allclose(norms, np.abs(zooms), rtol=1e-3, atol=1e-5):
            stated = " x ".join(f"{z:g}" for z in zooms)
            notes.append(f"voxel size taken from the {source} affine; the header's pixdim ({stated}) disagrees")
        return affine
    raise InputError("The NIfTI header's orientation (sform, qform and pixdim) is unusable: it is corrupt.")


def _nifti_layout(header: nibabel.Nifti1Header, stored_bytes: int | None, gzipped: bool) -> _NiftiLayout:
    """Checks the header against the budget; ``stored_bytes`` is the file size when not gzipped."""
    dims = [int(d) for d in header["dim"]]
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise InputError(f"The NIfTI header is corrupt: dim[0] is {ndim}, not 1 to 7.")
    shape = tuple(dims[1 : ndim + 1])
    if any(d < 0 for d in shape):
        raise InputError(f"The NIfTI header is corrupt: negative dimension. Received: shape={shape}.")
    if 0 in shape:
        raise InputError(f"The NIfTI volume has no voxels. Received: shape={shape}.")
    if ndim < 2:
        raise InputError(f"A NIfTI volume needs 3 dimensions. Received: shape={shape}.")
    code = int(header["datatype"])
    if code in _COMPLEX_CODES:
        raise InputError(
            f"This NIfTI volume holds complex values ({_COMPLEX_CODES[code]}), which this app does not show: "
            "dropping the imaginary part would be silently wrong. Save the magnitude as a real-valued volume."
        )
    if code in _RGB_CODES:
        raise InputError(
            f"This is an RGB colour NIfTI volume ({_RGB_CODES[code]}), which this app does not support. "
            "Upload a greyscale (single-channel) scan."
        )
    try:
        dtype = header.get_data_dtype()
    except Exception as err:
        raise InputError(
            f"The NIfTI header names datatype code {code}, which is not a NIfTI-1 data type: it is corrupt."
        ) from err
    if dtype.kind == "V":  # DT_UNKNOWN (0) or DT_BINARY (1)
        raise InputError(
            f"The NIfTI header names datatype code {code}, which has no voxel type: the header is corrupt "
            "or the volume is binary (1-bit), which this app does not support."
        )
    if dtype.kind not in "biuf" or dtype.itemsize > 16:
        raise InputError(f"NIfTI data type {dtype} is not supported. Save the volume as integers or floats.")
    x, y, z = (*shape, 1)[:3]
    voxels = x * y * z
    n_volumes = math.prod(shape[3:]) if ndim > 3 else 1
    if voxels > MAX_VOLUME_VOXELS:
        raise InputError(
            f"The NIfTI volume is too large: {x} x {y} x {z} is {voxels / 1e6:.0f} M voxels "
            f"(the limit is {MAX_VOLUME_VOXELS / 1e6:.0f} M). Crop or downsample it."
        )
    largest_plane = max(x * y, x * z, y * z)
    if largest_plane > MAX_IMAGE_PIXELS:
        raise InputError(
            f"The NIfTI volume's slices are too large ({x} x {y} x {z}: a plane of "
            f"{_megapixels(largest_plane)} megapixels; the limit is {MAX_IMAGE_PIXELS // 1_000_000}). Downsample it."
        )
    vox_offset = float(header["vox_offset"])
    if not np.isfinite(vox_offset) or vox_offset < 0:
        raise InputError("The NIfTI header is corrupt: its data offset (vox_offset) is not a position in the file.")
    offset = max(int(vox_offset), _NIFTI1_MIN_OFFSET)  # 0 means unset, as nibabel reads it
    end = offset + voxels * dtype.itemsize
    if gzipped and end > MAX_GUNZIP_BYTES:
        raise InputError(
            f"The NIfTI volume would inflate to {end / 2**30:.2f} GB ({x} x {y} x {z} voxels of {dtype.name} "
            f"at byte {offset}); the most this app reads from a .nii.gz is {MAX_GUNZIP_BYTES / 2**30:.0f} GB."
        )
    if stored_bytes is not None and end > stored_bytes:
        raise InputError(
            f"The NIfTI file is truncated: its header declares {x} x {y} x {z} voxels of {dtype.name} "
            f"({end / 1e6:.1f} MB with the header), but the file holds {stored_bytes / 1e6:.1f} MB."
        )
    try:
        slope, inter = header.get_slope_inter()
    except Exception as err:
        raise InputError("The NIfTI header's scaling (scl_slope / scl_inter) is invalid: it is corrupt.") from err
    notes: list[str] = []
    if n_volumes > 1:
        notes.append(f"{ndim}-D file with {n_volumes} volumes; showing the first")
    affine = _nifti_affine(header, notes)
    ornt = io_orientation(affine)
    if np.any(np.isnan(ornt)):
        raise InputError("The NIfTI header's orientation is degenerate: it is corrupt.")
    units = header.get_xyzt_units()[0]
    factor = {"meter": 1000.0, "micron": 0.001}.get(units, 1.0)
    if units == "unknown":
        notes.append("voxel size units not stated; assumed mm")
    norms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0)) * factor
    spacing = [1.0, 1.0, 1.0]
    for i in range(3):
        spacing[int(ornt[i, 0])] = float(norms[i])
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"The NIfTI voxel size is invalid. Received: spacing={tuple(spacing)}.")
    return _NiftiLayout(
        stored_shape=(x, y, z),
        dtype=dtype,
        offset=offset,
        slope=1.0 if slope is None else float(slope),
        inter=0.0 if inter is None else float(inter),
        ornt=ornt,
        spacing_mm=(spacing[0], spacing[1], spacing[2]),
        notes=tuple(notes),
    )


def _stored_blocks(shape: tuple[int, int, int]) -> Iterator[tuple[tuple[tuple[int, int], ...], int]]:
    """Contiguous blocks of about ``BLOCK_VALUES`` voxels, in file order: (ranges, first flat index)."""
    x, y, z = shape
    if x * y <= BLOCK_VALUES:
        step = max(1, BLOCK_VALUES // (x * y))
        for z0 in range(0, z, step):
            yield ((0, x), (0, y), (z0, min(z, z0 + step))), x * y * z0
    else:
        step = max(1, BLOCK_VALUES // x)
        for z0 in range(z):
            for y0 in range(0, y, step):
                yield ((0, x), (y0, min(y, y0 + step)), (z0, z0 + 1)), x * (y0 + y * z0)


def _open_nifti(data: bytes) -> tuple[io.BytesIO | _Gunzip, _NiftiLayout]:
    gzipped = data[:2] == b"\x1f\x8b"
    stream = _Gunzip(data, MAX_GUNZIP_BYTES) if gzipped else io.BytesIO(data)
    header = _nifti_header(stream.read(_NIFTI1_HEADER))
    return stream, _nifti_layout(header, None if gzipped else len(data), gzipped)


def _place(
    out: np.ndarray,
    block: np.ndarray,
    ranges: tuple[tuple[int, int], ...],
    layout: _NiftiLayout,
    axial_stored: tuple[int, int] | None,
) -> None:
    """Writes a stored-order block into ``out`` (RAS order), reoriented by the affine.

    With ``axial_stored`` = (stored axis, index), ``out`` holds that one axial
    slice (RAS shape (X, Y, 1)) and only the block's part in it is written.
    """
    target = [slice(None)] * 3
    for i in range(3):
        lo, hi = ranges[i]
        n = layout.stored_shape[i]
        target[int(layout.ornt[i, 0])] = slice(lo, hi) if layout.ornt[i, 1] > 0 else slice(n - hi, n - lo)
    if axial_stored is not None:
        axis, index = axial_stored
        lo, hi = ranges[axis]
        if not lo <= index < hi:
            return
        block = block[(slice(None),) * axis + (slice(index - lo, index - lo + 1),)]
        target[2] = slice(0, 1)
    out[tuple(target)] = apply_orientation(block, layout.ornt)


def _stream_nifti(
    stream: io.BytesIO | _Gunzip, layout: _NiftiLayout, axial: int | None
) -> tuple[np.ndarray, tuple[float, float]]:
    """Reads the first volume block by block: the whole RAS volume, or one axial slice of it.

    Every block also feeds the volume-wide statistics (a strided sample for
    the window, the finite range for the blank check), so the slice and the
    volume get the same default window.
    """
    proxy = ArrayProxy(
        stream, (layout.stored_shape, layout.dtype, layout.offset, layout.slope, layout.inter), mmap=False
    )
    rx, ry, rz = layout.ras_shape
    axial_stored = None
    # Fortran order, as the file: a stored RAS+ block is then one contiguous copy.
    if axial is None:
        out = np.empty((rx, ry, rz), np.float32, order="F")
    else:
        out = np.empty((rx, ry, 1), np.float32, order="F")
        axis = int(np.flatnonzero(layout.ornt[:, 0] == 2)[0])
        axial_stored = (axis, axial if layout.ornt[axis, 1] > 0 else rz - 1 - axial)
    stride = max(1, math.ceil(math.prod(layout.stored_shape) / SAMPLE_VALUES))
    samples: list[np.ndarray] = []
    lo, hi = math.inf, -math.inf
    for ranges, start in _stored_blocks(layout.stored_shape):
        try:
            block = np.asarray(proxy[tuple(slice(a, b) for a, b in ranges)], dtype=np.float32)
        except (InputError, MemoryError):
            raise
        except Exception as err:  # nibabel: "Whoops, not enough data in file", a bad dtype...
            raise InputError(
                "The NIfTI voxel data are truncated or corrupt: the file ends before the volume its "
                "header declares. Export it again."
            ) from err
        flat = block.ravel(order="F")  # file order, so the sample does not depend on the blocks
        sample = flat[(-start) % stride :: stride]
        block_lo, block_hi = float(flat.min()), float(flat.max())
        if math.isfinite(block_lo) and math.isfinite(block_hi):
            samples.append(sample.copy())
        else:  # NaN or inf in this block: only finite values count
            samples.append(sample[np.isfinite(sample)])
            finite = flat[np.isfinite(flat)]
            block_lo, block_hi = (float(finite.min()), float(finite.max())) if finite.size else (lo, hi)
            del finite
        lo, hi = min(lo, block_lo), max(hi, block_hi)
        _place(out, block, ranges, layout, axial_stored)
    if not lo < hi:
        raise InputError("The NIfTI volume is blank: every voxel has the same value.")
    return out, _window_from_percentiles(np.concatenate(samples))


def _nifti_meta(layout: _NiftiLayout) -> dict[str, str]:
    meta = {"format": "NIfTI", "pixel_spacing_mm": " x ".join(f"{s:g}" for s in layout.spacing_mm)}
    if layout.notes:
        meta["note"] = "; ".join(layout.notes)
    return meta


def _read_nifti_slice(data: bytes, *, frame: int | None, window: tuple[float, float] | None) -> Scan:
    stream, layout = _open_nifti(data)
    rx, ry, rz = layout.ras_shape
    index = rz // 2 if frame is None else frame
    _check_slice_index(index, "axial", rz)
    _check_dimensions((rx, ry), "NIfTI axial slice")
    out, default_window = _stream_nifti(stream, layout, int(index))
    used = default_window if window is None else window
    return _plane_scan(out[:, :, 0], "axial", int(index), rz, layout.spacing_mm, _nifti_meta(layout), used)


def _read_nifti_volume(data: bytes) -> Volume:
    stream, layout = _open_nifti(data)
    out, default_window = _stream_nifti(stream, layout, None)
    out.setflags(write=False)  # kept in file (Fortran) order: a C-order copy would double the peak
    return Volume(data=out, spacing_mm=layout.spacing_mm, meta=_nifti_meta(layout), default_window=default_window)


def _plane_axis(plane: str) -> int:
    if plane not in PLANES:
        raise InputError(f"plane must be one of {PLANES}. Received: plane={plane!r}.")
    # RAS+ axes: x (sagittal slices), y (coronal), z (axial).
    return {"sagittal": 0, "coronal": 1, "axial": 2}[plane]


def _check_slice_index(index: object, plane: str, n: int) -> None:
    if not isinstance(index, (int, np.integer)) or not 0 <= index < n:
        raise InputError(f"Slice {index!r} is out of range: the {plane} plane has {n} slices, numbered 0 to {n - 1}.")


def _plane_scan(
    plane_data: np.ndarray,
    plane: str,
    index: int,
    n: int,
    spacing_mm: tuple[float, float, float],
    meta: dict[str, str],
    window: tuple[float, float],
) -> Scan:
    # In RAS+ every plane is displayed as transpose + flip of both axes:
    # rows run from superior (or anterior) down, columns from the
    # patient's right (or anterior) across.
    upright = plane_data.T[::-1, ::-1]
    sx, sy, sz = spacing_mm
    spacing, orientation = {
        "axial": ((sy, sx), ("L", "P")),
        "coronal": ((sz, sx), ("L", "I")),
        "sagittal": ((sz, sy), ("P", "I")),
    }[plane]
    gray = _apply_window(upright, window)
    meta = dict(meta)
    meta.update(plane=plane, frame=f"{index + 1} of {n}", window=_format_window(window))
    return Scan(
        rgb=_readonly(_gray_to_rgb(gray)),
        pixel_spacing_mm=(float(spacing[0]), float(spacing[1])),
        orientation=orientation,
        kind="nifti",
        meta=meta,
        n_frames=int(n),
        window=window,
    )


__all__ = [
    "SAFE_META_KEYS",
    "Scan",
    "Volume",
    "read_image",
    "read_scan",
    "read_volume",
]
