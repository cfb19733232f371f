"""Reliability of the ``tomoseg`` command: the input is never written, NaN is found where it is read,
resources are checked before work, options are validated, errors are one line, no litter is left."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_tomoseg.cli import main
from napari_tomoseg.core import io
from napari_tomoseg.core.phases import COMPOSITE_PHASES

FAST = ["--device", "cpu", "--tile", "32", "--overlap", "8"]


def _digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) and its hash."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p.relative_to(folder)) + "/"] = ""
    return out


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("reliable")
    argv = ["synth", "-o", str(d / "vol.tif"), "--labels", str(d / "truth.tif")]
    assert main([*argv, "--shape", "8", "48", "48", "--seed", "2"]) == 0
    assert main(["synth", "-o", str(d / "vol.zarr"), "--labels", str(d / "truth.zarr"),
                 "--shape", "8", "48", "48", "--seed", "2"]) == 0  # fmt: skip
    return d


# ---------------------------------------------------------------------------------------------
# 1. the input is never written


@pytest.mark.parametrize("overwrite", [False, True])
def test_segment_refuses_to_write_its_input(data, tmp_path, fails, overwrite):
    vol = tmp_path / "vol.tif"
    vol.write_bytes((data / "vol.tif").read_bytes())
    os.symlink(vol, tmp_path / "link.tif")
    os.link(vol, tmp_path / "hard.tif")
    before = _digest(tmp_path)
    flag = ["--overwrite"] if overwrite else []
    for out in ("vol.tif", "link.tif", "hard.tif"):
        err = fails(["segment", str(vol), "-o", str(tmp_path / out), *flag, *FAST], "is the same")
        assert str(vol) in err and out in err
    err = fails(
        ["segment", str(vol), "-o", str(tmp_path / "l.tif"), "--uncertainty", str(vol), *flag],
        "is the same",
    )
    assert _digest(tmp_path) == before


def test_segment_refuses_a_zarr_output_inside_its_zarr_input(data, tmp_path, fails):
    import shutil

    shutil.copytree(data / "vol.zarr", tmp_path / "vol.zarr")
    before = _digest(tmp_path)
    fails(["segment", str(tmp_path / "vol.zarr"), "-o", str(tmp_path / "vol.zarr" / "x.zarr")],
          "is inside")  # fmt: skip
    fails(["segment", str(tmp_path / "vol.zarr"), "-o", str(tmp_path / "vol.zarr"),
           "--overwrite"], "vol.zarr")  # fmt: skip
    assert _digest(tmp_path) == before


def test_clean_train_and_suggest_refuse_to_write_their_inputs(data, tmp_path, fails):
    labels = tmp_path / "labels.tif"
    labels.write_bytes((data / "truth.tif").read_bytes())
    os.link(labels, tmp_path / "hard.tif")
    before = _digest(tmp_path)
    fails(["clean", str(labels), "-o", str(tmp_path / "hard.tif"), "--phase", "1", "--overwrite"],
          "is the same")  # fmt: skip
    fails(["clean", str(labels), "-o", str(tmp_path / "c.tif"), "--phase", "1",
           "--blobs-csv", str(labels), "--overwrite"], "is the same")  # fmt: skip
    fails(["suggest", str(data / "vol.tif"), "--uncertainty", str(tmp_path / "hard.tif"),
           "--annotations", str(labels), "--overwrite"], "is the same")  # fmt: skip
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"not a model")
    before = _digest(tmp_path)
    fails(["train", str(data / "vol.tif"), "-a", str(labels), "-o", str(model),
           "--base", str(model), "--overwrite", "--steps", "1"], "is the same")  # fmt: skip
    assert _digest(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# 2. every voxel read is checked


def _nan_volume(path: Path, z: int = 5) -> None:
    vol = np.random.default_rng(0).random((12, 40, 40)).astype(np.float32)
    vol[z] = np.nan
    np.save(path, vol)


def test_segment_stops_at_a_nan_slice_and_writes_nothing(tmp_path, fails):
    _nan_volume(tmp_path / "vol.npy")
    for out in ("labels.tif", "labels.zarr"):
        err = fails(["segment", str(tmp_path / "vol.npy"), "-o", str(tmp_path / out), *FAST],
                    "z-slice 5")  # fmt: skip
        assert "vol.npy" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.npy"]


def test_segment_finds_nan_where_the_blocks_are_read_not_by_sampling(tmp_path, fails):
    # 40 slices of 256 x 256: the grey range samples every other slice, check_volume 8 slices;
    # slice 5 is in neither sample, so only the block reads can find it.
    vol = np.random.default_rng(1).random((40, 256, 256)).astype(np.float32)
    vol[5] = np.nan
    np.save(tmp_path / "vol.npy", vol)
    err = fails(["segment", str(tmp_path / "vol.npy"), "-o", str(tmp_path / "l.tif"), *FAST,
                 "--no-ring-removal"], "z-slice 5")  # fmt: skip
    assert "vol.npy" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.npy"]


def test_train_stops_at_a_nan_slice(tmp_path, fails):
    _nan_volume(tmp_path / "vol.npy")
    ann = np.zeros((12, 40, 40), np.uint8)
    ann[5, :20] = 1
    ann[5, 20:] = 2
    io.write_labels(tmp_path / "ann.tif", ann)
    fails(["train", str(tmp_path / "vol.npy"), "-a", str(tmp_path / "ann.tif"),
           "-o", str(tmp_path / "m.safetensors"), "--steps", "2"], "z-slice 5")  # fmt: skip
    assert not (tmp_path / "m.safetensors").exists()
    assert _hidden(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# 4. resources checked before work; one line for every failure


def _npy_declaring(path: Path, shape: tuple[int, ...], data_bytes: int = 64) -> None:
    import io as _io

    buf = _io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "|u1", "fortran_order": False, "shape": shape}
    )
    path.write_bytes(buf.getvalue() + b"\0" * data_bytes)


def test_an_enormous_npy_header_is_one_line_for_every_command(data, tmp_path, fails):
    huge = tmp_path / "huge.npy"
    _npy_declaring(huge, (100000, 100000, 100000))
    fails(["evaluate", str(huge), str(data / "truth.tif")], "truncated or corrupt")
    fails(["evaluate", str(data / "truth.tif"), str(huge)], "huge.npy")
    fails(["clean", str(huge), "-o", str(tmp_path / "c.tif"), "--phase", "1"], "huge.npy")
    fails(["train", str(data / "vol.tif"), "-a", str(huge), "-o", str(tmp_path / "m.safetensors"),
           "--steps", "1"], "huge.npy")  # fmt: skip
    fails(["info", str(huge)], "huge.npy")
    fails(["segment", str(huge), "-o", str(tmp_path / "l.tif")], "huge.npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.npy"]


def test_a_npy_bigger_than_memory_is_refused_before_reading(tmp_path, fails):
    available = io.available_memory()
    if available is None:
        pytest.skip("the system does not report its available memory")
    side = int((4 * available) ** (1 / 3)) + 1  # about 4x the memory, as a sparse file
    huge = tmp_path / "big.npy"
    _npy_declaring(huge, (side, side, side), data_bytes=0)
    with huge.open("r+b") as fh:
        fh.truncate(huge.stat().st_size + side**3)
    err = fails(["clean", str(huge), "-o", str(tmp_path / "c.tif"), "--phase", "1"], "memory")
    assert "big.npy" in err and "available" in err
    fails(["evaluate", str(huge), str(huge)], "memory")


def _tiff_declaring_huge_pages(path: Path) -> None:
    import struct

    tifffile.imwrite(path, np.arange(3 * 16 * 16, dtype=np.uint8).reshape(3, 16, 16),
                     photometric="minisblack")  # fmt: skip
    b = bytearray(path.read_bytes())
    off = struct.unpack("<I", b[4:8])[0]
    while off:
        n = struct.unpack("<H", b[off : off + 2])[0]
        for i in range(n):
            e = off + 2 + 12 * i
            tag, typ = struct.unpack("<HH", b[e : e + 4])
            if tag in (256, 257):
                fmt = "<H" if typ == 3 else "<I"
                b[e + 8 : e + 8 + struct.calcsize(fmt)] = struct.pack(fmt, 65000)
        off = struct.unpack("<I", b[off + 2 + 12 * n : off + 6 + 12 * n])[0]
    path.write_bytes(bytes(b))


def test_a_tiff_declaring_huge_pages_is_one_line(tmp_path, fails):
    _tiff_declaring_huge_pages(tmp_path / "huge.tif")
    fails(["info", str(tmp_path / "huge.tif")], "truncated or corrupt")
    fails(["segment", str(tmp_path / "huge.tif"), "-o", str(tmp_path / "l.tif")], "huge.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.tif"]


def test_a_truncated_tiff_says_so_without_tifffile_log_lines(data, tmp_path):
    raw = (data / "vol.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(raw[: len(raw) // 2])
    run = subprocess.run(
        [sys.executable, "-m", "napari_tomoseg.cli", "info", str(tmp_path / "cut.tif")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "cut.tif" in lines[0] and "truncated or corrupt" in lines[0]


def _lying_model(path: Path, **unet: object) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    from napari_tomoseg.core.model import bundled_model_path

    with safe_open(str(bundled_model_path()), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    arch = json.loads(meta["unet"])
    arch.update(unet)
    meta["unet"] = json.dumps(arch)
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.mark.parametrize(
    ("lie", "match"),
    [
        ({"base_filters": 10**6}, "base_filters"),
        ({"in_channels": 10**9}, "in_channels"),
        ({"depth": 3.5}, "depth"),
        ({"base_filters": 8.5}, "base_filters"),
        ({"base_filters": 16}, "do not match"),
    ],
)
def test_a_model_whose_metadata_lies_is_one_line_naming_the_file(data, tmp_path, fails, lie, match):
    model = _lying_model(tmp_path / "liar.safetensors", **lie)
    t0 = time.perf_counter()
    err = fails(["info", str(model)], match)
    assert "liar.safetensors" in err
    fails(["segment", str(data / "vol.tif"), "-o", str(tmp_path / "l.tif"), "--model", str(model)],
          "liar.safetensors")  # fmt: skip
    assert time.perf_counter() - t0 < 10  # nothing was allocated from the lie
    assert not (tmp_path / "l.tif").exists()


def test_info_reads_an_upper_case_safetensors_ending(tmp_path, capsys):
    from napari_tomoseg.core.model import bundled_model_path

    upper = tmp_path / "MODEL.SAFETENSORS"
    upper.write_bytes(bundled_model_path().read_bytes())
    assert main(["info", str(upper), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "model"


def test_train_into_an_unwritable_folder_fails_before_training(data, tmp_path, fails, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(
        "napari_tomoseg.core.io.write.os.access",
        lambda p, mode, *a, **k: False if Path(p) == ro else real(p, mode, *a, **k),
    )
    t0 = time.perf_counter()
    fails(["train", str(data / "vol.tif"), "-a", str(data / "truth.tif"),
           "-o", str(ro / "m.safetensors"), "--steps", "50"], "cannot write")  # fmt: skip
    assert time.perf_counter() - t0 < 2
    assert list(ro.iterdir()) == []


def test_argument_errors_are_one_line_without_usage(capsys):
    assert main(["segment"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tomoseg: error:") and "\n" not in err and "usage" not in err
    assert main(["segment", "v.tif", "-o", "l.tif", "--tile", "abc"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--tile" in err


def test_memory_and_library_errors_are_one_line_and_debug_shows_the_traceback(
    data, tmp_path, capsys, monkeypatch
):
    from napari_tomoseg._cli import info

    def boom(path):
        raise MemoryError("Unable to allocate 72 TiB")

    monkeypatch.setattr(info, "volume_info", boom)
    assert main(["info", str(data / "vol.tif")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "out of memory" in err and "72 TiB" in err

    def lib(path):
        raise RuntimeError("a library failed\nwith a second line")

    monkeypatch.setattr(info, "volume_info", lib)
    assert main(["info", str(data / "vol.tif")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "a library failed" in err and "--debug" in err
    assert main(["--debug", "info", str(data / "vol.tif")]) == 1
    assert "Traceback" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# 5. options validated


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--min-aspect", "nan"], "--min-aspect"),
        (["--min-aspect", "0.5"], "min_aspect"),
        (["--min-area", "-1"], "--min-area"),
        (["--max-area", "inf"], "--max-area"),
        (["--max-aspect", "2", "--min-aspect", "3"], "--max-aspect"),
    ],
)
def test_clean_rejects_meaningless_numbers(data, tmp_path, fails, argv, match):
    fails(["clean", str(data / "truth.tif"), "-o", str(tmp_path / "c.tif"), "--phase", "1", *argv],
          match)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--local-cluster", "0"], "--local-cluster"),
        (["--overlap", "30"], "half the tile"),
        (["--overlap", "100000"], "the model's tile"),
        (["--threads", "0"], "--threads"),
        (["--batch-size", "0"], "--batch-size"),
        (["--overlap", "-1"], "--overlap"),
    ],
)
def test_segment_rejects_options_that_would_be_ignored_or_adjusted(
    data, tmp_path, fails, argv, match
):
    tile = [] if "the model's tile" in match else ["--tile", "32"]
    fails(["segment", str(data / "vol.tif"), "-o", str(tmp_path / "l.tif"), *tile, *argv], match)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "match"),
    [(["--lr", "nan"], "--lr"), (["--steps", "0"], "--steps"), (["--seed", "-1"], "--seed"),
     (["--patience", "0"], "--patience")],
)  # fmt: skip
def test_train_rejects_meaningless_numbers(data, tmp_path, fails, argv, match):
    fails(["train", str(data / "vol.tif"), "-a", str(data / "truth.tif"),
           "-o", str(tmp_path / "m.safetensors"), *argv], match)  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_clean_and_evaluate_of_negative_ids_say_so(tmp_path, fails):
    labels = np.ones((2, 8, 8), np.int16)
    labels[0, 0, 0] = -1
    np.save(tmp_path / "neg.npy", labels)
    np.save(tmp_path / "ok.npy", np.ones((2, 8, 8), np.int16))
    fails(["clean", str(tmp_path / "neg.npy"), "-o", str(tmp_path / "c.tif"), "--phase", "1"],
          "negative ids")  # fmt: skip
    fails(["evaluate", str(tmp_path / "ok.npy"), str(tmp_path / "neg.npy")], "negative ids")


def test_evaluate_of_an_empty_reference_says_there_is_nothing_to_score(tmp_path, fails):
    np.save(tmp_path / "zero.npy", np.zeros((2, 8, 8), np.uint8))
    fails(["evaluate", str(tmp_path / "zero.npy"), str(tmp_path / "zero.npy")],
          "the reference")  # fmt: skip
    err = fails(["evaluate", str(tmp_path / "zero.npy"), str(tmp_path / "zero.npy"), "--json"],
                "no annotated voxel")  # fmt: skip
    assert "phase table" not in err


def _strict_json(text: str) -> object:
    def refuse(const: str) -> object:
        raise AssertionError(f"not JSON: {const}")

    return json.loads(text, parse_constant=refuse)


def test_evaluate_json_is_valid_json_with_null_for_undefined_scores(tmp_path, capsys):
    ref = np.ones((2, 4, 4), np.uint8)
    pred = np.full((2, 4, 4), 2, np.uint8)  # no overlap anywhere: matrix 0, fibre undefined
    io.write_labels(tmp_path / "p.tif", pred, phases=COMPOSITE_PHASES)
    io.write_labels(tmp_path / "r.tif", ref)
    vol = np.random.default_rng(0).integers(0, 255, (2, 4, 4), dtype=np.uint8)
    io.write_volume(tmp_path / "v.tif", vol)
    for extra in ([], ["--image", str(tmp_path / "v.tif")]):
        capsys.readouterr()
        assert main(["evaluate", str(tmp_path / "p.tif"), str(tmp_path / "r.tif"), "--json",
                     *extra]) == 0  # fmt: skip
        report = _strict_json(capsys.readouterr().out)
        assert isinstance(report, dict)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "p.tif"), str(tmp_path / "r.tif"), "--json"]) == 0
    report = _strict_json(capsys.readouterr().out)
    assert isinstance(report, dict)
    assert report["per_phase"]["pore"] is None and report["mean"] is not None


# ---------------------------------------------------------------------------------------------
# 6. no litter


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_later_run_removes_what_killed_runs_left_but_not_live_ones(data, tmp_path):
    # temp_path's names: .<name>.tomoseg-tmp-<host>-<pid>-<random>.<tag><suffix>
    host = io.temp_path(tmp_path / "x", "t").name.split("tomoseg-tmp-")[1].split("-")[0]
    dead, alive = _dead_pid(), os.getpid()
    stale = [
        tmp_path / f".l.tif.tomoseg-tmp-{host}-{dead}-0a1b2c3d.partial.tif",
        tmp_path / f".l.zarr.tomoseg-tmp-{host}-{dead}-0a1b2c3d.scratch.zarr",
        tmp_path / f".vol.tif.tomoseg-tmp-{host}-{dead}-0a1b2c3d.rechunk.zarr",
        tmp_path / f".m.safetensors.tomoseg-tmp-{host}-{dead}-0a1b2c3d.partial.safetensors",
    ]
    for p in stale:
        if p.suffix == ".zarr":
            p.mkdir()
            (p / "zarr.json").write_text("{}")
        else:
            p.write_bytes(b"half")
    live = tmp_path / f".x.tif.tomoseg-tmp-{host}-{alive}-0a1b2c3d.partial.tif"
    other_host = tmp_path / f".y.tif.tomoseg-tmp-ffffffff-{dead}-0a1b2c3d.partial.tif"
    unrelated = tmp_path / ".keep.tif"
    for p in (live, other_host, unrelated):
        p.write_bytes(b"x")
    assert main(["segment", str(data / "vol.tif"), "-o", str(tmp_path / "l.tif"), *FAST]) == 0
    assert _hidden(tmp_path) == sorted(p.name for p in (live, other_host, unrelated))


def _run_and_signal(argv: list[str], sig: int, folder: Path) -> subprocess.CompletedProcess:
    """Run ``tomoseg ARGV`` and send ``sig`` once its temporary store shows up in ``folder``."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_tomoseg.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while proc.poll() is None and not _hidden(folder) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the run: blocks are being written
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_clean_up_like_ctrl_c(tmp_path, sig, code):
    vol = np.random.default_rng(0).integers(0, 255, (96, 384, 384), dtype=np.uint8)
    io.write_volume(tmp_path / "vol.tif", vol)
    folder = tmp_path / "out"
    folder.mkdir()
    argv = ["segment", str(tmp_path / "vol.tif"), "-o", str(folder / "l.tif"), "--device", "cpu"]
    done = _run_and_signal(argv, sig, folder)
    if done.returncode == 0:
        pytest.skip("the segmentation finished before the signal")
    assert done.returncode == code, done.stderr
    assert list(folder.iterdir()) == []


@pytest.mark.slow
def test_kill_9_litter_is_removed_by_the_next_run(tmp_path):
    vol = np.random.default_rng(0).integers(0, 255, (96, 384, 384), dtype=np.uint8)
    io.write_volume(tmp_path / "vol.tif", vol)
    folder = tmp_path / "out"
    folder.mkdir()
    argv = ["segment", str(tmp_path / "vol.tif"), "-o", str(folder / "l.tif"), "--device", "cpu"]
    _run_and_signal(argv, signal.SIGKILL, folder)
    assert not (folder / "l.tif").exists()
    assert _hidden(folder)  # what kill -9 leaves behind
    small = tmp_path / "small.tif"
    io.write_volume(small, vol[:4, :48, :48])
    assert main(["segment", str(small), "-o", str(folder / "m.tif"), *FAST]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["m.tif"]
