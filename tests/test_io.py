"""Tests of layernet.io: reading images/masks/labels, writing and reading label stacks."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import tifffile

from layernet.instances import LabelStackError
from layernet.io import (
    ImageReadError,
    as_channels,
    read_image,
    read_label_image,
    read_label_stack,
    read_mask,
    write_image_atomic,
    write_label_stack,
)


def _ramp(dtype, shape=(20, 30)):
    values = np.arange(np.prod(shape)).reshape(shape) % 200
    return values.astype(dtype)


@pytest.mark.parametrize("compression", [None, "zlib", "packbits", "lzw"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_read_tiff_roundtrip(tmp_path, compression, dtype):
    if compression in ("packbits", "lzw"):
        pytest.importorskip("imagecodecs")  # tifffile writes these only with imagecodecs
    data = _ramp(dtype)
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, data, compression=compression)
    out = read_image(path)
    assert out.dtype == data.dtype
    np.testing.assert_array_equal(out, data)


def test_read_tiff_rgb_and_stack(tmp_path):
    rgb = np.stack([_ramp(np.uint8), _ramp(np.uint8) // 2, _ramp(np.uint8) // 3], axis=-1)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.tif"), rgb)
    stack = np.stack([_ramp(np.uint16)] * 5)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    assert read_image(tmp_path / "stack.tif").shape == (5, 20, 30)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_read_png_gray_and_colour(tmp_path, dtype):
    gray = _ramp(dtype)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    out = read_image(tmp_path / "g.png")
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, gray)
    rgb = np.stack([gray, gray // 2, gray // 4], axis=-1)
    cv2.imwrite(str(tmp_path / "c.png"), rgb[..., ::-1])  # OpenCV writes BGR
    np.testing.assert_array_equal(read_image(tmp_path / "c.png"), rgb)  # we return RGB


def test_read_jpeg(tmp_path):
    gray = np.full((16, 16), 128, np.uint8)
    cv2.imwrite(str(tmp_path / "a.jpg"), gray)
    out = read_image(tmp_path / "a.jpg")
    assert out.shape == (16, 16)
    assert abs(int(out.mean()) - 128) <= 2


def test_tiff_detected_by_content_not_extension(tmp_path):
    data = _ramp(np.uint16)
    tifffile.imwrite(tmp_path / "odd.png", data)
    np.testing.assert_array_equal(read_image(tmp_path / "odd.png"), data)


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="missing.tif: file not found"):
        read_image(tmp_path / "missing.tif")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.png: empty file"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("hello, not an image")
    with pytest.raises(ImageReadError, match="text.png: not a readable image"):
        read_image(tmp_path / "text.png")
    tifffile.imwrite(tmp_path / "cut.tif", _ramp(np.uint16, (200, 200)))
    content = (tmp_path / "cut.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(content[: len(content) // 3])
    with pytest.raises(ImageReadError, match="cut.tif: cannot read TIFF"):
        read_image(tmp_path / "cut.tif")
    cv2.imwrite(str(tmp_path / "cut.png"), _ramp(np.uint8, (200, 200)))
    content = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(content[:40])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_image(tmp_path / "cut.png")


def test_as_channels_shapes_and_errors():
    gray = _ramp(np.uint16)
    out = as_channels(gray)
    assert out.shape == (20, 30, 1) and out.dtype == np.float32
    np.testing.assert_array_equal(out[..., 0], gray.astype(np.float32))
    rgb = np.stack([gray, gray + 1, gray + 2], axis=-1)
    np.testing.assert_array_equal(as_channels(rgb, channel=1)[..., 0], gray + 1)
    assert as_channels(rgb, expected_channels=3).shape == (20, 30, 3)
    with pytest.raises(ImageReadError, match="x.tif: channel 3 requested but the image is 3"):
        as_channels(rgb, channel=3, name="x.tif")
    with pytest.raises(ImageReadError, match="grayscale"):
        as_channels(gray, channel=1, name="g.tif")
    with pytest.raises(ImageReadError, match=r"c.png: has 3 channel\(s\) \(RGB\), expected 1"):
        as_channels(rgb, expected_channels=1, name="c.png")
    with pytest.raises(ImageReadError, match="expected 3"):
        as_channels(gray, expected_channels=3, name="g.png")
    # a gray image stored as opaque RGBA is accepted as one channel
    rgba = np.stack([gray, gray, gray, np.full_like(gray, 255)], axis=-1)
    np.testing.assert_array_equal(as_channels(rgba, expected_channels=1)[..., 0], gray)
    with pytest.raises(ImageReadError, match="s.tif: is a stack of 5 planes"):
        as_channels(np.zeros((5, 20, 30)), name="s.tif")
    with pytest.raises(ImageReadError, match="got shape"):
        as_channels(np.zeros((2, 5, 20, 30)), name="s.tif")
    bad = gray.astype(np.float32)
    bad[3, 4] = np.nan
    with pytest.raises(ImageReadError, match="f.tif: contains NaN"):
        as_channels(bad, name="f.tif")
    bad[3, 4] = np.inf
    with pytest.raises(ImageReadError, match="NaN or infinite"):
        as_channels(bad, name="f.tif")


def test_read_mask_variants(tmp_path):
    mask = np.zeros((20, 30), bool)
    mask[5:10, 3:17] = True
    cv2.imwrite(str(tmp_path / "m01.png"), mask.astype(np.uint8))
    cv2.imwrite(str(tmp_path / "m255.png"), mask.astype(np.uint8) * 255)
    tifffile.imwrite(tmp_path / "m16.tif", mask.astype(np.uint16) * 65535)
    rgba = np.stack([mask * 255] * 3 + [np.full(mask.shape, 255)], axis=-1).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)  # like the BBBC010 foreground PNGs
    alpha_only = np.zeros(mask.shape + (4,), np.uint8)
    alpha_only[..., 3] = mask * 255
    cv2.imwrite(str(tmp_path / "alpha.png"), alpha_only)
    for name in ("m01.png", "m255.png", "m16.tif", "rgba.png", "alpha.png"):
        out = read_mask(tmp_path / name)
        assert out.dtype == np.bool_, name
        np.testing.assert_array_equal(out, mask, err_msg=name)
    cv2.imwrite(str(tmp_path / "empty_mask.png"), np.zeros((4, 4), np.uint8))
    assert not read_mask(tmp_path / "empty_mask.png").any()


def test_read_mask_rejects_non_binary(tmp_path):
    labels = np.zeros((10, 10), np.uint8)
    labels[1:3, 1:3] = 1
    labels[5:7, 5:7] = 2
    cv2.imwrite(str(tmp_path / "labels.png"), labels)
    with pytest.raises(ImageReadError, match=r"labels.png: not a binary mask \(values 0, 1, 2\)"):
        read_mask(tmp_path / "labels.png")
    cv2.imwrite(str(tmp_path / "seven.png"), (labels > 0).astype(np.uint8) * 7)
    with pytest.raises(ImageReadError, match="seven.png: not a binary mask"):
        read_mask(tmp_path / "seven.png")
    colour = np.zeros((10, 10, 3), np.uint8)
    colour[1:3, 1:3, 0] = 255
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    with pytest.raises(ImageReadError, match="colour.png: colour mask whose channels differ"):
        read_mask(tmp_path / "colour.png")
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((6, 10, 10), np.uint8),
                     photometric="minisblack")
    with pytest.raises(ImageReadError, match="stack.tif: is a stack of 6 planes"):
        read_mask(tmp_path / "stack.tif")


def test_read_label_image(tmp_path):
    labels = np.zeros((10, 12), np.uint16)
    labels[1:3, 1:3] = 1
    labels[5:7, 5:9] = 300
    tifffile.imwrite(tmp_path / "l.tif", labels)
    out = read_label_image(tmp_path / "l.tif")
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, labels)
    tifffile.imwrite(tmp_path / "neg.tif", labels.astype(np.int16) - 1)
    with pytest.raises(ImageReadError, match="neg.tif: label ids must be >= 0"):
        read_label_image(tmp_path / "neg.tif")
    tifffile.imwrite(tmp_path / "frac.tif", labels.astype(np.float32) + 0.5)
    with pytest.raises(ImageReadError, match="frac.tif: label image holds non-integer"):
        read_label_image(tmp_path / "frac.tif")
    tifffile.imwrite(tmp_path / "whole.tif", labels.astype(np.float32))
    np.testing.assert_array_equal(read_label_image(tmp_path / "whole.tif"), labels)
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((3, 10, 12), np.uint16), photometric="minisblack")
    with pytest.raises(ImageReadError, match="s.tif: a label image must be 2-D"):
        read_label_image(tmp_path / "s.tif")


def _example_stack():
    stack = np.zeros((3, 16, 20), np.int32)
    stack[0, 2:8, 2:8] = 1
    stack[0, 10:14, 10:18] = 2
    stack[1, 5:12, 5:12] = 3
    stack[2, 6:9, 6:15] = 65535
    return stack


def test_label_stack_roundtrip_and_imagej_metadata(tmp_path):
    stack = _example_stack()
    path = tmp_path / "labels.tif"
    write_label_stack(path, stack)
    back = read_label_stack(path)
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, stack)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["slices"] == 3
        assert tif.series[0].axes == "ZYX"
        assert tif.series[0].dtype == np.uint16
    assert os.listdir(tmp_path) == ["labels.tif"]  # no temporary files left behind


def test_label_stack_single_slice_and_2d_label_image(tmp_path):
    write_label_stack(tmp_path / "one.tif", _example_stack()[:1])
    back = read_label_stack(tmp_path / "one.tif")
    assert back.shape == (1, 16, 20)
    np.testing.assert_array_equal(back, _example_stack()[:1])
    cv2.imwrite(str(tmp_path / "labels.png"), _example_stack()[0].astype(np.uint8))
    np.testing.assert_array_equal(read_label_stack(tmp_path / "labels.png"), _example_stack()[:1])


def test_write_label_stack_rejects_bad_stacks_and_keeps_old_file(tmp_path):
    path = tmp_path / "labels.tif"
    write_label_stack(path, _example_stack())
    too_big = _example_stack()
    too_big[0, 0, 0] = 70000
    with pytest.raises(LabelStackError, match="does not fit into uint16"):
        write_label_stack(path, too_big)
    duplicated = _example_stack()
    duplicated[1, 0, 0] = 1
    with pytest.raises(LabelStackError, match="appears in slices 0 and 1"):
        write_label_stack(path, duplicated)
    np.testing.assert_array_equal(read_label_stack(path), _example_stack())
    assert os.listdir(tmp_path) == ["labels.tif"]


def test_read_label_stack_rejects_invalid(tmp_path):
    duplicated = _example_stack().astype(np.uint16)
    duplicated[1, 0, 0] = 1
    tifffile.imwrite(tmp_path / "dup.tif", duplicated, photometric="minisblack")
    with pytest.raises(ImageReadError, match="dup.tif: object id 1 appears in slices 0 and 1"):
        read_label_stack(tmp_path / "dup.tif")


def test_write_image_atomic(tmp_path):
    rgb = np.zeros((8, 9, 3), np.uint8)
    rgb[..., 0] = 200
    write_image_atomic(tmp_path / "p.png", rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), rgb)
    assert os.listdir(tmp_path) == ["p.png"]
