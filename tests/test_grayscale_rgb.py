"""Grayscale images saved as RGB (three equal channels, common for microscopy exports) are read as
grayscale by training, evaluation and prediction; real colour images still need ``--channels``."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from layernet.io import ImageReadError, with_channels
from tests.conftest import run_cli

TRAIN = ["--size", "S", "--filters", "4", "--head-filters", "4", "--layers", "4",
         "--patch-size", "32", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2",
         "--min-size", "5"]


def rgb_folder(root, colour: bool = False, count: int = 4) -> str:
    """A folder dataset of 48x48 8-bit RGB PNGs (identical channels unless ``colour``) with
    label-image masks of two squares."""
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "masks"))
    for index in range(count):
        labels = np.zeros((48, 48), np.uint16)
        labels[4:20, 4:20] = 1
        labels[24:44, 10:40] = 2
        gray = (40 + 150 * (labels > 0) + np.random.default_rng(index).integers(0, 40, (48, 48))
                ).astype(np.uint8)
        image = np.stack([gray, gray, gray], axis=-1)
        if colour:
            image[..., 2] = 255 - gray
        cv2.imwrite(os.path.join(root, "images", f"nuc{index}.png"), image)
        cv2.imwrite(os.path.join(root, "masks", f"nuc{index}.png"), labels)
    return str(root)


def test_with_channels_keeps_collapses_or_names_the_image() -> None:
    gray = np.arange(12, dtype=np.uint16).reshape(3, 4, 1)
    assert with_channels(gray, 1) is gray
    copies = np.concatenate([gray, gray, gray, np.full_like(gray, 255)], axis=-1)
    collapsed = with_channels(copies, 1)
    assert collapsed.shape == (3, 4, 1) and collapsed.dtype == np.uint16
    np.testing.assert_array_equal(collapsed, gray)
    assert with_channels(copies[..., :3], 3).shape == (3, 4, 3)   # --channels 3 keeps colour
    colour = copies[..., :3].copy()
    colour[0, 0, 2] += 1
    with pytest.raises(ImageReadError, match=r"^a\.png: has 3 channel\(s\) but the model "
                                             r"expects 1 \(set --channels"):
        with_channels(colour, 1, name="a.png")


def test_rgb_copies_train_evaluate_and_predict_as_grayscale(tmp_path) -> None:
    data = rgb_folder(tmp_path / "data")
    run = str(tmp_path / "run")
    done = run_cli("train.py", "--data", "folder", "--data-dir", data, *TRAIN, "--out", run)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "read as grayscale" in done.stderr
    with open(os.path.join(run, "config.json"), encoding="utf-8") as handle:
        assert json.load(handle)["channels"] == 1
    done = run_cli("evaluate.py", "--model", os.path.join(run, "best.h5"), "--split", "val",
                   "--out", str(tmp_path / "eval"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert os.path.exists(tmp_path / "eval" / "metrics.json")
    image = os.path.join(data, "images", "nuc0.png")
    done = run_cli("predict.py", "--model", os.path.join(run, "best.h5"), "--out",
                   str(tmp_path / "pred"), "--quiet", image)
    assert done.returncode == 0, done.stderr[-2000:]
    assert os.path.exists(tmp_path / "pred" / "nuc0.layers.tif")


def test_real_colour_images_need_channels(tmp_path) -> None:
    data = rgb_folder(tmp_path / "data", colour=True)
    done = run_cli("train.py", "--data", "folder", "--data-dir", data, *TRAIN, "--out",
                   str(tmp_path / "run"))
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "nuc" in errors[0] and "3 channel(s)" in errors[0] and "--channels" in errors[0]
