"""Hostile inputs for every command, every reader and the model loader.

Each case runs ``tomoseg ARGV`` in-process in a folder holding only its inputs, and asserts:

- the exit code (1 for a bad file; 1 or 2 for a bad option, as argparse uses 2);
- stderr is ONE line starting with ``tomoseg: error:`` that names the offending file or option;
- nothing under the folder was created, changed or removed (a tree hash before and after), and the
  booby-trapped pickle never ran.

The accepted cases (upper-case endings, JSON output) assert exit 0, valid JSON and no new files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import tree_hash

BAD_FILE = (1,)
BAD_OPTION = (1, 2)


@dataclass(frozen=True)
class Case:
    """``tomoseg ARGV`` with ``files`` copied in; ``match``: one of these must be in the message."""

    argv: tuple[str, ...]
    files: tuple[str, ...]
    match: tuple[str, ...]
    codes: tuple[int, ...] = BAD_FILE
    links: tuple[tuple[str, str, str], ...] = field(default=())  # (kind, name, target)


def seg(volume: str, *extra: str, match: tuple[str, ...] | str | None = None, **kw) -> Case:
    m = (match,) if isinstance(match, str) else match or (volume,)
    files = kw.pop("files", ())
    inputs = () if volume.startswith("no") else (volume,)
    return Case(("segment", volume, "-o", "out.tif", *extra), (*inputs, *files), m, **kw)


def opt(
    command: str, *argv: str, files: tuple[str, ...], name: str, also: tuple[str, ...] = ()
) -> Case:
    return Case((command, *argv), files, (name, name.lstrip("-"), *also), BAD_OPTION)


SEG = ("vol.tif",)
LABELS = ("labels.tif",)
SEGMENT = ("segment", "vol.tif", "-o", "out.tif")
TRAIN = ("train", "vol.tif", "--annotations", "ann.tif", "-o", "m.safetensors", "--steps", "2")
TRAIN_FILES = ("vol.tif", "ann.tif")
CLEAN = ("clean", "labels.tif", "-o", "c.tif", "--phase", "1")
SYNTH = ("synth", "-o", "v.tif", "--labels", "t.tif", "--shape")
MEASURE = ("measure", "labels.tif")
DEMO = ("demo", "--shape", "8", "32", "32")
SYM = ("sym", "link.tif", "vol.tif")
HARD = ("hard", "hard.tif", "vol.tif")
LEARNING_RATE = ("learning rate", "learning_rate")


def train_with(*, volume: str = "vol.tif", annotations: str = "ann.tif") -> Case:
    """``TRAIN`` with one bad input in place of the good one; the message must name it."""
    bad = annotations if volume == "vol.tif" else volume
    argv = (TRAIN[0], volume, TRAIN[2], annotations, *TRAIN[4:])
    return Case(argv, (volume, annotations), (bad,))


CASES: dict[str, Case] = {
    # --- readers, through `segment` (the same readers serve every command) --------------------
    "segment-missing": seg("nothere.tif", files=()),
    "segment-missing-folder": seg("no_such_folder", files=()),
    "tiff-empty": seg("empty.tif"),
    "tiff-truncated-head": seg("trunc_head.tif"),
    "tiff-truncated-half": seg("trunc_half.tif"),
    "tiff-not-a-tiff": seg("not_a_tiff.tif"),
    "tiff-2d": seg("flat.tif"),
    "tiff-4d": seg("four_d.tif"),
    "tiff-rgb": seg("rgb.tif"),
    "tiff-one-slice": seg("tiny.tif"),
    "tiff-declares-65000x65000": seg("huge.tif"),
    "tiff-nan-slice-5": seg("nan5.tif", match=("nan5.tif",)),
    "npy-empty": seg("empty.npy"),
    "npy-complex": seg("complex.npy"),
    "npy-bool": seg("bool.npy"),
    "npy-2d": seg("flat.npy"),
    "npy-object-pickle": seg("object.npy"),
    "npy-declares-a-petabyte": seg("huge.npy"),
    "npy-inf-voxel": seg("inf7.npy"),
    "slices-mixed-shapes": seg("slices_mixed"),
    "slices-empty-folder": seg("slices_empty"),
    "slices-broken-file": seg("slices_broken", match=("s002.tif", "slices_broken")),
    "zarr-broken": seg("bad.zarr"),
    "zarr-empty-folder": seg("empty.zarr"),
    "hdf5-two-datasets": seg("two.h5"),
    "hdf5-2d": seg("flat.h5"),
    "hdf5-missing-dataset": seg("vol.h5", "--dataset", "nope", match=("nope",)),
    # --- the input is never written ------------------------------------------------------------
    "segment-output-is-input": Case(("segment", "vol.tif", "-o", "vol.tif"), SEG, ("vol.tif",)),
    "segment-output-is-input-overwrite": Case(
        ("segment", "vol.tif", "-o", "vol.tif", "--overwrite"), SEG, ("vol.tif",)
    ),
    "segment-output-symlink-to-input": Case(
        ("segment", "vol.tif", "-o", "link.tif", "--overwrite"),
        SEG,
        ("link.tif", "vol.tif"),
        links=(SYM,),
    ),
    "segment-output-hardlink-to-input": Case(
        ("segment", "vol.tif", "-o", "hard.tif", "--overwrite"),
        SEG,
        ("hard.tif", "vol.tif"),
        links=(HARD,),
    ),
    "segment-uncertainty-is-input": Case(
        (*SEGMENT, "--uncertainty", "vol.tif", "--overwrite"), SEG, ("vol.tif",)
    ),
    "segment-zarr-output-is-input": Case(
        ("segment", "vol.zarr", "-o", "vol.zarr", "--overwrite"), ("vol.zarr",), ("vol.zarr",)
    ),
    "segment-zarr-output-inside-input": Case(
        ("segment", "vol.zarr", "-o", "vol.zarr/labels.zarr", "--overwrite"),
        ("vol.zarr",),
        ("vol.zarr",),
    ),
    "segment-output-folder-missing": Case(
        ("segment", "vol.tif", "-o", "nofolder/out.tif"), SEG, ("nofolder",)
    ),
    "segment-output-parent-is-a-file": Case(
        ("segment", "vol.tif", "-o", "vol.tif/out.tif"), SEG, ("vol.tif",)
    ),
    "segment-output-unwritable-folder": Case(
        ("segment", "vol.tif", "-o", "/proc/tomoseg-out.tif"), SEG, ("/proc",)
    ),
    "segment-output-unsupported-ending": Case(
        ("segment", "vol.tif", "-o", "out.png"), SEG, ("out.png",)
    ),
    # --- segment options ------------------------------------------------------------------------
    "segment-tile-0": opt(*SEGMENT, "--tile", "0", files=SEG, name="--tile"),
    "segment-tile-negative": opt(*SEGMENT, "--tile", "-64", files=SEG, name="--tile"),
    "segment-overlap-negative": opt(*SEGMENT, "--overlap", "-3", files=SEG, name="--overlap"),
    "segment-batch-size-0": opt(
        *SEGMENT,
        "--batch-size",
        "0",
        files=SEG,
        name="--batch-size",
        also=("batch size", "batch_size"),
    ),
    "segment-memory-0": opt(*SEGMENT, "--memory", "0", files=SEG, name="--memory"),
    "segment-memory-nan": opt(*SEGMENT, "--memory", "nan", files=SEG, name="--memory"),
    "segment-memory-negative": opt(*SEGMENT, "--memory", "-2G", files=SEG, name="--memory"),
    "segment-threads-0": opt(*SEGMENT, "--threads", "0", files=SEG, name="--threads"),
    "segment-local-cluster-0": opt(
        *SEGMENT,
        "--local-cluster",
        "0",
        files=SEG,
        name="--local-cluster",
        also=("local cluster", "local_cluster"),
    ),
    "segment-device-nonsense": opt(
        *SEGMENT, "--device", "toaster", files=SEG, name="--device", also=("toaster",)
    ),
    # --- the model loader, through `segment --model` and `info` --------------------------------
    "model-missing": seg("vol.tif", "--model", "nothere.safetensors", match="nothere.safetensors"),
    **{
        f"model-{name}": seg(
            "vol.tif",
            "--model",
            f"{name}.safetensors",
            match=f"{name}.safetensors",
            files=(f"{name}.safetensors",),
        )
        for name in (
            "random",
            "empty",
            "truncated",
            "header_only",
            "pickle",
            "nometa",
            "missing_tensor",
            "lie_filters_1e6",
            "lie_channels_1e9",
            "lie_depth_3_5",
            "lie_filters_8_5",
            "lie_filters_double",
        )
    },
    "model-pickle-pt": seg(
        "vol.tif", "--model", "pickle.pt", match="pickle.pt", files=("pickle.pt",)
    ),
    "model-json-file": seg(
        "vol.tif", "--model", "text.json", match="text.json", files=("text.json",)
    ),
    "info-model-random": Case(
        ("info", "random.safetensors"), ("random.safetensors",), ("random.safetensors",)
    ),
    "info-model-pickle": Case(
        ("info", "pickle.safetensors"), ("pickle.safetensors",), ("pickle.safetensors",)
    ),
    "info-model-lie-1e6": Case(
        ("info", "lie_filters_1e6.safetensors"),
        ("lie_filters_1e6.safetensors",),
        ("lie_filters_1e6",),
    ),
    "info-model-lie-depth": Case(
        ("info", "lie_depth_3_5.safetensors"), ("lie_depth_3_5.safetensors",), ("lie_depth_3_5",)
    ),
    # --- info -----------------------------------------------------------------------------------
    "info-missing": Case(("info", "nothere.tif"), (), ("nothere.tif",)),
    "info-empty": Case(("info", "empty.tif"), ("empty.tif",), ("empty.tif",)),
    "info-truncated": Case(("info", "trunc_head.tif"), ("trunc_head.tif",), ("trunc_head.tif",)),
    "info-huge-tiff": Case(("info", "huge.tif"), ("huge.tif",), ("huge.tif",)),
    "info-huge-npy": Case(("info", "huge.npy"), ("huge.npy",), ("huge.npy",)),
    "info-nan-slice": Case(("info", "nan5.tif", "--json"), ("nan5.tif",), ("nan5.tif",)),
    "info-broken-zarr": Case(("info", "bad.zarr"), ("bad.zarr",), ("bad.zarr",)),
    # --- train ----------------------------------------------------------------------------------
    "train-missing-volume": Case(
        ("train", "nothere.tif", "--annotations", "ann.tif", "-o", "m.safetensors"),
        ("ann.tif",),
        ("nothere.tif",),
    ),
    "train-annotations-other-shape": train_with(annotations="labels_other_shape.tif"),
    "train-annotations-unknown-phase": train_with(annotations="ann_unknown.tif"),
    "train-annotations-negative": train_with(annotations="labels_negative.tif"),
    "train-annotations-all-zero": train_with(annotations="ann_zero.tif"),
    "train-annotations-huge-npy": train_with(annotations="huge.npy"),
    "train-volume-nan-slice": train_with(volume="nan5.tif"),
    "train-output-is-input": Case(
        ("train", "vol.tif", "--annotations", "ann.tif", "-o", "vol.tif", "--overwrite"),
        TRAIN_FILES,
        ("vol.tif",),
    ),
    "train-output-unwritable-folder": Case(
        (*TRAIN[:5], "/proc/tomoseg-m.safetensors", *TRAIN[6:]), TRAIN_FILES, ("/proc",)
    ),
    "train-output-parent-is-a-file": Case(
        (*TRAIN[:5], "vol.tif/m.safetensors", *TRAIN[6:]), TRAIN_FILES, ("vol.tif",)
    ),
    "train-output-not-safetensors": Case((*TRAIN[:5], "m.pt", *TRAIN[6:]), TRAIN_FILES, ("m.pt",)),
    "train-base-pickle": Case(
        (*TRAIN, "--base", "pickle.safetensors"),
        (*TRAIN_FILES, "pickle.safetensors"),
        ("pickle.safetensors",),
    ),
    "train-base-lie": Case(
        (*TRAIN, "--base", "lie_channels_1e9.safetensors"),
        (*TRAIN_FILES, "lie_channels_1e9.safetensors"),
        ("lie_channels_1e9.safetensors",),
    ),
    "train-steps-0": opt(*TRAIN[:-1], "0", files=TRAIN_FILES, name="--steps"),
    "train-steps-negative": opt(*TRAIN[:-1], "-5", files=TRAIN_FILES, name="--steps"),
    "train-lr-nan": opt(*TRAIN, "--lr", "nan", files=TRAIN_FILES, name="--lr", also=LEARNING_RATE),
    "train-lr-0": opt(*TRAIN, "--lr", "0", files=TRAIN_FILES, name="--lr", also=LEARNING_RATE),
    "train-lr-negative": opt(
        *TRAIN, "--lr", "-1e-3", files=TRAIN_FILES, name="--lr", also=LEARNING_RATE
    ),
    "train-budget-0": opt(*TRAIN[:-2], "--budget", "0", files=TRAIN_FILES, name="--budget"),
    "train-budget-nan": opt(*TRAIN[:-2], "--budget", "nan", files=TRAIN_FILES, name="--budget"),
    "train-budget-negative": opt(
        *TRAIN[:-2], "--budget", "-5s", files=TRAIN_FILES, name="--budget"
    ),
    # --- evaluate -------------------------------------------------------------------------------
    "evaluate-missing": Case(
        ("evaluate", "nothere.tif", "labels.tif"), ("labels.tif",), ("nothere.tif",)
    ),
    "evaluate-empty": Case(
        ("evaluate", "empty.tif", "labels.tif"), ("empty.tif", "labels.tif"), ("empty.tif",)
    ),
    "evaluate-shape-mismatch": Case(
        ("evaluate", "labels.tif", "labels_other_shape.tif"),
        ("labels.tif", "labels_other_shape.tif"),
        ("labels_other_shape.tif", "shape"),
    ),
    "evaluate-all-zero": Case(
        ("evaluate", "ann_zero.tif", "ann_zero.tif"), ("ann_zero.tif",), ("ann_zero.tif",)
    ),
    "evaluate-huge-npy": Case(
        ("evaluate", "huge.npy", "labels.tif"), ("huge.npy", "labels.tif"), ("huge.npy",)
    ),
    "evaluate-negative-ids": Case(
        ("evaluate", "labels_negative.tif", "labels.tif"),
        ("labels_negative.tif", "labels.tif"),
        ("labels_negative.tif",),
    ),
    "evaluate-image-2d": Case(
        ("evaluate", "labels.tif", "labels.tif", "--image", "flat.tif"),
        ("labels.tif", "flat.tif"),
        ("flat.tif",),
    ),
    # --- clean ----------------------------------------------------------------------------------
    "clean-output-is-input": Case(
        ("clean", "labels.tif", "-o", "labels.tif", "--phase", "1", "--overwrite"),
        LABELS,
        ("labels.tif",),
    ),
    "clean-output-symlink-to-input": Case(
        ("clean", "labels.tif", "-o", "link.tif", "--phase", "1", "--overwrite"),
        LABELS,
        ("link.tif", "labels.tif"),
        links=(("sym", "link.tif", "labels.tif"),),
    ),
    "clean-output-hardlink-to-input": Case(
        ("clean", "labels.tif", "-o", "hard.tif", "--phase", "1", "--overwrite"),
        LABELS,
        ("hard.tif", "labels.tif"),
        links=(("hard", "hard.tif", "labels.tif"),),
    ),
    "clean-negative-labels": Case(
        ("clean", "labels_negative.tif", "-o", "c.tif", "--phase", "1"),
        ("labels_negative.tif",),
        ("labels_negative.tif",),
    ),
    "clean-huge-npy": Case(
        ("clean", "huge.npy", "-o", "c.tif", "--phase", "1"), ("huge.npy",), ("huge.npy",)
    ),
    "clean-unknown-phase": opt(
        *CLEAN[:-1], "unobtainium", files=LABELS, name="--phase", also=("unobtainium",)
    ),
    "clean-min-aspect-nan": opt(
        *CLEAN,
        "--min-aspect",
        "nan",
        files=LABELS,
        name="--min-aspect",
        also=("min_aspect", "min aspect"),
    ),
    "clean-min-aspect-negative": opt(
        *CLEAN,
        "--min-aspect",
        "-2",
        files=LABELS,
        name="--min-aspect",
        also=("min_aspect", "min aspect"),
    ),
    "clean-min-area-negative": opt(
        *CLEAN, "--min-area", "-1", files=LABELS, name="--min-area", also=("min_area", "min area")
    ),
    "clean-min-area-nan": opt(
        *CLEAN, "--min-area", "nan", files=LABELS, name="--min-area", also=("min_area", "min area")
    ),
    # --- suggest --------------------------------------------------------------------------------
    "suggest-missing": Case(("suggest", "nothere.tif"), (), ("nothere.tif",)),
    "suggest-2d": Case(("suggest", "flat.tif"), ("flat.tif",), ("flat.tif",)),
    "suggest-bad-model": Case(
        ("suggest", "vol.tif", "--model", "random.safetensors"),
        ("vol.tif", "random.safetensors"),
        ("random.safetensors",),
    ),
    "suggest-uncertainty-is-input": Case(
        ("suggest", "vol.tif", "--uncertainty", "vol.tif", "--overwrite"), SEG, ("vol.tif",)
    ),
    "suggest-n-0": opt("suggest", "vol.tif", "-n", "0", files=SEG, name="-n", also=("--n",)),
    "suggest-annotations-other-shape": Case(
        ("suggest", "vol.tif", "--annotations", "labels_other_shape.tif"),
        ("vol.tif", "labels_other_shape.tif"),
        ("labels_other_shape.tif",),
    ),
    # --- synth ----------------------------------------------------------------------------------
    "synth-shape-0": opt(*SYNTH, "0", "32", "32", files=(), name="--shape"),
    "synth-shape-negative": opt(*SYNTH, "8", "-32", "32", files=(), name="--shape"),
    "synth-noise-nan": opt(*SYNTH, "8", "32", "32", "--noise", "nan", files=(), name="--noise"),
    "synth-output-equals-labels": Case(
        ("synth", "-o", "v.tif", "--labels", "v.tif", "--shape", "8", "32", "32"),
        (),
        ("v.tif", "--labels"),
    ),
    "synth-output-exists": Case(
        ("synth", "-o", "vol.tif", "--labels", "t.tif", "--shape", "8", "32", "32"),
        SEG,
        ("vol.tif",),
    ),
    "synth-output-folder-missing": Case(
        ("synth", "-o", "nofolder/v.tif", "--labels", "t.tif", "--shape", "8", "32", "32"),
        (),
        ("nofolder",),
    ),
    # --- demo -----------------------------------------------------------------------------------
    "demo-shape-0": opt("demo", "--shape", "0", "0", "0", files=(), name="--shape"),
    "demo-tile-0": opt(*DEMO, "--tile", "0", files=(), name="--tile"),
    "demo-memory-nan": opt(*DEMO, "--memory", "nan", files=(), name="--memory"),
    "demo-output-parent-is-a-file": Case((*DEMO, "--output", "vol.tif/demo"), SEG, ("vol.tif",)),
    # --- measure --------------------------------------------------------------------------------
    "measure-missing": Case(("measure", "nothere.tif"), (), ("nothere.tif",)),
    "measure-negative-labels": Case(
        ("measure", "labels_negative.tif"), ("labels_negative.tif",), ("labels_negative.tif",)
    ),
    "measure-huge-npy": Case(("measure", "huge.npy"), ("huge.npy",), ("huge.npy",)),
    "measure-float-labels": Case(
        ("measure", "labels_float.tif"), ("labels_float.tif",), ("labels_float.tif",)
    ),
    "measure-image-other-shape": Case(
        ("measure", "labels.tif", "--image", "labels_other_shape.tif"),
        ("labels.tif", "labels_other_shape.tif"),
        ("labels_other_shape.tif", "shape"),
    ),
    "measure-csv-into-input": Case(
        ("measure", "labels.tif", "--csv", "labels.tif", "--overwrite"), LABELS, ("labels.tif",)
    ),
    "measure-voxel-size-0": opt(*MEASURE, "--voxel-size", "0", files=LABELS, name="--voxel-size"),
    "measure-voxel-size-nan": opt(
        *MEASURE, "--voxel-size", "nan", files=LABELS, name="--voxel-size"
    ),
    "measure-voxel-size-negative": opt(
        *MEASURE, "--voxel-size", "-1.3", files=LABELS, name="--voxel-size"
    ),
    "measure-slab-0": opt(*MEASURE, "--slab", "0", files=LABELS, name="--slab"),
    "measure-fibre-radius-nan": opt(
        *MEASURE,
        "--fibre-radius",
        "nan",
        files=LABELS,
        name="--fibre-radius",
        also=("fibre radius", "fibre_radius"),
    ),
    "measure-unknown-phase": opt(
        *MEASURE, "--phase", "unobtainium", files=LABELS, name="--phase", also=("unobtainium",)
    ),
}


def _prepare(workdir, case: Case) -> Path:
    d = workdir(*case.files)
    for kind, name, target in case.links:
        if kind == "sym":
            (d / name).symlink_to(d / target)
        else:
            os.link(d / target, d / name)
    return d


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_hostile_input_is_one_line_and_changes_nothing(case: Case, workdir, run_cli, pwned):
    d = _prepare(workdir, case)
    before = tree_hash(d)
    code, _out, err = run_cli(case.argv)
    after = tree_hash(d)
    lines = err.strip().splitlines()
    assert code in case.codes, f"exit {code}; stderr: {err}"
    assert len(lines) == 1 and lines[0].startswith("tomoseg: error:"), err
    assert any(m.lower() in lines[0].lower() for m in case.match), (
        f"the message names none of {case.match}: {lines[0]}"
    )
    assert after == before, "files were created, changed or removed: " + str(
        sorted(set(after.items()) ^ set(before.items()))
    )
    assert not pwned.exists(), "the booby-trapped pickle ran"


# --- accepted: upper-case endings, valid JSON ----------------------------------------------------
ACCEPTED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "info-upper-case-tif": (("info", "UPPER.TIF"), ("UPPER.TIF",)),
    "info-upper-case-safetensors": (("info", "UPPER.SAFETENSORS"), ("UPPER.SAFETENSORS",)),
    "info-json-volume": (("info", "vol.tif", "--json"), ("vol.tif",)),
    "info-json-model": (("info", "UPPER.SAFETENSORS", "--json"), ("UPPER.SAFETENSORS",)),
    # a phase absent from both: Jaccard undefined, must be null in JSON, not NaN
    "evaluate-json-absent-phase": (("evaluate", "ann.tif", "ann.tif", "--json"), ("ann.tif",)),
    "measure-json": (("measure", "labels.tif", "--json"), ("labels.tif",)),
    "suggest-json": (("suggest", "vol.tif", "--json", "-n", "2"), ("vol.tif",)),
}


def _strict_json(text: str):
    def refuse(name: str):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("argv, files", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_accepted_inputs_give_valid_output_and_write_nothing(argv, files, workdir, run_cli):
    d = workdir(*files)
    before = tree_hash(d)
    code, out, err = run_cli(argv)
    assert code == 0, err
    if "--json" in argv:
        _strict_json(out)
    assert tree_hash(d) == before


def test_upper_case_model_ending_segments(workdir, run_cli):
    d = workdir("vol.tif", "UPPER.SAFETENSORS")
    code, _out, err = run_cli(
        ("segment", "vol.tif", "-o", "OUT.TIF", "--model", "UPPER.SAFETENSORS")
    )
    assert code == 0, err
    assert (d / "OUT.TIF").is_file()
    assert sorted(p.name for p in d.iterdir()) == ["OUT.TIF", "UPPER.SAFETENSORS", "vol.tif"]


def test_the_suite_is_big_enough():
    assert len(CASES) + len(ACCEPTED) >= 60
    commands = {c.argv[0] for c in CASES.values()}
    assert commands >= {
        "segment",
        "train",
        "evaluate",
        "clean",
        "info",
        "suggest",
        "synth",
        "demo",
        "measure",
    }
