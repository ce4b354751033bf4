"""Running a model on one image for the napari widget, in a process of its own, without Qt.

TensorFlow runs in a separate process (``spawn``), never inside napari's: TensorFlow's library
carries LLVM's symbols, and so does Mesa's OpenGL driver (every Mesa driver on Linux links
libLLVM), so with both in one process either napari's canvas or TensorFlow's import crashes
(segmentation fault), in whichever order they load. The process starts on the first run, keeps
the model loaded for the next ones, and ends with :meth:`ModelRunner.close` (or with napari).

:class:`ModelRunner` predicts one image per :meth:`ModelRunner.run` exactly as ``predict.py``
does (:func:`layernet.prediction.predict_image`: normalisation, tiling of large images, Algorithm 1),
with the ``tau`` and ``min_size`` of the job. The process keeps the network's maps of the last
image predicted whole, so running again on the same image with other thresholds only repeats
Algorithm 1 (milliseconds instead of the network's seconds).

:meth:`ModelRunner.run` never raises: an error becomes the one-line message of
:class:`PredictionOutcome` (the widget shows it as a notification). A set ``cancel`` event stops
the process at once (the next run starts a new one).

Nothing in this module imports TensorFlow; the process it starts does.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import threading
import time
import types
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "PredictionJob",
    "PredictionOutcome",
    "ModelRunner",
    "model_config",
    "model_defaults",
]

ProgressCallback = Callable[[int, int, str], None]
"""``progress(done, total, what)``: ``done`` of ``total`` steps of the stage ``what``."""

POLL_SECONDS = 0.05
"""How often a run checks its cancel event while the process works."""


@dataclass(frozen=True)
class PredictionJob:
    """One image to predict.

    Attributes
    ----------
    model : str
        Run folder, model file or a pretrained model's name (as ``predict.py --model``).
    image : array-like
        Raw ``(H, W)`` or ``(H, W, C)`` image (read with :func:`numpy.asarray` in the run, so a
        lazy array is loaded there, outside napari's GUI thread).
    name : str
        What to call the image in messages (the napari layer's name).
    tau : float
        Algorithm 1's threshold of foreground and layers.
    min_size : int
        Algorithm 1's smallest object in pixels.
    tta : bool
        Test-time augmentation (8 network passes).
    source : object
        The array the image was taken from (with ``plane``: which image it is); the maps of the
        last run are reused only for the same ``source`` object and ``plane``.
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


def model_config(model: str) -> Any:
    """The :class:`~layernet.config.Config` of a model with its tuned thresholds, read from its
    run folder without loading the network (nor TensorFlow).

    Parameters
    ----------
    model : str
        Run folder, model file or a pretrained model's name.

    Returns
    -------
    layernet.config.Config

    Raises
    ------
    layernet.runfolder.RunFolderError
        If the model or its ``config.json`` is missing or invalid (one line naming it).
    """
    from layernet import runfolder

    return runfolder.config_for_model(runfolder.resolve_model_path(_expand(model)))


def model_defaults(model: str) -> tuple[float, int, str]:
    """Algorithm 1's ``tau`` and ``min_size`` of a model (tuned ``thresholds.json`` included)
    and a short description of it, without loading the network.

    Parameters
    ----------
    model : str
        Run folder, model file or a pretrained model's name.

    Returns
    -------
    tau : float
    min_size : int
    description : str
        e.g. ``"UNet-S/16, 8 layers (best.h5)"``.

    Raises
    ------
    layernet.runfolder.RunFolderError
        As :func:`model_config`.
    """
    from layernet import runfolder

    config = model_config(model)
    name = os.path.basename(runfolder.resolve_model_path(_expand(model)))
    description = f"UNet-{config.size}/{config.filters}, {config.layers} layers ({name})"
    return float(config.tau), int(config.min_size), description


def _serve(connection: Any, precision: str | None) -> None:
    """Body of the prediction process: answer requests until ``None`` or the pipe closes.

    A request is a dict with ``model``, ``image`` (float32 ``(H, W, C)``, or ``None`` for the
    maps kept from the last image), ``tau``, ``min_size``, ``tta`` and ``name``. Answers:
    ``("progress", done, total, what)`` messages, then ``("done", result dict)`` or
    ``("error", one-line message)``.
    """
    from layernet.cli import quiet_tensorflow

    quiet_tensorflow()
    from layernet.batch_predict import load_predictor, one_line_message
    from layernet.inference import Predictor, instances_from_maps
    from layernet.prediction import predict_image

    loaded: tuple[str, Any] | None = None
    maps: tuple[np.ndarray, np.ndarray] | None = None
    while True:
        try:
            request = connection.recv()
        except EOFError:
            return
        if request is None:
            return
        subject = request["model"]
        try:
            if loaded is None or loaded[0] != request["model"]:
                connection.send(("progress", 0, 3, "loading the model"))
                loaded, maps = None, None
                loaded = (request["model"], load_predictor(_expand(request["model"]), precision))
            subject = request["name"]
            config = loaded[1].config.replace(tau=request["tau"], min_size=request["min_size"])
            if request["image"] is None:
                if maps is None:
                    raise RuntimeError("no maps of an earlier run to reuse")
                connection.send(("progress", 2, 3, "Algorithm 1 (maps of the last run)"))
                stack, tiles = instances_from_maps(*maps, config), 1
            else:
                connection.send(("progress", 1, 3, "running the network"))
                predictor = Predictor(loaded[1].net, config, tta=request["tta"])
                result = predict_image(predictor, request["image"], keep_maps=True,
                                       on_tiles=lambda done, total: connection.send(
                                           ("progress", done, total, "network: tiles")))
                stack, tiles = result.stack, result.tiles
                # tiled images are stitched tile by tile: a rerun runs the network again
                maps = (result.foreground, result.layering) if tiles == 1 else None
            connection.send(("done", {"stack": stack, "tiles": tiles,
                                      "reused": request["image"] is None,
                                      "kept_maps": maps is not None}))
        except Exception as error:  # reported as one line; the process serves the next request
            logger.debug("prediction of %s failed", request["name"], exc_info=True)
            connection.send(("error", one_line_message(subject, error)))


class ModelRunner:
    """Predicts images with one model at a time, in a process that keeps it loaded.

    Parameters
    ----------
    precision : str or None, optional
        Compute precision of the network (default: the run's, as ``predict.py``).
    """

    def __init__(self, precision: str | None = None) -> None:
        self.precision = precision
        self._lock = threading.Lock()
        self._process: Any = None
        self._connection: Any = None
        self._kept: tuple[tuple[Any, ...], Any] | None = None  # the maps the process keeps

    @property
    def process(self) -> Any:
        """The prediction process (``multiprocessing.Process``), or ``None`` before a run."""
        return self._process

    def _start(self) -> Any:
        """The pipe to a running prediction process (started if there is none)."""
        if self._process is not None and self._process.is_alive():
            return self._connection
        self.close()
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(target=_serve, args=(theirs, self.precision), daemon=True,
                                  name="layernet-napari-predict")
        # A spawned process first runs the parent's main script again, unless it is guarded by
        # ``if __name__ == "__main__"``; napari scripts seldom are (the process would open a
        # second viewer). It needs nothing of it, so it is started with an empty main module.
        main = sys.modules["__main__"]
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            process.start()
        finally:
            sys.modules["__main__"] = main
        theirs.close()
        self._process, self._connection = process, ours
        logger.info("started the prediction process (pid %d)", process.pid)
        return ours

    def close(self, now: bool = False) -> None:
        """End the prediction process (it holds the model and TensorFlow's memory).

        Parameters
        ----------
        now : bool, optional
            Terminate it at once (cancel), instead of asking it to finish and waiting up to
            two seconds.
        """
        process, connection = self._process, self._connection
        self._process = self._connection = self._kept = None
        if connection is not None:
            try:
                if not now:
                    connection.send(None)
            except (OSError, ValueError):
                pass
            connection.close()
        if process is not None:
            if now:
                process.terminate()
            process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join()
            process.close()

    def run(self, job: PredictionJob, progress: ProgressCallback | None = None,
            cancel: threading.Event | None = None) -> PredictionOutcome:
        """Predict the label stack of one image (blocks the calling thread, not the process's).

        Parameters
        ----------
        job : PredictionJob
            The image, the model and the thresholds.
        progress : callable, optional
            Called as ``progress(done, total, what)`` at every stage and tile batch.
        cancel : threading.Event, optional
            When set, the prediction process is stopped and the outcome is ``cancelled``.

        Returns
        -------
        PredictionOutcome
            The stack, or the one-line error (never raises for a bad model or image).
        """
        from layernet.batch_predict import one_line_message
        from layernet.io import as_channels

        report = progress or (lambda done, total, what: None)
        started = time.perf_counter()

        def outcome(**values: Any) -> PredictionOutcome:
            return PredictionOutcome(job, seconds=time.perf_counter() - started, **values)

        with self._lock:
            subject = job.model
            try:
                report(0, 3, "checking the model")
                config = model_config(job.model)  # a bad model fails here, in milliseconds
                subject = job.name
                key = (job.model, bool(job.tta), job.plane)
                reuse = (self._kept is not None and job.source is not None
                         and self._kept[0] == key and self._kept[1] is job.source)
                image = None if reuse else as_channels(
                    np.asarray(job.image), expected_channels=config.channels, name=job.name)
                request = {"model": job.model, "image": image, "tau": float(job.tau),
                           "min_size": int(job.min_size), "tta": bool(job.tta),
                           "name": job.name}
                result = self._exchange(request, report, cancel)
                if result is None:
                    return outcome(cancelled=True)
                if isinstance(result, str):
                    return outcome(error=result)
                self._kept = (key, job.source) if result["kept_maps"] else None
                report(3, 3, "done")
                return outcome(stack=result["stack"], tiles=result["tiles"],
                               reused_maps=result["reused"])
            except Exception as error:  # shown to the user as one line, never a traceback
                logger.debug("prediction of %s failed", job.name, exc_info=True)
                return outcome(error=one_line_message(subject, error))

    def _exchange(self, request: dict[str, Any], report: ProgressCallback,
                  cancel: threading.Event | None) -> dict[str, Any] | str | None:
        """Send one request and relay the process's progress until its answer: the result
        dict, an error message, or ``None`` when cancelled (the process is stopped)."""
        connection = self._start()
        connection.send(request)
        while True:
            if cancel is not None and cancel.is_set():
                self.close(now=True)
                return None
            try:
                if not connection.poll(POLL_SECONDS):
                    if not self._process.is_alive():
                        raise EOFError
                    continue
                kind, *payload = connection.recv()
            except (EOFError, OSError):
                code = self._process.exitcode if self._process is not None else None
                self.close()
                return (f"{request['name']}: the prediction process stopped unexpectedly "
                        f"(exit code {code}); out of memory?")
            if kind == "progress":
                report(*payload)
            elif kind == "done":
                return payload[0]
            else:
                self._kept = None
                return payload[0]
