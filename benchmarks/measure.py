"""Benchmark of the measurement core against PoreSpy / scikit-image on the same input.

A 128³ phantom's ground-truth labels, tiled 8x8x8 with flips into a 1024³ uint8 zarr (written once to
a temporary folder) -> fractions + z-profile streamed from it, in a fresh process so that its peak
RSS is the whole process's -> a 256³ phantom -> orientation, local thickness, objects, surfaces,
and PoreSpy's / scikit-image's porosity_profile, local_thickness, regionprops (eager: every property
we report, read), marching_cubes + mesh_surface_area doing the same work. The 256³ comparisons run
twice, ours and theirs alternating, and keep the faster run of each (the machine is shared); PoreSpy's
numba functions are compiled on a small crop first, so that compiling is not timed.

Run by hand: ``python benchmarks/measure.py`` (several minutes). Prints progress to stderr and one
JSON line to stdout. On a shared machine the timings vary with the load (see ``load_average``).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# This folder holds a benchmark called dask.py, which would shadow the dask package PoreSpy imports.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_tiled(path: Path, side: int = 1024) -> None:
    import zarr

    from napari_tomoseg.core.phantom import PhantomConfig, make_phantom

    tile = make_phantom(PhantomConfig(shape=(128, 128, 128)), seed=0).labels
    n = side // 128
    z = zarr.create_array(path, shape=(side,) * 3, chunks=(128,) * 3, dtype=np.uint8)
    for i in range(n):
        slab = np.empty((128, side, side), np.uint8)
        for j in range(n):
            for k in range(n):
                t = tile
                for axis, flip in enumerate((i, j, k)):
                    if flip % 2:  # mirror every other tile so that neighbours differ
                        t = np.flip(t, axis)
                slab[:, j * 128 : (j + 1) * 128, k * 128 : (k + 1) * 128] = t
        z[i * 128 : (i + 1) * 128] = slab


def reset_peak_rss() -> None:
    """Forget the peak RSS inherited through fork (Linux keeps the parent's high-water mark)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_gb() -> float:
    """This process's peak resident set size in GiB (VmHWM, else ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child_fractions(path: str) -> None:
    import zarr

    from napari_tomoseg.core.measure.fractions import measure_fractions
    from napari_tomoseg.core.phases import COMPOSITE_PHASES

    z = zarr.open_array(path, mode="r")
    t = time.perf_counter()
    res = measure_fractions(z, phases=COMPOSITE_PHASES, axis="z", voxel_size=1.3)
    dt = time.perf_counter() - t
    rss = peak_rss_gb()
    print(
        json.dumps(
            {
                "seconds": dt,
                "voxels": int(np.prod(z.shape)),
                "rss_gb": rss,
                "fractions": res.fractions.tolist(),
            }
        )
    )


def child_porespy_profile(path: str) -> None:
    import porespy as ps
    import zarr

    void = zarr.open_array(path, mode="r")[:] == 3
    t = time.perf_counter()
    ps.metrics.porosity_profile(void, axis=0)
    dt = time.perf_counter() - t
    print(json.dumps({"seconds": dt, "voxels": int(void.size)}))


def run_child(func: str, path: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, func, path], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def timed(f, *args, **kwargs):
    t = time.perf_counter()
    value = f(*args, **kwargs)
    return time.perf_counter() - t, value


def alternate(ours, theirs, repeats: int = 2):
    """Best time of ``ours()`` and of ``theirs()`` over ``repeats`` alternating runs, and the
    last values."""
    best = [float("inf"), float("inf")]
    values = [None, None]
    for _ in range(repeats):
        for i, f in enumerate((ours, theirs)):
            t, values[i] = timed(f)
            best[i] = min(best[i], t)
    return best[0], best[1], values[0], values[1]


def main() -> None:
    import porespy as ps
    from scipy import ndimage
    from skimage.feature import structure_tensor, structure_tensor_eigenvalues
    from skimage.measure import marching_cubes, mesh_surface_area, regionprops_table

    from napari_tomoseg.core.measure.objects import measure_objects
    from napari_tomoseg.core.measure.orientation import fibre_orientation
    from napari_tomoseg.core.measure.surfaces import surface_areas
    from napari_tomoseg.core.measure.thickness import local_thickness
    from napari_tomoseg.core.phantom import PhantomConfig, make_phantom
    from napari_tomoseg.core.phases import COMPOSITE_PHASES as P

    result: dict = {
        "benchmark": "measure",
        "cores": os.cpu_count(),
        "load_average": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "labels.zarr"
        log("writing the 1024³ tiled phantom labels")
        write_tiled(path)
        log("fractions + profile (fresh process)")
        ours = run_child("--child-fractions", str(path))
        result["fractions_profile_mvox_per_s"] = ours["voxels"] / ours["seconds"] / 1e6
        result["fractions_profile_peak_rss_gb"] = ours["rss_gb"]
        log("PoreSpy porosity_profile (fresh process, array loaded before timing)")
        theirs = run_child("--child-porespy-profile", str(path))
        result["porespy_porosity_profile_mvox_per_s"] = theirs["voxels"] / theirs["seconds"] / 1e6

    log("256³ phantom")
    lab = make_phantom(PhantomConfig(shape=(256, 256, 256)), seed=1).labels
    n = lab.size
    fibre = (lab == 2).astype(np.float32)
    t, t2, _, _ = alternate(
        lambda: fibre_orientation(lab, "fibre", phases=P),
        lambda: structure_tensor_eigenvalues(structure_tensor(fibre, sigma=4.0)),
    )
    result["orientation_mvox_per_s"] = n / t / 1e6
    result["skimage_structure_tensor_eigenvalues_mvox_per_s"] = n / t2 / 1e6
    log("local thickness")
    # compile PoreSpy's numba kernels (both insertion paths) before timing them
    ps.filters.local_thickness(lab[:64, :64, :64] == P.id_of("fibre"))
    ps.filters.local_thickness(lab[:64, :64, :64] == P.id_of("pore"))
    for name in ("pore", "fibre"):
        inside = lab == P.id_of(name)
        t, t2, res, lt = alternate(
            lambda name=name: local_thickness(lab, name, phases=P, keep_map=True),
            lambda inside=inside: ps.filters.local_thickness(inside),
        )
        result[f"thickness_{name}_seconds"] = t
        result[f"porespy_local_thickness_{name}_seconds"] = t2
        result[f"thickness_{name}_mean_vs_porespy"] = res.mean / (2 * float(lt[inside].mean()))
        result[f"thickness_{name}_map_equals_porespy"] = bool(np.array_equal(res.map, 2 * lt))
    result["thickness_seconds"] = result["thickness_pore_seconds"]
    log("objects")
    properties = (
        "label",
        "area",
        "equivalent_diameter_area",
        "bbox",
        "centroid",
        "inertia_tensor_eigvals",
    )

    def skimage_objects():
        ids, _ = ndimage.label(lab == P.id_of("pore"), structure=np.ones((3, 3, 3)))
        return regionprops_table(ids, properties=properties)

    def porespy_objects():
        # regionprops_3D is lazy: read the same properties, as our table holds them
        ids, _ = ndimage.label(lab == P.id_of("pore"), structure=np.ones((3, 3, 3)))
        props = ps.metrics.regionprops_3D(ids)
        return [
            (r.volume, r.equivalent_diameter_area, r.bbox, r.centroid, r.inertia_tensor_eigvals)
            for r in props
        ]

    t, t2, table, sk = alternate(lambda: measure_objects(lab, "pore", phases=P), skimage_objects)
    result["objects_seconds"] = t
    result["objects_count"] = len(table)
    result["skimage_regionprops_seconds"] = t2
    assert len(sk["label"]) == len(table)
    t, t2, _, _ = alternate(lambda: measure_objects(lab, "pore", phases=P), porespy_objects)
    result["objects_seconds"] = min(result["objects_seconds"], t)
    result["porespy_regionprops_3d_eager_seconds"] = t2
    log("surfaces")

    def skimage_surfaces():
        # per phase, on the whole volume, with our smoothing (PoreSpy has no surface area of a
        # labelled volume)
        areas = []
        for i in range(1, len(P) + 1):
            f = ndimage.gaussian_filter((lab == i).astype(np.float32), 0.7, mode="nearest")
            verts, faces, _, _ = marching_cubes(f, 0.5)
            areas.append(mesh_surface_area(verts, faces))
        return areas

    t, t2, ours_s, theirs_s = alternate(
        lambda: surface_areas(lab, phases=P, pairs=False), skimage_surfaces
    )
    result["surfaces_phases_seconds"] = t
    result["skimage_surfaces_seconds"] = t2
    result["surfaces_area_vs_skimage"] = [
        float(a / b) if b else None for a, b in zip(ours_s.area, theirs_s, strict=True)
    ]
    t, _ = timed(surface_areas, lab, phases=P)
    result["surfaces_seconds"] = t  # phases and the interface of every pair
    result["speedup_vs_peer"] = {
        "thickness_pore": result["porespy_local_thickness_pore_seconds"]
        / result["thickness_pore_seconds"],
        "thickness_fibre": result["porespy_local_thickness_fibre_seconds"]
        / result["thickness_fibre_seconds"],
        "objects_vs_skimage": result["skimage_regionprops_seconds"] / result["objects_seconds"],
        "objects_vs_porespy": result["porespy_regionprops_3d_eager_seconds"]
        / result["objects_seconds"],
        "surfaces_vs_skimage": result["skimage_surfaces_seconds"]
        / result["surfaces_phases_seconds"],
        "orientation_vs_skimage": result["orientation_mvox_per_s"]
        / result["skimage_structure_tensor_eigenvalues_mvox_per_s"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1].startswith("--child"):
        reset_peak_rss()
    if len(sys.argv) == 3 and sys.argv[1] == "--child-fractions":
        child_fractions(sys.argv[2])
    elif len(sys.argv) == 3 and sys.argv[1] == "--child-porespy-profile":
        child_porespy_profile(sys.argv[2])
    else:
        main()
