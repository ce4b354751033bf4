"""napari layers of large predictions (layernet.napari.large): OME-Zarr and BigTIFF label stacks
read lazily as multiscale Labels layers, outlines object by object, the same as read whole.

Skipped without napari or zarr; layers go into napari's viewer model (no window)."""

from __future__ import annotations

import os

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("zarr")
pytest.importorskip("pytestqt")

from layernet.io import write_image_atomic, write_label_stack  # noqa: E402
from layernet.label_store import write_label_stack_as  # noqa: E402
from layernet.napari import (PredictionReadError, napari_get_reader, open_prediction,  # noqa
                             read_prediction)
from layernet.napari import large  # noqa: E402
from layernet.napari.layers import outline_polygons, prediction_layer_data  # noqa: E402

from tests.test_napari_plugin import SHAPE, crossing_stack  # noqa: E402


def big_stack(height: int = 300, width: int = 260, seed: int = 0) -> np.ndarray:
    """Random rectangles and discs in three slices, some crossing band borders; ids unique."""
    rng = np.random.default_rng(seed)
    stack = np.zeros((3, height, width), np.uint32)
    label = 0
    for layer in range(3):
        for _ in range(12):
            top, left = rng.integers(0, height - 40), rng.integers(0, width - 40)
            rows, cols = rng.integers(3, 60), rng.integers(3, 40)
            region = stack[layer, top:top + rows, left:left + cols]
            if region.any():
                continue
            label += 1
            region[...] = label
            if rows > 6 and cols > 6:  # a hole, and a second piece beside the box
                region[rows // 2, cols // 2] = 0
    return stack


@pytest.fixture
def viewer(qtbot):
    return napari.components.ViewerModel()


def test_object_boxes_in_bands_are_the_whole_stack_boxes():
    from scipy import ndimage

    stack = big_stack()
    boxes = large.object_boxes(stack, band_rows=17)
    for layer in range(stack.shape[0]):
        for index, found in enumerate(ndimage.find_objects(stack[layer])):
            if found is None:
                continue
            box = boxes[index + 1]
            assert (box.layer, box.top, box.bottom, box.left, box.right) == (
                layer, found[0].start, found[0].stop, found[1].start, found[1].stop)
    assert sorted(boxes) == sorted(set(np.unique(stack)) - {0})
    broken = stack.copy()
    broken[2, 0, 0] = 1  # id 1 in two slices
    with pytest.raises(ValueError, match="id 1 is in slices 1 and 3"):
        large.object_boxes(broken, band_rows=50)


def test_lazy_outlines_equal_the_outlines_of_the_whole_stack():
    stack = big_stack()
    whole = outline_polygons(stack.astype(np.int32))
    lazy = large.lazy_outline_polygons(stack, large.object_boxes(stack, band_rows=64))
    for mine, theirs in zip(lazy[1:], whole[1:]):
        np.testing.assert_array_equal(mine, theirs)
    assert len(lazy[0]) == len(whole[0])
    for mine, theirs in zip(lazy[0], whole[0]):
        np.testing.assert_array_equal(mine, theirs)


def test_pyramid_levels_subsample_ids():
    plane = np.arange(40 * 30, dtype=np.uint32).reshape(40, 30)
    levels = large.label_pyramid(plane, smallest=8)
    assert [level.shape for level in levels] == [(40, 30), (20, 15), (10, 8), (5, 4)]
    for index, level in enumerate(levels):
        np.testing.assert_array_equal(np.asarray(level), plane[::2 ** index, ::2 ** index])


def test_zarr_prediction_opens_lazily_with_the_layers_of_the_whole_stack(tmp_path, viewer):
    stack = crossing_stack().astype(np.uint32)
    path = write_label_stack_as(str(tmp_path / "cross.layers.zarr"), stack, "zarr")
    image = (stack.max(axis=0) > 0).astype(np.uint16) * 900 + 100
    write_image_atomic(tmp_path / "cross.tif", image)
    assert napari_get_reader(path) is read_prediction
    assert napari_get_reader(path + "/") is read_prediction
    layers = open_prediction(viewer, path)
    expected = prediction_layer_data(stack.astype(np.int32), "cross", image=image)
    assert [layer.name for layer in layers] == [kwargs["name"] for _, kwargs, _ in expected]
    image_layer, first, second, outlines = layers
    import dask.array as da

    # small: one pyramid level, so not multiscale, but read lazily (Dask)
    assert all(isinstance(layer.data, da.Array) for layer in (image_layer, first, second))
    np.testing.assert_array_equal(np.asarray(first.data), stack[0])
    np.testing.assert_array_equal(np.asarray(second.data), stack[1])
    np.testing.assert_array_equal(np.asarray(image_layer.data), image)
    _, shapes, _ = expected[-1]
    np.testing.assert_array_equal(np.asarray(outlines.features["id"]), shapes["features"]["id"])
    np.testing.assert_allclose(outlines.edge_color, shapes["edge_color"], atol=1e-6)
    masks = outlines.to_masks(mask_shape=SHAPE)
    ids = np.asarray(outlines.features["id"])
    for label in (3, 5, 7):
        np.testing.assert_array_equal(np.any(masks[ids == label], axis=0),
                                      (stack == label).any(axis=0))
    for label in (3, 7):
        np.testing.assert_allclose(first.colormap.map(np.array([label]))[0],
                                   shapes["edge_color"][list(ids).index(label)], atol=1e-6)
    # a folder holding it finds it; an unfinished one is not a prediction
    os.rename(path, str(tmp_path / "cross.layers.zarr.partial"))
    assert napari_get_reader(str(tmp_path)) is None


def test_large_tiff_opens_lazily_and_small_stays_whole(tmp_path, monkeypatch):
    stack = big_stack()
    path = write_label_stack_as(str(tmp_path / "big.layers.tif"), stack, "bigtiff")
    layers = read_prediction(path)
    assert isinstance(layers[0][0], np.ndarray)  # below LAZY_PIXELS: read whole as before
    monkeypatch.setattr(large, "LAZY_PIXELS", 1000)
    monkeypatch.setattr(large, "SMALLEST_LEVEL", 100)
    lazy = read_prediction(path)
    assert lazy[0][1]["multiscale"] and not isinstance(lazy[0][0], np.ndarray)
    assert [kwargs["name"] for _, kwargs, _ in lazy] == [kwargs["name"] for _, kwargs, _ in layers]
    for (data, _, kind), (whole, _, _) in zip(lazy[:-1], layers[:-1]):
        assert kind == "labels"
        np.testing.assert_array_equal(np.asarray(data[0]), whole)
        assert [level.shape for level in data] == [(300, 260), (150, 130), (75, 65)]
        np.testing.assert_array_equal(np.asarray(data[2]), whole[::4, ::4])
    viewer = napari.components.ViewerModel()
    added = viewer.add_labels(lazy[0][0], **lazy[0][1])
    assert added.multiscale and added.level_shapes.tolist() == [[300, 260], [150, 130], [75, 65]]
    np.testing.assert_array_equal(lazy[-1][1]["features"]["id"], layers[-1][1]["features"]["id"])
    # one slice: tifffile gives a 2-D series, read as a stack of one slice
    one = write_label_stack_as(str(tmp_path / "one.layers.tif"), stack[:1], "bigtiff")
    single = read_prediction(one)
    np.testing.assert_array_equal(np.asarray(single[0][0][0]), stack[0])
    assert single[0][1]["name"] == "one slice 1" and single[-1][2] == "shapes"


def test_many_objects_skip_the_outlines_with_a_warning(tmp_path):
    stack = big_stack()
    with pytest.warns(UserWarning, match="more than 5: no outlines layer"):
        layers = large.large_prediction_layer_data(stack, "big", max_outlines=5)
    assert [kind for _, _, kind in layers] == ["labels"] * 3


def test_bad_large_predictions_fail_in_one_line(tmp_path, monkeypatch):
    broken = tmp_path / "broken.layers.zarr"
    broken.mkdir()
    (broken / "zarr.json").write_text("{not json")
    with pytest.raises(PredictionReadError, match="broken.layers.zarr") as info:
        read_prediction(str(broken))
    assert "\n" not in str(info.value)
    monkeypatch.setattr(large, "LAZY_PIXELS", 10)
    bad = tmp_path / "float.layers.tif"
    import tifffile

    tifffile.imwrite(bad, np.zeros((2, 20, 20), np.float32))
    with pytest.raises(PredictionReadError, match="float.layers.tif.*integer ids"):
        read_prediction(str(bad))
    empty = write_label_stack_as(str(tmp_path / "empty.layers.zarr"),
                                 np.zeros((1, 20, 20), np.uint32), "zarr")
    with pytest.warns(UserWarning, match="holds no objects"):
        layers = read_prediction(empty)
    assert [kwargs["name"] for _, kwargs, _ in layers] == ["empty slice 1", "empty outlines"]


def test_bench_disc_stack_reads_back_with_every_object(tmp_path, capsys):
    from bench import napari_large

    path = str(tmp_path / "discs.layers.zarr")
    assert napari_large.write_disc_stack(path, 256, radius=26, period=64) == 32
    result = napari_large.measure(path)
    assert result["objects"] == 32 and result["polygons"] == 32 and result["peak_mb"] > 0
    stack = large.open_stack_lazily(path)
    first, second = np.asarray(stack[0]), np.asarray(stack[1])
    assert len(np.unique(first)) == 17 and len(np.unique(second)) == 17  # 16 ids + background
    assert ((first > 0) & (second > 0)).sum() > 0  # the slices overlap


def test_without_the_big_extra_a_large_tiff_is_read_whole_and_a_zarr_fails_in_one_line(
        tmp_path, monkeypatch):
    from layernet.backends import MissingPackageError

    stack = big_stack()
    tiff = write_label_stack_as(str(tmp_path / "big.layers.tif"), stack, "bigtiff")
    zarr_path = write_label_stack_as(str(tmp_path / "z.layers.zarr"), stack, "zarr")

    def missing(module: str = "zarr"):
        raise MissingPackageError(f"{module} is needed; install the extra")

    monkeypatch.setattr(large, "LAZY_PIXELS", 1000)
    monkeypatch.setattr(large, "require_big_extra", missing)
    with pytest.warns(UserWarning, match="read whole into memory"):
        layers = read_prediction(tiff)
    np.testing.assert_array_equal(layers[0][0], stack[0])
    with pytest.raises(PredictionReadError, match="z.layers.zarr: .*install the extra") as info:
        read_prediction(zarr_path)
    assert "\n" not in str(info.value)
