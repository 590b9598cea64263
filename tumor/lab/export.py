"""Casts the large tensors of a ``.weights.h5`` file to another float type.

Used to carry trained weights back from a GPU machine whose file transfers are
capped: ``--dtype float16`` halves the file, ``--dtype float32`` restores a
loadable float32 file. Tensors under ``--min-size`` elements (BatchNorm
statistics, biases) are kept as they are.
"""

from __future__ import annotations

import argparse

import h5py
import numpy as np


def cast_h5(src: str, dst: str, dtype: str = "float16", min_size: int = 4096) -> int:
    """Copies ``src`` to ``dst`` casting float datasets; returns how many were cast."""
    cast = 0
    with h5py.File(src, "r") as fin, h5py.File(dst, "w") as fout:
        for key, value in fin.attrs.items():
            fout.attrs[key] = value

        def copy(name: str, obj) -> None:
            nonlocal cast
            if isinstance(obj, h5py.Group):
                group = fout.require_group(name)
                for key, value in obj.attrs.items():
                    group.attrs[key] = value
                return
            data = obj[()]
            if (
                isinstance(data, np.ndarray)
                and data.dtype.kind == "f"
                and (data.size >= min_size or dtype == "float32")
            ):
                if data.dtype != np.dtype(dtype):
                    data = data.astype(dtype)
                    cast += 1
            ds = fout.create_dataset(name, data=data)
            for key, value in obj.attrs.items():
                ds.attrs[key] = value

        fin.visititems(copy)
    return cast


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("src", help="input .weights.h5")
    p.add_argument("dst", help="output .weights.h5")
    p.add_argument("--dtype", default="float16", help="target float type (default: %(default)s)")
    p.add_argument("--min-size", type=int, default=4096, help="smallest tensor to cast (default: %(default)s)")
    args = p.parse_args(argv)
    print(f"cast {cast_h5(args.src, args.dst, args.dtype, args.min_size)} tensors to {args.dtype}")


if __name__ == "__main__":
    main()
