"""Peak memory and time of ``tomoseg segment`` on zarr volumes of growing depth, under a memory budget.

For each slice count (default 32, 256 and 1024 slices of 1024 x 1024 uint8), a zarr volume is made by
repeating a 32-slice phantom along z, then segmented in a *fresh* subprocess with the bundled model,
``--memory 2GB``, zarr output (the streaming path). Each subprocess reports its own peak RSS
(``ru_maxrss``, which includes Python, torch and the model) and the segmentation time. Memory should stay
flat as the volume grows and time should grow linearly.

    python benchmarks/memory.py                   # 32, 256, 1024 slices (1024^3 takes a while on 2 cores)
    python benchmarks/memory.py --slices 32 256   # quicker
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This folder goes last on the path: benchmarks/dask.py must not shadow the dask package.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE] + [str(_HERE)]
from _common import emit, log, machine, phantom, tiled_zarr  # noqa: E402

CHILD = """
import json, resource, sys, time
from napari_tomoseg.cli import main  # noqa: E402
t0 = time.perf_counter()
rc = main(sys.argv[1:])
seconds = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
print(json.dumps({"rc": rc, "seconds": seconds, "peak_rss_gb": rss}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--slices", type=int, nargs="+", default=[32, 256, 1024])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--memory", default="2GB")
    ap.add_argument("--threads", type=int, help="torch threads in each run")
    ap.add_argument("--folder", help="where to put the volumes (default: a temporary folder)")
    args = ap.parse_args()
    block = phantom((32, args.size, args.size)).volume
    out: dict = {
        "memory_budget": args.memory,
        "plane": [args.size, args.size],
        "machine": machine(),
    }
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        for n in args.slices:
            src, dst = Path(tmp) / f"vol{n}.zarr", Path(tmp) / f"labels{n}.zarr"
            log(f"writing a {n} x {args.size}^2 zarr volume ...")
            tiled_zarr(src, n, block=block, chunks=(16, 512, 512))
            argv = ["segment", str(src), "-o", str(dst), "--memory", args.memory, "--device", "cpu"]
            if args.threads:
                argv += ["--threads", str(args.threads)]
            log(f"segmenting {n} slices in a fresh process ...")
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, check=False
            )
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                raise SystemExit(f"segment failed for {n} slices:\n{proc.stderr}")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res["wall_seconds"] = wall
            res["mvox_per_s"] = n * args.size**2 / res["seconds"] / 1e6
            out[str(n)] = res
            log(f"{n} slices: peak RSS {res['peak_rss_gb']:.3f} GB, {res['seconds']:.1f} s")
            import shutil

            shutil.rmtree(src)
            shutil.rmtree(dst)
    keys = [str(n) for n in args.slices]
    if len(keys) >= 2:
        out["rss_growth_mb"] = 1000 * (out[keys[-1]]["peak_rss_gb"] - out[keys[0]]["peak_rss_gb"])
    emit(out)


if __name__ == "__main__":
    main()
