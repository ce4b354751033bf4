"""Named recipes (train.py --recipe), presets that change only their own fields, and the sweep
runner bench/recipes.py end to end on a tiny grid."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from layernet.config import (ARCHITECTURE_FIELDS, AUTHORS_VARIANTS, RECIPE_LAYERING,
                             RECIPE_PHASE2, RECIPES, Config, ConfigError, apply_presets)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def build(*argv: str) -> Config:
    from layernet_commands import train

    return train.build_config(train.parse_args(list(argv)))


def test_recipes_are_valid_configs_and_paper_is_the_default():
    for name, fields in RECIPES.items():
        Config(**fields).validate()
    default = Config()
    for key, value in RECIPES["paper"].items():
        assert getattr(default, key) == value, key


def test_recipe_sets_its_fields_and_command_line_options_win():
    config = build("--recipe", "cpu", "--precision", "float32")
    for key, value in RECIPES["cpu"].items():
        assert getattr(config, key) == value, key
    config = build("--recipe", "cpu", "--lr", "5e-4", "--size", "S", "--precision", "float32")
    assert config.learning_rate == 5e-4 and config.size == "S"
    assert config.optimizer == RECIPES["cpu"]["optimizer"]
    for key, value in RECIPE_LAYERING["cpu"].items():
        assert getattr(config, key) == value, key
    baseline = build("--recipe", "cpu", "--method", "unet3", "--precision", "float32")
    assert baseline.method == "unet3" and baseline.lr_schedule == RECIPES["cpu"]["lr_schedule"]
    # the layering settings stay the defaults for a baseline (it has no layers)
    for key in RECIPE_LAYERING["cpu"]:
        assert getattr(baseline, key) == getattr(Config(), key), key


def test_presets_change_only_their_own_fields():
    start = Config(size="S", filters=8, head_filters=8, data="bbbc010", tau=0.4).to_dict()
    authors = apply_presets(start, authors=True)
    changed = {key for key in start if start[key] != authors[key]}
    assert changed <= set(AUTHORS_VARIANTS) and changed
    kept = apply_presets(start, recipe="cpu", keep_architecture=True)
    for key in ARCHITECTURE_FIELDS:
        assert kept[key] == start[key], key
    assert kept["optimizer"] == RECIPES["cpu"]["optimizer"] and kept["tau"] == 0.4
    with pytest.raises(ConfigError, match="unknown recipe"):
        apply_presets(start, recipe="gpu")


def test_init_keeps_its_architecture_under_a_recipe_and_authors(tmp_path):
    """--init X --recipe cpu --authors: the model's architecture and data stay (the authors'
    preset used to replace the whole configuration taken from --init)."""
    run = tmp_path / "phase1"
    run.mkdir()
    Config(size="S", filters=8, head_filters=8, data="synthetic",
           data_options={"size": 96}).save(str(run / "config.json"))
    (run / "best.h5").write_bytes(b"")
    config = build("--init", str(run / "best.h5"), "--recipe", "cpu", "--authors")
    assert (config.size, config.filters, config.head_filters) == ("S", 8, 8)
    assert config.data_options == {"size": 96}
    assert config.phase == "overlap"
    assert config.optimizer == RECIPES["cpu"]["optimizer"]
    # phase 2 of the cpu recipe fine-tunes (its own rate); --authors' online targets are argmax
    assert config.learning_rate == RECIPE_PHASE2["cpu"]["learning_rate"]
    assert config.layer_assignment == "argmax" and config.overlap_targets == "online"
    phase2 = build("--init", str(run / "best.h5"), "--recipe", "cpu")
    assert phase2.layer_assignment == "distinct" and phase2.learning_rate == 1e-4
    # phase 1's orientation targets are not used in phase 2; its layers still join
    assert phase2.layer_target_weight == 0 and phase2.join_layers == 1
    explicit = build("--init", str(run / "best.h5"), "--recipe", "cpu", "--lr", "3e-4")
    assert explicit.learning_rate == 3e-4   # an explicit option wins
    phase1 = build("--recipe", "cpu", "--precision", "float32")
    assert phase1.phase == "layering" and phase1.layer_assignment == "orientation"
    assert phase1.layer_target_weight == 3 and phase1.join_layers == 1
    assert phase1.join_max_area_ratio == 1.5 and phase2.join_max_area_ratio == 1.5
    assert config.mean_mode == AUTHORS_VARIANTS["mean_mode"]


def test_phase2_of_the_cpu_recipe_drops_the_overlap_weight_of_phase1_targets(tmp_path):
    """A phase 1 trained with layer_target_overlap_weight: the README's phase-2 command
    (--init RUN --recipe cpu) must build, the weight going with the layer targets it weighs."""
    run = tmp_path / "phase1"
    run.mkdir()
    Config(size="S", filters=8, head_filters=8, data="synthetic", layer_target_weight=3,
           layer_assignment="position", layer_target_overlap_weight=4).save(
        str(run / "config.json"))
    (run / "best.h5").write_bytes(b"")
    phase2 = build("--init", str(run / "best.h5"), "--recipe", "cpu")
    assert phase2.phase == "overlap" and phase2.layer_target_weight == 0
    assert phase2.layer_target_overlap_weight == 1
    tuned = build("--init", str(run / "best.h5"), "--recipe", "cpu", "--phase", "layering")
    assert tuned.layer_target_weight == 3   # fine-tuning phase 1: the recipe's targets
    assert tuned.layer_target_overlap_weight == 4   # and the model's weight of their overlaps


def test_set_overrides_any_field_and_rejects_unknown_ones():
    config = build("--set", "elastic_probability=0", "--set", "rotate=false", "--precision",
                   "float32")
    assert config.elastic_probability == 0 and config.rotate is False
    with pytest.raises(ConfigError, match="unknown config field"):
        build("--set", "elastic=0")


def test_foreground_dice_flag_sets_its_field_and_rejects_negative_weights():
    assert build("--precision", "float32").foreground_dice_weight == 0.0
    assert build("--foreground-dice", "0.5", "--precision", "float32").foreground_dice_weight == 0.5
    with pytest.raises(ConfigError, match="foreground_dice_weight"):
        build("--foreground-dice", "-1", "--precision", "float32")


def test_sweep_runner_writes_a_table_with_the_commands(tmp_path):
    out = tmp_path / "sweep"
    common = ["--size", "S", "--filters", "8", "--head-filters", "8", "--patch-size", "64",
              "--batch-size", "2", "--data-option", "size=96", "--data-option", "count=8",
              "--min-size", "30", "--precision", "float32"]
    command = [sys.executable, "-m", "bench.recipes",
               "--row", "adam=--optimizer adam --lr 1e-3 --lr-schedule cosine",
               "--row", "no-elastic=--set elastic_probability=0", "--seeds", "0",
               "--steps", "2", "--steps-per-epoch", "1", "--out", str(out), "--", *common]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = (out / "table.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| adam ")
             or line.startswith("| no-elastic ")]
    assert len(lines) == 2 and all("| 2 |" in line for line in lines)
    assert "--optimizer adam --lr 1e-3 --lr-schedule cosine --seed SEED --epochs 2" in table
    adam = Config.load(str(out / "adam-s0" / "config.json"))
    assert adam.optimizer == "adam" and adam.lr_schedule == "cosine"
    assert Config.load(str(out / "no-elastic-s0" / "config.json")).elastic_probability == 0
    # a finished run is reused: a second call trains nothing
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert again.returncode == 0 and "start:" not in again.stdout


def test_thresholds_are_tuned_on_validation_and_used_by_the_run_models(tmp_path):
    """tune_thresholds: after training, thresholds.json holds the grid's best pair on the
    validation split; config_for_model (predict.py, evaluate.py, --init) returns it; the grid's
    row of the configured pair equals the training's own validation scoring."""
    from datasets import load_source
    from layernet import runfolder
    from layernet.config import MIN_SIZE_FACTORS, TAU_GRID
    from layernet.inference import Predictor
    from layernet.training import load_training_data, train, validation_scores

    config = Config(size="S", filters=8, head_filters=8, patch_size=64, batch_size=2,
                    min_size=30, data_options={"size": 96, "count": 8}, learning_rate=1e-3,
                    epochs=1, steps_per_epoch=4, tune_thresholds=True).validate()
    run = tmp_path / "run"
    train(config, str(run), verbose=0, load_source=load_source)
    thresholds = runfolder.load_json(str(run / runfolder.THRESHOLDS_FILE))
    assert thresholds["tuned"] is True
    grid = thresholds["grid"]
    assert len(grid) == len(TAU_GRID) * len(MIN_SIZE_FACTORS)
    best = max(grid, key=lambda row: (row["meanAP"], row["AJI"]))
    assert (thresholds["tau"], thresholds["min_size"]) == (best["tau"], best["min_size"])
    loaded = runfolder.config_for_model(str(run / runfolder.BEST_FILE))
    assert (loaded.tau, loaded.min_size) == (best["tau"], best["min_size"])
    assert Config.load(str(run / runfolder.CONFIG_FILE)).tau == config.tau  # config unchanged

    net, _ = runfolder.load_trained_model(str(run / runfolder.BEST_FILE))
    val = load_training_data(config, load_source).val
    configured = thresholds["configured"]
    direct = validation_scores(Predictor(net, config), val)
    assert configured["meanAP"] == pytest.approx(direct["meanAP"])
    assert configured["AJI"] == pytest.approx(direct["AJI"])
    for row in grid:
        if (row["tau"], row["min_size"]) == (0.3, 60):
            scores = validation_scores(Predictor(net, config.replace(tau=0.3, min_size=60)), val)
            assert row["AJI"] == pytest.approx(scores["AJI"])


def test_training_measures_the_object_area_of_the_join_limit(tmp_path):
    """join_max_area_ratio: train() writes the training split's median object area to
    config.json and the limit to thresholds.json; the run's models use it."""
    import numpy as np

    from datasets import load_source
    from layernet import runfolder
    from layernet.instances import median_object_area
    from layernet.training import load_training_data, train

    config = Config(size="S", filters=8, head_filters=8, patch_size=64, batch_size=2,
                    min_size=30, data_options={"size": 96, "count": 6}, learning_rate=1e-3,
                    epochs=1, steps_per_epoch=2, join_layers=1,
                    join_max_area_ratio=1.5).validate()
    run = tmp_path / "run"
    train(config, str(run), verbose=0, load_source=load_source)
    stacks = [sample.stack for sample in load_training_data(config, load_source).train]
    areas = np.concatenate([np.unique(s[s > 0], return_counts=True)[1] for s in stacks])
    expected = int(round(float(np.median(areas))))
    assert expected > 0 and median_object_area(iter(stacks)) == expected
    saved = Config.load(str(run / runfolder.CONFIG_FILE))
    assert saved.object_area == expected and saved.join_max_area == 1.5 * expected
    thresholds = runfolder.load_json(str(run / runfolder.THRESHOLDS_FILE))
    assert thresholds["join_max_area"] == 1.5 * expected
    assert runfolder.config_for_model(str(run / runfolder.BEST_FILE)).join_max_area == \
        1.5 * expected
    assert median_object_area([]) == 0 and median_object_area([np.zeros((1, 4, 4))]) == 0
    assert median_object_area([np.array([[[1, 1, 2], [3, 3, 3]]])]) == 2


def test_foreground_outline_weight_is_set_by_set_and_must_be_positive():
    config = build("--set", "foreground_outline_weight=4", "--precision", "float32")
    assert config.foreground_outline_weight == 4.0
    with pytest.raises(ConfigError, match="foreground_outline_weight"):
        build("--set", "foreground_outline_weight=0", "--precision", "float32")
