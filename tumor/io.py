"""Reading uploads: plain images, DICOM slices and NIfTI volumes.

Everything is decoded from bytes in memory; nothing is written to disk or
logged. Every failure a person can cause raises ``InputError`` with a message
that says what was wrong. DICOM headers are read only for display fields on an
allowlist (``SAFE_META_KEYS``); patient-identifying fields are never copied.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
import zlib
from dataclasses import dataclass, field

import nibabel
import numpy as np
import pydicom
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut

from tumor.errors import InputError

# Limits and conventions, gathered here.
MAX_IMAGE_PIXELS = 50_000_000  # refuse larger images (decompression bombs)
MAX_IMAGE_BYTES = 40 * 1024 * 1024  # largest accepted plain image file
MAX_SCAN_BYTES = 200 * 1024 * 1024  # largest accepted DICOM / NIfTI file
MAX_VOLUME_BYTES = 1024 * 1024 * 1024  # largest NIfTI after gunzip
IMAGE_PERCENTILES = (1.0, 99.5)  # window for 16-bit and float images
SCAN_PERCENTILES = (1.0, 99.0)  # window for DICOM / NIfTI without a header one
PLANES = ("axial", "coronal", "sagittal")

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

_LPS_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))  # (+axis, -axis) of X, Y, Z


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
        data: read-only float32 array (X, Y, Z); +X points to the patient's
            right, +Y anterior, +Z superior.
        spacing_mm: (x, y, z) voxel size in millimetres.
        meta: non-identifying display fields, keys from ``SAFE_META_KEYS``.
        default_window: (center, width) from the volume-wide 1st-99th
            percentiles, used when a slice is asked for without a window.
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
        if not isinstance(index, (int, np.integer)) or not 0 <= index < n:
            raise InputError(
                f"Slice {index!r} is out of range: the {plane} plane has {n} slices, numbered 0 to {n - 1}."
            )
        plane_data = np.take(self.data, int(index), axis=axis)
        # In RAS+ every plane is displayed as transpose + flip of both axes:
        # rows run from superior (or anterior) down, columns from the
        # patient's right (or anterior) across.
        upright = plane_data.T[::-1, ::-1]
        sx, sy, sz = self.spacing_mm
        spacing, orientation = {
            "axial": ((sy, sx), ("L", "P")),
            "coronal": ((sz, sx), ("L", "I")),
            "sagittal": ((sz, sy), ("P", "I")),
        }[plane]
        used = _check_window(window) if window is not None else self.default_window
        gray = _apply_window(upright, used)
        meta = dict(self.meta)
        meta.update(
            plane=plane,
            frame=f"{index + 1} of {n}",
            window=_format_window(used),
        )
        return Scan(
            rgb=_readonly(np.repeat(gray[:, :, None], 3, axis=2)),
            pixel_spacing_mm=(float(spacing[0]), float(spacing[1])),
            orientation=orientation,
            kind="nifti",
            meta=meta,
            n_frames=int(n),
            window=used,
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
    return _decode_image(data)


def read_scan(
    source: str | os.PathLike | bytes,
    *,
    name: str | None = None,
    frame: int | None = None,
    window: tuple[float, float] | None = None,
) -> Scan:
    """Reads an image, a DICOM slice or one axial slice of a NIfTI volume.

    DICOM is recognised by the ``DICM`` marker at byte 128, NIfTI by a
    ``.nii``/``.nii.gz`` name or its header magic; anything else is decoded as
    an image.

    Args:
        source: a file path or the file's bytes.
        name: the original file name, used only to recognise NIfTI; taken
            from ``source`` when it is a path.
        frame: DICOM frame or NIfTI axial slice to show; defaults to the first
            DICOM frame and the middle NIfTI slice.
        window: (center, width) overriding the DICOM header / percentile
            window, in modality units (ignored for plain images).

    Returns:
        A ``Scan``; its ``rgb`` is read-only uint8 (H, W, 3).

    Raises:
        InputError: the file cannot be read or shown (see ``read_image``),
            the frame is out of range, the DICOM has no pixel data or uses a
            compression that cannot be decoded here.
    """
    if name is None and not isinstance(source, (bytes, bytearray, memoryview)):
        name = os.fspath(source)
    data = _read_bytes(source, MAX_SCAN_BYTES)
    if window is not None:
        window = _check_window(window)
    if _is_dicom(data):
        return _read_dicom(data, frame=0 if frame is None else frame, window=window)
    if _looks_like_nifti(data, name):
        volume = _volume_from_bytes(data)
        n = volume.n_slices("axial")
        return volume.slice(n // 2 if frame is None else frame, "axial", window)
    if len(data) > MAX_IMAGE_BYTES:
        raise InputError(_too_large_message(len(data), MAX_IMAGE_BYTES))
    if frame not in (None, 0):
        raise InputError(f"A plain image has a single frame; frame={frame!r} does not exist.")
    rgb = _decode_image(data)
    return Scan(rgb=_readonly(rgb), kind="image", meta={"format": "image"})


def read_volume(source: str | os.PathLike | bytes, name: str | None = None) -> Volume:
    """Reads a NIfTI-1 volume (``.nii`` or ``.nii.gz``) from memory.

    Args:
        source: a file path or the file's bytes.
        name: the original file name (optional; the header magic suffices).

    Returns:
        A ``Volume`` reoriented to RAS+; a 4-D file yields its first volume
        with a note in ``meta``.

    Raises:
        InputError: the bytes are not a readable NIfTI-1 volume.
    """
    if name is None and not isinstance(source, (bytes, bytearray, memoryview)):
        name = os.fspath(source)
    data = _read_bytes(source, MAX_SCAN_BYTES)
    if _is_dicom(data):
        raise InputError("This is a DICOM file, not a NIfTI volume; open it as a scan instead.")
    if not _looks_like_nifti(data, name):
        raise InputError("This file is not a NIfTI-1 volume (no 'n+1' header magic). Upload a .nii or .nii.gz file.")
    return _volume_from_bytes(data)


# --- bytes --------------------------------------------------------------------


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


# --- plain images -----------------------------------------------------------------


def _decode_image(data: bytes) -> np.ndarray:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        # Refuse a bomb from its header, before any decoder allocates memory.
        _check_dimensions((int.from_bytes(data[16:20]), int.from_bytes(data[20:24])))
    if data[:5] == b"%PDF-":
        raise InputError("This is a PDF document, not an image. Upload a PNG, JPEG or TIFF.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_dimensions(img.size)
            img.seek(0)
            img.load()
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise InputError(
            f"The image is too large to open safely (over {MAX_IMAGE_PIXELS // 1_000_000} "
            "megapixels). Export it at a smaller size."
        ) from err
    except UnidentifiedImageError as err:
        raise InputError(
            "The file is not an image this app can read. Upload a PNG, JPEG, TIFF, "
            "DICOM (.dcm) or NIfTI (.nii/.nii.gz) file."
        ) from err
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError...
        raise InputError(
            "The image could not be decoded: the file is corrupt or truncated. Upload the original file again."
        ) from err
    # A broken EXIF block should not reject an otherwise good image.
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError, SyntaxError):
        img = ImageOps.exif_transpose(img)
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


MIN_SIDE = 16  # smaller than this is a thumbnail or an icon, not a slice
NEAR_BLACK_MAX = 8  # an 8-bit image whose brightest value is below this shows no anatomy


def _check_dimensions(size: tuple[int, int]) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InputError(f"The image has no pixels (size {width}x{height}).")
    if min(width, height) < MIN_SIDE:
        raise InputError(
            f"The image is too small to analyse ({width}x{height} pixels; at least "
            f"{MIN_SIDE} pixels a side are needed). Upload the slice at its original size."
        )
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(
            f"The image is too large ({width}x{height} pixels; the limit is "
            f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels). Export it at a smaller size."
        )


def _robust_to_uint8(values: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape, np.uint8)
    lo, hi = np.percentile(finite, percentiles)
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    scaled = (np.nan_to_num(values, nan=lo) - lo) / (hi - lo)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


def _is_png_16bit_colour(data: bytes) -> bool:
    # IHDR: bit depth at byte 24, colour type at byte 25 (2 = RGB, 6 = RGBA).
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 25 and data[24] == 16 and data[25] in (2, 6)


def _pil_to_rgb(img: Image.Image, data: bytes) -> np.ndarray:
    if _is_png_16bit_colour(data):
        # Pillow truncates 16-bit colour PNGs to 8 bits; OpenCV keeps them.
        import cv2

        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if decoded is not None and decoded.ndim == 3 and decoded.dtype == np.uint16:
            rgb16 = decoded[:, :, 2::-1].astype(np.float64)
            if decoded.shape[2] == 4:
                rgb16 = rgb16 * (decoded[:, :, 3:4] / 65535.0)
            return _robust_to_uint8(rgb16, IMAGE_PERCENTILES)
    mode = img.mode
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        gray = _robust_to_uint8(np.asarray(img), IMAGE_PERCENTILES)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        rgb = rgba[:, :, :3] * (rgba[:, :, 3:4] / 255.0)
        return np.round(rgb).astype(np.uint8)
    if mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8)


# --- DICOM -------------------------------------------------------------------------


def _is_dicom(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


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


def _percentile_window(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.5, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, SCAN_PERCENTILES))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        return lo, 1.0
    return (lo + hi) / 2.0, hi - lo


def _apply_window(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    center, width = window
    lo = center - width / 2.0
    scaled = (np.nan_to_num(values.astype(np.float64), nan=lo) - lo) / width
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)


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


def _read_dicom(data: bytes, *, frame: int, window: tuple[float, float] | None) -> Scan:
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except Exception as err:
        raise InputError("The DICOM file could not be read: it is corrupt or truncated. Export it again.") from err
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InputError(
            "The DICOM file has no pixel data (it may be a report, a structured document "
            "or a header-only file). Upload an image series file."
        )
    n_frames = int(_first_number(ds.get("NumberOfFrames", 1)) or 1)
    if not isinstance(frame, (int, np.integer)) or not 0 <= frame < n_frames:
        raise InputError(
            f"Frame {frame!r} is out of range: this DICOM has {n_frames} frame(s), numbered 0 to {n_frames - 1}."
        )
    transfer_syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        pixels = ds.pixel_array
    except Exception as err:
        if transfer_syntax is not None and transfer_syntax.is_compressed:
            raise InputError(
                f"The DICOM pixel data is compressed with transfer syntax "
                f"'{transfer_syntax.name}' ({transfer_syntax}), which this app cannot "
                "decode. Export the series uncompressed (Explicit VR Little Endian)."
            ) from err
        raise InputError("The DICOM pixel data could not be decoded: it is corrupt or truncated.") from err
    samples = int(_first_number(ds.get("SamplesPerPixel", 1)) or 1)
    if n_frames > 1:
        pixels = pixels[frame]
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    used_window: tuple[float, float] | None = None
    if samples == 1 and pixels.ndim == 2:
        values = apply_modality_lut(pixels, ds).astype(np.float64)
        if np.nanmax(values) == np.nanmin(values):
            raise InputError(
                f"The image is blank: every pixel of frame {frame} has the value "
                f"{float(values.flat[0]):g}. Choose another frame or series."
            )
        if window is not None:
            used_window = window
        else:
            center = _first_number(ds.get("WindowCenter"))
            width = _first_number(ds.get("WindowWidth"))
            if center is not None and width is not None and width > 0:
                used_window = (center, width)
            else:
                used_window = _percentile_window(values)
        gray = _apply_window(values, used_window)
        if photometric == "MONOCHROME1":
            gray = 255 - gray
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
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
    spacing = _spacing_from(ds.get("PixelSpacing"))
    meta = {"format": "DICOM"}
    if "Modality" in ds:
        meta["modality"] = _short_text(ds.Modality, 16)
    if "SeriesDescription" in ds:
        meta["series_description"] = _short_text(ds.SeriesDescription)
    thickness = _first_number(ds.get("SliceThickness"))
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
        rgb=_readonly(rgb.astype(np.uint8)),
        pixel_spacing_mm=spacing,
        orientation=_orientation_from_iop(ds.get("ImageOrientationPatient")),
        kind="dicom",
        meta=meta,
        n_frames=n_frames,
        window=used_window,
    )


# --- NIfTI -------------------------------------------------------------------------


def _gunzip(data: bytes, limit: int) -> bytes:
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decompressor.decompress(data, limit + 1)
    except zlib.error as err:
        raise InputError("The .gz file is corrupt or truncated. Upload it again.") from err
    if len(out) > limit:
        raise InputError(f"The volume is too large once decompressed (over {limit / 2**30:.0f} GB).")
    return out


def _nifti_magic(header: bytes) -> bool:
    return len(header) >= 348 and header[344:348] in (b"n+1\x00", b"ni1\x00")


def _looks_like_nifti(data: bytes, name: str | None) -> bool:
    lowered = (name or "").lower()
    if lowered.endswith((".nii", ".nii.gz")):
        return True
    if _nifti_magic(data):
        return True
    if data[:2] == b"\x1f\x8b":
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data, 348)
        except zlib.error:
            return False
        return _nifti_magic(head)
    return False


def _volume_from_bytes(data: bytes) -> Volume:
    raw = _gunzip(data, MAX_VOLUME_BYTES) if data[:2] == b"\x1f\x8b" else data
    if len(raw) >= 348 and raw[344:348] == b"ni1\x00":
        raise InputError("This is a two-file NIfTI header (.hdr/.img pair); upload a single .nii or .nii.gz file.")
    try:
        img = nibabel.Nifti1Image.from_bytes(raw)
        canonical = nibabel.as_closest_canonical(img)
        shape = canonical.shape
        notes = []
        proxy = canonical.dataobj
        if len(shape) < 2 or len(shape) > 7:
            raise InputError(f"A NIfTI volume needs 3 dimensions. Received: shape={shape}.")
        if len(shape) > 3:
            extra = int(np.prod(shape[3:]))
            if extra > 1:
                notes.append(f"{len(shape)}-D file with {extra} volumes; showing the first")
            volume = np.asarray(proxy[(slice(None),) * 3 + (0,) * (len(shape) - 3)])
        else:
            volume = np.asarray(proxy)
        if volume.ndim == 2:
            volume = volume[:, :, None]
        volume = volume.astype(np.float32)
        zooms = tuple(float(z) for z in canonical.header.get_zooms()[:3])
        zooms = zooms + (1.0,) * (3 - len(zooms))
        units = canonical.header.get_xyzt_units()[0]
    except InputError:
        raise
    except Exception as err:
        raise InputError("The NIfTI file could not be read: it is corrupt, truncated or not NIfTI-1.") from err
    if 0 in volume.shape:
        raise InputError(f"The NIfTI volume has no voxels. Received: shape={volume.shape}.")
    factor = {"meter": 1000.0, "micron": 0.001}.get(units, 1.0)
    if units == "unknown":
        notes.append("voxel size units not stated; assumed mm")
    spacing = tuple(z * factor for z in zooms)
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"The NIfTI voxel size is invalid. Received: zooms={zooms}.")
    finite = volume[np.isfinite(volume)]
    if finite.size == 0 or finite.max() == finite.min():
        raise InputError("The NIfTI volume is blank: every voxel has the same value.")
    meta = {
        "format": "NIfTI",
        "pixel_spacing_mm": " x ".join(f"{s:g}" for s in spacing),
    }
    if notes:
        meta["note"] = "; ".join(notes)
    return Volume(
        data=_readonly(volume),
        spacing_mm=spacing,  # type: ignore[arg-type]
        meta=meta,
        default_window=_percentile_window(volume),
    )


def _plane_axis(plane: str) -> int:
    if plane not in PLANES:
        raise InputError(f"plane must be one of {PLANES}. Received: plane={plane!r}.")
    # RAS+ axes: x (sagittal slices), y (coronal), z (axial).
    return {"sagittal": 0, "coronal": 1, "axial": 2}[plane]


__all__ = [
    "SAFE_META_KEYS",
    "Scan",
    "Volume",
    "read_image",
    "read_scan",
    "read_volume",
]
