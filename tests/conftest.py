"""Shared pytest fixtures.

``tiny_run``: a tiny layering model trained ONCE per test session through the real command line
(``python train.py``: UNet-S, 8 filters, 64 px patches, 1 epoch of 2 steps on 96 px synthetic
images), for end-to-end tests of predict.py / evaluate.py. The numbers it produces are meaningless;
the run folder and its files are real.

Property tests (hypothesis) draw new random examples on every run, except in CI (``.ci/run`` sets
``LAYERNET_CI=1``): there they are derandomized, so a red CI is reproducible and never a dice roll.
A failure found locally is pinned with ``@example`` once fixed.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True)
if os.environ.get("LAYERNET_CI"):
    settings.load_profile("ci")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_TRAIN_ARGS = [
    "--data", "synthetic", "--data-option", "kind=cells", "--data-option", "size=96",
    "--data-option", "count=8", "--size", "S", "--filters", "8", "--patch-size", "64",
    "--batch-size", "2", "--epochs", "1", "--steps-per-epoch", "2", "--min-size", "30",
]


def run_cli(script: str, *args: str, timeout: float = 300, cwd: str = REPO,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python <script> args`` (from ``cwd``, the repository by default); return it.
    ``env``: variables to set in its environment besides this process's."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> str:
    """Run folder of a tiny model trained once per session with ``train.py``."""
    run_dir = str(tmp_path_factory.mktemp("tiny") / "run")
    result = run_cli("train.py", *TINY_TRAIN_ARGS, "--out", run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(os.path.join(run_dir, "best.h5")), os.listdir(run_dir)
    return run_dir


@pytest.fixture(scope="session")
def prediction_inputs(tmp_path_factory) -> dict:
    """Image files for the CLI tests and their ground truth (label stacks named like the images).

    ``small.png`` (16-bit, 96 px synthetic cells), ``big.tif`` (8-bit, 2048 px mosaic, predicted
    tiled); ground truth in ``gt/<name>.layers.tif``.
    """
    import numpy as np

    from datasets.synthetic import generate_sample
    from layernet.io import write_image_atomic, write_label_stack

    root = tmp_path_factory.mktemp("inputs")
    (root / "images").mkdir()
    (root / "gt").mkdir()
    sample = generate_sample(np.random.default_rng(5), "cells", 96)
    small = (sample.image[..., 0] * 200).astype(np.uint16)
    write_image_atomic(str(root / "images" / "small.png"), small)
    write_label_stack(str(root / "gt" / "small.layers.tif"), sample.stack)
    import tifffile

    from bench.predict import synthetic_mosaic

    big, big_stack = synthetic_mosaic(2048)
    big_uint8 = np.clip(big[..., 0], 0, 255).astype(np.uint8)
    tifffile.imwrite(str(root / "images" / "big.tif"), big_uint8)
    write_label_stack(str(root / "gt" / "big.layers.tif"), big_stack)
    return {"root": str(root), "small": str(root / "images" / "small.png"),
            "big": str(root / "images" / "big.tif"), "gt": str(root / "gt"),
            "small_stack": sample.stack, "big_stack": big_stack}


@pytest.fixture(scope="session")
def predicted(tiny_run, prediction_inputs, tmp_path_factory) -> dict:
    """``predict.py`` run once on the small and the big (tiled) image into ``out``."""
    out = str(tmp_path_factory.mktemp("predicted"))
    result = run_cli("predict.py", prediction_inputs["small"], prediction_inputs["big"],
                     "--model", tiny_run, "--out", out, "--verbose")
    return {"out": out, "result": result}
