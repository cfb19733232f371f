"""The Segment dock widget: image + model + mode -> a ``prediction`` labels layer that grows slab by slab.

form -> InferenceConfig -> JobRunner (worker: load model, Predictor, core iter_segment) -> each finished
slab copied into the ``prediction`` layer (Qt thread) -> phase names/colours, an ``uncertainty`` layer.
"Preview" segments the slice on screen and extrapolates the time for the whole volume.

A failed or stopped run puts the previous prediction back; annotations are never touched.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_tomoseg._napari._common import (
    JobControls,
    JobRunner,
    JobState,
    LayerCombo,
    apply_phases,
    check_image_layer,
    companion_path,
    current_slice,
    geometry,
    notify_error,
    notify_info,
    session,
    upsert_labels,
    voxel_size,
)
from napari_tomoseg._napari._models import ModelChooser, ModelInfo

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

MODES = {
    "2D along an axis": "2d",
    "Slices on three axes (averaged)": "2d-3axes",
    "2.5D (neighbouring slices)": "2.5d",
    "3D": "3d",
}

AXES = ("z", "y", "x")
DEVICES = ("auto", "cpu", "cuda", "mps")
PREDICTION = "prediction"
UNCERTAINTY = "uncertainty"
#: The Segment widget's default memory budget: enough for fast slabs of 2048^2 slices.
DEFAULT_MEMORY_GB = 3.0
#: Stores of a volume too big for memory, next to the volume's file (see core.labelstore).
PREDICTION_STORE_SUFFIX = ".tomoseg-prediction.zarr"
UNCERTAINTY_STORE_SUFFIX = ".tomoseg-uncertainty.zarr"


def fitting_modes(ndim: int, in_channels: int) -> set[str]:
    """The modes a network with ``ndim`` spatial dimensions and ``in_channels`` inputs can run
    (the rule ``core.inference.resolve`` enforces)."""
    if ndim == 3:
        return {"3d"}
    return {"2d-3axes", "2.5d" if in_channels > 1 else "2d"}


def _is_volume(layer: Any) -> bool:
    return layer.ndim == 3 and not getattr(layer, "rgb", False)


def detect_devices() -> str:
    """A short description of the compute devices torch can use (imports torch: call in a worker)."""
    import torch

    found = []
    if torch.cuda.is_available():
        found += [
            f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())
        ]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps (Apple GPU)")
    found.append(f"cpu ({torch.get_num_threads()} threads)")
    return ", ".join(found)


class _EntropySink:
    """A stand-in for ``probabilities_out`` that keeps, of each block, only its normalised entropy
    (float in memory, or ``255 x`` entropy in a uint8 store) and the per-slice sums for ranking."""

    def __init__(self, out: Any, scores: Any) -> None:
        self.out = out
        self.scores = scores
        self._quantize = np.dtype(out.dtype) == np.uint8

    def __setitem__(self, key: tuple[slice, ...], probs: np.ndarray) -> None:
        from napari_tomoseg.core.measure.uncertainty import entropy

        u = entropy(probs.astype(np.float32))
        self.scores.add(key[1:], u)
        if self._quantize:
            self.out[key[1:]] = np.rint(u * 255.0).astype(np.uint8)
        else:
            self.out[key[1:]] = u.astype(self.out.dtype)


class SegmentWidget(QWidget):
    """Segment an image layer into phases with a U-Net (bundled, saved, or fine-tuned in this session)."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session(napari_viewer)
        self.session.widgets["segment"] = self
        self.runner = JobRunner("Segmenting")

        self.image = LayerCombo(napari_viewer, "image", accept=_is_volume)
        self.model = ModelChooser(self.session)
        self.mask = LayerCombo(napari_viewer, "labels", optional=True)
        self.detect_fov = QPushButton("Detect field of view")
        self.detect_fov.setToolTip(
            "Mark the voxels outside the reconstruction circle; they stay 0 (not segmented) and are "
            "left out of scores and fractions"
        )
        self.mode = QComboBox()
        self.mode.addItems(list(MODES))
        self.axis = QComboBox()
        self.axis.addItems(list(AXES))
        self.device = QComboBox()
        self.device.addItems(list(DEVICES))
        self.devices_found = QLabel("looking…")
        self.tile = QSpinBox()
        self.tile.setRange(16, 4096)
        self.tile.setSingleStep(8)
        self.overlap = QSpinBox()
        self.overlap.setRange(0, 1024)
        self.memory = QDoubleSpinBox()
        self.memory.setRange(0.5, 4096.0)
        self.memory.setDecimals(1)
        self.memory.setSingleStep(0.5)
        self.memory.setSuffix(" GB")
        self.memory.setValue(DEFAULT_MEMORY_GB)
        self.memory.setToolTip(
            "Memory the segmentation may use (napari's own included): it picks how many slices are "
            "processed at once. The volume itself is read piece by piece."
        )
        self.ring_removal = QCheckBox("Remove ring artifacts")
        self.ring_removal.setToolTip(
            "Subtract the thin rings that CT puts around the rotation axis (z) before segmenting, "
            "when the volume has any. Set from the model: keep it as the model was trained."
        )
        self.keep_uncertainty = QCheckBox("Uncertainty layer (for 'next slice to correct')")
        self.keep_uncertainty.setChecked(True)
        self.preview = QPushButton("Preview slice")
        self.preview.setToolTip(
            "Segment the slice on screen and estimate the time for the whole volume"
        )
        self.controls = JobControls(self.runner, "Segment volume")
        self.controls.also_disable(self.preview, self.detect_fov)
        self.estimate = QLabel("")
        self.estimate.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Image", self.image)
        form.addRow("Model", self.model)
        mask_row = QHBoxLayout()
        mask_row.addWidget(self.mask, 1)
        mask_row.addWidget(self.detect_fov)
        form.addRow("Mask", mask_row)
        form.addRow("Mode", self.mode)
        form.addRow("Slice axis", self.axis)
        dev_row = QHBoxLayout()
        dev_row.addWidget(self.device)
        dev_row.addWidget(self.devices_found, 1)
        form.addRow("Device", dev_row)
        form.addRow("Tile", self.tile)
        form.addRow("Overlap", self.overlap)
        form.addRow("Memory budget", self.memory)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.ring_removal)
        layout.addWidget(self.keep_uncertainty)
        layout.addWidget(self.preview)
        layout.addWidget(self.controls)
        layout.addWidget(self.estimate)
        layout.addWidget(self.controls.status)
        layout.addStretch(1)

        self.model.currentIndexChanged.connect(self._model_changed)
        self.preview.clicked.connect(self.run_preview)
        self.controls.run_button.clicked.connect(lambda: self.run())
        self.detect_fov.clicked.connect(self.run_detect_fov)
        self._model_changed()
        self._find_devices()

    # form ------------------------------------------------------------------------------------
    def _model_changed(self, *_: Any) -> None:
        try:
            info = self.model.info()
        except (ValueError, KeyError) as err:
            notify_error(str(err))
            return
        self.apply_model_defaults(info)

    def apply_model_defaults(self, info: ModelInfo) -> None:
        """Set mode, axis, tile, overlap and ring removal to what the model was made for."""
        fits = fitting_modes(info.ndim, info.in_channels)
        model = self.mode.model()
        for row, mode in enumerate(MODES.values()):
            item = model.item(row)
            item.setEnabled(mode in fits)
            item.setToolTip("" if mode in fits else "this model cannot run in this mode")
        mode_label = next(k for k, v in MODES.items() if v == info.mode)
        self.mode.setCurrentText(mode_label)
        self.axis.setCurrentText(info.axis)
        self.tile.setValue(info.tile)
        self.overlap.setValue(info.overlap)
        self.ring_removal.setChecked(info.ring_removal)

    def _find_devices(self) -> None:
        # torch is imported in a worker thread: opening the widget never blocks the viewer.
        self._devices_worker = create_worker(detect_devices, _ignore_errors=True)
        self._devices_worker.returned.connect(self._devices_found)
        self._devices_worker.errored.connect(
            lambda err: self.devices_found.setText(f"torch unusable: {err}")
        )
        self._devices_worker.start()

    def _devices_found(self, text: str) -> None:
        try:
            self.devices_found.setText(f"found: {text}")
        except RuntimeError:  # widget closed meanwhile
            pass

    def settings(self) -> dict[str, Any]:
        """The form as keyword arguments of :class:`~napari_tomoseg.core.segment.InferenceConfig`
        (built in the worker, which imports torch)."""
        tile = self.tile.value()
        if tile % 8:
            raise ValueError(f"tile must be a multiple of 8, got {tile}")
        return {
            "mode": MODES[self.mode.currentText()],
            "axis": self.axis.currentText(),
            "tile": tile,
            "overlap": min(self.overlap.value(), tile // 2),
            "device": self.device.currentText(),
            "memory": int(self.memory.value() * 1e9),
            "ring_removal": self.ring_removal.isChecked(),
        }

    def _inputs(self) -> tuple[Any, Any, Any]:
        """(image layer, volume, mask or None), checked; ValueError says what to fix."""
        layer = self.image.layer()
        volume = check_image_layer(layer)
        mask = None
        mask_layer = self.mask.layer()
        if mask_layer is not None:
            mask = mask_layer.data
            if tuple(mask.shape) != tuple(volume.shape):
                raise ValueError(
                    f"mask {mask_layer.name!r} has shape {tuple(mask.shape)} but image "
                    f"{layer.name!r} has {tuple(volume.shape)}; choose a mask of the same volume"
                )
        return layer, volume, mask

    # run -------------------------------------------------------------------------------------
    def run(self, *, model_name: str | None = None) -> bool:
        """Segment the whole volume into the ``prediction`` layer. Returns False if refused.

        ``model_name`` selects a model held in this session's memory first (e.g. "fine-tuned").
        """
        if self.runner.running:
            return False
        if model_name is not None:
            self.model.select_memory(model_name)
        try:
            layer, volume, mask = self._inputs()
            settings = self.settings()
            load = self.model.loader()
            phases = self.model.info().phases
        except (ValueError, KeyError) as err:
            notify_error(f"Cannot segment: {err}")
            return False
        shape = tuple(int(s) for s in volume.shape)
        keep_uncertainty = self.keep_uncertainty.isChecked()
        from napari_tomoseg.core.io.labelstore import needs_store

        if needs_store(shape):
            try:
                stores = self._store_paths(layer, keep_uncertainty)
            except (ValueError, OSError) as err:
                notify_error(f"Cannot segment: {err}")
                return False
            self._run_to_stores(layer, volume, mask, settings, load, phases, stores)
            return True
        out = np.zeros(shape, np.uint8)
        shown = np.zeros(shape, np.uint8)
        uncertainty = np.zeros(shape, np.float16) if keep_uncertainty else None
        previous = self._take_prediction()
        # The layer is shown now, while the CPU is free: its first draw (shader compilation, in
        # software OpenGL a good fraction of a second) must not compete with the network.
        state: dict[str, Any] = {"layer": self._show_prediction(shown, layer, phases)}

        def job(token: Any) -> Generator[Any, None, Any]:
            from napari_tomoseg.core.measure.uncertainty import SliceScoreAccumulator
            from napari_tomoseg.core.segment import InferenceConfig, Predictor, iter_segment

            config = InferenceConfig(**settings)
            model = load()
            predictor = Predictor(model, device=config.device, precision=config.precision)
            sink = None
            if uncertainty is not None:
                sink = _EntropySink(uncertainty, SliceScoreAccumulator(shape))
                state["scores"] = sink.scores
            result = yield from iter_segment(
                volume,
                predictor,
                config,
                out=out,
                probabilities_out=sink,
                mask=mask,
                cancel=token,
            )
            return model, result

        def on_yield(ev: Any) -> None:
            shown[ev.region] = out[ev.region]
            state["layer"].refresh()

        def on_return(res: Any) -> None:
            model, result = res
            layer_p = state["layer"]
            shown[...] = out
            layer_p.refresh()
            self._finish(layer_p, layer, model, result, uncertainty, state.get("scores"))

        self._start(job, on_yield, on_return, self._restorer(previous, state), shape)
        return True

    def _restorer(self, previous: Any, state: dict[str, Any]) -> Any:
        """What a stopped or failed run calls: put ``previous`` (see :meth:`_take_prediction`) back
        into the layer the run showed (``state["layer"]``)."""

        def restore(*_: Any) -> None:
            self._restore_prediction(previous, state["layer"])
            if self.runner.state is not JobState.FAILED:
                self.controls.status.setText("Stopped; the previous prediction was kept")

        return restore

    def _start(
        self, job: Any, on_yield: Any, on_return: Any, restore: Any, shape: tuple[int, ...]
    ) -> None:
        self.controls.status.setText("Segmenting…")
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
                    "axis": AXES[result.settings.axis],
                    "tile": result.settings.tile,
                    "overlap": result.settings.overlap,
                },
                "tomoseg_provenance": dict(model.provenance),
            }
        )
        if uncertainty is not None:
            self._show_uncertainty(uncertainty, image, scores)
        shape = tuple(int(s) for s in layer_p.data.shape)
        text = (
            f"Segmented {'×'.join(map(str, shape))} voxels in {result.seconds:.1f} s on "
            f"{result.device} ({result.precision})"
        )
        self.controls.status.setText(text)
        notify_info(text)

    # big volumes: prediction and uncertainty in zarr stores next to the volume -------------------
    def _store_paths(self, image: Any, keep_uncertainty: bool) -> dict[str, Any]:
        """Where the on-disk prediction (and uncertainty) of ``image`` go; refuses to replace a
        folder napari-tomoseg did not write."""
        from napari_tomoseg.core.io.labelstore import is_store

        paths: dict[str, Any] = {"prediction": companion_path(image, PREDICTION_STORE_SUFFIX)}
        paths["uncertainty"] = (
            companion_path(image, UNCERTAINTY_STORE_SUFFIX) if keep_uncertainty else None
        )
        for kind, path in (("labels", paths["prediction"]), ("volume", paths["uncertainty"])):
            if path is not None and path.exists() and not is_store(path, kind):  # type: ignore[arg-type]
                raise FileExistsError(
                    f"{path} exists and was not written by napari-tomoseg; move it away so the "
                    "segmentation can be stored there"
                )
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
        return paths

    def _run_to_stores(
        self,
        layer: Any,
        volume: Any,
        mask: Any,
        settings: dict[str, Any],
        load: Any,
        phases: Any,
        stores: dict[str, Any],
    ) -> None:
        """Segment a volume too big for memory: blocks go straight into zarr stores (written under
        a temporary name, renamed onto ``<volume>.tomoseg-prediction.zarr`` when complete); the
        ``prediction`` layer shows the store as it fills. A stopped or failed run deletes the
        partial store and leaves the previous prediction as it was."""
        shape = tuple(int(s) for s in volume.shape)
        voxel = voxel_size(layer)
        previous = self._take_prediction()
        state: dict[str, Any] = {"layer": None, "out": None, "last_refresh": 0.0}

        def job(token: Any) -> Generator[Any, None, Any]:
            import contextlib

            from napari_tomoseg.core.io import streaming_output
            from napari_tomoseg.core.io.labelstore import LABEL_CHUNKS
            from napari_tomoseg.core.measure.uncertainty import SliceScoreAccumulator
            from napari_tomoseg.core.segment import InferenceConfig, Predictor, iter_segment

            config = InferenceConfig(**settings)
            model = load()
            predictor = Predictor(model, device=config.device, precision=config.precision)
            with contextlib.ExitStack() as stack:
                out = stack.enter_context(
                    streaming_output(
                        stores["prediction"],
                        shape,
                        phases=model.phases,
                        voxel_size=voxel,
                        chunks=LABEL_CHUNKS,
                        overwrite=True,
                    )
                )
                sink = None
                if stores["uncertainty"] is not None:
                    unc = stack.enter_context(
                        streaming_output(
                            stores["uncertainty"],
                            shape,
                            kind="volume",
                            voxel_size=voxel,
                            chunks=LABEL_CHUNKS,
                            overwrite=True,
                        )
                    )
                    sink = _EntropySink(unc, SliceScoreAccumulator(shape))
                state["out"] = out
                result = yield from iter_segment(
                    volume,
                    predictor,
                    config,
                    out=out,
                    probabilities_out=sink,
                    mask=mask,
                    cancel=token,
                )
            # The stores are complete and renamed into place here.
            return model, result, None if sink is None else sink.scores

        def on_yield(ev: Any) -> None:
            if state["layer"] is None and state["out"] is not None:
                state["layer"] = self._show_prediction(state["out"], layer, phases)
            now = time.monotonic()
            if state["layer"] is not None and now - state["last_refresh"] > 0.5:
                state["last_refresh"] = now
                state["layer"].refresh()

        def on_return(res: Any) -> None:
            from napari_tomoseg.core.io.labelstore import open_store

            model, result, scores = res
            data = open_store(stores["prediction"], shape=shape, kind="labels")
            layer_p = self._show_prediction(data, layer, phases)
            uncertainty = None
            if scores is not None:
                uncertainty = open_store(stores["uncertainty"], shape=shape, mode="r")
            self._finish(layer_p, layer, model, result, uncertainty, scores)
            layer_p.metadata["tomoseg_store"] = str(stores["prediction"])

        self._start(job, on_yield, on_return, self._restorer(previous, state), shape)

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
        self.session.uncertainty = uncertainty
        self.session.slice_scores = scores
        self.session.uncertainty_image = image.name
        top = 255.0 if np.dtype(uncertainty.dtype) == np.uint8 else 1.0
        if (
            UNCERTAINTY in self.viewer.layers
            and self.viewer.layers[UNCERTAINTY]._type_string == "image"
        ):
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
        except (ValueError, KeyError) as err:
            notify_error(f"Cannot preview: {err}")
            return False
        axis = AXES.index(settings["axis"])
        _, index = current_slice(self.viewer, axis)
        shape = tuple(int(s) for s in volume.shape)
        index = min(max(index, 0), shape[axis] - 1)
        mode = settings["mode"]

        def job(token: Any) -> Generator[Any, None, Any]:
            from napari_tomoseg.core.segment import InferenceConfig, Predictor, iter_segment

            model = load()
            predictor = Predictor(model, device=settings["device"])
            k = model.config.in_channels
            # Context around the slice: the slice alone for 2D, its neighbours for 2.5D, a slab for
            # 3D / three axes.
            half = 0 if mode == "2d" else (k // 2 if mode == "2.5d" else 8)
            lo, hi = max(0, index - half), min(shape[axis], index + half + 1)
            region: list[Any] = [slice(None)] * 3
            region[axis] = slice(lo, hi)
            # Ring removal and the grey range need the whole volume (whole slices, a subsample).
            prepared = model.normalization.prepare(volume, ring_removal=settings["ring_removal"])
            sub = np.asarray(prepared[tuple(region)])
            sub_mask = None if mask is None else np.asarray(mask[tuple(region)])
            grey_range = model.normalization.volume_range(prepared)
            t0 = time.perf_counter()
            result = yield from iter_segment(
                sub,
                predictor,
                InferenceConfig(**{**settings, "memory": None}, block=hi - lo),
                mask=sub_mask,
                grey_range=grey_range,
                cancel=token,
            )
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
            text = (
                f"Preview of slice {AXES[axis]}={index} in {seconds:.2f} s on {device}; the whole "
                f"volume will take about {_duration(estimate)}"
            )
            self.estimate.setText(text)

        self.estimate.setText("Previewing…")
        self.runner.start(job, on_return=on_return)
        return True

    # field of view ---------------------------------------------------------------------------
    def run_detect_fov(self) -> bool:
        """Detect the cylindrical field of view and add it as a ``field of view`` mask layer."""
        if self.runner.running:
            return False
        try:
            layer = self.image.layer()
            volume = check_image_layer(layer)
            axis = AXES.index(self.axis.currentText())
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
            name = "field of view"
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            ly = self.viewer.add_labels(data, name=name, **geometry(layer), opacity=0.2)
            ly.features = {"index": [0, 1], "phase": ["outside", "inside"]}
            self.mask.set_layer(name)
            self.controls.status.setText(
                f"Field of view: radius {fov.radius:.0f} voxels, {fov.inside_fraction:.0%} of each slice"
            )

        self.runner.start(job, on_return=on_return)
        return True

    def closeEvent(self, event: Any) -> None:
        self.runner.quit()
        super().closeEvent(event)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
