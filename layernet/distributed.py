"""Prediction on a Dask cluster: the files of a folder, or the tiles of one huge image.

Jobs larger than one machine go to ``dask.distributed`` (the ``big`` extra), never to a
scheduler of our own. Two ways of spreading the work, both writing the same files as one process:

* **files** — :func:`predict_files_dask` sends every file to a worker as one task; the worker
  loads the model once (:func:`worker_predictor` keeps it for later tasks), predicts the file with
  :func:`layernet.batch_predict.predict_files` and writes its outputs itself, so the input and
  output folders must be reachable by the workers under the same paths (one machine, or a shared
  file system);
* **tiles** — an image predicted in strips (:mod:`layernet.big_prediction`) has its tile batches
  run on the workers by :class:`DaskTileRunner`: each worker reads its tiles from the image file
  (lazily), normalises them with the percentiles computed once on the client, runs the network
  and post-processes every tile; the client stitches the tiles' instances strip by strip and
  writes the outputs. Only the next few strips are in flight, so the client's memory stays
  bounded by the strips.

:func:`open_client` connects to a scheduler (``tcp://host:8786``) or starts a ``LocalCluster``
(``local:N``: N worker processes, the CPU cores shared out). Python API::

    from layernet.distributed import ModelSpec, open_client, predict_files_dask
    with open_client("local:2") as client:
        predict_files_dask(client, ModelSpec("runs/cells"), jobs, options, print)

Each worker's TensorFlow uses as many threads as the worker has Dask threads, so on
one machine the workers do not oversubscribe the CPU (the maps are then those of one process
with that many threads; see :mod:`layernet.batch_predict`).

Nothing in this module imports TensorFlow (the workers do, when they load the model).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from layernet.batch_predict import FileJob, FileResult, PredictOptions
from layernet.big_prediction import StripInstances, small_tile_stack, tile_rows
from layernet.lazy_image import require_big_extra
from layernet.tiles import Tile

logger = logging.getLogger(__name__)

__all__ = ["DaskTileRunner", "ModelSpec", "open_client", "predict_files_dask",
           "worker_predictor"]

STRIPS_AHEAD = 2
"""Strips whose tile tasks are submitted before the strip being stitched is complete."""


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads the model (the arguments of
    :func:`layernet.batch_predict.load_predictor`); hashable, so workers cache by it."""

    model_path: str
    precision: str | None = None
    config_changes: tuple[tuple[str, Any], ...] = field(default_factory=tuple)
    tta: bool = False
    backend: str = "keras"

    @property
    def config(self) -> Any:
        """The model's configuration with the changes, read without loading the model."""
        from layernet import runfolder

        if self.backend == "onnx":
            from layernet.backends import resolve_onnx_model

            config = resolve_onnx_model(self.model_path)[1]
        else:
            config = runfolder.config_for_model(self.model_path)
        return config.replace(**dict(self.config_changes)) if self.config_changes else config


_predictors: dict[ModelSpec, Any] = {}
_predictors_lock = threading.Lock()


def worker_predictor(spec: ModelSpec) -> Any:
    """The predictor of ``spec`` in this (worker) process, loaded on first use and kept.

    TensorFlow is given as many threads as the Dask worker has, when it is not yet running;
    precision ``auto`` is resolved on the worker's machine.
    """
    from layernet.batch_predict import load_predictor
    from layernet.model import resolve_precision

    with _predictors_lock:
        if spec not in _predictors:
            threads = _worker_threads()
            if spec.backend == "keras":
                import tensorflow as tf

                try:
                    tf.config.threading.set_intra_op_parallelism_threads(threads)
                    tf.config.threading.set_inter_op_parallelism_threads(threads)
                except RuntimeError:  # TensorFlow already initialised in this process
                    logger.debug("TensorFlow threads already set")
            _predictors[spec] = load_predictor(
                spec.model_path, resolve_precision(spec.precision),
                dict(spec.config_changes) or None, spec.tta, spec.backend, threads)
        return _predictors[spec]


def _worker_threads() -> int:
    """Threads of the Dask worker running this task (the CPU count outside a worker)."""
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return os.cpu_count() or 1


@contextlib.contextmanager
def open_client(address: str) -> Iterator[Any]:
    """A ``dask.distributed`` client for ``address``, closed (with its cluster) at the end.

    Parameters
    ----------
    address : str
        A scheduler address (``tcp://host:8786``, or anything ``distributed.Client`` takes),
        or ``local:N`` for a ``LocalCluster`` of ``N`` worker processes on this machine with
        the CPU cores shared out (at least one thread each).

    Yields
    ------
    distributed.Client
    """
    distributed = require_big_extra("distributed")
    from layernet.batch_predict import threads_per_worker

    if address.startswith("local:"):
        try:
            workers = int(address.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"--dask {address}: expected local:N with N workers") from None
        if workers < 1:
            raise ValueError(f"--dask {address}: need at least one worker")
        cluster = distributed.LocalCluster(
            n_workers=workers, threads_per_worker=threads_per_worker(workers), processes=True,
            dashboard_address=None)
        logger.info("Dask LocalCluster: %d workers, %d thread(s) each", workers,
                    threads_per_worker(workers))
        with cluster, distributed.Client(cluster) as client:
            yield client
        return
    try:
        client = distributed.Client(address, timeout="30s")
    except (OSError, TimeoutError) as error:
        raise OSError(f"--dask {address}: cannot reach the scheduler ({error})") from None
    logger.info("Dask scheduler %s: %d workers", address,
                len(client.scheduler_info().get("workers", {})))
    with client:
        yield client


def _predict_file_task(spec: ModelSpec, job: FileJob, options: PredictOptions) -> FileResult:
    """Worker task: predict one file and write its outputs (``predict_files`` on it alone)."""
    from layernet.batch_predict import predict_files

    results: list[FileResult] = []
    predict_files(worker_predictor(spec), [job], options, results.append)
    return results[0]


def predict_files_dask(client: Any, spec: ModelSpec, jobs: list[FileJob],
                       options: PredictOptions, report: Callable[[FileResult], None],
                       on_tiles: Callable[[str, int, int], None] | None = None) -> None:
    """Predict ``jobs`` on a Dask cluster and write their outputs; report every file once.

    Files predicted whole are one task each (the worker writes the outputs); files predicted
    in strips (:func:`layernet.batch_predict.predicted_in_strips`) are predicted one after
    the other with their tiles spread over the workers (:class:`DaskTileRunner`) and their
    outputs written here. Results are reported as they come.

    Parameters
    ----------
    client : distributed.Client
        The cluster.
    spec : ModelSpec
        The model every worker loads (once).
    jobs : list of FileJob
        ``(index, input path, output prefix)``; paths must be valid on the workers.
    options : PredictOptions
        As for :func:`layernet.batch_predict.predict_files`.
    report : callable
        Called with the :class:`FileResult` of every file.
    on_tiles : callable, optional
        ``on_tiles(path, done, total)`` for the tiles of images predicted in strips.
    """
    distributed = require_big_extra("distributed")
    from layernet.batch_predict import _failed, _predict_in_strips, predicted_in_strips

    whole, in_strips = [], []
    for job in jobs:
        try:
            (in_strips if predicted_in_strips(job[1], options) else whole).append(job)
        except Exception as error:
            report(_failed(job[0], job[1], error))
    options_whole = dataclasses.replace(options, overlapped=False)
    futures = {client.submit(_predict_file_task, spec, job, options_whole, pure=False): job
               for job in whole}
    runner = DaskTileRunner(client, spec)
    for job in in_strips:
        progress = None if on_tiles is None else (
            lambda done, total, path=job[1]: on_tiles(path, done, total))
        report(_predict_in_strips(spec, job, options, progress, tile_runner=runner))
    for future in distributed.as_completed(futures):
        job = futures[future]
        try:
            report(future.result())
        except Exception as error:  # the task itself failed (e.g. a worker died)
            report(_failed(job[0], job[1], error))


_images: dict[tuple[Any, ...], Any] = {}
"""Images opened by this worker, by path, modification time, size and channel choice."""


def _tile_batch_task(spec: ModelSpec, source: str, channel: int | None,
                     rects: list[tuple[int, int, int, int]], p_low: np.ndarray,
                     p_high: np.ndarray) -> list[np.ndarray]:
    """Worker task: the label stacks of a batch of tiles of an image file (see module doc)."""
    from layernet.lazy_image import open_lazy_image
    from layernet.normalize import normalize_to_range

    predictor = worker_predictor(spec)
    status = os.stat(source)
    key = (source, status.st_mtime_ns, status.st_size, channel, predictor.config.channels)
    with _predictors_lock:
        if key not in _images:
            image = open_lazy_image(source)
            image.select_channels(channel, predictor.config.channels)
            _images[key] = image
        image = _images[key]
    batch = normalize_to_range(np.stack([image.strip(y0, y1, x0, x1)
                                         for y0, x0, y1, x1 in rects]), p_low, p_high)
    foregrounds, layerings = predictor.maps_batch_normalized(batch)
    return [small_tile_stack(predictor.instances_from_maps(foreground, layering, min_size=0))
            for foreground, layering in zip(foregrounds, layerings)]


class DaskTileRunner:
    """A :data:`layernet.big_prediction.TileRunner` that runs the tile batches on a Dask cluster.

    Parameters
    ----------
    client : distributed.Client
        The cluster; the workers must read the image file under the same path.
    spec : ModelSpec
        The model the workers load.
    ahead : int, optional
        Strips submitted beyond the one being stitched.
    """

    def __init__(self, client: Any, spec: ModelSpec, ahead: int = STRIPS_AHEAD) -> None:
        self.client = client
        self.spec = spec
        self.ahead = max(0, int(ahead))

    def __call__(self, source: Any, channel: int | None, tiles: list[Tile],
                 percentiles: tuple[np.ndarray, np.ndarray], batch_size: int,
                 on_tiles: Callable[[int, int], None] | None) -> StripInstances:
        """The tiles' instances, strip by strip (submitted ``ahead`` strips in advance)."""
        if not isinstance(source, (str, os.PathLike)):
            raise ValueError("Dask workers read the image from its file: give a path")
        source = os.path.abspath(os.fspath(source))
        rows = tile_rows(tiles)
        submitted: list[list[tuple[list[Tile], Any]]] = []

        def submit(row: list[Tile]) -> list[tuple[list[Tile], Any]]:
            batches = [row[start:start + batch_size] for start in range(0, len(row), batch_size)]
            return [(batch, self.client.submit(
                _tile_batch_task, self.spec, source, channel,
                [tile.rect for tile in batch], percentiles[0], percentiles[1], pure=False))
                for batch in batches]

        done = 0
        for index in range(min(len(rows), self.ahead + 1)):
            submitted.append(submit(rows[index]))
        for index in range(len(rows)):
            if index + self.ahead + 1 < len(rows):
                submitted.append(submit(rows[index + self.ahead + 1]))
            results = []
            for batch, future in submitted[index]:
                results.extend(zip(batch, future.result()))
                future.release()
                done += len(batch)
                if on_tiles is not None:
                    on_tiles(done, len(tiles))
            submitted[index] = []
            yield results
