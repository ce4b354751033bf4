"""How a run's settings are merged (layernet.settings): the documented priority of defaults,
the --init model, presets, a --config file and single fields; machine fields; unknown dataset
options; every saved field is read by the code."""

from __future__ import annotations

import dataclasses
import json
import os
import re

import pytest

import datasets
from layernet.config import (ARCHITECTURE_FIELDS, AUTHORS_VARIANTS, MACHINE_FIELDS, RECIPES,
                             Config, ConfigError)
from layernet.settings import config_file_fields, resume_config, training_config
from tests.conftest import REPO

FLOAT32 = {"precision": "float32"}


def model_run(tmp_path, **fields) -> str:
    """A run folder with a config.json (and an empty best.h5): what --init reads."""
    run = tmp_path / "model"
    run.mkdir()
    Config(**fields).save(str(run / "config.json"))
    (run / "best.h5").write_bytes(b"")
    return str(run / "best.h5")


def test_priority_defaults_model_presets_file_fields(tmp_path):
    model = model_run(tmp_path, size="S", filters=8, tau=0.3, min_size=40, seed=5,
                      data="bbbc010", data_dir="/data/b", data_options={"crop": False})
    path = tmp_path / "some.json"
    path.write_text(json.dumps({"min_size": 60, "epochs": 7}))
    config = training_config(init=model, config_file=str(path), recipe="cpu", authors=True,
                             fields={"epochs": 9, "seed": None})
    assert config.size == "S" and config.filters == 8          # the model's architecture
    assert config.tau == 0.3 and config.seed == 5              # the model's, no preset owns it
    assert config.optimizer == RECIPES["cpu"]["optimizer"]     # the recipe's
    assert config.mean_mode == AUTHORS_VARIANTS["mean_mode"]   # the authors' preset
    assert config.min_size == 60                               # the file's
    assert config.epochs == 9                                  # a field given wins
    assert (config.data, config.data_dir, config.data_options) == ("bbbc010", "/data/b",
                                                                    {"crop": False})
    assert config.phase == "overlap" and config.precision == "float32"


def test_a_config_file_sets_only_its_fields(tmp_path):
    """A hand-written --config file with a few fields does not reset the rest to defaults
    (the recipe's and the model's values stay)."""
    path = tmp_path / "partial.json"
    path.write_text(json.dumps({"tau": 0.4}))
    assert config_file_fields(str(path)) == {"tau": 0.4}
    config = training_config(config_file=str(path), recipe="cpu", fields=FLOAT32)
    assert config.tau == 0.4 and config.filters == RECIPES["cpu"]["filters"]
    old = tmp_path / "old.json"  # written before split_seed: the split follows seed
    old.write_text(json.dumps({"seed": 3}))
    assert config_file_fields(str(old)) == {"seed": 3, "split_seed": 3}
    full = tmp_path / "full.json"
    Config(size="L", patch_size=256).save(str(full))
    assert set(config_file_fields(str(full))) == {f.name for f in dataclasses.fields(Config)
                                                 } - {"version"}
    with pytest.raises(ConfigError, match="partial.json|unknown"):
        path.write_text(json.dumps({"taux": 0.4}))
        config_file_fields(str(path))


def test_phase_precision_and_data_options_are_completed(tmp_path, monkeypatch):
    from layernet import model

    monkeypatch.setattr(model, "auto_precision", lambda: "mixed_bfloat16")
    assert training_config().precision == "mixed_bfloat16"          # auto by default
    assert training_config().phase == "layering"
    init = model_run(tmp_path, data_options={"size": 96, "count": 8})
    assert training_config(init=init).precision == "float32"        # the model's
    assert training_config(init=init, fields={"method": "unet2"}).phase == "layering"
    assert training_config(init=init, fields={"phase": "layering"}).phase == "layering"
    merged = training_config(init=init, data_options={"count": 12})
    assert merged.data_options == {"size": 96, "count": 12}


def test_a_16_bit_model_trains_in_float32_where_it_would_be_emulated(tmp_path, monkeypatch,
                                                                    caplog):
    from layernet import model

    init = model_run(tmp_path, precision="mixed_bfloat16")
    monkeypatch.setattr(model, "auto_precision", lambda: "float32")        # no bf16 units
    with caplog.at_level("INFO", logger="layernet.model"):
        assert training_config(init=init).precision == "float32"
    assert "only emulate" in caplog.text
    kept = training_config(init=init, fields={"precision": "mixed_bfloat16"})
    assert kept.precision == "mixed_bfloat16"                            # asked for: kept
    monkeypatch.setattr(model, "auto_precision", lambda: "mixed_bfloat16")  # native bf16
    assert training_config(init=init).precision == "mixed_bfloat16"


def test_a_model_keeps_its_machine_fields_only_for_its_own_dataset(tmp_path):
    init = model_run(tmp_path, data="folder", data_dir="/elsewhere/data",
                     cache_dir="/elsewhere/cache", strategy="mirrored", streaming="on",
                     data_options={"size": 64}, size="S")
    same = training_config(init=init)
    assert (same.data_dir, same.cache_dir, same.strategy, same.streaming) == (
        "/elsewhere/data", "/elsewhere/cache", "mirrored", "on")
    assert same.data_options == {"size": 64}
    other = training_config(init=init, fields={"data": "bbbc010", "data_dir": "/mine"})
    defaults = Config()
    for name in MACHINE_FIELDS:
        if name != "data_dir":
            assert getattr(other, name) == getattr(defaults, name), name
    assert other.data_dir == "/mine" and other.data_options == {}
    for name in ARCHITECTURE_FIELDS:
        assert getattr(other, name) == getattr(same, name), name


def test_a_published_model_by_name_is_fine_tuned_in_its_own_phase(tmp_path, monkeypatch):
    """--init NAME (layernet.runfolder.locate_model) of a published model (MODEL_CARD.md):
    its phase, unless the method changes; on another dataset the one rule above applies."""
    from layernet import runfolder

    models = tmp_path / "models"
    folder = models / "tiny"
    folder.mkdir(parents=True)
    Config(phase="layering", data="bbbc010", data_dir="/data/b", data_options={"crop": False},
           size="S").save(str(folder / "config.json"))
    (folder / "best.h5").write_bytes(b"")
    (folder / runfolder.CARD_FILE).write_text("# tiny\n")
    monkeypatch.setenv(runfolder.MODELS_ENV, str(models))
    mine = training_config(init="tiny", fields={"data": "folder", "data_dir": "/mine"})
    assert (mine.phase, mine.size, mine.data_dir, mine.data_options) == (
        "layering", "S", "/mine", {})
    assert training_config(init="tiny", fields={"method": "unet2"}).phase == "layering"
    assert training_config(init="tiny", fields={"phase": "overlap"}).phase == "overlap"
    (folder / runfolder.CARD_FILE).unlink()  # a training run's model: phase 2 follows
    assert training_config(init=str(folder)).phase == "overlap"
    with pytest.raises(runfolder.RunFolderError, match="models available: tiny"):
        training_config(init="tinny")


def test_machine_fields_are_fields_and_a_resumed_run_may_change_only_them():
    names = {f.name for f in dataclasses.fields(Config)}
    assert set(MACHINE_FIELDS) <= names and not set(MACHINE_FIELDS) & set(ARCHITECTURE_FIELDS)
    saved = Config(streaming="off")
    assert resume_config(saved, streaming="on", cache_dir="c").streaming == "on"
    assert resume_config(saved, streaming=None, cache_dir=None) == saved
    with pytest.raises(ConfigError, match="learning_rate"):
        resume_config(saved, learning_rate=1.0)


def test_train_command_line_builds_its_config_with_the_library(tmp_path):
    from layernet_commands import train

    argv = ["--recipe", "cpu", "--lr", "5e-4", "--set", "rotate=false", "--data-option",
            "size=96", "--precision", "float32", "--stream"]
    assert train.build_config(train.parse_args(argv)) == training_config(
        recipe="cpu", fields={"learning_rate": 5e-4, "rotate": False, "precision": "float32",
                              "streaming": "on"}, data_options={"size": 96})


def test_unknown_dataset_options_are_an_error():
    assert datasets.dataset_options("bbbc010") == ("channel", "crop", "wells", "limit")
    assert "min_area" in datasets.dataset_options("synthetic")
    for name in ("bbbc010", "occ2014", "ccdb6843", "folder"):
        with pytest.raises(ValueError, match=f"dataset '{name}': unknown option.*colour"):
            datasets.load_source(name, "/nowhere", "train", colour=1)
        with pytest.raises(ValueError, match="--data-dir"):
            datasets.load_source(name, None, "train")
    with pytest.raises(ValueError, match="unknown option"):
        datasets.load_dataset("synthetic", split="train", count=4, colour=1)
    datasets.check_options("folder", {"size": 64, "limit": 2})


def test_train_rejects_an_unknown_data_option_before_training(tmp_path):
    from layernet_commands import train

    out = tmp_path / "run"
    with pytest.raises(ValueError, match="dataset 'synthetic': unknown option.*colour"):
        train.main(["--data-option", "colour=1", "--precision", "float32", "--out", str(out)])
    assert not out.exists()


def test_removed_extra_field_old_configs_load():
    values = Config().to_dict()
    assert "extra" not in values
    assert Config.from_dict({**values, "extra": {}}) == Config()
    with pytest.raises(ConfigError, match="extra"):
        Config.from_dict({**values, "extra": {"note": 1}})


def test_every_config_field_is_read_by_the_code():
    """A field saved in config.json that no code reads would be a setting that does nothing."""
    sources = []
    for package in ("layernet", "datasets", "layernet_commands"):
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py") and os.path.join(folder, name) != os.path.join(
                        REPO, "layernet", "config.py"):
                    with open(os.path.join(folder, name), encoding="utf-8") as handle:
                        sources.append(handle.read())
    text = "\n".join(sources)
    unread = [f.name for f in dataclasses.fields(Config) if f.name != "version"
              and not re.search(rf"\.{f.name}\b", text)]
    assert not unread, f"config fields no code reads: {unread}"
