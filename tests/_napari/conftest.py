"""Shared fixtures for the napari widget tests (also used by part B's tests).

- ``small_phantom``: a 24x64x64 synthetic composite (uint8 volume + ground-truth labels), cached.
- ``sample_viewer``: a real napari viewer with that phantom as layers ``composite`` (image, voxel
  size 1.3 µm as scale) and ``ground truth`` (labels with the phase names/colours).
- ``wait_job(runner, timeout=...)``: block (with the Qt event loop running) until a widget's
  :class:`~napari_tomoseg._napari.jobs.JobRunner` has finished its job; returns its final
  :class:`~napari_tomoseg._napari.jobs.JobState`.
- ``errors`` / ``warnings``: the texts of the error / warning notifications shown during a test.
- every test gets a private settings folder (``NAPARI_TOMOSEG_CONFIG_DIR``) and torch runs on one
  thread, so the GUI tests stay fast and never touch the user's real settings.
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np
import pytest

SMALL_SHAPE = (24, 64, 64)
VOXEL_UM = 1.3


@cache
def _phantom():
    from napari_tomoseg.core.phantom.composite import PhantomConfig, make_phantom

    return make_phantom(PhantomConfig(shape=SMALL_SHAPE), seed=3)


@pytest.fixture
def small_phantom():
    """``(volume, labels)`` of a small synthetic composite; copies, so tests may modify them."""
    ph = _phantom()
    return ph.volume.copy(), ph.labels.copy()


@pytest.fixture(autouse=True)
def _private_settings(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NAPARI_TOMOSEG_CONFIG_DIR", str(tmp_path_factory.mktemp("tomoseg-config")))
    monkeypatch.setenv("NAPARI_TOMOSEG_AUTOSAVE_DIR", str(tmp_path_factory.mktemp("autosave")))
    if "torch" in __import__("sys").modules:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))


@pytest.fixture
def sample_viewer(make_napari_viewer, small_phantom):
    """A napari viewer holding the small phantom: ``composite`` image and ``ground truth`` labels."""
    from napari_tomoseg._napari.layers import apply_phases
    from napari_tomoseg.core.phases import COMPOSITE_PHASES

    viewer = make_napari_viewer()
    volume, labels = small_phantom
    scale = (VOXEL_UM,) * 3
    viewer.add_image(volume, name="composite", scale=scale)
    gt = viewer.add_labels(labels, name="ground truth", scale=scale, visible=False)
    apply_phases(gt, COMPOSITE_PHASES)
    return viewer


@pytest.fixture
def wait_job(qtbot):
    """``wait_job(runner, timeout=60_000)``: wait for the runner's worker to finish."""

    def wait(runner, timeout: int = 60_000):
        from napari_tomoseg._napari.jobs import JobState

        assert runner.worker is not None, "no job was started"
        # Not qtbot.waitSignal(worker.finished): a fast worker may have emitted it already (queued
        # to the Qt thread before the test could connect), so wait on the runner's own record.
        qtbot.waitUntil(
            lambda: runner.worker_finished and runner.state is not JobState.RUNNING,
            timeout=timeout,
        )
        return runner.state

    return wait


@pytest.fixture
def errors(monkeypatch):
    """The error notifications shown during the test (their text), instead of napari's pop-ups."""
    from napari_tomoseg._napari import notify

    shown: list[str] = []
    monkeypatch.setattr(notify, "show_error", shown.append)
    return shown


@pytest.fixture
def warnings(monkeypatch):
    """The warning notifications shown during the test (their text)."""
    from napari_tomoseg._napari import notify

    shown: list[str] = []
    monkeypatch.setattr(notify, "show_warning", shown.append)
    return shown


def labels_equal(a, b) -> bool:
    return bool(np.array_equal(np.asarray(a), np.asarray(b)))
