"""End-to-end tests of evaluate.py: a tiny model on a dataset split, and predictions on disk."""

from __future__ import annotations

import csv
import json
import os

import numpy as np

from layernet.export import save_masks
from layernet.instances import flatten_stack, num_objects, stack_from_label_image
from layernet.io import write_image_atomic, write_label_stack
from tests.conftest import run_cli

TABLE_KEYS = ("AP@0.5", "AP@0.6", "AP@0.7", "AP@0.8", "AP@0.9", "meanAP", "AJI")


def _check_report(out: str, n_images: int) -> dict:
    metrics = json.loads(open(os.path.join(out, "metrics.json")).read())
    assert metrics["n_images"] == n_images
    for matching in ("reference", "hungarian"):
        summary = metrics["matchings"][matching]
        for key in TABLE_KEYS:
            assert 0.0 <= summary[key] <= 1.0
    with open(os.path.join(out, "metrics.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * n_images
    assert {row["matching"] for row in rows} == {"reference", "hungarian"}
    assert set(TABLE_KEYS) <= set(rows[0])
    return metrics


def test_model_on_a_dataset_split(tiny_run):
    result = run_cli("evaluate.py", "--model", os.path.join(tiny_run, "best.h5"),
                     "--data", "synthetic", "--split", "test", "--data-option", "count=3",
                     "--worst", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("matching"))
    assert all(key in header for key in TABLE_KEYS)
    assert any(line.startswith("reference") for line in lines)
    assert any(line.startswith("hungarian") for line in lines)
    out = os.path.join(tiny_run, "eval-synthetic-test")  # the default output folder
    metrics = _check_report(out, 3)
    assert metrics["model"].endswith("best.h5") and metrics["postprocess"]["min_size"] == 30
    assert metrics["tta"] is False
    panels = sorted(os.listdir(os.path.join(out, "worst")))
    assert len(panels) == 2 and panels[0].startswith("01-synthetic-cells-test-")


def test_perfect_predictions_in_other_formats_score_one(prediction_inputs, tmp_path):
    gt_stack = prediction_inputs["small_stack"]
    assert gt_stack.shape[0] >= 2  # overlapping objects
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    write_label_stack(str(gt_dir / "one.layers.tif"), gt_stack)
    save_masks(str(pred_dir / "one.masks"), gt_stack)  # per-object masks of the same objects
    flat = flatten_stack(gt_stack)
    write_image_atomic(str(gt_dir / "two.png"), flat.astype(np.uint16))
    write_label_stack(str(pred_dir / "two.layers.tif"),
                      stack_from_label_image(flat)[:, :, :])
    result = run_cli("evaluate.py", "--pred", str(pred_dir), "--gt", str(gt_dir),
                     "--out", str(tmp_path / "eval"))
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = _check_report(str(tmp_path / "eval"), 2)
    for matching in ("reference", "hungarian"):
        summary = metrics["matchings"][matching]
        assert all(summary[key] == 1.0 for key in TABLE_KEYS), summary
        assert summary["n_gt"] == summary["n_pred"] == 2 * num_objects(gt_stack)


def test_predict_outputs_small_and_tiled_big(predicted, prediction_inputs, tmp_path):
    assert predicted["result"].returncode == 0, predicted["result"].stderr[-2000:]
    out = str(tmp_path / "eval")
    result = run_cli("evaluate.py", "--pred", os.path.join(predicted["out"], "*.layers.tif"),
                     "--gt", prediction_inputs["gt"], "--images",
                     os.path.join(prediction_inputs["root"], "images"), "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = _check_report(out, 2)
    assert metrics["matchings"]["reference"]["n_gt"] == (
        num_objects(prediction_inputs["small_stack"]) + num_objects(prediction_inputs["big_stack"]))
    assert sorted(os.listdir(os.path.join(out, "worst"))) == ["01-big.png", "02-small.png"] or \
        sorted(os.listdir(os.path.join(out, "worst"))) == ["01-small.png", "02-big.png"]


def test_missing_prediction_is_one_clear_error(prediction_inputs, tmp_path):
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    write_label_stack(str(pred_dir / "small.layers.tif"), prediction_inputs["small_stack"])
    result = run_cli("evaluate.py", "--pred", str(pred_dir), "--gt", prediction_inputs["gt"],
                     "--out", str(tmp_path / "eval"))
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no prediction for 1 of 2 images (big)" in last
    result = run_cli("evaluate.py", "--pred", str(pred_dir))
    assert result.returncode == 2 and "--pred needs ground truth" in result.stderr


def test_model_with_tta(tiny_run, tmp_path):
    """--tta is recorded in metrics.json and writes beside the plain evaluation by default
    (eval-<data>-<split>-tta). (That TTA changes the maps is tested in test_tta.py and, through
    predict.py --save-prob, in test_predict_cli.py; whether it changes the objects of the
    untrained tiny model, whose foreground is near 0.5 everywhere, is up to that model.)"""
    args = ("--model", tiny_run, "--data", "synthetic", "--split", "test", "--data-option",
            "count=2", "--worst", "1", "--save-pred")
    result = run_cli("evaluate.py", *args, "--tta")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("test-time augmentation") == 1
    out = os.path.join(tiny_run, "eval-synthetic-test-tta")
    metrics = _check_report(out, 2)
    assert metrics["tta"] is True
    plain_out = str(tmp_path / "plain")
    result = run_cli("evaluate.py", *args, "--out", plain_out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert _check_report(plain_out, 2)["tta"] is False
    names = sorted(os.listdir(os.path.join(out, "pred")))
    assert len(names) == 2 and names == sorted(os.listdir(os.path.join(plain_out, "pred")))
    result = run_cli("evaluate.py", "--pred", plain_out, "--gt", plain_out, "--tta")
    assert result.returncode == 2 and "--tta works with --model" in result.stderr
