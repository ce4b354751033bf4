"""Learning-rate schedules that know where training ends, and the time-budget estimate of it.

The paper decays the learning rate in stairs (``x0.9`` every 10k steps), which never ends: a
training of minutes or hours on a CPU stops long before the rate has moved. A schedule that
anneals to the end of the training has to know that end. With ``--epochs`` it is
``epochs * steps_per_epoch``; with a time budget (``--minutes``) it is the step the budget is
expected to reach, estimated from the measured time per step (validation and checkpoints
included) and corrected after every epoch (:class:`BudgetPlanner`). The estimate lives in a
variable that the compiled train step reads, so a correction takes effect at once; it is saved
in ``state.json`` so that ``--resume`` continues with the same schedule.

Schedules (``Config.lr_schedule``), with ``T`` the last step, ``w = warmup_fraction * T`` and
``f = final_lr_fraction``:

* ``staircase``: ``lr * decay_rate ** floor(step / decay_steps)`` (paper), after the warm-up;
* ``cosine``: linear warm-up from 0 to ``lr`` over ``w`` steps, then cosine decay to ``f * lr``;
* ``onecycle``: cosine warm-up from ``lr / 25`` to ``lr`` over ``w`` steps, then cosine decay
  to ``f * lr`` (the one-cycle policy without its momentum cycle).

:func:`learning_rate_at` is the same formula in plain Python, the reference of the tests.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import keras
import tensorflow as tf

from layernet.config import Config

logger = logging.getLogger(__name__)

ONECYCLE_START_DIVISOR = 25.0
"""One-cycle warm-up starts at ``lr / 25`` (the usual one-cycle default)."""


def learning_rate_at(config: Config, step: float, total_steps: float) -> float:
    """Learning rate of ``config``'s schedule at ``step`` of a training of ``total_steps``.

    Parameters
    ----------
    config : Config
        ``learning_rate``, ``lr_schedule``, ``warmup_fraction``, ``final_lr_fraction``,
        ``decay_steps`` and ``decay_rate`` are used.
    step : float
        Optimizer step (0 = the first update).
    total_steps : float
        Number of steps of the whole training (the schedule ends at step ``total_steps - 1``).

    Returns
    -------
    float
    """
    peak = config.learning_rate
    total = max(float(total_steps), 1.0)
    warmup = config.warmup_fraction * total
    if step < warmup:
        if config.lr_schedule == "onecycle":
            start = peak / ONECYCLE_START_DIVISOR
            return start + (peak - start) * 0.5 * (1.0 - math.cos(math.pi * step / warmup))
        return peak * (step + 1.0) / (warmup + 1.0)
    if config.lr_schedule == "staircase":
        return peak * config.decay_rate ** math.floor(step / config.decay_steps)
    final = config.final_lr_fraction * peak
    progress = min(max((step - warmup) / max(total - 1.0 - warmup, 1.0), 0.0), 1.0)
    return final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))


class TrainingSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The schedule of ``config`` as a Keras schedule whose end can move during training.

    Parameters
    ----------
    config : Config
        The run's settings (see :func:`learning_rate_at`).
    total_steps : int
        First estimate of the number of training steps.
    """

    def __init__(self, config: Config, total_steps: int) -> None:
        super().__init__()
        self.config = config
        self.total_steps = tf.Variable(float(max(total_steps, 1)), trainable=False,
                                       dtype=tf.float32, name="schedule_total_steps")

    def set_total_steps(self, total_steps: float) -> None:
        """Move the end of the schedule (takes effect at the next step)."""
        self.total_steps.assign(float(max(total_steps, 1.0)))

    def __call__(self, step: Any) -> tf.Tensor:
        config = self.config
        step = tf.cast(step, tf.float32)
        peak = tf.constant(config.learning_rate, tf.float32)
        total = tf.maximum(tf.convert_to_tensor(self.total_steps), 1.0)
        warmup = config.warmup_fraction * total
        if config.lr_schedule == "onecycle":
            start = peak / ONECYCLE_START_DIVISOR
            warm = start + (peak - start) * 0.5 * (
                1.0 - tf.cos(math.pi * step / tf.maximum(warmup, 1e-6)))
        else:
            warm = peak * (step + 1.0) / (warmup + 1.0)
        if config.lr_schedule == "staircase":
            after = peak * tf.pow(tf.constant(config.decay_rate, tf.float32),
                                  tf.floor(step / float(config.decay_steps)))
        else:
            final = config.final_lr_fraction * peak
            progress = tf.clip_by_value(
                (step - warmup) / tf.maximum(total - 1.0 - warmup, 1.0), 0.0, 1.0)
            after = final + (peak - final) * 0.5 * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < warmup, warm, after)

    def get_config(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "total_steps": float(self.total_steps.numpy())}


class BudgetPlanner:
    """Estimate the last step of a time-budgeted training and move the schedule's end to it.

    The time per step is measured over whole epochs (training, validation and checkpoint
    writing), so that the estimate accounts for everything the budget is spent on; within the
    first epoch a first estimate comes from the training steps alone.

    Parameters
    ----------
    schedule : TrainingSchedule
        The schedule to update.
    budget_seconds : float
        The whole training budget in seconds (0: no budget, the end stays where it is).
    elapsed_seconds : float, optional
        Budget already spent by earlier training calls of this run (``--resume``).
    max_steps : int or None, optional
        Upper bound of the end (``epochs * steps_per_epoch``).
    """

    def __init__(self, schedule: TrainingSchedule, budget_seconds: float,
                 elapsed_seconds: float = 0.0, max_steps: int | None = None) -> None:
        self.schedule = schedule
        self.budget_seconds = float(budget_seconds)
        self.offset = float(elapsed_seconds)
        self.max_steps = max_steps
        self.start = time.perf_counter()

    def restart_clock(self) -> None:
        """Start counting this call's time now (call at the start of training)."""
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds of the budget spent so far, earlier calls included."""
        return self.offset + time.perf_counter() - self.start

    def estimate(self, step: int, seconds_per_step: float) -> float:
        """Set and return the expected last step, given the current step and time per step."""
        if self.budget_seconds <= 0 or seconds_per_step <= 0:
            return float(self.schedule.total_steps.numpy())
        remaining = max(self.budget_seconds - self.elapsed(), 0.0)
        total = step + remaining / seconds_per_step
        if self.max_steps is not None:
            total = min(total, float(self.max_steps))
        total = max(total, step + 1.0)
        self.schedule.set_total_steps(total)
        logger.debug("schedule: %.1f s per step, expected last step %.0f", seconds_per_step, total)
        return total


EMA_FIRST_WEIGHT_LIMIT = 0.01
"""A moving average of the weights whose first value still weighs more than this share at the
last step is too long for the training (:func:`ema_too_long_warning`)."""


def ema_first_weight(momentum: float, total_steps: float) -> float:
    """Share that the weights of the first step keep in an exponential moving average of the
    weights after ``total_steps`` steps.

    Keras's moving average (``use_ema``) starts at the weights after the first step and then
    mixes in each step's weights with ``1 - momentum``, without a warm-up, so after ``n`` steps
    the first step's weights keep the share ``momentum ** (n - 1)``.

    Parameters
    ----------
    momentum : float
        The momentum of the average (``Config.ema_momentum``), in [0, 1).
    total_steps : float
        Steps of the whole training.

    Returns
    -------
    float
        The share, in [0, 1] (1 for a training of one step or none).
    """
    return float(momentum) ** max(float(total_steps) - 1.0, 0.0)


def ema_too_long_warning(momentum: float, total_steps: float,
                         limit: float = EMA_FIRST_WEIGHT_LIMIT) -> str | None:
    """The warning for a moving average of the weights too long for the training, or None.

    With ``--ema 0.999``, after the first 1,200 steps of a 20-minute OCC2014 run on a 2-core
    CPU the first step's weights still made up 30% of the average, and validation, which uses
    it, scored meanAP 0 to 0.05 where ``--ema 0.99`` scored 0.5 at the end of such runs.

    Parameters
    ----------
    momentum : float
        The momentum of the average (0: no average, no warning).
    total_steps : float
        Steps the training is expected to take.
    limit : float, optional
        Largest acceptable share of the first step's weights at the end.

    Returns
    -------
    str or None
        A one-line warning naming the share and the largest momentum that stays within the
        limit, or None when the average fits the training.
    """
    if total_steps <= 1:  # (a momentum of 0 keeps a share of 0: no warning either)
        return None
    share = ema_first_weight(momentum, total_steps)
    if share <= limit:
        return None
    fitting = math.exp(math.log(limit) / (float(total_steps) - 1.0))
    return (f"the moving average of the weights (ema_momentum {momentum:g}) is too long for "
            f"about {total_steps:.0f} steps: the first step's weights would still weigh "
            f"{100.0 * share:.0f}% of it at the end, and validation and best.h5 use it; "
            f"use --ema {math.floor(fitting * 1000.0) / 1000.0:g} or less, or train longer")


def seconds_per_step(first_step: int, first_time: float, step: int, now: float) -> float:
    """Average seconds per step between two (step, time) readings (0 when no step passed)."""
    steps = step - first_step
    return (now - first_time) / steps if steps > 0 else 0.0
