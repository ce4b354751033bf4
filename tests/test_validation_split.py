"""The train/validation split of a run: ``--val-fraction`` reaches every loader, ``--split-seed``
draws the split apart from ``--seed``, the split holds at least ``MIN_VAL_IMAGES`` images, a
config written before ``split_seed`` keeps its split, and ``evaluate.py --split val`` scores the
run's own validation images."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil

import pytest

pytest.importorskip("tensorflow")

from bench.stream_memory import write_folder_dataset  # noqa: E402
from datasets import MIN_VAL_IMAGES, load_source, split_indices, val_split  # noqa: E402
from layernet import runfolder  # noqa: E402
from layernet.config import Config, ConfigError  # noqa: E402
from layernet.training import TrainingError, load_training_data  # noqa: E402
from layernet_commands.train import build_config, parse_args  # noqa: E402

SYNTHETIC = ["--data", "synthetic", "--data-option", "size=64", "--data-option", "count=20",
             "--data-option", "min_area=30", "--no-stream"]


def split_names(argv: list[str]) -> tuple[list[str], list[str]]:
    """Names of the training and validation images of ``train.py argv`` (its config, loaded as
    training loads it)."""
    data = load_training_data(build_config(parse_args(argv)), load_source)
    return [s.name for s in data.train], [s.name for s in data.val]


# ------------------------------------------------------------------ split sizes
def test_validation_split_sizes_with_the_minimum() -> None:
    assert MIN_VAL_IMAGES == 3
    # pool size -> validation images at val_fraction 0.1 (round(0.1 n), at least min(3, n - 1))
    expected = {0: 0, 1: 0, 2: 1, 3: 2, 4: 3, 11: 3, 30: 3, 40: 4, 48: 5, 74: 7}
    for count, n_val in expected.items():
        train, val = val_split(count, 0.1, seed=0)
        assert (len(train), len(val)) == (count - n_val, n_val), count
        assert sorted(set(train) | set(val)) == list(range(count))
    assert len(val_split(20, 0.0, 0)[1]) == 3  # the minimum, not none
    assert len(val_split(20, 0.5, 0)[1]) == 10
    # a larger share holds out more of the same order: the smaller split is inside
    assert set(val_split(20, 0.1, 5)[1]) < set(val_split(20, 0.5, 5)[1])
    with pytest.raises(ValueError, match="val_fraction"):
        val_split(10, 1.0, 0)
    # other held-out splits (the folder test split) keep their minimum of one
    assert len(split_indices(4, 0.2, 0)[1]) == 1


def test_split_sizes_are_logged(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="layernet.samples"):
        load_source("synthetic", None, "val", 0, count=8)
    assert ("3 of 8 images for validation (val_fraction 0.1 gives 1, raised to the minimum of "
            "3), 5 for training") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="layernet.samples"):
        load_source("synthetic", None, "val", 0, count=8, val_fraction=0.5)
    assert "4 of 8 images for validation (val_fraction 0.5), 4 for training" in caplog.text


# ------------------------------------------------------------------ train.py -> loaders
def test_val_fraction_sets_the_synthetic_validation_images_through_train_cli() -> None:
    train, val = split_names(SYNTHETIC)
    assert (len(train), len(val)) == (17, 3)  # 10 % of 20 is 2: the minimum
    for fraction, n_val in (("0.25", 5), ("0.5", 10)):
        wider_train, wider = split_names(SYNTHETIC + ["--val-fraction", fraction])
        assert (len(wider_train), len(wider)) == (20 - n_val, n_val)
        assert not set(wider) & set(wider_train) and set(val) < set(wider)


def test_val_fraction_sets_the_folder_validation_images_through_train_cli(tmp_path) -> None:
    root = str(tmp_path / "data")
    write_folder_dataset(root, 12, 64, disks=3)  # 2 test images (20 %), a pool of 10
    argv = ["--data", "folder", "--data-dir", root, "--no-stream"]
    train, val = split_names(argv)
    assert (len(train), len(val)) == (7, 3)  # 10 % of 10 is 1: the minimum
    train, val = split_names(argv + ["--val-fraction", "0.5"])
    assert (len(train), len(val)) == (5, 5)
    # the folder loader's own option of before means the same
    config = build_config(parse_args(argv + ["--data-option", "val_fraction=0.5"]))
    assert config.val_fraction == 0.5 and "val_fraction" not in config.data_options
    assert [s.name for s in load_training_data(config, load_source).val] == val


def test_split_seed_is_independent_of_seed() -> None:
    train0, val0 = split_names(SYNTHETIC + ["--seed", "0"])
    train1, val1 = split_names(SYNTHETIC + ["--seed", "1"])
    assert val1 == val0 and train1 == train0
    config = build_config(parse_args(SYNTHETIC + ["--seed", "1"]))
    assert (config.seed, config.split_seed) == (1, 0)
    # the same images too: the synthetic generator follows the split seed
    data0 = load_training_data(build_config(parse_args(SYNTHETIC + ["--seed", "0"])), load_source)
    data1 = load_training_data(config, load_source)
    assert all((a.image == b.image).all() for a, b in zip(data0.val, data1.val))
    # --split-seed moves the split
    _, other = split_names(SYNTHETIC + ["--split-seed", "1"])
    assert len(other) == 3 and other != val0


def test_config_without_split_seed_keeps_the_split_of_its_seed(tmp_path) -> None:
    values = Config(data_options={"size": 64, "count": 20, "min_area": 30}, seed=4,
                    streaming="off").to_dict()
    del values["split_seed"]  # as written before split_seed existed
    path = tmp_path / runfolder.CONFIG_FILE
    path.write_text(json.dumps(values))
    config = Config.load(str(path))
    assert (config.seed, config.split_seed) == (4, 4)
    # the validation images of before: the split seeded by seed 4
    before = load_source("synthetic", None, "val", 4, size=64, count=20, min_area=30).names
    assert [s.name for s in load_training_data(config, load_source).val] == before
    assert before != load_source("synthetic", None, "val", 0, size=64, count=20,
                                 min_area=30).names
    # a --config file without split_seed, with another --seed: still the file's split
    assert build_config(parse_args(["--config", str(path), "--seed", "9"])).split_seed == 4
    # written again, split_seed is explicit
    config.save(str(path))
    assert json.loads(path.read_text())["split_seed"] == 4


def test_val_fraction_fields_and_data_options_do_not_disagree() -> None:
    folder = {"data": "folder", "data_dir": "d"}
    old = Config.from_dict({**folder, "data_options": {"val_fraction": 0.3, "size": 64}})
    assert old.val_fraction == 0.3 and old.data_options == {"size": 64}
    with pytest.raises(ConfigError, match="disagree"):
        Config.from_dict({**folder, "val_fraction": 0.2, "data_options": {"val_fraction": 0.3}})
    with pytest.raises(ConfigError, match="not a data option"):
        Config(data_options={"val_fraction": 0.3}).validate()
    with pytest.raises(ConfigError, match="split_seed"):
        Config(split_seed=-1).validate()


def test_empty_validation_split_says_why(tmp_path) -> None:
    root = str(tmp_path / "data")
    write_folder_dataset(root, 2, 64, disks=3)  # 1 test image, a pool of 1
    with pytest.raises(TrainingError) as error:
        load_training_data(Config(data="folder", data_dir=root, streaming="off"), load_source)
    message = str(error.value)
    assert "no validation images (1 training image(s))" in message
    assert "min(3, n - 1)" in message and "at least 2 images" in message
    assert message.endswith("add images, or train on all of them (--train-on-val)")
    with pytest.raises(TrainingError, match="check the data option.s. count"):
        load_training_data(Config(data_options={"count": 1, "size": 64}, streaming="off"),
                           load_source)


# ------------------------------------------------------------------ evaluate.py
def scored_names(run: str, *args: str) -> list[str]:
    """The images ``evaluate.py --model run --split val`` scores (its main, in this process:
    the command line of the tiny run is tested in tests/test_evaluate_cli.py)."""
    from layernet_commands import evaluate

    out = os.path.join(run, "eval")
    assert evaluate.main(["--model", run, "--split", "val", "--worst", "0", "--out", out,
                          *args]) == 0
    with open(os.path.join(out, "metrics.csv"), newline="") as handle:
        return [row["name"] for row in csv.DictReader(handle) if row["matching"] == "reference"]


def test_evaluate_val_scores_the_runs_validation_images(tiny_run, tmp_path) -> None:
    run = str(tmp_path / "run")
    shutil.copytree(tiny_run, run)
    config_path = os.path.join(run, runfolder.CONFIG_FILE)
    values = json.loads(open(config_path).read())
    options = values["data_options"]  # synthetic cells, 96 px, 8 images
    # a run trained with --seed 7 --val-fraction 0.5 (split seed 0)
    values.update(seed=7, split_seed=0, val_fraction=0.5)
    open(config_path, "w").write(json.dumps(values))
    expected = load_source("synthetic", None, "val", 0, val_fraction=0.5, **options).names
    assert len(expected) == 4
    assert expected != load_source("synthetic", None, "val", 7, val_fraction=0.5,
                                   **options).names  # what the training seed would draw
    assert scored_names(run) == expected
    # --split-seed / --val-fraction override the run's
    assert scored_names(run, "--split-seed", "2", "--val-fraction", "0.1") == load_source(
        "synthetic", None, "val", 2, **options).names
    # a config.json of before split_seed: the split of its seed
    del values["split_seed"]
    values.update(seed=5, val_fraction=0.1)
    open(config_path, "w").write(json.dumps(values))
    old = load_source("synthetic", None, "val", 5, **options).names
    assert old != load_source("synthetic", None, "val", 0, **options).names
    assert scored_names(run) == old
