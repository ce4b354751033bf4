"""End-to-end tests of predict.py (subprocess, tiny model trained once per session)."""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import roifile
import tifffile

from layernet.instances import validate_stack
from scipy import ndimage

from layernet.io import read_image, read_label_stack, read_mask, write_image_atomic
from tests.conftest import run_cli
from tests.test_export import fiji_fill


def assert_rois_fill_the_objects(rois: list, stack: np.ndarray) -> None:
    """Fiji's filling of the ROIs named ``<id>-L<slice>[-part]`` gives each object's pixels,
    overlaps included, and nothing else but holes (a background pixel that reaches the outside
    only diagonally may be a hole or not): the README's Fiji section."""
    filled: dict[tuple[int, int], np.ndarray] = {}
    for roi in rois:
        label, layer = roi.name.split("-")[:2]
        key = (int(label), int(layer[1:]) - 1)
        filled[key] = filled.get(key, False) | fiji_fill(roi.coordinates(), stack.shape[1:])
    objects = {(int(label), layer) for layer in range(stack.shape[0])
               for label in np.unique(stack[layer]) if label}
    assert set(filled) == objects
    for (label, layer), mask in filled.items():
        pixels = stack[layer] == label
        assert np.all(mask[pixels]), (label, layer)           # every pixel of the object ...
        outside = mask & ~ndimage.binary_fill_holes(pixels)    # ... and nothing else but holes
        assert not outside.any(), (label, layer, np.argwhere(outside)[:5])


def test_rois_of_crossing_objects_open_as_separate_objects(tmp_path):
    from layernet.export import write_prediction

    stack = np.zeros((2, 30, 40), np.uint16)
    stack[0, 12:18, 2:38] = 1       # a horizontal worm ...
    stack[1, 2:28, 17:23] = 2       # ... crossed by a vertical one
    stack[0, 2:8, 2:8] = 3
    prefix = tmp_path / "crossing"
    write_prediction(str(prefix), stack, np.zeros((30, 40), np.float32), rois=True)
    rois = roifile.roiread(str(prefix) + ".rois.zip")
    assert sorted(roi.name for roi in rois) == ["0001-L1", "0002-L2", "0003-L1"]
    assert_rois_fill_the_objects(rois, stack)
    crossing = fiji_fill(rois[0].coordinates(), stack.shape[1:]) & fiji_fill(
        rois[1].coordinates(), stack.shape[1:])
    assert crossing.sum() == 6 * 6   # the crossing belongs to both ROIs


def test_help_teaches():
    result = run_cli("predict.py", "--help")
    assert result.returncode == 0
    for word in ("--tile-size", "--save-rois", "--save-coco", ".layers.tif", "--channel"):
        assert word in result.stdout


def test_small_and_big_tiled_image(predicted, prediction_inputs):
    result, out = predicted["result"], predicted["out"]
    assert result.returncode == 0, result.stderr[-2000:]
    assert "(9 tiles)" in result.stderr  # 2048 px: 3 x 3 balanced tiles of 768 px, overlap 128
    for name, side in (("small", 96), ("big", 2048)):
        path = os.path.join(out, f"{name}.layers.tif")
        with tifffile.TiffFile(path) as tif:
            assert tif.pages[0].dtype == np.uint16 and tif.pages[0].compression == 8  # zlib
        stack = read_label_stack(path)
        assert stack.ndim == 3 and stack.shape[1:] == (side, side)
        assert all(layer.any() for layer in stack)  # only the slices the objects need
        validate_stack(stack)
        overlay = read_image(os.path.join(out, f"{name}.overlay.png"))
        assert overlay.shape == (side, side, 3) and overlay.dtype == np.uint8
    with tifffile.TiffFile(os.path.join(out, "small.layers.tif")) as tif:
        assert tif.is_imagej
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no temporary files left


def test_many_inputs_errors_and_all_outputs(tiny_run, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    write_image_atomic(str(images / "a.png"), rng.integers(0, 255, (80, 72), dtype=np.uint8))
    tifffile.imwrite(str(images / "b.tif"), rng.random((64, 64), dtype=np.float32))
    rgb = rng.integers(0, 4000, (70, 70, 3), dtype=np.uint16)
    tifffile.imwrite(str(images / "c.tif"), rgb, photometric="rgb")
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (images / "a.layers.tif").write_bytes(b"old output, must be skipped")
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(tiny_run, runs / "only")
    result = run_cli("predict.py", str(images), str(tmp_path / "missing.tif"),
                     str(images / "*.png"), "--channel", "0", "--save-masks", "--save-rois",
                     "--save-coco", "--save-flat", "--save-prob", "--quiet",
                     cwd=str(tmp_path))  # default model: the newest run under ./runs
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2, result.stderr
    assert any("broken.png" in line for line in errors)
    assert any("missing.tif: file not found" in line for line in errors)
    assert "predicted 3 of 4 image(s)" in result.stderr
    for name, shape in (("a", (80, 72)), ("b", (64, 64)), ("c", (70, 70))):
        prefix = images / name
        stack = read_label_stack(str(prefix) + ".layers.tif")
        assert stack.shape[1:] == shape
        ids = np.unique(stack[stack > 0])
        masks = sorted(os.listdir(str(prefix) + ".masks"))
        assert masks == [f"{i:04d}.png" for i in ids]
        for mask_name, label in zip(masks[:3], ids[:3]):
            np.testing.assert_array_equal(read_mask(str(prefix) + ".masks/" + mask_name),
                                          np.any(stack == label, axis=0))
        rois = roifile.roiread(str(prefix) + ".rois.zip") if ids.size else []
        assert len(rois) >= ids.size
        assert_rois_fill_the_objects(rois, stack)
        coco = json.loads(open(str(prefix) + ".coco.json").read())
        assert len(coco["annotations"]) == ids.size
        assert read_label_stack(str(prefix) + ".flat.tif").shape == (1,) + shape
        maps = tifffile.imread(str(prefix) + ".prob.tif")
        assert maps.shape == (9,) + shape and maps.dtype == np.float32
        assert 0.0 <= maps.min() and maps.max() <= 1.0


def test_channel_errors_and_model_errors(tiny_run, tmp_path):
    image = tmp_path / "two.tif"
    tifffile.imwrite(str(image), np.zeros((40, 40, 3), np.uint8), photometric="rgb")
    result = run_cli("predict.py", str(image), "--model", tiny_run, "--channel", "5")
    assert result.returncode == 1
    assert f"{image}: channel 5 requested" in result.stderr
    result = run_cli("predict.py", str(image), "--model", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "nope" in result.stderr.strip().splitlines()[-1]


def test_tta_changes_the_maps_and_workers_give_the_same_files(tiny_run, prediction_inputs,
                                                              tmp_path):
    """--tta averages the foreground over the 8 flips and rotations: other maps than without
    it (whether the objects change depends on the model); --workers 2 --tta writes what one process does with the
    workers' TensorFlow thread count (with another count the maps may differ in the last float32
    bits, see tests/test_predict_parallel.py)."""
    wide = tmp_path / "wide.png"  # non-square: quarter turns give the network a 72 x 80 input
    write_image_atomic(str(wide), np.random.default_rng(4).integers(0, 255, (72, 80),
                                                                     dtype=np.uint8))
    inputs = [prediction_inputs["small"], str(wide)]
    outputs = {}
    env = {}  # the workers' thread count, for the one-process TTA run after them
    for name, extra in (("plain", []), ("tta-workers", ["--tta", "--workers", "2"]),
                        ("tta", ["--tta"])):
        out = str(tmp_path / name)
        result = run_cli("predict.py", *inputs, "--model", tiny_run, "--out", out,
                         "--save-prob", *extra, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        if name == "tta-workers":
            threads = re.search(r"2 worker processes, (\d+) TensorFlow thread", result.stderr)
            assert threads, result.stderr[-2000:]
            env = {"TF_NUM_INTRAOP_THREADS": threads[1], "TF_NUM_INTEROP_THREADS": threads[1]}
        assert "predicted 2 of 2 image(s)" in result.stderr
        assert result.stderr.count("test-time augmentation") == (1 if extra else 0), \
            result.stderr[-2000:]
        outputs[name] = {stem: (read_label_stack(os.path.join(out, f"{stem}.layers.tif")),
                                tifffile.imread(os.path.join(out, f"{stem}.prob.tif")))
                         for stem in ("small", "wide")}
    for stem in ("small", "wide"):
        plain_stack, plain_maps = outputs["plain"][stem]
        stack, maps = outputs["tta"][stem]
        assert maps.shape == plain_maps.shape and 0.0 <= maps.min() and maps.max() <= 1.0
        assert np.abs(maps - plain_maps).max() > 1e-3
        worker_stack, worker_maps = outputs["tta-workers"][stem]
        np.testing.assert_array_equal(worker_stack, stack)
        np.testing.assert_array_equal(worker_maps, maps)
