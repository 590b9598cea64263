"""Speed benchmark: ``python -m tumor.benchmark [--repeats N]``.

Prints the figures a user feels: model loading, the first and the typical
single-slice analysis (classifier, plus segmenter on positives), the mask
re-threshold behind the slider (no model call), and Grad-CAM. Timings are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd

from tumor.io import read_image
from tumor.pipeline import Pipeline

GALLERY = Path(__file__).resolve().parent.parent / "gallery"


def _ms(samples: list[float]) -> str:
    return (
        f"median {1000 * statistics.median(samples):7.1f} ms   min {1000 * min(samples):7.1f} ms   (n={len(samples)})"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="passes over the gallery (default: %(default)s)")
    p.add_argument("--weights", default=None, help="weights folder (default: the repository's weights/)")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    pipe = Pipeline.from_weights_dir(args.weights)
    print(f"load + verify models      {1000 * (time.perf_counter() - t0):9.1f} ms")
    index = pd.read_csv(GALLERY / "index.csv", dtype=str, keep_default_na=False)
    images = [read_image(GALLERY / f) for f in index["image"]]

    t0 = time.perf_counter()
    pipe.analyze(images[0])
    print(f"first analysis (warm-up)  {1000 * (time.perf_counter() - t0):9.1f} ms")

    pos, neg, cls, seg, rethreshold = [], [], [], [], []
    for _ in range(args.repeats):
        for img in images:
            t0 = time.perf_counter()
            a = pipe.analyze(img)
            (pos if a.tumor_detected else neg).append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pipe.classify(img)
            cls.append(time.perf_counter() - t0)
            if a.tumor_detected:
                t0 = time.perf_counter()
                pipe.segment(img)
                seg.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                a.mask(0.3), a.overlay(0.3), a.measurements(0.3)
                rethreshold.append(time.perf_counter() - t0)
    print(f"classifier only           {_ms(cls)}")
    if seg:
        print(f"segmenter only            {_ms(seg)}")
    if pos:
        print(f"analyze, positive slice   {_ms(pos)}")
    if neg:
        print(f"analyze, negative slice   {_ms(neg)}")
    if rethreshold:
        print(f"slider: mask+overlay+measure {_ms(rethreshold)}")
    t0 = time.perf_counter()
    pipe.grad_cam(a)
    print(f"Grad-CAM (on demand)      {1000 * (time.perf_counter() - t0):9.1f} ms")


if __name__ == "__main__":
    main()
