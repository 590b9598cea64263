"""Batch scoring: ``python -m tumor.batch INPUT [INPUT ...] --out DIR``.

The same ``Pipeline`` the app runs, over files, folders (walked recursively) and
``.zip`` / ``.tar(.gz)`` archives of plain images, DICOM files (with or without
an extension) and NIfTI volumes, on Ray Data: on this machine's cores by default,
on a Ray cluster with ``--address``.

The data flow, one way:

1. The driver walks the inputs into a manifest of slices: DICOM files grouped by
   SeriesInstanceUID and ordered by ImagePositionPatient (else InstanceNumber),
   NIfTI volumes swept along ``--plane`` with the slice count from the header.
   Items already in DIR are dropped (``--resume``).
2. Ray Data gets one row per file. Reader tasks decode each file into its slices
   with ``tumor.io`` (so a bad file gets the app's own ``InputError`` text, as an
   error row); an actor pool, one ``Pipeline`` per actor, scores them.
3. The driver writes the rows as they arrive, as Parquet parts under
   ``DIR/slices/`` (never rewritten; an interrupted run keeps what it wrote), then
   ``DIR/volumes.parquet``, the ``--csv`` copies and the ``--dicom-seg`` objects.

Ray is imported inside functions only: the app imports nothing from here.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import os
import sys
import tarfile
import time
import uuid
import warnings
import zipfile
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tumor.errors import InputError

# The pipeline's class order (tumor.models.CLASS_NAMES), written out so that the
# driver never imports Keras; the scorer checks every analysis against it.
CLASS_NAMES: tuple[str, ...] = ("no_tumor", "glioma", "meningioma", "pituitary")
PLANES = ("axial", "coronal", "sagittal")
PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}  # RAS+ axis each plane's slices run along

# Walk, resources and output, gathered here.
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
MAX_MEMBER_BYTES = 200 * 1024 * 1024  # an archive member larger than this is an error row, never read whole
HEAD_BYTES = 64 * 1024  # enough to classify a file and read a NIfTI header, even gzipped
READER_CPUS = 1.0  # CPUs left free for the reader tasks: actors holding every CPU hang Ray Data
READER_TASK_CPUS = 0.25  # per reader task, so several read at once on the spare core
UNITS_PER_BLOCK = 8  # files per reader task
DEFAULT_BATCH_SIZE = 8  # slices per scorer call: small, so that actors share the work evenly
FLUSH_ROWS = 64  # rows per Parquet part
FLUSH_SECONDS = 30.0  # or fewer, when slices come slowly
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TUMOR_NUM_THREADS",  # read by the compiled runtime
)
DICOM_HEADER_TAGS = (
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "NumberOfFrames",
    "SliceThickness",
    "SpacingBetweenSlices",
)

SLICE_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("input", pa.string()),
        ("member", pa.string()),
        ("kind", pa.string()),
        ("series_uid", pa.string()),
        ("sop_instance_uid", pa.string()),
        ("plane", pa.string()),
        ("slice_index", pa.int64()),
        ("frame", pa.int64()),
        ("status", pa.string()),
        ("error_type", pa.string()),
        ("error_message", pa.string()),
        *[(f"p_{name}", pa.float64()) for name in CLASS_NAMES],
        ("p_tumor", pa.float64()),
        ("predicted_class", pa.string()),
        ("tumor_detected", pa.bool_()),
        ("tumor_area_px", pa.int64()),
        ("tumor_area_mm2", pa.float64()),
        ("slice_spacing_mm", pa.float64()),
        ("mask_threshold", pa.float64()),
        ("mask_rle", pa.string()),
        ("model_version", pa.string()),
        ("weights_sha256", pa.string()),
        ("elapsed_ms", pa.float64()),
    ]
)
SLICE_COLUMNS = tuple(SLICE_SCHEMA.names)


# --- run-length encoding ------------------------------------------------------------


def rle_encode(mask: np.ndarray) -> str:
    """Run-length encodes a boolean mask as ``"HxW:n0 n1 n2 ..."``.

    The runs alternate background and tumour, row-major (C order), starting
    with background (so an all-tumour mask starts with 0).
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"Expected a 2-D mask. Received: shape={mask.shape}")
    flat = mask.ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return f"{mask.shape[0]}x{mask.shape[1]}:" + " ".join(str(r) for r in runs)


def rle_decode(text: str) -> np.ndarray:
    """The boolean mask of an ``rle_encode`` string."""
    try:
        shape_text, runs_text = text.split(":", 1)
        height, width = (int(v) for v in shape_text.split("x"))
        runs = np.array([int(v) for v in runs_text.split()], dtype=np.int64)
    except ValueError as err:
        raise ValueError(f"Not a mask RLE ('HxW:runs'). Received: {text[:40]!r}") from err
    if runs.sum() != height * width or (runs < 0).any():
        raise ValueError(f"The runs cover {runs.sum()} pixels, not {height}x{width}. Received: {text[:40]!r}")
    values = np.arange(runs.size) % 2 == 1
    return np.repeat(values, runs).reshape(height, width)


# --- the manifest ---------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One slice to score.

    Attributes:
        item_id: stable id, ``item_id(input, member, index, plane)``.
        input: absolute path of the file or of the archive holding it.
        member: the member's name inside the archive, None for a plain file.
        kind: "image", "dicom" or "nifti".
        index: the slice within its file: DICOM frame, NIfTI slice along
            ``plane``, 0 for an image.
        slice_index: the slice within its series (DICOM) or volume (NIfTI).
        series_uid: SeriesInstanceUID (DICOM only).
        sop_instance_uid: SOPInstanceUID (DICOM only).
        plane: the sweep plane (NIfTI only).
        slice_spacing_mm: distance between slices when known (DICOM series).
        n_slices: the slices the manifest expects in this file (NIfTI).
        error: set when the walk itself could not read the file (an archive).
    """

    item_id: str
    input: str
    member: str | None
    kind: str
    index: int = 0
    slice_index: int = 0
    series_uid: str | None = None
    sop_instance_uid: str | None = None
    plane: str | None = None
    slice_spacing_mm: float | None = None
    n_slices: int = 1
    error: str | None = None

    @property
    def source_key(self) -> tuple[str, str | None]:
        return self.input, self.member


@dataclass
class Manifest:
    """The slices of a walk, and the bytes of the archive members among them.

    Archive members are read once, by the driver, while it walks the archive (a
    ``.tar.gz`` cannot be read member by member out of order); plain files are
    read by the reader tasks from their path.
    """

    items: list[Item] = field(default_factory=list)
    blobs: dict[tuple[str, str | None], bytes] = field(default_factory=dict)


def item_id(input_path: str, member: str | None, index: int, plane: str | None = None) -> str:
    """A stable id for one slice: a hash of the input path, archive member and slice index.

    The plane joins the hash for NIfTI slices, so that a sweep along another
    plane is scored anew rather than skipped by ``--resume``.
    """
    parts = [input_path, member or "", str(int(index))]
    if plane is not None:
        parts.append(plane)
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:24]


def _is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _hidden(name: str) -> bool:
    return any(part.startswith(".") or part == "__MACOSX" for part in Path(name).parts)


def _walk_archive(path: str) -> Iterator[tuple[str, str | None, bytes | None, str | None]]:
    """(archive, member, bytes, error) for each file in a zip or tar archive."""
    name = os.path.basename(path)
    try:
        if path.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                for info in sorted(zf.infolist(), key=lambda i: i.filename):
                    if info.is_dir() or _hidden(info.filename):
                        continue
                    if info.file_size > MAX_MEMBER_BYTES:
                        yield path, info.filename, None, _member_too_large(info.file_size)
                        continue
                    try:
                        with zf.open(info) as f:
                            data = f.read(MAX_MEMBER_BYTES + 1)
                    except (zipfile.BadZipFile, OSError, EOFError, zlib.error, RuntimeError) as err:
                        yield path, info.filename, None, f"The archive member could not be read: {err}."
                        continue
                    yield path, info.filename, data, None
        else:
            with tarfile.open(path, "r:*") as tf:
                for info in tf:
                    if not info.isfile() or _hidden(info.name):
                        continue
                    if info.size > MAX_MEMBER_BYTES:
                        yield path, info.name, None, _member_too_large(info.size)
                        continue
                    f = tf.extractfile(info)
                    yield path, info.name, f.read(MAX_MEMBER_BYTES + 1) if f else b"", None
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, zlib.error) as err:
        yield path, None, None, f"The archive {name!r} could not be read: it is corrupt or truncated ({err})."


def _member_too_large(size: int) -> str:
    return f"The archive member is too large ({size / 2**20:.1f} MB; the limit is {MAX_MEMBER_BYTES / 2**20:.0f} MB)."


def walk_inputs(inputs: Iterable[str | os.PathLike]) -> Iterator[tuple[str, str | None, bytes | None, str | None]]:
    """(input, member, bytes, error) for every file under ``inputs``.

    Folders are walked recursively in name order, skipping hidden files and
    folders; ``.zip`` / ``.tar(.gz)`` archives are opened; an archive inside an
    archive is an error row. ``bytes`` is set for archive members only.

    Raises:
        InputError: an input does not exist.
    """
    for raw in inputs:
        path = os.path.abspath(os.fspath(raw))
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for fname in sorted(files):
                    if fname.startswith("."):
                        continue
                    full = os.path.join(root, fname)
                    if _is_archive(fname):
                        yield from _walk_archive(full)
                    else:
                        yield full, None, None, None
        elif os.path.isfile(path):
            if _is_archive(path):
                yield from _walk_archive(path)
            else:
                yield path, None, None, None
        else:
            raise InputError(f"No such file or folder: {os.fspath(raw)!r}.")


def _classify(head: bytes, name: str) -> str:
    # tumor.io's own rules, so that the reader sees the kind the walk saw.
    from tumor.io import sniff_kind

    return sniff_kind(head, name)


def _nifti_header_bytes(head: bytes) -> bytes | None:
    raw = head
    if head[:2] == b"\x1f\x8b":
        try:
            raw = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 348)
        except zlib.error:
            return None
    if len(raw) >= 348 and raw[344:348] in (b"n+1\x00", b"ni1\x00"):
        return raw[:348]
    return None


def nifti_slice_count(head: bytes, plane: str) -> int | None:
    """Slices along ``plane`` of a NIfTI-1 volume, from its header bytes; None when unreadable.

    Matches ``tumor.io.read_volume(...).n_slices(plane)``: the volume is
    reoriented to the closest RAS+ and a 4-D file keeps its first volume.
    """
    import nibabel
    from nibabel.orientations import io_orientation

    raw = _nifti_header_bytes(head)
    if raw is None or raw[344:348] != b"n+1\x00":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = nibabel.Nifti1Header(binaryblock=raw, check=False)
            shape = [int(s) for s in header.get_data_shape()]
            orientation = io_orientation(header.get_best_affine())
    except Exception:
        return None
    spatial = [*shape[:3], 1, 1, 1][:3]
    for axis in range(3):
        if not np.isnan(orientation[axis, 0]) and int(orientation[axis, 0]) == PLANE_AXIS[plane]:
            return spatial[axis]
    return None


@dataclass
class _DicomFile:
    input: str
    member: str | None
    series_uid: str | None
    sop_instance_uid: str | None
    n_frames: int
    instance_number: float | None
    position: np.ndarray | None
    normal: np.ndarray | None
    spacing_hint: float | None


def _numbers(value: object, n: int) -> np.ndarray | None:
    try:
        array = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.shape == (n,) and np.all(np.isfinite(array)) else None


def _number(value: object) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _dicom_file(input_path: str, member: str | None, source: str | bytes) -> _DicomFile:
    import pydicom

    blank = _DicomFile(input_path, member, None, None, 1, None, None, None, None)
    try:
        with warnings.catch_warnings():
            # pydicom's warnings can echo header values; nothing read is logged.
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(
                io.BytesIO(source) if isinstance(source, bytes) else source,
                stop_before_pixels=True,
                specific_tags=list(DICOM_HEADER_TAGS),
            )
    except Exception:
        return blank  # the reader's tumor.io call gives this file its error message
    iop = _numbers(ds.get("ImageOrientationPatient"), 6)
    normal = np.cross(iop[:3], iop[3:]) if iop is not None else None
    frames = _number(ds.get("NumberOfFrames", 1))
    spacing = _number(ds.get("SpacingBetweenSlices")) or _number(ds.get("SliceThickness"))
    uid = ds.get("SeriesInstanceUID")
    sop = ds.get("SOPInstanceUID")
    return _DicomFile(
        input=input_path,
        member=member,
        series_uid=str(uid) if uid else None,
        sop_instance_uid=str(sop) if sop else None,
        n_frames=max(1, int(frames)) if frames is not None else 1,
        instance_number=_number(ds.get("InstanceNumber")),
        position=_numbers(ds.get("ImagePositionPatient"), 3),
        normal=normal if normal is not None and np.linalg.norm(normal) > 0 else None,
        spacing_hint=spacing if spacing and spacing > 0 else None,
    )


def _order_series(files: list[_DicomFile]) -> tuple[list[_DicomFile], float | None]:
    """The files of one series in slice order, and the distance between slices (mm) when known."""
    normal = files[0].normal
    by_name = sorted(files, key=lambda f: (f.input, f.member or ""))
    if normal is not None and all(f.position is not None for f in files):
        depth = {id(f): float(np.dot(f.position, normal)) for f in files}
        ordered = sorted(by_name, key=lambda f: depth[id(f)])
        steps = np.diff([depth[id(f)] for f in ordered])
        steps = steps[np.abs(steps) > 1e-4]
        if steps.size:
            return ordered, float(np.median(np.abs(steps)))
        return ordered, files[0].spacing_hint
    if all(f.instance_number is not None for f in files):
        ordered = sorted(by_name, key=lambda f: f.instance_number)
    else:
        ordered = by_name
    return ordered, files[0].spacing_hint


def build_manifest(inputs: Iterable[str | os.PathLike], *, plane: str = "axial") -> Manifest:
    """Walks ``inputs`` into the slices to score (see ``walk_inputs``).

    Args:
        inputs: files, folders and archives.
        plane: the plane NIfTI volumes are swept along.

    Returns:
        The ``Manifest``: images, then DICOM series in slice order, NIfTI
        volumes slice by slice; files that cannot even be walked are items
        with ``error`` set.

    Raises:
        InputError: an input does not exist, or ``plane`` is unknown.
    """
    if plane not in PLANES:
        raise InputError(f"plane must be one of {PLANES}. Received: plane={plane!r}.")
    manifest = Manifest()
    dicoms: list[_DicomFile] = []
    seen: set[tuple[str, str | None]] = set()
    for input_path, member, data, error in walk_inputs(inputs):
        if (input_path, member) in seen:
            continue  # a file named twice (a folder and a file in it) is scored once
        seen.add((input_path, member))
        name = member or input_path
        if error is not None:
            manifest.items.append(Item(item_id(input_path, member, 0), input_path, member, "file", error=error))
            continue
        if member is not None and _is_archive(member):
            message = f"{member!r} is an archive inside an archive; unpack it and pass the inner archive."
            manifest.items.append(Item(item_id(input_path, member, 0), input_path, member, "file", error=message))
            continue
        if data is not None:
            head = data[:HEAD_BYTES]
            manifest.blobs[(input_path, member)] = data
        else:
            try:
                with open(input_path, "rb") as f:
                    head = f.read(HEAD_BYTES)
            except OSError:
                head = b""  # the reader's tumor.io call says why it cannot be read
        kind = _classify(head, name)
        if kind == "dicom":
            dicoms.append(_dicom_file(input_path, member, data if data is not None else input_path))
        elif kind == "nifti":
            manifest.items.extend(_nifti_items(input_path, member, head, data, plane))
        else:
            manifest.items.append(Item(item_id(input_path, member, 0), input_path, member, "image"))
    manifest.items.extend(_dicom_items(dicoms))
    return manifest


def _nifti_items(input_path: str, member: str | None, head: bytes, data: bytes | None, plane: str) -> list[Item]:
    n = nifti_slice_count(head, plane)
    if n is None:
        # No header to count from: the reader's read_volume call says why (or,
        # for a header this function does not parse, reads it and finds n).
        from tumor.io import read_volume

        try:
            n = read_volume(data if data is not None else input_path, name=member or input_path).n_slices(plane)
        except InputError:
            n = 1
    return [
        Item(item_id(input_path, member, i, plane), input_path, member, "nifti", i, i, plane=plane, n_slices=n)
        for i in range(n)
    ]


def _dicom_items(files: list[_DicomFile]) -> list[Item]:
    series: dict[str, list[_DicomFile]] = defaultdict(list)
    lone: list[_DicomFile] = []
    for f in files:
        (series[f.series_uid] if f.series_uid else lone).append(f)
    items = []
    for uid in sorted(series):
        ordered, spacing = _order_series(series[uid])
        position = 0
        for f in ordered:
            for frame in range(f.n_frames):
                items.append(
                    Item(
                        item_id(f.input, f.member, frame),
                        f.input,
                        f.member,
                        "dicom",
                        index=frame,
                        slice_index=position,
                        series_uid=uid,
                        sop_instance_uid=f.sop_instance_uid,
                        slice_spacing_mm=spacing,
                        n_slices=f.n_frames,
                    )
                )
                position += 1
    for f in sorted(lone, key=lambda f: (f.input, f.member or "")):
        items.extend(
            Item(item_id(f.input, f.member, frame), f.input, f.member, "dicom", frame, frame, n_slices=f.n_frames)
            for frame in range(f.n_frames)
        )
    return items


# --- resume -----------------------------------------------------------------------------


def slices_dir(out: str | os.PathLike) -> Path:
    """Where the slice rows live: ``DIR/slices/part-*.parquet``."""
    return Path(out) / "slices"


def done_item_ids(out: str | os.PathLike) -> set[str]:
    """The item_ids already written under ``out``."""
    folder = slices_dir(out)
    parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    done: set[str] = set()
    for part in parts:
        done.update(pq.read_table(part, columns=["item_id"]).column("item_id").to_pylist())
    return done


def pending_items(manifest: Manifest, done: set[str]) -> list[Item]:
    """The manifest's items not yet in ``done``, in manifest order."""
    return [item for item in manifest.items if item.item_id not in done]


def read_slices(out: str | os.PathLike) -> pa.Table:
    """Every slice row written under ``out``, all runs together."""
    folder = slices_dir(out)
    parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    if not parts:
        return SLICE_SCHEMA.empty_table()
    return pa.concat_tables([pq.read_table(p, schema=SLICE_SCHEMA) for p in parts])


# --- reading (Ray reader tasks) ------------------------------------------------------


def read_units(items: Sequence[Item], blobs: dict[tuple[str, str | None], bytes]) -> list[dict]:
    """One row per file for the reader tasks: its items (JSON) and, for archive members, its bytes."""
    grouped: dict[tuple[str, str | None], list[Item]] = {}
    for item in items:
        grouped.setdefault(item.source_key, []).append(item)
    return [
        {
            "input": key[0],
            "member": key[1],
            "kind": group[0].kind,
            "items": json.dumps([asdict(i) for i in group]),
            "data": blobs.get(key),
        }
        for key, group in grouped.items()
    ]


def _base_row(item: dict) -> dict:
    return {
        "item_id": item["item_id"],
        "input": item["input"],
        "member": item["member"],
        "kind": item["kind"],
        "series_uid": item["series_uid"],
        "sop_instance_uid": item["sop_instance_uid"],
        "plane": item["plane"],
        "slice_index": item["slice_index"],
        "frame": item["index"],
        "slice_spacing_mm": item["slice_spacing_mm"],
        "status": "ok",
        "error_type": None,
        "error_message": None,
        "rgb": None,
        "height": 0,
        "width": 0,
        "spacing_row": None,
        "spacing_col": None,
        "orientation": None,
    }


def _error_row(item: dict, error: BaseException | str, error_type: str = "InputError") -> dict:
    row = _base_row(item)
    row.update(
        status="error",
        error_type=type(error).__name__ if isinstance(error, BaseException) else error_type,
        error_message=str(error),
    )
    return row


def _scan_row(item: dict, scan) -> dict:
    row = _base_row(item)
    rgb = np.ascontiguousarray(scan.rgb, dtype=np.uint8)
    spacing = scan.pixel_spacing_mm
    row.update(
        rgb=rgb.tobytes(),
        height=int(rgb.shape[0]),
        width=int(rgb.shape[1]),
        spacing_row=float(spacing[0]) if spacing else None,
        spacing_col=float(spacing[1]) if spacing else None,
        orientation="".join(scan.orientation) if scan.orientation else None,
    )
    return row


def read_unit(unit: dict) -> list[dict]:
    """Decodes one file into its slices: a reader row per item, an error row where ``tumor.io`` refuses.

    Only ``InputError`` becomes an error row; anything else is a bug and fails
    the job.
    """
    from tumor.io import read_scan, read_volume

    items = json.loads(unit["items"])
    source = unit["data"] if unit["data"] is not None else unit["input"]
    name = unit["member"] or unit["input"]
    rows = []
    with warnings.catch_warnings():
        # Reader warnings can echo header values; nothing read is logged.
        warnings.simplefilter("ignore")
        if items[0]["error"] is not None:
            return [_error_row(item, items[0]["error"]) for item in items]
        if unit["kind"] == "nifti":
            try:
                volume = read_volume(source, name=name)
            except InputError as err:
                return [_error_row(item, err) for item in items]
            n = volume.n_slices(items[0]["plane"])
            if n != items[0]["n_slices"]:
                raise RuntimeError(
                    f"The manifest counted {items[0]['n_slices']} {items[0]['plane']} slices in {name!r}, "
                    f"the volume has {n}: nifti_slice_count disagrees with tumor.io."
                )
            spacing = float(volume.spacing_mm[PLANE_AXIS[items[0]["plane"]]])
            for item in items:
                try:
                    row = _scan_row(item, volume.slice(item["index"], plane=item["plane"]))
                except InputError as err:
                    row = _error_row(item, err)
                row["slice_spacing_mm"] = spacing
                rows.append(row)
            return rows
        for item in items:
            try:
                frame = item["index"] if unit["kind"] == "dicom" else None
                rows.append(_scan_row(item, read_scan(source, name=name, frame=frame)))
            except InputError as err:
                rows.append(_error_row(item, err))
    return rows


# --- scoring (Ray actors) ---------------------------------------------------------------


def thread_env(threads: int) -> dict[str, str]:
    """Environment variables that hold BLAS, OpenMP, TensorFlow and the runtime to ``threads`` threads."""
    env = {name: str(int(threads)) for name in THREAD_ENV_VARS}
    env["TF_NUM_INTEROP_THREADS"] = "1"  # one op at a time: a worker then uses ``threads`` cores, no more
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def set_threads(threads: int) -> None:
    """Holds this process to ``threads`` threads (environment, OpenCV, TensorFlow if already loaded)."""
    os.environ.update(thread_env(threads))
    import cv2

    cv2.setNumThreads(int(threads))
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # already initialised; the environment set at process start holds it


class Scorer:
    """The ``map_batches`` callable: one ``Pipeline`` per worker, loaded once.

    Args:
        weights_dir: the weights folder (default: the shipped weights).
        threads: threads for this worker's runtime, BLAS and OpenCV.
        pipeline: an already loaded pipeline (tests); skips loading and
            leaves this process's threads alone.
    """

    def __init__(self, weights_dir: str | None = None, threads: int = 1, pipeline=None):
        if pipeline is None:
            set_threads(threads)  # before the runtime starts its thread pools
            from tumor.pipeline import Pipeline

            pipeline = Pipeline.from_weights_dir(weights_dir)
        self.pipeline = pipeline

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Scores a batch of reader rows; returns slice rows (``SLICE_SCHEMA``)."""
        return pa.Table.from_pylist([self.score(row) for row in batch.to_pylist()], schema=SLICE_SCHEMA)

    def score(self, row: dict) -> dict:
        """The slice row of one reader row (error rows pass through)."""
        out = {name: row.get(name) for name in SLICE_COLUMNS}
        if row["status"] != "ok":
            return out
        rgb = np.frombuffer(row["rgb"], dtype=np.uint8).reshape(row["height"], row["width"], 3)
        spacing = (row["spacing_row"], row["spacing_col"]) if row["spacing_row"] is not None else None
        orientation = tuple(row["orientation"]) if row["orientation"] else None
        start = time.perf_counter()
        try:
            analysis = self.pipeline.analyze(rgb, spacing_mm=spacing, orientation=orientation)
        except ValueError as err:  # InputError, or the pipeline's shape check: the app shows both
            out.update(status="error", error_type=type(err).__name__, error_message=str(err))
            return out
        mask = np.asarray(analysis.mask(), dtype=bool)
        if tuple(analysis.probabilities) != CLASS_NAMES:
            raise RuntimeError(
                f"The pipeline's classes {tuple(analysis.probabilities)} are not the batch columns {CLASS_NAMES}."
            )
        area = int(mask.sum())
        out.update({f"p_{name}": float(p) for name, p in analysis.probabilities.items()})
        out.update(
            p_tumor=float(analysis.p_tumor),
            predicted_class=analysis.predicted_class,
            tumor_detected=bool(analysis.tumor_detected),
            tumor_area_px=area,
            tumor_area_mm2=area * spacing[0] * spacing[1] if spacing else None,
            mask_threshold=float(analysis.default_mask_threshold),
            mask_rle=rle_encode(mask),
            model_version=analysis.model_version,
            weights_sha256=json.dumps(dict(analysis.weights_sha256), sort_keys=True),
            elapsed_ms=1000.0 * (time.perf_counter() - start),
        )
        return out


# --- output -------------------------------------------------------------------------------


class PartWriter:
    """Writes slice rows as Parquet parts, each whole or not at all (written aside, then renamed)."""

    def __init__(self, out: str | os.PathLike, run_id: str, flush_rows: int = FLUSH_ROWS):
        self.folder = slices_dir(out)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        self.flush_rows = flush_rows
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.last_flush = time.monotonic()
        self.parts = 0

    def add(self, table: pa.Table) -> None:
        self.pending.append(table.select(list(SLICE_COLUMNS)).cast(SLICE_SCHEMA))
        self.pending_rows += table.num_rows
        if self.pending_rows >= self.flush_rows or time.monotonic() - self.last_flush > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.pending_rows:
            path = self.folder / f"part-{self.run_id}-{self.parts:05d}.parquet"
            tmp = path.with_suffix(".tmp")
            pq.write_table(pa.concat_tables(self.pending), tmp)
            os.replace(tmp, path)
            self.parts += 1
        self.pending, self.pending_rows, self.last_flush = [], 0, time.monotonic()


VOLUME_SCHEMA = pa.schema(
    [
        ("volume_id", pa.string()),
        ("kind", pa.string()),
        ("input", pa.string()),
        ("member", pa.string()),
        ("series_uid", pa.string()),
        ("plane", pa.string()),
        ("slices", pa.int64()),
        ("ok_slices", pa.int64()),
        ("error_slices", pa.int64()),
        ("positive_slices", pa.int64()),
        ("largest_slice", pa.int64()),
        ("largest_area_px", pa.int64()),
        ("max_p_tumor", pa.float64()),
        ("slice_spacing_mm", pa.float64()),
        ("tumor_volume_ml", pa.float64()),
    ]
)


def volume_id(row: dict) -> str:
    """A DICOM series' SeriesInstanceUID, else the volume's file (and archive member)."""
    if row["kind"] == "dicom" and row["series_uid"]:
        return row["series_uid"]
    return row["input"] + (f"::{row['member']}" if row["member"] else "")


def summarise_volumes(slices: pa.Table) -> pa.Table:
    """One row per DICOM series or NIfTI volume: slices, positives, the largest-tumour slice, volume in ml.

    ``tumor_volume_ml`` is the summed tumour area (mm^2) times the distance
    between slices, None when either is unknown (as when a slice failed).
    """
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in slices.to_pylist():
        if row["kind"] in ("dicom", "nifti"):
            groups[volume_id(row)].append(row)
    out = []
    for vid, rows in groups.items():
        rows.sort(key=lambda r: r["slice_index"])
        ok = [r for r in rows if r["status"] == "ok"]
        positive = [r for r in ok if r["tumor_detected"]]
        largest = max(ok, key=lambda r: (r["tumor_area_px"], -r["slice_index"]), default=None)
        has_tumour = largest is not None and largest["tumor_area_px"] > 0
        spacing = rows[0]["slice_spacing_mm"]
        areas = [r["tumor_area_mm2"] for r in ok]
        known = spacing is not None and len(ok) == len(rows) and all(a is not None for a in areas)
        out.append(
            {
                "volume_id": vid,
                "kind": rows[0]["kind"],
                "input": rows[0]["input"],
                "member": rows[0]["member"],
                "series_uid": rows[0]["series_uid"],
                "plane": rows[0]["plane"],
                "slices": len(rows),
                "ok_slices": len(ok),
                "error_slices": len(rows) - len(ok),
                "positive_slices": len(positive),
                "largest_slice": largest["slice_index"] if has_tumour else None,
                "largest_area_px": largest["tumor_area_px"] if has_tumour else 0,
                "max_p_tumor": max((r["p_tumor"] for r in ok), default=None),
                "slice_spacing_mm": spacing,
                "tumor_volume_ml": sum(areas) * spacing / 1000.0 if known else None,
            }
        )
    return pa.Table.from_pylist(out, schema=VOLUME_SCHEMA)


def write_segs(
    slices: pa.Table, manifest: Manifest, out: str | os.PathLike, rescored: set[str]
) -> tuple[list[Path], list[str]]:
    """A DICOM SEG per DICOM series with a tumour pixel, under ``out/seg/``.

    A series none of whose slices was scored in this run keeps the SEG already
    written for it. Returns the paths written and a note per series left out.
    """
    from tumor.dicom_seg import build_seg, read_header, seg_to_bytes

    by_id = {row["item_id"]: row for row in slices.to_pylist()}
    series: dict[str, list[Item]] = defaultdict(list)
    for item in manifest.items:
        if item.kind == "dicom" and item.series_uid:
            series[item.series_uid].append(item)
    folder = Path(out) / "seg"
    written, notes = [], []
    for uid, items in series.items():
        rows = [by_id.get(item.item_id) for item in items]
        if not any(r and r["status"] == "ok" and r["tumor_area_px"] for r in rows):
            continue
        path = folder / f"{uid}.dcm"
        if path.exists() and not rescored.intersection(i.item_id for i in items):
            continue
        files = list(dict.fromkeys(item.source_key for item in items))
        if len(files) > 1 and any(item.n_slices > 1 for item in items):
            notes.append(f"series {uid}: no SEG, it mixes multi-frame files")
            continue
        try:
            headers = []
            for key in files:
                data = manifest.blobs.get(key)
                if data is None:
                    with open(key[0], "rb") as f:
                        data = f.read()
                headers.append(read_header(data))
            masks = np.stack(
                [
                    rle_decode(r["mask_rle"])
                    if r and r["status"] == "ok"
                    else np.zeros((int(headers[0].Rows), int(headers[0].Columns)), bool)
                    for r in rows
                ]
            )
            first = next(r for r in rows if r and r["status"] == "ok")
            seg = build_seg(
                headers, masks, model_version=first["model_version"], mask_threshold=first["mask_threshold"]
            )
        except (InputError, OSError, AttributeError, ValueError) as err:
            notes.append(f"series {uid}: no SEG, {err}")
            continue
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(seg_to_bytes(seg))
        os.replace(tmp, path)
        written.append(path)
    return written, notes


class Progress:
    """A progress bar on the driver's stderr: slices done, errors, rate and time left."""

    def __init__(self, total: int, stream=None, enabled: bool = True):
        self.total, self.done, self.errors = total, 0, 0
        self.stream = stream or sys.stderr
        self.enabled = enabled and total > 0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()
        self.last = 0.0

    def update(self, rows: int, errors: int) -> None:
        self.done += rows
        self.errors += errors
        now = time.monotonic()
        if self.enabled and (now - self.last > (0.5 if self.tty else 10.0) or self.done >= self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            left = (self.total - self.done) / rate if rate > 0 else float("inf")
            width = 30
            filled = int(width * self.done / self.total)
            bar = "#" * filled + "-" * (width - filled)
            eta = f"{left:5.0f} s left" if math.isfinite(left) else "   ?  s left"
            text = f"[{bar}] {self.done}/{self.total} slices, {self.errors} errors, {rate:5.2f} slices/s, {eta}"
            self.stream.write(("\r" + text) if self.tty else (text + "\n"))
            if self.tty and self.done >= self.total:
                self.stream.write("\n")
            self.stream.flush()


# --- the run -------------------------------------------------------------------------------


@dataclass
class Plan:
    """How many actors, with how many CPUs, GPUs and threads each."""

    workers: int
    cpus_per_worker: float
    threads: int
    gpus_per_worker: float = 0.0


def plan_workers(
    cluster_cpus: float,
    *,
    workers: int | None = None,
    cpus_per_worker: float = 1.0,
    threads: int | None = None,
    gpus_per_worker: float = 0.0,
    reader_cpus: float = READER_CPUS,
) -> Plan:
    """Sizes the actor pool so that ``reader_cpus`` stay free for the readers.

    Actors that hold every CPU leave the reader tasks none, and Ray Data then
    waits forever; so ask for fewer.

    Raises:
        InputError: the request leaves the readers less than ``reader_cpus``.
    """
    if cpus_per_worker <= 0:
        raise InputError(f"--cpus-per-worker must be positive. Received: {cpus_per_worker}.")
    free = cluster_cpus - reader_cpus
    if workers is None:
        workers = max(1, int(free // cpus_per_worker + 1e-9))
    if workers < 1:
        raise InputError(f"--workers must be at least 1. Received: {workers}.")
    if workers * cpus_per_worker > free + 1e-9:
        raise InputError(
            f"{workers} worker(s) x {cpus_per_worker:g} CPU leave the readers less than {reader_cpus:g} of the "
            f"cluster's {cluster_cpus:g} CPUs, and Ray Data would hang. Ask for fewer --workers or a smaller "
            f"--cpus-per-worker (at most {max(free, 0) / workers:g} for {workers})."
        )
    threads = threads or max(1, round(cpus_per_worker))
    return Plan(workers, float(cpus_per_worker), int(threads), float(gpus_per_worker))


def build_dataset(units: list[dict], plan: Plan, *, weights_dir: str | None, batch_size: int = DEFAULT_BATCH_SIZE):
    """The Ray Data pipeline: reader tasks, then the scorer actor pool."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.max_errored_blocks = 0  # a failed block is a bug: bad files are already error rows
    context.enable_progress_bars = False  # the driver draws its own
    reader_env = {"env_vars": thread_env(1)}
    # Small blocks of files, so that reading streams into scoring from the first files on.
    ds = ray.data.from_items(units, override_num_blocks=max(1, math.ceil(len(units) / UNITS_PER_BLOCK)))
    ds = ds.flat_map(read_unit, num_cpus=READER_TASK_CPUS, runtime_env=reader_env)
    return ds.map_batches(
        Scorer,
        fn_constructor_kwargs={"weights_dir": weights_dir, "threads": plan.threads},
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=plan.workers),
        num_cpus=plan.cpus_per_worker,
        num_gpus=plan.gpus_per_worker or None,
        runtime_env={"env_vars": thread_env(plan.threads)},
    )


@dataclass
class Summary:
    """What a run did, as printed at its end."""

    items: int
    skipped: int
    scored: int
    ok: int
    errors: dict[str, int]
    seconds: float
    workers: int
    model_ms_per_slice: float | None
    outputs: list[str]
    notes: list[str]

    @property
    def slices_per_s(self) -> float:
        """Slices scored per second of the run, starting the workers and loading the models included."""
        return self.scored / self.seconds if self.seconds > 0 else 0.0

    @property
    def loaded_slices_per_s(self) -> float | None:
        """What the workers score per second once loaded: workers / mean time in the pipeline per slice."""
        return self.workers * 1000.0 / self.model_ms_per_slice if self.model_ms_per_slice else None

    def text(self) -> str:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"
        loaded = ""
        if self.loaded_slices_per_s:
            loaded = (
                f"\nscoring: {self.model_ms_per_slice:.0f} ms per slice in a worker, so "
                f"{self.loaded_slices_per_s:.2f} slices/s across {self.workers} worker(s) once loaded"
            )
        lines = [
            f"items: {self.items} ({self.skipped} already in the output, {self.scored} scored now)",
            f"ok: {self.ok}   errors: {errors}",
            f"slices/s: {self.slices_per_s:.2f} over {self.seconds:.1f} s, starting the workers included{loaded}",
            *[f"output: {p}" for p in self.outputs],
            *[f"note: {n}" for n in self.notes],
        ]
        return "\n".join(lines)


def _init_ray(address: str | None) -> bool:
    """Starts or joins Ray unless this process already has; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    return True


def run(
    inputs: Sequence[str],
    out: str | os.PathLike,
    *,
    plane: str = "axial",
    resume: bool = False,
    csv: bool = False,
    dicom_seg: bool = False,
    workers: int | None = None,
    cpus_per_worker: float = 1.0,
    threads: int | None = None,
    gpus_per_worker: float = 0.0,
    address: str | None = None,
    weights_dir: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    reader_cpus: float = READER_CPUS,
    progress: bool = True,
) -> Summary:
    """Scores every slice under ``inputs`` into ``out`` (see the module docstring).

    Raises:
        InputError: an input is missing, ``out`` holds results and ``resume``
            is off, or the workers asked for leave the readers no CPU.
    """
    out = Path(out)
    done = done_item_ids(out)
    if done and not resume:
        raise InputError(f"{os.fspath(out)!r} already holds {len(done)} scored slices; pass --resume to continue.")
    manifest = build_manifest(inputs, plane=plane)
    todo = pending_items(manifest, done)
    run_id = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
    errors: Counter[str] = Counter()
    ok = scored = 0
    model_ms = 0.0
    n_workers = 0
    last_batch = start = time.monotonic()
    if todo:
        import ray

        started = _init_ray(address)
        try:
            plan = plan_workers(
                ray.cluster_resources().get("CPU", 0.0),
                workers=workers,
                cpus_per_worker=cpus_per_worker,
                threads=threads,
                gpus_per_worker=gpus_per_worker,
                reader_cpus=reader_cpus,
            )
            n_workers = plan.workers
            ds = build_dataset(read_units(todo, manifest.blobs), plan, weights_dir=weights_dir, batch_size=batch_size)
            # Ray Data logs each execution plan; the progress bar and the summary say what matters.
            logging.getLogger("ray.data").setLevel(logging.ERROR)
            bar = Progress(len(todo), enabled=progress)
            writer = PartWriter(out, run_id)
            start = time.monotonic()
            try:
                for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                    writer.add(batch)
                    statuses = batch.column("status").to_pylist()
                    n_err = sum(s != "ok" for s in statuses)
                    types = batch.column("error_type").to_pylist()
                    errors.update(t for t, s in zip(types, statuses, strict=True) if s != "ok")
                    ok += len(statuses) - n_err
                    scored += len(statuses)
                    elapsed = batch.column("elapsed_ms").to_pylist()
                    model_ms += sum(ms for ms, s in zip(elapsed, statuses, strict=True) if s == "ok" and ms)
                    last_batch = time.monotonic()
                    bar.update(len(statuses), n_err)
            finally:
                writer.flush()  # what was scored stays scored, even on Ctrl-C
        finally:
            if started:
                ray.shutdown()
    seconds = last_batch - start if todo else 0.0
    slices = read_slices(out)
    outputs = [os.fspath(slices_dir(out))]
    volumes = summarise_volumes(slices)
    pq.write_table(volumes, out / "volumes.parquet")
    outputs.append(os.fspath(out / "volumes.parquet"))
    if csv:
        slices.to_pandas().to_csv(out / "slices.csv", index=False)
        volumes.to_pandas().to_csv(out / "volumes.csv", index=False)
        outputs += [os.fspath(out / "slices.csv"), os.fspath(out / "volumes.csv")]
    notes: list[str] = []
    if dicom_seg:
        written, notes = write_segs(slices, manifest, out, {i.item_id for i in todo})
        outputs += [os.fspath(p) for p in written]
    return Summary(
        items=len(manifest.items),
        skipped=len(manifest.items) - len(todo),
        scored=scored,
        ok=ok,
        errors=dict(errors),
        seconds=seconds,
        workers=n_workers,
        model_ms_per_slice=model_ms / ok if ok else None,
        outputs=outputs,
        notes=notes,
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tumor.batch",
        description="Score every slice of images, DICOM series and NIfTI volumes with the shipped pipeline, on Ray. "
        "Research demo, not for diagnosis.",
    )
    p.add_argument("inputs", nargs="+", help="files, folders (walked recursively) and .zip / .tar(.gz) archives")
    p.add_argument("--out", required=True, help="output folder (slices/ Parquet parts, volumes.parquet, seg/)")
    p.add_argument("--plane", choices=PLANES, default="axial", help="NIfTI sweep plane (default: axial)")
    p.add_argument("--resume", action="store_true", help="skip slices already in --out (default: refuse a used --out)")
    p.add_argument("--csv", action="store_true", help="also write slices.csv and volumes.csv (default: off)")
    p.add_argument("--dicom-seg", action="store_true", help="a DICOM SEG per positive DICOM series (default: off)")
    p.add_argument(
        "--workers", type=int, default=None, help="scoring actors (default: as many as fit beside the readers' core)"
    )
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each actor holds (default: 1)")
    p.add_argument("--threads", type=int, default=None, help="threads per actor (default: its CPUs, at least 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each actor holds (default: 0)")
    p.add_argument("--address", default=None, help="Ray cluster: auto or ray://HOST:PORT (default: a local Ray)")
    p.add_argument("--weights", default=None, help="weights folder, the same path on every node (default: shipped)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="slices per scorer call (default: 8)")
    p.add_argument("--reader-cpus", type=float, default=READER_CPUS, help="CPUs left to the reader tasks (default: 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (2 for a usage error)."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        summary = run(
            args.inputs,
            args.out,
            plane=args.plane,
            resume=args.resume,
            csv=args.csv,
            dicom_seg=args.dicom_seg,
            workers=args.workers,
            cpus_per_worker=args.cpus_per_worker,
            threads=args.threads,
            gpus_per_worker=args.gpus_per_worker,
            address=args.address,
            weights_dir=args.weights,
            batch_size=args.batch_size,
            reader_cpus=args.reader_cpus,
            progress=not args.no_progress,
        )
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary.text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
