"""The compiled runtime: cache verification, thread-safe batched calls, and agreement with Keras.

The fast tests put small OpenVINO networks, built here without TensorFlow,
into a cache folder as the build would, and load them as the app does. The
slow ones use the real weights, whose compiled networks conftest.py builds once
into runs/test-cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import HAS_WEIGHTS, ROOT

from tumor import runtime
from tumor import weights as weights_lib
from tumor.errors import WeightsError
from tumor.preprocess import INTENSITY_MODES, scale_intensity

WEIGHTS = ROOT / "weights"
needs_weights = pytest.mark.skipif(not HAS_WEIGHTS, reason="trained weights not present in weights/")
SIZE = 16


def _entry(kind: str, name: str, sha: str) -> weights_lib.ModelEntry:
    return weights_lib.ModelEntry(
        kind=kind, name=name, path=Path(f"/nowhere/{name}.weights.h5"), sha256=sha, input_size=SIZE, build_kwargs={}
    )


def _tiny_ir(kind: str, folder: Path, tilt: float) -> None:
    """A small network of ``kind`` as an IR: class probabilities from the channel means, or a map of them."""
    import openvino as ov
    import openvino.opset13 as ops

    squares = ops.parameter([-1, SIZE, SIZE, 3], ov.Type.u8, name="squares")
    x = ops.multiply(ops.convert(squares, ov.Type.f32), ops.constant(np.float32(1 / 255)))
    if kind == "classifier":
        mean = ops.reduce_mean(x, ops.constant(np.array([1, 2], np.int64)), keep_dims=False)
        weights = np.array([[-4.0, 1.0, 2.0, tilt], [0.5, -1.0, 1.0, 0.0], [0.0, 2.0, -1.0, 1.0]], np.float32)
        out = ops.softmax(ops.matmul(mean, ops.constant(weights), False, False), 1)
    else:
        mean = ops.reduce_mean(x, ops.constant(np.array([3], np.int64)), keep_dims=True)
        out = ops.multiply(mean, ops.constant(np.float32(tilt)))
    folder.mkdir(parents=True)
    ov.save_model(ov.Model([out], [squares]), str(folder / runtime.XML), compress_to_fp16=False)


def _cache_entry(cache: Path, entries: list[weights_lib.ModelEntry], tilt: float = 0.5) -> Path:
    """Puts a tiny network for ``entries`` into ``cache`` with the sidecar the build writes; returns its folder."""
    spec = runtime.group_spec(entries)
    folder = cache / runtime.entry_name(spec)
    _tiny_ir(spec["kind"], folder, tilt)
    files = {n: weights_lib.sha256_file(folder / n) for n in (runtime.XML, runtime.BIN)}
    (folder / runtime.SIDECAR).write_text(json.dumps({"spec": spec, "files": files, "build": {}}))
    return folder


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


def _squares(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def test_a_cached_network_loads_and_runs_batches_of_any_size(cache):
    entries = [_entry("classifier", "c", "aa" * 32), _entry("classifier", "c2", "bb" * 32)]
    _cache_entry(cache, entries)
    (net,) = runtime.load_networks([entries], cache_dir=cache)
    assert (net.kind, net.size, net.names, net.precision) == ("classifier", SIZE, ("c", "c2"), "f32")
    x = _squares(2 * runtime.MAX_BATCH["classifier"] + 3)
    out = net(x)
    assert out.shape == (len(x), 4) and out.dtype == np.float32
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(net(x[:1]), out[:1], atol=1e-6)  # one slice alone reads as it does in a batch
    assert net(x[:0]).shape == (0, 4)
    with pytest.raises(ValueError, match=r"Received: shape=\(1, 16, 16\), dtype=uint8"):
        net(x[:1, ..., 0])
    with pytest.raises(ValueError, match="dtype=float32"):
        net(x.astype(np.float32))


def test_a_segmenter_network_returns_maps_without_the_channel(cache):
    entries = [_entry("segmenter", "s", "cc" * 32)]
    _cache_entry(cache, entries, tilt=1.0)
    (net,) = runtime.load_networks([entries], cache_dir=cache)
    x = _squares(5)
    np.testing.assert_allclose(net(x), x.mean(axis=-1) / 255, atol=1e-5)


@pytest.mark.parametrize("target", [runtime.XML, runtime.BIN])
def test_a_tampered_compiled_network_is_refused(cache, target):
    entries = [_entry("segmenter", "s", "cc" * 32)]
    folder = _cache_entry(cache, entries)
    raw = bytearray((folder / target).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (folder / target).write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match=rf"{target} does not match its recorded hash.*Delete"):
        runtime.load_networks([entries], cache_dir=cache)


def test_a_compiled_network_for_other_weights_or_without_its_record_is_refused(cache):
    entries = [_entry("segmenter", "s", "cc" * 32)]
    folder = _cache_entry(cache, entries)
    sidecar = json.loads((folder / runtime.SIDECAR).read_text())
    sidecar["spec"]["members"][0]["sha256"] = "dd" * 32  # as if built from another file
    (folder / runtime.SIDECAR).write_text(json.dumps(sidecar))
    with pytest.raises(WeightsError, match="other weights or settings"):
        runtime.load_networks([entries], cache_dir=cache)
    (folder / runtime.SIDECAR).write_text("{not json")
    with pytest.raises(WeightsError, match=r"no readable network\.json"):
        runtime.verify_entry(folder, runtime.group_spec(entries))


@pytest.mark.slow
def test_a_failed_build_is_a_clear_error_and_leaves_nothing_behind(cache):
    entries = [_entry("segmenter", "s", "cc" * 32)]  # its weights file does not exist: the build subprocess stops
    with pytest.raises(WeightsError, match=r"Building the compiled networks failed.*missing"):
        runtime.build_entries([entries], cache, timeout_s=300)
    assert list(cache.iterdir()) == []


def test_the_cache_key_follows_every_input_of_the_build():
    base = [_entry("classifier", "c", "aa" * 32)]
    names = {runtime.entry_name(runtime.group_spec(base))}
    for change in ({"sha256": "ab" * 32}, {"intensity": "foreground_mean"}, {"build_kwargs": {"depth": 3}}):
        names.add(runtime.entry_name(runtime.group_spec([_replace(base[0], **change)])))
    assert len(names) == 4
    with pytest.raises(ValueError, match="one kind and input side"):
        runtime.group_spec([base[0], _replace(base[0], input_size=32)])


def _replace(entry, **changes):
    import dataclasses

    return dataclasses.replace(entry, **changes)


def test_many_threads_at_once_get_what_serial_calls_get_with_a_bounded_pool(cache, monkeypatch):
    monkeypatch.setenv(runtime.REQUESTS_ENV, "2")
    entries = [_entry("classifier", "c", "aa" * 32)]
    _cache_entry(cache, entries)
    (net,) = runtime.load_networks([entries], cache_dir=cache)
    batches = [_squares(1 + k % 3, seed=k) for k in range(48)]
    serial = [net(b) for b in batches]
    with ThreadPoolExecutor(12) as pool:
        threaded = list(pool.map(net, batches))
    for a, b in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(a, b)
    assert net.max_requests == 2 and net._idle.qsize() <= 2  # never more requests than the pool allows


def test_precision_and_threads_settings_are_checked(monkeypatch):
    assert runtime.resolve_precision("auto", ("f32",)) == "f32"
    assert runtime.resolve_precision("auto", ("f32", "bf16")) == ("bf16" if runtime.native_bf16() else "f32")
    assert runtime.resolve_precision("f32", ("f32", "bf16")) == "f32"
    with pytest.raises(ValueError, match="'fp8'"):
        runtime.resolve_precision("fp8")
    if not runtime.native_bf16():
        with pytest.raises(ValueError, match="no native bf16"):
            runtime.resolve_precision("bf16")
    monkeypatch.setenv(runtime.PRECISION_ENV, "f32")
    assert runtime.resolve_precision(None, ("f32", "bf16")) == "f32"
    monkeypatch.setenv(runtime.THREADS_ENV, "3")
    assert runtime.num_threads() == 3
    monkeypatch.setenv(runtime.THREADS_ENV, "many")
    with pytest.raises(ValueError, match="'many'"):
        runtime.num_threads()


def test_a_batch_gives_the_same_bits_however_many_requests_are_free(cache, monkeypatch):
    entries = [_entry("segmenter", "s", "cc" * 32)]
    _cache_entry(cache, entries)
    monkeypatch.setenv(runtime.STREAMS_ENV, "2")
    monkeypatch.setenv(runtime.THREADS_ENV, "2")
    outs = {}
    for requests in ("1", "2"):  # one request runs the two pieces in turn; two run them at once
        monkeypatch.setenv(runtime.REQUESTS_ENV, requests)
        (net,) = runtime.load_networks([entries], cache_dir=cache)
        assert (net.streams, net.max_requests) == (2, int(requests))
        outs[requests] = net(_squares(7))
    np.testing.assert_array_equal(outs["1"], outs["2"])


def test_processes_starting_together_build_the_cache_once(cache, monkeypatch):
    import threading
    import time

    entries = [_entry("segmenter", "s", "cc" * 32)]
    builds = []

    def slow_build(groups, cache_dir, **kwargs):
        builds.append(threading.get_ident())
        time.sleep(0.5)
        _cache_entry(cache_dir, list(groups[0]))

    monkeypatch.setattr(runtime, "build_entries", slow_build)
    with ThreadPoolExecutor(3) as pool:
        nets = list(pool.map(lambda _: runtime.load_networks([entries], cache_dir=cache)[0], range(3)))
    assert len(builds) == 1 and all(n.names == ("s",) for n in nets)


def test_an_unwritable_cache_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(WeightsError, match=r"cannot be written.*TUMOR_CACHE_DIR"):
        runtime.build_entries([[_entry("segmenter", "s", "cc" * 32)]], blocker / "cache")


def test_the_manifest_admits_only_known_precisions_with_f32(tmp_path):
    d = tmp_path / "w"
    d.mkdir()
    for name in weights_lib.MODEL_KINDS:
        (d / f"{name}.weights.h5").write_bytes(name.encode())
    weights_lib.write_manifest(
        d, version="t", input_sizes={"classifier": 32, "segmenter": 32}, build_kwargs={}, tumor_threshold=0.5,
        mask_threshold=0.5, extra={"inference_precisions": {"classifier": ["f32", "bf16"]}},
    )  # fmt: skip
    reg = weights_lib.read_registry(d)
    assert reg.precisions == {"classifier": ("f32", "bf16"), "segmenter": ("f32",)}
    raw = json.loads((d / "manifest.json").read_text())
    raw["inference_precisions"] = {"segmenter": ["bf16"]}
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(WeightsError, match=r"segmenter inference precisions \['bf16'\]"):
        weights_lib.read_registry(d)


@pytest.mark.parametrize("intensity", INTENSITY_MODES)
def test_the_numpy_scaling_is_the_keras_scaling_the_networks_run(intensity):
    from tumor import models

    x = np.random.default_rng(3).integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    x[1] //= 8  # a dark slice: the gain is capped
    x[2, 4:] = 0  # mostly background
    expected = np.asarray(models.preprocess_classifier(x, intensity))
    np.testing.assert_allclose(scale_intensity(x, intensity), expected, rtol=1e-6, atol=1e-6)


def test_the_prediction_path_imports_neither_keras_nor_tensorflow():
    code = "import sys; import tumor.pipeline, tumor.runtime, tumor.explain, tumor.weights; "
    code += "print(sorted(m for m in sys.modules if m.split('.')[0] in ('keras', 'tensorflow')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- the real weights ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_pipeline():
    if not HAS_WEIGHTS:
        pytest.skip("trained weights not present in weights/")
    from tumor.pipeline import Pipeline

    return Pipeline.from_weights_dir(WEIGHTS)


def _gallery_squares(size: int) -> np.ndarray:
    import pandas as pd

    from tumor.io import read_image
    from tumor.preprocess import to_model_square

    index = pd.read_csv(ROOT / "gallery" / "index.csv", dtype=str, keep_default_na=False)
    return np.stack([to_model_square(read_image(ROOT / "gallery" / f), size)[0] for f in index["image"]])


@pytest.mark.slow
@needs_weights
def test_compiled_networks_agree_with_keras_on_the_gallery(real_pipeline):
    # Tolerances: f32 OpenVINO against eager Keras. Measured: 2.9e-7 for probabilities, 4e-6 for maps.
    from tumor import models

    registry = weights_lib.read_registry(WEIGHTS)
    for network in real_pipeline.networks:
        assert network.precision == "f32"
        squares = _gallery_squares(network.size)
        keras_out = []
        for name in network.names:
            entry = registry.models[name]
            model = weights_lib.load_model(entry)
            pre = models.preprocess_classifier if entry.kind == "classifier" else models.preprocess_segmenter
            keras_out.append(np.asarray(model(pre(squares, entry.intensity), training=False)))
        reference = np.mean(keras_out, axis=0)
        reference = reference[..., 0] if network.kind == "segmenter" else reference
        got = network(squares)
        if network.kind == "classifier":
            np.testing.assert_allclose(got, reference, atol=1e-5)
            assert (got.argmax(axis=1) == reference.argmax(axis=1)).all()
        else:
            np.testing.assert_allclose(got, reference, atol=1e-4)
            threshold = registry.mask_threshold
            assert ((got >= threshold) != (reference >= threshold)).sum() <= 2  # pixels on the threshold itself


@pytest.mark.slow
@needs_weights
def test_threads_calling_the_real_pipeline_get_what_serial_calls_get(real_pipeline):
    from tumor.io import read_image

    images = [read_image(p) for p in sorted((ROOT / "gallery").glob("*.jpg"))][:8]
    serial = [real_pipeline.analyze(im) for im in images]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(real_pipeline.analyze, images * 2))
    for a, b in zip(serial * 2, threaded, strict=True):
        assert a.predicted_class == b.predicted_class
        np.testing.assert_allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-6)
        assert (a.prob_map is None) == (b.prob_map is None)
        if a.prob_map is not None:
            np.testing.assert_allclose(a.prob_map, b.prob_map, atol=1e-6)


@pytest.mark.slow
@needs_weights
def test_a_tampered_copy_of_a_real_compiled_network_is_refused(real_pipeline, tmp_path):
    network = min(real_pipeline.networks, key=lambda n: (n.folder / runtime.BIN).stat().st_size)
    copy = tmp_path / network.folder.name
    shutil.copytree(network.folder, copy)
    spec = json.loads((copy / runtime.SIDECAR).read_text())["spec"]
    runtime.verify_entry(copy, spec)  # an untouched copy passes
    raw = bytearray((copy / runtime.BIN).read_bytes())
    raw[1000] ^= 0xFF
    (copy / runtime.BIN).write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="does not match its recorded hash"):
        runtime.verify_entry(copy, spec)


@pytest.mark.slow
@needs_weights
def test_analyze_runs_without_tensorflow_and_grad_cam_imports_it_on_request(real_pipeline):
    code = textwrap.dedent(
        """
        import sys
        from tumor.io import read_image
        from tumor.pipeline import Pipeline
        p = Pipeline.from_weights_dir()
        a = p.analyze(read_image("gallery/lgg_glioma_1.jpg"))
        assert a.tumor_detected and a.prob_map is not None
        print("before", "tensorflow" in sys.modules, "keras" in sys.modules)
        heat = p.grad_cam(a)
        assert heat.shape == a.image.shape[:2] and 0.0 <= heat.min() <= heat.max() <= 1.0 and heat.max() > 0
        print("after", "tensorflow" in sys.modules)
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "before False False" in out.stdout and "after True" in out.stdout
