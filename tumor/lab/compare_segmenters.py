"""Compare segmenter weights on validation tumour slices, without the cascade.

``python -m tumor.lab.compare_segmenters --manifest M WEIGHTS:SIZE [WEIGHTS:SIZE ...]``

Each candidate runs on every tumour slice of the split, with flip averaging,
and is scored by Dice at the slice's own resolution (the mask is resized back
to the slice, as in the app), so candidates trained at different input sizes
compare fairly. The mean of all candidates' maps is scored too. Used to choose
between the 128 px and 256 px segmenters (see weights/MODEL_CARD.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from tumor import metrics, runtime
from tumor import weights as weights_lib
from tumor.io import read_image
from tumor.lab import data
from tumor.lab.compare_ensembles import _no_classifier
from tumor.lab.evaluate import read_mask
from tumor.pipeline import Member, Pipeline, Settings

THRESHOLDS = (0.3, 0.4, 0.5)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="manifest CSV (default: none)")
    parser.add_argument("--split", default="val", help="split to score on (default: %(default)s)")
    parser.add_argument("candidates", nargs="+", help="segmenter weights file and its input size, as PATH:SIZE")
    args = parser.parse_args(argv)

    df = data.load_split(data.read_manifest(args.manifest))
    df = df[(df["split"] == args.split) & (df["mask_file"] != "")]
    pipes = {}
    for cand in args.candidates:
        path, size = cand.rsplit(":", 1)
        entry = weights_lib.ModelEntry(
            kind="segmenter", name="segmenter", path=Path(path), sha256=weights_lib.sha256_file(path),
            input_size=int(size), build_kwargs={},
        )  # fmt: skip
        (net,) = runtime.load_networks([[entry]])  # compiled as the app runs it; unit intensity, as these were trained
        stand_in = Member(_no_classifier, int(size))
        pipes[cand] = Pipeline((stand_in,), (Member.from_entry(entry, net),), Settings(flip_tta=True))
    names = [*pipes, "mean of all"]
    dice = {name: {t: [] for t in THRESHOLDS} for name in names}
    sources = []
    for image_file, mask_file, source in zip(df["image_file"], df["mask_file"], df["source"], strict=True):
        rgb = read_image(image_file)
        truth = read_mask(mask_file, rgb.shape[:2])
        if not truth.any():
            continue
        sources.append(source)
        maps = [p.segment(rgb) for p in pipes.values()]
        for name, prob in zip(names, [*maps, np.mean(maps, axis=0)], strict=True):
            for t in THRESHOLDS:
                dice[name][t].append(metrics.dice(prob >= t, truth))
    sources = np.array(sources)
    result = {
        name: {
            str(t): {
                "all": round(float(np.mean(v)), 4),
                **{s: round(float(np.mean(np.array(v)[sources == s])), 4) for s in sorted(set(sources))},
            }
            for t, v in per_t.items()
        }
        for name, per_t in dice.items()
    }
    print(json.dumps({"split": args.split, "n_tumour_slices": len(sources), "mean_dice": result}, indent=2))


if __name__ == "__main__":
    main()
