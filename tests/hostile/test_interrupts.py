"""Interrupted runs: ``tomoseg segment``, ``train`` and ``measure --csv`` killed (SIGKILL), terminated
(SIGTERM) or interrupted (SIGINT, Ctrl+C) as subprocesses, early (while starting) and mid-run (once
the run has started writing, or a few seconds in).

After the interrupt no complete-looking output may exist; after the next run on the same output (to
completion) the folder holds exactly the inputs and the output: no temporary store, partial file,
rechunked copy or temporary model survives. Slow: each case runs the command twice.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytestmark = pytest.mark.slow

SHAPE = (48, 192, 192)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from napari_tomoseg.core import io
    from napari_tomoseg.core.phantom.composite import PhantomConfig, make_phantom
    from napari_tomoseg.core.phases import COMPOSITE_PHASES

    d = tmp_path_factory.mktemp("interrupt-inputs")
    ph = make_phantom(PhantomConfig(shape=SHAPE), seed=1)
    tifffile.imwrite(d / "vol.tif", ph.volume)
    # three copies along z: a measure run long enough to be interrupted midway
    io.write_labels(d / "labels.tif", np.concatenate([ph.labels] * 3), phases=COMPOSITE_PHASES)
    ann = np.zeros(SHAPE, np.uint8)
    for z in (5, 20, 40):
        ann[z] = ph.labels[z]
    io.write_labels(d / "ann.tif", ann, phases=COMPOSITE_PHASES)
    return d


TRAIN = ["train", "vol.tif", "--annotations", "ann.tif", "-o", "m.safetensors"]

#: command: (argv, argv of the next run, output, inputs, mid-run: seconds after start, or None for
#: "as soon as the run has written something")
COMMANDS: dict[str, tuple[list[str], list[str], str, tuple[str, ...], float | None]] = {
    "segment": (
        ["segment", "vol.tif", "-o", "out.tif", "--threads", "1"],
        ["segment", "vol.tif", "-o", "out.tif", "--threads", "1"],
        "out.tif",
        ("vol.tif",),
        None,
    ),
    "train": (
        [*TRAIN, "--budget", "40s"],
        [*TRAIN, "--steps", "2"],
        "m.safetensors",
        ("vol.tif", "ann.tif"),
        9.0,  # training, a few seconds after the imports; the model is written only at the end
    ),
    "measure": (
        ["measure", "labels.tif", "--csv", "csv"],
        ["measure", "labels.tif", "--csv", "csv"],
        "csv",
        ("labels.tif",),
        6.0,  # measuring (imports take about 4 s, the whole run about 20 s)
    ),
}


def _run(argv: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start ``tomoseg ARGV`` in ``cwd``; stdout and stderr go to ``log`` (outside ``cwd``)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "napari_tomoseg.cli", *argv],
            cwd=cwd,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def _wait_for_work(
    proc: subprocess.Popen[bytes], folder: Path, names: set[str], limit: float
) -> None:
    """Until something new appears in ``folder`` (the run writes), or ``limit`` seconds pass."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit and proc.poll() is None:
        if set(os.listdir(folder)) - names:
            time.sleep(0.3)
            return
        time.sleep(0.05)


@pytest.mark.parametrize("when", ["early", "mid"])
@pytest.mark.parametrize(
    "sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=["kill", "term", "int"]
)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_interrupted_run_leaves_no_output_and_the_next_run_no_litter(
    command: str, sig: signal.Signals, when: str, inputs: Path, tmp_path: Path
):
    argv, rerun, output, needed, mid = COMMANDS[command]
    work = tmp_path / "work"
    work.mkdir()
    for name in needed:
        shutil.copyfile(inputs / name, work / name)
    names = set(needed)
    proc = _run(argv, work, tmp_path / "first.log")
    if when == "early":
        time.sleep(1.0)
    elif mid is None:
        _wait_for_work(proc, work, names, limit=8.0)
    else:
        time.sleep(mid)
    finished_first = proc.poll() is not None
    if not finished_first:
        proc.send_signal(sig)
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{command} did not stop within 60 s of {sig.name}")
    err = (tmp_path / "first.log").read_text(errors="replace")
    if finished_first:
        pytest.fail(f"{command} finished before it could be interrupted ({when}); make it longer")
    assert rc != 0, f"{command} exited 0 after {sig.name}"
    if sig != signal.SIGKILL:
        assert "Traceback" not in err, err
    assert not (work / output).exists(), f"a complete-looking {output} after {sig.name} ({when})"

    # the next run on the same output completes and removes what the interrupted one left
    again = _run(rerun, work, tmp_path / "again.log")
    rc2 = again.wait(timeout=300)
    assert rc2 == 0, (tmp_path / "again.log").read_text(errors="replace")
    assert (work / output).exists()
    left = sorted(set(os.listdir(work)) - names - {output})
    assert not left, f"litter after the next run: {left}"
