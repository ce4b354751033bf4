"""Learning-rate schedules (hand-computed values, the Keras schedule against the plain-Python
reference), the time-budget estimate of the last step, optimizers and the weight average."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from layernet import runfolder
from layernet.config import Config, ConfigError
from layernet.schedules import (BudgetPlanner, TrainingSchedule, learning_rate_at,
                                seconds_per_step)

TINY = dict(size="S", filters=8, head_filters=8, patch_size=64, batch_size=2, min_size=30,
            data_options={"size": 96, "count": 8}, learning_rate=1e-3)


def test_cosine_by_hand():
    config = Config(learning_rate=1e-3, lr_schedule="cosine", final_lr_fraction=0.0)
    # 11 steps, no warm-up: cos from step 0 (peak) to step 10 (final), half-way at step 5
    assert learning_rate_at(config, 0, 11) == pytest.approx(1e-3)
    assert learning_rate_at(config, 5, 11) == pytest.approx(0.5e-3)
    assert learning_rate_at(config, 10, 11) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate_at(config, 2.5, 11) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)))
    # past the end the rate stays at the final value
    assert learning_rate_at(config.replace(final_lr_fraction=0.1), 50, 11) == pytest.approx(1e-4)


def test_warmup_by_hand():
    config = Config(learning_rate=1e-3, lr_schedule="cosine", warmup_fraction=0.2,
                    final_lr_fraction=0.0)
    # 21 steps: warm-up over 4.2 steps, linear from (step + 1) / 5.2 of the peak
    assert learning_rate_at(config, 0, 21) == pytest.approx(1e-3 / 5.2)
    assert learning_rate_at(config, 4, 21) == pytest.approx(5e-3 / 5.2)
    # then cosine over the remaining 20 - 4.2 = 15.8 steps
    assert learning_rate_at(config, 5, 21) == pytest.approx(
        1e-3 * 0.5 * (1 + math.cos(math.pi * 0.8 / 15.8)))
    onecycle = config.replace(lr_schedule="onecycle")
    assert learning_rate_at(onecycle, 0, 21) == pytest.approx(1e-3 / 25)
    assert learning_rate_at(onecycle, 2.1, 21) == pytest.approx((1e-3 / 25 + 1e-3) / 2)
    staircase = Config(learning_rate=1e-3, warmup_fraction=0.5, decay_steps=10, decay_rate=0.5)
    assert learning_rate_at(staircase, 0, 40) == pytest.approx(1e-3 / 21)
    assert learning_rate_at(staircase, 25, 40) == pytest.approx(0.25e-3)


@pytest.mark.parametrize("schedule", ["staircase", "cosine", "onecycle"])
@pytest.mark.parametrize("warmup", [0.0, 0.1])
def test_keras_schedule_matches_reference(schedule, warmup):
    config = Config(learning_rate=2e-3, lr_schedule=schedule, warmup_fraction=warmup,
                    final_lr_fraction=0.05, decay_steps=7, decay_rate=0.8)
    keras_schedule = TrainingSchedule(config, 60)
    for step in range(0, 70, 3):
        assert float(keras_schedule(step)) == pytest.approx(learning_rate_at(config, step, 60),
                                                            rel=1e-5), step


def test_moving_the_end_takes_effect_in_a_compiled_function():
    import tensorflow as tf

    config = Config(learning_rate=1e-3, lr_schedule="cosine", final_lr_fraction=0.0)
    schedule = TrainingSchedule(config, 11)
    compiled = tf.function(lambda step: schedule(step))
    assert float(compiled(tf.constant(10))) == pytest.approx(0.0, abs=1e-9)
    schedule.set_total_steps(21)
    assert float(compiled(tf.constant(10))) == pytest.approx(0.5e-3)


def test_budget_planner_estimates_the_last_step():
    config = Config(learning_rate=1e-3, lr_schedule="cosine")
    schedule = TrainingSchedule(config, 1_000_000)
    planner = BudgetPlanner(schedule, budget_seconds=100.0, elapsed_seconds=40.0)
    # 60 s left at 0.5 s per step: 120 more steps after step 30
    assert planner.estimate(30, 0.5) == pytest.approx(150.0, abs=0.5)
    assert float(schedule.total_steps.numpy()) == pytest.approx(150.0, abs=0.5)
    capped = BudgetPlanner(schedule, budget_seconds=100.0, max_steps=80)
    assert capped.estimate(30, 0.5) == 80
    spent = BudgetPlanner(schedule, budget_seconds=10.0, elapsed_seconds=20.0)
    assert spent.estimate(30, 0.5) == 31  # over budget: at least one more step
    assert seconds_per_step(10, 5.0, 30, 15.0) == 0.5
    assert seconds_per_step(10, 5.0, 10, 15.0) == 0.0


def test_config_checks_the_new_fields():
    for bad in (dict(optimizer="sgd"), dict(lr_schedule="linear"), dict(warmup_fraction=1.0),
                dict(final_lr_fraction=-0.1), dict(ema_momentum=1.0), dict(weight_decay=-1.0),
                dict(optimizer="adamw")):
        with pytest.raises(ConfigError):
            Config(**bad).validate()
    Config(optimizer="adamw", weight_decay=1e-4).validate()


@pytest.mark.parametrize("name,cls", [("rmsprop", "RMSprop"), ("adam", "Adam"),
                                      ("adamw", "AdamW")])
def test_optimizer_choice(name, cls):
    from layernet.training import build_optimizer

    options = dict(weight_decay=1e-4) if name == "adamw" else {}
    optimizer = build_optimizer(Config(optimizer=name, ema_momentum=0.9, **options))
    assert type(optimizer).__name__ == cls
    assert optimizer.use_ema and optimizer.ema_momentum == pytest.approx(0.9)
    assert not build_optimizer(Config(optimizer=name, **options)).use_ema


def test_averaged_weights_are_swapped_in_and_out():
    import keras

    from layernet.model import build_model
    from layernet.training import averaged_weights, averaged_weights_in, build_optimizer

    config = Config(optimizer="adam", ema_momentum=0.5, **TINY).validate()
    net = build_model(config)
    optimizer = build_optimizer(config)
    optimizer.build(net.trainable_variables)
    for _ in range(3):
        optimizer.apply([keras.ops.ones_like(v) for v in net.trainable_variables],
                        net.trainable_variables)
    raw = [np.asarray(v) for v in net.trainable_variables]
    averages = [np.asarray(v) for v in averaged_weights(optimizer)]
    assert any(not np.allclose(a, r) for a, r in zip(averages, raw))
    with averaged_weights_in(net, optimizer) as swapped:
        assert swapped
        for variable, average in zip(net.trainable_variables, averages):
            np.testing.assert_array_equal(np.asarray(variable), average)
    for variable, value in zip(net.trainable_variables, raw):
        np.testing.assert_array_equal(np.asarray(variable), value)
    assert averaged_weights(build_optimizer(Config())) is None


def test_cosine_run_ends_at_the_final_rate_and_best_holds_the_averaged_weights(tmp_path):
    """--epochs: the schedule ends exactly at the last step; with --ema, best.h5 holds the
    averaged weights that were validated, last.h5 the raw ones (which --resume continues)."""
    from datasets import load_source
    from layernet.model import build_model, load_model_weights
    from layernet.training import train

    config = Config(epochs=1, steps_per_epoch=6, optimizer="adam", lr_schedule="cosine",
                    warmup_fraction=0.2, final_lr_fraction=0.1, ema_momentum=0.5,
                    **TINY).validate()
    run = tmp_path / "run"
    train(config, str(run), verbose=0, load_source=load_source)
    history = runfolder.read_history(str(run / runfolder.HISTORY_FILE))
    assert [row["step"] for row in history] == [6]
    assert history[-1]["learning_rate"] == pytest.approx(1e-4)
    state = runfolder.load_json(str(run / runfolder.STATE_FILE))
    assert state["total_steps"] == 6 and state["best_epoch"] == 1
    assert state["train_seconds"] > 0
    best, last = build_model(config), build_model(config)
    load_model_weights(best, str(run / runfolder.BEST_FILE))
    load_model_weights(last, str(run / runfolder.LAST_FILE))
    assert any(not np.allclose(np.asarray(a), np.asarray(b))
               for a, b in zip(best.trainable_weights, last.trainable_weights))
    # the non-trainable batch-norm statistics are not averaged: equal in both files
    for a, b in zip(best.non_trainable_weights, last.non_trainable_weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_time_budget_schedule_reaches_its_end(tmp_path):
    """--minutes with a cosine schedule: the end is estimated during the run (not the huge
    epochs * steps), saved in state.json, and the learning rate has decayed by the end."""
    from datasets import load_source
    from layernet.training import train

    config = Config(epochs=100_000, steps_per_epoch=5, lr_schedule="cosine",
                    optimizer="adam", final_lr_fraction=0.0, time_budget_minutes=0.5,
                    **TINY).validate()
    run = tmp_path / "run"
    train(config, str(run), verbose=0, load_source=load_source)
    history = runfolder.read_history(str(run / runfolder.HISTORY_FILE))
    state = runfolder.load_json(str(run / runfolder.STATE_FILE))
    assert state["total_steps"] < 10_000  # estimated, not epochs * steps_per_epoch
    last_step = history[-1]["step"]
    # the estimate after the last epoch lies within a factor 2 of the step actually reached
    assert last_step / 2 <= state["total_steps"] <= 2 * last_step + 10
    assert history[-1]["learning_rate"] < 0.5 * config.learning_rate
    assert state["train_seconds"] >= 30


def test_selection_window_averages_the_last_epochs():
    from layernet.training import EpochEnd

    history = [{"val_meanAP": value, "val_AJI": aji}
               for value, aji in ((0.1, 0.5), (0.6, 0.7), (0.2, 0.4))]

    def chooser(window):
        return EpochEnd("unused", Config(select_window=window, **TINY).validate(), [],
                        history, -1.0, -1)
    assert chooser(1).selection_score(0.3, 0.6) == (0.3, 0.6)
    assert chooser(3).selection_score(0.3, 0.6) == pytest.approx((1.1 / 3, 1.7 / 3))
    assert chooser(10).selection_score(0.3, 0.6) == pytest.approx((1.2 / 4, 2.2 / 4))
    with pytest.raises(ConfigError, match="select_window"):
        Config(select_window=0).validate()
    with pytest.raises(ConfigError, match="select_window"):
        Config(select_window=2.5).validate()


@pytest.mark.parametrize("window, best_epoch", [(1, 2), (3, 6)])
def test_best_checkpoint_is_chosen_by_the_windowed_score(tmp_path, monkeypatch, window,
                                                         best_epoch):
    """The validation meanAPs of a tiny run are scripted (0 for an untrained net otherwise):
    0.1, 0.5, 0.1, 0.3, 0.35, 0.4. One lucky epoch (2) is the best by its own score; averaged
    over three epochs (0.1, 0.3, 0.23, 0.3, 0.25, 0.35) the last one is, and best.h5 then holds
    the weights of the last epoch (last.h5: no moving average here)."""
    import layernet.training as training
    from datasets import load_source
    from layernet.model import build_model, load_model_weights

    scripted = iter([0.1, 0.5, 0.1, 0.3, 0.35, 0.4])
    monkeypatch.setattr(training, "validation_scores",
                        lambda predictor, samples: {"meanAP": next(scripted), "AJI": 0.5})
    config = Config(epochs=6, steps_per_epoch=2, optimizer="adam", select_window=window,
                    **TINY).validate()
    run = tmp_path / "run"
    training.train(config, str(run), verbose=0, load_source=load_source)
    state = runfolder.load_json(str(run / runfolder.STATE_FILE))
    assert state["best_epoch"] == best_epoch and state["select_window"] == window
    assert state["best_score"] == pytest.approx([0.1, 0.5, 0.1, 0.3, 0.35, 0.4][best_epoch - 1])
    expected = {1: 0.5, 3: (0.3 + 0.35 + 0.4) / 3}[window]
    assert state["best_selection"] == pytest.approx([expected, 0.5])
    best, last = build_model(config), build_model(config)
    load_model_weights(best, str(run / runfolder.BEST_FILE))
    load_model_weights(last, str(run / runfolder.LAST_FILE))
    same = all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(best.weights, last.weights))
    assert same == (best_epoch == 6)


def test_ema_first_weight_is_what_keras_keeps_of_the_first_step():
    """The share of the first step's weights in Keras's moving average after n steps is
    momentum ** (n - 1): a scalar that is 1 after the first step and 0 after all the others."""
    import keras

    from layernet.schedules import ema_first_weight

    assert ema_first_weight(0.5, 3) == pytest.approx(0.25)
    assert ema_first_weight(0.9, 1) == 1.0
    for steps in (1, 2, 5):
        variable = keras.Variable(0.0, dtype="float32")
        optimizer = keras.optimizers.SGD(learning_rate=1.0, use_ema=True, ema_momentum=0.5)
        optimizer.build([variable])
        for step in range(steps):
            gradient = -1.0 if step == 0 else (1.0 if step == 1 else 0.0)
            optimizer.apply([keras.ops.convert_to_tensor(gradient)], [variable])
        assert float(np.asarray(variable)) == (1.0 if steps == 1 else 0.0)
        average = float(np.asarray(optimizer._model_variables_moving_average[0]))
        assert average == pytest.approx(ema_first_weight(0.5, steps))


def test_ema_too_long_warning_names_the_share_and_a_fitting_momentum():
    from layernet.schedules import ema_first_weight, ema_too_long_warning

    # 20 minutes of OCC2014 on the AVX2 machine: about 1,200 steps
    warning = ema_too_long_warning(0.999, 1200)
    assert "ema_momentum 0.999" in warning and "1200 steps" in warning and "30%" in warning
    assert "--ema 0.996 " in warning
    assert ema_first_weight(0.996, 1200) <= 0.01 < ema_first_weight(0.997, 1200)
    assert ema_too_long_warning(0.996, 1200) is None
    assert ema_too_long_warning(0.99, 2400) is None
    assert ema_too_long_warning(0.0, 10) is None
    assert ema_too_long_warning(0.9, 1) is None


def test_training_warns_of_a_moving_average_too_long_for_it(tmp_path, caplog):
    """--epochs: warned once before training, from epochs * steps_per_epoch; --minutes: once,
    after the first estimate of the last step (FirstEstimate). (Without --ema there is nothing
    to warn of: ema_too_long_warning(0, ...) is None, tested above.)"""
    import logging
    import types

    from datasets import load_source
    from layernet.training import FirstEstimate, moving_average_to_check, train

    config = Config(epochs=1, steps_per_epoch=3, optimizer="adam", ema_momentum=0.9,
                    **TINY).validate()
    with caplog.at_level(logging.WARNING, logger="layernet.training"):
        train(config, str(tmp_path / "long"), verbose=0, load_source=load_source)
    assert caplog.text.count("(ema_momentum 0.9) is too long for about 3 steps") == 1
    # from a trained model (--init) the average starts at good weights: nothing to check
    assert moving_average_to_check(0.9, None, False) == 0.9
    assert moving_average_to_check(0.9, "model/best.h5", False) == 0.0
    assert moving_average_to_check(0.9, "model/best.h5", True) == 0.9  # resumed: its own start

    # a budget already spent: the estimated end is the next step
    planner = BudgetPlanner(TrainingSchedule(config, 1000), budget_seconds=1e-9)
    callback = FirstEstimate(planner, first=0, last=1, ema_momentum=0.999)
    iterations = types.SimpleNamespace(value=4)
    iterations.numpy = lambda: iterations.value
    callback.set_model(types.SimpleNamespace(optimizer=types.SimpleNamespace(
        iterations=iterations)))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="layernet.training"):
        callback.on_train_batch_end(0)
        iterations.value = 5
        callback.on_train_batch_end(1)
        callback.on_train_batch_end(2)
    assert caplog.text.count("(ema_momentum 0.999) is too long for about 6 steps") == 1
