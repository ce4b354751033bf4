"""Predicting many image files: the network overlapped with post-processing, one or N processes.

:func:`predict_files` is what ``predict.py`` does in one process. For every file, in the calling
thread: read it, normalise it and run the network (whole, or tile batch by tile batch); then hand
post-processing, stitching and writing of the outputs to an
:class:`~layernet.ordered_worker.OrderedWorker`. With ``overlapped=True`` that worker is a
background thread, so the network already runs on the next file (or tile batch) while the last
one is post-processed and written; with ``overlapped=False`` everything runs one step after the
other. Both give byte-identical files. Every file ends in exactly one :class:`FileResult`, handed
to a ``report`` callback in input order: an error on one file becomes its one-line message and
the other files go on.

:func:`predict_files_in_processes` spreads the files over N worker processes (``spawn``), each
loading the model once and running :func:`predict_files` on the files it takes one by one
(the next index of the job list, from a shared counter; so a worker with small files takes more
of them). Each worker's TensorFlow uses ``cores // N`` threads, so N workers do not
oversubscribe the CPU. The threads split the network's float32 sums (Eigen and oneDNN kernels)
according to their number, so the workers' maps are bit for bit those of one process with
``cores // N`` threads (``TF_NUM_INTRAOP_THREADS``), and can differ in the last bits from those
of one process with all cores. Results come back to the calling process through a queue, and it
reports them. Ctrl-C (SIGINT) reaches only the calling process; it stops the workers with
SIGTERM, on which a worker finishes the file it is writing (outputs are written atomically) and
exits.

The calling process only reads from the results queue and never writes to a multiprocessing
queue, so it runs no queue feeder thread: every semaphore it created is released in its main
thread (the workers are joined and the queue is closed before :func:`predict_files_in_processes`
returns or raises). A feeder thread still holding a queue's semaphores at interpreter exit could
be stopped midway through unregistering them, and multiprocessing's resource tracker then warned
about "leaked semaphore objects" after a Ctrl-C.

Longer than 500 lines on purpose: the one-process and the N-process paths share their job,
result and error types and the writing of outputs, and the process protocol (start, stop on
SIGTERM, collect) is easier to check in one place.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

logger = logging.getLogger(__name__)

__all__ = [
    "FileJob",
    "FileResult",
    "PredictOptions",
    "STRIPS_PIXELS",
    "WorkerError",
    "load_predictor",
    "one_line_message",
    "predict_files",
    "predict_files_in_processes",
    "predicted_in_strips",
    "threads_per_worker",
]

STRIPS_PIXELS = 25_000_000
"""TIFF and zarr inputs of more pixels (5000 x 5000) are predicted in strips by default."""

FileJob = tuple[int, str, str]
"""``(index, input path, output prefix)`` of one file to predict."""


class WorkerError(ValueError):
    """A worker process could not start (e.g. the model does not load); the message says why."""


@dataclass(frozen=True)
class PredictOptions:
    """How to read, predict and write every file (the options of ``predict.py``).

    Attributes
    ----------
    channel : int or None
        Use only this channel of multi-channel images.
    tile_size, tile_overlap, tile_batch
        Tiling of large images, as in :func:`layernet.prediction.predict_image`.
    overlay, masks, rois, coco, flat, prob : bool
        Outputs to write, as in :func:`layernet.export.write_prediction` (``prob``: the maps).
    layer_maps : bool
        Also write the panel of the image, the foreground and every layer map.
    overlapped : bool
        Post-process and write in a background thread while the network runs on the next file.
    layers_format : {"auto", "tif", "bigtiff", "zarr"}
        Format of the label stack (:mod:`layernet.label_store`); ``auto``: ``tif`` for images
        predicted in memory, ``bigtiff`` for images predicted in strips.
    strips : {"auto", "always", "never"}
        Which TIFF inputs are predicted strip by strip with memory bounded by a strip of tiles
        (:func:`layernet.big_prediction.predict_big_image`): ``auto`` those of more than
        :data:`STRIPS_PIXELS` pixels. zarr inputs always are, other formats never.
    """

    channel: int | None = None
    tile_size: int | None = None
    tile_overlap: int | None = None
    tile_batch: int = 1
    overlay: bool = True
    masks: bool = False
    rois: bool = False
    coco: bool = False
    flat: bool = False
    prob: bool = False
    layer_maps: bool = False
    overlapped: bool = True
    layers_format: str = "auto"
    strips: str = "auto"


@dataclass(frozen=True)
class FileResult:
    """Outcome of one file: its objects and tiles, or the one-line error."""

    index: int
    path: str
    objects: int = 0
    tiles: int = 0
    error: str | None = None


def one_line_message(path: str, error: BaseException) -> str:
    """The error on one line, starting with ``path`` unless the message already names it."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if path in text else f"{path}: {text}"


def native_precision(precision: str) -> str | None:
    """``None`` (keep the run's precision) if this machine computes ``precision`` natively,
    else ``"float32"`` (logged): a 16-bit type that :func:`layernet.model.auto_precision` does
    not pick here would be emulated, slower than float32, with the same maps up to rounding.

    Parameters
    ----------
    precision : str
        The run's precision (``config.precision``).
    """
    from layernet.model import precision_here

    chosen = precision_here(precision, "predicting")
    return None if chosen == precision else chosen


def load_predictor(model_path: str, precision: str | None = None,
                   config_changes: dict[str, Any] | None = None, tta: bool = False,
                   backend: str = "keras", threads: int | None = None) -> Any:
    """Load a trained model and wrap it in a :class:`layernet.inference.Predictor`.

    Parameters
    ----------
    model_path : str
        Run folder or model file (for ``backend="onnx"``: a folder holding ``model.onnx``, or
        the ``.onnx`` file, see :func:`layernet.backends.resolve_onnx_model`).
    precision : str or None, optional
        Compute precision in place of the run's (Keras backend only). ``None``: the run's, unless
        it is a 16-bit type this machine would only emulate (a model trained in bf16 on a CPU with
        bf16 instructions, predicting on one without: :func:`native_precision`), then float32.
    config_changes : dict, optional
        Configuration values to override (e.g. ``tau``, ``min_size``).
    tta : bool, optional
        Test-time augmentation: maps averaged over the 8 dihedral transforms of the input.
    backend : str, optional
        What runs the network: ``"keras"`` or ``"onnx"`` (ONNX Runtime, float32).
    threads : int or None, optional
        ONNX Runtime's threads (the Keras backend uses TensorFlow's settings).
    """
    from layernet import runfolder
    from layernet.backends import OnnxBackend, resolve_onnx_model
    from layernet.inference import Predictor

    if backend == "onnx":
        onnx_path, config = resolve_onnx_model(model_path)
        net: Any = OnnxBackend(onnx_path, threads=threads)
    elif backend == "keras":
        if precision is None:
            precision = native_precision(runfolder.config_for_model(
                runfolder.resolve_model_path(model_path)).precision)
        net, config = runfolder.load_trained_model(model_path, precision=precision)
    else:
        raise ValueError(f"unknown backend {backend!r}; choose keras or onnx")
    if config_changes:
        config = config.replace(**config_changes)
    return Predictor(net, config, tta=tta)


def _failed(index: int, path: str, error: BaseException) -> FileResult:
    logger.debug("failure on %s", path, exc_info=error)
    return FileResult(index, path, error=one_line_message(path, error))


def predicted_in_strips(path: str, options: PredictOptions) -> bool:
    """Whether ``path`` is predicted strip by strip (see :attr:`PredictOptions.strips`).

    A TIFF above :data:`STRIPS_PIXELS` pixels is read whole, with a warning, when the ``big``
    extra (zarr) is not installed.
    """
    from layernet.io import _TIFF_MAGIC
    from layernet.lazy_image import is_zarr_path, tiff_pixels

    if is_zarr_path(path):
        return True  # only read lazily
    if options.strips == "never":
        return False
    try:
        with open(path, "rb") as handle:
            if handle.read(4) not in _TIFF_MAGIC:
                return False
    except OSError:
        return False  # reported by the reader
    if options.strips == "always":
        return True
    pixels = tiff_pixels(path)
    if pixels is None or pixels <= STRIPS_PIXELS:
        return False
    try:
        import zarr  # noqa: F401
    except ImportError:
        logger.warning("%s: %.0f megapixels read whole; install the big extra (pip install "
                       "'layernet[big]') to predict it in strips", path, pixels / 1e6)
        return False
    return True


_NOT_IN_STRIPS = {"masks": "--save-masks", "flat": "--save-flat", "prob": "--save-prob",
                  "layer_maps": "--save-layer-maps"}


def _predict_in_strips(predictor: Any, job: FileJob, options: PredictOptions,
                       on_tiles: Callable[[int, int], None] | None,
                       tile_runner: Any = None) -> FileResult:
    """Predict one file strip by strip and write its outputs (``tile_runner``: see
    :func:`layernet.big_prediction.predict_big_image`)."""
    from layernet.big_prediction import predict_big_image

    index, path, prefix = job
    try:
        for name, flag in _NOT_IN_STRIPS.items():
            if getattr(options, name):
                raise ValueError(f"{path}: {flag} is not available for an image predicted in "
                                 "strips (--save-rois and --save-coco are; or --strips never)")
        if options.layers_format == "tif":
            raise ValueError(f"{path}: an image predicted in strips is written as bigtiff or "
                             "zarr, not as an ImageJ tif")
        result = predict_big_image(
            predictor, path, prefix,
            output_format="bigtiff" if options.layers_format == "auto" else options.layers_format,
            tile_size=options.tile_size, overlap=options.tile_overlap,
            batch_size=options.tile_batch, channel=options.channel, overlay=options.overlay,
            rois=options.rois, coco=options.coco, file_name=os.path.basename(path),
            on_tiles=on_tiles, tile_runner=tile_runner, overlapped=options.overlapped)
    except Exception as error:  # one bad file must not stop the others
        return _failed(index, path, error)
    return FileResult(index, path, objects=result.objects, tiles=result.tiles)


def _write_outputs(predictor: Any, job: FileJob, image: Any, prediction: Any,
                   options: PredictOptions) -> FileResult:
    """Wait for the prediction of one file (submitted earlier) and write its outputs."""
    from layernet.export import OUTPUT_SUFFIXES, write_prediction
    from layernet.instances import num_objects
    from layernet.io import write_image_atomic
    from layernet.methods import get_method
    from layernet.viz import layer_maps_panel

    index, path, prefix = job
    try:
        result = prediction.result()
        maps = (result.foreground, result.layering) if options.prob else None
        write_prediction(prefix, result.stack, image, overlay=options.overlay,
                         masks=options.masks, rois=options.rois, coco=options.coco,
                         flat=options.flat, maps=maps, file_name=os.path.basename(path),
                         layers_format="tif" if options.layers_format == "auto"
                         else options.layers_format)
        if options.layer_maps:
            method = get_method(predictor.config.method)
            panel = layer_maps_panel(image, result.foreground, result.layering,
                                     names=method.map_names(predictor.config))
            write_image_atomic(prefix + OUTPUT_SUFFIXES["layer_maps"], panel)
    except Exception as error:  # one bad file must not stop the others
        return _failed(index, path, error)
    return FileResult(index, path, objects=num_objects(result.stack), tiles=result.tiles)


def predict_files(predictor: Any, jobs: Iterable[FileJob], options: PredictOptions,
                  report: Callable[[FileResult], None],
                  on_tiles: Callable[[str, int, int], None] | None = None) -> None:
    """Predict every file of ``jobs`` and write its outputs; report each file once, in order.

    Parameters
    ----------
    predictor : layernet.inference.Predictor
        The model.
    jobs : iterable of FileJob
        ``(index, path, output prefix)``; consumed lazily, one file ahead of the writing.
    options : PredictOptions
        Reading, tiling and output options; ``options.overlapped`` chooses the background thread.
    report : callable
        Called with the :class:`FileResult` of every file, in the order of ``jobs`` (from the
        background thread when overlapped). An exception it raises is re-raised here.
    on_tiles : callable, optional
        Progress inside a large file: ``on_tiles(path, done, total)`` after the network's every
        batch of tiles (from this thread).
    """
    from layernet.io import as_channels, read_image
    from layernet.ordered_worker import OrderedWorker
    from layernet.prediction import submit_prediction

    config = predictor.config
    reports = []
    with OrderedWorker(depth=1, threaded=options.overlapped) as worker:
        for job in jobs:
            index, path, _ = job
            progress = None if on_tiles is None else (
                lambda done, total, path=path: on_tiles(path, done, total))
            try:
                strips = predicted_in_strips(path, options)
            except Exception as error:
                strips, failure = False, error
            else:
                failure = None
            if strips or failure is not None:
                result = (_failed(index, path, failure) if failure is not None
                          else _predict_in_strips(predictor, job, options, progress))
                reports.append(worker.submit(lambda done: report(done), result))
                continue
            try:
                image = as_channels(read_image(path), channel=options.channel,
                                    expected_channels=config.channels, name=path)
                prediction = submit_prediction(
                    predictor, image, worker, tile_size=options.tile_size,
                    overlap=options.tile_overlap, batch_size=options.tile_batch,
                    keep_maps=options.prob or options.layer_maps, on_tiles=progress)
            except Exception as error:  # reported in order, after the files before it
                reports.append(worker.submit(lambda failure: report(failure),
                                             _failed(index, path, error)))
                continue
            reports.append(worker.submit(
                lambda *args: report(_write_outputs(predictor, *args)),
                job, image, prediction, options))
            del image, prediction  # the worker holds them until the file is written
    for done in reports:
        done.result()


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """TensorFlow threads of each of ``workers`` processes: the available cores shared out."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
    return max(1, cores // max(1, workers))


def _worker_main(worker_id: int, model_path: str, precision: str | None,
                 config_changes: dict[str, Any] | None, tta: bool, backend: str,
                 options: PredictOptions, threads: int, log_level: int, jobs: list[FileJob],
                 next_job: Any, results: Any) -> None:
    """Body of one worker process: load the model once, then predict the files of ``jobs``
    whose indices it takes from the shared counter ``next_job``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle

    def terminate(signum: int, frame: Any) -> None:
        results.cancel_join_thread()  # the parent may no longer read: do not wait on the pipe
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        _worker_run(worker_id, model_path, precision, config_changes, tta, backend, threads,
                    log_level, options, jobs, next_job, results)
    finally:
        # The work is over and the process is ending (TensorFlow's teardown can take a moment):
        # a SIGTERM now must not raise SystemExit inside some ``__del__`` of that teardown.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _worker_run(worker_id: int, model_path: str, precision: str | None,
                config_changes: dict[str, Any] | None, tta: bool, backend: str, threads: int,
                log_level: int, options: PredictOptions, jobs: list[FileJob], next_job: Any,
                results: Any) -> None:
    """What a worker does between its signal handlers being set and its exit."""
    from layernet.cli import setup_logging

    setup_logging(log_level <= logging.DEBUG)
    logging.getLogger().setLevel(log_level)
    try:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        predictor = load_predictor(model_path, precision, config_changes, tta, backend, threads)
    except Exception as error:
        logger.debug("worker %d could not load the model", worker_id, exc_info=True)
        text = str(error).strip()
        results.put(("fatal", worker_id, text.splitlines()[0] if text else type(error).__name__))
        return
    results.put(("ready", worker_id, None))

    def taken_jobs() -> Iterator[FileJob]:
        while True:
            with next_job.get_lock():
                position = next_job.value
                if position >= len(jobs):
                    return
                next_job.value = position + 1
            results.put(("start", worker_id, jobs[position][0]))
            yield jobs[position]

    predict_files(predictor, taken_jobs(), options,
                  lambda result: results.put(("done", worker_id, result)))


def _stop(processes: list[Any], grace: float = 10.0, finished: bool = False) -> None:
    """SIGTERM the workers still running, give them ``grace`` seconds, then SIGKILL; join and
    close every one (its pipes and sentinel are released here, not at interpreter exit).

    With ``finished`` (every file is done, so the workers are ending by themselves) they first
    get ``grace`` seconds to exit on their own.
    """
    if finished:
        for process in processes:
            process.join(grace)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(grace)
        if process.is_alive():
            logger.warning("worker %s did not stop; killing it", process.name)
            process.kill()
            process.join()
        process.close()


def predict_files_in_processes(
    model_path: str,
    jobs: list[FileJob],
    options: PredictOptions,
    workers: int,
    report: Callable[[FileResult], None],
    precision: str | None = None,
    config_changes: dict[str, Any] | None = None,
    tta: bool = False,
    backend: str = "keras",
    poll_seconds: float = 0.5,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Predict ``jobs`` with ``workers`` processes, one model each; report every file once.

    Parameters
    ----------
    model_path : str
        Run folder or model file; every worker loads it once.
    jobs : list of FileJob
        The files; workers take them one by one from a shared queue.
    options : PredictOptions
        As for :func:`predict_files` (each worker overlaps its own network and writing).
    workers : int
        Number of processes; no more than one per file are started.
    report : callable
        Called in this process with every :class:`FileResult`, in the order files finish.
    precision, config_changes, tta, backend
        As for :func:`load_predictor` (each worker's ONNX Runtime gets its share of threads).
    poll_seconds : float, optional
        How often to check that the workers are still alive.
    on_ready : callable, optional
        Called with a worker's number when it has loaded the model.

    Raises
    ------
    WorkerError
        When a worker cannot load the model (the message is the loading error's).
    """
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if not jobs:
        return
    count = min(workers, len(jobs))
    threads = threads_per_worker(count)
    context = multiprocessing.get_context("spawn")
    # The jobs go to every worker with its arguments and a shared counter hands out the next
    # one: no queue that this process writes to, hence no feeder thread here (module docstring).
    next_job = context.Value("q", 0)
    results = context.Queue()
    log_level = logging.getLogger().getEffectiveLevel()
    logger.info("%d worker processes, %d TensorFlow thread(s) each", count, threads)
    processes = []
    finished = False
    in_main_thread = threading.current_thread() is threading.main_thread()
    # Children inherit an ignored SIGINT from the start (before they can install a handler).
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main_thread else None
    try:
        try:
            for worker_id in range(count):
                process = context.Process(
                    target=_worker_main, name=f"layernet-predict-{worker_id}", daemon=True,
                    args=(worker_id, model_path, precision, config_changes, tta, backend,
                          options, threads, log_level, list(jobs), next_job, results))
                process.start()
                processes.append(process)
        finally:
            if in_main_thread:
                signal.signal(signal.SIGINT, previous)
        _collect(jobs, processes, results, report, poll_seconds, on_ready)
        finished = True
    finally:
        _stop(processes, finished=finished)
        results.close()
        results.join_thread()  # no feeder thread in this process: returns at once


def _collect(jobs: list[FileJob], processes: list[Any], results: Any,
             report: Callable[[FileResult], None], poll_seconds: float,
             on_ready: Callable[[int], None] | None) -> None:
    """Report the workers' results until every file has one; cover for workers that die."""
    paths = {index: path for index, path, _ in jobs}
    pending = set(paths)
    taken: dict[int, set[int]] = {worker_id: set() for worker_id in range(len(processes))}
    ended: set[int] = set()

    def handle(message: tuple) -> None:
        kind, worker_id, value = message
        if kind == "fatal":
            raise WorkerError(value)
        if kind == "ready" and on_ready is not None:
            on_ready(worker_id)
        elif kind == "start":
            taken[worker_id].add(value)
        elif kind == "done":
            taken[worker_id].discard(value.index)
            if value.index in pending:
                pending.discard(value.index)
                report(value)

    while pending:
        try:
            handle(results.get(timeout=poll_seconds))
            continue
        except queue.Empty:
            pass
        dead = [worker_id for worker_id, process in enumerate(processes)
                if worker_id not in ended and not process.is_alive()]
        if not dead:
            continue
        while True:  # a worker's messages are in the pipe before it exits: read them first
            try:
                handle(results.get(timeout=0.05))
            except queue.Empty:
                break
        for worker_id in dead:
            ended.add(worker_id)
            code = processes[worker_id].exitcode
            for index in sorted(taken[worker_id] & pending):
                pending.discard(index)
                report(FileResult(index, paths[index], error=f"{paths[index]}: worker process "
                                  f"ended unexpectedly (exit code {code})"))
        if len(ended) == len(processes):
            for index in sorted(pending):
                report(FileResult(index, paths[index],
                                  error=f"{paths[index]}: no worker process left to predict it"))
            pending.clear()
