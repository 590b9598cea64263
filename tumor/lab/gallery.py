"""Builds the shipped gallery: ``python -m tumor.lab.gallery``.

Picks fixed real slices from the committed *test* split only (never from
training or validation), covering every class and both sequences, and copies
them with their expert masks into ``gallery/`` with an ``index.csv``. The
healthy Kaggle sets are left out: their sources state no licence.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from tumor.lab import data

GALLERY_DIR = Path(__file__).resolve().parents[2] / "gallery"
# (source, label, how many): positives are drawn among mid-sized tumours.
PICKS = (
    ("lgg_kaggle_3m", "glioma", 3),
    ("lgg_kaggle_3m", "no_tumor", 2),
    ("figshare_cheng", "glioma", 3),
    ("figshare_cheng", "meningioma", 3),
    ("figshare_cheng", "pituitary", 3),
)
LICENSES = {
    "lgg_kaggle_3m": (
        "CC BY-NC-SA 4.0 (non-commercial)",
        "Buda et al. 2019; Mazurowski et al. 2017; TCIA TCGA-LGG",
    ),
    "figshare_cheng": ("CC BY 4.0", "Cheng et al. 2015/2016, figshare 10.6084/m9.figshare.1512427"),
}
SPACING_MM = {"lgg_kaggle_3m": "", "figshare_cheng": "0.98"}  # figshare: 0.49 mm at 512 px, resized to 256


def build(manifest: str | Path, out: Path = GALLERY_DIR) -> list[dict]:
    """Copies the picked test slices into ``out``; returns the index rows."""
    df = data.load_split(data.read_manifest(manifest))
    test = df[df["split"] == "test"].sort_values("image_path")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for source, label, count in PICKS:
        part = test[(test["source"] == source) & (test["label"] == label)]
        if label != "no_tumor":
            areas = np.array([(np.array(Image.open(p).convert("L")) > 0).sum() for p in part["mask_file"]])
            part = part[(areas > 400) & (areas < 6000)]  # visible but not huge
        if label == "no_tumor":
            # Slices from the middle of the head, not the empty top or bottom.
            names = part["image_path"].str.extract(r"_(\d+)\.jpg$")[0].astype(int)
            part = part[(names >= 12) & (names <= 30)]
        # A fixed spread over the sorted candidates, one per patient/fold group where possible.
        part = part.drop_duplicates("group_id") if part["group_id"].nunique() >= count else part
        idx = np.linspace(0, len(part) - 1, count).round().astype(int)
        for k, (_, row) in enumerate(part.iloc[idx].iterrows()):
            slice_id = f"{source.split('_')[0]}_{label}_{k + 1}"
            shutil.copyfile(row["image_file"], out / f"{slice_id}.jpg")
            mask_name = ""
            if row["mask_file"]:
                mask_name = f"{slice_id}_mask.png"
                shutil.copyfile(row["mask_file"], out / mask_name)
            lic, credit = LICENSES[source]
            rows.append(
                {
                    "id": slice_id,
                    "image": f"{slice_id}.jpg",
                    "mask": mask_name,
                    "label": label,
                    "source": source.split("_")[0],
                    "pixel_spacing_mm": SPACING_MM[source],
                    "license": lic,
                    "credit": credit,
                    "orig_name": row["orig_name"],
                }
            )
    import pandas as pd

    pd.DataFrame(rows).to_csv(out / "index.csv", index=False)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", default="../shared/data/manifest.csv", help="manifest CSV (default: %(default)s)")
    p.add_argument("--out", default=str(GALLERY_DIR), help="gallery folder (default: %(default)s)")
    args = p.parse_args(argv)
    rows = build(args.manifest, Path(args.out))
    print(f"wrote {len(rows)} slices to {args.out}")


if __name__ == "__main__":
    main()
