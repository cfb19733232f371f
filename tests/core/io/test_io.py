"""Tests for napari_tomoseg.core.io: round trips, lazy reading, validation, atomic writes."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_tomoseg.core import io
from napari_tomoseg.core.io import (
    LazySliceStack,
    check_output_path,
    check_volume,
    read_label_phases,
    read_volume,
    read_voxel_size,
    write_labels,
    write_volume,
)
from napari_tomoseg.core.io import write as io_write
from napari_tomoseg.core.phases import COMPOSITE_PHASES, PhaseTable


@pytest.fixture
def volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 60000, size=(5, 7, 9), dtype=np.uint16)


@pytest.fixture
def labels() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 4, size=(4, 6, 8), dtype=np.uint8)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------------------- reading


def test_tiff_stack_round_trip_eager_and_lazy(tmp_path: Path, volume: np.ndarray) -> None:
    path = tmp_path / "vol.tif"
    tifffile.imwrite(path, volume, photometric="minisblack")
    eager = read_volume(path)
    assert isinstance(eager, np.ndarray)
    np.testing.assert_array_equal(eager, volume)
    lazy = read_volume(path, lazy=True)
    assert isinstance(lazy, np.memmap)  # uncompressed: memory-mapped
    np.testing.assert_array_equal(lazy[1:3, 2:5, ::2], volume[1:3, 2:5, ::2])


def test_compressed_tiff_lazy_reads_page_by_page(tmp_path: Path, volume: np.ndarray) -> None:
    path = tmp_path / "vol.tiff"
    tifffile.imwrite(path, volume, photometric="minisblack", compression="zlib")
    lazy = read_volume(path, lazy=True)
    assert isinstance(lazy, LazySliceStack)
    with lazy:
        assert (lazy.shape, lazy.dtype, lazy.ndim) == (volume.shape, volume.dtype, 3)
        for key in [2, -1, slice(1, 4), (slice(None), 3), (0, slice(1, 5), slice(None, None, 3))]:
            np.testing.assert_array_equal(lazy[key], volume[key])
        np.testing.assert_array_equal(lazy[[4, 0]], volume[[4, 0]])
        np.testing.assert_array_equal(lazy[..., 2], volume[..., 2])
        np.testing.assert_array_equal(np.asarray(lazy), volume)
        with pytest.raises(IndexError):
            lazy[5]
        clone = pickle.loads(pickle.dumps(lazy))
    with clone:
        np.testing.assert_array_equal(clone[3], volume[3])


def test_folder_of_slices_uses_natural_order(tmp_path: Path, volume: np.ndarray) -> None:
    folder = tmp_path / "slices"
    folder.mkdir()
    # Plain string order would be 1, 10, 2; natural order is 1, 2, 10.
    for i, z in zip((1, 2, 10), range(3), strict=True):
        tifffile.imwrite(folder / f"slice{i}.tif", volume[z])
    (folder / "notes.txt").write_text("ignored")
    (folder / "._slice3.tif").write_bytes(b"macOS resource fork, ignored")
    np.testing.assert_array_equal(read_volume(folder), volume[:3])
    lazy = read_volume(folder, lazy=True)
    with lazy:
        np.testing.assert_array_equal(lazy[2], volume[2])
        np.testing.assert_array_equal(lazy[:, 1:3], volume[:3, 1:3])


def test_folder_of_slices_names_the_mismatching_slice(tmp_path: Path, volume: np.ndarray) -> None:
    folder = tmp_path / "slices"
    folder.mkdir()
    tifffile.imwrite(folder / "s1.tif", volume[0])
    tifffile.imwrite(folder / "s2.tif", volume[1, :5])
    tifffile.imwrite(folder / "s3.tif", volume[2, :4])
    with pytest.raises(ValueError, match=r"s2\.tif.*shape \(5, 9\).*first slice s1\.tif"):
        read_volume(folder)
    (folder / "s2.tif").unlink()
    (folder / "s3.tif").unlink()
    tifffile.imwrite(folder / "s2.tif", volume[1].astype(np.float32))
    with pytest.raises(ValueError, match=r"s2\.tif.*float32.*uint16"):
        read_volume(folder)


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no \.tif/\.tiff slices"):
        read_volume(tmp_path)


def test_npy_round_trip_and_memmap(tmp_path: Path, volume: np.ndarray) -> None:
    path = tmp_path / "vol.npy"
    np.save(path, volume)
    np.testing.assert_array_equal(read_volume(path), volume)
    lazy = read_volume(path, lazy=True)
    assert isinstance(lazy, np.memmap)
    np.testing.assert_array_equal(lazy[2:4], volume[2:4])


def test_npy_with_objects_is_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([[[{"a": 1}, None]]], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="never unpickled"):
        read_volume(path)


def test_zarr_array_and_group_with_one_array(tmp_path: Path, volume: np.ndarray) -> None:
    arr_path = tmp_path / "plain.zarr"
    zarr.create_array(store=str(arr_path), data=volume, chunks=(2, 7, 9))
    np.testing.assert_array_equal(read_volume(arr_path), volume)
    lazy = read_volume(arr_path, lazy=True)
    assert isinstance(lazy, zarr.Array)
    np.testing.assert_array_equal(lazy[1:3, :, 4], volume[1:3, :, 4])

    group_path = tmp_path / "group.zarr"
    group = zarr.open_group(str(group_path), mode="w")
    group.create_array("raw", data=volume)
    np.testing.assert_array_equal(read_volume(group_path), volume)


def test_zarr_group_with_two_arrays_needs_dataset(tmp_path: Path, volume: np.ndarray) -> None:
    path = tmp_path / "two.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("raw", data=volume)
    group.create_array("smooth", data=volume // 2)
    with pytest.raises(ValueError, match=r"2 arrays.*'raw'.*'smooth'.*dataset="):
        read_volume(path)
    np.testing.assert_array_equal(read_volume(path, dataset="smooth"), volume // 2)
    with pytest.raises(ValueError, match="no array 'nope'"):
        read_volume(path, dataset="nope")


def test_hdf5_without_h5py_says_how_to_install(tmp_path: Path) -> None:
    # h5py is optional: without it a clear ImportError, with it a damaged-file ValueError.
    path = tmp_path / "vol.h5"
    path.write_bytes(b"not really hdf5")
    try:
        import h5py  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install h5py"):
            read_volume(path)
    else:
        with pytest.raises(ValueError, match=r"vol\.h5"):
            read_volume(path)


def test_missing_unsupported_and_corrupt_inputs(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothing_here\.tif"):
        read_volume(tmp_path / "nothing_here.tif")
    bad_suffix = tmp_path / "vol.mrc"
    bad_suffix.write_bytes(b"x")
    with pytest.raises(ValueError, match=r"'\.mrc'.*\.tif/\.tiff.*\.npy.*\.zarr"):
        read_volume(bad_suffix)
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"this is not a TIFF file at all")
    with pytest.raises(ValueError, match=r"corrupt\.tif.*not a TIFF"):
        read_volume(corrupt)


def test_dataset_is_refused_for_single_volume_formats(tmp_path: Path, volume: np.ndarray) -> None:
    path = tmp_path / "vol.npy"
    np.save(path, volume)
    with pytest.raises(ValueError, match="only applies to zarr and HDF5"):
        read_volume(path, dataset="raw")


def test_rgb_tiff_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rgb.tif"
    rgb = np.random.default_rng(2).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    tifffile.imwrite(path, rgb, photometric="rgb")
    with pytest.raises(ValueError, match="convert to greyscale first"):
        read_volume(path)


def test_single_page_tiff_is_a_2d_image(tmp_path: Path, volume: np.ndarray) -> None:
    path = tmp_path / "slice.tif"
    tifffile.imwrite(path, volume[0])
    with pytest.raises(ValueError, match=r"got a 2D image of shape \(7, 9\)"):
        read_volume(path)


# -------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("arr", "message"),
    [
        (np.arange(12.0).reshape(3, 4), r"expected a 3D volume \(z, y, x\), got a 2D image"),
        (np.arange(5.0), r"got a 1D array"),
        (np.arange(240.0).reshape(2, 3, 4, 10), r"4D array.*np\.squeeze"),
        (np.zeros((2, 5, 5, 3), np.uint8), r"RGB colour.*convert to greyscale first"),
        (np.zeros((2, 5, 5, 4), np.uint8), r"RGBA colour.*convert to greyscale first"),
        (np.zeros((0, 4, 4), np.uint8), r"is empty \(shape \(0, 4, 4\)\)"),
        (np.ones((2, 3, 4), np.complex64), "complex"),
        (np.array([[["a", "b"]]]), "not a grey value"),
        (np.full((2, 3, 4), 7, np.uint16), r"same value \(7\) everywhere: nothing to segment"),
    ],
)
def test_check_volume_refuses_bad_input(arr: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_volume(arr)


def test_check_volume_counts_nan_and_inf() -> None:
    arr = np.random.default_rng(3).random((4, 5, 6)).astype(np.float32)
    arr[0, 0, :3] = np.nan
    arr[3, 4, 5] = np.inf
    arr[2, 1, 1] = -np.inf
    with pytest.raises(ValueError, match=r"3 NaN and 2 infinite.*nan_to_num"):
        check_volume(arr, name="scan.tif")
    with pytest.raises(ValueError, match=r"^scan\.tif"):
        check_volume(arr, name="scan.tif")


def test_check_volume_on_lazy_arrays(tmp_path: Path) -> None:
    arr = np.zeros((20, 4, 4), np.float32)
    arr[10, 0, 0] = 1.0  # slice 10 is not among the 8 sampled: a constant sample is confirmed
    path = tmp_path / "lazy.npy"
    np.save(path, arr)
    check_volume(np.load(path, mmap_mode="r"))  # no error
    arr[10, 0, 0] = 0.0
    np.save(path, arr)
    with pytest.raises(ValueError, match="nothing to segment"):
        check_volume(np.load(path, mmap_mode="r"))
    arr[0, 1, 1] = np.nan
    np.save(path, arr)
    with pytest.raises(ValueError, match=r"1 NaN.*z-slices checked"):
        check_volume(np.load(path, mmap_mode="r"))


def test_check_volume_accepts_good_volumes(volume: np.ndarray) -> None:
    check_volume(volume)
    check_volume(volume.astype(np.float64))
    check_volume(volume > 30000)
    check_volume(np.arange(3).reshape(1, 1, 3).astype(np.int32))


def test_reader_validates(tmp_path: Path) -> None:
    path = tmp_path / "flat.npy"
    np.save(path, np.zeros((3, 4, 5), np.uint8))
    with pytest.raises(ValueError, match=r"flat\.npy.*nothing to segment"):
        read_volume(path)


# ------------------------------------------------------------------------------------------ labels


@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".zarr"])
def test_labels_round_trip_with_phases(tmp_path: Path, labels: np.ndarray, suffix: str) -> None:
    path = tmp_path / f"labels{suffix}"
    out = write_labels(path, labels, phases=COMPOSITE_PHASES, voxel_size=(1.3, 0.65, 0.65))
    assert out == path
    back = read_volume(path)
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, labels)
    assert read_label_phases(path) == COMPOSITE_PHASES
    assert read_voxel_size(path) == pytest.approx((1.3, 0.65, 0.65))
    assert _listing(tmp_path) == [path.name]  # no temporary file left behind


def test_labels_tiff_is_compressed_imagej(tmp_path: Path) -> None:
    labels = np.zeros((8, 64, 64), np.uint8)
    labels[:, 10:40, 20:30] = 2
    labels[0, 0, 0] = 1
    path = write_labels(tmp_path / "l.tif", labels.astype(np.int64), phases=COMPOSITE_PHASES)
    assert path.stat().st_size < labels.nbytes // 4
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        assert tif.pages.first.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert "luts" in {k.lower() for k in tif.imagej_metadata}


def test_labels_npy_and_zarr_readable_by_their_own_libraries(
    tmp_path: Path, labels: np.ndarray
) -> None:
    write_labels(tmp_path / "l.npy", labels.astype(bool))
    np.testing.assert_array_equal(np.load(tmp_path / "l.npy"), labels.astype(bool))
    assert np.load(tmp_path / "l.npy").dtype == np.uint8
    assert read_label_phases(tmp_path / "l.npy") is None
    write_labels(tmp_path / "l.zarr", labels)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "l.zarr"), mode="r")[...], labels)


def test_one_slice_labels_keep_their_z_axis(tmp_path: Path, labels: np.ndarray) -> None:
    path = write_labels(tmp_path / "one.tif", labels[:1])
    assert read_volume(path).shape == (1, *labels.shape[1:])
    assert read_volume(path, lazy=True).shape == (1, *labels.shape[1:])


def test_labels_reject_ids_outside_the_phase_table(tmp_path: Path, labels: np.ndarray) -> None:
    two = PhaseTable.from_names(["matrix", "fibre"])
    with pytest.raises(ValueError, match=r"id 3, outside 0\.\.2"):
        write_labels(tmp_path / "l.tif", labels, phases=two)
    with pytest.raises(ValueError, match="id -1"):
        write_labels(tmp_path / "l.tif", labels.astype(np.int16) - 1)
    with pytest.raises(ValueError, match="argmax"):
        write_labels(tmp_path / "l.tif", labels.astype(np.float32))
    assert _listing(tmp_path) == []  # failed writes leave nothing behind


# ----------------------------------------------------------------------------- output safety


def test_refuses_to_overwrite_and_keeps_the_original(tmp_path: Path, labels: np.ndarray) -> None:
    path = tmp_path / "labels.tif"
    path.write_bytes(b"precious user data")
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        write_labels(path, labels)
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        write_volume(path, labels)
    assert path.read_bytes() == b"precious user data"
    write_labels(path, labels, overwrite=True)
    np.testing.assert_array_equal(read_volume(path), labels)
    assert _listing(tmp_path) == ["labels.tif"]


def test_overwrite_zarr_replaces_the_store(tmp_path: Path, labels: np.ndarray) -> None:
    path = tmp_path / "l.zarr"
    write_labels(path, labels, phases=COMPOSITE_PHASES)
    write_labels(path, labels[:2], overwrite=True)
    np.testing.assert_array_equal(read_volume(path), labels[:2])
    assert read_label_phases(path) is None
    assert _listing(tmp_path) == ["l.zarr"]


def test_never_replaces_a_plain_folder(tmp_path: Path, labels: np.ndarray) -> None:
    folder = tmp_path / "out.zarr"
    folder.mkdir()
    (folder / "data.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a zarr store"):
        write_labels(folder, labels, overwrite=True)
    assert (folder / "data.txt").read_text() == "keep me"


def test_missing_folder_and_bad_suffix(tmp_path: Path, labels: np.ndarray) -> None:
    missing = tmp_path / "no_such_folder"
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        write_labels(missing / "labels.tif", labels)
    assert not missing.exists()  # not created silently
    with pytest.raises(ValueError, match=r"'\.png'.*\.tif, \.tiff, \.npy, \.zarr"):
        check_output_path(tmp_path / "labels.png", overwrite=False)
    assert check_output_path(tmp_path / "ok.tif", overwrite=False) == tmp_path / "ok.tif"


@pytest.mark.parametrize("suffix", [".tif", ".npy", ".zarr"])
@pytest.mark.parametrize("target", ["os.replace", "write"])
def test_disk_full_leaves_no_partial_file_and_keeps_the_original(
    tmp_path: Path, labels: np.ndarray, monkeypatch: pytest.MonkeyPatch, suffix: str, target: str
) -> None:
    path = tmp_path / f"labels{suffix}"
    write_labels(path, labels)
    before = {p: p.read_bytes() for p in sorted([path, *path.rglob("*")]) if p.is_file()}

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    if target == "os.replace":
        monkeypatch.setattr(os, "replace", disk_full)
    elif suffix == ".tif":
        monkeypatch.setattr(tifffile, "imwrite", disk_full)
    elif suffix == ".npy":
        monkeypatch.setattr(io_write, "_write_npy", disk_full)
    else:
        monkeypatch.setattr(zarr, "create_array", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_labels(path, labels[:2], overwrite=True)
    monkeypatch.undo()
    after = {p: p.read_bytes() for p in sorted([path, *path.rglob("*")]) if p.is_file()}
    assert after == before
    assert _listing(tmp_path) == [path.name]


def test_failure_on_a_new_output_leaves_nothing(
    tmp_path: Path, volume: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tifffile, "imwrite", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_volume(tmp_path / "vol.tif", volume)
    assert _listing(tmp_path) == []


# ------------------------------------------------------------------------------ volumes, voxels


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.int16, np.float64])
@pytest.mark.parametrize("suffix", [".tif", ".npy", ".zarr"])
def test_write_volume_round_trip(tmp_path: Path, dtype: type, suffix: str) -> None:
    vol = np.random.default_rng(4).integers(0, 200, (3, 5, 6)).astype(dtype)
    path = write_volume(tmp_path / f"v{suffix}", vol, voxel_size=(2.0, 1.0, 1.0))
    back = read_volume(path)
    assert back.dtype == vol.dtype
    np.testing.assert_array_equal(back, vol)
    lazy = read_volume(path, lazy=True)
    np.testing.assert_array_equal(lazy[1, 2:4], vol[1, 2:4])
    expected = None if suffix == ".npy" else (2.0, 1.0, 1.0)
    assert read_voxel_size(path) == (pytest.approx(expected) if expected else None)


def test_uncompressed_volume_tiff_memory_maps(tmp_path: Path, volume: np.ndarray) -> None:
    path = write_volume(tmp_path / "v.tif", volume)
    assert isinstance(read_volume(path, lazy=True), np.memmap)
    path = write_volume(tmp_path / "c.tif", volume, compress=True)
    lazy = read_volume(path, lazy=True)
    assert isinstance(lazy, LazySliceStack)
    lazy.close()


def test_voxel_size_from_a_foreign_imagej_tiff(tmp_path: Path, volume: np.ndarray) -> None:
    path = tmp_path / "fiji.tif"
    tifffile.imwrite(
        path,
        volume,
        imagej=True,
        resolution=(1 / 0.65, 1 / 0.5),  # pixels per unit in x, y
        metadata={"axes": "ZYX", "spacing": 1.3, "unit": "micron"},
    )
    assert read_voxel_size(path) == pytest.approx((1.3, 0.5, 0.65))
    nm = tmp_path / "nm.tif"
    tifffile.imwrite(
        nm, volume, imagej=True, resolution=(1 / 40, 1 / 40), metadata={"spacing": 50, "unit": "nm"}
    )
    assert read_voxel_size(nm) == pytest.approx((0.05, 0.04, 0.04))


def test_voxel_size_unknown(tmp_path: Path, volume: np.ndarray) -> None:
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, volume, photometric="minisblack", resolution=(300, 300))
    assert read_voxel_size(plain) is None
    pixels = tmp_path / "pixels.tif"
    tifffile.imwrite(pixels, volume, imagej=True, metadata={"spacing": 2.0, "unit": "pixel"})
    assert read_voxel_size(pixels) is None
    with pytest.raises(ValueError, match="three positive numbers"):
        write_volume(tmp_path / "v.tif", volume, voxel_size=(1.0, 0.0, 1.0))


# ------------------------------------------------------------------------------------ streaming


def test_streaming_output_zarr_appears_only_when_complete(tmp_path: Path) -> None:
    out = tmp_path / "labels.zarr"
    with io.streaming_output(out, (6, 5, 4), phases=COMPOSITE_PHASES, chunks=(2, 5, 4)) as arr:
        assert not out.exists()
        arr[0:2] = 1
        arr[2:6] = 3
    stored = zarr.open_array(str(out))
    assert stored.chunks == (2, 5, 4)
    np.testing.assert_array_equal(
        stored[...], np.r_[[1] * 2, [3] * 4][:, None, None] * np.ones((6, 5, 4))
    )
    assert read_label_phases(out) == COMPOSITE_PHASES
    assert _listing(tmp_path) == ["labels.zarr"]


@pytest.mark.parametrize("name", ["labels.zarr", "labels.tif", "labels.npy"])
def test_streaming_output_failure_leaves_nothing(tmp_path: Path, name: str) -> None:
    with pytest.raises(KeyboardInterrupt), io.streaming_output(tmp_path / name, (2, 3, 3)) as arr:
        arr[0] = 1
        raise KeyboardInterrupt
    assert _listing(tmp_path) == []


def test_streaming_output_tiff_and_uint8_volume_kind(tmp_path: Path) -> None:
    with io.streaming_output(
        tmp_path / "u.tif", (3, 4, 5), kind="volume", voxel_size=(1, 2, 2)
    ) as arr:
        arr[...] = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    np.testing.assert_array_equal(read_volume(tmp_path / "u.tif"), np.arange(60).reshape(3, 4, 5))
    assert read_voxel_size(tmp_path / "u.tif") == (1.0, 2.0, 2.0)
    assert _listing(tmp_path) == ["u.tif"]


def test_rechunked_copies_only_pathological_chunking(tmp_path: Path, volume: np.ndarray) -> None:
    good = zarr.create_array(store=str(tmp_path / "g.zarr"), shape=volume.shape, dtype=volume.dtype)
    good[...] = volume
    with io.rechunked(good, folder=tmp_path) as same:
        assert same is good
    bad = zarr.create_array(
        store=str(tmp_path / "b.zarr"), shape=volume.shape, dtype=volume.dtype, chunks=(1, 1, 1)
    )
    bad[...] = volume
    assert io.is_pathological_chunking(bad) and not io.is_pathological_chunking(good)
    with io.rechunked(bad, folder=tmp_path) as copy:
        assert copy is not bad and copy.chunks == volume.shape  # capped at the shape
        np.testing.assert_array_equal(copy[...], volume)
        assert len(_listing(tmp_path)) == 3
    assert _listing(tmp_path) == ["b.zarr", "g.zarr"]


def test_read_volume_dask_is_lazy_for_every_format(tmp_path: Path, volume: np.ndarray) -> None:
    import dask.array as da

    tifffile.imwrite(tmp_path / "v.tif", volume, compression="zlib")
    write_volume(tmp_path / "v.zarr", volume)
    np.save(tmp_path / "v.npy", volume)
    for name in ("v.tif", "v.zarr", "v.npy"):
        levels = io.read_volume_dask(tmp_path / name)
        assert len(levels) == 1 and isinstance(levels[0], da.Array)
        np.testing.assert_array_equal(levels[0][1:3].compute(), volume[1:3])
    assert io.read_volume_dask(tmp_path / "v.tif")[0].chunks[0] == (1,) * volume.shape[0]


def test_read_volume_dask_multiscale_levels(tmp_path: Path, volume: np.ndarray) -> None:
    root = zarr.open_group(str(tmp_path / "ms.zarr"), mode="w")
    root.create_array("0", shape=volume.shape, dtype=volume.dtype)[...] = volume
    half = volume[:, ::2, ::2]
    root.create_array("1", shape=half.shape, dtype=volume.dtype)[...] = half
    root.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [{"axes": ["z", "y", "x"], "datasets": [{"path": "0"}, {"path": "1"}]}],
    }
    levels = io.read_volume_dask(tmp_path / "ms.zarr")
    assert [lv.shape for lv in levels] == [volume.shape, half.shape]
    np.testing.assert_array_equal(levels[1].compute(), half)


def test_read_hdf5_lazily(tmp_path: Path, volume: np.ndarray) -> None:
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f.create_dataset("a/raw", data=volume, chunks=(1, 7, 9))
    lazy = read_volume(tmp_path / "v.h5", lazy=True)
    assert isinstance(lazy, h5py.Dataset)
    np.testing.assert_array_equal(lazy[2:4], volume[2:4])
    (level,) = io.read_volume_dask(tmp_path / "v.h5")
    assert level.chunks == ((5,), (7,), (9,))  # tiny stored chunks regrouped by dask
    np.testing.assert_array_equal(level.compute(), volume)


# ------------------------------------------------------------------------------ room helpers


def test_input_format_by_ending_and_folder_kind(tmp_path: Path, labels: np.ndarray) -> None:
    from napari_tomoseg.core.io.formats import input_format

    for name, expected in [
        ("a.TIF", "tiff"),
        ("b.tiff", "tiff"),
        ("c.npy", "npy"),
        ("d.h5", "hdf5"),
    ]:
        (tmp_path / name).write_bytes(b"")
        assert input_format(tmp_path / name) == expected
    write_labels(tmp_path / "store.zarr", labels)
    renamed = tmp_path / "no_ending"
    (tmp_path / "store.zarr").rename(renamed)
    assert io.is_zarr_folder(renamed) and input_format(renamed) == "zarr"
    slices = tmp_path / "slices"
    slices.mkdir()
    assert not io.is_zarr_folder(slices) and input_format(slices) == "tiff-folder"
    (tmp_path / "e.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"unsupported file type '\.png'.*folder of \.tif"):
        input_format(tmp_path / "e.png")


def test_a_store_made_with_the_public_constructor_reads_back_its_metadata(tmp_path: Path) -> None:
    meta = io.file_metadata("labels", (3, 4, 5), io.check_voxel_size((2, 1, 1)), COMPOSITE_PHASES)
    arr = io.create_uint8_store(tmp_path / "s.zarr", (3, 4, 5), (2, 4, 5), meta)
    arr[1] = 2
    assert arr.chunks == (2, 4, 5) and arr.dtype == np.uint8
    assert read_label_phases(tmp_path / "s.zarr") == COMPOSITE_PHASES
    assert read_voxel_size(tmp_path / "s.zarr") == (2.0, 1.0, 1.0)
    assert np.array_equal(io.read_labels(tmp_path / "s.zarr")[1], np.full((4, 5), 2))
    with pytest.raises(ValueError, match="three positive numbers"):
        io.check_voxel_size((1, 0, 1))


def test_the_package_exports_every_name_it_lists() -> None:
    assert all(hasattr(io, name) for name in io.__all__)
    assert {"read_volume", "write_labels", "streaming_output", "LazySliceStack"} <= set(io.__all__)
