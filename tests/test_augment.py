"""Tests of layernet.augment: alignment of image and labels, validity, reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

tf = pytest.importorskip("tensorflow")

from layernet.augment import (adjust_gamma, augment, center_crop, random_crop,  # noqa: E402
                              source_coordinates, warp_bilinear, warp_nearest)
from layernet.config import Config  # noqa: E402

SIZE = 96


def disks_stack(size: int = SIZE, count: int = 12, seed: int = 0) -> np.ndarray:
    """Channels-last label stack (H, W, 2) of random overlapping disks, ids 1..count."""
    rng = np.random.default_rng(seed)
    stack = np.zeros((size, size, 2), np.int32)
    yy, xx = np.mgrid[:size, :size]
    for label in range(1, count + 1):
        cy, cx = rng.uniform(10, size - 10, 2)
        radius = rng.uniform(6, 14)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        layer = 0 if not stack[..., 0][disk].any() else 1
        stack[..., layer][disk & (stack[..., layer] == 0)] = label
    return stack


def only(**changes) -> Config:
    """A config with every augmentation switched off except those in ``changes``."""
    values = dict(flip=False, rotate=False, gamma_probability=0.0, elastic_probability=0.0)
    values.update(changes)
    return Config(**values).validate()


def run(config: Config, stack: np.ndarray, seed=(1, 2), image: np.ndarray | None = None):
    if image is None:
        image = stack.astype(np.float32)  # the image is the label ids: alignment is checkable
    out_image, out_stack = augment(tf.constant(image), tf.constant(stack), config,
                                   tf.constant(seed, tf.int32))
    return out_image.numpy(), out_stack.numpy()


def interior_agreement(image: np.ndarray, stack: np.ndarray) -> float:
    """Fraction of pixels away from label boundaries where the image equals the label ids."""
    interior = np.ones(stack.shape[:2], bool)
    for layer in range(stack.shape[-1]):
        labels = stack[..., layer]
        interior &= ndimage.maximum_filter(labels, 3) == ndimage.minimum_filter(labels, 3)
    assert interior.mean() > 0.5
    agree = np.all(np.abs(image - stack) < 1e-3, axis=-1)
    return float(agree[interior].mean())


def assert_valid_subset(original: np.ndarray, augmented: np.ndarray) -> None:
    """Every id of each output slice is an id of the same input slice; ids are integers."""
    assert augmented.dtype == np.int32
    for layer in range(original.shape[-1]):
        assert set(np.unique(augmented[..., layer])) <= set(np.unique(original[..., layer]))


# ------------------------------------------------------------------ warps vs NumPy reference
def test_warp_bilinear_matches_scipy():
    rng = np.random.default_rng(0)
    image = rng.random((20, 25, 3)).astype(np.float32)
    rows = rng.uniform(-3, 23, (15, 11)).astype(np.float32)
    cols = rng.uniform(-3, 28, (15, 11)).astype(np.float32)
    got = warp_bilinear(tf.constant(image), rows, cols).numpy()
    ref = np.stack([ndimage.map_coordinates(image[..., c], [rows, cols], order=1,
                                            mode="grid-constant", cval=0.0) for c in range(3)], -1)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_warp_nearest_matches_scipy_and_keeps_ids():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 50, (20, 25, 2)).astype(np.int32)
    rows = rng.uniform(-3, 23, (15, 11)).astype(np.float32)
    cols = rng.uniform(-3, 28, (15, 11)).astype(np.float32)
    got = warp_nearest(tf.constant(labels), rows, cols).numpy()
    ref = np.stack([ndimage.map_coordinates(labels[..., c], [rows, cols], order=0,
                                            mode="grid-constant", cval=0) for c in range(2)], -1)
    np.testing.assert_array_equal(got, ref)


def test_warp_identity_is_exact():
    image = np.random.default_rng(2).random((7, 9, 1)).astype(np.float32)
    rows, cols = np.mgrid[:7, :9].astype(np.float32)
    np.testing.assert_array_equal(warp_bilinear(tf.constant(image), rows, cols).numpy(), image)


# ------------------------------------------------------------------ each augmentation alone
def test_flips_are_exact_and_all_four_occur():
    stack = disks_stack()
    seen = set()
    for seed in range(12):
        image, out = run(only(flip=True), stack, seed=(seed, 7))
        np.testing.assert_array_equal(image, out.astype(np.float32))
        matches = [k for k, (a, b) in enumerate([(0, 0), (1, 0), (0, 1), (1, 1)])
                   if np.array_equal(out, stack[::(-1 if a else 1), ::(-1 if b else 1)])]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == {0, 1, 2, 3}


def test_rotation_is_a_rotation_about_the_centre_and_stays_aligned():
    stack = disks_stack()
    config = only(rotate=True)
    rows, cols = source_coordinates(SIZE, SIZE, config, tf.constant([3, 4]))
    centre = (SIZE - 1) / 2
    yy, xx = np.mgrid[:SIZE, :SIZE]
    np.testing.assert_allclose((rows.numpy() - centre) ** 2 + (cols.numpy() - centre) ** 2,
                               (yy - centre) ** 2 + (xx - centre) ** 2, rtol=1e-4, atol=1e-2)
    for seed in range(3):
        image, out = run(config, stack, seed=(seed, 11))
        assert interior_agreement(image, out) >= 0.99
        assert_valid_subset(stack, out)
        assert np.count_nonzero(out) > 0.5 * np.count_nonzero(stack)


def test_elastic_field_strength_smoothness_and_alignment():
    stack = disks_stack()
    config = only(elastic_probability=1.0, elastic_strength=4.0, elastic_smoothness=8.0)
    rows, cols = source_coordinates(SIZE, SIZE, config, tf.constant([5, 6]))
    yy, xx = np.mgrid[:SIZE, :SIZE]
    d_rows, d_cols = yy - rows.numpy(), xx - cols.numpy()
    lengths = np.hypot(d_rows, d_cols)
    assert lengths.mean() == pytest.approx(4.0, rel=1e-3)
    # smooth: neighbouring displacements differ by far less than the displacement itself
    assert np.abs(np.diff(d_rows, axis=0)).mean() < 0.25 * 4.0
    assert np.abs(np.diff(d_cols, axis=1)).mean() < 0.25 * 4.0
    for seed in range(3):
        image, out = run(config, stack, seed=(seed, 13))
        assert interior_agreement(image, out) >= 0.99
        assert_valid_subset(stack, out)
        assert not np.array_equal(out, stack)


def test_zoom_is_a_magnification_about_the_centre_log_uniform_in_its_range():
    config = only(zoom_probability=1.0, zoom_range=2.0)
    centre = (SIZE - 1) / 2
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float64)
    factors = []
    for seed in range(40):
        rows, cols = source_coordinates(SIZE, SIZE, config, tf.constant([seed, 3]))
        rows, cols = rows.numpy(), cols.numpy()
        # out(p) = in(c + (p - c) / f): one factor for both axes, the centre stays
        factor = (yy[-1, 0] - centre) / (rows[-1, 0] - centre)
        np.testing.assert_allclose(rows, centre + (yy - centre) / factor, atol=1e-3)
        np.testing.assert_allclose(cols, centre + (xx - centre) / factor, atol=1e-3)
        factors.append(factor)
    factors = np.array(factors)
    assert factors.min() >= 0.5 - 1e-4 and factors.max() <= 2.0 + 1e-4
    assert 0.3 < np.mean(factors < 1.0) < 0.7  # log-uniform on [1/2, 2]: median 1
    # a factor of 2 by hand: output pixel 0 reads the input at c + (0 - c) / 2
    assert np.isclose(centre + (0 - centre) / 2.0, centre / 2.0)


def test_zoom_keeps_labels_aligned_and_valid_and_happens_with_its_probability():
    stack = disks_stack()
    config = only(zoom_probability=1.0, zoom_range=1.5)
    for seed in range(3):
        image, out = run(config, stack, seed=(seed, 17))
        assert interior_agreement(image, out) >= 0.99
        assert_valid_subset(stack, out)
        assert not np.array_equal(out, stack)
    half = only(zoom_probability=0.5, zoom_range=1.5)
    unchanged = [np.array_equal(run(half, stack, seed=(seed, 5))[1], stack) for seed in range(40)]
    assert 0.25 < np.mean(unchanged) < 0.75


def test_zoom_leaves_the_other_draws_of_a_seed_as_they_were():
    # rotation and flips are linear about the centre: with the zoom on, every source position
    # is the one without it, moved towards the centre by the zoom's factor
    base = Config(gamma_probability=0.0, elastic_probability=0.0).validate()
    zoomed = base.replace(zoom_probability=1.0, zoom_range=1.5).validate()
    centre = (SIZE - 1) / 2
    for seed in range(5):
        rows, cols = (t.numpy() for t in source_coordinates(SIZE, SIZE, base,
                                                            tf.constant([seed, 8])))
        z_rows, z_cols = (t.numpy() for t in source_coordinates(SIZE, SIZE, zoomed,
                                                                tf.constant([seed, 8])))
        factor = np.hypot(rows[0, 0] - centre, cols[0, 0] - centre) / np.hypot(
            z_rows[0, 0] - centre, z_cols[0, 0] - centre)
        assert 1 / 1.5 - 1e-4 <= factor <= 1.5 + 1e-4
        np.testing.assert_allclose(z_rows, centre + (rows - centre) / factor, atol=1e-3)
        np.testing.assert_allclose(z_cols, centre + (cols - centre) / factor, atol=1e-3)


def test_zoom_settings_are_checked():
    from layernet.config import ConfigError
    for changes in (dict(zoom_probability=1.5), dict(zoom_probability=-0.1),
                    dict(zoom_range=0.8), dict(zoom_range=5.0),
                    dict(zoom_probability=0.5, zoom_range=1.0)):
        with pytest.raises(ConfigError, match="zoom"):
            Config(**changes).validate()


def test_gamma_is_log_uniform_keeps_range_and_leaves_labels():
    stack = disks_stack(48, 4)
    config = only(gamma_probability=1.0, gamma_low=0.5, gamma_high=2.0)
    image = np.zeros((48, 48, 1), np.float32) + 1.0
    image[:, 16:32] = 2.0
    image[:, 32:] = 5.0  # rescaled values 0, 0.25, 1
    gammas = []
    for seed in range(60):
        out_image, out_stack = run(config, stack, seed=(seed, 0), image=image)
        np.testing.assert_array_equal(out_stack, stack)
        assert out_image.min() == pytest.approx(1.0) and out_image.max() == pytest.approx(5.0)
        middle = (out_image[0, 20, 0] - 1.0) / 4.0
        gammas.append(math.log(middle) / math.log(0.25))
    gammas = np.array(gammas)
    assert gammas.min() >= 0.5 - 1e-4 and gammas.max() <= 2.0 + 1e-4
    assert 0.3 < np.mean(gammas < 1.0) < 0.7  # log-uniform on [1/2, 2]: median 1


def test_adjust_gamma_hand_computed_and_constant_channel():
    image = tf.constant([[[0.0, 3.0]], [[0.5, 3.0]], [[1.0, 3.0]]])  # (3, 1, 2)
    out = adjust_gamma(image, tf.constant(2.0)).numpy()
    np.testing.assert_allclose(out[:, 0, 0], [0.0, 0.25, 1.0])
    np.testing.assert_array_equal(out[:, 0, 1], [3.0, 3.0, 3.0])


# ------------------------------------------------------------------ everything together
def test_full_augmentation_aligned_valid_and_reproducible():
    stack = disks_stack()
    config = Config(gamma_probability=0.0, elastic_probability=1.0).validate()
    image_a, stack_a = run(config, stack, seed=(9, 9))
    image_b, stack_b = run(config, stack, seed=(9, 9))
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(stack_a, stack_b)
    image_c, stack_c = run(config, stack, seed=(9, 10))
    assert not np.array_equal(stack_a, stack_c)
    assert interior_agreement(image_a, stack_a) >= 0.99
    assert_valid_subset(stack, stack_a)


def test_augment_inside_tf_function_matches_eager():
    stack = disks_stack()
    config = Config().validate()
    image = stack.astype(np.float32)
    graph = tf.function(lambda i, s, seed: augment(i, s, config, seed))
    got = graph(tf.constant(image), tf.constant(stack), tf.constant([4, 2]))
    want = run(config, stack, seed=(4, 2), image=image)
    # graph optimisations may reorder float operations: equal up to rounding
    np.testing.assert_allclose(got[0].numpy(), want[0], atol=1e-3)
    assert np.mean(got[1].numpy() != want[1]) < 1e-3


# ------------------------------------------------------------------ crops
def test_random_crop_is_a_window_and_reproducible():
    image = np.arange(20 * 30, dtype=np.float32).reshape(20, 30, 1)
    stack = np.arange(20 * 30, dtype=np.int32).reshape(20, 30, 1) + 1
    out_image, out_stack = random_crop(tf.constant(image), tf.constant(stack), 8,
                                       tf.constant([1, 1]))
    assert out_image.shape == (8, 8, 1) and out_stack.shape == (8, 8, 1)
    top, left = divmod(int(out_image.numpy()[0, 0, 0]), 30)
    np.testing.assert_array_equal(out_image.numpy(), image[top:top + 8, left:left + 8])
    np.testing.assert_array_equal(out_stack.numpy(), stack[top:top + 8, left:left + 8])
    again = random_crop(tf.constant(image), tf.constant(stack), 8, tf.constant([1, 1]))
    np.testing.assert_array_equal(again[0].numpy(), out_image.numpy())
    corners = {tuple(np.asarray(random_crop(tf.constant(image), tf.constant(stack), 8,
                                            tf.constant([s, 0]))[0])[0, 0]) for s in range(10)}
    assert len(corners) > 1


def test_random_crop_pads_small_images_with_zeros():
    image = np.ones((5, 12, 2), np.float32)
    stack = np.full((5, 12, 1), 3, np.int32)
    out_image, out_stack = random_crop(tf.constant(image), tf.constant(stack), 8,
                                       tf.constant([0, 3]))
    assert out_image.shape == (8, 8, 2)
    assert np.all(out_image.numpy()[5:] == 0) and np.all(out_stack.numpy()[5:] == 0)
    assert np.all(out_stack.numpy()[:5] == 3)


def test_center_crop():
    tensor = tf.reshape(tf.range(36), (6, 6, 1))
    np.testing.assert_array_equal(center_crop(tensor, 2).numpy()[..., 0], [[14, 15], [20, 21]])
