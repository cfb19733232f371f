"""One vocabulary for modes and axes: which modes a network can run, and which a fine-tune makes.

network (ndim, in_channels) -> :func:`runnable_modes` -> a mode choice -> :func:`check_mode`
base model + requested mode -> :func:`finetuned_mode` -> the fine-tuned model's mode.

Light on purpose (no torch): front ends import these names to fill their choices at start-up.
"""

from __future__ import annotations

from typing import Literal, Protocol

Mode = Literal["2d", "2d-3axes", "2.5d", "3d"]
#: Every mode, in the order front ends list them.
MODES: tuple[Mode, ...] = ("2d", "2d-3axes", "2.5d", "3d")
#: The modes a model is trained in (the multi-axis mode runs a 2D or 2.5D network).
TrainMode = Literal["2d", "2.5d", "3d"]
TRAIN_MODES: tuple[TrainMode, ...] = ("2d", "2.5d", "3d")

Axis = Literal["z", "y", "x"]
#: Volumes are indexed (z, y, x).
AXIS_NAMES: tuple[Axis, ...] = ("z", "y", "x")
AXES: dict[str, int] = {name: i for i, name in enumerate(AXIS_NAMES)}

__all__ = [
    "AXES",
    "AXIS_NAMES",
    "MODES",
    "TRAIN_MODES",
    "Axis",
    "Mode",
    "NetworkShape",
    "TrainMode",
    "axis_index",
    "check_mode",
    "finetuned_mode",
    "mode_family",
    "runnable_modes",
]


class NetworkShape(Protocol):
    """What the mode rules need of a network's architecture (a ``UNetConfig`` has both)."""

    @property
    def ndim(self) -> int: ...

    @property
    def in_channels(self) -> int: ...


def axis_index(axis: str | int) -> int:
    """0, 1 or 2 for ``"z"``, ``"y"``, ``"x"`` (or that index itself); a ValueError otherwise."""
    if isinstance(axis, int) and not isinstance(axis, bool) and 0 <= axis < 3:
        return axis
    if isinstance(axis, str) and axis in AXES:
        return AXES[axis]
    raise ValueError(f"axis must be one of {AXIS_NAMES} (or 0, 1, 2), got {axis!r}")


def runnable_modes(config: NetworkShape) -> tuple[Mode, ...]:
    """The modes a network can run, in :data:`MODES` order.

    A 3D network runs ``3d``; a 2D one-channel network ``2d`` and ``2d-3axes``; a 2D network taking
    k > 1 neighbouring slices as channels ``2d-3axes`` and ``2.5d``.
    """
    if config.ndim == 3:
        return ("3d",)
    if config.in_channels > 1:
        return ("2d-3axes", "2.5d")
    return ("2d", "2d-3axes")


def check_mode(mode: str, config: NetworkShape, *, default: str | None = None) -> Mode:
    """``mode`` if the network can run it; a ValueError that says which mode to use otherwise.

    Parameters
    ----------
    mode : str
        The mode asked for.
    config : UNetConfig (or anything with ``ndim`` and ``in_channels``)
    default : str, optional
        The model's own mode, suggested in the error (default: the first runnable mode).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    suggest = default or runnable_modes(config)[0]
    if mode == "3d" and config.ndim != 3:
        raise ValueError(f"mode '3d' needs a 3D model; this model is 2D (use --mode {suggest})")
    if mode != "3d" and config.ndim != 2:
        raise ValueError(f"mode {mode!r} needs a 2D model; this model is 3D (use --mode 3d)")
    if (mode == "2.5d" and config.in_channels == 1) or (mode == "2d" and config.in_channels > 1):
        raise ValueError(
            f"mode {mode!r} does not fit this model: it takes {config.in_channels} input "
            f"channel(s); use --mode {suggest} (or 2d-3axes)"
        )
    return mode


def mode_family(mode: str) -> TrainMode:
    """The mode a model of ``mode`` is trained in: the multi-axis mode runs a 2D network."""
    families: dict[str, TrainMode] = {"2d": "2d", "2d-3axes": "2d", "2.5d": "2.5d", "3d": "3d"}
    if mode not in families:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return families[mode]


def finetuned_mode(
    base_mode: str | None,
    base_config: NetworkShape | None,
    requested: str | None = None,
) -> tuple[Mode, bool]:
    """The mode a fine-tune produces, and whether it extends a 2D base to 2.5D.

    Parameters
    ----------
    base_mode, base_config
        The base model's mode and architecture; both ``None`` for a model trained from scratch.
    requested : {"2d", "2.5d", "3d"} or None
        From scratch: the mode to train (None: 2D). With a base it must be the base's family, except
        that a 2D one-channel base is extended to 2.5D when ``requested`` is None or ``"2.5d"``
        (``"2d"`` keeps it 2D).

    Returns
    -------
    (mode, extends)
        ``extends`` is true when the base network is inflated to take neighbouring slices.

    Raises
    ------
    ValueError
        When the base cannot be fine-tuned in the requested mode.
    """
    if requested is not None and requested not in TRAIN_MODES:
        raise ValueError(f"a fine-tune mode must be one of {TRAIN_MODES}, got {requested!r}")
    if base_mode is None or base_config is None:
        return (requested or "2d"), False
    extends = (
        requested in (None, "2.5d")
        and mode_family(base_mode) == "2d"
        and base_config.in_channels == 1
        and base_config.ndim == 2
    )
    if extends:
        return "2.5d", True
    if requested is not None and mode_family(requested) != mode_family(base_mode):
        raise ValueError(
            f"the base model runs in mode {base_mode!r} ({base_config.in_channels} input "
            f"channel(s), {base_config.ndim}D) and cannot be fine-tuned in mode {requested!r}; "
            "choose a base model of that mode or train from scratch"
        )
    return base_mode, False  # type: ignore[return-value]
