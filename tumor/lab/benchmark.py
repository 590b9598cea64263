"""Speed benchmark: ``python -m tumor.lab.benchmark [--repeats N] [--no-build] [--training | --compare DIR DIR ...]``.

Prints the figures a user feels, side by side with the peer approach (a Keras
ResNet-50 and Res-U-Net, each called with ``model.predict`` on one 256 px
image), measured in one process and interleaved slice by slice, so that the
machine's drift in speed (other jobs on its cores) hits both alike:

- a tumour-positive slice (classifier, then segmenter) and a negative one
  (classifier only), p50 over the gallery;
- a volume sweep (``analyze_volume``), per slice;
- Grad-CAM, the first call (Keras built on demand) and the next;
- the slider's redraw (mask, overlay and measurements; no model);
- import + load + verify in a fresh process, and that process's peak RSS after
  a pass over the gallery: the project from an empty compiled-network cache
  (the first start builds it; ``--no-build`` skips this), then from the warm
  cache (every later start), and the peer (Keras import and both builds).

The machine's load average is printed with every block. ``--training`` instead
times training steps of both networks at the shipped input sizes, in float32
and in ``mixed_bfloat16``. ``--compare`` times several weights folders side by
side, each slice run by every pipeline in turn. Timings are printed, never
asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from tumor.io import read_image
from tumor.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[2]
GALLERY = ROOT / "gallery"
PEER_SIZE = 256
VOLUME_SLICES = 48


def _ms(samples: list[float]) -> str:
    return (
        f"median {1000 * statistics.median(samples):7.1f} ms   min {1000 * min(samples):7.1f} ms   (n={len(samples)})"
    )


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


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


# --- the peer approach ------------------------------------------------------------------


class Peer:
    """The notebook approach: an untrained Keras ResNet-50 and Res-U-Net at 256 px, ``model.predict`` on one image."""

    def __init__(self) -> None:
        from tumor import models

        self.classifier = models.build_classifier(PEER_SIZE)
        self.segmenter = models.build_segmenter(PEER_SIZE)

    @staticmethod
    def _input(rgb: np.ndarray) -> np.ndarray:
        from tumor.preprocess import to_model_square

        return (to_model_square(rgb, PEER_SIZE)[0][None] / 255.0).astype(np.float32)

    def classify(self, rgb: np.ndarray) -> np.ndarray:
        return self.classifier.predict(self._input(rgb), verbose=0)[0]

    def segment(self, rgb: np.ndarray) -> np.ndarray:
        return self.segmenter.predict(self._input(rgb), verbose=0)[0, ..., 0]

    def grad_cam(self, rgb: np.ndarray) -> np.ndarray:
        from tumor.explain import grad_cam

        return grad_cam(self.classifier, self._input(rgb))


# --- fresh processes ------------------------------------------------------------------------

# Peak RSS from /proc (VmHWM): ru_maxrss of a child carries its parent's peak across fork and exec.
_PEAK_RSS = "next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')) / 1024"
_PROJECT_START = """
import sys, time
t0 = time.perf_counter()
from tumor.pipeline import Pipeline
p = Pipeline.from_weights_dir()
loaded = time.perf_counter() - t0
import pandas as pd
from tumor.io import read_image
for f in pd.read_csv("gallery/index.csv", dtype=str)["image"]:
    p.analyze(read_image("gallery/" + f))
print(loaded, PEAK_RSS, "tensorflow" in sys.modules)
""".replace("PEAK_RSS", _PEAK_RSS)

_PEER_START = """
import os, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
t0 = time.perf_counter()
from tumor.lab.benchmark import Peer, _gallery_images
peer = Peer()
loaded = time.perf_counter() - t0
for rgb in _gallery_images():
    peer.classify(rgb), peer.segment(rgb)
print(loaded, PEAK_RSS, True)
""".replace("PEAK_RSS", _PEAK_RSS)


def fresh_start(code: str, env: dict | None = None) -> tuple[float, float, bool]:
    """Runs ``code`` in a fresh interpreter.

    Returns:
        (seconds of import + load + verify, timed from the script's first line;
        peak RSS in MiB after a pass over the gallery; whether TensorFlow was
        imported).
    """
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the fresh process failed: {proc.stderr[-2000:]}")
    seconds, rss, tf = proc.stdout.strip().splitlines()[-1].split()
    return float(seconds), float(rss), tf == "True"


def _fresh_starts(build: bool) -> None:
    print(f"\n## Fresh process: import + load + verify, then peak RSS after a gallery pass  [{_load()}]")
    with tempfile.TemporaryDirectory(prefix="tumor-bench-cache-") as tmp:
        cache = tmp if build else os.environ.get("TUMOR_CACHE_DIR")
        env = {"TUMOR_CACHE_DIR": cache} if cache else {}
        rows = []
        if build:
            rows.append(("project, first start (builds the cache)", fresh_start(_PROJECT_START, env)))
        for k in (1, 2):
            rows.append((f"project, cache built, start {k}", fresh_start(_PROJECT_START, env)))
        rows.append(("peer (Keras import + both builds)", fresh_start(_PEER_START)))
        for name, (seconds, rss, tf) in rows:
            print(f"{name:42s} {seconds:6.2f} s   peak RSS {rss:6.0f} MiB   TensorFlow imported: {tf}")
    print(f"  [{_load()}]")


# --- the side-by-side figures ------------------------------------------------------------


def _volume_bytes(images: list[np.ndarray]) -> bytes:
    """A NIfTI volume of ``VOLUME_SLICES`` greyscale gallery slices (256 px), 1 mm voxels."""
    import nibabel

    square = [im for im in images if im.shape[:2] == (256, 256)]
    planes = [square[i % len(square)].mean(axis=2).T[:, ::-1] for i in range(VOLUME_SLICES)]
    vol = nibabel.Nifti1Image(np.stack(planes, axis=2).astype(np.float32), np.eye(4))
    return vol.to_bytes()


def _side_by_side(pipe: Pipeline, peer: Peer, images: list[np.ndarray], repeats: int) -> dict:
    print(f"\n## Side by side, one process, interleaved slice by slice  [{_load()}]")
    # Warm-up of both; a slice is positive for both when the project finds tumour on it.
    positive = [pipe.analyze(img).tumor_detected for img in images]
    for img in images[:2]:
        peer.classify(img), peer.segment(img)
    times: dict[str, list[float]] = {k: [] for k in ("pos", "neg", "peer_pos", "peer_neg", "slider")}
    last_positive = None
    for rep in range(repeats):
        for img, pos in zip(images, positive, strict=True):
            for who in ("project", "peer") if rep % 2 == 0 else ("peer", "project"):  # alternate who goes first
                t0 = time.perf_counter()
                if who == "project":
                    a = pipe.analyze(img)
                    times["pos" if pos else "neg"].append(time.perf_counter() - t0)
                    if pos:
                        last_positive = a
                        t0 = time.perf_counter()
                        a.mask(0.3), a.overlay(0.3), a.measurements(0.3)
                        times["slider"].append(time.perf_counter() - t0)
                else:
                    peer.classify(img)
                    if pos:
                        peer.segment(img)
                    times["peer_pos" if pos else "peer_neg"].append(time.perf_counter() - t0)
    rows = {}
    for label, mine, theirs in (("positive slice", "pos", "peer_pos"), ("negative slice", "neg", "peer_neg")):
        if times[mine] and times[theirs]:
            m, t = statistics.median(times[mine]), statistics.median(times[theirs])
            rows[label] = (t, m)
            print(
                f"{label:22s} peer p50 {1000 * t:7.1f} ms   project p50 {1000 * m:7.1f} ms   "
                f"{t / m:4.2f}x the peer's speed   (n={len(times[mine])})"
            )
    if times["slider"]:
        print(f"slider redraw (no model) {_ms(times['slider'])}")
    print(f"  [{_load()}]")
    return {"rows": rows, "last_positive": last_positive}


def _volume(pipe: Pipeline, images: list[np.ndarray]) -> None:
    from tumor.io import read_volume

    volume = read_volume(_volume_bytes(images), name="bench.nii")
    n = volume.n_slices("axial")
    pipe.analyze_volume(volume)  # warm-up: every batch shape once
    t0 = time.perf_counter()
    result = pipe.analyze_volume(volume)
    seconds = time.perf_counter() - t0
    positives = sum(p >= pipe.tumor_threshold for p in result.p_tumor)
    print(
        f"\n## Volume sweep: {n} slices of 256 px ({positives} positive)   {1000 * seconds / n:6.1f} ms per slice "
        f"({seconds:.1f} s in all)  [{_load()}]"
    )


def _grad_cam(pipe: Pipeline, peer: Peer, analysis) -> None:
    t0 = time.perf_counter()
    pipe.grad_cam(analysis)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    pipe.grad_cam(analysis)
    warm = time.perf_counter() - t0
    peer.grad_cam(np.asarray(analysis.image))
    t0 = time.perf_counter()
    peer.grad_cam(np.asarray(analysis.image))
    peer_warm = time.perf_counter() - t0
    print(
        f"\n## Grad-CAM: project first call {1000 * first:7.0f} ms (Keras imported and built on demand), "
        f"next {1000 * warm:6.0f} ms; peer (warm) {1000 * peer_warm:6.0f} ms  [{_load()}]"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="passes over the gallery (default: %(default)s)")
    p.add_argument("--weights", default=None, help="weights folder (default: the repository's weights/)")
    p.add_argument("--no-build", action="store_true", help="skip the first start from an empty cache (default: run it)")
    p.add_argument("--no-fresh", action="store_true", help="skip the fresh-process figures (default: run them)")
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

    from tumor import runtime

    print(f"# tumor.lab.benchmark, {datetime.now(UTC).isoformat(timespec='minutes')}")
    pipe = Pipeline.from_weights_dir(args.weights)
    nets = ", ".join(repr(n) for n in pipe.networks)
    net = pipe.networks[0]
    print(f"project {pipe.version}: {nets}; {runtime.num_threads()} threads in {net.streams} streams, "
          f"{net.max_requests} infer requests per network")  # fmt: skip
    images = _gallery_images()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    peer = Peer()
    figures = _side_by_side(pipe, peer, images, args.repeats)
    _volume(pipe, images)
    if figures["last_positive"] is not None:
        _grad_cam(pipe, peer, figures["last_positive"])
    if not args.no_fresh:
        _fresh_starts(build=not args.no_build)
    rows = {k: {"peer_s": round(t, 4), "project_s": round(m, 4)} for k, (t, m) in figures["rows"].items()}
    print(f"\n{json.dumps(rows)}")


if __name__ == "__main__":
    main()
