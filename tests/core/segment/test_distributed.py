"""dask.distributed inference: voxel-for-voxel identical to one process, clean failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from distributed import Client, LocalCluster

from napari_tomoseg.core import io
from napari_tomoseg.core.model import (
    InferenceDefaults,
    ModularUNet,
    TomosegModel,
    UNetConfig,
)
from napari_tomoseg.core.phases import COMPOSITE_PHASES
from napari_tomoseg.core.segment import InferenceConfig, segment_volume
from napari_tomoseg.core.segment.distributed import segment_distributed


def _model(in_channels: int = 1) -> TomosegModel:
    torch.manual_seed(0)
    net = ModularUNet(UNetConfig(in_channels=in_channels, base_filters=2))
    mode = "2.5d" if in_channels > 1 else "2d"
    return TomosegModel(
        net, COMPOSITE_PHASES, defaults=InferenceDefaults(mode=mode, tile=32, overlap=8)
    )


@pytest.fixture(scope="module")
def client():
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=False,
            protocol="tcp",  # real sockets on loopback, not the in-process transport
            dashboard_address=None,
            host="127.0.0.1",
        ) as cluster,
        Client(cluster) as c,
    ):
        yield c


@pytest.fixture
def volume_path(tmp_path):
    rng = np.random.default_rng(0)
    vol = rng.integers(0, 255, (11, 40, 52)).astype(np.uint8)
    # chunked differently from the slabs the workers process
    arr = zarr.create_array(
        store=str(tmp_path / "vol.zarr"), shape=vol.shape, dtype=np.uint8, chunks=(3, 16, 16)
    )
    arr[...] = vol
    return tmp_path / "vol.zarr", vol


@pytest.mark.parametrize(("in_channels", "axis"), [(1, "z"), (3, "z"), (1, "y")])
def test_identical_to_single_process(client, volume_path, tmp_path, in_channels, axis):
    path, vol = volume_path
    model = _model(in_channels)
    single = segment_volume(vol, model, InferenceConfig(axis=axis, device="cpu")).labels
    out = tmp_path / "labels.zarr"
    events = []
    result = segment_distributed(
        path,
        out,
        model,
        InferenceConfig(axis=axis, block=2, device="cpu"),
        client=client,
        progress=events.append,
    )
    np.testing.assert_array_equal(zarr.open_array(str(out))[...], single)
    assert result.counts.sum() == vol.size and result.counts[0] == 0
    np.testing.assert_array_equal(result.counts[1:], np.bincount(single.ravel(), minlength=4)[1:])
    assert events[-1].done == vol.size
    assert io.read_label_phases(out) == COMPOSITE_PHASES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.zarr", "vol.zarr"]


def test_unreachable_scheduler_is_a_clear_error_and_leaves_no_output(volume_path, tmp_path):
    path, _ = volume_path
    out = tmp_path / "labels.zarr"
    with pytest.raises(ValueError, match="cannot reach the dask scheduler"):
        segment_distributed(path, out, _model(), scheduler="tcp://127.0.0.1:1", connect_timeout=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vol.zarr"]


def test_a_failing_block_leaves_no_output(client, tmp_path, monkeypatch):
    out = tmp_path / "labels.zarr"
    # a source the workers cannot open (removed after the client checked it)
    bad = tmp_path / "gone.zarr"
    zarr.create_array(store=str(bad), shape=(4, 16, 16), dtype=np.uint8)[...] = np.arange(
        1024, dtype=np.uint8
    ).reshape(4, 16, 16)
    import shutil

    from napari_tomoseg.core.segment import distributed as dist

    real = dist.segment_block

    def remove_then_run(*args, **kwargs):
        shutil.rmtree(bad, ignore_errors=True)
        return real(*args, **kwargs)

    monkeypatch.setattr(dist, "segment_block", remove_then_run)
    with pytest.raises(Exception):  # noqa: B017 - whatever the worker raised
        segment_distributed(bad, out, _model(), client=client)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_3d_and_blended_modes_are_refused(volume_path, tmp_path, client):
    path, _ = volume_path
    with pytest.raises(ValueError, match="single machine"):
        segment_distributed(
            path,
            tmp_path / "o.zarr",
            _model(),
            InferenceConfig(mode="2d-3axes", stitch="blend"),
            client=client,
        )


def test_multi_axis_mode_is_identical_on_the_cluster(volume_path, tmp_path, client):
    path, volume = volume_path
    cfg = InferenceConfig(mode="2d-3axes", tile=32, overlap=16, block=5)
    out = tmp_path / "o.zarr"
    segment_distributed(path, out, _model(), cfg, client=client)
    single = segment_volume(volume, _model(), InferenceConfig(mode="2d-3axes", tile=32, overlap=16))
    np.testing.assert_array_equal(zarr.open_array(str(out))[...], single.labels)
