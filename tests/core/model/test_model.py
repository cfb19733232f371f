import json
import struct

import pytest
import torch

from napari_tomoseg.core.model import (
    InferenceDefaults,
    ModelFileError,
    ModularUNet,
    TomosegModel,
    UNetConfig,
    bundled_model_path,
    count_parameters,
    load_model,
    save_model,
)
from napari_tomoseg.core.phases import COMPOSITE_PHASES, PhaseTable
from napari_tomoseg.core.prep.intensity import Normalization


@pytest.mark.parametrize(
    ("ndim", "filters", "expected"),
    [(2, 8, 827_763), (2, 16, 3_302_883), (3, 16, 9_893_187)],
)
def test_published_parameter_counts(ndim, filters, expected):
    net = ModularUNet(
        UNetConfig(ndim=ndim, in_channels=1, n_phases=3, depth=3, base_filters=filters)
    )
    assert count_parameters(net) == expected


@pytest.mark.parametrize(
    ("cfg", "shape"),
    [
        (UNetConfig(ndim=2, base_filters=2), (2, 1, 32, 24)),
        (UNetConfig(ndim=2, in_channels=5, base_filters=2), (1, 5, 16, 16)),  # 2.5D
        (UNetConfig(ndim=3, base_filters=2), (1, 1, 16, 8, 24)),
        (
            UNetConfig(
                ndim=2, base_filters=2, residual=False, batch_norm=False, dropout=0.2, depth=2
            ),
            (2, 1, 8, 12),
        ),
    ],
)
def test_forward_backward_shapes(cfg, shape):
    net = ModularUNet(cfg)
    x = torch.randn(*shape, requires_grad=True)
    y = net(x)
    assert y.shape == (shape[0], cfg.n_phases, *shape[2:])
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None for p in net.parameters())


def test_variants_change_the_architecture():
    full = count_parameters(ModularUNet(UNetConfig(base_filters=4)))
    assert count_parameters(ModularUNet(UNetConfig(base_filters=4, residual=False))) < full
    assert count_parameters(ModularUNet(UNetConfig(base_filters=4, batch_norm=False))) < full
    assert count_parameters(ModularUNet(UNetConfig(base_filters=4, depth=2))) < full


def test_input_size_must_be_multiple_of_2_pow_depth():
    with pytest.raises(ValueError, match="multiple of 8"):
        ModularUNet(UNetConfig(base_filters=2))(torch.zeros(1, 1, 12, 16))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ndim": 4}, "ndim"),
        ({"base_filters": 0}, "base_filters"),
        ({"dropout": 1.0}, "dropout"),
        ({"depth": 0}, "depth"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**kwargs)


def _small_model() -> TomosegModel:
    torch.manual_seed(0)
    net = ModularUNet(UNetConfig(base_filters=2))
    return TomosegModel(
        net,
        COMPOSITE_PHASES,
        Normalization(low_percentile=1.0, high_percentile=99.0),
        InferenceDefaults(tile=64, overlap=8),
        {"seed": 3},
    )


def test_save_load_round_trip(tmp_path):
    m = _small_model()
    path = save_model(tmp_path / "m.safetensors", m)
    loaded = load_model(path)
    assert loaded.config == m.config
    assert loaded.phases == m.phases
    assert loaded.normalization == m.normalization
    assert loaded.defaults == m.defaults
    assert loaded.provenance == {"seed": 3}
    x = torch.randn(1, 1, 16, 16)
    m.network.eval()
    torch.testing.assert_close(loaded.network(x), m.network(x))


def test_save_refuses_overwrite_and_keeps_the_file(tmp_path):
    path = save_model(tmp_path / "m.safetensors", _small_model())
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite"):
        save_model(path, _small_model())
    assert path.read_bytes() == before
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_model(tmp_path / "missing" / "m.safetensors", _small_model())


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        load_model(tmp_path / "nope.safetensors")


def test_load_truncated_file(tmp_path):
    path = save_model(tmp_path / "m.safetensors", _small_model())
    data = path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=r"bad\.safetensors.*(truncated|corrupt)"):
        load_model(bad)


def test_load_garbage_and_pickle_is_refused(tmp_path):
    bad = tmp_path / "weights.safetensors"
    torch.save({"a": torch.zeros(2)}, bad)  # a pickle in disguise: must never be unpickled
    with pytest.raises(ModelFileError, match=r"weights\.safetensors"):
        load_model(bad)


def test_load_foreign_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match="not a napari-tomoseg model"):
        load_model(path)


def _rewrite_metadata(path, **changes):
    """Rewrite a safetensors header's metadata in place (keeping the tensors)."""
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"].update(changes)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


def test_load_weights_not_matching_architecture(tmp_path):
    path = save_model(tmp_path / "m.safetensors", _small_model())
    _rewrite_metadata(path, unet=json.dumps({"ndim": 2, "base_filters": 4}))
    with pytest.raises(ModelFileError, match="do not match the architecture"):
        load_model(path)


def test_load_inconsistent_phase_table(tmp_path):
    path = save_model(tmp_path / "m.safetensors", _small_model())
    _rewrite_metadata(path, phases=json.dumps(PhaseTable.from_names(["a", "b"]).to_json()))
    with pytest.raises(ModelFileError, match="phase"):
        load_model(path)


def test_bundled_model_loads_and_is_small():
    path = bundled_model_path()
    assert path.is_file(), "the bundled model must ship inside the package"
    assert path.stat().st_size < 8 * 2**20
    m = load_model(path)
    assert m.phases.names == ("matrix", "fibre", "pore")
    assert m.defaults.mode == "2d" and m.config.in_channels == 1
    assert m.provenance["trained_by"] == "scripts/train_bundled.py"


def test_inflated_network_equals_the_2d_one_on_identical_slices():
    from napari_tomoseg.core.model import inflate_to_slices

    torch.manual_seed(0)
    net = ModularUNet(UNetConfig(base_filters=2)).eval()
    wide = inflate_to_slices(net, 3).eval()
    assert wide.cfg.in_channels == 3 and net.cfg.in_channels == 1
    assert net.encoder[0].body[0].weight.shape[1] == 1  # the original is untouched
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wide(x.repeat(1, 3, 1, 1)), net(x), atol=1e-5, rtol=1e-5)
        # ... and sees its neighbours: a different neighbour slice changes the output
        y = x.repeat(1, 3, 1, 1)
        y[:, 0] += 1.0
        assert not torch.allclose(wide(y), net(x), atol=1e-3)
    with pytest.raises(ValueError, match="odd"):
        inflate_to_slices(net, 2)
    with pytest.raises(ValueError, match="only a 2D network"):
        inflate_to_slices(wide, 3)
