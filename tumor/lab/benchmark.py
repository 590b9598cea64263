"""Speed benchmark: ``python -m tumor.lab.benchmark [--repeats N] [--training | --compare DIR DIR ...]``.

Prints the figures a user feels: model loading, the first and the typical
single-slice analysis (classifier, plus segmenter on positives), the mask
re-threshold behind the slider (no model call), and Grad-CAM. ``--training``
instead times training steps of both networks at the shipped input sizes, in
float32 and in ``mixed_bfloat16``, to plan a training run on this machine.
``--compare`` times several weights folders side by side, in one process,
each slice run by every pipeline in turn, so that the machine's drift in speed
hits them alike. Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd

from tumor.io import read_image
from tumor.pipeline import Pipeline

GALLERY = Path(__file__).resolve().parents[2] / "gallery"


def _ms(samples: list[float]) -> str:
    return (
        f"median {1000 * statistics.median(samples):7.1f} ms   min {1000 * min(samples):7.1f} ms   (n={len(samples)})"
    )


def training_step_seconds(
    kind: str, precision: str, size: int, build_kwargs: dict | None = None, batch: int = 8, steps: int = 2
) -> float:
    """Seconds per slice of a training step (augmentation included) at ``size`` px, after one warm-up step."""
    import keras

    from tumor import models
    from tumor.lab import train

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        rng = np.random.default_rng(0)
        builder = models.build_classifier if kind == "classifier" else models.build_segmenter
        net = builder(size, **(build_kwargs or {}))
        if kind == "classifier":
            model = train.ClassifierTrainer(net, intensity="foreground_mean")
            model.compile(optimizer="adamw", loss="categorical_crossentropy")
            x = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
            y = np.eye(len(models.CLASS_NAMES), dtype=np.float32)[rng.integers(0, 4, batch)]
        else:
            model = train.SegmenterTrainer(net, intensity="foreground_mean")
            model.compile(optimizer="adamw", loss=train.dice_bce_loss)
            x = rng.integers(0, 256, (batch, size, size, 4), dtype=np.uint8)
            y = x[..., 3:]
        model.train_on_batch(x, y)  # builds and traces the step
        t0 = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        return (time.perf_counter() - t0) / (steps * batch)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _training(precisions: list[str], weights_dir: str | None) -> None:
    """Prints training-step speed of each kind's first network, at its shipped input size."""
    from tumor import weights as weights_lib
    from tumor.lab import train

    registry = weights_lib.read_registry(weights_dir or weights_lib.DEFAULT_WEIGHTS_DIR)
    print(f"auto precision here: {train.resolve_precision('auto')}")
    for kind in ("classifier", "segmenter"):
        entry = registry.models[kind]
        for precision in precisions:
            sec = training_step_seconds(kind, precision, entry.input_size, entry.build_kwargs)
            print(f"train {kind:10s} {entry.input_size} px {precision:15s} {sec:6.2f} s per slice")


def _gallery_images() -> list:
    """Every gallery slice, decoded as the app decodes an upload."""
    index = pd.read_csv(GALLERY / "index.csv", dtype=str, keep_default_na=False)
    return [read_image(GALLERY / f) for f in index["image"]]


def _compare(weights_dirs: list[str], repeats: int) -> None:
    """Prints each folder's median positive and negative analysis, run in turn on every gallery slice."""
    pipes = {d: Pipeline.from_weights_dir(d) for d in weights_dirs}
    images = _gallery_images()
    for pipe in pipes.values():
        pipe.analyze(images[0])  # warm-up
    pos: dict[str, list[float]] = {d: [] for d in pipes}
    neg: dict[str, list[float]] = {d: [] for d in pipes}
    for rep in range(repeats):
        for img in images:
            for d in weights_dirs if rep % 2 == 0 else weights_dirs[::-1]:  # alternate who goes first
                t0 = time.perf_counter()
                a = pipes[d].analyze(img)
                (pos if a.tumor_detected else neg)[d].append(time.perf_counter() - t0)
    first = weights_dirs[0]

    def ratio(times: dict[str, list[float]], d: str) -> str:
        if not (times[d] and times[first]):
            return ""
        return f"   x{statistics.median(times[d]) / statistics.median(times[first]):.2f} of the first"

    for d in weights_dirs:
        print(f"{d} ({pipes[d].version})")
        print(f"  analyze, positive slice {_ms(pos[d]) if pos[d] else 'none'}{ratio(pos, d)}")
        print(f"  analyze, negative slice {_ms(neg[d]) if neg[d] else 'none'}{ratio(neg, d)}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5, help="passes over the gallery (default: %(default)s)")
    p.add_argument("--weights", default=None, help="weights folder (default: the repository's weights/)")
    p.add_argument(
        "--training",
        nargs="*",
        metavar="PRECISION",
        help="time training steps instead, in these dtype policies (default when given alone: float32 mixed_bfloat16)",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        metavar="DIR",
        help="time these weights folders side by side, each slice run by each in turn (ratios to the first)",
    )
    args = p.parse_args(argv)
    if args.compare:
        _compare(args.compare, args.repeats)
        return
    if args.training is not None:
        _training(args.training or ["float32", "mixed_bfloat16"], args.weights)
        return

    t0 = time.perf_counter()
    pipe = Pipeline.from_weights_dir(args.weights)
    print(f"load + verify models      {1000 * (time.perf_counter() - t0):9.1f} ms")
    images = _gallery_images()

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
