"""Layers of the viewer: pickers that follow them, and phase names/colours on labels layers.

viewer.layers (inserted / removed / moved / renamed) -> :class:`LayerPicker` (a magicgui ComboBox) re-lists
its layers and keeps the user's choice; until the user chooses, it picks the preferred layer (e.g. the one
named ``annotations``) and never one it must avoid (``ground truth``, ``prediction``) on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox
from napari.layers import Image, Labels, Layer
from napari.utils.colormaps import DirectLabelColormap

from napari_tomoseg.core.phases import PhaseTable

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

__all__ = [
    "LayerPicker",
    "apply_phases",
    "as_array",
    "check_image_layer",
    "current_slice",
    "geometry",
    "is_image",
    "is_labels",
    "is_segmentation",
    "labels_colormap",
    "layer_phases",
    "phase_features",
    "upsert_labels",
    "voxel_size",
]

_KINDS: dict[str, type[Layer]] = {"image": Image, "labels": Labels}


def is_labels(layer: Any) -> bool:
    """True for a napari labels layer."""
    return isinstance(layer, Labels)


def is_image(layer: Any) -> bool:
    """True for a napari image layer."""
    return isinstance(layer, Image)


def is_segmentation(layer: Any) -> bool:
    """True for a labels layer the Segment widget filled (it records the model it used)."""
    return isinstance(layer, Labels) and "tomoseg_model" in (getattr(layer, "metadata", None) or {})


class LayerPicker(ComboBox):
    """A magicgui combo box of the viewer's layers of one kind that follows the viewer.

    Parameters
    ----------
    viewer
        The napari viewer.
    kind
        ``"image"`` or ``"labels"`` (or a napari layer class).
    label, tooltip
        As for any magicgui widget.
    prefer
        Layer names to pick, in this order, while the user has not chosen a layer.
    prefer_if
        Next, the topmost (newest) layer for which this is true, e.g. a layer the Segment widget
        made (see :func:`is_segmentation`), whatever its name.
    avoid
        Layer names never picked automatically (the user may still choose them).
    optional
        Allow "no layer" (None). A picker that is optional, or has ``avoid`` names, shows no layer
        rather than an avoided one.
    accept
        Extra filter on layers (e.g. only 3D images).

    Notes
    -----
    The list follows layers being added, removed, moved and renamed. Once the user picks a layer it
    stays picked while it exists; before that (or after it is removed) the picker re-picks by the rules
    above whenever the layers change, so a widget docked before its ``annotations`` layer existed picks
    that layer as soon as it appears.
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        kind: str | type[Layer],
        *,
        label: str | None = None,
        tooltip: str | None = None,
        prefer: Sequence[str] = (),
        prefer_if: Callable[[Layer], bool] | None = None,
        avoid: Sequence[str] = (),
        optional: bool = False,
        accept: Callable[[Layer], bool] | None = None,
    ) -> None:
        self.viewer = viewer
        self._kind = _KINDS[kind] if isinstance(kind, str) else kind
        self._prefer = tuple(prefer)
        self._prefer_if = prefer_if
        self._avoid = tuple(avoid)
        self._accept = accept
        self._user_chose = False
        self._programmatic = 0
        self._watched: list[Layer] = []
        super().__init__(
            label=label, tooltip=tooltip, choices=self._choices, nullable=optional or bool(avoid)
        )
        self.changed.connect(self._on_changed)
        events = viewer.layers.events
        for emitter in (events.inserted, events.removed, events.moved):
            emitter.connect(self.refresh)
        self.refresh()

    # choices ------------------------------------------------------------------------------------
    def layers(self) -> list[Layer]:
        """The viewer's layers this picker offers, bottom to top."""
        return [
            ly
            for ly in self.viewer.layers
            if isinstance(ly, self._kind) and (self._accept is None or self._accept(ly))
        ]

    def _choices(self, _widget: Any = None) -> list[tuple[str, Layer]]:
        return [(ly.name, ly) for ly in self.layers()]

    def preferred(self) -> Layer | None:
        """The layer this picker chooses on its own."""
        layers = self.layers()
        by_name = {ly.name: ly for ly in layers}
        for name in self._prefer:
            if name in by_name:
                return by_name[name]
        allowed = [ly for ly in layers if ly.name not in self._avoid]
        if self._prefer_if is not None:
            liked = [ly for ly in allowed if self._prefer_if(ly)]
            if liked:
                return liked[-1]
        if allowed:
            return allowed[0]
        return None if self._nullable else (layers[0] if layers else None)

    # value ----------------------------------------------------------------------------------------
    @property
    def layer(self) -> Layer | None:
        """The chosen layer, or None."""
        value = self.value
        return value if isinstance(value, Layer) and value in self.viewer.layers else None

    def select(self, layer: Layer | str | None) -> None:
        """Choose ``layer`` (or the layer of that name) as if the user had."""
        if isinstance(layer, str):
            layer = self.viewer.layers[layer]
        self._set(layer)
        self._user_chose = layer is not None

    def _set(self, layer: Layer | None) -> None:
        self._programmatic += 1
        try:
            if layer is None and not self._nullable:
                return
            self.value = layer
        finally:
            self._programmatic -= 1

    def _on_changed(self, value: Any) -> None:
        if not self._programmatic:
            self._user_chose = value is not None

    def refresh(self, event: Any = None) -> None:
        """Re-list the layers; keep the user's choice, else pick :meth:`preferred`."""
        try:
            self.native.count()
        except RuntimeError:  # the Qt widget was deleted (dock closed): stop listening
            self._disconnect()
            return
        for ly in self._watched:
            ly.events.name.disconnect(self._renamed)
        self._watched = self.layers()
        for ly in self._watched:
            ly.events.name.connect(self._renamed)
        current = self.value
        self._programmatic += 1
        try:
            self.reset_choices()
        finally:
            self._programmatic -= 1
        if not self._user_chose or current not in self._watched:
            self._user_chose = False
            self._set(self.preferred())

    def _renamed(self, event: Any = None) -> None:
        self.refresh()

    def _disconnect(self) -> None:
        events = self.viewer.layers.events
        for emitter in (events.inserted, events.removed, events.moved):
            emitter.disconnect(self.refresh)
        for ly in self._watched:
            ly.events.name.disconnect(self._renamed)
        self._watched = []


def check_image_layer(layer: Layer | None) -> Any:
    """The data of a usable 3D grey image layer, or a ValueError that says what to do."""
    if layer is None:
        raise ValueError("no image layer: open a volume first (File > Open, or File > Open Sample)")
    if getattr(layer, "rgb", False):
        raise ValueError(
            f"layer {layer.name!r} is an RGB image; segmentation needs a grey-value volume "
            "(convert it to greyscale first)"
        )
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    if data.ndim != 3:
        raise ValueError(
            f"layer {layer.name!r} has {data.ndim} dimensions (shape {tuple(data.shape)}); "
            "segmentation needs a 3D volume (z, y, x)"
        )
    return data


def labels_colormap(phases: PhaseTable) -> DirectLabelColormap:
    """Phase colours for a labels layer; 0 (and any id outside the table) transparent."""
    colours: dict[int | None, Any] = {None: "transparent", 0: "transparent"}
    colours.update(phases.colour_dict())
    return DirectLabelColormap(color_dict=colours)


def phase_features(phases: PhaseTable) -> dict[str, list[Any]]:
    """A labels layer's ``features`` table: one row per id (0 = none), with the phase names."""
    return {"index": [0, *phases.ids], "phase": ["none", *phases.names]}


def apply_phases(layer: Any, phases: PhaseTable) -> None:
    """Give a labels layer the phase names (``features``, shown in the status bar) and colours."""
    layer.colormap = labels_colormap(phases)
    layer.features = phase_features(phases)
    layer.metadata["tomoseg_phases"] = phases.to_json()


def layer_phases(layer: Any) -> PhaseTable | None:
    """The phase table a layer was bound to by :func:`apply_phases`, if any."""
    raw = getattr(layer, "metadata", {}).get("tomoseg_phases")
    return PhaseTable.from_json(raw) if raw else None


def current_slice(viewer: napari.viewer.Viewer, axis: int | None = None) -> tuple[int, int]:
    """``(axis, index)`` of the slice shown in a 2D view (the first non-displayed axis by default)."""
    if axis is None:
        hidden = list(viewer.dims.not_displayed)
        axis = hidden[0] if hidden else 0
    return axis, int(viewer.dims.current_step[axis])


def geometry(like: Layer | None) -> dict[str, Any]:
    """``scale``, ``translate`` and ``units`` of ``like``, for a layer drawn over it ({} for None)."""
    if like is None:
        return {}
    return {"scale": like.scale, "translate": like.translate, "units": like.units}


def voxel_size(layer: Layer) -> tuple[float, float, float] | None:
    """The voxel size (µm) of a layer, from its ``scale``; None when napari's default (1, 1, 1)."""
    scale = tuple(float(s) for s in layer.scale)
    return scale if scale != (1.0, 1.0, 1.0) else None  # type: ignore[return-value]


def upsert_labels(
    viewer: napari.viewer.Viewer,
    name: str,
    data: Any,
    *,
    like: Layer | None,
    phases: PhaseTable | None = None,
    **kwargs: Any,
) -> Any:
    """Replace the data of the labels layer ``name`` (or add it), with ``like``'s scale/translate."""
    where = geometry(like)
    if name in viewer.layers and is_labels(viewer.layers[name]):
        layer = viewer.layers[name]
        layer.data = data
        for k, v in where.items():
            setattr(layer, k, v)
    else:
        layer = viewer.add_labels(data, name=name, **where, **kwargs)
    if phases is not None:
        apply_phases(layer, phases)
    return layer


def as_array(data: Any) -> np.ndarray:
    """A numpy view/copy of layer data (dask/zarr arrays are computed)."""
    return np.asarray(data)
