"""Tests of layernet.export (masks, Fiji ROIs, COCO RLE, flat labels, maps) and layernet.viz."""

from __future__ import annotations

import json
import os

import numpy as np
import pycocotools.mask as coco_mask
import pytest
import roifile
import tifffile
from scipy import ndimage
from skimage.draw import polygon as fill_polygon

from layernet.export import (OUTPUT_SUFFIXES, coco_annotations, object_crops, object_polygons,
                             rle_encode, save_coco, save_flat, save_masks,
                             save_probability_maps, save_rois, write_prediction)
from layernet.instances import flatten_stack, masks_from_stack, stack_from_masks
from layernet.io import read_label_stack, read_mask
from layernet.viz import (MATCH_COLOURS, comparison_panel, display_image, object_colours,
                          outline_mask, outline_overlay)


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


@pytest.fixture
def stack():
    shape = (40, 50)
    ring = _disc(shape, (20, 14), 10) & ~_disc(shape, (20, 14), 4)  # has a hole
    blob = _disc(shape, (22, 26), 9)  # overlaps the ring
    two_parts = np.zeros(shape, bool)
    two_parts[2:6, 36:40] = True
    two_parts[30:37, 40:48] = True
    corner = np.zeros(shape, bool)
    corner[35:, :5] = True  # touches the image border
    return stack_from_masks([ring, blob, two_parts, corner])


def fiji_fill(points, shape):
    """Pixels whose centre lies inside an ImageJ polygon (Fiji's polygon filling rule)."""
    rows, cols = fill_polygon(points[:, 1] - 0.5, points[:, 0] - 0.5, shape)
    mask = np.zeros(shape, bool)
    mask[rows, cols] = True
    return mask


def test_object_crops_hand_computed():
    s = np.zeros((2, 4, 5), np.int32)
    s[0, 1:3, 1:4] = 2
    s[1, 0, 4] = 1
    crops = object_crops(s)
    assert [(c[0], c[1]) for c in crops] == [(1, 1), (2, 0)]
    assert crops[1][2] == (slice(1, 3), slice(1, 4)) and crops[1][3].all()


def test_masks_round_trip(tmp_path, stack):
    folder = tmp_path / "img.masks"
    paths = save_masks(folder, stack)
    assert [os.path.basename(p) for p in paths] == ["0001.png", "0002.png", "0003.png", "0004.png"]
    masks, _ = masks_from_stack(stack)
    for path, mask in zip(paths, masks):
        np.testing.assert_array_equal(read_mask(path), mask)
    # writing again replaces the folder as a whole
    save_masks(folder, stack[:, :, :] * (stack == 1))
    assert sorted(os.listdir(folder)) == ["0001.png"]
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_polygons_reproduce_the_pixels_under_fiji_filling(stack):
    masks, _ = masks_from_stack(stack)
    for mask in masks:
        filled = np.zeros(mask.shape, bool)
        for points in object_polygons(mask):
            filled |= fiji_fill(points, mask.shape)
        np.testing.assert_array_equal(filled, ndimage.binary_fill_holes(mask))


def test_polygon_of_a_single_pixel_hand_computed():
    mask = np.zeros((3, 3), bool)
    mask[1, 1] = True
    (points,) = object_polygons(mask, offset=(10, 20))
    # a diamond through the midpoints between the pixel centre (21.5, 11.5) and its neighbours
    assert sorted(map(tuple, points.tolist())) == sorted(
        [(21.0, 11.5), (21.5, 11.0), (22.0, 11.5), (21.5, 12.0)])


def test_rois_zip(tmp_path, stack):
    path = tmp_path / "img.rois.zip"
    count = save_rois(path, stack)
    rois = roifile.roiread(path)
    assert count == len(rois) == 5  # the two-part object gives two ROIs
    names = [roi.name for roi in rois]
    assert names[0].startswith("0001-L")
    assert any(name.endswith("-2") for name in names)
    filled: dict[tuple[int, int], np.ndarray] = {}
    for roi in rois:
        label = int(roi.name.split("-")[0])
        layer = int(roi.name.split("-")[1][1:]) - 1
        key = (label, layer)
        filled[key] = filled.get(key, False) | fiji_fill(roi.coordinates(), stack.shape[1:])
    assert len(filled) == 4
    for (label, layer), mask in filled.items():
        np.testing.assert_array_equal(mask, ndimage.binary_fill_holes(stack[layer] == label))


def test_rle_matches_pycocotools(stack):
    shape = stack.shape[1:]
    for label, _, box, crop in object_crops(stack):
        full = np.zeros(shape, bool)
        full[box][crop] = True
        ours = rle_encode(crop, box, shape)
        reference = coco_mask.encode(np.asfortranarray(full.astype(np.uint8)))
        assert ours["counts"] == reference["counts"].decode("ascii")
        decoded = coco_mask.decode({"size": ours["size"], "counts": ours["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), full)


def test_rle_edge_cases():
    shape = (3, 4)
    for full in (np.ones(shape, bool), np.eye(3, 4, dtype=bool)):
        rows, cols = np.nonzero(full)
        box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
        ours = rle_encode(full[box], box, shape)
        decoded = coco_mask.decode({"size": list(shape), "counts": ours["counts"].encode()})
        np.testing.assert_array_equal(decoded.astype(bool), full)


def test_coco_file(tmp_path, stack):
    path = tmp_path / "img.coco.json"
    assert save_coco(path, stack, "img.tif") == 4
    data = json.loads(path.read_text())
    assert data["images"] == [{"id": 1, "file_name": "img.tif", "height": 40, "width": 50}]
    masks, ids = masks_from_stack(stack)
    for annotation, mask, label in zip(data["annotations"], masks, ids):
        assert annotation["layernet_id"] == label
        assert annotation["area"] == int(mask.sum())
        rows, cols = np.nonzero(mask)
        assert annotation["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1,
                                      rows.max() - rows.min() + 1]
        segmentation = dict(annotation["segmentation"])
        segmentation["counts"] = segmentation["counts"].encode()
        np.testing.assert_array_equal(coco_mask.decode(segmentation).astype(bool), mask)
    assert coco_annotations(np.zeros((1, 5, 5), np.int32), "x")["annotations"] == []


def test_flat_and_maps(tmp_path, stack):
    save_flat(tmp_path / "f.tif", stack)
    np.testing.assert_array_equal(read_label_stack(tmp_path / "f.tif")[0], flatten_stack(stack))
    foreground = np.random.default_rng(0).random((40, 50)).astype(np.float32)
    layering = np.random.default_rng(1).random((40, 50, 3)).astype(np.float32)
    save_probability_maps(tmp_path / "p.tif", foreground, layering)
    data = tifffile.imread(tmp_path / "p.tif")
    assert data.shape == (4, 40, 50) and data.dtype == np.float32
    np.testing.assert_array_equal(data[0], foreground)
    np.testing.assert_array_equal(data[3], layering[..., 2])


def test_write_prediction_all_outputs(tmp_path, stack):
    image = np.random.default_rng(0).integers(0, 4096, (40, 50, 1)).astype(np.float32)
    maps = (np.zeros((40, 50), np.float32), np.zeros((40, 50, 8), np.float32))
    prefix = str(tmp_path / "img")
    written = write_prediction(prefix, stack, image, masks=True, rois=True, coco=True, flat=True,
                               maps=maps)
    assert written == [prefix + OUTPUT_SUFFIXES[key] for key in
                       ("layers", "overlay", "masks", "rois", "coco", "flat", "prob")]
    assert all(os.path.exists(path) for path in written)
    np.testing.assert_array_equal(read_label_stack(written[0]), stack)
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temporary leftovers


# ---------------------------------------------------------------------------------------- viz
def test_display_image_stretches_each_channel():
    gray = np.arange(100, dtype=np.uint16).reshape(10, 10) * 40
    out = display_image(gray, 0, 100)
    assert out.dtype == np.uint8 and out.shape == (10, 10, 3)
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    two = np.stack([gray, np.zeros_like(gray)], axis=-1)
    assert display_image(two)[..., 2].max() == 0
    np.testing.assert_array_equal(display_image(np.full((4, 4), 7.0)), 0)


def test_outline_mask_hand_computed():
    labels = np.zeros((5, 6), np.int32)
    labels[1:4, 1:4] = 1
    labels[1:4, 4] = 2
    expected = labels > 0
    expected[2, 2] = False  # the only pixel whose four neighbours all carry its id
    np.testing.assert_array_equal(outline_mask(labels), expected)


def test_object_colours_distinct():
    colours = object_colours(50)
    assert colours.shape == (51, 3) and tuple(colours[0]) == (0, 0, 0)
    assert len({tuple(c) for c in colours[1:]}) == 50


def test_outline_overlay_shows_overlapping_outlines(stack):
    base = np.zeros(stack.shape[1:] + (3,), np.uint8)
    out = outline_overlay(base, stack, fill=0.0)
    colours = object_colours(int(stack.max()))
    edges = np.array([outline_mask(layer) for layer in stack])
    for layer, edge in zip(stack, edges):
        alone = edge & (edges.sum(axis=0) == 1)  # where outlines cross, the upper slice wins
        np.testing.assert_array_equal(out[alone], colours[layer[alone]])
    assert np.all(edges.any(axis=0) == out.any(axis=-1))
    assert not out[stack.max(axis=0) == 0].any()
    tinted = outline_overlay(base, stack, fill=0.5)
    overlap = (stack > 0).sum(axis=0) == 2
    interior = overlap & ~np.any([outline_mask(layer) for layer in stack], axis=0)
    assert interior.any() and tinted[interior].any()
    with pytest.raises(ValueError):
        outline_overlay(base[:-1], stack)


def test_comparison_panel_colours_matches_and_errors():
    gt = np.zeros((1, 20, 20), np.int32)
    gt[0, 2:8, 2:8] = 1
    gt[0, 12:18, 12:18] = 2
    pred = np.zeros((1, 20, 20), np.int32)
    pred[0, 2:8, 2:8] = 5  # matches gt 1
    pred[0, 12:14, 2:6] = 6  # false positive; gt 2 is missed
    panel = comparison_panel(np.zeros((20, 20)), gt, pred, gap=2)
    assert panel.shape == (20, 42, 3)
    assert tuple(panel[2, 2]) == MATCH_COLOURS["matched"]
    assert tuple(panel[12, 12]) == MATCH_COLOURS["missed"]
    assert tuple(panel[2, 22 + 2]) == MATCH_COLOURS["matched"]
    assert tuple(panel[12, 22 + 2]) == MATCH_COLOURS["false"]
