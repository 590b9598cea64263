"""Manifest reading, the group split, slice loading and the tf.data pipelines.

Data contract: a manifest is a CSV with the columns of
``../shared/data/manifest.csv``; its paths are relative to its own folder.
Every split is made by ``group_id`` so that no patient (LGG), cross-validation
fold (figshare) or near-duplicate group (healthy sets) lands on two sides.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from tumor.models import CLASS_NAMES, INPUT_SIZE, to_model_square

# Split configuration. figshare carries the authors' patient-level folds:
# folds 1-2 train, fold 3 validates, fold 4 tests. LGG patients and healthy
# near-duplicate groups are hashed into 70/15/15 buckets.
FIGSHARE_FOLD_SPLIT = {"1": "train", "2": "train", "3": "val", "4": "test"}
GROUP_FRACTIONS = (("train", 0.70), ("val", 0.15), ("test", 0.15))
SPLIT_SEED = "tumor-split-v1"
DEFAULT_SPLIT_FILE = Path(__file__).resolve().parents[2] / "weights" / "split.csv"
REQUIRED_COLUMNS = ("image_path", "mask_path", "label", "source", "group_id")
# The committed split covers both manifests; the BraTS FLAIR one came later and has a file of its own.
DEFAULT_MANIFESTS = ("../shared/data/manifest.csv", "../shared/data/manifest_brats_flair.csv")


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Reads a manifest CSV and resolves its paths against its folder.

    Args:
        path: the manifest CSV.

    Returns:
        A DataFrame with the manifest's columns plus ``image_file`` and
        ``mask_file`` (absolute paths; ``mask_file`` is "" where no mask).
    """
    path = Path(path)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"Manifest {path} lacks columns {missing}. Received: columns={list(df.columns)}")
    unknown = sorted(set(df["label"]) - set(CLASS_NAMES))
    if unknown:
        raise ValueError(f"Manifest {path} has unknown labels {unknown}; expected {CLASS_NAMES}")
    root = path.parent
    df["image_file"] = [str(root / p) for p in df["image_path"]]
    df["mask_file"] = [str(root / p) if p else "" for p in df["mask_path"]]
    return df


def read_manifests(paths: list[str | Path] | tuple[str | Path, ...]) -> pd.DataFrame:
    """Reads several manifests (``read_manifest`` each) into one frame, in the order given.

    A patient can appear in two sources (three BraTS FLAIR patients are also LGG
    patients): their rows share a ``group_id``, so ``assign_split`` puts them on
    one side. Image paths must be unique across the manifests.
    """
    if not paths:
        raise ValueError("Expected at least one manifest. Received: paths=[]")
    df = pd.concat([read_manifest(p) for p in paths], ignore_index=True)
    dup = df["image_path"][df["image_path"].duplicated()]
    if len(dup):
        raise ValueError(f"Image paths repeat across the manifests. Received: {sorted(set(dup))[:5]}")
    return df


def check_group_disjoint(df: pd.DataFrame) -> None:
    """Raises ValueError when a ``group_id`` sits in more than one split (``df`` has a ``split`` column)."""
    spread = df.groupby("group_id")["split"].nunique()
    bad = sorted(spread[spread > 1].index)
    if bad:
        raise ValueError(f"Groups on two sides of the split: {bad[:10]} ({len(bad)} in all)")


def _group_bucket(group_id: str) -> str:
    digest = hashlib.sha256(f"{SPLIT_SEED}:{group_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for name, fraction in GROUP_FRACTIONS:
        edge += fraction
        if u < edge:
            return name
    return GROUP_FRACTIONS[-1][0]


def assign_split(df: pd.DataFrame) -> pd.Series:
    """Deterministic train/val/test assignment by group.

    figshare rows follow ``FIGSHARE_FOLD_SPLIT`` on their ``cv_fold``; every
    other row is placed by a seeded hash of its ``group_id``, so the same group
    always lands in the same split whatever else the manifest holds.
    """
    split = []
    for source, group, fold in zip(df["source"], df["group_id"], df.get("cv_fold", [""] * len(df)), strict=True):
        if source == "figshare_cheng" and fold in FIGSHARE_FOLD_SPLIT:
            split.append(FIGSHARE_FOLD_SPLIT[fold])
        else:
            split.append(_group_bucket(group))
    return pd.Series(split, index=df.index, name="split")


def load_split(df: pd.DataFrame, split_file: str | Path = DEFAULT_SPLIT_FILE) -> pd.DataFrame:
    """Attaches the committed split to a manifest.

    Rows listed in ``split_file`` (by ``image_path``) take the committed split;
    rows it does not list are assigned by ``assign_split``.
    """
    df = df.copy()
    df["split"] = assign_split(df)
    split_file = Path(split_file)
    if split_file.exists():
        committed = pd.read_csv(split_file, dtype=str, keep_default_na=False).set_index("image_path")["split"]
        known = df["image_path"].isin(committed.index)
        df.loc[known, "split"] = df.loc[known, "image_path"].map(committed)
    return df


def load_slice(image_file: str, mask_file: str = "", size: int = INPUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Reads one manifest slice as the models see it.

    Returns:
        The padded, resized RGB uint8 image (size, size, 3) and its mask as
        uint8 {0, 1} (size, size); an all-zero mask where there is none.
    """
    bgr = cv2.imread(image_file, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"Cannot read slice {image_file}")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    image, frame = to_model_square(rgb, size)
    if mask_file:
        raw = cv2.imread(mask_file, cv2.IMREAD_GRAYSCALE)
        if raw is None:
            raise ValueError(f"Cannot read mask {mask_file}")
        padded = cv2.copyMakeBorder(
            (raw > 0).astype(np.uint8),
            frame.top,
            frame.side - frame.height - frame.top,
            frame.left,
            frame.side - frame.width - frame.left,
            cv2.BORDER_CONSTANT,
            value=0,
        )
        mask = cv2.resize(padded, (size, size), interpolation=cv2.INTER_NEAREST)
    else:
        mask = np.zeros((size, size), np.uint8)
    return image, mask


def load_arrays(df: pd.DataFrame, size: int = INPUT_SIZE) -> dict[str, np.ndarray]:
    """Decodes every row once into memory.

    Returns:
        ``images`` (N, size, size, 3) uint8, ``masks`` (N, size, size) uint8,
        ``labels`` (N,) int32 indices into ``CLASS_NAMES``.
    """
    images = np.zeros((len(df), size, size, 3), np.uint8)
    masks = np.zeros((len(df), size, size), np.uint8)
    for i, (img, msk) in enumerate(zip(df["image_file"], df["mask_file"], strict=True)):
        images[i], masks[i] = load_slice(img, msk, size)
    labels = np.array([CLASS_NAMES.index(label) for label in df["label"]], np.int32)
    return {"images": images, "masks": masks, "labels": labels}


def class_weights(labels: np.ndarray, power: float = 0.5) -> dict[int, float]:
    """Inverse-frequency class weights, softened by ``power``, mean 1."""
    counts = np.bincount(labels, minlength=len(CLASS_NAMES)).astype(np.float64)
    w = np.where(counts > 0, (counts.sum() / np.maximum(counts, 1)) ** power, 0.0)
    w = w / (w[counts > 0] * counts[counts > 0]).sum() * counts.sum()
    return {i: float(v) for i, v in enumerate(w)}


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    sample_weight: np.ndarray | None = None,
    *,
    batch: int,
    shuffle: bool,
    seed: int = 0,
):
    """A tf.data pipeline over slices already decoded into memory.

    The arrays were decoded once (``load_arrays`` or ``load_packed``) and are
    already in memory, so the dataset only slices them (no ``cache()``, which
    would hold a second copy); it reshuffles every epoch with ``seed`` when
    ``shuffle``, batches whole batches only (a ragged last batch would make a
    compiled step retrace) and prefetches. Augmentation is not done here: it
    runs inside the model's training graph (``tumor.lab.train``).

    Args:
        x: inputs, first axis = slices.
        y: targets, same first axis.
        sample_weight: optional per-slice weights (class imbalance).
        batch: batch size; ``len(x) // batch`` batches per epoch.
        shuffle: reshuffle every epoch.
        seed: shuffle seed.

    Returns:
        A ``tf.data.Dataset`` of ``(x, y)`` or ``(x, y, sample_weight)`` batches.
    """
    import tensorflow as tf

    if len(x) != len(y) or (sample_weight is not None and len(sample_weight) != len(x)):
        raise ValueError(
            "x, y and sample_weight must have the same length. "
            f"Received: {len(x)}, {len(y)}, {None if sample_weight is None else len(sample_weight)}"
        )
    if not 0 < batch <= len(x):
        raise ValueError(f"batch must be in [1, len(x)={len(x)}]. Received: batch={batch}")
    tensors = (x, y) if sample_weight is None else (x, y, sample_weight)
    ds = tf.data.Dataset.from_tensor_slices(tensors)
    if shuffle:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def write_split(manifests: str | Path | list[str | Path], out: str | Path = DEFAULT_SPLIT_FILE) -> pd.DataFrame:
    """Writes the split of every row of ``manifests`` (one path or several) to ``out`` (CSV).

    Each row's split depends only on its own source, fold and group, so adding
    a manifest never moves a row of another.
    """
    paths = [manifests] if isinstance(manifests, (str, Path)) else list(manifests)
    df = read_manifests(paths)
    df["split"] = assign_split(df)
    check_group_disjoint(df)
    cols = ["image_path", "source", "label", "group_id", "split"]
    df[cols].sort_values("image_path").to_csv(out, index=False)
    return df


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the committed group split of a manifest.")
    parser.add_argument(
        "--manifest",
        action="append",
        help=f"manifest CSV; repeat for several (default: {' and '.join(DEFAULT_MANIFESTS)})",
    )
    parser.add_argument("--out", default=str(DEFAULT_SPLIT_FILE), help="split CSV to write (default: %(default)s)")
    parser.add_argument("--pack", default="", help="also write packed train/val .npz here (default: none)")
    args = parser.parse_args(argv)
    df = write_split(args.manifest or list(DEFAULT_MANIFESTS), args.out)
    if args.pack:
        Path(args.pack).mkdir(parents=True, exist_ok=True)
        for split in ("train", "val"):
            part = df[df["split"] == split]
            arrays = load_arrays(part)
            arrays["sources"] = part["source"].to_numpy().astype(str)
            pack_arrays(arrays, Path(args.pack) / f"{split}.npz")
    print(df.groupby(["source", "split"]).size().unstack(fill_value=0))
    print(df.groupby(["label", "split"]).size().unstack(fill_value=0))


# Packed arrays: a compact copy of decoded slices (WebP-encoded images,
# bit-packed masks) for training on a machine without the manifest's folder.
def pack_arrays(arrays: dict[str, np.ndarray], out: str | Path, quality: int = 90) -> None:
    """Writes ``load_arrays`` output as an ``.npz`` of WebP bytes and packed bits."""
    blobs, offsets = [], [0]
    for img in arrays["images"]:
        ok, buf = cv2.imencode(".webp", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_WEBP_QUALITY, quality])
        if not ok:
            raise ValueError("WebP encoding failed")
        blobs.append(buf.ravel())
        offsets.append(offsets[-1] + buf.size)
    np.savez_compressed(
        out,
        blob=np.concatenate(blobs),
        offsets=np.array(offsets, np.int64),
        masks=np.packbits(arrays["masks"].astype(bool), axis=-1),
        labels=arrays["labels"],
        sources=np.asarray(arrays.get("sources", [""] * len(arrays["labels"])), dtype=str),
    )


def load_packed(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a file written by ``pack_arrays`` back into ``load_arrays`` form."""
    with np.load(path) as z:
        blob, offsets = z["blob"], z["offsets"]
        masks = np.unpackbits(z["masks"], axis=-1).astype(np.uint8)
        images = np.stack(
            [
                cv2.cvtColor(cv2.imdecode(blob[a:b], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                for a, b in itertools.pairwise(offsets)
            ]
        )
        return {"images": images, "masks": masks, "labels": z["labels"], "sources": z["sources"]}


if __name__ == "__main__":
    main()
