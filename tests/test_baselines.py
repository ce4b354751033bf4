"""Tests of the UNet-2 / UNet-3 baselines: targets (pseudo-boundary on hand-made overlaps),
losses against NumPy, post-processing, pipeline alignment, and short end-to-end runs through
train / predict / evaluate."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from scipy import ndimage

from layernet import baselines
from layernet.baselines import (BOUNDARY, OBJECT, BaselineError, flatten_with_pseudo_boundary,
                                object_boundaries, pseudo_boundary, semantic_target,
                                unet2_instances, unet3_instances)
from layernet.config import Config, ConfigError
from layernet.instances import stack_from_masks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def two_discs(shift: int = 18) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two discs of radius 12 whose centres are ``shift`` px apart (they overlap for < 24)."""
    yy, xx = np.mgrid[:40, :64]
    first = (yy - 20) ** 2 + (xx - 20) ** 2 <= 144
    second = (yy - 20) ** 2 + (xx - 20 - shift) ** 2 <= 144
    return stack_from_masks(np.stack([first, second])), first, second


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# ------------------------------------------------------------------------------------------
# targets


def test_object_boundaries_hand_computed():
    stack = np.zeros((1, 7, 9), np.int32)
    stack[0, 1:6, 1:4] = 1      # 5x3 rectangle
    stack[0, 1:6, 4:8] = 2      # touching 5x4 rectangle on its right
    expected = np.zeros((7, 9), bool)
    expected[1:6, 1:8] = True
    expected[2:5, 2] = False    # interior of the first: only its middle column
    expected[2:5, 5:7] = False  # interior of the second
    assert np.array_equal(object_boundaries(stack), expected)


def test_object_boundaries_image_border_is_not_a_boundary():
    stack = np.zeros((1, 5, 5), np.int32)
    stack[0, :, :3] = 1
    boundary = object_boundaries(stack)
    assert np.array_equal(np.argwhere(boundary)[:, 1], np.full(5, 2))


def test_object_boundaries_include_contours_inside_overlaps():
    stack, first, second = two_discs()
    boundary = object_boundaries(stack)
    contours = [mask & ~ndimage.binary_erosion(mask, np.ones((3, 3)), border_value=1)
                for mask in (first, second)]
    # the inner contour of each disc, also where it runs inside the other disc
    assert np.array_equal(boundary, contours[0] | contours[1])
    assert (boundary & first & second).sum() > 10


def test_pseudo_boundary_cuts_the_overlap_in_two_halves():
    stack, first, second = two_discs()
    overlap = first & second
    line = pseudo_boundary(stack)
    target = semantic_target(stack, "unet3")
    assert line.dtype == bool and (line <= (first | second)).all()
    # the line crosses the overlap (its medial axis, x = 29 in the middle row) ...
    assert (line & overlap).any() and line[20, 29]
    # ... and the overlap's own contours are thinned away: the line is one pixel wide there
    assert (line & overlap)[20].sum() == 1
    # object class = foreground minus the lines; its large 4-connected components are the two
    # objects, each holding its own overlap-free interior and half of the overlap (thinning
    # leaves a few single pixels of the outer contours in the object class)
    seeds, count = ndimage.label(target == OBJECT)
    sizes = np.bincount(seeds.ravel())[1:]
    assert np.sort(sizes)[-2] > 300 and np.sort(sizes)[-3] < 5
    for mask, other in ((first, second), (second, first)):
        interior = ndimage.binary_erosion(mask & ~other, np.ones((3, 3)))
        ids = np.unique(seeds[interior])
        assert len(ids) == 1 and ids[0] > 0
        part = (seeds == ids[0]) & overlap
        assert 0.3 < part.sum() / overlap.sum() < 0.6


def test_pseudo_boundary_without_overlap_is_the_skeleton_of_the_boundaries():
    from skimage.morphology import skeletonize

    stack, first, second = two_discs(shift=30)  # apart, no overlap
    assert not (first & second).any()
    assert np.array_equal(pseudo_boundary(stack), skeletonize(object_boundaries(stack)))


def test_semantic_target_classes():
    stack, first, second = two_discs()
    two = semantic_target(stack, "unet2")
    three = semantic_target(stack, "unet3")
    assert two.dtype == np.uint8 and np.array_equal(two, (first | second).astype(np.uint8))
    assert set(np.unique(three)) == {0, 1, 2}
    assert np.array_equal(three > 0, first | second)
    assert np.array_equal(three == BOUNDARY, pseudo_boundary(stack))
    with pytest.raises(BaselineError, match="layering"):
        semantic_target(stack, "layering")


# ------------------------------------------------------------------------------------------
# post-processing


def test_unet3_target_round_trip_recovers_overlapping_discs():
    stack, first, second = two_discs()
    probabilities = np.eye(3, dtype=np.float32)[semantic_target(stack, "unet3")]
    result = unet3_instances(probabilities, min_size=10)
    assert result.shape == (1,) + first.shape and result.dtype == np.int32
    assert result.max() == 2
    assert np.array_equal(result[0] > 0, first | second)  # everything grown back
    for index, mask in ((1, first), (2, second)):
        assert iou(result[0] == index, mask) > 0.9


def test_unet3_drops_small_objects_and_gives_their_pixels_away():
    classes = np.zeros((12, 20), np.uint8)
    classes[2:10, 2:18] = BOUNDARY
    classes[3:9, 3:12] = OBJECT       # big seed (54 px)
    classes[5, 15] = OBJECT           # one-pixel seed
    probabilities = np.eye(3, dtype=np.float32)[classes]
    kept = unet3_instances(probabilities, min_size=30)
    assert kept.max() == 1 and np.array_equal(kept[0] > 0, classes > 0)
    everything = unet3_instances(probabilities, min_size=0)
    assert everything.max() == 2
    assert unet3_instances(probabilities, min_size=1000).max() == 0
    assert unet3_instances(np.eye(3)[np.zeros((4, 4), int)]).max() == 0


def test_unet2_connected_components_and_screening():
    probability = np.zeros((10, 12), np.float32)
    probability[1:4, 1:4] = 0.9      # 9 px
    probability[6:9, 6:11] = 0.8     # 15 px
    probability[6:9, 1:3] = 0.5      # not > tau
    result = unet2_instances(probability, tau=0.5, min_size=10)
    assert result.shape == (1, 10, 12) and result.max() == 1
    assert np.array_equal(result[0] > 0, probability == 0.8)
    assert unet2_instances(probability[..., None], min_size=0).max() == 2
    with pytest.raises(BaselineError, match="shape"):
        unet2_instances(np.zeros((4, 4, 3)))


def test_flatten_with_pseudo_boundary_splits_overlaps_between_covering_objects():
    stack, first, second = two_discs()
    flat = flatten_with_pseudo_boundary(stack)
    assert np.array_equal(flat > 0, first | second)
    assert (flat[first & ~second] == 1).all() and (flat[second & ~first] == 2).all()
    overlap = first & second
    share = (flat[overlap] == 1).mean()
    assert 0.35 < share < 0.65  # split near the middle, not all to one object
    for index in (1, 2):
        assert ndimage.label(flat == index)[1] == 1  # each object stays one piece
    lone = stack_from_masks(first[None])
    assert np.array_equal(flatten_with_pseudo_boundary(lone), lone[0])


# ------------------------------------------------------------------------------------------
# losses, model, config, pipeline


def test_semantic_losses_against_numpy():
    import tensorflow as tf

    from layernet.losses import foreground_loss

    rng = np.random.default_rng(0)
    stack = np.zeros((2, 8, 8, 2), np.int32)
    stack[:, 2:6, 2:6, 0] = 1
    stack[1, 4:8, 4:8, 1] = 2
    classes = rng.integers(0, 3, (2, 8, 8))
    logits = rng.normal(size=(2, 8, 8, 3))
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = -np.mean(np.log(np.take_along_axis(softmax, classes[..., None], -1)))
    config = Config(method="unet3")
    losses = baselines.semantic_losses({"semantic": tf.constant(softmax, tf.float32)},
                                       {"stack": stack, "semantic": classes}, config)
    assert set(losses) == {"semantic", "loss"}
    assert np.isclose(float(losses["loss"]), expected, rtol=1e-5)

    sigmoid = rng.uniform(0.05, 0.95, (2, 8, 8, 1)).astype(np.float32)
    config = Config(method="unet2")
    losses = baselines.semantic_losses({"semantic": tf.constant(sigmoid)}, {"stack": stack},
                                       config)
    target = (stack > 0).any(-1)
    reference = -np.mean(np.where(target, np.log(sigmoid[..., 0]), np.log(1 - sigmoid[..., 0])))
    assert np.isclose(float(losses["loss"]), reference, rtol=1e-5)
    assert np.isclose(float(losses["loss"]), float(foreground_loss(stack, sigmoid)))
    # foreground_outline_weight: the pixels on either side of the objects' outlines weigh w
    # times in both cross-entropies (NumPy band: 3x3 neighbourhood holds object and background)
    objects = target.astype(np.float32)
    padded = np.pad(objects, ((0, 0), (1, 1), (1, 1)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(1, 2))
    band = windows.max(axis=(-1, -2)) != windows.min(axis=(-1, -2))
    weight = np.where(band, 4.0, 1.0)
    picked = np.take_along_axis(softmax, classes[..., None], -1)[..., 0]
    for method, output, per_pixel in (
            ("unet3", softmax, -np.log(picked)),
            ("unet2", sigmoid, -np.where(target, np.log(sigmoid[..., 0]),
                                         np.log(1 - sigmoid[..., 0])))):
        losses = baselines.semantic_losses(
            {"semantic": tf.constant(output, tf.float32)}, {"stack": stack, "semantic": classes},
            Config(method=method, foreground_outline_weight=4.0))
        assert np.isclose(float(losses["loss"]), np.mean(weight * per_pixel), rtol=1e-5)
        assert float(losses["loss"]) > np.mean(per_pixel)
    with pytest.raises(BaselineError, match="semantic"):
        baselines.semantic_losses({"semantic": tf.constant(softmax, tf.float32)},
                                  {"stack": stack}, Config(method="unet3"))

    # foreground Dice option: foreground = P(object) (UNet-2), 1 - P(background) (UNet-3)
    def dice(probability: np.ndarray) -> float:
        return 1 - (2 * np.sum(probability * target) + 1) / (probability.sum() + target.sum() + 1)

    for method, output, foreground, cross_entropy in (
            ("unet2", sigmoid, sigmoid[..., 0], reference),
            ("unet3", softmax, 1 - softmax[..., 0], expected)):
        losses = baselines.semantic_losses(
            {"semantic": tf.constant(output, tf.float32)}, {"stack": stack, "semantic": classes},
            Config(method=method, foreground_dice_weight=0.5))
        assert np.isclose(float(losses["foreground_dice"]), dice(foreground), rtol=1e-5)
        assert np.isclose(float(losses["loss"]), cross_entropy + 0.5 * dice(foreground), rtol=1e-5)


@pytest.mark.parametrize("method, channels", [("unet2", 1), ("unet3", 3)])
def test_baseline_model_has_one_semantic_head_on_the_same_backbone(method, channels):
    from layernet.model import build_model

    layering = build_model(Config(size="S", filters=4, head_filters=4))
    net = build_model(Config(method=method, size="S", filters=4, head_filters=4))
    assert net.name == f"{method}_unetS"
    image = np.random.default_rng(1).random((1, 16, 16, 1)).astype(np.float32)
    output = net(image)
    assert list(output) == ["semantic"] and output["semantic"].shape == (1, 16, 16, channels)
    if channels == 3:
        assert np.allclose(np.asarray(output["semantic"]).sum(-1), 1.0, atol=1e-5)
    names = {layer.name for layer in net.layers}
    backbone = {layer.name for layer in layering.layers
                if not layer.name.startswith(("fg_head", "layer_head", "foreground", "layering"))}
    assert backbone <= names
    assert {"sem_head_conv1", "sem_head_bn2", "semantic"} <= names


def test_config_method_is_validated():
    with pytest.raises(ConfigError, match="method"):
        Config(method="unet4").validate()
    with pytest.raises(ConfigError, match="single training phase"):
        Config(method="unet3", phase="overlap").validate()
    assert Config.from_dict(Config(method="unet2").to_dict()).method == "unet2"


def test_pipeline_carries_the_semantic_map_aligned_with_the_stack():
    from datasets.synthetic import load
    from layernet.pipeline import make_dataset, prepare_samples

    config = Config(method="unet3", patch_size=64, batch_size=2, size="S").validate()
    prepared = prepare_samples(load(split="trainval", size=128, count=3), config)
    baselines.attach_semantic_targets(prepared, config)
    batch = next(iter(make_dataset(prepared, config, training=True)))
    semantic, stack = batch["semantic"].numpy(), batch["stack"].numpy()
    assert semantic.shape == stack.shape[:3]
    # resampled with the same field: classes > 0 exactly where an object is
    assert np.array_equal(semantic > 0, (stack > 0).any(-1))
    assert (semantic == BOUNDARY).any() and (semantic == OBJECT).any()
    evaluation = next(iter(make_dataset(prepared, config, training=False)))
    height, width = prepared[0].semantic.shape
    assert np.array_equal(evaluation["semantic"].numpy()[0, :height, :width],
                          prepared[0].semantic)
    prepared[1].semantic = None
    with pytest.raises(ValueError, match="semantic"):
        make_dataset(prepared, config, training=True)


# ------------------------------------------------------------------------------------------
# end to end: train a few steps, predict.py and evaluate.py from the run folder

@pytest.mark.parametrize("method", ["unet2", "unet3"])
def test_train_predict_evaluate_end_to_end(tmp_path, method):
    from datasets import load_source
    from layernet import runfolder
    from layernet.io import read_image, write_image_atomic
    from layernet.training import train
    from layernet_commands import evaluate, predict

    options = {"kind": "cells", "size": 96, "count": 6}
    config = Config(method=method, size="S", filters=4, head_filters=4, patch_size=64,
                    batch_size=2, epochs=1, steps_per_epoch=2, min_size=10,
                    learning_rate=1e-3, data_options=options).validate()
    run = tmp_path / "run"
    result = train(config, str(run), verbose=0, load_source=load_source)
    history = runfolder.read_history(str(run / runfolder.HISTORY_FILE))
    assert result["epochs"] == 1 and np.isfinite(history[0]["semantic"])
    assert {"loss", "semantic", "val_meanAP", "val_AJI"} <= set(history[0])
    for name in (runfolder.BEST_FILE, runfolder.LAST_FILE, runfolder.CONFIG_FILE,
                 runfolder.STATE_FILE, runfolder.THRESHOLDS_FILE):
        assert (run / name).exists(), name
    net, saved = runfolder.load_trained_model(str(run))
    assert saved.method == method and list(net.output) == ["semantic"]

    from datasets.synthetic import load

    sample = load(split="test", kind="cells", size=96, count=1)[0]
    image_path = tmp_path / "images" / "plate.png"
    image_path.parent.mkdir()
    write_image_atomic(str(image_path), sample.image[..., 0].astype(np.uint16))
    assert predict.main([str(image_path), "--model", str(run), "--out", str(tmp_path / "pred"),
                         "--quiet", "--min-size", "0", "--save-layer-maps"]) == 0
    stack = read_image(str(tmp_path / "pred" / "plate.layers.tif"))
    assert stack.shape[-2:] == (96, 96)
    picture = read_image(str(tmp_path / "pred" / "plate.layermaps.png"))
    panels = 2 + (1 if method == "unet2" else 3)  # image, foreground, the class maps
    assert picture.shape[1] == panels * 96 + (panels - 1) * 4

    out = tmp_path / "eval"
    assert evaluate.main(["--model", str(run), "--split", "test", "--out", str(out),
                          "--worst", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 6
    for matching in ("reference", "hungarian"):
        summary = metrics["matchings"][matching]
        assert 0.0 <= summary["meanAP"] <= 1.0 and 0.0 <= summary["AJI"] <= 1.0


# ------------------------------------------------------------------------------------------
# layer maps picture (paper Figs. 3 and 5)


def test_layer_maps_panel_places_every_map_in_its_own_captioned_panel():
    from layernet.viz import layer_maps_panel

    height, width, gap = 30, 20, 4
    maps = np.zeros((height, width, 3), np.float32)
    maps[..., 1] = 1.0                      # second map fully on
    foreground = np.full((height, width), 0.5, np.float32)
    panel = layer_maps_panel(np.zeros((height, width)), foreground, maps, gap=gap)
    caption = 14                            # clip(30 // 10, 14, 40)
    assert panel.dtype == np.uint8
    assert panel.shape == (caption + height, 5 * width + 4 * gap, 3)   # one row of 5 panels
    left = lambda k: k * (width + gap)      # noqa: E731
    body = slice(caption, None)
    off, on = panel[body, left(2):left(2) + width], panel[body, left(3):left(3) + width]
    assert (off == off[0, 0]).all() and (on == on[0, 0]).all()
    assert on[0, 0, 0] > 200 and on[0, 0, 2] < 100   # 1 -> yellow
    assert off[0, 0, 2] > off[0, 0, 0]                # 0 -> dark blue
    assert (panel[:, left(1) - gap:left(1)] == 255).all()  # white gap between panels
    eight = layer_maps_panel(np.zeros((height, width)), foreground,
                             np.zeros((height, width, 8)), gap=gap)
    assert eight.shape == (2 * (caption + height) + gap, 5 * width + 4 * gap, 3)
    with pytest.raises(ValueError, match="names"):
        layer_maps_panel(np.zeros((height, width)), foreground, maps, names=["a"])


# ------------------------------------------------------------------------------------------
# StarDist stays optional; table layout


def test_core_never_imports_stardist():
    import ast
    import glob

    packages = ("layernet", "layernet_commands", "datasets")
    for path in [path for package in packages
                 for path in glob.glob(os.path.join(REPO, package, "**", "*.py"), recursive=True)
                 ] + [os.path.join(REPO, name) for name in ("train.py", "predict.py", "evaluate.py")]:
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            assert not [m for m in modules if m.split(".")[0] in ("stardist", "csbdeep")], path


def test_missing_stardist_is_reported_in_one_line(monkeypatch, capsys):
    import importlib.util as util

    from bench import stardist_baseline, table1

    real = util.find_spec
    monkeypatch.setattr(util, "find_spec",
                        lambda name, *a: None if name == "stardist" else real(name, *a))
    assert stardist_baseline.main(["--out", "unused", "--minutes", "1"]) == 3
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and "stardist" in message
    assert "requirements-bench.txt" in message
    reason = table1.run_stardist(table1.parse_args(["--minutes", "1"]), Config(), "unused")
    assert isinstance(reason, str) and "stardist" in reason
    rows = table1.table_rows({"unet3": {m: dict.fromkeys(table1.METRIC_COLUMNS, 0.5)
                                        for m in ("reference", "hungarian")},
                              "stardist": reason}, "OCC", "paper OCC", "synthetic")
    assert [row["source"] for row in rows] == ["ours (reference)", "ours (hungarian)",
                                               "paper OCC", f"not run: {reason}", "paper OCC"]
    assert rows[2]["meanAP"] == 0.4779 and rows[4]["AJI"] == 0.6927


def test_table_runners_score_the_chosen_split_end_to_end(tmp_path):
    import csv

    from bench import table1, table2

    common = ["--data", "synthetic", "--data-option", "kind=cells", "--data-option", "size=96",
              "--data-option", "count=6", "--epochs", "1", "--filters", "4",
              "--head-filters", "4", "--patch-size", "64", "--batch-size", "2",
              "--steps-per-epoch", "2", "--lr", "1e-3", "--min-size", "10",
              "--eval-split", "val"]
    out = tmp_path / "t1"
    assert table1.main(common + ["--size", "S", "--methods", "unet2", "layering",
                                 "--out", str(out)]) == 0
    for run in ("unet2", "layering"):
        report = json.loads((out / run / "eval-val" / "metrics.json").read_text())
        assert report["split"] == "val" and report["n_images"] >= 1
        assert not (out / run / "eval-test").exists()
    with open(out / "table1.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["method"], row["source"]) for row in rows if row["source"].startswith("ours")] \
        == [(name, f"ours ({m})") for name in ("UNet-2", "Ours (layering)")
            for m in ("reference", "hungarian")]
    assert "val split" in (out / "table1.md").read_text()

    results = {"S": {setting: {m: {"meanAP": value} for m in ("reference", "hungarian")}
                     for setting, value in (("without", 0.25), ("with", 0.5))}}
    rows = table2.table_rows(results, ["S"], "BBBC", "paper BBBC")
    assert [(row["setting"], row["source"]) for row in rows] == [
        ("w/o OC", "ours (reference)"), ("w/o OC", "ours (hungarian)"), ("w/o OC", "paper BBBC"),
        ("w/ OC", "ours (reference)"), ("w/ OC", "ours (hungarian)"), ("w/ OC", "paper BBBC")]
    assert rows[3]["UNet-S"] == 0.5
