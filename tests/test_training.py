"""End-to-end tests of two-phase training: the loss falls, phase 2 starts from phase 1's best.h5,
--resume continues the step counter, and the run folder holds what it promises."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from layernet import runfolder
from layernet.config import Config, ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(size="S", filters=8, head_filters=16, patch_size=64, batch_size=4, min_size=30,
            data_options={"size": 128, "count": 12}, learning_rate=1e-3)
TINY_ARGS = ["--size", "S", "--filters", "8", "--head-filters", "16", "--patch-size", "64",
             "--batch-size", "2", "--min-size", "30", "--data-option", "size=128",
             "--data-option", "count=8"]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_loss_falls_on_synthetic_data(tmp_path):
    from datasets import load_source
    from layernet.training import train

    config = Config(epochs=6, steps_per_epoch=5, **TINY).validate()
    result = train(config, str(tmp_path / "run"), verbose=0, load_source=load_source)
    history = runfolder.read_history(str(tmp_path / "run" / runfolder.HISTORY_FILE))
    assert len(history) == 6 == result["epochs"]
    losses = [row["loss"] for row in history]
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < losses[0], losses
    assert [row["step"] for row in history] == [5, 10, 15, 20, 25, 30]
    for name in (runfolder.BEST_FILE, runfolder.LAST_FILE, runfolder.OPTIMIZER_FILE,
                 runfolder.CONFIG_FILE, runfolder.STATE_FILE, runfolder.THRESHOLDS_FILE):
        assert os.path.exists(tmp_path / "run" / name), name
    assert os.listdir(tmp_path / "run" / "logs")
    assert not [name for name in os.listdir(tmp_path / "run") if name.startswith(".tmp-")]
    saved = Config.load(str(tmp_path / "run" / runfolder.CONFIG_FILE))
    assert saved == config


def test_cli_phase2_from_the_best_model_of_a_phase1_run(tiny_run, tmp_path):
    """Phase 2 from the phase-1 run of ``tiny_run`` (``train.py``, synthetic cells): the
    network's settings come from the model, the overlap loss is in the history and the frozen
    object -> layer assignment is saved."""
    first = Config.load(os.path.join(tiny_run, runfolder.CONFIG_FILE))
    second = tmp_path / "overlap"
    done = run_cli("--phase", "overlap", "--init", os.path.join(tiny_run, "best.h5"),
                   "--epochs", "1", "--steps-per-epoch", "2", "--out", str(second))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "best validation meanAP" in done.stdout
    config = Config.load(str(second / runfolder.CONFIG_FILE))
    assert first.phase == "layering" and config.phase == "overlap"
    assert (config.filters, config.head_filters) == (first.filters, first.head_filters)
    history = runfolder.read_history(str(second / runfolder.HISTORY_FILE))
    assert len(history) == 1 and "overlap" in history[0] and np.isfinite(history[0]["overlap"])
    assignment = runfolder.load_arrays(str(second / runfolder.ASSIGNMENT_FILE))
    assert assignment and all(value.dtype == np.int32 for value in assignment.values())
    layers = np.concatenate([value[1:] for value in assignment.values()])
    assert layers.size and np.all((layers >= -1) & (layers < config.layers))


def test_resume_continues_step_counter_and_history(tiny_run, tmp_path):
    """A finished run (``tiny_run``: 1 epoch of 2 steps) asked for one more epoch, as a user
    would after an interruption, continues at step 2."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 1 and config["steps_per_epoch"] == 2
    config["epochs"] = 2
    (run / "config.json").write_text(json.dumps(config))
    done = run_cli("--resume", str(run))
    assert done.returncode == 0, done.stderr[-2000:]
    history = runfolder.read_history(str(run / runfolder.HISTORY_FILE))
    assert [row["epoch"] for row in history] == [1, 2]
    assert [row["step"] for row in history] == [2, 4]
    state = runfolder.load_json(str(run / runfolder.STATE_FILE))
    assert state["epoch"] == 2 and state["step"] == 4


def test_cli_refuses_to_overwrite_a_run_and_phase2_without_init(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / runfolder.STATE_FILE).write_text("{}")
    done = run_cli(*TINY_ARGS, "--epochs", "1", "--out", str(run))
    assert done.returncode != 0
    assert "already holds a run" in done.stderr and "Traceback" not in done.stderr
    done = run_cli("--phase", "overlap", *TINY_ARGS, "--out", str(tmp_path / "other"))
    assert done.returncode != 0 and "--init" in done.stderr and "Traceback" not in done.stderr


def test_config_round_trip_and_errors(tmp_path):
    config = Config.authors(filters=16)
    path = tmp_path / "config.json"
    config.save(str(path))
    assert Config.load(str(path)) == config
    values = json.loads(path.read_text())
    values["version"] = 99
    path.write_text(json.dumps(values))
    with pytest.raises(ConfigError, match="newer"):
        Config.load(str(path))
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Config.load(str(path))
    with pytest.raises(ConfigError, match="patch_size"):
        Config(size="L", patch_size=48).validate()
    with pytest.raises(ConfigError, match="mean_mode"):
        Config(mean_mode="median").validate()


def test_learning_rate_schedule_is_staircase():
    from layernet.training import learning_rate_schedule

    schedule = learning_rate_schedule(Config())
    assert float(schedule(0)) == pytest.approx(1e-4)
    assert float(schedule(9999)) == pytest.approx(1e-4)
    assert float(schedule(10000)) == pytest.approx(0.9e-4)
    assert float(schedule(25000)) == pytest.approx(0.81e-4)
