"""The network's input scale (``config.input_scale``, :mod:`layernet.rescale`).

Resizing helpers against hand-computed cases; the predictor at scale 0.5 against a NumPy
reference (2x2 block means in, half-pixel bilinear up-sampling out) around the same network at
scale 1; tiles planned in the image's pixels; training data at the network's scale (training
split only, streamed or in memory) with the median object area in the image's pixels; the
option on the command line and in the config.
"""

from __future__ import annotations

import numpy as np
import pytest

from layernet.config import Config, ConfigError
from layernet.rescale import (rescale_sample, resize_images, resize_maps, resize_stack,
                              scaled_shape)
from layernet.samples import Sample


def _upsample2_reference(maps: np.ndarray) -> np.ndarray:
    """Bilinear x2 of ``(B, h, w, C)`` with half-pixel centres and clamped borders, by hand:
    output pixel ``o`` reads input coordinate ``(o + 0.5) / 2 - 0.5``."""
    def along(array: np.ndarray, axis: int) -> np.ndarray:
        size = array.shape[axis]
        coordinate = np.clip((np.arange(2 * size) + 0.5) / 2 - 0.5, 0, size - 1)
        low = np.floor(coordinate).astype(int)
        high = np.minimum(low + 1, size - 1)
        weight = (coordinate - low).reshape([-1 if a == axis else 1 for a in range(array.ndim)])
        return (np.take(array, low, axis=axis) * (1 - weight)
                + np.take(array, high, axis=axis) * weight)
    return along(along(maps.astype(np.float64), 1), 2)


# ------------------------------------------------------------------------------------------
# helpers


def test_scaled_shape_rounds_and_keeps_at_least_one_pixel():
    assert scaled_shape((320, 321), 0.5) == (160, 160)
    assert scaled_shape((3, 2), 0.1) == (1, 1)
    assert scaled_shape((10, 7), 2.0) == (20, 14)


def test_resize_images_shrinks_by_block_means_and_grows_bilinearly():
    image = np.arange(4 * 6 * 2, dtype=np.float32).reshape(1, 4, 6, 2)
    blocks = image.reshape(1, 2, 2, 3, 2, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(resize_images(image, (2, 3)), blocks, rtol=1e-6)
    small = np.random.default_rng(0).random((2, 3, 5, 1), dtype=np.float32)
    np.testing.assert_allclose(resize_images(small, (6, 10)), _upsample2_reference(small),
                               atol=1e-5)
    np.testing.assert_array_equal(resize_images(image, (4, 6)), image)
    with pytest.raises(ValueError, match="batch"):
        resize_images(image[0], (2, 3))


def test_resize_maps_is_bilinear_for_any_channel_count_and_2d_maps():
    rng = np.random.default_rng(1)
    many = rng.random((1, 4, 3, 600), dtype=np.float32)  # OpenCV 5 resizes 128 at once
    np.testing.assert_allclose(resize_maps(many, (8, 6)), _upsample2_reference(many), atol=1e-5)
    flat = rng.random((2, 4, 3), dtype=np.float32)
    np.testing.assert_allclose(resize_maps(flat, (8, 6)),
                               _upsample2_reference(flat[..., None])[..., 0], atol=1e-5)


def test_resize_stack_is_nearest_and_drops_vanished_objects():
    stack = np.zeros((2, 8, 8), np.int32)
    stack[0, 0:4, 0:4] = 1
    stack[0, 5, 7] = 2  # one pixel on an odd row: the 8 -> 4 grid reads rows/columns 0, 2, 4, 6
    stack[1, 2:8, 2:8] = 3
    resized = resize_stack(stack, (4, 4))
    expected = np.zeros((2, 4, 4), np.int32)
    expected[0, 0:2, 0:2] = 1
    expected[1, 1:4, 1:4] = 2  # id 3 becomes 2: ids stay 1..K in their old order
    np.testing.assert_array_equal(resized, expected)
    np.testing.assert_array_equal(resize_stack(stack, (8, 8)), stack)


def test_rescale_sample_resizes_image_and_stack_and_records_it():
    stack = np.zeros((1, 10, 12), np.int32)
    stack[0, 2:8, 2:10] = 1
    sample = Sample(np.ones((10, 12, 1), np.float32), stack, "s", {"source": "x"})
    assert rescale_sample(sample, 1.0) is sample
    half = rescale_sample(sample, 0.5)
    assert half.image.shape == (5, 6, 1) and half.stack.shape == (1, 5, 6)
    assert (half.stack > 0).sum() == 12  # 6 x 8 pixels -> 3 x 4
    assert half.meta == {"source": "x", "input_scale": 0.5, "original_shape": (10, 12)}


def test_pixel_settings_are_in_image_pixels_and_scaled_for_the_network():
    config = Config(input_scale=0.5, adjacency_distance=15, elastic_strength=8,
                    elastic_smoothness=16, patch_size=160, min_size=250).validate()
    network = config.at_network_scale()
    assert (network.adjacency_distance, network.elastic_strength,
            network.elastic_smoothness) == (7.5, 4.0, 8.0)
    assert (network.patch_size, network.min_size) == (160, 250)  # the crop; Algorithm 1's
    assert Config().at_network_scale() == Config()


def test_config_checks_input_scale():
    assert Config(input_scale=0.5).validate().input_scale == 0.5
    for bad in (0, -0.5, 4.5, True, "half"):
        with pytest.raises(ConfigError, match="input_scale"):
            Config(input_scale=bad).validate()


# ------------------------------------------------------------------------------------------
# prediction


@pytest.fixture(scope="module")
def calibrated_net():
    """A tiny UNet-S whose batch-norm statistics are those of one batch (maps vary in space)."""
    import keras

    from layernet.model import build_model

    keras.utils.set_random_seed(5)
    config = Config(size="S", filters=8, head_filters=8, bn_momentum=0.0, min_size=5).validate()
    net = build_model(config)
    net(np.random.default_rng(5).random((2, 48, 48, 1), dtype=np.float32), training=True)
    return net, config


def test_predictor_at_half_scale_equals_block_means_in_and_bilinear_maps_out(calibrated_net):
    from layernet.inference import Predictor

    net, config = calibrated_net
    image = np.random.default_rng(6).random((1, 64, 80, 1), dtype=np.float32)
    foreground, layering = Predictor(net, config.replace(input_scale=0.5)
                                     ).maps_batch_normalized(image)
    assert foreground.shape == (1, 64, 80) and layering.shape == (1, 64, 80, config.layers)
    blocks = image.reshape(1, 32, 2, 40, 2, 1).mean(axis=(2, 4))
    small_fg, small_layering = Predictor(net, config).maps_batch_normalized(blocks)
    assert small_fg.std() > 1e-3  # the maps vary, so the comparison below can fail
    np.testing.assert_allclose(foreground, _upsample2_reference(small_fg[..., None])[..., 0],
                               atol=2e-5)
    np.testing.assert_allclose(layering, _upsample2_reference(small_layering), atol=2e-5)


def test_predict_image_at_half_scale_returns_stacks_in_the_image_pixels(calibrated_net):
    from layernet.inference import Predictor
    from layernet.tiling import predict_image

    net, config = calibrated_net
    predictor = Predictor(net, config.replace(input_scale=0.5, tau=0.3))
    image = np.random.default_rng(7).random((90, 70, 1), dtype=np.float32) * 1000
    whole = predict_image(predictor, image, tile_size=0)
    assert whole.stack.shape[1:] == (90, 70)
    tiled = predict_image(predictor, image, tile_size=64, overlap=32)  # 4 tiles
    assert tiled.stack.shape[1:] == (90, 70)


def test_tiles_are_planned_in_image_pixels():
    from layernet.prediction import image_tiles
    from layernet.tiles import TilingError

    assert image_tiles((1000, 1000), 16)[0] is not None  # 768 px tiles at scale 1
    assert image_tiles((1000, 1000), 16, scale=0.5)[0] is None  # the network sees 500 px
    tiles, overlap = image_tiles((4000, 3000), 16, scale=0.5)
    heights = [t.rect[2] - t.rect[0] for t in tiles]
    widths = [t.rect[3] - t.rect[1] for t in tiles]
    assert max(heights) * max(widths) <= 1536 ** 2 and overlap % 32 == 0  # 768 px for the net
    assert all(side % 32 == 0 for side in heights + widths)
    with pytest.raises(TilingError, match="input scale 0.5"):
        image_tiles((500, 500), 16, tile_size=40, scale=0.5)


# ------------------------------------------------------------------------------------------
# training


def _tiny(**changes) -> Config:
    return Config(data="synthetic", data_options={"kind": "cells", "size": 96, "count": 8},
                  size="S", filters=8, head_filters=8, patch_size=32, batch_size=2,
                  epochs=1, steps_per_epoch=1, min_size=20, **changes).validate()


def test_training_split_is_at_the_network_scale_and_validation_is_not(tmp_path):
    from datasets import load_source
    from layernet.targets import adjacency_matrix
    from layernet.training import load_training_data

    full = load_training_data(_tiny(), load_source)
    half = load_training_data(_tiny(input_scale=0.5), load_source)
    streamed = load_training_data(_tiny(input_scale=0.5, streaming="on",
                                        cache_dir=str(tmp_path / "cache")), load_source)
    assert [s.image.shape for s in half.train] == [(48, 48, 1)] * len(full.train)
    assert [s.image.shape for s in half.val] == [s.image.shape for s in full.val]
    # adjacency in the image's pixels: 15 px there are 7.5 px of the network's
    for sample in half.train:
        np.testing.assert_array_equal(sample.adjacency, adjacency_matrix(sample.stack, 7.5))
    for memory, disk in zip(half.train, streamed.train):
        np.testing.assert_array_equal(memory.image, disk.image)
        np.testing.assert_array_equal(memory.stack, disk.stack)
    # the scaled entries have their own cache keys: the full-size ones are not reused
    unscaled = load_training_data(_tiny(streaming="on", cache_dir=str(tmp_path / "cache")),
                                  load_source)
    assert unscaled.train[0].image.shape == (96, 96, 1)


def test_training_at_half_scale_measures_object_area_in_image_pixels(tmp_path):
    from datasets import load_source
    from layernet import runfolder
    from layernet.instances import median_object_area
    from layernet.training import train

    config = _tiny(input_scale=0.5, join_layers=1, join_max_area_ratio=1.5)
    train(config, str(tmp_path / "run"), verbose=0, load_source=load_source)
    saved = Config.load(str(tmp_path / "run" / runfolder.CONFIG_FILE))
    assert saved.input_scale == 0.5
    full_train = load_source("synthetic", None, "train", 0, val_fraction=0.1,
                             **config.data_options).load_all()
    area = median_object_area(sample.stack for sample in full_train)
    assert abs(saved.object_area - area) <= 0.15 * area, (saved.object_area, area)


def test_train_cli_option_sets_input_scale():
    from layernet_commands.train import build_config, parse_args

    args = parse_args(["--input-scale", "0.5", "--out", "unused"])
    assert build_config(args).input_scale == 0.5
