"""tumor.lab.gpu_train dry-runs on the CPU: tiny packed arrays, 32 px, a few steps on Keras' JAX backend.

The training runs in a subprocess with KERAS_BACKEND=jax (this process runs
TensorFlow); its weights are then loaded here, under TensorFlow, into the
project's own builders.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tumor.lab.data import pack_arrays

pytest.importorskip("jax", reason="gpu_train runs on Keras' JAX backend: pip install -r requirements-dev.txt")

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32


def _packed(folder: Path) -> Path:
    """Writes train.npz (24 slices) and val.npz (8) of fixed shapes: bright discs on dark slices."""
    folder.mkdir()
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for split, n in (("train", 24), ("val", 8)):
        labels = np.arange(n) % 4
        images = np.full((n, SIZE, SIZE, 3), 20, np.uint8)
        masks = np.zeros((n, SIZE, SIZE), np.uint8)
        for i, label in enumerate(labels):
            if label:
                disc = (yy - 8 - 2 * label) ** 2 + (xx - 10 - i % 7) ** 2 < (3 + label) ** 2
                masks[i] = disc
                images[i][disc] = 60 + 50 * label
        sources = np.where(labels == 0, "healthy", "figshare_cheng")
        pack_arrays(
            {"images": images, "masks": masks, "labels": labels.astype(np.int32), "sources": sources},
            folder / f"{split}.npz",
        )
    return folder


def _env(cache: Path, quick_compile: bool = True) -> dict[str, str]:
    # One core (the machine is shared). XLA's quick CPU code generation makes compiling a tiny
    # network several times faster, and its steps slower: right for the small segmenter, wrong
    # for ResNet-50, whose steps then take seconds each.
    flags = "--xla_cpu_multi_thread_eigen=false"
    if quick_compile:
        flags += " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": flags,
        # A second run (--resume) reuses the first one's compiled steps.
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }
    return env


def _run(*args: str, cache: Path, quick_compile: bool = True) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "tumor.lab.gpu_train", *args, "--allow-cpu"],
        cwd=ROOT,
        env=_env(cache, quick_compile),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _log(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_refuses_to_spend_a_lease_on_the_cpu(tmp_path):
    """Without --allow-cpu, a JAX that sees no GPU stops the run before any data is read."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tumor.lab.gpu_train",
            "classifier",
            "--packed",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "out"),
        ],
        cwd=ROOT,
        env=_env(tmp_path / "jax_cache"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "JAX sees no accelerator" in proc.stderr, proc.stderr[-2000:]


def test_segmenter_trains_on_jax_resumes_and_loads_under_tensorflow(tmp_path):
    from tumor import models

    data, out, cache = _packed(tmp_path / "data"), tmp_path / "out", tmp_path / "jax_cache"
    # The shipped builder at 4 filters and depth 2: the same code path, compiled in seconds.
    common = [
        "--packed",
        str(data),
        "--out",
        str(out),
        "--batch",
        "4",
        "--steps-per-call",
        "2",
        "--precision",
        "float32",
        "--seg-filters",
        "4",
        "--seg-depth",
        "2",
    ]
    _run("segmenter", *common, "--max-epochs", "1", cache=cache)
    rows = _log(out / "gpu_training_log_segmenter.csv")
    assert len(rows) == 1 and int(rows[0]["steps"]) == 4  # 23 slices: 5 whole batches, 2 whole calls of 2
    assert math.isfinite(float(rows[0]["loss"])) and 0 <= float(rows[0]["val_dice"]) <= 1

    _run("segmenter", *common, "--max-epochs", "2", "--resume", "--export", str(tmp_path / "export"), cache=cache)
    rows = _log(out / "gpu_training_log_segmenter.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 2 and state["step"] == 8
    assert (tmp_path / "export" / "segmenter.weights.h5").exists()  # small enough to travel whole

    net = models.build_segmenter(SIZE, base_filters=4, depth=2)  # TensorFlow here
    net.load_weights(str(out / "segmenter.weights.h5"))
    fresh = models.build_segmenter(SIZE, base_filters=4, depth=2)
    trained = net.get_layer("enc0_conv1").kernel.numpy()
    assert not np.allclose(trained, fresh.get_layer("enc0_conv1").kernel.numpy())
    pred = net.predict(np.zeros((1, SIZE, SIZE, 3), np.float32), verbose=0)
    assert pred.shape == (1, SIZE, SIZE, 1) and np.isfinite(pred).all()


@pytest.mark.slow
def test_classifier_trains_on_jax_and_loads_under_tensorflow(tmp_path):
    """The real ResNet-50, the network a GPU session trains first (one to three minutes here)."""
    from tumor import models

    data, out = _packed(tmp_path / "data"), tmp_path / "out"
    stdout = _run(
        "classifier",
        "--packed",
        str(data),
        "--out",
        str(out),
        "--batch",
        "8",
        "--steps-per-call",
        "1",  # the default: 24 slices make three calls, the first of which compiles
        "--max-epochs",
        "1",
        "--precision",
        "float32",
        "--export",
        str(tmp_path / "export"),
        "--split-mib",
        "8",
        cache=tmp_path / "jax_cache",
        quick_compile=False,
    )
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["backend"] == "jax" and summary["epochs_run"] == 1 and summary["step_ms"] > 0
    rows = _log(out / "gpu_training_log_classifier.csv")
    assert math.isfinite(float(rows[0]["loss"])) and 0 <= float(rows[0]["val_acc"]) <= 1

    net = models.build_classifier(SIZE)  # TensorFlow here
    net.load_weights(str(out / "classifier.weights.h5"))
    probs = net.predict(np.zeros((1, SIZE, SIZE, 3), np.float32), verbose=0)
    assert probs.shape == (1, len(models.CLASS_NAMES)) and np.isfinite(probs).all()

    # The exported float16 parts (each under --split-mib) join back into loadable float32 weights.
    parts = sorted((tmp_path / "export").glob("classifier.weights.h5.f16.part*"))
    assert len(parts) >= 2 and all(p.stat().st_size <= 8 * 2**20 for p in parts)
    from tumor.lab.gpu_train import join_parts

    joined = join_parts(tmp_path / "export")
    again = models.build_classifier(SIZE)
    again.load_weights(str(joined))
    kernel = net.get_layer("conv1_conv").kernel.numpy()
    assert np.allclose(again.get_layer("conv1_conv").kernel.numpy(), kernel, atol=1e-3 * np.abs(kernel).max())
