"""Every model shipped in models/ (issue 14) is complete, small, documented, and predicts a
synthetic image when given by name. With no model shipped yet, the folder itself is checked."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from layernet import model_zoo, runfolder
from layernet.config import Config
from tests.conftest import REPO

MODELS = os.path.join(REPO, "models")
MODEL_FILES = {runfolder.CONFIG_FILE, runfolder.BEST_FILE, runfolder.THRESHOLDS_FILE,
               runfolder.CARD_FILE}


def shipped() -> list[str]:
    """The model folders of models/ (every subfolder: a half-made one must fail, not hide)."""
    return sorted(name for name in os.listdir(MODELS)
                  if os.path.isdir(os.path.join(MODELS, name)) and not name.startswith("."))


@pytest.fixture
def only_shipped(monkeypatch) -> None:
    """Names resolve to the shipped models only (no LAYERNET_MODELS of the environment)."""
    monkeypatch.delenv(runfolder.MODELS_ENV, raising=False)


def test_the_shipped_models_are_the_models_available_by_name(only_shipped) -> None:
    assert os.path.isfile(os.path.join(MODELS, "README.md"))
    assert runfolder.shipped_models_folder() == MODELS
    assert runfolder.available_models() == {name: os.path.join(MODELS, name)
                                            for name in shipped()}


@pytest.mark.parametrize("name", shipped())
def test_shipped_model_is_complete_small_and_documented(name: str) -> None:
    folder = os.path.join(MODELS, name)
    files = set(os.listdir(folder))
    assert MODEL_FILES <= files, sorted(MODEL_FILES - files)
    assert runfolder.is_model_name(name)
    size = sum(os.path.getsize(os.path.join(folder, file)) for file in MODEL_FILES)
    assert size <= model_zoo.DEFAULT_MAX_MB * 1e6, f"{name}: {size / 1e6:.1f} MB"
    config = Config.load(os.path.join(folder, runfolder.CONFIG_FILE))
    with open(os.path.join(folder, runfolder.CARD_FILE), encoding="utf-8") as handle:
        card = handle.read()
    assert model_zoo.unfilled_sections(card) == [], f"{name}: fill in the model card"
    for section in ("## Intended use", "## Training", "## Data", "## Validation scores"):
        assert section in card, (name, section)
    assert "python train.py " in card, f"{name}: the card gives no training command"
    known = model_zoo.DATA_CITATIONS.get(config.data)
    if known is not None:
        assert known.citation in card


@pytest.mark.parametrize("name", shipped())
def test_shipped_model_predicts_a_synthetic_image_by_name(name: str, tmp_path,
                                                          only_shipped) -> None:
    from datasets.synthetic import generate_sample
    from layernet_commands import predict

    config = runfolder.config_for_model(name)
    sample = generate_sample(np.random.default_rng(0), "cells", 200)
    gray = (sample.image[:150, :, 0] * 200).astype(np.uint16)   # 150: not a multiple of a stride
    image = gray if config.channels == 1 else np.dstack([gray] * config.channels)
    path = str(tmp_path / "synthetic.tif")
    tifffile.imwrite(path, image)
    assert predict.main(["--model", name, path, "--out", str(tmp_path), "--quiet"]) == 0
    stack = tifffile.imread(str(tmp_path / "synthetic.layers.tif"))
    assert stack.shape[-2:] == (150, 200) and stack.dtype == np.uint16
