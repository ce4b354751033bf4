"""Tests of layernet.pipeline: prepared samples and the tf.data batches built from them."""

from __future__ import annotations

import os

import numpy as np
import pytest
from scipy import ndimage

tf = pytest.importorskip("tensorflow")

from datasets import Sample  # noqa: E402
from layernet.config import Config  # noqa: E402
from layernet.instances import stack_from_masks, validate_stack  # noqa: E402
from layernet.normalize import percentile_normalize  # noqa: E402
from layernet.pipeline import (OBJECT_PAD, PipelineError, make_dataset,  # noqa: E402
                               patch_margin, prepare_samples)
from layernet.targets import adjacency_matrix  # noqa: E402


def disk_sample(index: int, height: int, width: int, count: int) -> Sample:
    """Overlapping random disks with ids 10, 20, ..., image = 5 + 10 * foreground."""
    rng = np.random.default_rng(index)
    yy, xx = np.mgrid[:height, :width]
    masks = []
    for _ in range(count):
        cy, cx = rng.uniform(8, height - 8), rng.uniform(8, width - 8)
        radius = rng.uniform(5, 10)
        masks.append((yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2)
    stack = 10 * stack_from_masks(masks)  # sparse ids 10, 20, ...: relabelling is exercised
    image = (5.0 + 10.0 * (stack > 0).any(axis=0))[..., None].astype(np.float32)
    return Sample(image=image, stack=stack, name=f"disks{index}")


SAMPLES = [disk_sample(0, 48, 64, 6), disk_sample(1, 40, 40, 3), disk_sample(2, 90, 70, 24),
           disk_sample(3, 32, 56, 9)]


def config(**changes) -> Config:
    values = dict(size="S", patch_size=32, batch_size=3, seed=5, elastic_strength=3.0,
                  elastic_smoothness=6.0)
    values.update(changes)
    return Config(**values).validate()


def batches(dataset, count: int) -> list[dict[str, np.ndarray]]:
    return [{key: value.numpy() for key, value in batch.items()}
            for batch in dataset.take(count)]


# ------------------------------------------------------------------ prepare_samples
def test_prepare_samples_normalises_relabels_and_computes_adjacency():
    cfg = config()
    prepared = prepare_samples(SAMPLES, cfg)
    assert [p.name for p in prepared] == [s.name for s in SAMPLES]
    for raw, prep in zip(SAMPLES, prepared):
        np.testing.assert_array_equal(prep.image, percentile_normalize(raw.image, 1.0, 99.8))
        assert prep.image.dtype == np.float32 and prep.stack.dtype == np.int32
        ids = np.unique(prep.stack)[1:]
        np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))
        # relabelling keeps the objects: same masks, same order
        np.testing.assert_array_equal(prep.stack > 0, raw.stack > 0)
        assert prep.num_objects == ids.size
        np.testing.assert_array_equal(prep.adjacency,
                                      adjacency_matrix(prep.stack, cfg.adjacency_distance))
    # the image is 5 + 10 * foreground, so normalised it is the foreground exactly
    np.testing.assert_allclose(prepared[0].image[..., 0], (SAMPLES[0].stack > 0).any(0))


def test_prepare_samples_cache(tmp_path):
    cfg = config()
    first = prepare_samples(SAMPLES[:2], cfg, cache_dir=str(tmp_path))
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 2 and all(f.startswith("adjacency-") for f in files)
    again = prepare_samples(SAMPLES[:2], cfg, cache_dir=str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == files
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.adjacency, b.adjacency)
    prepare_samples(SAMPLES[:1], cfg.replace(adjacency_distance=3.0), cache_dir=str(tmp_path))
    assert len(os.listdir(tmp_path)) == 3  # other distance, other key


def test_prepare_samples_errors_name_the_sample():
    bad_channels = Sample(np.zeros((8, 8, 2), np.float32), np.zeros((1, 8, 8), np.int32), "two")
    with pytest.raises(PipelineError, match="'two'.*channels"):
        prepare_samples([bad_channels], config())
    bad_size = Sample(np.zeros((8, 8, 1), np.float32), np.zeros((1, 8, 9), np.int32), "size")
    with pytest.raises(PipelineError, match="'size'.*does not match"):
        prepare_samples([bad_size], config())
    nan = Sample(np.full((8, 8, 1), np.nan, np.float32), np.zeros((1, 8, 8), np.int32), "nan")
    with pytest.raises(PipelineError, match="'nan'.*NaN"):
        prepare_samples([nan], config())


# ------------------------------------------------------------------ evaluation dataset
def test_eval_dataset_full_images_padded_in_order_matching_targets():
    cfg = config()
    prepared = prepare_samples(SAMPLES, cfg)
    layer_of = [np.arange(p.num_objects + 1, dtype=np.int32) % cfg.layers for p in prepared]
    got = batches(make_dataset(prepared, cfg, training=False, layer_of=layer_of), 10)
    assert len(got) == len(prepared)
    for batch, prep, layers in zip(got, prepared, layer_of):
        height, width = prep.image.shape[:2]
        assert batch["image"].shape[0] == 1
        assert batch["image"].shape[1] % cfg.stride == 0 and batch["image"].shape[2] % cfg.stride == 0
        assert batch["image"].shape[1] - height < cfg.stride
        np.testing.assert_array_equal(batch["image"][0, :height, :width], prep.image)
        assert np.all(batch["image"][0, height:] == 0) and np.all(batch["image"][0, :, width:] == 0)
        np.testing.assert_array_equal(batch["stack"][0, :height, :width],
                                      np.moveaxis(prep.stack, 0, -1))
        segments = prep.num_objects + 1
        padded = batch["adjacency"].shape[-1]
        assert padded % OBJECT_PAD == 0 and padded >= segments
        assert batch["adjacency"].dtype == np.float32
        np.testing.assert_array_equal(batch["adjacency"][0, :segments, :segments],
                                      adjacency_matrix(prep.stack, cfg.adjacency_distance))
        assert batch["adjacency"][0, segments:].sum() == 0
        assert batch["adjacency"][0, 0].sum() == 0 and batch["adjacency"][0, :, 0].sum() == 0
        assert batch["layer_of"].dtype == np.int32
        assert batch["layer_of"][0, 0] == -1
        np.testing.assert_array_equal(batch["layer_of"][0, 1:segments], layers[1:])
        assert np.all(batch["layer_of"][0, segments:] == -1)


def test_layer_of_is_checked():
    cfg = config()
    prepared = prepare_samples(SAMPLES[:2], cfg)
    with pytest.raises(PipelineError, match="2 samples"):
        make_dataset(prepared, cfg, training=True, layer_of=[np.zeros(3, np.int32)])
    wrong = [np.zeros(p.num_objects, np.int32) for p in prepared]
    with pytest.raises(PipelineError, match="'disks0'.*shape"):
        make_dataset(prepared, cfg, training=True, layer_of=wrong)
    with pytest.raises(PipelineError, match="no samples"):
        make_dataset([], cfg, training=True)


# ------------------------------------------------------------------ training dataset
def check_training_batch(batch: dict[str, np.ndarray], cfg: Config,
                         layer_of: list[np.ndarray], object_counts: list[int]) -> None:
    size = cfg.patch_size
    assert batch["image"].shape == (cfg.batch_size, size, size, cfg.channels)
    assert batch["image"].dtype == np.float32
    assert batch["stack"].dtype == np.int32 and batch["stack"].shape[:3] == (cfg.batch_size,
                                                                             size, size)
    segments = batch["adjacency"].shape[-1]
    assert segments % OBJECT_PAD == 0
    assert batch["adjacency"].shape == (cfg.batch_size, segments, segments)
    assert batch["layer_of"].shape == (cfg.batch_size, segments)
    for b in range(cfg.batch_size):
        # layer_of identifies the source sample (sample i has layer i for every object)
        source = int(batch["layer_of"][b, 1])
        count = object_counts[source]
        np.testing.assert_array_equal(batch["layer_of"][b, 1:count + 1], layer_of[source][1:])
        assert np.all(batch["layer_of"][b, count + 1:] == -1) and batch["layer_of"][b, 0] == -1
        stack = batch["stack"][b]
        assert stack.max() <= count
        validate_stack(np.moveaxis(stack, -1, 0))  # every id in exactly one slice
        # the image is the foreground indicator: aligned with the labels away from edges
        foreground = (stack > 0).any(-1)
        square = np.ones((3, 3), bool)
        interior = (ndimage.binary_erosion(foreground, square)
                    | ~ndimage.binary_dilation(foreground, square))
        agree = np.abs(batch["image"][b, ..., 0] - foreground) < 1e-3
        assert agree[interior].mean() >= 0.99


def test_training_batches_shapes_alignment_and_layer_of():
    cfg = config()
    prepared = prepare_samples(SAMPLES, cfg)
    layer_of = [np.r_[-1, np.full(p.num_objects, i)].astype(np.int32)
                for i, p in enumerate(prepared)]
    counts = [p.num_objects for p in prepared]
    got = batches(make_dataset(prepared, cfg, training=True, layer_of=layer_of), 6)
    sources = set()
    for batch in got:
        check_training_batch(batch, cfg, layer_of, counts)
        sources.update(int(s) for s in batch["layer_of"][:, 1])
    assert sources == set(range(len(prepared)))  # 18 elements = 4.5 epochs: all samples seen
    assert max(batch["adjacency"].shape[-1] for batch in got) == 32  # 25 segments -> 32


def test_training_without_layer_of_is_all_unknown():
    cfg = config(rotate=False, elastic_probability=0.0)
    prepared = prepare_samples(SAMPLES, cfg)
    batch = batches(make_dataset(prepared, cfg, training=True), 1)[0]
    assert np.all(batch["layer_of"] == -1)


def test_training_stream_is_deterministic_per_seed_and_epochs_are_permutations():
    cfg = config(batch_size=4)
    prepared = prepare_samples(SAMPLES, cfg)
    layer_of = [np.r_[-1, np.full(p.num_objects, i)].astype(np.int32)
                for i, p in enumerate(prepared)]
    dataset = make_dataset(prepared, cfg, training=True, layer_of=layer_of)
    first = batches(dataset, 3)
    second = batches(dataset, 3)  # a new iterator of the same dataset
    rebuilt = batches(make_dataset(prepared, cfg, training=True, layer_of=layer_of), 3)
    for a, b, c in zip(first, second, rebuilt):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
            np.testing.assert_array_equal(a[key], c[key])
    # batch size 4 = number of samples: every batch is one epoch, a permutation
    orders = [tuple(int(s) for s in batch["layer_of"][:, 1]) for batch in first]
    assert all(sorted(order) == [0, 1, 2, 3] for order in orders)
    other = batches(make_dataset(prepared, cfg.replace(seed=6), training=True,
                                 layer_of=layer_of), 3)
    assert any(not np.array_equal(a["stack"], b["stack"]) for a, b in zip(first, other))


def test_patch_margin_covers_rotation_and_elastic():
    assert patch_margin(config(rotate=False, elastic_probability=0.0)) == 0
    rotated = patch_margin(config(elastic_probability=0.0))
    # a rotated patch reads up to half its diagonal from the centre
    assert 32 / 2 + rotated >= 32 * np.sqrt(2) / 2
    assert patch_margin(config()) >= rotated + 3 * 3.0


def test_patch_margin_covers_the_zoom_out():
    rotated_elastic = config()
    zoomed = config(zoom_probability=0.5, zoom_range=1.5)
    reach = 32 / 2 + patch_margin(rotated_elastic)
    # zoomed out by 1 / 1.5, a patch reads 1.5 times as far from its centre
    assert 32 / 2 + patch_margin(zoomed) >= 1.5 * (reach - 1)
    assert patch_margin(config(rotate=False, elastic_probability=0.0, zoom_probability=1.0,
                               zoom_range=2.0)) == 32 // 2 + 1


def test_zoomed_out_patches_read_only_from_inside_their_margin():
    # the pipeline augments a patch with its margin, then keeps the centre: for a window that
    # lies inside one object, nothing from outside the window (background) may reach the
    # centre, whatever the rotation and zoom draw
    from layernet.augment import augment, center_crop
    cfg = config(patch_size=24, elastic_probability=0.0, gamma_probability=0.0,
                 zoom_probability=1.0, zoom_range=1.5)
    window = cfg.patch_size + 2 * patch_margin(cfg)
    image = tf.ones((window, window, 1), tf.float32)
    stack = tf.ones((window, window, 1), tf.int32)
    for seed in range(20):
        _, out = augment(image, stack, cfg, tf.constant([seed, 1]))
        assert np.all(center_crop(out, cfg.patch_size).numpy() == 1)
    # without the zoom's share of the margin, some zoomed-out draws do read background
    short = cfg.patch_size + 2 * patch_margin(cfg.replace(zoom_probability=0.0))
    leaks = 0
    for seed in range(20):
        _, out = augment(image[:short, :short], stack[:short, :short], cfg,
                         tf.constant([seed, 1]))
        leaks += int(np.any(center_crop(out, cfg.patch_size).numpy() == 0))
    assert leaks > 0


def test_synthetic_dataset_through_the_pipeline():
    synthetic = pytest.importorskip("datasets.synthetic")
    samples = synthetic.load(split="train", seed=0, count=4, size=64)
    cfg = config(patch_size=48, batch_size=2, size="M")
    prepared = prepare_samples(samples, cfg)
    batch = batches(make_dataset(prepared, cfg, training=True), 1)[0]
    assert batch["image"].shape == (2, 48, 48, 1)
    for b in range(2):
        validate_stack(np.moveaxis(batch["stack"][b], -1, 0))
        assert batch["stack"][b].max() < batch["adjacency"].shape[-1]
