"""The job runner and its Run / Stop controls, which every widget runs its core work through."""

from __future__ import annotations

import threading
import time

import pytest
from qtpy.QtCore import QTimer

from napari_tomoseg._napari.jobs import JobControls, JobRunner, JobState
from napari_tomoseg.core.progress import Cancelled


def _counting(n, *, fail_at=None, tick=0.0):
    def make(token):
        main = threading.main_thread()

        def gen():
            assert threading.current_thread() is not main, "core work must not run on the Qt thread"
            for i in range(n):
                if token.cancelled:
                    raise Cancelled("stopped")
                if i == fail_at:
                    raise ValueError("the volume is broken")
                time.sleep(tick)
                yield i
            return "finished"

        return gen()

    return make


def test_job_runs_in_worker_and_reports(qtbot, wait_job):
    runner = JobRunner("Counting")
    seen, results = [], []
    states = []
    runner.on_state(states.append)
    runner.start(
        _counting(5),
        on_yield=seen.append,
        on_return=results.append,
        total=5,
        describe=lambda i: (i + 1, f"{i + 1}/5"),
    )
    assert runner.state is JobState.RUNNING
    with pytest.raises(RuntimeError, match="already running"):
        runner.start(_counting(1))
    assert wait_job(runner) is JobState.DONE
    assert seen == [0, 1, 2, 3, 4]
    assert results == ["finished"]
    assert states == [JobState.RUNNING, JobState.DONE]


def test_progress_of_more_than_two_billion_voxels(qtbot, wait_job):
    # a 2048^3 volume: 8.6e9 voxels, beyond the 32-bit ints of Qt's progress bars
    runner = JobRunner("Segmenting")
    total = 2048**3
    bars = []
    runner.start(
        _counting(4),
        total=total,
        describe=lambda i: (
            bars.append((runner._pbar.n, runner._pbar.total)) or (total * (i + 1) // 4, "")
        ),
    )
    assert wait_job(runner) is JobState.DONE
    n, top = bars[-1]  # as the last event arrived: 3 of 4 parts done
    assert 0 < top < 2**31 and n == pytest.approx(3 * top / 4, rel=1e-6)


def test_stop_cancels_the_core_operation(qtbot, wait_job):
    runner = JobRunner("Counting")
    controls = JobControls(runner)
    qtbot.addWidget(controls.native)
    stopped, results = [], []
    runner.start(
        _counting(10_000, tick=0.005),
        on_return=results.append,
        on_stopped=lambda: stopped.append(True),
    )
    assert not controls.run_button.enabled and controls.stop_button.enabled
    controls.stop_button.native.click()
    assert wait_job(runner) is JobState.STOPPED
    assert stopped == [True] and results == []
    assert controls.run_button.enabled and not controls.stop_button.enabled


def test_result_after_cancel_counts_as_stopped(qtbot, wait_job):
    # fine-tuning returns its best weights when stopped: the result handler runs, state STOPPED
    runner = JobRunner("Training")
    results = []

    def make(token):
        def gen():
            while not token.cancelled:
                time.sleep(0.005)
                yield 0
            return "best weights"

        return gen()

    runner.start(make, on_return=results.append)
    qtbot.wait(30)
    runner.stop()
    assert wait_job(runner) is JobState.STOPPED
    assert results == ["best weights"]


def test_failure_notifies_and_calls_on_error(qtbot, wait_job, errors):
    runner = JobRunner("Segmenting")
    failures = []
    runner.start(_counting(5, fail_at=2), on_error=failures.append)
    assert wait_job(runner) is JobState.FAILED
    assert isinstance(failures[0], ValueError) and runner.error is failures[0]
    assert errors == ["Segmenting failed: the volume is broken"]


def test_a_job_started_from_on_return_is_not_ended_by_the_first_ones_finish(qtbot, wait_job):
    # Fine-tuning plans in one job and trains in the next, started from the first job's on_return:
    # the first worker's ``finished`` arrives after the second job is running and must not end it.
    runner = JobRunner("Two steps")
    release = threading.Event()

    def second(token):
        while not release.is_set() and not token.cancelled:
            time.sleep(0.01)
            yield 1
        return "trained"

    def first(token):
        yield 0
        return "planned"

    results = []

    def start_second(result):
        results.append(result)
        # as the Fine-tune widget does: right after this handler, possibly before ``finished``
        QTimer.singleShot(0, lambda: runner.start(second, on_return=results.append))

    runner.start(first, on_return=start_second)
    qtbot.waitUntil(lambda: results == ["planned"] and runner.running, timeout=10_000)
    qtbot.wait(300)  # let the first worker's finished signal arrive
    assert runner.state is JobState.RUNNING and not runner.worker_finished
    release.set()
    assert wait_job(runner) is JobState.DONE
    assert results == ["planned", "trained"]
