"""User-facing messages: napari notifications that are also logged.

core error -> :func:`describe_error` (one line) -> :func:`notify_error` (napari notification + log).
"""

from __future__ import annotations

import logging

from napari.utils.notifications import show_error, show_info, show_warning

log = logging.getLogger(__name__)

__all__ = ["describe_error", "notify_error", "notify_info", "notify_warning"]


def notify_error(message: str) -> None:
    """Show ``message`` as a napari error notification (and log it)."""
    log.error(message)
    show_error(message)


def notify_warning(message: str) -> None:
    log.warning(message)
    show_warning(message)


def notify_info(message: str) -> None:
    log.info(message)
    show_info(message)


def describe_error(err: BaseException) -> str:
    """A one-line, user-facing description of an exception from the core."""
    text = str(err).strip() or type(err).__name__
    if isinstance(err, (ValueError, FileNotFoundError, FileExistsError, PermissionError)):
        return text
    return f"{type(err).__name__}: {text}"
