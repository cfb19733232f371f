"""Typed progress events and a cancel token for long-running core operations.

A long operation is a generator: it yields events, checks a :class:`CancelToken` between steps and
returns its result. The CLI turns events into a progress bar; the napari widgets into a progress bar
and live layers; notebooks call the convenience wrapper that runs the generator to completion.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

E = TypeVar("E")
R = TypeVar("R")


class CancelToken:
    """Set from any thread (a Stop button, Ctrl-C) to ask a running operation to stop."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


class Cancelled(Exception):
    """Raised by an operation that stopped because its token was cancelled, leaving nothing half-written."""


@dataclass(frozen=True)
class SegmentProgress:
    """A finished block of a segmentation: ``done`` of ``total`` voxels, and where (z, y, x slices)."""

    done: int
    total: int
    region: tuple[slice, slice, slice]
    elapsed: float

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0

    @property
    def eta(self) -> float:
        """Seconds left, extrapolated from the speed so far."""
        return self.elapsed * (self.total - self.done) / self.done if self.done else float("nan")


def run_to_completion(
    gen: Generator[E, None, R], callback: Callable[[E], object] | None = None
) -> R:
    """Drive an operation generator to its end, passing each event to ``callback``; return its result."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            result: R = stop.value
            return result
        if callback is not None:
            callback(event)
