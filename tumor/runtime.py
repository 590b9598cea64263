"""The compiled networks the app runs: OpenVINO, built from the verified weights, thread-safe, batched.

Each group of ensemble members that sees the same slices at the same input side
(the classifiers; the colour segmenters; the greyscale segmenters) is exported
as one network: uint8 model squares (N, S, S, 3) in, the mean of its members
out, with each member's intensity scaling (``tumor.models.preprocess_*``) inside
the graph. One call runs a slice, its mirror and every member of the group.

The compiled form is built on first load from the ``.weights.h5`` files whose
sha256 the manifest pins, into a cache folder keyed by those hashes
(``$TUMOR_CACHE_DIR``, default ``~/.cache/tumor-mri``). The build runs in a
subprocess (``python -m tumor.runtime --job JOB``), so the process that serves
predictions never imports TensorFlow. A cache entry holds the OpenVINO IR
(``network.xml``, ``network.bin``) and a sidecar (``network.json``) with the
sha256 of both files and the spec they were built from; loading checks both and
refuses a mismatch with ``WeightsError``. The build also runs the IR against
Keras on a fixed probe batch and refuses a conversion that differs by more than
``CONVERSION_TOLERANCE``.

Networks are compiled on ``$TUMOR_NUM_THREADS`` threads (default: every core
this process may use) split into ``$TUMOR_NUM_STREAMS`` streams (default 2;
1 is OpenVINO's ``PERFORMANCE_HINT=LATENCY``), in f32, or in bf16 where the
manifest admits bf16 for that kind (``Registry.precisions``) and the CPU
reports it natively. Two streams, because nearly every call is a batch of two
or more (a slice and its mirror, or a volume's slices): its halves run at once,
one per stream, which measured about 30% faster here than one request of both
on both threads, and two sessions' calls run side by side. Many threads may
call a network at once: each call takes infer requests from a small pool (one
per stream, ``$TUMOR_INFER_REQUESTS``), which bounds the memory that concurrent
sessions can hold; OpenVINO runs the calls, without a lock in Python.

``python -m tumor.runtime`` builds (or verifies) the cache for the shipped
weights ahead of the first start.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import numpy as np

from tumor import weights as weights_lib
from tumor.errors import WeightsError

# Settings, gathered here.
CACHE_ENV = "TUMOR_CACHE_DIR"
THREADS_ENV = "TUMOR_NUM_THREADS"
STREAMS_ENV = "TUMOR_NUM_STREAMS"
PRECISION_ENV = "TUMOR_PRECISION"  # "auto" (default), "f32" or "bf16"
REQUESTS_ENV = "TUMOR_INFER_REQUESTS"
EXPORT_FORMAT = 1  # bump when the exported graph changes: older cache entries are then never read
DEFAULT_STREAMS = 2  # a batch's halves at once; capped at the thread count
MAX_BATCH = {"classifier": 8, "segmenter": 4}  # images per inference: larger batches run no faster here
CONVERSION_TOLERANCE = 1e-4  # largest |IR - Keras| accepted at build time, f32, on the probe batch
BUILD_TIMEOUT_S = 1800
XML, BIN, SIDECAR = "network.xml", "network.bin", "network.json"

_CORE = None
_CORE_LOCK = threading.Lock()


def default_cache_dir() -> Path:
    """``$TUMOR_CACHE_DIR``, else ``$XDG_CACHE_HOME/tumor-mri``, else ``~/.cache/tumor-mri``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tumor-mri"


def num_threads() -> int:
    """Inference threads: ``$TUMOR_NUM_THREADS``, else every core this process may run on."""
    raw = os.environ.get(THREADS_ENV, "")
    if not raw:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{THREADS_ENV} must be a whole number of threads, at least 1. Received: {raw!r}")
    return int(raw)


def _positive_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a whole number, at least 1. Received: {raw!r}")
    return int(raw)


def num_streams() -> int:
    """Inference streams per network: ``$TUMOR_NUM_STREAMS``, default 2, at most the thread count."""
    return min(_positive_env(STREAMS_ENV, DEFAULT_STREAMS), num_threads())


def core():
    """The process's one ``openvino.Core``."""
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            import openvino as ov

            _CORE = ov.Core()
        return _CORE


def native_bf16() -> bool:
    """Whether this CPU runs bf16 natively (OpenVINO lists BF16 among its optimisation capabilities)."""
    return "BF16" in core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def resolve_precision(requested: str | None, allowed: Sequence[str] = ("f32",)) -> str:
    """The precision a network runs in.

    Args:
        requested: "auto", "f32" or "bf16"; None reads ``$TUMOR_PRECISION``
            (default "auto").
        allowed: the precisions the manifest admits for the network's kind.

    Returns:
        For "auto": "bf16" when admitted and native here, else "f32". An
        explicit request is honoured whatever the manifest admits (to validate
        a precision), but bf16 only where the CPU has it.

    Raises:
        ValueError: an unknown precision, or bf16 on a CPU without it.
    """
    requested = requested or os.environ.get(PRECISION_ENV, "") or "auto"
    if requested not in ("auto", *weights_lib.PRECISIONS):
        raise ValueError(f"precision must be 'auto' or one of {weights_lib.PRECISIONS}. Received: {requested!r}")
    if requested == "auto":
        return "bf16" if "bf16" in allowed and native_bf16() else "f32"
    if requested == "bf16" and not native_bf16():
        caps = core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        raise ValueError(f"This CPU has no native bf16 (OpenVINO reports {caps}). Received: precision='bf16'")
    return requested


# --- the cache ------------------------------------------------------------------------


def group_spec(entries: Sequence[weights_lib.ModelEntry]) -> dict:
    """What a network is built from: its kind, input side and members' hashes, scalings and builds.

    Raises:
        ValueError: no entries, or entries of different kinds or input sides.
    """
    if not entries:
        raise ValueError("A network needs at least one weights entry. Received: none")
    kinds, sizes = {e.kind for e in entries}, {e.input_size for e in entries}
    if len(kinds) != 1 or len(sizes) != 1:
        raise ValueError(f"One network takes members of one kind and input side. Received: {kinds}, {sizes}")
    return {
        "format": EXPORT_FORMAT,
        "kind": entries[0].kind,
        "size": entries[0].input_size,
        "members": [
            {
                "name": e.name or e.kind,
                "sha256": e.sha256,
                "input_size": e.input_size,
                "build_kwargs": e.build_kwargs,
                "intensity": e.intensity,
            }
            for e in entries
        ],
    }


def entry_name(spec: dict) -> str:
    """The cache folder of a spec: readable kind and side, then the spec's own hash."""
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return f"{spec['kind']}-{spec['size']}px-{digest[:24]}"


def _sha256(path: Path) -> str:
    return weights_lib.sha256_file(path)


def verify_entry(folder: Path, spec: dict) -> dict:
    """Checks a cache entry against the spec it must hold and the hashes its sidecar records.

    Returns:
        The sidecar.

    Raises:
        WeightsError: the sidecar is missing, unreadable or for another spec,
            or a file is missing or differs from its recorded sha256.
    """
    remedy = f"Delete {folder} and the networks are rebuilt from the verified weights on the next start."
    try:
        sidecar = json.loads((folder / SIDECAR).read_text())
        files = dict(sidecar["files"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise WeightsError(f"The compiled network in {folder} has no readable {SIDECAR} ({err}). {remedy}") from err
    if sidecar.get("spec") != spec:
        raise WeightsError(
            f"The compiled network in {folder} was built from other weights or settings than the manifest names "
            f"(its {SIDECAR} records another spec). {remedy}"
        )
    if set(files) != {XML, BIN}:
        raise WeightsError(
            f"The compiled network in {folder} records files {sorted(files)}, not {[XML, BIN]}. {remedy}"
        )
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise WeightsError(f"The compiled network file {path} is missing. {remedy}")
        actual = _sha256(path)
        if actual != expected:
            raise WeightsError(
                f"The compiled network file {path} does not match its recorded hash (expected sha256 "
                f"{expected[:12]}…, found {actual[:12]}…). It may be corrupt or tampered with; the app refuses to "
                f"predict with it. {remedy}"
            )
    return sidecar


@contextlib.contextmanager
def _build_lock(cache_dir: Path):
    """An exclusive lock on the cache folder while it is built (none where ``fcntl`` is missing)."""
    try:
        import fcntl

        cache_dir.mkdir(parents=True, exist_ok=True)
        handle = open(cache_dir / ".build.lock", "a")  # held until the build is done
    except (ImportError, OSError):
        handle = None  # no lock: build_entries reports an unwritable folder
    if handle is None:
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        handle.close()  # releases the lock


def build_entries(
    groups: Sequence[Sequence[weights_lib.ModelEntry]], cache_dir: Path, *, timeout_s: float = BUILD_TIMEOUT_S
) -> None:
    """Exports each group into ``cache_dir``, in one subprocess that imports TensorFlow (the caller never does).

    Each entry is built in a temporary folder and renamed into place only when
    complete, so a crash leaves no half-built entry; if another process built
    the same entry meanwhile, its copy stays.

    Raises:
        WeightsError: the cache folder cannot be written, or the build failed.
    """
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        work = cache_dir / f".build-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        work.mkdir()
    except OSError as err:
        raise WeightsError(
            f"The compiled networks cannot be written to {cache_dir} ({err}). Set {CACHE_ENV} to a writable folder."
        ) from err
    try:
        jobs = []
        for i, entries in enumerate(groups):
            spec = group_spec(entries)
            out = work / str(i)
            out.mkdir()
            jobs.append(
                {
                    "dir": str(out),
                    "spec": spec,
                    "entries": [
                        {
                            "kind": e.kind,
                            "name": e.name,
                            "path": str(Path(e.path).resolve()),
                            "sha256": e.sha256,
                            "input_size": e.input_size,
                            "build_kwargs": e.build_kwargs,
                            "intensity": e.intensity,
                        }
                        for e in entries
                    ],
                }
            )
        job_file = work / "job.json"
        job_file.write_text(json.dumps({"groups": jobs}, indent=1))
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="-1")
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "tumor.runtime", "--job", str(job_file)],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as err:
            raise WeightsError(f"Building the compiled networks took over {timeout_s:.0f} s; gave up.") from err
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-8:]
            raise WeightsError("Building the compiled networks failed: " + " | ".join(tail))
        for job in jobs:
            out = Path(job["dir"])
            sidecar = {
                "spec": job["spec"],
                "files": {XML: _sha256(out / XML), BIN: _sha256(out / BIN)},
                "build": json.loads((out / "build.json").read_text()),
            }
            (out / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
            final = cache_dir / entry_name(job["spec"])
            try:
                out.rename(final)
            except OSError:
                if not (final / SIDECAR).is_file():  # not another process's finished copy: a real failure
                    raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- the compiled networks ------------------------------------------------------------


class Network:
    """One compiled network: uint8 model squares in, the mean of its members' outputs out.

    Safe to call from many threads at once. A call takes one infer request from
    a pool of at most ``max_requests`` (waiting for one if need be), and more if
    they are free, up to one per stream: its batch is split between them and
    they run at once. The pool bounds the memory that concurrent calls hold;
    large batches run in chunks of ``max_batch`` images.

    Attributes:
        kind: "classifier" or "segmenter".
        size: input side S in pixels.
        names: the manifest names of the members it averages.
        precision: "f32" or "bf16".
        folder: the verified cache entry it was compiled from.
        streams: OpenVINO streams it was compiled with.
        max_requests: infer requests it keeps at most.
        max_batch: images per inference.
    """

    def __init__(
        self, compiled, *, kind: str, size: int, names: tuple[str, ...], precision: str, folder: Path, streams: int
    ):
        self._compiled = compiled
        self.kind, self.size, self.names, self.precision, self.folder = kind, size, names, precision, folder
        self.streams = streams
        self.max_requests = _positive_env(REQUESTS_ENV, streams)
        self.max_batch = MAX_BATCH[kind]
        self._slots = threading.BoundedSemaphore(self.max_requests)
        self._idle: queue.SimpleQueue = queue.SimpleQueue()

    def __repr__(self) -> str:
        return f"Network({self.kind}, {self.size} px, {'+'.join(self.names)}, {self.precision})"

    def __call__(self, squares: np.ndarray) -> np.ndarray:
        """Runs (N, S, S, 3) uint8 squares; returns float32 (N, 4) probabilities or (N, S, S) tumour maps."""
        squares = np.asarray(squares)
        if squares.ndim != 4 or squares.shape[1:] != (self.size, self.size, 3) or squares.dtype != np.uint8:
            raise ValueError(
                f"Expected uint8 model squares of shape (N, {self.size}, {self.size}, 3). "
                f"Received: shape={squares.shape}, dtype={squares.dtype}"
            )
        if not len(squares):
            return np.zeros((0, 4) if self.kind == "classifier" else (0, self.size, self.size), np.float32)
        outs = [self._infer(squares[i : i + self.max_batch]) for i in range(0, len(squares), self.max_batch)]
        out = np.concatenate(outs) if len(outs) != 1 else outs[0]
        return out[..., 0] if self.kind == "segmenter" else out

    def _take(self, blocking: bool):
        """An infer request from the pool, or None when ``blocking`` is False and none is free."""
        if not self._slots.acquire(blocking=blocking):
            return None
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            return self._compiled.create_infer_request()

    def _infer(self, chunk: np.ndarray) -> np.ndarray:
        # The batch is split by its size alone, one piece per stream, so that an image is always computed in
        # the same piece (the same output to the last bit, however busy the pool). The pieces run on one
        # request for sure and on any others free up to one each: never waiting while holding one, so that
        # concurrent calls cannot deadlock.
        pieces = np.array_split(np.ascontiguousarray(chunk), min(len(chunk), self.streams))
        requests = [self._take(blocking=True)]
        while len(requests) < len(pieces) and (extra := self._take(blocking=False)) is not None:
            requests.append(extra)
        try:
            outs = []
            for start in range(0, len(pieces), len(requests)):
                wave = list(zip(requests, pieces[start : start + len(requests)], strict=False))
                for request, piece in wave:
                    request.start_async({0: piece}, share_inputs=True)  # no copy; the pieces outlive the wait
                for request, _ in wave:
                    request.wait()
                    outs.append(np.array(request.get_output_tensor(0).data, np.float32))
            return np.concatenate(outs)
        finally:
            for request in requests:
                self._idle.put(request)
                self._slots.release()


def compile_entry(folder: Path, spec: dict, precision: str) -> Network:
    """Verifies a cache entry and compiles it for this CPU."""
    verify_entry(folder, spec)
    streams = num_streams()
    config = {"INFERENCE_NUM_THREADS": num_threads(), "INFERENCE_PRECISION_HINT": precision}
    config |= {"NUM_STREAMS": streams} if streams > 1 else {"PERFORMANCE_HINT": "LATENCY"}
    try:
        compiled = core().compile_model(str(folder / XML), "CPU", config)
    except RuntimeError as err:
        raise WeightsError(f"The compiled network in {folder} could not be loaded by OpenVINO: {err}") from err
    names = tuple(m["name"] for m in spec["members"])
    return Network(
        compiled, kind=spec["kind"], size=spec["size"], names=names, precision=precision, folder=folder, streams=streams
    )


def load_networks(
    groups: Sequence[Sequence[weights_lib.ModelEntry]],
    *,
    cache_dir: str | Path | None = None,
    precision: str | None = None,
    allowed: dict[str, tuple[str, ...]] | None = None,
) -> list[Network]:
    """The compiled network of each group of (verified) weights entries, built into the cache if missing.

    Args:
        groups: each a list of entries of one kind and input side, averaged
            by one network.
        cache_dir: the cache (default: ``default_cache_dir()``).
        precision: "auto", "f32" or "bf16" (``resolve_precision``).
        allowed: ``kind -> precisions`` the manifest admits (default: f32 only).

    Raises:
        WeightsError: the build failed, or a cache entry is corrupt, tampered
            with or for other weights.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    specs = [group_spec(g) for g in groups]
    folders = [cache_dir / entry_name(s) for s in specs]

    def missing() -> list:
        return [g for g, f in zip(groups, folders, strict=True) if not (f / SIDECAR).is_file()]

    if missing():
        with _build_lock(cache_dir):  # processes starting together (Ray actors, test servers) build once
            if missing():
                build_entries(missing(), cache_dir)
    return [
        compile_entry(f, s, resolve_precision(precision, (allowed or {}).get(s["kind"], ("f32",))))
        for f, s in zip(folders, specs, strict=True)
    ]


# --- the build (runs in the subprocess) ----------------------------------------------


def _probe_batch(size: int) -> np.ndarray:
    """Two fixed uint8 squares: a bright disc with a brighter blob on black, and seeded noise."""
    y, x = np.mgrid[:size, :size]
    c = size / 2
    disc = np.where((x - c) ** 2 + (y - c) ** 2 < (0.4 * size) ** 2, 90.0, 0.0)
    disc += 120.0 * np.exp(-((x - 0.62 * size) ** 2 + (y - c) ** 2) / (2 * (0.08 * size) ** 2))
    first = np.repeat(np.clip(disc, 0, 255)[..., None], 3, axis=-1) * np.array([0.8, 1.0, 0.9])
    noise = np.random.default_rng(0).integers(0, 256, (size, size, 3))
    return np.stack([first, noise]).astype(np.uint8)


def _export(job: dict) -> None:
    """Exports one group as an OpenVINO IR in ``job["dir"]`` and checks it against Keras."""
    import openvino as ov
    import tensorflow as tf

    from tumor import models

    entries = [weights_lib.ModelEntry(**{**e, "path": Path(e["path"])}) for e in job["entries"]]
    nets = [(weights_lib.load_model(e), e.intensity) for e in entries]  # verifies each hash again
    size = job["spec"]["size"]
    pre = models.preprocess_classifier if job["spec"]["kind"] == "classifier" else models.preprocess_segmenter

    @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.uint8, name="squares")])
    def network(squares):
        outs = [net(pre(squares, intensity), training=False) for net, intensity in nets]
        return outs[0] if len(outs) == 1 else tf.reduce_mean(tf.stack(outs), axis=0)

    out = Path(job["dir"])
    model = ov.convert_model(network)
    ov.save_model(model, str(out / XML), compress_to_fp16=False)
    probe = _probe_batch(size)
    reference = network(tf.constant(probe)).numpy()
    compiled = ov.Core().compile_model(str(out / XML), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    diff = float(np.abs(compiled(probe)[0] - reference).max())
    if not diff <= CONVERSION_TOLERANCE:
        raise SystemExit(
            f"The OpenVINO IR differs from Keras by {diff:.2e} on the probe batch (> {CONVERSION_TOLERANCE})"
        )
    versions = {p: metadata.version(p) for p in ("openvino", "keras", "tensorflow-cpu") if _installed(p)}
    build = {"built": datetime.now(UTC).isoformat(timespec="seconds"), "max_abs_diff_keras_f32": diff, **versions}
    (out / "build.json").write_text(json.dumps(build) + "\n")


def _installed(package: str) -> bool:
    try:
        metadata.version(package)
    except metadata.PackageNotFoundError:
        return False
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build or verify the compiled networks of a weights folder.")
    parser.add_argument("--weights", default=None, help="weights folder (default: the repository's weights/)")
    parser.add_argument("--cache", default=None, help=f"cache folder (default: ${CACHE_ENV} or ~/.cache/tumor-mri)")
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)  # the build subprocess
    args = parser.parse_args(argv)
    if args.job:
        for job in json.loads(Path(args.job).read_text())["groups"]:
            _export(job)
        return
    from tumor.pipeline import Pipeline

    t0 = time.perf_counter()
    pipeline = Pipeline.from_weights_dir(args.weights, cache_dir=args.cache)
    for network in pipeline.networks:
        print(f"{network!r}: {network.folder}")
    print(f"ready in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
