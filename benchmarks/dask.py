"""dask.distributed LocalCluster vs one process on the same zarr volume: identical output, both timed.

A ``--slices`` x 1024 x 1024 uint8 phantom is written as zarr, segmented once by ``tomoseg segment``
in this process (all cores to torch) and once with ``--local-cluster N`` (N worker processes, the cores
shared among them), both with the bundled model and zarr output; the two label volumes are compared
voxel for voxel.

    python benchmarks/dask.py --slices 16 --workers 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# This folder goes last on the path: benchmarks/dask.py must not shadow the dask package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]
from _common import emit, log, machine, phantom, tiled_zarr  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory", default="2GB")
    args = ap.parse_args()
    import zarr

    from napari_tomoseg.cli import main as tomoseg

    block = phantom((min(args.slices, 32), args.size, args.size)).volume
    out: dict = {
        "shape": [args.slices, args.size, args.size],
        "workers": args.workers,
        "machine": machine(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "vol.zarr"
        tiled_zarr(src, args.slices, block=block, chunks=(16, 512, 512))
        common = ["--memory", args.memory, "--device", "cpu"]
        runs = {}
        for name, extra in (("single", []), ("dask", ["--local-cluster", str(args.workers)])):
            dst = Path(tmp) / f"{name}.zarr"
            log(f"{name} ...")
            t0 = time.perf_counter()
            assert tomoseg(["segment", str(src), "-o", str(dst), *common, *extra]) == 0
            runs[name] = time.perf_counter() - t0
            log(f"{name}: {runs[name]:.1f} s")
        a = zarr.open_array(str(Path(tmp) / "single.zarr"))[...]
        b = zarr.open_array(str(Path(tmp) / "dask.zarr"))[...]
        vox = a.size
        out.update(
            single_seconds=runs["single"],
            dask_seconds=runs["dask"],
            single_mvox_per_s=vox / runs["single"] / 1e6,
            dask_mvox_per_s=vox / runs["dask"] / 1e6,
            identical=bool(np.array_equal(a, b)),
            differing_voxels=int(np.count_nonzero(a != b)),
            note="wall times including model load, grey range, and (dask) cluster start-up",
        )
    emit(out)


if __name__ == "__main__":
    main()
