"""INT8 probe: ``python -m tumor.lab.int8_probe --manifest M [--manifest M2] [--calibration 300] [--val]``.

Quantises each shipped compiled network (``tumor.runtime``'s cache, f32) with
NNCF post-training quantisation on training-split slices, then:

- times each network's call on one slice and its mirror (the app's batch),
  f32, bf16 (where the CPU has it) and INT8 interleaved, median of ``--repeats``;
- with ``--val``, runs the whole pipeline over the validation split with the
  INT8 networks swapped in and prints the four figures the precision rule
  guards (detection AUC, type accuracy, LGG Dice per patient, figshare Dice per
  slice) at the shipped thresholds, beside the f32 ones.

A probe, not a precision the app offers: NNCF is not among the pinned
requirements (install it next to them to run this). Timings are printed, never
asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from tumor.errors import InputError
from tumor.io import read_image
from tumor.lab import data
from tumor.pipeline import Pipeline, is_grey
from tumor.preprocess import to_model_square


def _slices(df, n: int, seed: int = 0) -> list[np.ndarray]:
    rows = df.sample(n=min(n, len(df)), random_state=seed)
    out = []
    for f in rows["image_file"]:
        try:
            out.append(read_image(f))
        except InputError:
            continue
    return out


def _median_ms(fn, batch: np.ndarray, repeats: int) -> float:
    fn(batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _quantise(network, squares: list[np.ndarray]):
    import nncf

    from tumor import runtime

    model = runtime.core().read_model(str(network.folder / runtime.XML))
    dataset = nncf.Dataset(squares, lambda sq: sq[None])
    return nncf.quantize(model, dataset, subset_size=len(squares), preset=nncf.QuantizationPreset.MIXED)


def _figures(pipe: Pipeline, df) -> dict:
    from tumor.lab.evaluate import _summary, run_pipeline, selection_score

    res = run_pipeline(pipe, df)
    s = _summary(res, pipe.tumor_threshold, pipe.mask_threshold, pipe.min_component_fraction)
    return {
        "auc": round(s["detection"]["auc"], 4),
        "type_accuracy": round(s["type"]["accuracy"], 4),
        "lgg_patient_dice": round(s["segmentation"]["lgg_patient_dice_mean"], 4),
        "figshare_dice": round(s["segmentation"]["figshare_slice_dice_mean"], 4),
        "score": round(selection_score(s), 4),
    }


def main(argv: list[str] | None = None) -> None:
    from tumor import runtime

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", action="append", required=True, help="manifest CSV; repeat for several")
    p.add_argument("--calibration", type=int, default=300, help="training-split slices to calibrate on")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per network and precision")
    p.add_argument("--val", action="store_true", help="also score the validation split with INT8 networks")
    p.add_argument("--out", default="runs/int8_probe.json", help="JSON to write")
    args = p.parse_args(argv)

    df = data.load_split(data.read_manifests(args.manifest))
    pipe = Pipeline.from_weights_dir(precision="f32")
    train = _slices(df[df["split"] == "train"], args.calibration)
    result: dict = {"calibration_slices": len(train), "networks": {}}
    for net in pipe.networks:
        route = "grey" if "segmenter_3" in net.names else "colour"
        pool = train if net.kind == "classifier" else [r for r in train if is_grey(r) == (route == "grey")]
        squares = [to_model_square(rgb, net.size)[0] for rgb in pool]
        t0 = time.perf_counter()
        q = _quantise(net, squares)
        built = time.perf_counter() - t0
        config = {"INFERENCE_NUM_THREADS": runtime.num_threads(), "PERFORMANCE_HINT": "LATENCY"}
        int8 = runtime.core().compile_model(q, "CPU", config)
        xml = str(net.folder / runtime.XML)
        f32 = runtime.core().compile_model(xml, "CPU", {**config, "INFERENCE_PRECISION_HINT": "f32"})
        bf16 = runtime.native_bf16() and runtime.core().compile_model(
            xml, "CPU", {**config, "INFERENCE_PRECISION_HINT": "bf16"}
        )
        batch = np.stack([squares[0], squares[0][:, ::-1]])
        t32 = _median_ms(f32, batch, args.repeats)
        t16 = _median_ms(bf16, batch, args.repeats) if bf16 else float("nan")
        t8 = _median_ms(int8, batch, args.repeats)
        t32b = _median_ms(f32, batch, args.repeats)  # again, after: drift hits every one
        diff = float(np.max(np.abs(np.asarray(f32(batch)[0]) - np.asarray(int8(batch)[0]))))
        row = {
            "f32_ms": round((t32 + t32b) / 2, 1),
            "bf16_ms": round(t16, 1),
            "int8_ms": round(t8, 1),
            "speedup": round((t32 + t32b) / 2 / t8, 2),
            "max_abs_diff_one_slice": round(diff, 4),
            "quantise_s": round(built, 1),
            "calibration_squares": len(squares),
        }
        result["networks"][repr(net)] = row
        print(json.dumps({repr(net): row}), flush=True)
        net._compiled, net._idle = int8, type(net._idle)()  # the probe's swap: later calls run INT8
    if args.val:
        val = df[df["split"] == "val"]
        result["int8_val"] = _figures(pipe, val)
        print(json.dumps({"int8_val": result["int8_val"]}), flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
