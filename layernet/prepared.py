"""Prepared samples: a raw sample normalised, relabelled and with its adjacency, once per image.

:func:`prepare_samples` runs once per image, before any augmentation: percentile normalisation
(:func:`layernet.normalize.percentile_normalize` with the config's percentiles), relabelling of
the stack to ids ``1..K`` (:func:`layernet.instances.relabel_stack`) and the adjacency matrix of
the un-augmented objects (:func:`layernet.targets.adjacency_matrix`). The adjacency, the costly
part, can be cached in a folder of ``.npz`` files keyed by a hash of the stack and the distance.

Prepared samples are held in memory (a list of :class:`PreparedSample`) or, for datasets larger
than memory, on disk: :func:`save_prepared` writes one compressed ``.npz`` per sample (the raw
image in its smallest lossless dtype with its two percentiles, the relabelled stack, the
adjacency) and :class:`CachedSamples` reads them back one at a time.
:func:`layernet.pipeline.make_dataset` turns either into ``tf.data`` batches.

Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from layernet.config import Config
from layernet.files import write_bytes_atomic
from layernet.instances import relabel_stack, validate_stack
from layernet.io import ImageReadError, with_channels
from layernet.methods.semantic_targets import semantic_target
from layernet.normalize import normalize_to_range, percentile_range
from layernet.runfolder import RunFolderError, load_arrays, save_arrays_atomic
from layernet.samples import Sample
from layernet.targets import adjacency_matrix

logger = logging.getLogger(__name__)

__all__ = ["CachedSamples", "PipelineError", "PreparedSample", "load_prepared", "prepare_samples",
           "save_prepared"]


class PipelineError(ValueError):
    """Raised for samples or arguments the pipeline cannot use."""


@dataclass
class PreparedSample:
    """One image ready for the pipeline.

    Attributes
    ----------
    image : numpy.ndarray
        ``(H, W, C)`` float32, percentile-normalised.
    stack : numpy.ndarray
        ``(L, H, W)`` int32 label stack with ids ``1..K``.
    adjacency : numpy.ndarray
        ``(K + 1, K + 1)`` bool adjacency of the un-augmented objects (row/column 0 =
        background, all False).
    name : str
        The sample's name.
    semantic : numpy.ndarray or None
        Optional ``(H, W)`` integer map computed from the un-augmented stack, the method's
        per-sample target (:meth:`layernet.methods.Method.sample_target`, e.g. the UNet-3
        baseline's class map; :func:`layernet.methods.attach_sample_targets`); it becomes the
        batch key ``"semantic"`` and is resampled with the stack (nearest neighbour).
    """

    image: np.ndarray
    stack: np.ndarray
    adjacency: np.ndarray
    name: str
    semantic: np.ndarray | None = None

    @property
    def num_objects(self) -> int:
        """``K``, the number of objects."""
        return int(self.adjacency.shape[0]) - 1


def _cache_key(stack: np.ndarray, distance: float) -> str:
    digest = hashlib.sha1()
    digest.update(repr((stack.shape, str(stack.dtype), float(distance))).encode())
    digest.update(np.ascontiguousarray(stack).tobytes())
    return digest.hexdigest()


def _cached_adjacency(stack: np.ndarray, distance: float, cache_dir: str | None) -> np.ndarray:
    """Adjacency of ``stack``, read from / written to ``cache_dir`` when given."""
    if cache_dir is None:
        return adjacency_matrix(stack, distance)
    path = os.path.join(cache_dir, f"adjacency-{_cache_key(stack, distance)}.npz")
    if os.path.exists(path):
        adjacency = load_arrays(path)["adjacency"]
        if adjacency.shape == (stack.max(initial=0) + 1,) * 2:
            return adjacency.astype(bool)
        logger.warning("%s: cached adjacency has the wrong shape, recomputing", path)
    adjacency = adjacency_matrix(stack, distance)
    os.makedirs(cache_dir, exist_ok=True)
    save_arrays_atomic(path, {"adjacency": adjacency})
    return adjacency


def prepare_samples(samples: Sequence[Sample], config: Config, cache_dir: str | None = None
                    ) -> list[PreparedSample]:
    """Normalise, relabel and compute the adjacency of every sample (once, before augmentation).

    Parameters
    ----------
    samples : sequence of layernet.samples.Sample
        Raw samples: ``image`` ``(H, W, C)``, ``stack`` ``(L, H, W)``.
    config : Config
        Uses ``channels``, ``normalize_low``, ``normalize_high`` and ``adjacency_distance``.
    cache_dir : str or None, optional
        Folder for cached adjacency matrices (``adjacency-<sha1>.npz``); None computes them
        every time.

    Returns
    -------
    list of PreparedSample
        In the order of ``samples``.

    Raises
    ------
    PipelineError
        If a sample's image is not ``(H, W, config.channels)``, its stack does not match the
        image size, or its image holds NaN/inf; the message names the sample.
    """
    prepared = []
    for sample in samples:
        image, bounds, relabelled = _checked_parts(sample, config)
        adjacency = _cached_adjacency(relabelled, config.adjacency_distance, cache_dir)
        prepared.append(PreparedSample(normalize_to_range(image, *bounds), relabelled, adjacency,
                                       sample.name))
    logger.info("prepared %d samples (%d objects)", len(prepared),
                sum(p.num_objects for p in prepared))
    return prepared


def _checked_parts(sample: Sample, config: Config
                   ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], np.ndarray]:
    """The raw image, its normalisation percentiles and the relabelled stack of ``sample``,
    after the checks of :func:`prepare_samples`."""
    image = np.asarray(sample.image)
    stack = np.asarray(sample.stack)
    try:
        image = with_channels(image, config.channels, name=f"sample {sample.name!r}")
    except ImageReadError as error:
        raise PipelineError(str(error)) from None
    validate_stack(stack, name=f"sample {sample.name!r}")
    if stack.shape[1:] != image.shape[:2]:
        raise PipelineError(f"sample {sample.name!r}: label stack {stack.shape} does not "
                            f"match image size {image.shape[:2]}")
    try:
        bounds = percentile_range(image, config.normalize_low, config.normalize_high)
    except ValueError as error:
        raise PipelineError(f"sample {sample.name!r}: {error}") from None
    return image, bounds, relabel_stack(stack, dtype=np.int32)


def _smallest_lossless(values: np.ndarray) -> np.ndarray:
    """``values`` as uint8 or uint16 when it holds only integers in their range, else as is."""
    if values.size and np.issubdtype(values.dtype, np.number):
        low, high = values.min(), values.max()
        if low >= 0 and np.array_equal(values, np.floor(values)):
            for dtype in (np.uint8, np.uint16):
                if high <= np.iinfo(dtype).max:
                    return values.astype(dtype)
    return values


def save_prepared(path: str, sample: Sample, config: Config,
                  semantic: bool | Callable[[np.ndarray], np.ndarray] = False) -> int:
    """Prepare one raw sample as :func:`prepare_samples` does and write it to ``path``.

    The file is a compressed ``.npz`` (zlib level 1) written atomically: the raw image in its smallest lossless
    dtype with the two normalisation percentiles (the normalised image is recomputed exactly on
    reading), the relabelled stack, the adjacency and the name.

    Parameters
    ----------
    path : str
        Destination ``.npz`` file (its folder must exist).
    sample : layernet.samples.Sample
        The raw sample.
    config : Config
        As for :func:`prepare_samples`.
    semantic : bool or callable, optional
        Also store a per-sample target map (:attr:`PreparedSample.semantic`): a callable computes
        it from the relabelled stack (the method's :meth:`~layernet.methods.Method.sample_target`,
        as :func:`layernet.streaming.prepare_to_cache` passes it); ``True`` stores the UNet-3
        class map (:func:`layernet.methods.semantic_targets.semantic_target`).

    Returns
    -------
    int
        ``K``, the number of objects.

    Raises
    ------
    PipelineError
        As :func:`prepare_samples`.
    """
    image, (p_low, p_high), stack = _checked_parts(sample, config)
    adjacency = adjacency_matrix(stack, config.adjacency_distance)
    arrays = {"image": _smallest_lossless(image), "p_low": p_low, "p_high": p_high,
              "stack": _smallest_lossless(stack), "adjacency": adjacency,
              "name": np.array(sample.name)}
    if semantic:
        arrays["semantic"] = (semantic(stack) if callable(semantic)
                              else semantic_target(stack, "unet3"))
    buffer = io.BytesIO()
    # an .npz (np.load reads it) at zlib level 1: twice as fast as savez_compressed's level 6
    # for about 5 % more bytes
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for key, value in arrays.items():
            with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
    write_bytes_atomic(path, buffer.getvalue())
    return int(adjacency.shape[0]) - 1


def load_prepared(path: str) -> PreparedSample:
    """Read a sample written by :func:`save_prepared` (the same arrays :func:`prepare_samples`
    returns for it, bit for bit).

    Parameters
    ----------
    path : str
        The ``.npz`` file.

    Returns
    -------
    PreparedSample

    Raises
    ------
    PipelineError
        If the file is missing, unreadable or lacks an array; the message names the file.
    """
    try:
        arrays = load_arrays(path)
        image = normalize_to_range(arrays["image"], arrays["p_low"], arrays["p_high"])
        return PreparedSample(image, arrays["stack"].astype(np.int32),
                              arrays["adjacency"].astype(bool), str(arrays["name"]),
                              arrays.get("semantic"))
    except (RunFolderError, KeyError) as error:
        raise PipelineError(f"{path}: not a readable prepared sample ({error}); delete it to "
                            "prepare the sample again") from None


class CachedSamples(Sequence[PreparedSample]):
    """Prepared samples kept on disk, one :func:`save_prepared` file each, read on access.

    Indexing reads and returns one :class:`PreparedSample`; names and object counts are known
    without reading, so :func:`make_dataset` can check ``layer_of`` and stream the samples.

    Parameters
    ----------
    paths : sequence of str
        The sample files, in sample order.
    names : sequence of str
        The samples' names.
    num_objects : sequence of int
        ``K`` of each sample.
    with_semantic : bool, optional
        Whether the files hold a per-sample target map (the UNet-3 class map).
    """

    def __init__(self, paths: Sequence[str], names: Sequence[str], num_objects: Sequence[int],
                 with_semantic: bool = False) -> None:
        if not len(paths) == len(names) == len(num_objects):
            raise PipelineError(f"CachedSamples got {len(paths)} paths, {len(names)} names and "
                                f"{len(num_objects)} object counts")
        self.paths = list(paths)
        self.names = list(names)
        self.num_objects = [int(count) for count in num_objects]
        self.with_semantic = with_semantic

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> PreparedSample:  # type: ignore[override]
        return load_prepared(self.paths[index])

    def __iter__(self) -> Iterator[PreparedSample]:
        for path in self.paths:
            yield load_prepared(path)
