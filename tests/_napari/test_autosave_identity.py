"""Autosave keyed by the identity of the volume, in a real viewer.

One autosave per source: two volumes of the same file name in two read-only folders, or two file-less
layers of the same name and shape, get two autosave files and never see each other's annotations; a
restore says what it restored and from where; a hidden partial file of a dead save is removed by the
next save. The widgets that write refuse the volume's own file (same path, symlink, hard link).

Read-only folders: the folders are made read-only with chmod. Running as root (CI) chmod does not stop
writing, so there :func:`napari_tomoseg._napari.files.writable_folder` is also patched to say those
folders are read-only (the same answer ``os.access`` gives a normal user).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from qtpy.QtWidgets import QMessageBox

from napari_tomoseg._napari import files, notify
from napari_tomoseg._napari.annotate import ANNOTATIONS, AnnotateWidget, autosave_path
from napari_tomoseg._napari.autosave import STALE_PARTIAL_SECONDS
from napari_tomoseg._napari.export import ExportWidget
from napari_tomoseg._napari.jobs import JobState
from napari_tomoseg.core import io

SHAPE = (6, 16, 16)


@pytest.fixture
def infos(monkeypatch):
    """The texts of the info notifications shown during the test."""
    shown: list[str] = []
    monkeypatch.setattr(notify, "show_info", shown.append)
    return shown


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)``: make ``folder`` unwritable (chmod; and, as root, as os.access would
    say for anyone else)."""
    folders: list[Path] = []
    real = files.writable_folder

    def fake(folder: Path) -> bool:
        return Path(folder).resolve() not in folders and real(folder)

    def make(folder: Path) -> None:
        folder.chmod(0o555)
        folders.append(folder.resolve())
        if os.access(folder, os.W_OK):  # root: chmod is not enough
            monkeypatch.setattr(files, "writable_folder", fake)

    yield make
    for f in folders:
        f.chmod(0o755)


def _volume(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, SHAPE, dtype=np.uint8)


def _open(make_napari_viewer, path: Path):
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari-tomoseg")
    return viewer, layer


def _annotator(viewer, qtbot) -> AnnotateWidget:
    w = AnnotateWidget(viewer)
    qtbot.addWidget(w.native)
    return w


def _paint_and_save(w: AnnotateWidget, where: tuple[int, int, int], phase: int, wait_job) -> Path:
    layer = w.ensure_layer()
    data = layer.data.copy()
    data[where] = phase
    layer.data = data
    assert w.save_now()
    assert wait_job(w._saver) is JobState.DONE
    assert w.last_saved is not None
    return w.last_saved


def test_same_file_name_in_two_read_only_folders(
    tmp_path, make_napari_viewer, qtbot, wait_job, read_only, infos
):
    paths = []
    for i, folder in enumerate(("a", "b")):
        (tmp_path / folder).mkdir()
        paths.append(io.write_volume(tmp_path / folder / "scan.tif", _volume(i)))
        read_only(tmp_path / folder)

    viewer_a, _ = _open(make_napari_viewer, paths[0])
    wa = _annotator(viewer_a, qtbot)
    saved_a = _paint_and_save(wa, (1, 2, 3), 2, wait_job)

    # the second volume of the same name: nothing restored, its own file
    viewer_b, _ = _open(make_napari_viewer, paths[1])
    wb = _annotator(viewer_b, qtbot)
    assert not wb.ensure_layer().data.any()
    saved_b = _paint_and_save(wb, (4, 5, 6), 1, wait_job)

    autosaves = Path(os.environ["NAPARI_TOMOSEG_AUTOSAVE_DIR"])
    assert saved_a != saved_b
    assert saved_a.parent == saved_b.parent == autosaves  # read-only folders: nothing written there
    assert sorted(p.name for p in autosaves.iterdir()) == sorted([saved_a.name, saved_b.name])
    assert saved_a.name.startswith("scan.tif-") and saved_b.name.startswith("scan.tif-")
    assert sorted(os.listdir(tmp_path / "a")) == sorted(os.listdir(tmp_path / "b")) == ["scan.tif"]

    # reopened: each gets its own annotations back, and the message says which and from where
    for path, saved, voxel, phase in (
        (paths[0], saved_a, (1, 2, 3), 2),
        (paths[1], saved_b, (4, 5, 6), 1),
    ):
        infos.clear()
        viewer, _ = _open(make_napari_viewer, path)
        data = _annotator(viewer, qtbot).ensure_layer().data
        assert int(np.count_nonzero(data)) == 1 and data[voxel] == phase
        assert any(str(saved) in m and str(path.resolve()) in m for m in infos), infos

    # the second's saves left the first's autosave as it was
    assert (
        tifffile.imread(saved_a)[1, 2, 3] == 2 and np.count_nonzero(tifffile.imread(saved_a)) == 1
    )


def test_two_file_less_layers_of_the_same_name_and_shape(
    make_napari_viewer, qtbot, wait_job, infos
):
    v1 = make_napari_viewer()
    v1.add_image(_volume(1), name="scan")
    w1 = _annotator(v1, qtbot)
    saved_1 = _paint_and_save(w1, (0, 0, 0), 1, wait_job)

    v2 = make_napari_viewer()
    v2.add_image(_volume(2), name="scan")
    w2 = _annotator(v2, qtbot)
    assert not w2.ensure_layer().data.any()  # not the first one's
    saved_2 = _paint_and_save(w2, (5, 15, 15), 3, wait_job)
    assert saved_1 != saved_2 and saved_1.parent == saved_2.parent
    assert (
        np.count_nonzero(tifffile.imread(saved_1)) == 1 and tifffile.imread(saved_1)[0, 0, 0] == 1
    )
    # the identity is kept in the layer's metadata, made once
    key = v2.layers["scan"].metadata[files.SOURCE_ID_KEY]
    assert autosave_path(v2.layers["scan"]) == saved_2
    assert v2.layers["scan"].metadata[files.SOURCE_ID_KEY] == key

    # the first volume again (the same voxels): its annotations, said so
    v3 = make_napari_viewer()
    v3.add_image(_volume(1), name="scan")
    infos.clear()
    data = _annotator(v3, qtbot).ensure_layer().data
    assert int(np.count_nonzero(data)) == 1 and data[0, 0, 0] == 1
    assert any("'scan'" in m and str(saved_1) in m for m in infos), infos


def test_a_lazy_file_less_layer_gets_a_random_id_once(make_napari_viewer):
    import dask.array as da

    viewer = make_napari_viewer()
    a = viewer.add_image(da.from_array(_volume(1)), name="scan")
    b = viewer.add_image(da.from_array(_volume(1)), name="scan [1]")
    b.name = "scan"  # napari renames duplicates; force the same name
    pa, pb = autosave_path(a), autosave_path(b)
    assert pa != pb
    assert autosave_path(a) == pa  # stable: the id is made once


def test_annotations_of_one_image_never_go_to_another(make_napari_viewer, qtbot, wait_job):
    viewer = make_napari_viewer()
    first = viewer.add_image(_volume(1), name="first")
    viewer.add_image(_volume(2), name="second")
    w = _annotator(viewer, qtbot)
    w.image.select(first)
    saved = _paint_and_save(w, (2, 2, 2), 1, wait_job)
    # another image of the same shape is picked: saves still go to the first one's autosave
    w.image.select(viewer.layers["second"])
    saved_again = _paint_and_save(w, (3, 3, 3), 1, wait_job)
    assert saved_again == saved == autosave_path(first)
    assert not autosave_path(viewer.layers["second"]).exists()


def test_existing_annotations_layer_of_another_volume_is_not_bound(
    make_napari_viewer, qtbot, wait_job, monkeypatch
):
    shown: list[str] = []
    monkeypatch.setattr(notify, "show_error", shown.append)
    viewer = make_napari_viewer()
    first = viewer.add_image(_volume(1), name="first")
    second = viewer.add_image(_volume(2), name="second")
    w2 = _annotator(viewer, qtbot)
    w2.image.select(second)
    w = _annotator(viewer, qtbot)
    w.image.select(first)
    saved = _paint_and_save(w, (2, 2, 2), 1, wait_job)
    assert w2.ensure_layer() is None
    assert "annotations of another volume" in shown[-1]
    # a widget docked later binds the layer to its own volume, whatever image is picked
    w3 = _annotator(viewer, qtbot)
    w3.image.select(second)
    assert w3.layer is viewer.layers[ANNOTATIONS]
    assert _paint_and_save(w3, (3, 3, 3), 2, wait_job) == saved
    assert not autosave_path(second).exists()
    assert tifffile.imread(saved)[3, 3, 3] == 2


def test_stale_partial_autosave_is_removed_by_the_next_save(make_napari_viewer, qtbot, wait_job):
    viewer = make_napari_viewer()
    image = viewer.add_image(_volume(1), name="scan")
    target = autosave_path(image)
    target.parent.mkdir(parents=True, exist_ok=True)
    stale = target.with_name(f".{target.name}.0badf00d.partial.tif")
    # named by the core's temp_path in a process that is gone: removed whatever its age
    from napari_tomoseg.core.io.write import temp_path

    dead = temp_path(target, "partial")
    dead = dead.with_name(dead.name.replace(f"-{os.getpid()}-", "-999999999-"))
    fresh = target.with_name(f".{target.name}.1234abcd.partial.tif")
    foreign = target.with_name(f".{target.name}.notes")
    for p in (stale, fresh, foreign, dead):
        p.write_bytes(b"half")
    old = time.time() - STALE_PARTIAL_SECONDS - 60
    os.utime(stale, (old, old))
    os.utime(foreign, (old, old))
    _paint_and_save(_annotator(viewer, qtbot), (1, 1, 1), 1, wait_job)
    assert not stale.exists() and not dead.exists()
    assert fresh.exists()  # perhaps a save still running in another napari
    assert foreign.exists()  # not a partial autosave
    assert target.is_file()


def test_symlinked_volume_is_one_source(tmp_path, make_napari_viewer, qtbot, wait_job):
    path = io.write_volume(tmp_path / "scan.tif", _volume(1))
    link = tmp_path / "link.tif"
    link.symlink_to(path)
    v1, _ = _open(make_napari_viewer, path)
    saved = _paint_and_save(_annotator(v1, qtbot), (1, 1, 1), 2, wait_job)
    assert saved == tmp_path / "scan.tif.tomoseg-annotations.tif"
    v2, _ = _open(make_napari_viewer, link)
    assert _annotator(v2, qtbot).ensure_layer().data[1, 1, 1] == 2


# the volume's own file is never a destination ------------------------------------------------------
@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_export_refuses_the_volume_file(tmp_path, make_napari_viewer, qtbot, monkeypatch, how):
    shown: list[str] = []
    monkeypatch.setattr(notify, "show_error", shown.append)
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    path = io.write_volume(tmp_path / "scan.tif", _volume(1))
    before = path.read_bytes()
    target = {"same": path, "symlink": tmp_path / "alias.tif", "hardlink": tmp_path / "hard.tif"}[
        how
    ]
    if how == "symlink":
        target.symlink_to(path)
    elif how == "hardlink":
        os.link(path, target)
    viewer, _ = _open(make_napari_viewer, path)
    viewer.add_labels(np.ones(SHAPE, np.uint8), name="prediction")
    w = ExportWidget(viewer)
    qtbot.addWidget(w.native)
    w.report_check.value = False
    w.path.value = str(target)
    assert not w.export()
    assert path.read_bytes() == before
    assert str(target) in shown[-1] and "never written over" in shown[-1]


def test_export_refuses_a_file_inside_a_zarr_volume(
    tmp_path, make_napari_viewer, qtbot, monkeypatch
):
    shown: list[str] = []
    monkeypatch.setattr(notify, "show_error", shown.append)
    path = io.write_volume(tmp_path / "scan.zarr", _volume(1))
    viewer, _ = _open(make_napari_viewer, path)
    viewer.add_labels(np.ones(SHAPE, np.uint8), name="prediction")
    w = ExportWidget(viewer)
    qtbot.addWidget(w.native)
    w.report_check.value = False
    w.path.value = str(path / "labels.tif")
    assert not w.export()
    assert not (path / "labels.tif").exists()
    assert "never written over" in shown[-1]


def test_companion_path_is_never_the_volume(tmp_path, make_napari_viewer):
    path = io.write_volume(tmp_path / "scan.tif", _volume(1))
    _, layer = _open(make_napari_viewer, path)
    with pytest.raises(ValueError, match="own file"):
        files.companion_path(layer, "")  # <volume file><no suffix> is the volume itself
    assert files.companion_path(layer, ".x") == tmp_path / "scan.tif.x"
