"""Batch scoring: the manifest walk, reading, the scorer, RLE, resume and output without Ray; one Ray run end to end."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import nibabel
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import FakePipeline, phantom, png_bytes
from tumor import batch
from tumor.dicom_seg import read_header, seg_for_upload
from tumor.errors import InputError
from tumor.io import read_scan, read_volume

ROOT = Path(__file__).resolve().parents[1]
GALLERY = ROOT / "gallery"
HAS_WEIGHTS = (ROOT / "weights" / "manifest.json").is_file()


# --- fixtures built here -------------------------------------------------------------------------


def dicom_series(
    images: list[np.ndarray], *, z_order: list[float] | None = None, series_uid: str | None = None
) -> list[bytes]:
    """One MR series, a single-frame instance per image, with geometry and a window that keeps 8-bit values."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    study, series, frame_of_reference = generate_uid(), series_uid or generate_uid(), generate_uid()
    z_order = z_order or [2.0 * i for i in range(len(images))]
    out = []
    for i, (gray, z) in enumerate(zip(images, z_order, strict=True)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame_of_reference
        ds.Modality = "MR"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "SECRET-123", "19700101"
        ds.InstitutionName = "Secret Hospital"
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(z)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = 2.0
        ds.WindowCenter, ds.WindowWidth = 127.5, 255.0  # maps 0..255 onto itself
        ds.Rows, ds.Columns = gray.shape
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = gray.astype(np.uint16).tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def nifti(shape=(40, 48, 5), affine=None) -> bytes:
    vol = np.zeros(shape, np.float32)
    vol[..., :] = phantom(64)[: shape[0], : shape[1], None] if len(shape) == 3 else 0
    vol += np.arange(vol.size, dtype=np.float32).reshape(shape) % 7
    return nibabel.Nifti1Image(vol, np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine).to_bytes()


def gallery_gray(name: str) -> np.ndarray:
    return np.asarray(Image.open(GALLERY / name).convert("L"))


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """An image, a 3-slice DICOM series (no extensions, names out of slice order), a NIfTI, junk and a hidden file."""
    folder = tmp_path / "in"
    (folder / "series").mkdir(parents=True)
    (folder / "img.png").write_bytes(png_bytes(phantom(64)))
    series = dicom_series([phantom(32), phantom(32) // 2, phantom(32) // 3], z_order=[4.0, 0.0, 2.0])
    for name, data in zip(["b", "c", "a"], series, strict=True):
        (folder / "series" / name).write_bytes(data)
    (folder / "vol.nii.gz").write_bytes(_gzip(nifti()))
    (folder / "notes.txt").write_text("not an image")
    (folder / ".DS_Store").write_bytes(b"\0" * 10)
    return folder


def _gzip(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data)


# --- manifest ------------------------------------------------------------------------------------


def _by_kind(manifest: batch.Manifest, kind: str) -> list[batch.Item]:
    return [i for i in manifest.items if i.kind == kind]


def _check_mixed(manifest: batch.Manifest, folder_has_members: bool) -> None:
    assert len(manifest.items) == 1 + 3 + 5 + 1  # image, series, axial slices, notes.txt
    dicoms = _by_kind(manifest, "dicom")
    assert len({d.series_uid for d in dicoms}) == 1
    # Ordered by ImagePositionPatient along the normal: c (z=0), a (z=2), b (z=4).
    names = [Path(d.member or d.input).name for d in dicoms]
    assert names == ["c", "a", "b"]
    assert [d.slice_index for d in dicoms] == [0, 1, 2]
    assert all(d.slice_spacing_mm == pytest.approx(2.0) for d in dicoms)
    niftis = _by_kind(manifest, "nifti")
    assert [n.index for n in niftis] == [0, 1, 2, 3, 4]
    assert {n.plane for n in niftis} == {"axial"}
    assert not any(".DS_Store" in (i.member or i.input) for i in manifest.items)
    assert len({i.item_id for i in manifest.items}) == len(manifest.items)
    assert all((i.member is not None) == folder_has_members for i in manifest.items)
    assert bool(manifest.blobs) == folder_has_members


def test_manifest_walks_a_folder(mixed_folder):
    manifest = batch.build_manifest([mixed_folder])
    _check_mixed(manifest, folder_has_members=False)
    assert manifest.items[0].input == str(mixed_folder / "img.png")


def test_manifest_lists_a_file_named_twice_once(mixed_folder):
    twice = batch.build_manifest([mixed_folder, mixed_folder / "img.png", mixed_folder / "series"])
    assert twice.items == batch.build_manifest([mixed_folder]).items


def test_manifest_walks_a_zip_and_a_tar_alike(mixed_folder, tmp_path):
    files = sorted(p for p in mixed_folder.rglob("*") if p.is_file())
    zpath = tmp_path / "in.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in files:
            zf.write(p, p.relative_to(mixed_folder).as_posix())
    tpath = tmp_path / "in.tar.gz"
    with tarfile.open(tpath, "w:gz") as tf:
        for p in files:
            tf.add(p, p.relative_to(mixed_folder).as_posix())
    for archive in (zpath, tpath):
        manifest = batch.build_manifest([archive])
        _check_mixed(manifest, folder_has_members=True)
        assert {i.input for i in manifest.items} == {str(archive)}
    # Ids hash the archive path and member: the same file in another archive is another item.
    ids_zip = {i.item_id for i in batch.build_manifest([zpath]).items}
    ids_tar = {i.item_id for i in batch.build_manifest([tpath]).items}
    assert not ids_zip & ids_tar


def test_item_ids_are_stable_and_depend_on_every_part():
    a = batch.item_id("/d/x.nii", None, 3, "axial")
    assert a == batch.item_id("/d/x.nii", None, 3, "axial")
    others = [
        batch.item_id("/d/y.nii", None, 3, "axial"),
        batch.item_id("/d/x.nii", "m", 3, "axial"),
        batch.item_id("/d/x.nii", None, 4, "axial"),
        batch.item_id("/d/x.nii", None, 3, "coronal"),
    ]
    assert a not in others and len(set(others)) == 4


@pytest.mark.parametrize(
    "shape, affine",
    [
        ((40, 48, 5), None),
        ((40, 48, 5), np.array([[0, 0, 2.0, 0], [-1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])),  # permuted, flipped
        ((40, 48, 5, 3), None),  # 4-D: the first volume
        ((40, 48), None),  # 2-D
    ],
)
@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_nifti_slice_count_matches_read_volume(shape, affine, plane):
    data = nifti(shape, affine)
    for stored in (data, _gzip(data)):
        expected = read_volume(stored, name="v.nii").n_slices(plane)
        assert batch.nifti_slice_count(stored[: batch.HEAD_BYTES], plane) == expected


def test_manifest_sweeps_nifti_along_the_plane(tmp_path):
    path = tmp_path / "v.nii"
    path.write_bytes(nifti((40, 48, 5)))
    assert len(batch.build_manifest([path], plane="coronal").items) == 48
    with pytest.raises(InputError, match="plane must be one of"):
        batch.build_manifest([path], plane="oblique")


def test_manifest_refuses_a_missing_input(tmp_path):
    with pytest.raises(InputError, match="No such file or folder"):
        batch.build_manifest([tmp_path / "nope"])


def test_corrupt_and_nested_archives_are_error_items(tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 this is not a zip")
    nested = tmp_path / "outer.zip"
    with zipfile.ZipFile(nested, "w") as zf:
        zf.writestr("inner.zip", b"whatever")
        zf.writestr("img.png", png_bytes(phantom(64)))
    items = batch.build_manifest([bad, nested]).items
    kinds = [(i.member, i.kind, i.error is not None) for i in items]
    assert kinds == [(None, "file", True), ("img.png", "image", False), ("inner.zip", "file", True)]
    assert "could not be read" in items[0].error and "archive inside an archive" in items[2].error
    errors = [items[0], items[2]]
    rows = [r for unit in batch.read_units(errors, {}) for r in batch.read_unit(unit)]
    assert [(r["status"], r["error_type"]) for r in rows] == [("error", "InputError")] * 2
    assert [r["error_message"] for r in rows] == [i.error for i in errors]


# --- reading: error rows carry the app's InputError text --------------------------------------


def _png() -> bytes:
    return png_bytes(phantom(64))


@pytest.mark.parametrize(
    "name, data",
    [
        ("corrupt.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4),
        ("truncated.png", _png()[: len(_png()) // 2]),
        ("notes.txt", b"just some text, not an image\n" * 20),
        ("empty.png", b""),
        ("broken.nii.gz", b"\x1f\x8b\x08\x00" + b"\x00" * 40),
    ],
)
def test_bad_files_become_error_rows_with_the_app_message(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    manifest = batch.build_manifest([path])
    rows = [r for unit in batch.read_units(manifest.items, manifest.blobs) for r in batch.read_unit(unit)]
    assert len(rows) == 1 and rows[0]["status"] == "error" and rows[0]["error_type"] == "InputError"
    with pytest.raises(InputError) as app_error:
        read_scan(data, name=name)
    assert rows[0]["error_message"] == str(app_error.value)


def test_reader_rows_match_tumor_io(mixed_folder):
    manifest = batch.build_manifest([mixed_folder])
    rows = {r["item_id"]: r for u in batch.read_units(manifest.items, manifest.blobs) for r in batch.read_unit(u)}
    assert len(rows) == len(manifest.items)
    dicom = _by_kind(manifest, "dicom")[1]
    scan = read_scan(Path(dicom.input).read_bytes(), frame=0)
    row = rows[dicom.item_id]
    rgb = np.frombuffer(row["rgb"], np.uint8).reshape(row["height"], row["width"], 3)
    assert np.array_equal(rgb, scan.rgb)
    assert (row["spacing_row"], row["spacing_col"], row["orientation"]) == (0.5, 0.5, "LP")
    n = _by_kind(manifest, "nifti")[3]
    volume = read_volume(n.input)
    row = rows[n.item_id]
    rgb = np.frombuffer(row["rgb"], np.uint8).reshape(row["height"], row["width"], 3)
    assert np.array_equal(rgb, volume.slice(3, "axial").rgb)
    assert row["slice_spacing_mm"] == pytest.approx(2.0)
    assert rows[next(i for i in manifest.items if i.input.endswith("notes.txt")).item_id]["status"] == "error"


# --- RLE ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((3, 4), bool),
        np.ones((3, 4), bool),
        np.eye(5, dtype=bool),
        np.array([[0, 0, 0], [0, 0, 1]], bool),  # last pixel only
        np.array([[1, 0, 0], [0, 0, 0]], bool),  # first pixel only
        phantom(64) > 150,
    ],
)
def test_rle_round_trip(mask):
    text = batch.rle_encode(mask)
    assert np.array_equal(batch.rle_decode(text), mask)


def test_rle_format_is_row_major_runs_from_background():
    assert batch.rle_encode(np.array([[0, 1, 1], [1, 0, 0]], bool)) == "2x3:1 3 2"
    assert batch.rle_encode(np.ones((1, 2), bool)) == "1x2:0 2"
    with pytest.raises(ValueError, match="cover"):
        batch.rle_decode("2x2:1 1")


# --- the scorer, with a stub pipeline -------------------------------------------------------


def _reader_batch(folder: Path) -> pa.Table:
    manifest = batch.build_manifest([folder])
    rows = [r for u in batch.read_units(manifest.items, manifest.blobs) for r in batch.read_unit(u)]
    return pa.Table.from_pylist(rows)


def test_scorer_on_a_batch_with_a_stub_pipeline(mixed_folder):
    fake = FakePipeline()
    fake.analyze = _spacing_aware(fake)
    scorer = batch.Scorer(pipeline=fake, threads=1)
    table = _reader_batch(mixed_folder)
    out = scorer(table)
    assert out.schema == batch.SLICE_SCHEMA and out.num_rows == table.num_rows
    rows = out.to_pylist()
    errors = [r for r in rows if r["status"] == "error"]
    assert [Path(r["input"]).name for r in errors] == ["notes.txt"] and errors[0]["p_tumor"] is None
    ok = [r for r in rows if r["status"] == "ok"]
    assert fake.runs == len(ok) == 9
    for row, reader_row in zip(rows, table.to_pylist(), strict=True):
        if row["status"] != "ok":
            continue
        rgb = np.frombuffer(reader_row["rgb"], np.uint8).reshape(reader_row["height"], reader_row["width"], 3)
        expected = fake.analyze(rgb, spacing_mm=None).mask()
        assert np.array_equal(batch.rle_decode(row["mask_rle"]), expected)
        assert row["tumor_area_px"] == expected.sum()
        assert row["p_glioma"] == 0.8 and row["predicted_class"] == "glioma" and row["model_version"] == "fake-0"
        assert json.loads(row["weights_sha256"]) == {"fake.weights.h5": "ab" * 32}
    dicom = next(r for r in ok if r["kind"] == "dicom")
    assert dicom["tumor_area_mm2"] == pytest.approx(dicom["tumor_area_px"] * 0.25)
    image = next(r for r in ok if r["kind"] == "image")
    assert image["tumor_area_mm2"] is None


def _spacing_aware(fake: FakePipeline):
    """FakePipeline.analyze, taking spacing and orientation as keywords as Pipeline.analyze does."""
    plain = fake.analyze

    def analyze(image, *, spacing_mm=None, orientation=None):
        a = plain(image)
        object.__setattr__(a, "pixel_spacing_mm", spacing_mm)
        object.__setattr__(a, "default_mask_threshold", 0.5)
        return a

    return analyze


def test_scorer_turns_the_pipeline_shape_check_into_an_error_row():
    class Refuses:
        def analyze(self, image, **kwargs):
            raise ValueError("Expected an RGB uint8 slice of shape (H, W, 3), at least 8x8.")

    item = batch.Item("id1", "/x.dcm", None, "dicom")
    row = batch._scan_row(json.loads(json.dumps(_item_dict(item))), _TinyScan())
    out = batch.Scorer(pipeline=Refuses())(pa.Table.from_pylist([row])).to_pylist()[0]
    assert (out["status"], out["error_type"]) == ("error", "ValueError")
    assert "at least 8x8" in out["error_message"]


def _item_dict(item: batch.Item) -> dict:
    from dataclasses import asdict

    return asdict(item)


class _TinyScan:
    rgb = np.full((4, 4, 3), 100, np.uint8)
    pixel_spacing_mm = None
    orientation = None


def test_thread_env_holds_every_library_to_the_count():
    env = batch.thread_env(3)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        assert env[name] == "3"
    assert env["TUMOR_NUM_THREADS"] == "3"


# --- resources ------------------------------------------------------------------------------


def test_plan_leaves_the_readers_a_core():
    assert batch.plan_workers(2).workers == 1
    assert batch.plan_workers(16, cpus_per_worker=2).workers == 7
    plan = batch.plan_workers(2, workers=2, cpus_per_worker=0.5)
    assert (plan.workers, plan.threads) == (2, 1)
    with pytest.raises(InputError, match="would hang"):
        batch.plan_workers(2, workers=2, cpus_per_worker=1)
    assert batch.plan_workers(8, workers=2, cpus_per_worker=2, threads=4).threads == 4


# --- resume and output ----------------------------------------------------------------------


def _slice_rows(items: list[batch.Item], area: int = 0) -> pa.Table:
    rows = []
    for it in items:
        row = {name: None for name in batch.SLICE_COLUMNS}
        row.update(
            item_id=it.item_id,
            input=it.input,
            member=it.member,
            kind=it.kind,
            series_uid=it.series_uid,
            plane=it.plane,
            slice_index=it.slice_index,
            frame=it.index,
            status="ok",
            p_tumor=0.9 if area else 0.1,
            tumor_detected=bool(area),
            tumor_area_px=area,
            tumor_area_mm2=area * 0.25,
            slice_spacing_mm=it.slice_spacing_mm or 2.0,
            mask_rle=batch.rle_encode(np.zeros((2, 2), bool)),
            model_version="fake-0",
        )
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=batch.SLICE_SCHEMA)


def test_resume_skips_what_the_output_already_holds(mixed_folder, tmp_path):
    manifest = batch.build_manifest([mixed_folder])
    out = tmp_path / "out"
    writer = batch.PartWriter(out, "run1", flush_rows=2)
    writer.add(_slice_rows(manifest.items[:3]))
    writer.flush()
    assert writer.parts == 1 and len(list((out / "slices").glob("part-run1-*.parquet"))) == 1
    done = batch.done_item_ids(out)
    assert done == {i.item_id for i in manifest.items[:3]}
    assert batch.pending_items(manifest, done) == manifest.items[3:]
    # Without --resume a used output folder is refused, before Ray starts.
    with pytest.raises(InputError, match="pass --resume"):
        batch.run([mixed_folder], out)
    assert batch.main([str(mixed_folder), "--out", str(out)]) == 2


def test_resume_with_everything_done_scores_nothing_and_rewrites_nothing(mixed_folder, tmp_path):
    manifest = batch.build_manifest([mixed_folder])
    out = tmp_path / "out"
    writer = batch.PartWriter(out, "run1")
    writer.add(_slice_rows(manifest.items, area=4))
    writer.flush()
    part = next((out / "slices").glob("*.parquet"))
    before = (part.stat().st_mtime_ns, part.read_bytes())
    summary = batch.run([mixed_folder], out, resume=True, csv=True, progress=False)
    assert (summary.items, summary.skipped, summary.scored) == (len(manifest.items), len(manifest.items), 0)
    assert (part.stat().st_mtime_ns, part.read_bytes()) == before
    assert len(list((out / "slices").glob("*.parquet"))) == 1
    assert (out / "slices.csv").is_file() and (out / "volumes.parquet").is_file()


def test_volumes_summarise_series_and_volumes():
    items = [
        batch.Item(f"d{i}", "/s", None, "dicom", slice_index=i, series_uid="1.2.3", slice_spacing_mm=3.0)
        for i in range(3)
    ]
    table = _slice_rows(items[:1]).to_pylist() + _slice_rows(items[1:2], area=40).to_pylist()
    table += _slice_rows(items[2:], area=10).to_pylist()
    vol = batch.summarise_volumes(pa.Table.from_pylist(table, schema=batch.SLICE_SCHEMA)).to_pylist()
    assert len(vol) == 1
    v = vol[0]
    assert (v["volume_id"], v["slices"], v["positive_slices"], v["largest_slice"]) == ("1.2.3", 3, 2, 1)
    assert v["tumor_volume_ml"] == pytest.approx((40 + 10) * 0.25 * 3.0 / 1000)
    # A failed slice leaves the volume unknown rather than too small.
    table[2]["status"] = "error"
    v = batch.summarise_volumes(pa.Table.from_pylist(table, schema=batch.SLICE_SCHEMA)).to_pylist()[0]
    assert v["tumor_volume_ml"] is None and v["error_slices"] == 1


def test_part_files_round_trip_through_read_slices(tmp_path):
    items = [batch.Item(f"i{k}", "/a.png", None, "image") for k in range(5)]
    writer = batch.PartWriter(tmp_path, "r", flush_rows=2)
    for k in range(5):
        writer.add(_slice_rows(items[k : k + 1]))
    writer.flush()
    assert writer.parts == 3
    table = batch.read_slices(tmp_path)
    assert sorted(table.column("item_id").to_pylist()) == [f"i{k}" for k in range(5)]
    assert table.schema == batch.SLICE_SCHEMA
    assert not list((tmp_path / "slices").glob("*.tmp"))


def test_batch_module_imports_no_ray_and_no_keras():
    import subprocess
    import sys

    code = "import sys, tumor.batch, tumor.dicom_seg; print('ray' in sys.modules, 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", "False"]


# --- end to end on Ray, real weights ---------------------------------------------------------

needs_weights = pytest.mark.skipif(not HAS_WEIGHTS, reason="trained weights not present in weights/")
E2E_GALLERY = ("figshare_glioma_1.jpg", "lgg_no_tumor_1.jpg")  # one positive, one negative


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module: 2 CPUs, so one actor leaves the readers a core."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=300 * 2**20)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def real_pipeline():
    from tumor.pipeline import Pipeline

    return Pipeline.from_weights_dir(ROOT / "weights")


@pytest.fixture(scope="module")
def e2e_folder(tmp_path_factory) -> tuple[Path, list[bytes], bytes]:
    """Gallery slices, a DICOM series, a NIfTI inside a zip (shipped to the readers as bytes) and a corrupt file."""
    folder = tmp_path_factory.mktemp("e2e") / "in"
    folder.mkdir()
    for name in E2E_GALLERY:
        (folder / name).write_bytes((GALLERY / name).read_bytes())
    # A gallery tumour slice and a quieter copy, in the gallery's own grey values.
    glioma = gallery_gray("figshare_glioma_2.jpg")
    series = dicom_series([glioma, (glioma * 0.5).astype(np.uint8)])
    (folder / "series").mkdir()
    for k, data in enumerate(series):
        (folder / "series" / f"IM{k:04d}").write_bytes(data)
    # A NIfTI whose axial slices show that tumour upright (Volume.slice transposes and flips both axes).
    stack = np.stack([glioma, glioma // 2], axis=2).astype(np.float32)
    volume = nibabel.Nifti1Image(stack[::-1, ::-1].transpose(1, 0, 2), np.diag([1.0, 1.0, 2.0, 1.0])).to_bytes()
    with zipfile.ZipFile(folder / "volumes.zip", "w") as zf:
        zf.writestr("sub/vol.nii", volume)
    (folder / "corrupt.png").write_bytes(_png()[:300])
    return folder, series, volume


@pytest.mark.slow
@needs_weights
def test_ray_end_to_end_agrees_with_the_pipeline(local_ray, real_pipeline, e2e_folder, tmp_path_factory):
    folder, series, volume = e2e_folder
    out = tmp_path_factory.mktemp("e2e_out") / "out"
    args = [str(folder), "--out", str(out), "--workers", "1", "--threads", "1", "--dicom-seg", "--no-progress"]
    assert batch.main(args) == 0

    rows = batch.read_slices(out).to_pylist()
    assert len(rows) == 2 + 2 + 2 + 1
    errors = [r for r in rows if r["status"] == "error"]
    assert [Path(r["input"]).name for r in errors] == ["corrupt.png"]
    with pytest.raises(InputError) as app_error:
        read_scan(_png()[:300], name="corrupt.png")
    assert errors[0]["error_message"] == str(app_error.value)

    by_name = {Path(r["input"]).name: r for r in rows if r["kind"] == "image"}
    for name in E2E_GALLERY:
        _assert_row_matches(by_name[name], real_pipeline.analyze(read_scan(GALLERY / name)))
    assert by_name["figshare_glioma_1.jpg"]["tumor_detected"]  # the mask comparison is not of two empty masks
    dicom_rows = sorted((r for r in rows if r["kind"] == "dicom"), key=lambda r: r["slice_index"])
    expected_dicom = [real_pipeline.analyze(read_scan(data)) for data in series]
    for row, expected in zip(dicom_rows, expected_dicom, strict=True):
        _assert_row_matches(row, expected)

    volumes = {v["kind"]: v for v in pq.read_table(out / "volumes.parquet").to_pylist()}
    expected_volume = real_pipeline.analyze_volume(read_volume(volume))
    assert (volumes["nifti"]["slices"], volumes["nifti"]["member"]) == (2, "sub/vol.nii")
    assert volumes["nifti"]["tumor_volume_ml"] == pytest.approx(expected_volume.tumor_volume_ml)
    assert expected_volume.tumor_volume_ml > 0
    assert volumes["dicom"]["slices"] == 2

    # The SEG of the positive series: the pipeline's masks, over the source instances.
    import highdicom as hd

    sources = [read_header(d) for d in series]
    seg_path = out / "seg" / f"{sources[0].SeriesInstanceUID}.dcm"
    seg = hd.seg.segread(seg_path)
    uids = [s.SOPInstanceUID for s in sources]
    referenced = [r.ReferencedSOPInstanceUID for r in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert sorted(referenced) == sorted(uids)
    masks = seg.get_pixels_by_source_instance(uids, segment_numbers=[1], combine_segments=True)
    for mask, expected in zip(masks, expected_dicom, strict=True):
        assert np.array_equal(mask.astype(bool), expected.mask())
    assert masks.any()
    assert str(seg.PatientName) == "" and seg.PatientID in ("", None)
    # The Analyze page's download, from the app's own Analysis of the upload, reads back the same way.
    upload = hd.seg.segread(io.BytesIO(seg_for_upload(series[0], expected_dicom[0])))
    back = upload.get_pixels_by_source_instance(uids[:1], segment_numbers=[1], combine_segments=True)
    assert np.array_equal(back[0].astype(bool), expected_dicom[0].mask())

    # A second run with --resume scores nothing and rewrites nothing.
    parts = {p: p.stat().st_mtime_ns for p in (out / "slices").glob("*.parquet")}
    seg_mtime = seg_path.stat().st_mtime_ns
    summary = batch.run([folder], out, resume=True, dicom_seg=True, progress=False)
    assert (summary.scored, summary.skipped) == (0, len(rows))
    assert {p: p.stat().st_mtime_ns for p in (out / "slices").glob("*.parquet")} == parts
    assert seg_path.stat().st_mtime_ns == seg_mtime


def _assert_row_matches(row: dict, expected) -> None:
    assert row["status"] == "ok", row["error_message"]
    for name, p in expected.probabilities.items():
        assert row[f"p_{name}"] == pytest.approx(p, abs=1e-5)
    assert row["p_tumor"] == pytest.approx(expected.p_tumor, abs=1e-5)
    assert row["predicted_class"] == expected.predicted_class
    assert row["tumor_detected"] == expected.tumor_detected
    assert row["mask_threshold"] == expected.default_mask_threshold
    assert np.array_equal(batch.rle_decode(row["mask_rle"]), expected.mask())
    assert row["model_version"] == expected.model_version


def test_summary_says_both_rates():
    summary = batch.Summary(
        items=50,
        skipped=8,
        scored=42,
        ok=41,
        errors={"InputError": 1},
        seconds=21.0,
        workers=2,
        model_ms_per_slice=500.0,
        outputs=["/o/slices"],
        notes=[],
    )
    assert summary.slices_per_s == pytest.approx(2.0) and summary.loaded_slices_per_s == pytest.approx(4.0)
    text = summary.text()
    assert "8 already in the output, 42 scored now" in text and "InputError 1" in text
    assert "2.00 over 21.0 s" in text and "4.00 slices/s across 2 worker(s)" in text
