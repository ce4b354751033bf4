"""``train.py --train-on-val``: the whole training pool trains, nothing validates, best.h5 is the
last epoch's weights, thresholds stay as configured, and the model refuses to be scored on the
images it was trained on."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from datasets import load_source  # noqa: E402
from layernet import runfolder  # noqa: E402
from layernet.config import Config, ConfigError  # noqa: E402
from layernet.model_card import model_card  # noqa: E402
from layernet.settings import training_config  # noqa: E402
from layernet.training import load_training_data  # noqa: E402
from layernet_commands.train import build_config, parse_args  # noqa: E402
from tests.conftest import TINY_TRAIN_ARGS, run_cli  # noqa: E402

SYNTHETIC = ["--data", "synthetic", "--data-option", "size=64", "--data-option", "count=20",
             "--data-option", "min_area=30"]


def same_weights(first: str, second: str, config: Config) -> bool:
    from layernet.model import build_model, load_model_weights

    nets = [build_model(config), build_model(config)]
    for net, path in zip(nets, (first, second)):
        load_model_weights(net, path)
    return all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(nets[0].weights, nets[1].weights))


@pytest.mark.parametrize("stream", ["--no-stream", "--stream"])
def test_the_whole_training_pool_trains_and_nothing_validates(tmp_path, stream) -> None:
    split = load_training_data(build_config(parse_args(SYNTHETIC + ["--no-stream"])), load_source)
    config = build_config(parse_args(SYNTHETIC + [stream, "--train-on-val"]))
    assert config.train_on_val
    data = load_training_data(config, load_source, str(tmp_path))
    assert data.streamed == (stream == "--stream")
    assert len(data.val) == 0 and len(data.train) == 20
    names = sorted(sample.name for part in (split.train, split.val) for sample in part)
    assert sorted(data.train.names if data.streamed else [s.name for s in data.train]) == names


def test_settings_of_train_on_val() -> None:
    with pytest.raises(ConfigError, match="select_window"):
        Config(train_on_val=True, select_window=3).validate()
    assert not Config.from_dict({"data": "synthetic"}).train_on_val  # configs of before
    model = Config(data="bbbc010", data_dir="d", train_on_val=True).validate()
    # phase 2 (or fine-tuning) on the same data keeps it; another dataset has its own split
    assert training_config(init=model, fields={"phase": "overlap"}).train_on_val
    assert not training_config(init=model, fields={"data": "synthetic"}).train_on_val
    with pytest.raises(ValueError, match="give one"):
        build_config(parse_args(SYNTHETIC + ["--train-on-val", "--val-fraction", "0.3"]))


def test_a_run_without_validation_keeps_the_last_epoch(tmp_path, monkeypatch) -> None:
    """In-process, with a moving average: validation is never scored, best.h5 is written
    every epoch from the averaged weights (so it differs from last.h5, the raw ones)."""
    import layernet.training as training

    def never(*args, **kwargs):
        raise AssertionError("a train_on_val run scored a validation split")

    monkeypatch.setattr(training, "validation_scores", never)
    config = Config(size="S", filters=8, head_filters=8, patch_size=64, batch_size=2,
                    min_size=30, data_options={"size": 96, "count": 8}, epochs=2,
                    steps_per_epoch=2, optimizer="adam", ema_momentum=0.9,
                    train_on_val=True).validate()
    run = tmp_path / "run"
    result = training.train(config, str(run), verbose=0, load_source=load_source)
    assert result["best_epoch"] == 2
    state = runfolder.load_json(str(run / runfolder.STATE_FILE))
    assert (state["best_epoch"], state["best_metric"]) == (2, runfolder.LAST_EPOCH_METRIC)
    assert not same_weights(str(run / runfolder.BEST_FILE), str(run / runfolder.LAST_FILE),
                            config)


def test_train_cli_with_train_on_val_and_its_model_scored_on_test_only(tmp_path) -> None:
    run = tmp_path / "run"
    result = run_cli("train.py", *TINY_TRAIN_ARGS, "--epochs", "2", "--train-on-val",
                     "--set", "tune_thresholds=true", "--out", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "best.h5 is epoch 2 (the last; no validation)" in result.stdout
    assert "thresholds not tuned" in result.stderr
    config = Config.load(str(run / runfolder.CONFIG_FILE))
    assert config.train_on_val
    state = runfolder.load_json(str(run / runfolder.STATE_FILE))
    assert (state["best_epoch"], state["best_metric"]) == (2, runfolder.LAST_EPOCH_METRIC)
    history = runfolder.read_history(str(run / runfolder.HISTORY_FILE))
    assert [row["epoch"] for row in history] == [1, 2]
    assert not any(key.startswith("val_") for row in history for key in row)
    assert same_weights(str(run / runfolder.BEST_FILE), str(run / runfolder.LAST_FILE), config)
    assert "tuned" not in runfolder.load_json(str(run / runfolder.THRESHOLDS_FILE))
    assert runfolder.best_validation_scores(str(run)) is None
    card = model_card(str(run), "tiny", config, 1, 1)
    assert "validation images included (`train_on_val`)" in card
    assert "evaluate.py --model tiny --split test" in card

    refused = run_cli("evaluate.py", "--model", str(run), "--split", "val")
    assert refused.returncode != 0
    message = refused.stderr.strip().splitlines()[-1]
    assert "train_on_val" in message and "use --split test" in message
    scored = run_cli("evaluate.py", "--model", str(run), "--split", "test",
                     "--out", str(tmp_path / "eval"))
    assert scored.returncode == 0, scored.stderr[-3000:]
