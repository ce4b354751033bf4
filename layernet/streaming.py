"""Training on datasets larger than memory: prepare every sample once into a disk cache, stream it.

:func:`prepare_to_cache` decodes the samples of a :class:`layernet.samples.SampleSource` one at
a time and writes each prepared sample (:func:`layernet.prepared.save_prepared`: raw image in its
smallest lossless dtype + its normalisation percentiles, relabelled stack, adjacency) to
``<cache_dir>/sample-<key>.npz``. The key is a SHA-1 of everything the prepared sample depends on:
the dataset and its decoding options (:attr:`layernet.samples.SampleSource.key`), the sample's
name, the path, size and modification time of each of its files (the files of a mask folder
included), and the config fields used by the preparation (channels, percentiles, adjacency
distance, UNet-3 class map). A rerun or ``--resume`` finds the files and reuses them; a changed
source file gets a new key and is prepared again. Files are written atomically, so an interrupted
pass leaves only complete entries behind.

:func:`layernet.pipeline.make_dataset` streams the returned
:class:`~layernet.prepared.CachedSamples` and gives the same batches as the samples held in
memory.

:func:`use_streaming` decides between memory and streaming (``Config.streaming``): ``"on"``,
``"off"``, or ``"auto"``, which streams when the decoded images and stacks of the training and
validation splits (estimated from the first training image) would exceed
:data:`AUTO_MEMORY_FRACTION` of the available memory. In-memory training holds about three copies
of the data (decoded, prepared, tf.data constants).

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Sequence

import numpy as np

from layernet.config import Config
from layernet.files import TEMPORARY_PREFIX
from layernet.methods import get_method
from layernet.prepared import CachedSamples, save_prepared
from layernet.rescale import rescale_sample
from layernet.samples import Sample, SampleSource

logger = logging.getLogger(__name__)

__all__ = ["AUTO_MEMORY_FRACTION", "CACHE_FORMAT", "available_memory", "decoded_bytes",
           "file_identity", "prepare_to_cache", "prune_cache", "sample_key", "use_streaming"]

CACHE_FORMAT = 1
"""Version of the cache files; part of every key, so a new format never reads old files."""

AUTO_MEMORY_FRACTION = 0.25
"""``streaming="auto"`` streams when the decoded data exceeds this share of available memory."""

CACHE_PREFIX = "sample-"
PROGRESS_SECONDS = 10.0
"""Seconds between two progress lines of :func:`prepare_to_cache`."""


def file_identity(paths: Iterable[str]) -> list[list]:
    """``[path, size, modification time in ns]`` of each file; a folder stands for its files.

    Parameters
    ----------
    paths : iterable of str
        Files or folders (a folder is replaced by its non-hidden files, sorted by name).

    Returns
    -------
    list of list
        Absolute path, size and ``st_mtime_ns`` (``None`` twice for a missing path).
    """
    identity = []
    for path in paths:
        path = os.path.abspath(path)
        if os.path.isdir(path):
            entries = [os.path.join(path, name) for name in sorted(os.listdir(path))
                       if not name.startswith(".")]
            identity.extend(file_identity(entry for entry in entries if os.path.isfile(entry)))
            continue
        try:
            status = os.stat(path)
        except FileNotFoundError:
            identity.append([path, None, None])
            continue
        identity.append([path, status.st_size, status.st_mtime_ns])
    return identity


def sample_key(source: SampleSource, index: int, config: Config, semantic: bool = False,
               scale: float = 1.0) -> str:
    """The cache key (SHA-1 hex) of item ``index`` of ``source`` prepared with ``config``.

    Parameters
    ----------
    source : layernet.samples.SampleSource
        The split the item belongs to.
    index : int
        Position of the item in ``source``.
    config : Config
        Its ``channels``, ``normalize_low``, ``normalize_high`` and ``adjacency_distance`` count.
    semantic : bool, optional
        Whether the entry holds the per-sample target of ``config.method``
        (:meth:`layernet.methods.Method.sample_target`; the method's
        :meth:`~layernet.methods.Method.sample_target_key` joins the key).
    scale : float, optional
        The factor the sample is resized by before preparation (:mod:`layernet.rescale`).

    Returns
    -------
    str
        40 hex digits.
    """
    description = {
        "format": CACHE_FORMAT, "source": source.key, "name": source.names[index],
        "files": file_identity(source.files[index]), "channels": config.channels,
        "normalize_low": config.normalize_low, "normalize_high": config.normalize_high,
        "adjacency_distance": config.adjacency_distance, "semantic": bool(semantic)}
    if semantic:
        description.update(get_method(config.method).sample_target_key())
    if scale != 1.0:  # entries at the image's own scale keep the keys they always had
        description["input_scale"] = float(scale)
    return hashlib.sha1(json.dumps(description, sort_keys=True).encode()).hexdigest()


def _cached_object_count(path: str, semantic: bool) -> int | None:
    """``K`` of a complete cache file (only its adjacency is decompressed), None if unusable."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if semantic and "semantic" not in data.files:
                return None
            return int(data["adjacency"].shape[0]) - 1
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        logger.warning("%s: unreadable cache entry (%s); preparing it again", path, error)
        return None


def prepare_to_cache(source: SampleSource, config: Config, cache_dir: str,
                     semantic: bool = False, workers: int | None = None,
                     scale: float = 1.0) -> CachedSamples:
    """Prepare every sample of ``source`` into ``cache_dir`` (once) and return them on disk.

    Samples are decoded and prepared one at a time per worker thread, so memory holds a few
    samples whatever the size of the dataset. Entries already in the cache (same key,
    :func:`sample_key`) are reused.

    Parameters
    ----------
    source : layernet.samples.SampleSource
        The samples of one split.
    config : Config
        Preparation settings (as :func:`layernet.prepared.prepare_samples`).
    cache_dir : str
        Cache folder; created if needed. Several runs and splits may share it.
    semantic : bool, optional
        Also store the per-sample target of ``config.method``
        (:meth:`layernet.methods.Method.sample_target`, e.g. UNet-3's class map), for the
        training split of a method with
        :attr:`~layernet.methods.Method.needs_sample_target`.
    workers : int or None, optional
        Threads preparing samples (default: the number of CPUs, at most 4).
    scale : float, optional
        Resize every sample by this factor first (:func:`layernet.rescale.rescale_sample`; the
        training split of a run with ``input_scale``).

    Returns
    -------
    layernet.prepared.CachedSamples
        In the order of ``source``.

    Raises
    ------
    layernet.prepared.PipelineError
        If a sample does not fit the config (as :func:`layernet.prepared.prepare_samples`).
    """
    target = get_method(config.method).sample_target if semantic else False
    os.makedirs(cache_dir, exist_ok=True)
    start = last_report = time.perf_counter()
    paths = [os.path.join(cache_dir, f"{CACHE_PREFIX}"
                                     f"{sample_key(source, index, config, semantic, scale)}.npz")
             for index in range(len(source))]
    counts = [_cached_object_count(path, semantic) if os.path.exists(path) else None
              for path in paths]
    missing = [index for index, count in enumerate(counts) if count is None]

    def prepare(index: int) -> int:
        return save_prepared(paths[index], rescale_sample(source.load(index), scale), config,
                             semantic=target)

    # decoding, normalising and compressing release the GIL: threads prepare samples in parallel
    pool = ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1))
    try:
        for done, (index, count) in enumerate(zip(missing, pool.map(prepare, missing)), 1):
            counts[index] = count
            now = time.perf_counter()
            if now - last_report >= PROGRESS_SECONDS:
                last_report = now
                logger.info("stream cache %s: %d/%d samples prepared, %.0f s", cache_dir, done,
                            len(missing), now - start)
    finally:  # after an error, samples not started yet are not prepared
        pool.shutdown(wait=True, cancel_futures=True)
    logger.info("stream cache %s: %d samples (%d prepared now, %d reused, %d objects) in %.1f s",
                cache_dir, len(paths), len(missing), len(paths) - len(missing), sum(counts),
                time.perf_counter() - start)
    return CachedSamples(paths, source.names, counts, with_semantic=semantic)


def prune_cache(cache_dir: str, keep: Iterable[str]) -> int:
    """Delete the cache entries of ``cache_dir`` not in ``keep`` and leftover temporary files.

    Only for a cache owned by one run (other runs' entries would go too).

    Parameters
    ----------
    cache_dir : str
        The cache folder.
    keep : iterable of str
        Paths of the entries still in use.

    Returns
    -------
    int
        The number of files deleted.
    """
    kept = {os.path.abspath(path) for path in keep}
    removed = 0
    for name in os.listdir(cache_dir):
        path = os.path.abspath(os.path.join(cache_dir, name))
        stale = name.startswith(CACHE_PREFIX) and name.endswith(".npz") and path not in kept
        if stale or name.startswith(TEMPORARY_PREFIX):
            os.remove(path)
            removed += 1
    if removed:
        logger.info("stream cache %s: removed %d stale file(s)", cache_dir, removed)
    return removed


def decoded_bytes(sample: Sample) -> int:
    """Bytes of a sample decoded as the loaders return it: float32 image + int32 stack."""
    return int(np.asarray(sample.image).size * 4 + np.asarray(sample.stack).size * 4)


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory() -> int | None:
    """Bytes of memory this process can still use: ``MemAvailable`` of ``/proc/meminfo``, lowered
    by a cgroup (container) limit when one is set; None when unknown."""
    candidates = []
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    candidates.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2 ** 60:
            candidates.append(max(limit - usage, 0))
    return min(candidates) if candidates else None


def use_streaming(config: Config, sources: Sequence[SampleSource]) -> bool:
    """Decide (and log) whether training streams the samples of ``sources`` from a disk cache.

    ``config.streaming`` ``"on"`` / ``"off"`` decide alone; ``"auto"`` decodes the first sample,
    estimates the decoded size of all samples from it and streams when that exceeds
    :data:`AUTO_MEMORY_FRACTION` of :func:`available_memory`.

    Parameters
    ----------
    config : Config
        ``streaming`` is ``"auto"``, ``"on"`` or ``"off"``.
    sources : sequence of layernet.samples.SampleSource
        The splits training reads (train and validation).

    Returns
    -------
    bool
        True to stream.
    """
    if config.streaming != "auto":
        if config.streaming == "on":
            logger.info("streaming the training data from a disk cache (streaming=on)")
        return config.streaming == "on"
    total = sum(len(source) for source in sources)
    first = next((source for source in sources if len(source)), None)
    available = available_memory()
    if first is None or available is None:
        return False
    per_sample = decoded_bytes(first.load(0))
    estimate = per_sample * total
    stream = estimate > AUTO_MEMORY_FRACTION * available
    logger.info("training data: %d images, about %.0f MB decoded (%.1f MB for %s); %.0f MB of "
                "memory available: %s (streaming=auto streams above %d%% of available memory; "
                "--stream / --no-stream decide)", total, estimate / 2 ** 20, per_sample / 2 ** 20,
                first.names[0], available / 2 ** 20,
                "streaming from a disk cache" if stream else "loading into memory",
                round(100 * AUTO_MEMORY_FRACTION))
    return stream
