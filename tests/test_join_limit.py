"""bench/join_limit.py: scores of one model's maps under several limits of the join, with
thresholds chosen as training chooses them."""

from __future__ import annotations

import os

import pytest

from bench import join_limit


def test_join_limit_rows_match_direct_threshold_choice(tiny_run, capsys):
    from datasets import load_source
    from layernet import runfolder
    from layernet.config import Config
    from layernet.inference import Predictor
    from layernet.model import build_model, load_model_weights
    from layernet.training import choose_thresholds, load_training_data

    rows = join_limit.main([tiny_run, "--ratios", "0", "1000000", "1.5", "--no-join"])
    assert [row["join_layers"] for row in rows] == [0, 1, 1, 1]
    assert "| Algorithm 1 (no join) |" in capsys.readouterr().out
    # a limit no object reaches is the join without a limit
    for key in ("tau", "min_size", "meanAP", "AJI"):
        assert rows[1][key] == rows[2][key]
    # the first row is training's own threshold choice, the network run inside it
    config = Config.load(os.path.join(tiny_run, runfolder.CONFIG_FILE)).replace(streaming="off")
    net = build_model(config)
    load_model_weights(net, os.path.join(tiny_run, runfolder.BEST_FILE))
    val = load_training_data(config, load_source).val
    direct = choose_thresholds(Predictor(net, config), val)
    with pytest.raises(ValueError, match="maps of 0 images"):
        choose_thresholds(Predictor(net, config), val, maps=[])
    assert (rows[0]["tau"], rows[0]["min_size"]) == (direct["tau"], direct["min_size"])
    assert rows[0]["meanAP"] == pytest.approx(direct["meanAP"])
    assert rows[0]["AJI"] == pytest.approx(direct["AJI"])
    assert rows[3]["object_area"] > 0


def test_join_limit_rejects_negative_ratios(tiny_run):
    with pytest.raises(SystemExit):
        join_limit.main([tiny_run, "--ratios", "-1"])
