"""Mixed precision end to end: a bfloat16 / float16 training run writes float32 weights, logs finite
float32 losses, and its model predicts float32 maps close to the float32 network's."""

from __future__ import annotations

import numpy as np
import pytest

from layernet import runfolder
from layernet.config import Config
from layernet.inference import Predictor

TINY = dict(size="S", filters=8, head_filters=16, patch_size=64, batch_size=2, min_size=30,
            data_options={"size": 128, "count": 6}, learning_rate=1e-3, epochs=1,
            steps_per_epoch=2)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_training_and_prediction(tmp_path, precision):
    import keras

    from datasets import load_source
    from layernet.training import train

    before = keras.config.dtype_policy().name
    run_dir = str(tmp_path / precision)
    train(Config(precision=precision, **TINY).validate(), run_dir, verbose=0,
          load_source=load_source)
    assert keras.config.dtype_policy().name == before
    history = runfolder.read_history(f"{run_dir}/{runfolder.HISTORY_FILE}")
    assert np.isfinite(history[-1]["loss"]) and history[-1]["step"] == 2

    mixed, config = runfolder.load_trained_model(run_dir)
    assert config.precision == precision
    assert mixed.get_layer("enc1_conv1").compute_dtype == precision.split("_")[1]
    assert all(weight.dtype == "float32" for weight in mixed.weights)
    # no fast 16-bit bilinear kernel on the CPU: upsampling stays in float32 (model.py)
    assert mixed.get_layer("dec1_upsample").compute_dtype == "float32"
    assert mixed.get_layer("dec1_upconv").compute_dtype == precision.split("_")[1]
    full, _ = runfolder.load_trained_model(run_dir, precision="float32")
    assert full.get_layer("enc1_conv1").compute_dtype == "float32"

    image = np.random.default_rng(0).random((64, 96, 1)).astype(np.float32)
    fg_mixed, layers_mixed = Predictor(mixed, config).maps_normalized(image)
    fg_full, layers_full = Predictor(full, config).maps_normalized(image)
    assert fg_mixed.dtype == layers_mixed.dtype == np.float32
    assert fg_mixed.shape == (64, 96) and layers_mixed.shape == (64, 96, config.layers)
    # 8 (bfloat16) or 11 (float16) mantissa bits: maps agree to a few percent, not exactly
    tolerance = 0.1 if precision == "mixed_bfloat16" else 0.02
    assert np.abs(fg_mixed - fg_full).max() < tolerance
    assert np.abs(layers_mixed - layers_full).max() < tolerance
    assert np.abs(layers_mixed - layers_full).max() > 0


def test_auto_precision_picks_bf16_where_the_cpu_has_bf16_instructions(tmp_path):
    import tensorflow as tf

    from layernet.model import auto_precision, cpu_flags

    amx, avx512, plain = tmp_path / "amx", tmp_path / "avx512", tmp_path / "plain"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n")
    avx512.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    plain.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f\n")
    assert cpu_flags(str(amx)) >= {"amx_bf16", "avx512_bf16"}
    assert cpu_flags(str(tmp_path / "missing")) == set()
    assert not tf.config.list_physical_devices("GPU")  # CI and this machine: CPU only
    assert auto_precision(str(amx)) == "mixed_bfloat16"
    assert auto_precision(str(avx512)) == "mixed_bfloat16"
    assert auto_precision(str(plain)) == "float32"
    assert auto_precision(str(tmp_path / "missing")) == "float32"


def test_train_precision_auto_writes_the_resolved_precision(monkeypatch):
    from layernet import model
    from layernet_commands import train as train_cli

    monkeypatch.setattr(model, "auto_precision", lambda: "mixed_bfloat16")
    config = train_cli.build_config(train_cli.parse_args(["--precision", "auto"]))
    assert config.precision == "mixed_bfloat16"
    config = train_cli.build_config(train_cli.parse_args(["--precision", "float32"]))
    assert config.precision == "float32"
    # no --precision: auto, unless an --init run or a --config file brings its own precision
    assert train_cli.build_config(train_cli.parse_args([])).precision == "mixed_bfloat16"
    monkeypatch.setattr(model, "auto_precision", lambda: "float32")
    assert train_cli.build_config(train_cli.parse_args([])).precision == "float32"


def test_evaluate_scores_a_model_in_another_precision(tiny_run, tmp_path):
    import json

    from tests.conftest import run_cli

    for precision in ("float32", "mixed_bfloat16"):
        out = tmp_path / precision
        result = run_cli("evaluate.py", "--model", tiny_run, "--data", "synthetic", "--split",
                         "test", "--data-option", "count=3", "--precision", precision,
                         "--out", str(out))
        assert result.returncode == 0, result.stderr[-2000:]
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["precision"] == precision and metrics["n_images"] == 3
        assert 0.0 <= metrics["matchings"]["reference"]["meanAP"] <= 1.0
    result = run_cli("evaluate.py", "--model", tiny_run, "--precision", "bf16")
    assert result.returncode == 2 and "--precision" in result.stderr


def test_a_bf16_model_predicts_in_float32_where_bf16_would_be_emulated(tiny_run, tmp_path,
                                                                        monkeypatch):
    """load_predictor with the run's precision: kept where the machine computes it natively,
    float32 where it would be emulated; an explicit precision always wins."""
    import json
    import shutil

    import layernet.model
    from layernet.batch_predict import load_predictor, native_precision

    run = tmp_path / "bf16-run"
    shutil.copytree(tiny_run, run)
    config = json.loads((run / "config.json").read_text())
    config["precision"] = "mixed_bfloat16"
    (run / "config.json").write_text(json.dumps(config))
    for machine, expected in (("float32", "float32"), ("mixed_bfloat16", "mixed_bfloat16"),
                              ("mixed_float16", "float32")):
        monkeypatch.setattr(layernet.model, "auto_precision", lambda machine=machine: machine)
        predictor = load_predictor(str(run))
        assert predictor.config.precision == expected, machine
        assert predictor.net.layers[1].dtype_policy.compute_dtype == (
            "bfloat16" if expected == "mixed_bfloat16" else "float32")
        explicit = load_predictor(str(run), precision="mixed_bfloat16")
        assert explicit.config.precision == "mixed_bfloat16"
    assert native_precision("float32") is None
