"""Two-phase training of the layering network (paper Section 2, Eq. 1).

Phase ``"layering"``: foreground cross-entropy + layering loss on the overlap-free foreground.
Phase ``"overlap"``: starts from ``--init`` (the best phase-1 model) with a fresh optimizer and
adds the Dice-like overlap-completion loss (Eq. 6).

Training runs under a :mod:`tf.distribute` strategy, with RMSprop and a staircase exponential
decay of the learning rate, and writes a run folder (:mod:`layernet.runfolder`) after every epoch:
``last.h5`` + optimizer state (for ``--resume``), ``best.h5`` (best validation score; the last
epoch with ``train_on_val``),
``history.csv``, ``state.json`` and TensorBoard logs. All files are written atomically.

Why this module is longer than 500 lines: it is the one place where a run is trained, resumed
and checkpointed. The trainer's step, the strategy, the epoch callbacks (validation, the
pending-then-commit checkpoint protocol of :mod:`layernet.runfolder`, the time budget), the
optimizer state restored on ``--resume`` and :func:`train` share that protocol and the run's
state; split apart, the order in which an epoch is validated, saved and committed would be spread
over several files. Its self-contained helpers live elsewhere (schedules, streaming, prepared
samples, layer targets). Candidates to move out next: the validation scoring and threshold
tuning (:func:`validation_scores`, :func:`choose_thresholds`, :func:`tune_run_thresholds`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import tensorflow as tf
import keras

from layernet import runfolder
from layernet.config import MIN_SIZE_FACTORS, TAU_GRID, Config
from layernet.assignment import distinct_layers, object_layer_scores
from layernet.inference import Predictor, instances_from_maps
from layernet.instances import median_object_area
from layernet.losses import object_layers
from layernet.methods import attach_sample_targets, get_method
from layernet.methods.layering import LOSS_NAMES  # noqa: F401  (its old home)
from layernet.metrics import score_image, summarize
from layernet.model import build_model, load_model_weights
from layernet.pipeline import PreparedSample, make_dataset, prepare_samples
from layernet.rescale import rescale_sample
from layernet.samples import MIN_VAL_IMAGES, SourceLoader
from layernet.schedules import (BudgetPlanner, TrainingSchedule, ema_too_long_warning,
                                seconds_per_step)
from layernet.streaming import prepare_to_cache, prune_cache, use_streaming

logger = logging.getLogger(__name__)

CACHE_FOLDER = "cache"
"""Streaming cache of a run (``<run>/cache``) when ``Config.cache_dir`` is not set."""


class TrainingError(RuntimeError):
    """Raised for a training set-up that cannot work (with a message saying why)."""


def learning_rate_schedule(config: Config, total_steps: int = 1) -> TrainingSchedule:
    """The learning-rate schedule of ``config`` (:mod:`layernet.schedules`; the paper's is
    ``lr * decay_rate ** floor(step / decay_steps)``) for a training of ``total_steps``."""
    return TrainingSchedule(config, total_steps)


OPTIMIZERS = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam,
              "adamw": keras.optimizers.AdamW}
"""``Config.optimizer`` -> Keras optimizer class (RMSprop is the paper's)."""


def build_optimizer(config: Config, schedule: keras.optimizers.schedules.LearningRateSchedule
                    | None = None) -> keras.optimizers.Optimizer:
    """The optimizer of ``config`` (RMSprop, Adam or AdamW, with weight decay and a moving
    average of the weights as configured), wrapped for loss scaling under ``mixed_float16``.

    Parameters
    ----------
    config : Config
        The run's settings.
    schedule : LearningRateSchedule or None, optional
        The learning-rate schedule (default: :func:`learning_rate_schedule` of ``config``).

    Returns
    -------
    keras.optimizers.Optimizer
    """
    options: dict[str, Any] = {"learning_rate": schedule or learning_rate_schedule(config)}
    if config.weight_decay > 0:
        options["weight_decay"] = config.weight_decay
    if config.ema_momentum > 0:
        options.update(use_ema=True, ema_momentum=config.ema_momentum)
    optimizer = OPTIMIZERS[config.optimizer](**options)
    if config.precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _unwrapped(optimizer: keras.optimizers.Optimizer) -> keras.optimizers.Optimizer:
    """The optimizer itself, or the one inside a mixed-precision ``LossScaleOptimizer``."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def averaged_weights(optimizer: keras.optimizers.Optimizer) -> list | None:
    """The moving averages of the trainable weights kept by an optimizer with ``use_ema``
    (in the order of the variables it was built for), or None without them."""
    inner = _unwrapped(optimizer)
    if not getattr(inner, "use_ema", False):
        return None
    return list(inner._model_variables_moving_average)


@contextlib.contextmanager
def averaged_weights_in(net: keras.Model, optimizer: keras.optimizers.Optimizer
                        ) -> Iterator[bool]:
    """Context in which ``net``'s trainable weights are the optimizer's moving averages (for
    validation and best.h5); the raw weights are put back on exit. Yields whether there are
    averages (without them nothing changes)."""
    averages = averaged_weights(optimizer)
    if averages is None:
        yield False
        return
    variables = net.trainable_variables
    raw = [variable.numpy() for variable in variables]
    for variable, average in zip(variables, averages):
        variable.assign(average)
    try:
        yield True
    finally:
        for variable, value in zip(variables, raw):
            variable.assign(value)


class LayeringTrainer(keras.Model):
    """Keras model that trains ``net`` with the losses of its method in one phase.

    Parameters
    ----------
    net : keras.Model
        The network (:func:`layernet.model.build_model`).
    config : Config
        Loss options; ``config.method`` gives the losses (:meth:`layernet.methods.Method.losses`:
        the layernet losses, or a baseline's cross-entropy) and the terms reported.
    phase : str
        ``"layering"`` or ``"overlap"``.
    """

    def __init__(self, net: keras.Model, config: Config, phase: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.net = net
        self.config = config
        self.phase = phase
        method = get_method(config.method)
        self.loss_function = method.losses
        names = method.loss_names(config, phase)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return list(self.trackers.values())

    def call(self, inputs: tf.Tensor, training: bool = False) -> dict[str, tf.Tensor]:
        return self.net(inputs, training=training)

    def _maybe_symbolic_build(self, iterator: Any = None, data_batch: Any = None) -> None:
        # Keras (3.15) builds a model under a strategy from one batch that it first averages
        # with strategy.reduce("MEAN"), which fails for our dict batches under
        # MultiWorkerMirroredStrategy (and would all-reduce a data batch). The network is a
        # built functional model and there are no compiled losses or metrics, so only the
        # optimizer state is left to create, which needs no data.
        with self.distribute_strategy.scope():
            if not self.optimizer.built:
                self.optimizer.build(self.net.trainable_variables)

    def _update(self, losses: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        for name, tracker in self.trackers.items():
            tracker.update_state(losses[name])
        results = {name: tracker.result() for name, tracker in self.trackers.items()}
        if _multi_worker(tf.distribute.get_strategy()):
            # Keras averages a multi-worker step's outputs with strategy.reduce("MEAN", axis=0),
            # which needs a batch axis: give the scalars one (the logs come out as scalars).
            results = {name: tf.reshape(value, [1]) for name, value in results.items()}
        return results

    def train_step(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        variables = self.net.trainable_variables
        with tf.GradientTape() as tape:
            outputs = self.net(batch["image"], training=True)
            losses = self.loss_function(outputs, batch, self.config, self.phase)
            loss = losses["loss"] / replicas
            scaled = self.optimizer.scale_loss(loss)
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply(gradients, variables)
        return self._update(losses)

    def test_step(self, batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        outputs = self.net(batch["image"], training=False)
        return self._update(self.loss_function(outputs, batch, self.config, self.phase))


def _multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True for a MultiWorkerMirroredStrategy that spans several workers (Keras' own test)."""
    extended = strategy.extended
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and bool(getattr(extended, "_in_multi_worker_mode", lambda: False)()))


def make_strategy(name: str) -> tf.distribute.Strategy:
    """Return the ``tf.distribute`` strategy called ``default``, ``mirrored`` or ``multiworker``."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise TrainingError("--strategy multiworker needs the TF_CONFIG environment variable")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise TrainingError(f"unknown strategy {name!r}; use default, mirrored or multiworker")


def worker_run_dir(run_dir: str, strategy: tf.distribute.Strategy) -> str:
    """The folder this process writes: ``run_dir`` on the chief (and without multi-worker
    training), ``run_dir/<task type>-<task id>`` on the other workers of a
    MultiWorkerMirroredStrategy (their weights equal the chief's; separate folders keep the
    writers apart and let every worker ``--resume`` from its own checkpoint)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or strategy.extended.should_checkpoint:
        return run_dir
    return os.path.join(run_dir, f"{resolver.task_type}-{resolver.task_id}")


def validation_scores(predictor: Predictor, samples: Sequence[PreparedSample],
                      matching: str = "reference") -> dict[str, float]:
    """Post-process the network's predictions of ``samples`` and score them (paper metrics).

    Returns
    -------
    dict
        ``meanAP``, ``AJI`` and ``AP@t`` for t in 0.5..0.9, pooled over the samples.
    """
    scores = []
    for sample in samples:
        predicted = predictor.instances_normalized(sample.image)
        scores.append(score_image(sample.stack, predicted, matching=matching, name=sample.name))
    summary = summarize(scores)
    return {key: float(value) for key, value in summary.items()
            if key == "meanAP" or key == "AJI" or key.startswith("AP@")}


def choose_thresholds(predictor: Predictor, samples: Sequence[PreparedSample],
                      maps: Sequence[tuple[np.ndarray, np.ndarray]] | None = None
                      ) -> dict[str, Any]:
    """Choose Algorithm 1's ``tau`` and ``min_size`` on validation samples.

    The network runs once per sample; every pair of :data:`layernet.config.TAU_GRID` and
    ``min_size`` x :data:`layernet.config.MIN_SIZE_FACTORS` post-processes its maps, and the
    pair with the best pooled meanAP (AJI breaks ties) wins.

    Parameters
    ----------
    predictor : Predictor
        The trained network with the run's configuration.
    samples : sequence of PreparedSample
        The validation split.
    maps : sequence of (numpy.ndarray, numpy.ndarray), optional
        The predictor's maps of ``samples`` (:meth:`Predictor.maps_normalized`), computed once
        by a caller that chooses thresholds for several post-processing settings of the same
        network; by default the network runs here.

    Returns
    -------
    dict
        ``tau``, ``min_size``, ``meanAP`` and ``AJI`` of the chosen pair, ``configured``
        (meanAP / AJI with the configured pair) and ``grid`` (every pair's scores).
    """
    config = predictor.config
    if maps is None:
        maps = [predictor.maps_normalized(sample.image) for sample in samples]
    if len(maps) != len(samples):
        raise ValueError(f"got maps of {len(maps)} images for {len(samples)} samples")
    maps = list(zip(samples, maps))
    grid = []
    sizes = sorted({max(0, int(round(config.min_size * factor))) for factor in MIN_SIZE_FACTORS})
    for tau in TAU_GRID:
        for min_size in sizes:
            candidate = config.replace(tau=tau, min_size=min_size)
            scores = summarize([score_image(sample.stack,
                                            instances_from_maps(*pair, candidate),
                                            name=sample.name) for sample, pair in maps])
            grid.append({"tau": tau, "min_size": min_size, "meanAP": float(scores["meanAP"]),
                         "AJI": float(scores["AJI"])})
    best = max(grid, key=lambda row: (row["meanAP"], row["AJI"]))
    configured = [row for row in grid
                  if row["tau"] == config.tau and row["min_size"] == config.min_size]
    return {**best, "configured": configured[0] if configured else None, "grid": grid}


def frozen_layer_assignment(net: keras.Model, samples: Sequence[PreparedSample],
                            config: Config) -> list[np.ndarray]:
    """Phase-2 targets of the paper: each object's layer from the phase-1 model, computed once.

    The layer of an object is the argmax of the mean embedding of its overlap-free part on the
    un-augmented image (:func:`layernet.losses.object_layers`); with
    ``config.layer_assignment = "distinct"`` adjacent objects get different layers
    (:func:`layernet.assignment.distinct_layers`).

    Returns
    -------
    list of numpy.ndarray
        Per sample, an int32 array of length ``K + 1`` (index = object id, entry 0 unused = -1).
    """
    # training samples are at the network's scale already (load_training_data)
    predictor = Predictor(net, config.replace(input_scale=1.0))
    assignments = []
    for sample in samples:
        _, layering = predictor.maps_normalized(sample.image)
        if config.layer_assignment == "distinct":
            scores = object_layer_scores(layering, sample.stack)
            assignments.append(distinct_layers(scores, sample.adjacency))
            continue
        stack = np.moveaxis(sample.stack, 0, -1)[None]
        segments = int(sample.adjacency.shape[0])
        layers = object_layers(tf.constant(layering[None]), tf.constant(stack, tf.int32),
                               segments, config)
        assignments.append(np.asarray(layers)[0].astype(np.int32))
    return assignments


@dataclass
class TrainingData:
    """Prepared training and validation samples of a run.

    ``train`` and ``val`` are lists held in memory, or :class:`layernet.pipeline.CachedSamples`
    read from the streaming cache one sample at a time (``streamed``).
    """

    train: Sequence[PreparedSample]
    val: Sequence[PreparedSample]
    streamed: bool = False


def load_training_data(config: Config, load_source: SourceLoader, run_dir: str | None = None
                       ) -> TrainingData:
    """Load, prepare (normalise, targets) and return the training and validation splits.

    With streaming (``config.streaming``, :func:`layernet.streaming.use_streaming`) every sample
    is prepared once into the cache ``config.cache_dir`` (default ``<run_dir>/cache``) and the
    returned splits read it one sample at a time; otherwise everything is loaded into memory.
    The training split is resized by ``config.input_scale`` (:mod:`layernet.rescale`) and
    prepared with :meth:`Config.at_network_scale`; the validation split keeps the images' own
    pixels, where the predictor scores it.

    Parameters
    ----------
    config : Config
        The run's settings (``data``, ``data_dir``, ``data_options``, ``split_seed`` and
        ``val_fraction`` choose the images).
    load_source : SourceLoader
        Lists a split of a dataset by name: ``datasets.load_source`` (the library does not
        import the dataset readers).
    run_dir : str or None, optional
        The run folder (home of the default streaming cache).

    Returns
    -------
    TrainingData
    """
    start = time.perf_counter()
    # train_on_val: the whole training pool trains and nothing validates
    splits = ("trainval",) if config.train_on_val else ("train", "val")
    sources = [load_source(config.data, config.data_dir, split, config.split_seed,
                           val_fraction=config.val_fraction, **config.data_options)
               for split in splits]
    if not len(sources[0]):
        raise TrainingError(f"dataset {config.data!r} has no training images")
    if not config.train_on_val and not len(sources[1]):
        selecting = sorted(set(config.data_options) & {"count", "limit", "wells"})
        raise TrainingError(
            f"dataset {config.data!r} has no validation images ({len(sources[0])} training "
            f"image(s)): the train/validation split holds out min({MIN_VAL_IMAGES}, n - 1) of the "
            "n images of the training pool, so the pool needs at least 2 images; "
            + (f"check the data option(s) {', '.join(selecting)}, which set or filter the images"
               if selecting else "add images, or train on all of them (--train-on-val)"))
    streamed = use_streaming(config, sources)
    network_config = config.at_network_scale()  # the training split's pixel settings
    if streamed:
        if config.cache_dir is None and run_dir is None:
            raise TrainingError("streaming needs a cache folder: set config.cache_dir "
                                "(--cache-dir) or pass the run folder")
        cache_dir = config.cache_dir or os.path.join(run_dir, CACHE_FOLDER)
        train = prepare_to_cache(sources[0], network_config, cache_dir,
                                 semantic=get_method(config.method).needs_sample_target,
                                 scale=config.input_scale)
        cached = [prepare_to_cache(source, config, cache_dir) for source in sources[1:]]
        if config.cache_dir is None:
            prune_cache(cache_dir, train.paths + [path for val in cached for path in val.paths])
        data = TrainingData(train, cached[0] if cached else [], streamed=True)
    else:
        train_source, *val_source = sources  # no validation source with train_on_val
        data = TrainingData(prepare_samples([rescale_sample(sample, config.input_scale)
                                             for sample in train_source.load_all()],
                                            network_config),
                            prepare_samples(val_source[0].load_all(), config) if val_source else [])
    logger.info("loaded %d training and %d validation images of %r in %.1f s%s", len(data.train),
                len(data.val), config.data, time.perf_counter() - start,
                " (streamed from disk)" if streamed else "")
    return data


class EpochEnd(keras.callbacks.Callback):
    """Validate by the paper's metric, write checkpoints, state and history after every epoch.

    ``best.h5`` is written when the validation meanAP (AJI breaks ties) averaged over the last
    ``config.select_window`` epochs (fewer at the start) is the highest so far; ``best`` and
    ``best_aji`` are the scores of that epoch itself, ``best_selection`` the averages that
    chose it (default: ``(best, best_aji)``). With ``config.train_on_val`` nothing is
    validated and ``best.h5`` is written every epoch (the last epoch's weights).
    """

    def __init__(self, run_dir: str, config: Config, val: Sequence[PreparedSample],
                 history: list[dict[str, Any]], best: float, best_epoch: int,
                 best_aji: float = -1.0, planner: BudgetPlanner | None = None,
                 spent_seconds: float = 0.0,
                 best_selection: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.run_dir = run_dir
        self.config = config
        self.val = val  # a list, or CachedSamples read one sample at a time
        self.history = history
        self.best = best
        self.best_epoch = best_epoch
        self.best_aji = best_aji
        self.best_selection = best_selection if best_selection is not None else (best, best_aji)
        self.planner = planner
        self.spent_seconds = spent_seconds  # training time of earlier calls (--resume)
        self.train_start = time.perf_counter()
        self.predictor: Predictor | None = None
        self.epoch_start = 0.0
        self.mark: tuple[int, float] | None = None  # (step, time) at the end of the last epoch

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.train_start = time.perf_counter()
        self.mark = (int(self.model.optimizer.iterations.numpy()), self.train_start)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        net = self.model.net
        if self.predictor is None:
            self.predictor = Predictor(net, self.config)
        optimizer = self.model.optimizer
        validating = not self.config.train_on_val  # train_on_val: best.h5 is the last epoch
        scores: dict[str, float] = {}
        selection = self.best_selection
        with averaged_weights_in(net, optimizer):
            if validating:
                scores = validation_scores(self.predictor, self.val)
                # best = highest validation meanAP (over the selection window); AJI breaks
                # ties (e.g. while meanAP is still 0)
                selection = self.selection_score(scores["meanAP"], scores["AJI"])
            improved = not validating or selection > self.best_selection or self.best_epoch < 0
            if improved:  # best.h5 holds the weights that were scored: the averages, if any
                runfolder.save_model_atomic(net, os.path.join(self.run_dir, runfolder.BEST_FILE))
        for key, value in scores.items():
            logs[f"val_{key}"] = value
        step = int(optimizer.iterations.numpy())
        schedule = _schedule_of(optimizer)
        learning_rate = float(schedule(max(step - 1, 0)))
        path = self.run_dir
        # The checkpoint is written under pending names, committed by state.json and only then
        # renamed to last.h5 / last_optimizer.npz (runfolder.commit_pending), so a kill at any
        # moment leaves a consistent last.h5 + optimizer + state (the previous or this epoch).
        runfolder.save_model_atomic(
            net, runfolder.pending_path(path, runfolder.LAST_FILE, epoch + 1))
        runfolder.save_arrays_atomic(
            runfolder.pending_path(path, runfolder.OPTIMIZER_FILE, epoch + 1),
            {f"v{index:04d}": np.asarray(variable.numpy())
             for index, variable in enumerate(optimizer.variables)})
        if improved:
            if validating:
                self.best, self.best_aji = scores["meanAP"], scores["AJI"]
            self.best_epoch, self.best_selection = epoch + 1, selection
        row: dict[str, Any] = {"epoch": epoch + 1, "step": step, "learning_rate": learning_rate}
        row.update({key: float(value) for key, value in logs.items()})
        now = time.perf_counter()
        row["seconds"] = now - self.epoch_start
        self.history.append(row)
        runfolder.write_history(os.path.join(path, runfolder.HISTORY_FILE), self.history)
        state: dict[str, Any] = {
            "epoch": epoch + 1, "step": step, "best_score": self.best,
            "best_aji": self.best_aji, "best_epoch": self.best_epoch,
            "best_metric": "val_meanAP" if validating else runfolder.LAST_EPOCH_METRIC,
            "best_selection": list(self.best_selection),
            "select_window": int(self.config.select_window),
            "phase": self.config.phase,
            "train_seconds": self.spent_seconds + now - self.train_start}
        if self.planner is not None:
            # Re-estimate the end of a time-budgeted schedule from this epoch's time per step
            # (training, validation and checkpoint writing); state.json keeps the estimate and
            # the budget spent, so that --resume continues with the same schedule.
            if self.mark is not None:
                self.planner.estimate(step, seconds_per_step(*self.mark, step, now))
        state["total_steps"] = float(schedule.total_steps.numpy())
        self.mark = (step, now)
        runfolder.save_json_atomic(os.path.join(path, runfolder.STATE_FILE), state)
        runfolder.commit_pending(path, epoch + 1)
        window = int(self.config.select_window)
        if not validating:
            logger.info("epoch %d: loss %.4f, saved best.h5 (the last epoch: train_on_val, no "
                        "validation)", epoch + 1, float(logs.get("loss", float("nan"))))
            return
        logger.info("epoch %d: val meanAP %.4f, AJI %.4f%s%s", epoch + 1, scores["meanAP"],
                    scores["AJI"], f" (mean of the last {min(window, len(self.history))} epochs: "
                    f"{selection[0]:.4f}, {selection[1]:.4f})" if window > 1 else "",
                    " (best, saved best.h5)" if improved else "")

    def selection_score(self, score: float, aji: float) -> tuple[float, float]:
        """``(meanAP, AJI)`` of this epoch averaged with those of the ``select_window - 1``
        epochs before it in the history (fewer at the start of a run)."""
        window = int(self.config.select_window)
        earlier = self.history[-(window - 1):] if window > 1 else []
        scores = [float(row["val_meanAP"]) for row in earlier] + [score]
        ajis = [float(row["val_AJI"]) for row in earlier] + [aji]
        return float(np.mean(scores)), float(np.mean(ajis))


def _schedule_of(optimizer: keras.optimizers.Optimizer) -> TrainingSchedule:
    """The :class:`TrainingSchedule` of an optimizer made by :func:`build_optimizer`."""
    return _unwrapped(optimizer)._learning_rate


class TimeBudget(keras.callbacks.Callback):
    """Stop training once ``minutes`` of wall time have passed (the current epoch is closed
    normally: validated and checkpointed).

    Parameters
    ----------
    minutes : float
        The budget of the whole run.
    elapsed_seconds : float, optional
        Part of the budget that earlier training calls of the run spent (``--resume``).
    """

    def __init__(self, minutes: float, elapsed_seconds: float = 0.0) -> None:
        super().__init__()
        self.seconds = minutes * 60.0 - elapsed_seconds
        self.start = time.perf_counter()

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if time.perf_counter() - self.start > self.seconds:
            if not self.model.stop_training:
                logger.info("time budget of %.1f min reached; finishing this epoch",
                            self.seconds / 60.0)
            self.model.stop_training = True


def moving_average_to_check(ema_momentum: float, init: str | None, resume: bool) -> float:
    """The moving-average momentum whose early share :func:`ema_too_long_warning` checks.

    Keras's average starts at the weights after the first step: in a fresh run (or a resumed
    one) those are the random start's, in a run initialised from a trained model (``init``)
    they are good weights, and there is no early share to warn of (0.0).

    Parameters
    ----------
    ema_momentum : float
        ``Config.ema_momentum`` (0 = no average).
    init : str or None
        The ``--init`` model of the run, if any.
    resume : bool
        Whether the run continues a run folder.

    Returns
    -------
    float
        ``ema_momentum``, or 0.0 when there is nothing to warn of.
    """
    return ema_momentum if init is None or resume else 0.0


def _warn_if_ema_too_long(momentum: float, total_steps: float) -> None:
    """Log :func:`~layernet.schedules.ema_too_long_warning` when there is one."""
    warning = ema_too_long_warning(momentum, total_steps)
    if warning is not None:
        logger.warning(warning)


class FirstEstimate(keras.callbacks.Callback):
    """A first estimate of a time-budgeted schedule's end, from the training steps of the first
    epoch (between its ``first``-th and ``last``-th batch: the first ones trace the graph);
    :class:`EpochEnd` corrects it after every epoch. With ``ema_momentum`` it also warns once
    when the moving average of the weights is too long for the estimated training
    (:func:`~layernet.schedules.ema_too_long_warning`)."""

    def __init__(self, planner: BudgetPlanner, first: int = 2, last: int = 12,
                 ema_momentum: float = 0.0) -> None:
        super().__init__()
        self.planner = planner
        self.ema_momentum = ema_momentum
        self.first, self.last = first, last
        self.mark: tuple[int, float] | None = None
        self.done = False

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.done:
            return
        step = int(self.model.optimizer.iterations.numpy())
        if batch == self.first:
            self.mark = (step, time.perf_counter())
        elif batch >= self.last and self.mark is not None:
            total = self.planner.estimate(step, seconds_per_step(*self.mark, step,
                                                                 time.perf_counter()))
            self.done = True
            _warn_if_ema_too_long(self.ema_momentum, total)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.done = True


def tune_run_thresholds(net: keras.Model, config: Config, run_dir: str,
                        val: Sequence[PreparedSample]) -> dict[str, Any]:
    """Choose the thresholds of the run's ``best.h5`` on the validation split
    (:func:`choose_thresholds`) and write them to ``thresholds.json`` (``"tuned": true``),
    where :func:`layernet.runfolder.config_for_model` finds them. ``net`` gets best.h5's
    weights."""
    load_model_weights(net, os.path.join(run_dir, runfolder.BEST_FILE))
    start = time.perf_counter()
    chosen = choose_thresholds(Predictor(net, config), val)
    configured = chosen["configured"]
    runfolder.save_json_atomic(os.path.join(run_dir, runfolder.THRESHOLDS_FILE), {
        "tau": chosen["tau"], "min_size": chosen["min_size"],
        "overlap_layers": config.overlap_layers, "connectivity": config.connectivity,
        "join_layers": config.join_layers, "join_max_area": config.join_max_area, "tuned": True,
        "tuned_on": f"validation split ({len(val)} images), best.h5",
        "val_meanAP": chosen["meanAP"], "val_AJI": chosen["AJI"], "configured": configured,
        "grid": chosen["grid"]})
    logger.info("thresholds chosen on the validation split in %.0f s: tau %.2f, min_size %d "
                "(val meanAP %.4f, AJI %.4f; configured tau %.2f, min_size %d: %s)",
                time.perf_counter() - start, chosen["tau"], chosen["min_size"],
                chosen["meanAP"], chosen["AJI"], config.tau, config.min_size,
                f"{configured['meanAP']:.4f}, {configured['AJI']:.4f}" if configured else "-")
    return chosen


def _restore_optimizer(optimizer: keras.optimizers.Optimizer, net: keras.Model,
                       path: str) -> None:
    arrays = runfolder.load_arrays(path)
    optimizer.build(net.trainable_variables)
    variables = optimizer.variables
    if len(arrays) != len(variables):
        raise runfolder.RunFolderError(
            f"{path}: holds {len(arrays)} optimizer variables, the model needs {len(variables)}")
    for index, variable in enumerate(variables):
        value = arrays[f"v{index:04d}"]
        if tuple(value.shape) != tuple(variable.shape):
            raise runfolder.RunFolderError(f"{path}: optimizer variable {index} has shape "
                                           f"{value.shape}, expected {tuple(variable.shape)}")
        variable.assign(value)


def train(config: Config, run_dir: str, init: str | None = None, resume: bool = False,
          verbose: int | None = None, *, load_source: SourceLoader,
          command: str | None = None) -> dict[str, Any]:
    """Train one phase and write the run folder.

    Parameters
    ----------
    config : Config
        Settings of the run (``config.phase`` selects the phase).
    run_dir : str
        Output folder; created if needed. With ``resume`` it must hold a previous run.
    init : str, optional
        Weights to start from (phase 2: the phase-1 ``best.h5``; fine-tuning: a pretrained
        model's name or folder, :func:`layernet.runfolder.resolve_model_path`).
    resume : bool
        Continue an interrupted run from ``last.h5`` and its optimizer state.
    verbose : int, optional
        Keras verbosity: 1 = progress bar, 2 = one line per epoch (default: 1 on a terminal,
        else 2).
    load_source : SourceLoader
        Lists the images of ``config.data`` (``datasets.load_source``; see
        :func:`load_training_data`).
    command : str, optional
        The command line that trains, added to the run's ``command.txt``
        (:func:`layernet.runfolder.record_command`; the model card of a published model
        quotes it).

    Returns
    -------
    dict
        ``run_dir``, ``best_score``, ``best_epoch``, ``epochs`` and the last history row.
    """
    config.validate()
    if config.phase == "overlap" and init is None and not resume:
        raise TrainingError("phase 'overlap' starts from a phase-1 model: pass --init <run>/best.h5")
    # The strategy comes first: MultiWorkerMirroredStrategy must be created before any TF op.
    strategy = make_strategy(config.strategy)
    run_dir = worker_run_dir(run_dir, strategy)
    os.makedirs(run_dir, exist_ok=True)
    state_path = os.path.join(run_dir, runfolder.STATE_FILE)
    if resume:
        if not os.path.exists(state_path):
            raise TrainingError(f"{run_dir}: nothing to resume (no {runfolder.STATE_FILE})")
        state = runfolder.load_json(state_path)
    else:
        try:
            runfolder.check_free_for_a_new_run(run_dir)
        except runfolder.RunFolderError as error:
            raise TrainingError(str(error)) from None
        state = {"epoch": 0, "best_score": -1.0, "best_epoch": -1}
        config.save(os.path.join(run_dir, runfolder.CONFIG_FILE))
    if command is not None:
        runfolder.record_command(run_dir, command)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    data = load_training_data(config, load_source, run_dir)
    if not data.streamed:  # the streaming cache holds the method's sample targets already
        attach_sample_targets(data.train, config)
    if config.join_max_area_ratio:
        # in the image's pixels, where Algorithm 1 joins (the samples are at the network's)
        area = int(round(median_object_area(sample.stack for sample in data.train)
                         / config.input_scale ** 2))
        if not area:
            raise TrainingError(f"dataset {config.data!r} has no objects in its training split: "
                                "join_max_area_ratio needs their median area")
        if area != config.object_area:
            logger.info("median object area of the training split: %d pixels (join of "
                        "neighbouring layers up to %.0f pixels)", area,
                        config.join_max_area_ratio * area)
            config = config.replace(object_area=area)
            config.save(os.path.join(run_dir, runfolder.CONFIG_FILE))

    steps = config.steps_per_epoch or max(1, math.ceil(len(data.train) / config.batch_size))
    max_steps = config.epochs * steps
    budgeted = config.time_budget_minutes > 0 and config.lr_schedule != "staircase"
    if budgeted and _multi_worker(strategy):
        raise TrainingError("a time-budgeted learning-rate schedule (--minutes with "
                            f"lr_schedule {config.lr_schedule!r}) would differ between workers; "
                            "with --strategy multiworker give --epochs instead of --minutes")
    with strategy.scope():
        net = build_model(config)
        trainer = LayeringTrainer(net, config, config.phase, name="trainer")
        schedule = learning_rate_schedule(config, int(state.get("total_steps", max_steps)))
        optimizer = build_optimizer(config, schedule)
        trainer.compile(optimizer=optimizer)
    if resume:
        runfolder.recover(run_dir, int(state["epoch"]))
        load_model_weights(net, os.path.join(run_dir, runfolder.LAST_FILE))
        _restore_optimizer(optimizer, net, os.path.join(run_dir, runfolder.OPTIMIZER_FILE))
        if "step" in state and int(optimizer.iterations.numpy()) != int(state["step"]):
            raise runfolder.RunFolderError(
                f"{run_dir}: {runfolder.OPTIMIZER_FILE} is at step "
                f"{int(optimizer.iterations.numpy())} but {runfolder.STATE_FILE} at {state['step']}")
        logger.info("resuming %s at epoch %d, step %d", run_dir, state["epoch"],
                    int(optimizer.iterations.numpy()))
    elif init is not None:
        load_model_weights(net, runfolder.resolve_model_path(init))
        logger.info("initialised from %s", init)

    layer_of = None
    if config.phase == "overlap":
        assignment_path = os.path.join(run_dir, runfolder.ASSIGNMENT_FILE)
        if resume and os.path.exists(assignment_path):
            arrays = runfolder.load_arrays(assignment_path)
            layer_of = [arrays[f"s{index:05d}"] for index in range(len(data.train))]
        else:
            layer_of = frozen_layer_assignment(net, data.train, config)
            runfolder.save_arrays_atomic(assignment_path, {
                f"s{index:05d}": value for index, value in enumerate(layer_of)})
    runfolder.save_json_atomic(os.path.join(run_dir, runfolder.THRESHOLDS_FILE), {
        "tau": config.tau, "min_size": config.min_size, "overlap_layers": config.overlap_layers,
        "connectivity": config.connectivity, "join_layers": config.join_layers,
        "join_max_area": config.join_max_area})

    dataset = make_dataset(data.train, config.at_network_scale(), training=True,
                           layer_of=layer_of,
                           start=int(optimizer.iterations.numpy()) * config.batch_size)
    history = runfolder.read_history(os.path.join(run_dir, runfolder.HISTORY_FILE))
    history = [row for row in history if int(row.get("epoch", 0)) <= int(state["epoch"])]
    spent = float(state.get("train_seconds", 0.0))
    planner = (BudgetPlanner(schedule, config.time_budget_minutes * 60.0, spent, max_steps)
               if budgeted else None)
    epoch_end = EpochEnd(run_dir, config, data.val, history, float(state["best_score"]),
                         int(state["best_epoch"]), float(state.get("best_aji", -1.0)),
                         planner=planner, spent_seconds=spent,
                         best_selection=(tuple(state["best_selection"])
                                         if "best_selection" in state else None))
    callbacks = [epoch_end, keras.callbacks.TensorBoard(
        os.path.join(run_dir, "logs"), write_graph=False, update_freq="epoch")]
    if config.time_budget_minutes > 0:
        callbacks.insert(0, TimeBudget(config.time_budget_minutes, spent))
    ema_to_check = moving_average_to_check(config.ema_momentum, init, resume)
    if planner is not None:
        planner.restart_clock()
        if "total_steps" not in state:  # a fresh run: no estimate yet
            callbacks.insert(0, FirstEstimate(planner, ema_momentum=ema_to_check))
    elif config.time_budget_minutes <= 0:
        _warn_if_ema_too_long(ema_to_check, max_steps)
    initial_epoch = int(state["epoch"])
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2
    if initial_epoch < config.epochs:
        warnings.filterwarnings("ignore", message=".*shuffle=True.*tf.data.Dataset.*")
        trainer.fit(dataset, epochs=config.epochs, initial_epoch=initial_epoch,
                    steps_per_epoch=steps, callbacks=callbacks, verbose=verbose)
    else:
        logger.info("%s: already trained for %d epochs", run_dir, initial_epoch)
    if config.tune_thresholds and config.train_on_val:
        logger.info("thresholds not tuned: with train_on_val there are no validation images "
                    "(tau %.2f, min_size %d as configured)", config.tau, config.min_size)
    elif config.tune_thresholds and strategy.extended.should_checkpoint:
        tune_run_thresholds(net, config, run_dir, data.val)
    return {"run_dir": run_dir, "best_score": epoch_end.best, "best_epoch": epoch_end.best_epoch,
            "epochs": len(history), "last": history[-1] if history else {}}
