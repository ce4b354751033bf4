"""Overlapping the network with post-processing: jobs run in order in one background thread.

Predicting an image has three stages: preparing the input (reading, normalising), the network,
and post-processing (Algorithm 1, tile stitching) plus writing the outputs. The network runs in
the caller's thread; what follows it is handed to an :class:`OrderedWorker`, which runs the jobs
one after another, in the order they were submitted, in one background thread. While the worker
post-processes and writes image ``i`` (or tile batch ``k``), the caller already runs the network
on image ``i + 1`` (batch ``k + 1``). TensorFlow, NumPy and SciPy release the GIL in their heavy
parts, so both stages really run at the same time.

Memory stays bounded: :meth:`OrderedWorker.submit` blocks while ``depth`` jobs wait, so at most
``depth`` waiting jobs, one running job and the caller's next one exist at any time.

``OrderedWorker(threaded=False)`` runs every job at once in the caller's thread: the sequential
path, with exactly the same jobs in exactly the same order, so both give identical results.

A job may wait for the result of a job submitted *before* it (they run in order), never for one
submitted after it. Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Callable

logger = logging.getLogger(__name__)

__all__ = ["OrderedWorker"]


def _run(future: Future, function: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = function(*args, **kwargs)
    except BaseException as error:  # handed to whoever asks the future
        future.set_exception(error)
    else:
        future.set_result(result)


class OrderedWorker:
    """Run submitted jobs in submission order, in one background thread or in the caller's.

    Parameters
    ----------
    depth : int, optional
        Jobs that may wait in the queue (besides the running one) before :meth:`submit` blocks.
    threaded : bool, optional
        ``False`` runs each job at once inside :meth:`submit` (the sequential path).
    name : str, optional
        Name of the background thread.

    Examples
    --------
    >>> with OrderedWorker(depth=1) as worker:
    ...     futures = [worker.submit(pow, 2, exponent) for exponent in range(4)]
    >>> [future.result() for future in futures]
    [1, 2, 4, 8]
    """

    def __init__(self, depth: int = 1, threaded: bool = True,
                 name: str = "layernet-postprocess") -> None:
        if depth < 1:
            raise ValueError(f"queue depth must be >= 1, got {depth}")
        self.depth = int(depth)
        self.threaded = bool(threaded)
        self.name = name
        self._jobs: queue.Queue = queue.Queue(maxsize=self.depth)
        self._thread: threading.Thread | None = None
        self._cancel = threading.Event()
        self._closed = False

    def submit(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Queue ``function(*args, **kwargs)``; return the :class:`~concurrent.futures.Future`
        of its result (or exception). Blocks while ``depth`` jobs wait."""
        if self._closed:
            raise RuntimeError("OrderedWorker is closed")
        future: Future = Future()
        if not self.threaded:
            _run(future, function, args, kwargs)
            return future
        if self._thread is None:
            thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            # kept only once started: a signal that interrupts start() (Ctrl-C, SIGTERM) leaves
            # no thread for close() to join (joining one not started raises RuntimeError)
            thread.start()
            self._thread = thread
        self._jobs.put((future, function, args, kwargs))
        return future

    def _loop(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            future, function, args, kwargs = item
            if self._cancel.is_set():
                future.cancel()
            else:
                _run(future, function, args, kwargs)
            del item, future, function, args, kwargs  # do not hold a finished job's data

    def close(self, cancel: bool = False) -> None:
        """Wait until every submitted job has run and stop the thread.

        With ``cancel=True`` the jobs still waiting are cancelled (their futures raise
        :class:`~concurrent.futures.CancelledError`); the running job is finished, so a file
        being written is completed, never left half-written.
        """
        if self._closed:
            return
        self._closed = True
        if self._thread is None:
            return
        if cancel:
            self._cancel.set()
        self._jobs.put(None)
        self._thread.join()

    def __enter__(self) -> "OrderedWorker":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close(cancel=exc_type is not None)
