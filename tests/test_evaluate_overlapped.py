"""``evaluate.py --model`` overlaps the network on the next image with the post-processing and
scoring of the last one (:class:`layernet.ordered_worker.OrderedWorker`); ``--sequential`` runs
one after the other. Both must give the same scores, digit for digit, and the same errors.

The model is an untrained UNet-S with 4 filters (seed 1, whose random maps hold many noise
objects, so the compared scores are not those of empty predictions); the images are three 96 px
synthetic test images, predicted in 64 px tiles, two per network call.
"""

from __future__ import annotations

import filecmp
import json
import os

import numpy as np
import pytest

from bench.predict_memory import make_inputs
from layernet.io import write_label_stack
from layernet_commands import evaluate

DATA = ["--data", "synthetic", "--split", "test", "--data-option", "kind=cells",
        "--data-option", "size=96", "--data-option", "count=3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> str:
    _, run_dir = make_inputs(str(tmp_path_factory.mktemp("evaluate-overlapped")), 32, seed=1)
    return run_dir


def _evaluate(argv: list[str]) -> None:
    assert evaluate.main(argv) == 0


def test_overlapped_scores_equal_sequential_scores(run, tmp_path) -> None:
    outs = {}
    for mode in ("overlapped", "sequential"):
        outs[mode] = str(tmp_path / mode)
        _evaluate(["--model", run, *DATA, "--min-size", "5", "--tile-size", "64",
                   "--tile-batch", "2", "--save-pred", "--worst", "1", "--out", outs[mode]]
                  + (["--sequential"] if mode == "sequential" else []))
    overlapped, sequential = (json.loads(open(os.path.join(outs[mode], "metrics.json")).read())
                              for mode in ("overlapped", "sequential"))
    for metrics in (overlapped, sequential):
        assert set(metrics.pop("seconds")) == {"normalize", "network", "postprocess"}
    assert overlapped == sequential
    reference = overlapped["matchings"]["reference"]
    assert overlapped["n_images"] == 3 and reference["n_pred"] > 30, reference
    assert filecmp.cmp(os.path.join(outs["overlapped"], "metrics.csv"),
                       os.path.join(outs["sequential"], "metrics.csv"), shallow=False)
    rows = open(os.path.join(outs["overlapped"], "metrics.csv")).read().splitlines()
    assert len(rows) == 1 + 2 * 3
    for folder in ("pred", "worst"):
        names = sorted(os.listdir(os.path.join(outs["overlapped"], folder)))
        assert names == sorted(os.listdir(os.path.join(outs["sequential"], folder)))
        assert len(names) == (3 if folder == "pred" else 1)
        match, mismatch, errors = filecmp.cmpfiles(
            os.path.join(outs["overlapped"], folder), os.path.join(outs["sequential"], folder),
            names, shallow=False)
        assert match == names, (mismatch, errors)


def test_a_failing_image_stops_both_paths_with_the_same_error(tmp_path) -> None:
    """A prediction whose size differs from its ground truth: the same one error, raised
    while the images after it are not scored (the overlapped path raises it from the worker)."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    stack = np.zeros((1, 24, 24), np.int32)
    stack[0, 4:12, 4:12] = 1
    for name in ("a", "b", "c", "d"):
        write_label_stack(str(gt / f"{name}.layers.tif"), stack)
        write_label_stack(str(pred / f"{name}.layers.tif"),
                          stack[:, :20] if name == "b" else stack)
    for extra in ([], ["--sequential"]):
        with pytest.raises(ValueError, match=r"^b: prediction has size \(20, 24\) but the "
                                             r"ground truth has \(24, 24\)$"):
            _evaluate(["--pred", str(pred), "--gt", str(gt), "--out", str(tmp_path / "eval")]
                      + extra)
        assert not os.path.exists(tmp_path / "eval" / "metrics.json")
    _evaluate(["--pred", str(pred / "[acd].layers.tif"), "--gt", str(gt / "[acd].layers.tif"),
               "--out", str(tmp_path / "eval")])
    metrics = json.loads(open(tmp_path / "eval" / "metrics.json").read())
    assert metrics["matchings"]["reference"]["meanAP"] == 1.0 and metrics["n_images"] == 3
