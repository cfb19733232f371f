"""The Segment dock widget: image + model + mode -> a ``prediction`` labels layer that grows slab by slab.

form -> InferenceConfig -> JobRunner (worker: load the model, ``Segmenter(model, config).plan(volume)``,
``plan.run(out)``) -> each finished region copied into the ``prediction`` layer (Qt thread) -> phase
names/colours, an ``uncertainty`` layer. A volume too big for memory goes into zarr stores next to it.
"Preview" segments the slice on screen and extrapolates the time for the whole volume.

A failed or stopped run puts the previous prediction back; annotations are never touched.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    PushButton,
    SpinBox,
)
from napari.layers import Layer
from napari.qt.threading import create_worker

from napari_tomoseg._napari.advanced import Advanced, threads_box
from napari_tomoseg._napari.devices import DEVICES, detect_devices
from napari_tomoseg._napari.docking import tabify_docks
from napari_tomoseg._napari.files import companion_path
from napari_tomoseg._napari.jobs import JobControls, JobRunner, JobState
from napari_tomoseg._napari.layers import (
    LayerPicker,
    apply_phases,
    check_image_layer,
    current_slice,
    geometry,
    is_image,
    upsert_labels,
)
from napari_tomoseg._napari.models import ModelChooser, ModelInfo
from napari_tomoseg._napari.notify import notify_error, notify_info, notify_warning
from napari_tomoseg._napari.outputs import (
    VoxelSizeField,
    apply_voxel_size,
    layer_voxel_size,
)
from napari_tomoseg._napari.state import state_for
from napari_tomoseg.core.model.modes import AXIS_NAMES, MODES, runnable_modes

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MEMORY_GB",
    "FIELD_OF_VIEW",
    "MODE_LABELS",
    "PREDICTION",
    "PREDICTION_STORE_SUFFIX",
    "UNCERTAINTY",
    "UNCERTAINTY_STORE_SUFFIX",
    "SegmentWidget",
]

#: What the form calls each mode of ``core.model.modes.MODES``.
MODE_LABELS = {
    "2d": "2D along an axis",
    "2d-3axes": "Slices on three axes (averaged)",
    "2.5d": "2.5D (neighbouring slices)",
    "3d": "3D",
}
assert set(MODE_LABELS) == set(MODES)

PREDICTION = "prediction"
UNCERTAINTY = "uncertainty"
FIELD_OF_VIEW = "field of view"
#: The Segment widget's default memory budget: enough for fast slabs of 2048^2 slices.
DEFAULT_MEMORY_GB = 3.0
#: Stores of a volume too big for memory, next to the volume's file (see core.io.labelstore).
PREDICTION_STORE_SUFFIX = ".tomoseg-prediction.zarr"
UNCERTAINTY_STORE_SUFFIX = ".tomoseg-uncertainty.zarr"


def _is_volume(layer: Any) -> bool:
    return is_image(layer) and layer.ndim == 3 and not getattr(layer, "rgb", False)


class MaskPicker(LayerPicker):
    """An optional labels picker that picks only the ``field of view`` layer on its own: any other
    labels layer (annotations, ground truth) is a mask only when the user chooses it."""

    def __init__(self, viewer: napari.viewer.Viewer, **kwargs: Any) -> None:
        super().__init__(viewer, "labels", optional=True, prefer=(FIELD_OF_VIEW,), **kwargs)

    def preferred(self) -> Layer | None:
        return next((ly for ly in self.layers() if ly.name == FIELD_OF_VIEW), None)


@dataclass(frozen=True)
class _Stores:
    """Where the on-disk prediction (and uncertainty) of a big volume go."""

    prediction: Path
    uncertainty: Path | None


def _row(label: str, *widgets: Any) -> Container:
    row = Container(widgets=list(widgets), layout="horizontal", labels=False, label=label)
    row.margins = (0, 0, 0, 0)
    return row


class SegmentWidget(Container):
    """Segment an image layer into phases with a U-Net (bundled, saved, or fine-tuned since napari was opened)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self.viewer = napari_viewer
        self.state = state_for(napari_viewer)
        self.runner = JobRunner("Segmenting")

        self.image = LayerPicker(napari_viewer, "image", label="Image", accept=_is_volume)
        self.voxel_size = VoxelSizeField(
            tooltip="The image's voxel size (z, y, x), read from its file. Correct it here when "
            "the file has none or a wrong one: one number or z,y,x with a unit (µm when none). "
            "Segmenting gives it to the image, the layers drawn over it and the prediction, and "
            "Export writes it into the files."
        )
        self.model = ModelChooser(self.state, label="Model")
        self.mask = MaskPicker(
            napari_viewer,
            tooltip="Voxels outside the mask stay 0 (not segmented) and are left out of scores",
        )
        self.detect_fov = PushButton(
            text="Detect field of view",
            tooltip="Mark the voxels outside the reconstruction circle; they stay 0 (not segmented) "
            "and are left out of scores and fractions",
        )
        self.mode = ComboBox(
            label="Mode",
            choices=[(MODE_LABELS[m], m) for m in MODES],
            tooltip="Only the modes the chosen model can run are offered",
        )
        self.axis = ComboBox(label="Slice axis", choices=AXIS_NAMES, value="z")
        self.device = ComboBox(choices=DEVICES, value="auto")
        self.devices_found = Label(value="looking…")
        self.tile = SpinBox(label="Tile", value=256, min=16, max=4096, step=8)
        self.overlap = SpinBox(label="Overlap", value=32, min=0, max=128)
        self.memory = FloatSpinBox(
            label="Memory budget (GB)",
            value=DEFAULT_MEMORY_GB,
            min=0.5,
            max=4096.0,
            step=0.5,
            tooltip="Memory the segmentation may use (napari's own included): it picks how many "
            "slices are processed at once. The volume itself is read piece by piece.",
        )
        self.ring_removal = CheckBox(
            text="Remove ring artifacts",
            tooltip="Subtract the thin rings that CT puts around the rotation axis (z) before "
            "segmenting, when the volume has any. Set from the model: keep it as the model was "
            "trained.",
        )
        self.keep_uncertainty = CheckBox(
            text="Uncertainty layer (for 'next slice to correct')", value=True
        )
        self.threads = threads_box("computes")
        self.tta = CheckBox(
            text="Test-time augmentation (8x slower, smoother)",
            tooltip="Segment every tile in its 8 flips and rotations (the 8 flips in 3D) and "
            "average the probabilities: fewer isolated wrong voxels and ragged boundaries, 8 "
            "times the network time. Set from the model.",
        )
        self.advanced = Advanced(
            [
                _row("Device", self.device, self.devices_found),
                self.tile,
                self.overlap,
                self.memory,
                self.tta,
                self.threads,
            ],
            text="Advanced options",
        )
        self.preview = PushButton(
            text="Preview slice",
            tooltip="Segment the slice on screen and estimate the time for the whole volume",
        )
        self.controls = JobControls(self.runner, "Segment volume")
        self.controls.also_disable(self.preview, self.detect_fov)
        self.estimate = Label(value="")
        self.estimate.native.setWordWrap(True)
        form = Container(
            widgets=[
                self.image,
                self.voxel_size,
                self.model,
                _row("Mask", self.mask, self.detect_fov),
                self.mode,
                self.axis,
                self.ring_removal,
                self.keep_uncertainty,
            ]
        )
        form.margins = (0, 0, 0, 0)
        super().__init__(
            widgets=[form, self.advanced, self.preview, self.controls, self.estimate], labels=False
        )

        tabify_docks(self)
        self.tile.changed.connect(self._tile_changed)
        self.image.changed.connect(self._show_voxel_size)
        self.model.model_changed.connect(self._model_changed)
        self.preview.changed.connect(lambda: self.run_preview())
        self.controls.run_button.changed.connect(lambda: self.run())
        self.detect_fov.changed.connect(lambda: self.run_detect_fov())
        # A weak connection: it ends with this widget (napari's window close stops running jobs).
        self.state.segment_requested.connect(self._segment_requested)
        self._model_changed()
        self._show_voxel_size()
        self._find_devices()

    # form ------------------------------------------------------------------------------------
    def _show_voxel_size(self, *_: Any) -> None:
        """Show the chosen image's voxel size (empty when unknown)."""
        self.voxel_size.follow(self.image.layer)

    def _apply_voxel_size(self, layer: Any) -> None:
        """Give ``layer`` (and the layers drawn over it) the voxel size in the form, when the user
        changed it; a ValueError says what to write."""
        if apply_voxel_size(self.viewer, layer, self.voxel_size.voxel_size(layer)):
            self.voxel_size.follow(layer)  # as read back: in µm

    def _tile_changed(self, tile: int) -> None:
        # The network sees ``overlap // 2`` more on each side of a tile: at most half a tile.
        self.overlap.max = max(0, int(tile) // 2)

    def _model_changed(self, *_: Any) -> None:
        try:
            info = self.model.info()
        except (ValueError, KeyError) as err:
            notify_error(str(err))
            return
        self.apply_model_defaults(info)

    def apply_model_defaults(self, info: ModelInfo) -> None:
        """Offer the modes the model can run; set mode, axis, tile, overlap, ring removal and
        test-time augmentation to what the model was made for."""
        fits = runnable_modes(info)
        self.mode.choices = [(MODE_LABELS[m], m) for m in fits]
        self.mode.value = info.mode if info.mode in fits else fits[0]
        self.axis.value = info.axis
        self.tile.value = info.tile
        self.overlap.value = info.overlap
        self.ring_removal.value = info.ring_removal
        self.tta.value = info.tta

    def _find_devices(self) -> None:
        # torch is imported in a worker thread: opening the widget never blocks the viewer.
        self._devices_worker = create_worker(detect_devices, _ignore_errors=True)
        self._devices_worker.returned.connect(self._devices_found)
        self._devices_worker.errored.connect(
            lambda err: self._devices_found(None, f"torch unusable: {err}")
        )
        self._devices_worker.start()

    def _devices_found(self, text: str | None, message: str | None = None) -> None:
        try:
            self.devices_found.value = message or f"found: {text}"
        except RuntimeError:  # the widget was closed meanwhile
            pass

    def settings(self) -> dict[str, Any]:
        """The form as keyword arguments of :class:`~napari_tomoseg.core.segment.InferenceConfig`
        (built in the worker, which imports torch)."""
        tile = int(self.tile.value)
        if tile % 8:
            raise ValueError(f"tile must be a multiple of 8, got {tile}")
        return {
            "mode": self.mode.value,
            "axis": self.axis.value,
            "tile": tile,
            "overlap": min(int(self.overlap.value), tile // 2),
            "device": self.device.value,
            "memory": int(self.memory.value * 1e9),
            "ring_removal": bool(self.ring_removal.value),
            "threads": int(self.threads.value) or None,
            "tta": bool(self.tta.value),
        }

    def _inputs(self) -> tuple[Any, Any, Any]:
        """(image layer, volume, mask or None), checked; a ValueError says what to fix."""
        layer = self.image.layer
        volume = check_image_layer(layer)
        mask = None
        mask_layer = self.mask.layer
        if mask_layer is not None:
            mask = mask_layer.data
            if tuple(mask.shape) != tuple(volume.shape):
                raise ValueError(
                    f"mask {mask_layer.name!r} has shape {tuple(mask.shape)} but image "
                    f"{layer.name!r} has {tuple(volume.shape)}; choose a mask of the same volume"
                )
        return layer, volume, mask

    # run -------------------------------------------------------------------------------------
    def _segment_requested(self, model_name: str) -> None:
        """Another widget asked to segment the current image with ``model_name`` (in memory)."""
        try:
            self.native.isVisible()
        except RuntimeError:  # the dock was closed and its Qt widget deleted
            self.state.segment_requested.disconnect(self._segment_requested)
            return
        if self.runner.running:
            notify_warning("The Segment widget is busy; segment again once it has finished")
            return
        self.run(model_name=model_name)

    def run(self, *, model_name: str | None = None) -> bool:
        """Segment the whole volume into the ``prediction`` layer. Returns False if refused.

        ``model_name`` selects a model held in the viewer's memory first (e.g. "fine-tuned 1").
        """
        if self.runner.running:
            return False
        try:
            if model_name is not None:
                self.model.select_memory(model_name)
            layer, volume, mask = self._inputs()
            settings = self.settings()
            load = self.model.loader()
            phases = self.model.info().phases
            self._apply_voxel_size(layer)
        except (ValueError, KeyError) as err:
            notify_error(f"Cannot segment: {err}")
            return False
        from napari_tomoseg.core.io.labelstore import needs_store

        if needs_store(volume.shape):
            try:
                stores = self._store_paths(layer)
            except (ValueError, OSError) as err:
                notify_error(f"Cannot segment: {err}")
                return False
            self._run_to_stores(layer, volume, mask, settings, load, phases, stores)
        else:
            self._run_in_memory(layer, volume, mask, settings, load, phases)
        return True

    def _run_in_memory(
        self,
        layer: Any,
        volume: Any,
        mask: Any,
        settings: dict[str, Any],
        load: Callable[[], Any],
        phases: Any,
    ) -> None:
        shape = tuple(int(s) for s in volume.shape)
        out = np.zeros(shape, np.uint8)
        shown = np.zeros(shape, np.uint8)
        uncertainty = np.zeros(shape, np.float16) if self.keep_uncertainty.value else None
        previous = self._take_prediction()
        # The layer is shown now, while the CPU is free: its first draw (shader compilation, in
        # software OpenGL a good fraction of a second) must not compete with the network.
        state: dict[str, Any] = {"layer": self._show_prediction(shown, layer, phases)}

        def job(token: Any) -> Generator[Any, None, Any]:
            from napari_tomoseg.core.measure.uncertainty import SliceScoreAccumulator
            from napari_tomoseg.core.segment import EntropyWriter, Segmenter

            model = load()
            writer = None
            if uncertainty is not None:
                writer = EntropyWriter(uncertainty, SliceScoreAccumulator(shape))
            plan = Segmenter(model, _inference_config(settings)).plan(
                volume, mask=mask, probabilities=writer is not None
            )
            result = yield from plan.run(out, probabilities_out=writer, cancel=token)
            return model, result, None if writer is None else writer.scores

        def on_yield(ev: Any) -> None:
            shown[ev.region] = out[ev.region]
            state["layer"].refresh()

        def on_return(res: Any) -> None:
            model, result, scores = res
            layer_p = state["layer"]
            shown[...] = out
            layer_p.refresh()
            self._finish(layer_p, layer, model, result, uncertainty, scores)

        self._start(job, on_yield, on_return, self._restorer(previous, state), shape)

    def _restorer(self, previous: Any, state: dict[str, Any]) -> Callable[..., None]:
        """What a stopped or failed run calls: put ``previous`` (see :meth:`_take_prediction`) back
        into the layer the run showed (``state["layer"]``)."""

        def restore(*_: Any) -> None:
            self._restore_prediction(previous, state["layer"])
            if self.runner.state is not JobState.FAILED:
                self.controls.status.value = "Stopped; the previous prediction was kept"

        return restore

    def _start(
        self,
        job: Any,
        on_yield: Callable[[Any], None],
        on_return: Callable[[Any], None],
        restore: Callable[..., None],
        shape: tuple[int, ...],
    ) -> None:
        self.controls.status.value = "Segmenting…"
        self.runner.start(
            job,
            on_yield=on_yield,
            on_return=on_return,
            on_error=restore,
            on_stopped=restore,
            total=int(np.prod(shape)),
            describe=lambda ev: (
                ev.done,
                f"{ev.fraction:.0%}" + (f", {ev.eta:.0f} s left" if math.isfinite(ev.eta) else ""),
            ),
        )

    def _finish(
        self, layer_p: Any, image: Any, model: Any, result: Any, uncertainty: Any, scores: Any
    ) -> None:
        """Phase table, provenance, uncertainty layer and status once a run has completed."""
        apply_phases(layer_p, model.phases)
        layer_p.metadata.update(
            {
                "tomoseg_model": str(model.source) if model.source else "in memory",
                "tomoseg_image": image.name,
                "tomoseg_seconds": result.seconds,
                "tomoseg_device": result.device,
                "tomoseg_settings": {
                    "mode": result.settings.mode,
                    "axis": AXIS_NAMES[result.settings.axis],
                    "tile": result.settings.tile,
                    "overlap": result.settings.overlap,
                    "tta": result.settings.tta,
                },
                "tomoseg_provenance": dict(model.provenance),
            }
        )
        voxel = layer_voxel_size(layer_p)
        layer_p.metadata["tomoseg_voxel_size_um"] = None if voxel is None else list(voxel)
        if uncertainty is not None:
            self._show_uncertainty(uncertainty, image, scores)
        shape = tuple(int(s) for s in layer_p.data.shape)
        text = (
            f"Segmented {'×'.join(map(str, shape))} voxels in {result.seconds:.1f} s on "
            f"{result.device} ({result.precision})"
        )
        self.controls.status.value = text
        notify_info(text)

    # big volumes: prediction and uncertainty in zarr stores next to the volume -------------------
    def _store_paths(self, image: Any) -> _Stores:
        """Where the on-disk prediction (and uncertainty) of ``image`` go; refuses to replace a
        folder napari-tomoseg did not write."""
        from napari_tomoseg.core.io.labelstore import is_store

        stores = _Stores(
            companion_path(image, PREDICTION_STORE_SUFFIX),
            companion_path(image, UNCERTAINTY_STORE_SUFFIX)
            if self.keep_uncertainty.value
            else None,
        )
        for kind, path in (("labels", stores.prediction), ("volume", stores.uncertainty)):
            if path is None:
                continue
            if path.exists() and not is_store(path, kind):  # type: ignore[arg-type]
                raise FileExistsError(
                    f"{path} exists and was not written by napari-tomoseg; move it away so the "
                    "segmentation can be stored there"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
        return stores

    def _run_to_stores(
        self,
        layer: Any,
        volume: Any,
        mask: Any,
        settings: dict[str, Any],
        load: Callable[[], Any],
        phases: Any,
        stores: _Stores,
    ) -> None:
        """Segment a volume too big for memory: regions go straight into zarr stores (written under
        a temporary name, renamed onto ``<volume>.tomoseg-prediction.zarr`` when complete); the
        ``prediction`` layer shows the store as it fills. A stopped or failed run deletes the
        partial store and leaves the previous prediction as it was."""
        shape = tuple(int(s) for s in volume.shape)
        voxel = layer_voxel_size(layer)
        previous = self._take_prediction()
        state: dict[str, Any] = {"layer": None, "labels": None, "last_refresh": 0.0}

        def job(token: Any) -> Generator[Any, None, Any]:
            from napari_tomoseg.core.io.labelstore import LABEL_CHUNKS
            from napari_tomoseg.core.measure.uncertainty import SliceScoreAccumulator
            from napari_tomoseg.core.segment import Segmenter, prediction_stores

            model = load()
            scores = SliceScoreAccumulator(shape) if stores.uncertainty is not None else None
            plan = Segmenter(model, _inference_config(settings)).plan(
                volume, mask=mask, probabilities=scores is not None
            )
            # Chunks a viewer reads quickly (a few slices), rather than the plan's write chunks.
            with prediction_stores(
                stores.prediction,
                shape,
                phases=model.phases,
                chunks=LABEL_CHUNKS,
                uncertainty=stores.uncertainty,
                voxel_size=voxel,
                scores=scores,
                overwrite=True,
            ) as out:
                state["labels"] = out.labels
                result = yield from plan.run(
                    out.out, probabilities_out=out.probabilities_out, cancel=token
                )
            # The stores are complete and renamed into place here.
            return model, result, scores

        def on_yield(ev: Any) -> None:
            if state["layer"] is None and state["labels"] is not None:
                state["layer"] = self._show_prediction(state["labels"], layer, phases)
            now = time.monotonic()
            if state["layer"] is not None and now - state["last_refresh"] > 0.5:
                state["last_refresh"] = now
                state["layer"].refresh()

        def on_return(res: Any) -> None:
            from napari_tomoseg.core.io.labelstore import open_store

            model, result, scores = res
            data = open_store(stores.prediction, shape=shape, kind="labels")
            layer_p = self._show_prediction(data, layer, phases)
            uncertainty = None
            if scores is not None:
                uncertainty = open_store(stores.uncertainty, shape=shape, mode="r")
            self._finish(layer_p, layer, model, result, uncertainty, scores)
            layer_p.metadata["tomoseg_store"] = str(stores.prediction)

        self._start(job, on_yield, on_return, self._restorer(previous, state), shape)

    # layers ----------------------------------------------------------------------------------
    def _take_prediction(self) -> Any:
        """Remember the current prediction layer's data so a failed run can put it back."""
        if PREDICTION in self.viewer.layers:
            ly = self.viewer.layers[PREDICTION]
            return (ly.data, dict(ly.metadata))
        return None

    def _show_prediction(self, data: Any, image: Any, phases: Any) -> Any:
        return upsert_labels(self.viewer, PREDICTION, data, like=image, phases=phases, opacity=0.5)

    def _restore_prediction(self, previous: Any, added: Any) -> None:
        if added is None:
            return
        if previous is None:
            if added in self.viewer.layers:
                self.viewer.layers.remove(added)
            return
        data, metadata = previous
        added.data = data
        added.metadata.clear()
        added.metadata.update(metadata)
        phases_json = metadata.get("tomoseg_phases")
        if phases_json:
            from napari_tomoseg.core.phases import PhaseTable

            apply_phases(added, PhaseTable.from_json(phases_json))

    def _show_uncertainty(self, uncertainty: Any, image: Any, scores: Any = None) -> None:
        self.state.uncertainty = uncertainty
        self.state.slice_scores = scores
        self.state.uncertainty_image = image.name
        top = 255.0 if np.dtype(uncertainty.dtype) == np.uint8 else 1.0
        if UNCERTAINTY in self.viewer.layers and is_image(self.viewer.layers[UNCERTAINTY]):
            ly = self.viewer.layers[UNCERTAINTY]
            ly.data = uncertainty
            ly.contrast_limits = (0.0, top)
        else:
            self.viewer.add_image(
                uncertainty,
                name=UNCERTAINTY,
                **geometry(image),
                colormap="magma",
                contrast_limits=(0.0, top),
                blending="additive",
                visible=False,
            )

    # preview ---------------------------------------------------------------------------------
    def run_preview(self) -> bool:
        """Segment the slice on screen (along the slice axis) and estimate the whole volume's time."""
        if self.runner.running:
            return False
        try:
            layer, volume, mask = self._inputs()
            settings = self.settings()
            load = self.model.loader()
            phases = self.model.info().phases
            self._apply_voxel_size(layer)
        except (ValueError, KeyError) as err:
            notify_error(f"Cannot preview: {err}")
            return False
        axis = AXIS_NAMES.index(settings["axis"])
        _, index = current_slice(self.viewer, axis)
        shape = tuple(int(s) for s in volume.shape)
        index = min(max(index, 0), shape[axis] - 1)
        mode = settings["mode"]

        def job(token: Any) -> Generator[Any, None, Any]:
            from napari_tomoseg.core.segment import Segmenter

            model = load()
            segmenter = Segmenter(model, _inference_config({**settings, "memory": None}))
            k = model.config.in_channels
            # Context around the slice: the slice alone for 2D, its neighbours for 2.5D, a slab for
            # 3D / three axes.
            half = 0 if mode == "2d" else (k // 2 if mode == "2.5d" else 8)
            lo, hi = max(0, index - half), min(shape[axis], index + half + 1)
            region: list[Any] = [slice(None)] * 3
            region[axis] = slice(lo, hi)
            # Ring removal and the grey range need the whole volume (whole slices, a subsample).
            prepared, grey_range = segmenter.prepare(volume)
            sub = np.asarray(prepared[tuple(region)])
            sub_mask = None if mask is None else np.asarray(mask[tuple(region)])
            t0 = time.perf_counter()
            plan = segmenter.with_options(block=hi - lo).plan(
                sub, mask=sub_mask, grey_range=grey_range
            )
            result = yield from plan.run(cancel=token)
            seconds = time.perf_counter() - t0
            take: list[Any] = [slice(None)] * 3
            take[axis] = index - lo
            labels = np.asarray(result.labels[tuple(take)])
            per_voxel = seconds / sub.size
            return labels, seconds, per_voxel * int(np.prod(shape)), result.device

        def on_return(res: Any) -> None:
            labels, seconds, estimate, device = res
            if (
                PREDICTION in self.viewer.layers
                and tuple(self.viewer.layers[PREDICTION].data.shape) == shape
            ):
                ly = self.viewer.layers[PREDICTION]
            else:
                ly = self._show_prediction(np.zeros(shape, np.uint8), layer, phases)
            where: list[Any] = [slice(None)] * 3
            where[axis] = index
            ly.data[tuple(where)] = labels
            apply_phases(ly, phases)
            ly.refresh()
            self.estimate.value = (
                f"Preview of slice {AXIS_NAMES[axis]}={index} in {seconds:.2f} s on {device}; the "
                f"whole volume will take about {_duration(estimate)}"
            )

        self.estimate.value = "Previewing…"
        self.runner.start(job, on_return=on_return)
        return True

    # field of view ---------------------------------------------------------------------------
    def run_detect_fov(self) -> bool:
        """Detect the cylindrical field of view and add it as a ``field of view`` mask layer."""
        if self.runner.running:
            return False
        try:
            layer = self.image.layer
            volume = check_image_layer(layer)
            axis = AXIS_NAMES.index(self.axis.value)
        except ValueError as err:
            notify_error(f"Cannot detect the field of view: {err}")
            return False

        def job(token: Any) -> Generator[Any, None, Any]:
            from napari_tomoseg.core.prep.mask import detect_field_of_view

            yield from ()
            return detect_field_of_view(volume, axis=axis)

        def on_return(fov: Any) -> None:
            if fov is None:
                notify_info(
                    "No circular field of view found (no constant border around the specimen): "
                    "the volume seems cropped already; no mask is needed"
                )
                return
            disc = np.expand_dims(fov.disc().astype(np.uint8), axis)
            data = np.broadcast_to(disc, fov.shape)  # read-only view: no memory per slice
            if FIELD_OF_VIEW in self.viewer.layers:
                self.viewer.layers.remove(FIELD_OF_VIEW)
            ly = self.viewer.add_labels(data, name=FIELD_OF_VIEW, **geometry(layer), opacity=0.2)
            ly.features = {"index": [0, 1], "phase": ["outside", "inside"]}
            self.mask.select(ly)
            self.controls.status.value = (
                f"Field of view: radius {fov.radius:.0f} voxels, {fov.inside_fraction:.0%} of each "
                "slice"
            )

        self.runner.start(job, on_return=on_return)
        return True


def _inference_config(settings: dict[str, Any]) -> Any:
    """The :class:`~napari_tomoseg.core.segment.InferenceConfig` of :meth:`SegmentWidget.settings`,
    after setting torch's thread count (``settings["threads"]``, None: automatic) for the calling
    thread: jobs call it in their worker thread, where torch then computes."""
    from napari_tomoseg.core.segment import InferenceConfig
    from napari_tomoseg.core.threads import configure_threads

    options = dict(settings)
    configure_threads(options.pop("threads", None))
    return InferenceConfig(**options)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
