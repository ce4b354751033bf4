"""Running a model on one image for the napari widget, without Qt (so it is testable alone).

:class:`ModelRunner` loads a model once (a run folder, a model file, or any name that
:func:`layernet.batch_predict.load_predictor` accepts) and predicts one image per
:meth:`ModelRunner.run` exactly as ``predict.py`` does (:func:`layernet.tiling.predict_image`:
normalisation, tiling of large images, Algorithm 1), with the ``tau`` and ``min_size`` of the job.
It keeps the network's maps of the last image predicted whole, so running again on the same image
with other thresholds only repeats Algorithm 1 (milliseconds instead of the network's seconds).

:meth:`ModelRunner.run` never raises: an error becomes the one-line message of
:class:`PredictionOutcome` (the widget shows it as a notification), and a set ``cancel`` event
stops the run at the next stage or tile batch.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "PredictionJob",
    "PredictionOutcome",
    "ModelRunner",
    "model_defaults",
]

ProgressCallback = Callable[[int, int, str], None]
"""``progress(done, total, what)``: ``done`` of ``total`` steps of the stage ``what``."""


class PredictionCancelled(Exception):
    """Raised inside a run when its cancel event is set."""


@dataclass(frozen=True)
class PredictionJob:
    """One image to predict.

    Attributes
    ----------
    model : str
        Run folder, model file or model name (as ``predict.py --model``).
    image : array-like
        Raw ``(H, W)`` or ``(H, W, C)`` image (read with :func:`numpy.asarray` in the worker, so
        a lazy array is loaded there).
    name : str
        What to call the image in messages (the napari layer's name).
    tau : float
        Algorithm 1's threshold of foreground and layers.
    min_size : int
        Algorithm 1's smallest object in pixels.
    tta : bool
        Test-time augmentation (8 network passes).
    source : object
        The array the image was taken from (with ``plane``: which image it is); the runner
        reuses its maps only for the same ``source`` object and ``plane``.
    plane : tuple of int
        Index of the image in ``source`` (empty for a 2-D image).
    """

    model: str
    image: Any
    name: str
    tau: float
    min_size: int
    tta: bool = False
    source: Any = None
    plane: tuple[int, ...] = ()


@dataclass(frozen=True)
class PredictionOutcome:
    """What :meth:`ModelRunner.run` gives back: the label stack, or why there is none."""

    job: PredictionJob
    stack: np.ndarray | None = None
    error: str | None = None
    cancelled: bool = False
    seconds: float = 0.0
    tiles: int = 1
    reused_maps: bool = False


def _expand(model: str) -> str:
    return os.path.expanduser(model.strip())


def model_defaults(model: str) -> tuple[float, int, str]:
    """Algorithm 1's ``tau`` and ``min_size`` of a model (tuned ``thresholds.json`` included),
    read from its run folder without loading the network.

    Parameters
    ----------
    model : str
        Run folder or model file.

    Returns
    -------
    tau : float
    min_size : int
    description : str
        e.g. ``"UNet-S/16, 8 layers (best.h5)"``.

    Raises
    ------
    layernet.runfolder.RunFolderError
        If the model or its ``config.json`` is missing or invalid (one line naming it).
    """
    from layernet import runfolder

    path = runfolder.resolve_model_path(_expand(model))
    config = runfolder.config_for_model(path)
    description = (f"UNet-{config.size}/{config.filters}, {config.layers} layers "
                   f"({os.path.basename(path)})")
    return float(config.tau), int(config.min_size), description


class ModelRunner:
    """Predicts images with one loaded model at a time (loaded on first use, then kept).

    Parameters
    ----------
    precision : str or None, optional
        Compute precision of the network (default: the run's, as ``predict.py``).
    """

    def __init__(self, precision: str | None = None) -> None:
        self.precision = precision
        self._lock = threading.Lock()
        self._model: str | None = None
        self._predictor: Any = None
        self._maps: tuple[tuple[Any, ...], Any, np.ndarray, np.ndarray] | None = None

    def _load(self, model: str) -> Any:
        """The cached :class:`~layernet.inference.Predictor` of ``model`` (loaded if new)."""
        if self._model != model:
            from layernet.batch_predict import load_predictor

            self._predictor = self._model = self._maps = None
            model_defaults(model)  # a missing model or config fails here, before TensorFlow loads
            self._predictor = load_predictor(_expand(model), self.precision)
            self._model = model
            logger.info("loaded model %s", model)
        return self._predictor

    def run(self, job: PredictionJob, progress: ProgressCallback | None = None,
            cancel: threading.Event | None = None) -> PredictionOutcome:
        """Predict the label stack of one image (in the calling thread).

        Parameters
        ----------
        job : PredictionJob
            The image, the model and the thresholds.
        progress : callable, optional
            Called as ``progress(done, total, what)`` at every stage and tile batch.
        cancel : threading.Event, optional
            When set, the run stops at the next stage or tile batch (``cancelled`` outcome).

        Returns
        -------
        PredictionOutcome
            The stack, or the one-line error (never raises for a bad model or image).
        """
        from layernet.batch_predict import one_line_message

        report = progress or (lambda done, total, what: None)
        started = time.perf_counter()
        subject = job.model

        def check() -> None:
            if cancel is not None and cancel.is_set():
                raise PredictionCancelled

        def outcome(**values: Any) -> PredictionOutcome:
            return PredictionOutcome(job, seconds=time.perf_counter() - started, **values)

        with self._lock:
            try:
                report(0, 3, "loading the model")
                base = self._load(job.model)
                check()
                subject = job.name
                stack, tiles, reused = self._predict(job, base, report, check)
                report(3, 3, "done")
                return outcome(stack=stack, tiles=tiles, reused_maps=reused)
            except PredictionCancelled:
                return outcome(cancelled=True)
            except Exception as error:  # shown to the user as one line, never a traceback
                logger.debug("prediction of %s failed", job.name, exc_info=True)
                return outcome(error=one_line_message(subject, error))

    def _predict(self, job: PredictionJob, base: Any, report: ProgressCallback,
                 check: Callable[[], None]) -> tuple[np.ndarray, int, bool]:
        """Label stack, tile count and whether cached maps were used."""
        from layernet.inference import Predictor, instances_from_maps
        from layernet.io import as_channels
        from layernet.tiling import predict_image

        config = base.config.replace(tau=float(job.tau), min_size=int(job.min_size))
        key = (job.model, job.tta, job.plane)
        if self._maps is not None and self._maps[0] == key and self._maps[1] is job.source \
                and job.source is not None:
            report(2, 3, "Algorithm 1 (maps of the last run)")
            return instances_from_maps(self._maps[2], self._maps[3], config), 1, True
        image = as_channels(np.asarray(job.image), expected_channels=config.channels,
                            name=job.name)
        check()
        report(1, 3, "running the network")

        def on_tiles(done: int, total: int) -> None:
            report(done, total, "network: tiles")
            check()

        predictor = Predictor(base.net, config, tta=job.tta)
        result = predict_image(predictor, image, keep_maps=True, on_tiles=on_tiles)
        if result.tiles == 1:  # tiled images are stitched: a rerun runs the network again
            self._maps = (key, job.source, result.foreground, result.layering)
        else:
            self._maps = None
        return result.stack, result.tiles, False
