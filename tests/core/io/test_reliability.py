"""The io room's safety checks: outputs that are inputs, NaN found where read, declared sizes checked
before allocation, damaged TIFF / .npy files, temporaries of killed runs."""

from __future__ import annotations

import io as _io
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_tomoseg.core import io
from napari_tomoseg.core.checks import FiniteCheckedVolume, first_nonfinite
from napari_tomoseg.core.prep.intensity import robust_range

# ---------------------------------------------------------------------------------------------
# check_not_input


def test_check_not_input_catches_same_path_links_and_folders(tmp_path):
    src = tmp_path / "vol.tif"
    src.write_bytes(b"data")
    os.symlink(src, tmp_path / "sym.tif")
    os.link(src, tmp_path / "hard.tif")
    store = tmp_path / "in.zarr"
    store.mkdir()
    for out in (src, tmp_path / "sym.tif", tmp_path / "hard.tif", tmp_path / "." / "vol.tif"):
        with pytest.raises(io.OutputIsInputError, match="is the same file as") as got:
            io.check_not_input(out, [None, src])
        assert str(src) in str(got.value)
    with pytest.raises(io.OutputIsInputError, match="is inside"):
        io.check_not_input(store / "labels.zarr", [store])
    with pytest.raises(io.OutputIsInputError, match="holds"):
        io.check_not_input(tmp_path, [src])
    io.check_not_input(tmp_path / "other.tif", [src, store, tmp_path / "missing.tif"])
    io.check_not_input(None, [src])


def test_a_symlinked_output_folder_is_resolved(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "vol.npy").write_bytes(b"x")
    os.symlink(real, tmp_path / "alias")
    with pytest.raises(io.OutputIsInputError):
        io.check_not_input(tmp_path / "alias" / "vol.npy", [real / "vol.npy"])


# ---------------------------------------------------------------------------------------------
# non-finite values found where they are read


def test_first_nonfinite_finds_the_plane_and_ignores_integers():
    a = np.zeros((6, 3, 3), np.float32)
    assert first_nonfinite(a) is None
    a[4, 1, 1] = np.inf
    a[5, 0, 0] = np.nan
    assert first_nonfinite(a) == 4
    assert first_nonfinite(np.zeros((3, 3), np.uint8)) is None
    big = np.full((2, 2, 2), 3e38, np.float32)  # its float32 sum would overflow: not a NaN
    assert first_nonfinite(big) is None


@pytest.mark.parametrize(
    ("key", "z"),
    [
        (np.s_[:], 5),
        (np.s_[...], 5),
        (np.s_[3:8], 5),
        (np.s_[5], 5),
        (np.s_[1::2], 5),
        (np.s_[4:9, 2:5, :], 5),
        (np.s_[[1, 5, 7]], 5),
    ],
)
def test_a_checked_view_names_the_volume_s_slice(key, z):
    vol = np.random.default_rng(0).random((10, 6, 6))
    vol[5] = np.nan
    view = io.finite_checked(vol, "scan.npy")
    with pytest.raises(io.NonFiniteError, match=r"scan\.npy: z-slice 5") as got:
        view[key]
    assert got.value.z == z


def test_a_checked_view_passes_values_through_and_keeps_integers_unwrapped():
    vol = np.random.default_rng(1).random((4, 5, 6)).astype(np.float32)
    view = io.finite_checked(vol, "v")
    assert isinstance(view, FiniteCheckedVolume)
    assert view.shape == vol.shape and view.dtype == vol.dtype and view.ndim == 3
    np.testing.assert_array_equal(view[1:3, ::2], vol[1:3, ::2])
    np.testing.assert_array_equal(np.asarray(view), vol)
    ints = np.zeros((2, 2, 2), np.uint16)
    assert io.finite_checked(ints) is ints
    assert io.finite_checked(view) is view
    import pickle

    assert pickle.loads(pickle.dumps(view)).shape == vol.shape


def test_read_volume_names_the_first_bad_slice(tmp_path):
    vol = np.random.default_rng(2).random((16, 8, 8)).astype(np.float32)
    vol[5] = np.nan
    with pytest.raises(io.NonFiniteError, match="z-slice 5") as got:
        io.check_volume(vol, name="scan.tif")
    assert got.value.z == 5
    np.save(tmp_path / "v.npy", vol)
    lazy = io.read_volume(tmp_path / "v.npy", lazy=True)  # slice 5 is not sampled
    with pytest.raises(io.NonFiniteError, match="z-slice 5"):
        io.finite_checked(lazy, "v.npy")[:]


def test_the_grey_range_names_the_sampled_nan_slice():
    vol = np.random.default_rng(3).random((40, 64, 64)).astype(np.float32)
    vol[6] = np.nan
    with pytest.raises(io.NonFiniteError, match="z-slice 6"):
        robust_range(vol)
    with pytest.raises(io.NonFiniteError, match="z-slice 6"):
        robust_range(vol, max_samples=40 * 64 * 64 // 2)  # strided sample: every 2nd slice


# ---------------------------------------------------------------------------------------------
# declared sizes checked before anything is allocated


def _npy_header(shape, extra=64, dtype="|u1"):
    buf = _io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": dtype, "fortran_order": False, "shape": shape}
    )
    return buf.getvalue() + b"\0" * extra


@pytest.mark.parametrize("lazy", [False, True])
def test_a_npy_declaring_more_than_it_holds_is_truncated(tmp_path, lazy):
    p = tmp_path / "v.npy"
    p.write_bytes(_npy_header((100000, 100000, 100000)))
    with pytest.raises(ValueError, match=r"truncated or corrupt.*100000, 100000, 100000"):
        io.read_volume(p, lazy=lazy)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        io.read_labels(p)


def test_reading_more_than_the_memory_is_refused_with_the_estimate(tmp_path, monkeypatch):
    monkeypatch.setattr("napari_tomoseg.core.checks.available_memory", lambda: 1000)
    p = tmp_path / "v.npy"
    np.save(p, np.arange(2 * 30 * 30, dtype=np.uint16).reshape(2, 30, 30))
    with pytest.raises(io.InsufficientMemoryError, match=r"v\.npy.*3\.6 kB.*1\.0 kB"):
        io.read_labels(p)
    with pytest.raises(io.InsufficientMemoryError, match="one slice"):
        io.read_volume(p, lazy=True)  # a slice and its float32 copies: 9 kB


def test_available_memory_is_a_positive_number_here():
    mem = io.available_memory()
    assert mem is None or mem > 0


def test_tiff_pages_declaring_more_data_than_stored_are_refused(tmp_path):
    import struct

    p = tmp_path / "huge.tif"
    tifffile.imwrite(p, np.zeros((2, 16, 16), np.uint8), photometric="minisblack")
    b = bytearray(p.read_bytes())
    off = struct.unpack("<I", b[4:8])[0]
    n = struct.unpack("<H", b[off : off + 2])[0]
    for i in range(n):
        e = off + 2 + 12 * i
        tag, typ = struct.unpack("<HH", b[e : e + 4])
        if tag in (256, 257):
            fmt = "<H" if typ == 3 else "<I"
            b[e + 8 : e + 8 + struct.calcsize(fmt)] = struct.pack(fmt, 65000)
    p.write_bytes(bytes(b))
    for lazy in (False, True):
        with pytest.raises(ValueError, match=r"huge\.tif.*truncated or corrupt"):
            io.read_volume(p, lazy=lazy)


def test_a_cut_imagej_stack_is_truncated_and_tifffile_stays_quiet(tmp_path, caplog):
    io.write_volume(tmp_path / "v.tif", np.random.default_rng(0).random((8, 32, 32)).astype("f4"))
    raw = (tmp_path / "v.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: len(raw) // 2])
    with caplog.at_level(logging.DEBUG, logger="tifffile"):
        with pytest.raises(ValueError, match=r"cut\.tif.*truncated or corrupt"):
            io.read_volume(tmp_path / "cut.tif", lazy=True)
    assert not [r for r in caplog.records if r.name == "tifffile"]


def test_good_tiffs_still_read(tmp_path):
    vol = np.random.default_rng(0).integers(0, 60000, (5, 20, 24), dtype=np.uint16)
    io.write_volume(tmp_path / "a.tif", vol)
    io.write_volume(tmp_path / "b.tif", vol, compress=True)
    tifffile.imwrite(tmp_path / "c.tif", vol, tile=(16, 16), compression="zlib")
    for name in ("a.tif", "b.tif", "c.tif"):
        np.testing.assert_array_equal(io.read_volume(tmp_path / name), vol)
        np.testing.assert_array_equal(io.read_volume(tmp_path / name, lazy=True)[:], vol)


# ---------------------------------------------------------------------------------------------
# temporaries


def test_temporaries_carry_the_mark_and_stale_ones_of_dead_processes_go(tmp_path):
    t = io.temp_path(tmp_path / "labels.tif", "partial")
    assert t.name.startswith(".labels.tif.tomoseg-tmp-") and t.name.endswith(".partial.tif")
    assert f"-{os.getpid()}-" in t.name
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead = t.name.replace(f"-{os.getpid()}-", f"-{child.pid}-")
    (tmp_path / dead).write_bytes(b"half")
    store = tmp_path / dead.replace(".partial.tif", ".scratch.zarr")
    store.mkdir()
    (store / "zarr.json").write_text("{}")
    t.write_bytes(b"mine, in progress")
    removed = io.remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([dead, store.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == [t.name]


def test_check_output_path_removes_stale_temporaries_and_probes_writing(tmp_path, monkeypatch):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    stale = io.temp_path(tmp_path / "x.zarr", "partial").name.replace(
        f"-{os.getpid()}-", f"-{child.pid}-"
    )
    (tmp_path / stale).mkdir()
    io.check_output_path(tmp_path / "x.zarr", overwrite=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr("napari_tomoseg.core.io.write.os.access", lambda *a, **k: False)
    with pytest.raises(PermissionError, match="cannot write"):
        io.check_output_path(tmp_path / "y.tif", overwrite=False)


def test_writers_leave_no_temporary_after_a_failure(tmp_path):
    labels = np.full((2, 4, 4), 9, np.uint8)
    from napari_tomoseg.core.phases import COMPOSITE_PHASES

    for name in ("l.tif", "l.npy", "l.zarr"):
        with pytest.raises(ValueError, match="outside"):
            io.write_labels(tmp_path / name, labels, phases=COMPOSITE_PHASES)
    assert list(tmp_path.iterdir()) == []
