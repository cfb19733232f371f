"""Jobs of the dock widgets: a core generator in a napari thread worker, with progress, Stop and a state.

widget -> :class:`JobRunner` ``start(make)`` -> ``make(token)`` builds the core generator in the worker thread
-> events reach ``on_yield`` and the result ``on_return`` on the Qt thread (the only place layers are touched).
:class:`JobControls` is the Run / Stop / status row (magicgui widgets) bound to a runner.

Nothing here imports torch: widgets import torch-using core modules inside the job functions, which run in
the worker thread.
"""

from __future__ import annotations

import enum
import gc
import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Generator
from typing import Any

from magicgui.widgets import Container, Label, PushButton
from napari.qt.threading import GeneratorWorker, create_worker
from napari.utils import progress

from napari_tomoseg._napari.notify import describe_error, notify_error
from napari_tomoseg.core.progress import Cancelled, CancelToken

log = logging.getLogger(__name__)

__all__ = ["JobControls", "JobRunner", "JobState", "freeze_long_lived_objects", "warm_up"]


_QT_INT_MAX = 2**31 - 1


class JobState(enum.Enum):
    """Where a widget's job stands. Only IDLE/DONE/STOPPED/FAILED accept a new start."""

    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"
    FAILED = "failed"


class _TokenWorker(GeneratorWorker):
    """A generator worker whose ``quit`` (napari calls it when the window closes) also cancels the
    core operation, so a long block of computation stops at its next check instead of running on."""

    cancel_token: CancelToken

    def quit(self) -> None:
        token = getattr(self, "cancel_token", None)
        if token is not None:
            token.cancel()
        super().quit()


class _Stopped:
    """Returned by the relay when the core operation raised :class:`Cancelled`."""


class _JobFailed(Exception):
    """Carries a RuntimeError out of the worker: superqt takes a RuntimeError returned by a worker
    for a deleted Qt object and swallows it (no ``errored``, no ``finished``), but torch reports real
    failures (CUDA out of memory, ...) as RuntimeError."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


#: Niceness added to worker threads (Linux): on a busy CPU the Qt thread is served first.
WORKER_NICENESS = 5


def _lower_thread_priority() -> None:
    """Make the calling (worker) thread yield the CPU to the Qt thread when both want it.

    Linux applies ``setpriority`` to a single thread when given its thread id; elsewhere (or without
    permission) this is a no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + WORKER_NICENESS))
    except (OSError, AttributeError):
        pass


#: Modules a first job (or napari's first labels layer) would otherwise import on the Qt thread:
#: torch takes about a second, pandas (napari imports it for a layer's features table) 0.4 s, zarr
#: and scikit-image (napari imports it for the first labels layer) 0.1-0.2 s each.
WARM_UP_MODULES = (
    "pandas",
    "skimage.color",  # napari, for the first labels layer
    "skimage.exposure",
    "napari_tomoseg.core.io.labelstore",  # and zarr
    "torch",
    "napari_tomoseg.core.segment",
    "napari_tomoseg.core.learn.finetune",
    "napari_tomoseg.core.measure.uncertainty",
)
_warm_up_thread: threading.Thread | None = None


def warm_up() -> None:
    """Import :data:`WARM_UP_MODULES` in a background thread, once per process (widgets call this
    when they are created, so that clicking Run does not freeze the viewer while modules load).

    Importing napari_tomoseg (what napari does when it reads the manifest) still imports no torch:
    only creating a widget starts this."""
    global _warm_up_thread
    if _warm_up_thread is not None:
        return

    def run() -> None:
        _lower_thread_priority()
        for name in WARM_UP_MODULES:
            try:
                importlib.import_module(name)
            except Exception as err:  # the job that needs it will report the problem
                log.debug("warm-up import of %s failed: %s", name, err)

    _warm_up_thread = threading.Thread(target=run, name="tomoseg-warm-up")
    _warm_up_thread.start()


def freeze_long_lived_objects() -> None:
    """Move every object alive now out of the garbage collector's sight (``gc.freeze``).

    napari, Qt and torch hold about half a million container objects; a full collection walks them
    all and holds the GIL for about 0.2 s, freezing the viewer mid-job. They live as long as the
    viewer, so after this each collection only walks what was created since. Called when a job
    delivers its first event (torch and the model are loaded by then)."""
    gc.freeze()


def _relay(make: Callable[[CancelToken], Generator[Any, None, Any]], token: CancelToken) -> Any:
    """Worker-thread body: build the core generator (imports torch, loads models...) and relay it."""
    _lower_thread_priority()
    try:
        gen = make(token)
        result = yield from gen
    except Cancelled:
        return _Stopped()
    except RuntimeError as err:
        raise _JobFailed(err) from err
    return result


class JobRunner:
    """Runs one core generator at a time in a napari thread worker.

    The generator is *built* in the worker thread by ``make(token)`` (so model loading and torch
    imports never block the Qt thread). Each yielded event reaches ``on_yield`` and the result
    reaches ``on_return``, both on the Qt thread. A core operation that raises
    :class:`~napari_tomoseg.core.progress.Cancelled` ends in state STOPPED (``on_stopped``); an
    operation that returns normally after a cancel (e.g. fine-tuning keeping its best weights)
    reaches ``on_return`` and ends STOPPED. Any other exception ends FAILED with a napari error
    notification (``on_error`` first, e.g. to restore layers).

    Parameters
    ----------
    name
        What the job does, in the user's words ("Segmenting", "Fine-tuning"); used in the progress
        bar and in messages.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.state = JobState.IDLE
        self.worker: _TokenWorker | None = None
        self.token: CancelToken | None = None
        self.error: BaseException | None = None
        self._pbar: progress | None = None
        #: True once the current worker has emitted ``finished`` (its thread is done).
        self.worker_finished = True
        self._listeners: list[Callable[[JobState], None]] = []
        warm_up()  # a widget with a job to run was made: load what its first run needs

    # state -----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.state is JobState.RUNNING

    def on_state(self, callback: Callable[[JobState], None]) -> None:
        """Call ``callback(state)`` on every state change (Qt thread)."""
        self._listeners.append(callback)

    def _set_state(self, state: JobState) -> None:
        self.state = state
        for cb in list(self._listeners):
            cb(state)

    # control ---------------------------------------------------------------------------------
    def start(
        self,
        make: Callable[[CancelToken], Generator[Any, None, Any]],
        *,
        on_yield: Callable[[Any], None] | None = None,
        on_return: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_stopped: Callable[[], None] | None = None,
        total: int | None = None,
        describe: Callable[[Any], tuple[int | None, str]] | None = None,
    ) -> _TokenWorker:
        """Start ``make(token)`` in a worker; refuse (RuntimeError) while a job runs.

        ``describe(event) -> (progress value or None, text)`` drives the progress bar.
        """
        if self.running:
            raise RuntimeError(f"{self.name} is already running; stop it first")
        token = CancelToken()
        worker = create_worker(_relay, make, token, _worker_class=_TokenWorker, _ignore_errors=True)
        assert isinstance(worker, _TokenWorker)
        worker.cancel_token = token
        self.worker, self.token, self.error = worker, token, None
        # Qt progress bars hold 32-bit ints: count in coarser steps beyond (a 2048^3 volume
        # has 8.6e9 voxels).
        step = max(1, -(-(total or 0) // _QT_INT_MAX))
        pbar = progress(total=(total or 0) // step, desc=self.name)
        self._pbar = pbar

        first = [True]

        def yielded(event: Any) -> None:
            if first[0]:
                first[0] = False
                freeze_long_lived_objects()
            if describe is not None:
                value, text = describe(event)
                if value is not None and pbar.total:
                    pbar.n = min(int(value) // step, int(pbar.total))
                    pbar.refresh()
                if text:
                    pbar.set_description(f"{self.name}: {text}")
            if on_yield is not None:
                on_yield(event)

        def returned(result: Any) -> None:
            if isinstance(result, _Stopped):
                self._set_state(JobState.STOPPED)
                if on_stopped is not None:
                    on_stopped()
                return
            stopped = token.cancelled
            if on_return is not None:
                try:
                    on_return(result)
                except (
                    Exception
                ) as err:  # a bug or bad state in our handler: report, do not crash Qt
                    log.exception("%s: handling the result failed", self.name)
                    self._fail(err, on_error)
                    return
            self._set_state(JobState.STOPPED if stopped else JobState.DONE)

        def errored(err: BaseException) -> None:
            self._fail(err.original if isinstance(err, _JobFailed) else err, on_error)

        def aborted() -> None:  # window closed: quit() stopped the generator between events
            if self.worker is worker:
                self._set_state(JobState.STOPPED)

        def finished() -> None:
            pbar.close()
            if self._pbar is pbar:
                self._pbar = None
            # A job's on_return may start the next job (planning -> training): this worker's
            # ``finished`` then arrives after the new one is RUNNING and must not end it.
            if self.worker is not worker:
                return
            self.worker_finished = True
            if self.state is JobState.RUNNING:  # aborted without a result
                self._set_state(JobState.STOPPED)

        worker.yielded.connect(yielded)
        worker.returned.connect(returned)
        worker.errored.connect(errored)
        worker.aborted.connect(aborted)
        worker.finished.connect(finished)
        self.worker_finished = False
        self._set_state(JobState.RUNNING)
        worker.start()
        return worker

    def _fail(self, err: BaseException, on_error: Callable[[BaseException], None] | None) -> None:
        self.error = err
        if on_error is not None:
            try:
                on_error(err)
            except Exception:
                log.exception("%s: restoring after a failure failed", self.name)
        self._set_state(JobState.FAILED)
        log.error("%s failed", self.name, exc_info=(type(err), err, err.__traceback__))
        notify_error(f"{self.name} failed: {describe_error(err)}")

    def stop(self) -> None:
        """Ask the running job to stop at its next check (the core keeps what it promises, e.g. the
        best weights of a fine-tuning run)."""
        if self.token is not None and self.running:
            self.token.cancel()

    def quit(self) -> None:
        """Stop and abandon the job (widget closing): no result handlers run after this."""
        if self.worker is not None and self.running:
            self.worker.quit()


class JobControls(Container):
    """A Run button, a Stop button and a status line, bound to a :class:`JobRunner`.

    Run is disabled while the job runs; Stop only while it runs. ``run_button``, ``stop_button`` and
    ``status`` are magicgui widgets (``status.value`` is the text shown under the buttons).
    """

    def __init__(self, runner: JobRunner, run_text: str = "Run") -> None:
        self.runner = runner
        self.run_button = PushButton(text=run_text)
        self.stop_button = PushButton(text="Stop", enabled=False)
        self.stop_button.tooltip = "Stop at the next step; nothing half-written is kept"
        buttons = Container(
            widgets=[self.run_button, self.stop_button], layout="horizontal", labels=False
        )
        buttons.margins = (0, 0, 0, 0)
        self.status = Label(value="")
        self.status.native.setWordWrap(True)
        # Two lines stay readable when a full dock squeezes its widgets.
        self.status.native.setMinimumHeight(2 * self.status.native.fontMetrics().lineSpacing() + 4)
        super().__init__(widgets=[buttons, self.status], labels=False)
        self.margins = (0, 0, 0, 0)
        self.stop_button.changed.connect(runner.stop)
        runner.on_state(self._update)
        self._extra_buttons: list[Any] = []

    def also_disable(self, *buttons: Any) -> None:
        """Buttons (magicgui widgets) that must be disabled while the job runs (e.g. Preview next to Run)."""
        self._extra_buttons.extend(buttons)

    def _update(self, state: JobState) -> None:
        running = state is JobState.RUNNING
        self.run_button.enabled = not running
        for b in self._extra_buttons:
            b.enabled = not running
        self.stop_button.enabled = running
