"""A lighter weights folder from the shipped one: ``python -m tumor.lab.subset --keep NAME ... --out DIR``.

Writes ``DIR/manifest.json`` with only the kept networks (the first kept one of
each kind takes the kind's own name, as the registry needs), links every kept
file and the type fusion into ``DIR``, and sets flip averaging and the
thresholds as given. The files keep their pinned sha256, so the pipeline
verifies them as it does the shipped ones. ``tumor.lab.evaluate --weights DIR``
and ``tumor.lab.benchmark --weights DIR`` then measure that set's quality and
speed (MODEL_CARD, "Speed and the lighter sets").
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from tumor import weights as weights_lib


def write_subset(
    source: str | Path,
    out: str | Path,
    keep: list[str],
    *,
    flip_tta: bool | None = None,
    tumor_threshold: float | None = None,
    mask_threshold: float | None = None,
) -> Path:
    """Writes the lighter folder and returns its manifest's path.

    Args:
        source: the shipped weights folder.
        out: the folder to write (created; its manifest is replaced).
        keep: manifest names of the networks to keep, e.g. ``["classifier_2", "segmenter", "segmenter_3"]``.
        flip_tta, tumor_threshold, mask_threshold: new settings; ``None`` keeps the source's.

    Raises:
        ValueError: a name is unknown, or a kind would be left without a network.
    """
    source, out = Path(source), Path(out)
    raw = json.loads((source / weights_lib.MANIFEST_NAME).read_text())
    unknown = sorted(set(keep) - set(raw["models"]))
    if unknown:
        raise ValueError(f"Unknown networks {unknown}. Expected names from {sorted(raw['models'])}")
    models: dict[str, dict] = {}
    for name in keep:
        entry = dict(raw["models"][name])
        kind = entry.setdefault("kind", name)
        models[kind if kind not in models else name] = entry
    missing = [k for k in weights_lib.MODEL_KINDS if k not in models]
    if missing:
        raise ValueError(f"The subset keeps no {missing}. Received: keep={keep}")
    raw["models"] = models
    if flip_tta is not None:
        raw["flip_tta"] = flip_tta
    if tumor_threshold is not None:
        raw["thresholds"]["tumor"] = tumor_threshold
    if mask_threshold is not None:
        raw["thresholds"]["mask"] = mask_threshold
    raw["ensemble"] = f"lighter set of {source}: {', '.join(keep)} (tumor.lab.subset)"
    out.mkdir(parents=True, exist_ok=True)
    files = [e["file"] for e in models.values()] + ([raw["type_fusion"]["file"]] if raw.get("type_fusion") else [])
    for name in files:
        link = out / name
        if link.is_symlink() or link.exists():
            link.unlink()
        os.symlink((source / name).resolve(), link)
    path = out / weights_lib.MANIFEST_NAME
    path.write_text(json.dumps(raw, indent=2) + "\n")
    weights_lib.read_registry(out)  # the folder must read back as a valid registry
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=str(weights_lib.DEFAULT_WEIGHTS_DIR), help="source folder (default: shipped)")
    p.add_argument("--keep", nargs="+", required=True, help="manifest names of the networks to keep")
    p.add_argument("--out", required=True, help="folder to write, e.g. runs/i27/light")
    p.add_argument("--flip-tta", choices=["on", "off"], default=None, help="flip averaging (default: the source's)")
    p.add_argument("--tumor-threshold", type=float, default=None, help="default: the source's")
    p.add_argument("--mask-threshold", type=float, default=None, help="default: the source's")
    args = p.parse_args(argv)
    flip = None if args.flip_tta is None else args.flip_tta == "on"
    path = write_subset(
        args.weights,
        args.out,
        args.keep,
        flip_tta=flip,
        tumor_threshold=args.tumor_threshold,
        mask_threshold=args.mask_threshold,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
