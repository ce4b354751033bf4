"""Test-time augmentation: the 8 dihedral transforms and ``Predictor(tta=True)``.

The networks are real tiny UNet-S models (8 filters) built with :func:`layernet.model.build_model`.
Their batch-norm statistics are calibrated once on a batch (``bn_momentum=0`` and one training
call), so that their maps vary across the image as a trained network's do: a fresh network's maps
are nearly constant (spread ~1e-4), against which no comparison below could fail.
"""

from __future__ import annotations

import numpy as np
import pytest

from layernet.baselines import BACKGROUND
from layernet.config import Config
from layernet.inference import (DIHEDRAL_COUNT, Predictor, dihedral_inverse,
                                dihedral_transform)
from layernet.tiling import plan_tiles, predict_image

TOLERANCE = 2e-5  # float32 maps in [0, 1], averaged in a different order


def _calibrated_net(method: str) -> tuple[object, Config]:
    import keras

    from layernet.model import build_model

    keras.utils.set_random_seed(3)
    config = Config(method=method, size="S", filters=8, head_filters=8, bn_momentum=0.0,
                    min_size=5).validate()
    net = build_model(config)
    batch = np.random.default_rng(3).random((2, 48, 48, 1), dtype=np.float32)
    net(batch, training=True)  # momentum 0: the moving statistics become this batch's
    return net, config


@pytest.fixture(scope="module")
def layering_net() -> tuple[object, Config]:
    return _calibrated_net("layering")


def _hand_transforms() -> list[tuple]:
    """D4 on the axes (1, 2) of a batch, written out by hand: (transform, its inverse)."""
    def transpose(a):
        return np.swapaxes(a, 1, 2)

    def anti_transpose(a):
        return np.swapaxes(a[:, ::-1, ::-1], 1, 2)

    return [
        (lambda a: a, lambda a: a),
        (lambda a: np.rot90(a, 1, (1, 2)), lambda a: np.rot90(a, 3, (1, 2))),
        (lambda a: a[:, ::-1, ::-1], lambda a: a[:, ::-1, ::-1]),
        (lambda a: np.rot90(a, 3, (1, 2)), lambda a: np.rot90(a, 1, (1, 2))),
        (lambda a: a[:, ::-1], lambda a: a[:, ::-1]),
        (lambda a: a[:, :, ::-1], lambda a: a[:, :, ::-1]),
        (transpose, transpose),
        (anti_transpose, anti_transpose),
    ]


def _blob(side: int = 64) -> np.ndarray:
    """``(side, side, 1)`` radially symmetric blob, centred: unchanged by all 8 transforms."""
    y, x = np.mgrid[:side, :side] - (side - 1) / 2
    return (np.exp(-(x ** 2 + y ** 2) / (side * 3.0)) + 0.3 * np.cos(np.hypot(x, y) / 3.0)
            )[..., None].astype(np.float32)


# ------------------------------------------------------------------------------------------
# the transforms


def test_dihedral_transforms_are_the_8_distinct_elements_and_inverses_undo_them():
    array = np.arange(2 * 3 * 5 * 2).reshape(2, 3, 5, 2)  # batch, non-square, 2 channels
    transformed = [dihedral_transform(array, index) for index in range(DIHEDRAL_COUNT)]
    np.testing.assert_array_equal(transformed[0], array)
    for index, result in enumerate(transformed):
        assert result.shape == ((2, 5, 3, 2) if index % 2 else (2, 3, 5, 2))
        np.testing.assert_array_equal(dihedral_inverse(result, index), array)
        for other in transformed[:index]:
            assert result.shape != other.shape or not np.array_equal(result, other)
    # the same 8 as the hand-written group (in some order)
    hand = [forward(array) for forward, _ in _hand_transforms()]
    for result in transformed:
        assert sum(h.shape == result.shape and np.array_equal(h, result) for h in hand) == 1
    # other axes, e.g. a single (H, W) map
    plane = np.arange(12).reshape(3, 4)
    for index in range(DIHEDRAL_COUNT):
        np.testing.assert_array_equal(
            dihedral_inverse(dihedral_transform(plane, index, (0, 1)), index, (0, 1)), plane)
    with pytest.raises(ValueError, match="0..7"):
        dihedral_transform(array, 8)
    with pytest.raises(ValueError, match="0..7"):
        dihedral_inverse(array, -1)


# ------------------------------------------------------------------------------------------
# Predictor(tta=True)


def test_symmetric_input_gives_symmetric_tta_maps(layering_net):
    """An input unchanged by all 8 transforms: every transformed input is the input, so TTA
    averages the network's maps over their 8 orientations and must come out unchanged by all 8
    transforms. The plain maps do not: the network itself is not rotation-equivariant."""
    net, config = layering_net
    image = _blob()
    for index in range(DIHEDRAL_COUNT):
        np.testing.assert_array_equal(dihedral_transform(image, index, (0, 1)), image)
    plain = Predictor(net, config).maps_normalized(image)
    tta = Predictor(net, config, tta=True).maps_normalized(image)
    asymmetry = max(np.abs(dihedral_transform(maps, index, (0, 1)) - maps).max()
                    for maps in plain for index in range(1, DIHEDRAL_COUNT))
    assert asymmetry > 0.05
    foreground = tta[0]  # averaged; the layering is the plain one (layers are not equivariant)
    for index in range(1, DIHEDRAL_COUNT):
        np.testing.assert_allclose(dihedral_transform(foreground, index, (0, 1)), foreground,
                                   atol=TOLERANCE)
    assert np.abs(tta[0] - plain[0]).max() > 0.05  # TTA changed the foreground
    np.testing.assert_array_equal(tta[1], plain[1])


def test_tta_maps_are_equivariant_on_a_non_square_input(layering_net):
    """TTA(T x) = T TTA(x) for each of the 8 transforms T (no padding: sides are multiples of
    the stride); the plain network is far from that."""
    net, config = layering_net
    images = np.random.default_rng(0).random((1, 32, 48, 1), dtype=np.float32)
    plain, tta = Predictor(net, config), Predictor(net, config, tta=True)
    reference = tta.maps_batch_normalized(images)
    plain_reference = plain.maps_batch_normalized(images)
    plain_error = 0.0
    for index in range(DIHEDRAL_COUNT):
        turned = np.ascontiguousarray(dihedral_transform(images, index))
        got = tta.maps_batch_normalized(turned)[0]  # the foreground (averaged)
        np.testing.assert_allclose(got, dihedral_transform(reference[0], index), atol=TOLERANCE)
        for got, want in zip(plain.maps_batch_normalized(turned), plain_reference):
            plain_error = max(plain_error, np.abs(got - dihedral_transform(want, index)).max())
    assert plain_error > 0.05


@pytest.mark.parametrize("method", ["layering", "unet3"])
def test_tta_equals_the_hand_computed_average(layering_net, method):
    """Two 30 x 44 images (padded to 32 x 48 by reflection, as the predictor pads), the network
    run here on the 8 hand-transformed batches, outputs turned back, np.mean, cropped."""
    import tensorflow as tf

    net, config = layering_net if method == "layering" else _calibrated_net(method)
    images = np.random.default_rng(1).random((2, 30, 44, 1), dtype=np.float32)
    padded = np.pad(images, ((0, 0), (0, 2), (0, 4), (0, 0)), mode="reflect")
    names = ("foreground", "layering") if method == "layering" else ("semantic",)
    turned_back: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for forward, inverse in _hand_transforms():
        outputs = net(tf.convert_to_tensor(np.ascontiguousarray(forward(padded))),
                      training=False)
        for name in names:
            turned_back[name].append(inverse(outputs[name].numpy()))
    mean = {name: np.mean(turned_back[name], axis=0)[:, :30, :44] for name in names}
    if method == "layering":  # the layering of the untransformed image, not averaged
        expected = (mean["foreground"][..., 0], turned_back["layering"][0][:, :30, :44])
    else:
        expected = (1.0 - mean["semantic"][..., BACKGROUND], mean["semantic"])

    got = Predictor(net, config, tta=True).maps_batch_normalized(images)
    plain = Predictor(net, config).maps_batch_normalized(images)
    for got_map, expected_map, plain_map in zip(got, expected, plain):
        assert got_map.dtype == np.float32 and got_map.shape == expected_map.shape
        np.testing.assert_allclose(got_map, expected_map, atol=TOLERANCE)
    assert np.abs(got[0] - plain[0]).max() > 0.01


def test_tiles_of_a_large_image_get_tta(layering_net):
    """predict_image cuts the image into tiles and every tile's maps are its TTA maps."""
    net, config = layering_net
    image = (np.random.default_rng(2).random((70, 100, 1)) * 1000).astype(np.float32)
    predictor = Predictor(net, config, tta=True)
    prediction = predict_image(predictor, image, tile_size=32, overlap=8, keep_maps=True)
    tiles = plan_tiles(image.shape[:2], 32, 8, config.stride)
    assert tiles is not None and prediction.tiles == len(tiles) > 1
    normalized = predictor.normalize(image)
    for tile in tiles:
        foreground, layering = predictor.maps_normalized(normalized[tile.slices])
        y0, x0, y1, x1 = tile.core
        core = (slice(y0 - tile.rect[0], y1 - tile.rect[0]),
                slice(x0 - tile.rect[1], x1 - tile.rect[1]))
        np.testing.assert_allclose(prediction.foreground[y0:y1, x0:x1], foreground[core],
                                   atol=TOLERANCE)
        np.testing.assert_allclose(prediction.layering[y0:y1, x0:x1], layering[core],
                                   atol=TOLERANCE)
    plain = predict_image(Predictor(net, config), image, tile_size=32, overlap=8,
                          keep_maps=True)
    assert np.abs(plain.foreground - prediction.foreground).max() > 0.01
