"""Dock widget: segment the selected image layer with a layernet model, in a worker thread.

Controls: the image layer, the model (a run folder, a model file or a pretrained model's name
such as ``worms``; the field accepts any string that
:func:`layernet.batch_predict.load_predictor` accepts), Algorithm 1's ``tau`` and
``min_size`` (set to the model's values, tuned ``thresholds.json`` included, whenever the model
changes), test-time augmentation, Run and Cancel. The model is loaded once and kept; running
again on the same image with other thresholds reuses the network's maps.

The prediction runs in a napari worker thread (:func:`napari.qt.threading.create_worker`), so the
viewer stays responsive, which hands the image to a process of its own that runs TensorFlow
(:class:`layernet.napari.runner.ModelRunner`: TensorFlow and napari's OpenGL canvas crash when
they share a process on Linux). The widget's progress bar follows the stages and the tiles of a
large image, and napari's activity panel shows the running task; Cancel stops the process. The result is added as the reader adds
a prediction (:func:`layernet.napari.layers.prediction_layer_data`): ``<image> slice <k>`` Labels
layers and ``<image> outlines``, replacing those of an earlier run on the same image. Errors (no
image, a bad model, an image the model cannot take) are napari notifications of one line.

For an image layer with more than two dimensions (a time series, a z-stack) the plane shown in
the viewer is segmented, and the layers are named after it (``<image> [3] slice 1``).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label,
                              ProgressBar, PushButton, SpinBox)
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal

from layernet.napari.layers import prediction_layer_data
from layernet.napari.reader import add_layer_data
from layernet.napari.runner import ModelRunner, PredictionJob, PredictionOutcome, model_defaults

logger = logging.getLogger(__name__)

__all__ = ["PredictWidget", "image_plane"]

DEFAULT_TAU = 0.5
DEFAULT_MIN_SIZE = 250


class _Relay(QObject):
    """Carries progress from the worker thread to the GUI thread (a queued Qt signal)."""

    progress = Signal(int, int, str)


def image_plane(layer: Any, viewer: Any) -> tuple[Any, tuple[int, ...]]:
    """The 2-D (or RGB) image of an Image layer that the viewer shows, and its index.

    Parameters
    ----------
    layer : napari.layers.Image
        The layer (multiscale: its full-resolution level).
    viewer : napari.Viewer
        Gives the current position on the non-displayed axes.

    Returns
    -------
    image : array-like
        ``(H, W)`` or ``(H, W, C)`` (RGB layers); lazy arrays stay lazy.
    index : tuple of int
        Index of the plane on the leading axes (empty for a 2-D layer).
    """
    data = layer.data[0] if layer.multiscale else layer.data
    leading = data.ndim - (3 if layer.rgb else 2)
    if leading <= 0:
        return data, ()
    position = np.asarray(layer.world_to_data(viewer.dims.point), dtype=float)
    index = tuple(int(np.clip(np.round(value), 0, size - 1))
                  for value, size in zip(position[:leading], data.shape[:leading]))
    return data[index], index


class PredictWidget(Container):
    """Segment an image layer with a layernet model (napari dock widget).

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose image layers it segments (napari passes it); its model
        (:class:`napari.components.ViewerModel`) works too.
    model : str, optional
        Initial model (default: the newest run under ``./runs``, as ``predict.py``, else the
        first pretrained model by name, if any).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, model: str | None = None) -> None:
        super().__init__(labels=True)
        self.viewer = napari_viewer
        self.runner = ModelRunner()
        self.worker: Any = None
        self.last_outcome: PredictionOutcome | None = None
        self._cancel = threading.Event()
        self._outputs: dict[str, list[Any]] = {}
        self._relay = _Relay()
        self._relay.progress.connect(self._on_progress)

        self.image = ComboBox(label="image", choices=self._image_choices,
                              tooltip="the image layer to segment")
        self.model = FileEdit(mode="d", label="model", tooltip=(
            "run folder (choose it), or type a model file such as runs/x/best.h5 or a "
            "pretrained model's name such as worms"))
        self.tau = FloatSpinBox(label="tau", value=DEFAULT_TAU, min=0.01, max=0.99, step=0.05,
                                tooltip="Algorithm 1: threshold of the foreground and layers")
        self.min_size = SpinBox(label="min size", value=DEFAULT_MIN_SIZE, min=0,
                                max=10_000_000, step=10,
                                tooltip="Algorithm 1: smallest object in pixels")
        self.tta = CheckBox(text="test-time augmentation (8x slower)", value=False)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", value=0, min=0, max=3)
        self.status = Label(label="status", value="")
        self.extend([self.image, self.model, self.tau, self.min_size, self.tta,
                     Container(widgets=[self.run_button, self.cancel_button],
                               layout="horizontal", labels=False),
                     self.progress, self.status])

        runner = self.runner
        self.native.destroyed.connect(lambda *_: runner.close())  # ends the model's process
        self.model.changed.connect(self._on_model_changed)
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        for event in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self.image.reset_choices()
        active = self.viewer.layers.selection.active
        if isinstance(active, napari.layers.Image):
            self.image.value = active
        if model is None:
            model = _default_model()
        if model:
            self.model.line_edit.value = model

    # ----------------------------------------------------------------------------- controls
    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in self.viewer.layers
                if isinstance(layer, napari.layers.Image)]

    def _refresh_layers(self, _event: Any = None) -> None:
        self.image.reset_choices()

    def model_text(self) -> str:
        """The model as typed or chosen (a path or a name), without surrounding spaces."""
        return str(self.model.line_edit.value).strip()

    def _on_model_changed(self, _value: Any = None) -> None:
        """Show the model's description and set tau and min size to its values."""
        text = self.model_text()
        if not text:
            self.status.value = "choose a model (run folder)"
            return
        try:
            tau, min_size, description = model_defaults(text)
        except Exception as error:  # typing a path goes through many invalid ones
            self.status.value = " ".join(str(error).split())
            return
        self.tau.value = tau
        self.min_size.value = min_size
        self.status.value = f"{description}: tau {tau:g}, min size {min_size}"

    def _on_progress(self, done: int, total: int, what: str) -> None:
        self.progress.max = max(total, 1)
        self.progress.value = min(done, total)
        self.status.value = what

    # --------------------------------------------------------------------------- running
    @property
    def running(self) -> bool:
        """Whether a prediction is under way."""
        return self.worker is not None

    def start(self, _value: Any = None) -> Any:
        """Start segmenting the chosen image layer (the Run button).

        Returns at once: the prediction runs in a worker thread and its layers are added when it
        ends. Bad inputs are reported as napari notifications.

        Parameters
        ----------
        _value : object, optional
            The button's value (ignored).

        Returns
        -------
        napari.qt.threading.FunctionWorker or None
            The started worker, or ``None`` when nothing was started (a run under way, no image
            layer, no model).
        """
        if self.running:
            return None
        layer = self.image.value
        if layer is None or layer not in self.viewer.layers:
            show_error("layernet: no image layer to segment; open an image first")
            return None
        model = self.model_text()
        if not model:
            show_error("layernet: choose a model (a run folder of train.py) first")
            return None
        try:
            image, plane = image_plane(layer, self.viewer)
        except Exception as error:
            show_error(f"layernet: {layer.name}: cannot take its image ({error})")
            return None
        name = layer.name + (f" [{','.join(map(str, plane))}]" if plane else "")
        job = PredictionJob(model=model, image=image, name=name, tau=float(self.tau.value),
                            min_size=int(self.min_size.value), tta=bool(self.tta.value),
                            source=layer.data, plane=plane)
        spatial = {"scale": tuple(layer.scale[-2:]), "translate": tuple(layer.translate[-2:])}
        self._cancel = threading.Event()
        worker = create_worker(self.runner.run, job, progress=self._relay.progress.emit,
                               cancel=self._cancel, _start_thread=False,
                               _progress={"desc": f"layernet: {name}"})
        worker.returned.connect(lambda outcome: self._finish(outcome, spatial))
        worker.finished.connect(self._stopped)
        self.worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.max, self.progress.value = 3, 0
        self.status.value = f"segmenting {name}"
        worker.start()
        return worker

    def cancel(self, _value: Any = None) -> None:
        """Stop the running prediction (the Cancel button): its process is terminated."""
        if self.running:
            self._cancel.set()
            self.status.value = "cancelling"

    def _stopped(self) -> None:
        self.worker = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False

    def _finish(self, outcome: PredictionOutcome, spatial: dict[str, Any]) -> None:
        """Add the prediction's layers (GUI thread), or report why there are none."""
        self.last_outcome = outcome
        job = outcome.job
        if outcome.cancelled:
            self.status.value = f"cancelled ({job.name})"
            show_info(f"layernet: prediction of {job.name} cancelled")
            return
        if outcome.error is not None or outcome.stack is None:
            self.status.value = "failed"
            show_error(f"layernet: {outcome.error}")
            return
        for old in self._outputs.pop(job.name, []):
            if old in self.viewer.layers:
                self.viewer.layers.remove(old)
        layers = prediction_layer_data(outcome.stack, job.name, spatial=spatial, metadata={
            "model": job.model, "tau": job.tau, "min_size": job.min_size, "tta": job.tta})
        self._outputs[job.name] = add_layer_data(self.viewer, layers)
        count = len(np.unique(outcome.stack[outcome.stack > 0]))
        filled = int(sum(bool(part.any()) for part in outcome.stack))
        how = "Algorithm 1 on the last maps" if outcome.reused_maps else (
            f"{outcome.tiles} tiles" if outcome.tiles > 1 else "whole image")
        self.status.value = (f"{count} objects in {filled} slices ({how}, "
                             f"{outcome.seconds:.1f} s)")


def _default_model() -> str:
    """The newest run folder under ``./runs`` (``predict.py``'s default), else the name of the
    first model available by name (:func:`layernet.runfolder.available_models`), else ``""``."""
    from layernet import runfolder

    try:
        if os.path.isdir("runs"):
            return runfolder.newest_run("runs")
    except runfolder.RunFolderError:
        pass
    return next(iter(runfolder.available_models()), "")
