"""The weights registry: which files, their sha256, version and settings.

``weights/manifest.json`` pins every weights file by hash. Loading verifies
the hash before Keras (or the export into the compiled runtime,
``tumor.runtime``) ever opens the file; a missing or altered file raises
``WeightsError`` and nothing falls back to random weights. This module never
imports Keras itself: ``load_model`` does, when called.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from tumor.errors import WeightsError
from tumor.preprocess import CLASS_NAMES, INTENSITY_MODES

DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
MANIFEST_NAME = "manifest.json"
METRICS_NAME = "metrics.json"
MODEL_KINDS = ("classifier", "segmenter")
# Which slices a segmenter sees: every slice, greyscale ones only (the three
# channels agree: T1-CE and most uploads) or colour ones only (the LGG
# pre-contrast/FLAIR/post-contrast composites). See ``tumor.pipeline.is_grey``.
INPUT_ROUTES = ("all", "grey", "colour")
# Inference precisions of the compiled networks (``tumor.runtime``). f32 always
# qualifies; a lower one only once validation showed it moves no headline figure
# by more than 0.002 (MODEL_CARD.md), recorded per kind in the manifest's
# ``inference_precisions``.
PRECISIONS = ("f32", "bf16")


@dataclass(frozen=True)
class ModelEntry:
    """One weights file of the registry.

    Attributes:
        kind: ``"classifier"`` or ``"segmenter"``.
        name: the entry's key in the manifest: the kind itself for the first
            model of that kind, another name (``"classifier_2"``) for each
            further ensemble member.
        path: absolute path of the ``.weights.h5`` file.
        sha256: expected hex digest of the file.
        input_size: side of the square input the model was trained at.
        build_kwargs: keyword arguments for the model's builder.
        intensity: input intensity scaling the model was trained with, one of
            ``tumor.preprocess.INTENSITY_MODES`` ("unit" when the manifest is silent,
            as it is for models up to 1.2).
        inputs: which slices a segmenter sees, one of ``INPUT_ROUTES`` ("all"
            when the manifest is silent, as it is up to 1.7).
    """

    kind: str
    path: Path
    sha256: str
    input_size: int
    build_kwargs: dict
    intensity: str = "unit"
    name: str = ""
    inputs: str = "all"


@dataclass(frozen=True)
class FileEntry:
    """A shipped file that is not a network (the type fusion), pinned by sha256.

    Attributes:
        kind: what it is, in words, for messages ("type fusion").
        path: absolute path of the file.
        sha256: expected hex digest.
    """

    kind: str
    path: Path
    sha256: str


@dataclass(frozen=True)
class Registry:
    """The parsed ``manifest.json``.

    Attributes:
        version: model version shown beside every prediction.
        class_names: class order of the classifier's output.
        tumor_threshold: P(tumour) at or above which a slice counts as positive.
        mask_threshold: default probability threshold of the tumour mask.
        models: ``name -> ModelEntry``: ``"classifier"`` and ``"segmenter"``,
            then any further ensemble members in manifest order.
        flip_tta: whether the pipeline averages over a left-right mirror.
        min_component_fraction: mask components below this fraction of the
            slice are dropped (``thresholds.min_component_fraction``; 0 if absent).
        precisions: ``kind -> precisions`` the compiled networks of that kind
            may run in (``inference_precisions``; ``("f32",)`` if absent).
        type_fusion: the segmentation-guided typing file (``tumor.fusion``),
            None when the manifest ships none (typing is then the classifiers').
        detect_fusion: the greyscale detection fusion file
            (``tumor.fusion.DetectionFusion``), None when the manifest ships
            none (P(tumour) is then the classifiers' on every slice).
    """

    version: str
    class_names: tuple[str, ...]
    tumor_threshold: float
    mask_threshold: float
    models: dict[str, ModelEntry]
    flip_tta: bool = False
    min_component_fraction: float = 0.0
    precisions: dict[str, tuple[str, ...]] = field(default_factory=dict)
    type_fusion: FileEntry | None = None
    detect_fusion: FileEntry | None = None

    def members(self, kind: str) -> list[ModelEntry]:
        """The models of ``kind`` whose outputs the pipeline averages, the one named ``kind`` first."""
        return [e for e in self.models.values() if e.kind == kind]


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_entry(raw: dict, key: str, kind: str, weights_dir: Path) -> FileEntry | None:
    """The manifest's ``key`` entry (``file``, ``sha256``) as a ``FileEntry`` in ``weights_dir``; None if absent."""
    if not raw.get(key):
        return None
    return FileEntry(kind=kind, path=weights_dir / Path(raw[key]["file"]).name, sha256=str(raw[key]["sha256"]).lower())


def read_registry(weights_dir: str | Path = DEFAULT_WEIGHTS_DIR) -> Registry:
    """Parses ``weights_dir/manifest.json``.

    Raises:
        WeightsError: the manifest is missing, unreadable or incomplete.
    """
    weights_dir = Path(weights_dir)
    manifest = weights_dir / MANIFEST_NAME
    if not manifest.is_file():
        raise WeightsError(
            f"No model weights found: {manifest} is missing. Restore the weights/ folder from the repository "
            "(git checkout -- weights) or train them with `python -m tumor.lab.train`."
        )
    try:
        raw = json.loads(manifest.read_text())
        models = {}
        names = [*MODEL_KINDS, *(n for n in raw["models"] if n not in MODEL_KINDS)]
        for name in names:
            entry = raw["models"][name]
            kind = str(entry.get("kind", name))
            if kind not in MODEL_KINDS:
                raise ValueError(f"model {name!r} has kind {kind!r}, not one of {MODEL_KINDS}")
            models[name] = ModelEntry(
                kind=kind,
                name=name,
                path=weights_dir / Path(entry["file"]).name,
                sha256=str(entry["sha256"]).lower(),
                input_size=int(entry["input_size"]),
                build_kwargs=dict(entry.get("build_kwargs", {})),
                intensity=str(entry.get("intensity", "unit")),
                inputs=str(entry.get("inputs", "all")),
            )
        registry = Registry(
            version=str(raw["version"]),
            class_names=tuple(raw["class_names"]),
            tumor_threshold=float(raw["thresholds"]["tumor"]),
            mask_threshold=float(raw["thresholds"]["mask"]),
            models=models,
            flip_tta=bool(raw.get("flip_tta", False)),
            min_component_fraction=float(raw["thresholds"].get("min_component_fraction", 0.0)),
            precisions={
                kind: tuple(str(p) for p in raw.get("inference_precisions", {}).get(kind, ["f32"]))
                for kind in MODEL_KINDS
            },
            type_fusion=_file_entry(raw, "type_fusion", "type fusion", weights_dir),
            detect_fusion=_file_entry(raw, "detect_fusion", "detection fusion", weights_dir),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise WeightsError(
            f"{manifest} is malformed ({type(err).__name__}: {err}); restore it from the repository."
        ) from err
    if not 0.0 <= registry.min_component_fraction < 1.0:
        raise WeightsError(
            f"{manifest} has min_component_fraction={registry.min_component_fraction}, outside [0, 1); "
            "restore it from the repository."
        )
    for entry in registry.models.values():
        if entry.intensity not in INTENSITY_MODES:
            raise WeightsError(
                f"{manifest} gives the {entry.kind} intensity scaling {entry.intensity!r}, but this code knows "
                f"{INTENSITY_MODES}. The weights and the code are from different versions."
            )
    for kind, allowed in registry.precisions.items():
        if "f32" not in allowed or not set(allowed) <= set(PRECISIONS):
            raise WeightsError(
                f"{manifest} gives the {kind} inference precisions {list(allowed)}; they must include 'f32' "
                f"and be among {PRECISIONS}. Restore the manifest from the repository."
            )
    _check_routes(registry, manifest)
    if registry.class_names != CLASS_NAMES:
        raise WeightsError(
            f"{manifest} lists classes {registry.class_names}, but this code expects {CLASS_NAMES}. "
            "The weights and the code are from different versions."
        )
    return registry


def _check_routes(registry: Registry, manifest: Path) -> None:
    """Every model's ``inputs`` is known, classifiers see every slice, and both kinds of slice get a segmenter."""
    for entry in registry.models.values():
        if entry.inputs not in INPUT_ROUTES or (entry.kind == "classifier" and entry.inputs != "all"):
            allowed = INPUT_ROUTES if entry.kind == "segmenter" else ("all",)
            raise WeightsError(
                f"{manifest} routes the {entry.kind} {entry.name!r} to inputs={entry.inputs!r}; "
                f"a {entry.kind} takes one of {allowed}. Restore the manifest from the repository."
            )
    routes = {e.inputs for e in registry.members("segmenter")}
    for route in ("grey", "colour"):
        if not routes & {"all", route}:
            raise WeightsError(
                f"{manifest} gives no segmenter for {route} slices (each needs one with inputs 'all' or "
                f"{route!r}). Restore the manifest from the repository."
            )


def verify(entry: ModelEntry | FileEntry) -> None:
    """Checks that ``entry.path`` exists and matches its pinned sha256.

    Raises:
        WeightsError: the file is missing or its hash differs.
    """
    if not entry.path.is_file():
        raise WeightsError(
            f"The {entry.kind} weights file {entry.path.name} is missing from {entry.path.parent}. "
            "Restore it from the repository (it is tracked in git)."
        )
    actual = sha256_file(entry.path)
    if actual != entry.sha256:
        raise WeightsError(
            f"The {entry.kind} weights file {entry.path.name} does not match its pinned hash "
            f"(expected sha256 {entry.sha256[:12]}…, found {actual[:12]}…). It may be corrupt or tampered with; "
            "the app refuses to predict with it. Restore it from the repository."
        )


def load_model(entry: ModelEntry, *, verified: bool = False):
    """Builds the model of ``entry`` and loads its verified weights.

    Args:
        entry: the registry entry.
        verified: the caller has just run ``verify(entry)``; skips hashing again.

    Returns:
        A ``keras.Model`` ready for ``model(x, training=False)``.
    """
    from tumor import models

    if not verified:
        verify(entry)
    builder = models.build_classifier if entry.kind == "classifier" else models.build_segmenter
    model = builder(input_size=entry.input_size, **entry.build_kwargs)
    try:
        model.load_weights(str(entry.path))
    except Exception as err:  # h5py and Keras raise many types for a bad file
        raise WeightsError(f"The {entry.kind} weights in {entry.path.name} could not be loaded: {err}") from err
    return model


def read_metrics(weights_dir: str | Path = DEFAULT_WEIGHTS_DIR) -> dict | None:
    """Returns ``metrics.json`` as a dict, or None when absent or unreadable."""
    path = Path(weights_dir) / METRICS_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_manifest(
    weights_dir: str | Path,
    *,
    version: str,
    input_sizes: dict[str, int],
    build_kwargs: dict[str, dict],
    tumor_threshold: float,
    mask_threshold: float,
    extra: dict | None = None,
    intensity: dict[str, str] | None = None,
    members: dict[str, dict] | None = None,
) -> dict:
    """Writes ``manifest.json`` with the current files' hashes; returns it.

    ``intensity`` maps a kind to its input scaling; a kind left out is "unit".
    ``members`` adds ensemble members: ``name -> {"kind", "input_size",
    "build_kwargs", "intensity"}`` and optionally ``"inputs"`` (see
    ``INPUT_ROUTES``; left out when "all"), each in ``<name>.weights.h5``.
    """
    weights_dir = Path(weights_dir)
    specs = {
        kind: {
            "kind": kind,
            "input_size": input_sizes[kind],
            "build_kwargs": build_kwargs.get(kind, {}),
            "intensity": (intensity or {}).get(kind, "unit"),
        }
        for kind in MODEL_KINDS
    }
    specs.update(members or {})
    manifest = {
        "version": version,
        "class_names": list(CLASS_NAMES),
        "thresholds": {"tumor": tumor_threshold, "mask": mask_threshold},
        "models": {
            name: {
                "kind": spec["kind"],
                "file": f"{name}.weights.h5",
                "sha256": sha256_file(weights_dir / f"{name}.weights.h5"),
                "input_size": spec["input_size"],
                "build_kwargs": spec.get("build_kwargs", {}),
                "intensity": spec.get("intensity", "unit"),
                **({"inputs": spec["inputs"]} if spec.get("inputs", "all") != "all" else {}),
            }
            for name, spec in specs.items()
        },
        **(extra or {}),
    }
    (weights_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
