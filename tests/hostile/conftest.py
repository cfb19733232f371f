"""Hostile inputs for the ``tomoseg`` command, built once per session.

- ``pristine``: a folder holding every input the cases use (valid ones and hostile ones: empty,
  truncated, 2D / 4D / RGB, complex, bool, a NaN slice, declared-huge .npy and TIFF, corrupt and lying
  model files, a booby-trapped pickle, slice folders, zarr and HDF5 stores). Built once; never written.
- ``workdir(*names)``: a fresh folder with copies of just those inputs (the current folder while the
  case runs), so that a case sees only its own files.
- ``tree_hash(folder)``: every path, kind and content under ``folder`` (hidden files included): equal
  before and after a case means nothing was created, changed or removed.
- ``run_cli(argv)``: ``tomoseg ARGV`` in-process; ``(exit code, stdout, stderr)``. A traceback
  escapes as the exception and fails the case.
- ``PWNED``: the file the booby-trapped pickle would create if it ever ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import tifffile

SHAPE = (12, 32, 32)
PWNED_NAME = "tomoseg-hostile-PWNED"


class Trap:
    """Unpickling this runs a command that creates a marker file (it must never run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _huge_tiff(path: Path, side: int = 65000, pages: int = 12) -> None:
    """A small uncompressed TIFF whose pages then declare ``side x side`` pixels."""
    tifffile.imwrite(path, np.zeros((pages, 8, 8), np.uint8), photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        offsets = []
        for page in tif.pages:
            for name in ("ImageWidth", "ImageLength", "RowsPerStrip"):
                tag = page.tags.get(name)
                if tag is not None:
                    offsets.append((tag.valueoffset, tag.dtype))
    with open(path, "r+b") as f:
        for offset, dtype in offsets:
            f.seek(offset)
            f.write(np.array(side, "<u2" if int(dtype) == 3 else "<u4").tobytes())


def _huge_npy(path: Path) -> None:
    """A .npy whose header declares 10^5 x 10^5 x 10^5 uint8 (a petabyte) over 64 bytes of data."""
    header = "{'descr': '|u1', 'fortran_order': False, 'shape': (100000, 100000, 100000), }"
    header = header.ljust(128 - 10 - 1) + "\n"
    path.write_bytes(
        b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(64)
    )


def _lying_models(folder: Path) -> None:
    """Copies of the bundled model whose metadata lies about the architecture."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from napari_tomoseg.core.model import bundled_model_path

    with safe_open(str(bundled_model_path()), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    unet = json.loads(meta["unet"])
    lies = {
        "lie_filters_1e6": {"base_filters": 10**6},
        "lie_channels_1e9": {"in_channels": 10**9},
        "lie_depth_3_5": {"depth": 3.5},
        "lie_filters_8_5": {"base_filters": 8.5},
        "lie_filters_double": {"base_filters": 2 * int(unet["base_filters"])},
    }
    for name, change in lies.items():
        save_file(
            tensors,
            str(folder / f"{name}.safetensors"),
            {**meta, "unet": json.dumps({**unet, **change})},
        )
    dropped = dict(tensors)
    dropped.pop(sorted(dropped)[0])
    save_file(dropped, str(folder / "missing_tensor.safetensors"), meta)
    save_file(tensors, str(folder / "nometa.safetensors"))
    shutil.copyfile(bundled_model_path(), folder / "UPPER.SAFETENSORS")
    raw = bundled_model_path().read_bytes()
    (folder / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    (folder / "header_only.safetensors").write_bytes(raw[:200])


def _build(d: Path) -> None:
    import h5py
    import torch

    from napari_tomoseg.core import io
    from napari_tomoseg.core.phases import COMPOSITE_PHASES

    rng = np.random.default_rng(7)
    vol = rng.integers(0, 255, SHAPE, dtype=np.uint8)
    labels = rng.integers(1, 4, SHAPE, dtype=np.uint8)
    ann = np.zeros(SHAPE, np.uint8)
    ann[2] = labels[2]
    ann[8] = labels[8]

    # grey volumes, one per reader, and the broken ones
    tifffile.imwrite(d / "vol.tif", vol)
    shutil.copyfile(d / "vol.tif", d / "UPPER.TIF")
    np.save(d / "vol.npy", vol)
    io.write_volume(d / "vol.zarr", vol)
    with h5py.File(d / "vol.h5", "w") as f:
        f["volume"] = vol
    with h5py.File(d / "two.h5", "w") as f:
        f["a"] = vol
        f["b"] = vol
    with h5py.File(d / "flat.h5", "w") as f:
        f["volume"] = vol[0]
    (d / "slices").mkdir()
    for i, sl in enumerate(vol):
        tifffile.imwrite(d / "slices" / f"s{i:03d}.tif", sl)
    (d / "slices_mixed").mkdir()
    for i in range(4):
        tifffile.imwrite(
            d / "slices_mixed" / f"s{i:03d}.tif", np.zeros((32, 32 + (i == 2)), np.uint8)
        )
    (d / "slices_empty").mkdir()
    (d / "slices_broken").mkdir()
    for i in range(4):
        tifffile.imwrite(d / "slices_broken" / f"s{i:03d}.tif", vol[i])
    (d / "slices_broken" / "s002.tif").write_bytes(b"")
    (d / "empty.tif").write_bytes(b"")
    (d / "empty.npy").write_bytes(b"")
    raw = (d / "vol.tif").read_bytes()
    (d / "trunc_head.tif").write_bytes(raw[:100])
    (d / "trunc_half.tif").write_bytes(raw[: len(raw) // 2])
    (d / "not_a_tiff.tif").write_bytes(b"hello, I am a text file\n" * 20)
    tifffile.imwrite(d / "flat.tif", vol[0])
    tifffile.imwrite(d / "four_d.tif", np.stack([vol, vol]))
    tifffile.imwrite(d / "rgb.tif", np.stack([vol] * 3, axis=-1), photometric="rgb")
    np.save(d / "complex.npy", vol.astype(np.complex64))
    np.save(d / "bool.npy", vol > 128)
    np.save(d / "flat.npy", vol[0])
    np.save(
        d / "object.npy", np.array([Trap(d.parent / PWNED_NAME)], dtype=object), allow_pickle=True
    )
    tiny = np.zeros((1, 32, 32), np.uint8)
    tifffile.imwrite(d / "tiny.tif", tiny)
    fvol = vol.astype(np.float32)
    fvol[5] = np.nan  # slice 5 of 12: not one the intensity sampling reads
    tifffile.imwrite(d / "nan5.tif", fvol)
    inf = vol.astype(np.float32)
    inf[7, 3, 4] = np.inf
    np.save(d / "inf7.npy", inf)
    _huge_npy(d / "huge.npy")
    _huge_tiff(d / "huge.tif")
    bad_zarr = d / "bad.zarr"
    bad_zarr.mkdir()
    (bad_zarr / "zarr.json").write_text("{not json")
    (d / "empty.zarr").mkdir()

    # label files
    io.write_labels(d / "labels.tif", labels, phases=COMPOSITE_PHASES)
    io.write_labels(d / "ann.tif", ann, phases=COMPOSITE_PHASES)
    tifffile.imwrite(d / "labels_other_shape.tif", labels[:, :, :30])
    unknown = ann.copy()
    unknown[8, :4, :4] = 9
    tifffile.imwrite(d / "ann_unknown.tif", unknown)
    neg = labels.astype(np.int16)
    neg[3, 3, 3] = -1
    tifffile.imwrite(d / "labels_negative.tif", neg)
    tifffile.imwrite(d / "ann_zero.tif", np.zeros(SHAPE, np.uint8))
    tifffile.imwrite(d / "labels_float.tif", labels.astype(np.float32) + 0.5)

    # model files
    _lying_models(d)
    (d / "random.safetensors").write_bytes(np.random.default_rng(1).bytes(4096))
    (d / "empty.safetensors").write_bytes(b"")
    trap = Trap(d.parent / PWNED_NAME)
    torch.save({"state_dict": trap}, d / "pickle.safetensors")
    torch.save({"state_dict": trap}, d / "pickle.pt")
    (d / "text.json").write_text("{}")


@pytest.fixture(scope="session")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile") / "inputs"
    d.mkdir()
    _build(d)
    return d


@pytest.fixture(scope="session")
def pwned(pristine: Path) -> Path:
    """Where the booby trap would leave its mark."""
    return pristine.parent / PWNED_NAME


@pytest.fixture
def workdir(pristine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    def make(*names: str) -> Path:
        d = tmp_path / "case"
        d.mkdir(exist_ok=True)
        for name in names:
            src = pristine / name
            if src.is_dir():
                shutil.copytree(src, d / name, symlinks=True)
            else:
                shutil.copy2(src, d / name)
        monkeypatch.chdir(d)
        return d

    return make


def tree_hash(folder: Path) -> dict[str, str]:
    """``{relative path: kind and content digest}`` of everything under ``folder``."""
    out: dict[str, str] = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            p = Path(root) / name
            rel = str(p.relative_to(folder))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = "file:" + hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[[Sequence[str]], tuple[int, str, str]]:
    from napari_tomoseg.cli import main

    def run(argv: Sequence[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return run
