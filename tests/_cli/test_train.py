"""tomoseg train / suggest: the saved model, its provenance, and every bad input (no model written)."""

import json

import numpy as np
import pytest
import tifffile

from napari_tomoseg._cli.common import CliError, parse_duration, parse_slices
from napari_tomoseg.cli import main
from napari_tomoseg.core.model import load_model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    argv = ["synth", "-o", str(d / "vol.tif"), "--labels", str(d / "truth.tif")]
    assert main([*argv, "--shape", "12", "64", "64", "--seed", "4"]) == 0
    truth = tifffile.imread(d / "truth.tif")
    ann = np.zeros_like(truth)
    ann[[3, 8]] = truth[[3, 8]]
    tifffile.imwrite(d / "ann.tif", ann)
    return d


def test_train_writes_a_model_with_provenance(data, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    argv = ["train", str(data / "vol.tif"), "-a", str(data / "ann.tif"), "-o", str(out)]
    assert main([*argv, "--steps", "2", "--seed", "5", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "2 annotated slice(s) along z" in text
    assert "held out for validation: a band of each annotated slice along z" in text
    assert "Jaccard on the held-out annotations" in text and "mean" in text
    model = load_model(out)
    prov = model.provenance
    # before / after on the held-out annotations, and which model was kept
    # the means shown are over the phases that decided (enough held-out voxels to rank)
    compared = prov["compared_phases"]
    assert compared and set(compared) <= {"matrix", "fibre", "pore"}
    start = np.nanmean([prov["start_validation_jaccard"][n] for n in compared])
    final = np.nanmean([prov["validation_jaccard"][n] for n in compared])
    on = "" if len(compared) == 3 else f" of {', '.join(compared)}"
    if prov["kept"] == "fine-tuned":
        assert f"Kept the fine-tuned model: held-out Jaccard{on} {start:.3f} → {final:.3f}" in text
        assert "start" in text and "fine-tuned" in text  # the table's columns
    else:
        assert prov["best_step"] == 0
        assert (
            "Kept the starting model: training did not beat it on the held-out voxels"
            f"{on} ({start:.3f} vs trained"
        ) in text
    assert prov["fine_tuned_from"].startswith("bundled:")
    assert prov["steps"] == 2 and prov["seed"] == 5 and prov["annotated_slices"] == 2
    assert prov["data_shape"] == [12, 64, 64] and prov["train_slices"] == [3, 8]
    assert set(prov["validation_jaccard"]) == {"matrix", "fibre", "pore"}
    assert model.phases.names == ("matrix", "fibre", "pore")


def test_train_with_slices_phases_and_validation_slices(data, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    truth = tifffile.imread(data / "truth.tif")
    ann = np.zeros_like(truth)
    ann[[2, 5, 9]] = truth[[2, 5, 9]]
    ann[ann == 3] = 1  # two phases
    tifffile.imwrite(tmp_path / "a.tif", ann)
    argv = ["train", str(data / "vol.tif"), "-a", str(tmp_path / "a.tif"), "-o", str(out)]
    argv += ["--steps", "1", "--slices", "z:2,9", "--val", "z:9", "--phases", "resin,glass"]
    assert main(argv) == 0
    model = load_model(out)
    assert model.phases.names == ("resin", "glass") and model.config.n_phases == 2
    assert model.provenance["train_slices"] == [2] and model.provenance["validation_slices"] == [9]
    text = capsys.readouterr().out
    assert "new output layer" in text
    assert "held out for validation: slices 9 along z" in text and "slices on slices" not in text
    # a new output layer: the starting model is not scored, and the output says why
    assert "the starting model was not scored: its output layer is new" in text


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--budget", "0"], "more than 0 seconds"),
        (["--budget", "soon"], "cannot read the duration"),
        (["--slices", "z:1"], "hold no annotation"),
        (["--slices", "q:1"], "axis must be z, y or x"),
        (["--slices", "z:100"], "outside the volume"),
        (["--phases", "a,b"], "lacks"),
        (["--scratch", "--base", "x.safetensors"], "not both"),
        (["--mode", "3d"], "cannot be fine-tuned in mode '3d'"),
        (["--val", "z:1"], "hold no annotation"),
    ],
)
def test_train_bad_options_fail_cleanly_without_a_model(data, tmp_path, fails, extra, match):
    out = tmp_path / "m.safetensors"
    argv = ["train", str(data / "vol.tif"), "-a", str(data / "ann.tif"), "-o", str(out)]
    fails([*argv, "--steps", "1", *extra], match)
    assert not out.exists()


def test_train_bad_annotations_fail_cleanly(data, tmp_path, fails):
    out = tmp_path / "m.safetensors"
    tifffile.imwrite(tmp_path / "empty.tif", np.zeros((12, 64, 64), np.uint8))
    tifffile.imwrite(
        tmp_path / "small.tif", np.ones((5, 64, 64), np.uint8), photometric="minisblack"
    )
    base = ["train", str(data / "vol.tif"), "-o", str(out), "--steps", "1", "-a"]
    fails([*base, str(tmp_path / "empty.tif")], "no annotated voxel")
    fails([*base, str(tmp_path / "small.tif")], "must match voxel for voxel")
    fails([*base, str(tmp_path / "missing.tif")], "missing.tif")
    assert not out.exists()


def test_train_never_overwrites_an_existing_file(data, tmp_path, fails):
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"precious")
    argv = ["train", str(data / "vol.tif"), "-a", str(data / "ann.tif"), "-o", str(out)]
    fails([*argv, "--steps", "1"], "exists")
    assert out.read_bytes() == b"precious"
    fails([*argv[:-2], "-o", str(tmp_path / "m.pt"), "--steps", "1"], ".safetensors")


def test_train_with_a_corrupt_base_model_fails_cleanly(data, tmp_path, fails):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    out = tmp_path / "m.safetensors"
    argv = ["train", str(data / "vol.tif"), "-a", str(data / "ann.tif"), "-o", str(out)]
    fails([*argv, "--base", str(bad), "--steps", "1"], "bad.safetensors")
    assert not out.exists()


def test_duration_and_slice_parsing():
    assert parse_duration("120") == 120 and parse_duration("2m") == 120
    assert parse_duration("1.5min") == 90 and parse_duration("90s") == 90
    assert parse_slices("z:10,50,90") == (0, [10, 50, 90])
    assert parse_slices("x:3") == (2, [3]) and parse_slices("7,5") == (0, [5, 7])
    with pytest.raises(CliError):
        parse_slices("z:a,b")


def test_suggest_prints_ranked_unannotated_slices(data, tmp_path, capsys):
    argv = ["suggest", str(data / "vol.tif"), "-n", "2", "--annotations", str(data / "ann.tif")]
    assert main([*argv, "--json", "--uncertainty", str(tmp_path / "u.tif")]) == 0
    result = json.loads(capsys.readouterr().out)
    indices = [s["index"] for s in result["slices"]]
    scores = [s["score"] for s in result["slices"]]
    assert len(indices) == 2 and not {3, 8} & set(indices)
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    u = tifffile.imread(tmp_path / "u.tif")
    assert u.shape == (12, 64, 64) and u.dtype == np.uint8
    assert abs(u[indices[0]].mean() / 255 - scores[0]) < 0.01


def test_train_with_a_step_budget_is_bitwise_reproducible(data, tmp_path):
    from safetensors.torch import load_file

    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for p in paths:
        argv = ["train", str(data / "vol.tif"), "-a", str(data / "ann.tif"), "-o", str(p)]
        assert main([*argv, "--steps", "2", "--seed", "9", "--threads", "1"]) == 0
    a, b = (load_file(str(p)) for p in paths)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_context_slices_must_be_odd(tmp_path, capsys):
    from napari_tomoseg.cli import main

    vol = tmp_path / "v.npy"
    ann = tmp_path / "a.npy"
    np.save(vol, np.random.default_rng(0).integers(0, 255, (8, 32, 32), dtype=np.uint8))
    labels = np.zeros((8, 32, 32), np.uint8)
    labels[3, :16] = 1
    labels[3, 16:] = 2
    np.save(ann, labels)
    out = tmp_path / "m.safetensors"
    rc = main(
        ["train", str(vol), "-a", str(ann), "-o", str(out), "--steps", "1", "--context-slices", "4"]
    )
    assert rc != 0 and "odd and >= 3" in capsys.readouterr().err
    assert not out.exists()


def test_plan_notes_are_printed_once(tmp_path, capsys, caplog):
    rng = np.random.default_rng(1)
    vol, ann = tmp_path / "v.npy", tmp_path / "a.npy"
    np.save(vol, rng.integers(0, 255, (8, 32, 32), dtype=np.uint8))
    labels = np.zeros((8, 32, 32), np.uint8)
    labels[3, :16], labels[3, 16:] = 1, 2
    np.save(ann, labels)
    out = tmp_path / "m.safetensors"
    assert main(["train", str(vol), "-a", str(ann), "-o", str(out), "--steps", "1"]) == 0
    seen = capsys.readouterr()
    for note in ("extended to 2.5D", "the base model predicts 3 phases"):  # 2 phases annotated
        logged = [r.getMessage() for r in caplog.records if note in r.getMessage()]
        assert (seen.out + seen.err).count(note) + len(logged) == 1, note


def test_evaluate_with_the_model_scores_only_its_held_out_annotations(
    data, tmp_path, capsys, fails
):
    from napari_tomoseg.core import io
    from napari_tomoseg.core.learn.finetune import held_out_mask
    from napari_tomoseg.core.measure.evaluate import evaluate
    from napari_tomoseg.core.phases import COMPOSITE_PHASES

    model_file, pred_file = tmp_path / "m.safetensors", tmp_path / "pred.tif"
    ann_file = data / "ann.tif"
    argv = ["train", str(data / "vol.tif"), "-a", str(ann_file), "-o", str(model_file)]
    assert main([*argv, "--steps", "2", "--threads", "1"]) == 0
    argv = ["segment", str(data / "vol.tif"), "-o", str(pred_file), "--model", str(model_file)]
    assert main([*argv, "--threads", "1"]) == 0
    capsys.readouterr()
    pred, ann = io.read_labels(pred_file), io.read_labels(ann_file)
    record = load_model(model_file).provenance["held_out"]
    assert record["kind"] == "band" and record["slices"] == [3, 8]
    held = held_out_mask(record, ann.shape)

    argv = ["evaluate", str(pred_file), str(ann_file), "--model", str(model_file)]
    assert main([*argv, "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    expected = evaluate(pred, ann, phases=COMPOSITE_PHASES, mask=held, exclude_outside=False)
    assert rep["region"].startswith("held-out bands of slices 3, 8 along z")
    assert rep["trained_on_voxels"] == 0
    assert rep["evaluated_voxels"] == expected.n_evaluated == int(((ann > 0) & held).sum())
    assert rep["per_phase"] == {
        n: (None if np.isnan(v) else float(v))
        for n, v in zip(COMPOSITE_PHASES.names, expected.jaccard, strict=True)
    }
    assert rep["confusion_matrix"] == expected.confusion[1:].tolist()
    # the table says which voxels were scored
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"{expected.n_evaluated:,} voxels scored (held-out bands of slices 3, 8 along z" in text
    assert "--all-annotated" in text and "warning" not in text
    # every annotated voxel: those trained on are counted, and the scores flagged
    assert main([*argv, "--all-annotated", "--json"]) == 0
    out = capsys.readouterr()
    rep = json.loads(out.out)
    trained = int(((ann > 0) & ~held).sum())
    assert rep["trained_on_voxels"] == trained > 0 and rep["region"] == "all annotated voxels"
    assert rep["evaluated_voxels"] == int((ann > 0).sum())
    assert f"includes {trained:,} voxels the model was trained on: scores are optimistic" in out.err
    assert main([*argv, "--all-annotated"]) == 0
    assert "warning: includes" in capsys.readouterr().out
    # with the grey volume: the Evaluate widget's report, on the same held-out voxels
    assert main([*argv, "--image", str(data / "vol.tif"), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["region"].startswith("held-out bands") and rep["trained_on_voxels"] == 0
    assert rep["evaluated_voxels"] == expected.n_evaluated
    assert "outside the held-out" in rep["grey_level_baseline"]["note"]
    # a model fine-tuned on another volume, or never fine-tuned: a clear error
    io.write_labels(tmp_path / "p2.tif", pred[:4], phases=COMPOSITE_PHASES)
    io.write_labels(tmp_path / "a2.tif", ann[:4])
    other = ["evaluate", str(tmp_path / "p2.tif"), str(tmp_path / "a2.tif")]
    fails([*other, "--model", str(model_file)], "was fine-tuned on a volume of shape (12, 64, 64)")
    from napari_tomoseg.core.model import bundled_model_path

    fails([*argv[:3], "--model", str(bundled_model_path())], "records no fine-tuning")
