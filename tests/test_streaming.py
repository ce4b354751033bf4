"""Streaming training data: lazy dataset sources, the on-disk cache of prepared samples, the
streamed tf.data path (same batches as in memory) and streamed training end to end."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from bench.stream_memory import write_folder_dataset  # noqa: E402
from datasets import Sample, load_dataset, load_source  # noqa: E402
from layernet import runfolder, streaming  # noqa: E402
from layernet.baselines import attach_semantic_targets  # noqa: E402
from layernet.config import Config  # noqa: E402
from layernet.io import ImageReadError, read_label_image, write_image_atomic  # noqa: E402
from layernet.pipeline import (CachedSamples, PipelineError, load_prepared,  # noqa: E402
                               make_dataset, prepare_samples, save_prepared)
from tests.test_pipeline import SAMPLES, batches, config, disk_sample  # noqa: E402


def assert_same_prepared(expected, got) -> None:
    assert got.name == expected.name
    for key in ("image", "stack", "adjacency"):
        want, have = getattr(expected, key), getattr(got, key)
        assert have.dtype == want.dtype and have.shape == want.shape, key
        np.testing.assert_array_equal(have, want, err_msg=key)


def assert_same_batches(expected: list[dict], got: list[dict]) -> None:
    assert len(got) == len(expected)
    for want, have in zip(expected, got):
        assert sorted(have) == sorted(want)
        for key in want:
            assert have[key].dtype == want[key].dtype, key
            np.testing.assert_array_equal(have[key], want[key], err_msg=key)


def cache_samples(samples, cfg, folder, semantic: bool = False) -> CachedSamples:
    paths = [os.path.join(folder, f"{index}.npz") for index in range(len(samples))]
    counts = [save_prepared(path, sample, cfg, semantic=semantic)
              for path, sample in zip(paths, samples)]
    return CachedSamples(paths, [s.name for s in samples], counts, with_semantic=semantic)


# ------------------------------------------------------------------ lazy sources
def test_load_source_lists_without_decoding_and_matches_load_dataset(tmp_path):
    root = str(tmp_path / "data")
    write_folder_dataset(root, 6, 64, disks=3)
    for name, data_dir, options in (("folder", root, {}),
                                    ("synthetic", None, {"size": 64, "count": 6})):
        for split in ("train", "val", "all"):
            source = load_source(name, data_dir, split, 3, **options)
            loaded = load_dataset(name, data_dir, split, 3, **options)
            assert source.names == [sample.name for sample in loaded]
            for index, sample in enumerate(loaded):
                again = source.load(index)
                np.testing.assert_array_equal(again.image, sample.image)
                np.testing.assert_array_equal(again.stack, sample.stack)
    source = load_source("folder", root, "all", 0)
    assert source.files[0] == (os.path.join(root, "images", "img00000.png"),
                               os.path.join(root, "masks", "img00000.png"))
    # listing reads no image: a broken file only fails when its sample is decoded
    broken = os.path.join(root, "images", source.names[2] + ".png")
    with open(broken, "wb") as handle:
        handle.write(b"not a png")
    source = load_source("folder", root, "all", 0)
    assert len(source) == 6
    source.load(0)
    with pytest.raises(ImageReadError, match="img00002.png"):
        source.load(2)
    with pytest.raises(IndexError):
        source.load(6)


# ------------------------------------------------------------------ cache files
def odd_samples() -> tuple[list[Sample], Sample]:
    """Images stored as uint8, uint16, float (fractional, negative, > 65535) and 2 channels."""
    base = disk_sample(7, 40, 48, 5)
    rng = np.random.default_rng(0)
    shape = base.image.shape[:2]
    images = {"uint16": rng.integers(0, 60000, shape + (1,)).astype(np.float32),
              "fraction": rng.normal(0.3, 2.0, shape + (1,)).astype(np.float32),
              "negative": rng.integers(-50, 50, shape + (1,)).astype(np.float32),
              "large": rng.integers(0, 200000, shape + (1,)).astype(np.float32),
              "float64": rng.normal(size=shape + (1,))}
    samples = [Sample(image, base.stack, name) for name, image in images.items()]
    two = Sample(np.concatenate([base.image, base.image * 3 + 1], axis=-1), base.stack, "two")
    return samples, two


def test_cached_sample_reads_back_exactly_what_prepare_samples_gives(tmp_path):
    cfg = config()
    samples, two_channels = odd_samples()
    for sample in SAMPLES + samples:
        path = str(tmp_path / f"{sample.name}.npz")
        count = save_prepared(path, sample, cfg)
        expected = prepare_samples([sample], cfg)[0]
        assert count == expected.num_objects
        assert_same_prepared(expected, load_prepared(path))
    stored = np.load(str(tmp_path / "disks0.npz"))
    assert stored["image"].dtype == np.uint8 and stored["stack"].dtype == np.uint8
    assert np.load(str(tmp_path / "uint16.npz"))["image"].dtype == np.uint16
    assert np.load(str(tmp_path / "fraction.npz"))["image"].dtype == np.float32
    assert np.load(str(tmp_path / "float64.npz"))["image"].dtype == np.float64
    two_config = config(channels=2)
    save_prepared(str(tmp_path / "two.npz"), two_channels, two_config, semantic=True)
    expected = attach_semantic_targets(prepare_samples([two_channels], two_config),
                                       two_config.replace(method="unet3"))[0]
    got = load_prepared(str(tmp_path / "two.npz"))
    assert_same_prepared(expected, got)
    np.testing.assert_array_equal(got.semantic, expected.semantic)


def test_bad_samples_and_bad_cache_files_are_named(tmp_path):
    colour = np.zeros((8, 8, 3), np.float32)
    colour[..., 1] = np.arange(8)
    bad = Sample(colour, np.zeros((1, 8, 8), np.int32), "rgb")
    with pytest.raises(PipelineError, match="'rgb'.*3 channel.*--channels"):
        save_prepared(str(tmp_path / "rgb.npz"), bad, config())
    assert not os.listdir(tmp_path)  # nothing half-written
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(PipelineError, match="broken.npz.*delete it"):
        load_prepared(str(broken))


# ------------------------------------------------------------------ streamed pipeline
@pytest.mark.parametrize("start", [0, 5])
def test_streamed_batches_equal_in_memory_batches(tmp_path, start):
    cfg = config()
    prepared = prepare_samples(SAMPLES, cfg)
    cached = cache_samples(SAMPLES, cfg, str(tmp_path))
    layer_of = [np.r_[-1, np.arange(p.num_objects) % 3].astype(np.int32) for p in prepared]
    memory = batches(make_dataset(prepared, cfg, training=True, layer_of=layer_of, start=start), 4)
    streamed = batches(make_dataset(cached, cfg, training=True, layer_of=layer_of, start=start),
                       4)
    assert_same_batches(memory, streamed)
    assert_same_batches(batches(make_dataset(prepared, cfg, training=False), 10),
                        batches(make_dataset(cached, cfg, training=False), 10))


def test_streamed_batches_equal_in_memory_with_equal_sizes_and_semantic_maps(tmp_path):
    """Equal image sizes give the in-memory pipeline static shapes; UNet-3 adds class maps."""
    cfg = config(method="unet3", patch_size=48)
    samples = load_dataset("synthetic", None, "train", 0, size=64, count=5, min_area=30)
    prepared = attach_semantic_targets(prepare_samples(samples, cfg), cfg)
    cached = cache_samples(samples, cfg, str(tmp_path), semantic=True)
    assert_same_batches(batches(make_dataset(prepared, cfg, training=True, start=2), 3),
                        batches(make_dataset(cached, cfg, training=True, start=2), 3))
    with pytest.raises(PipelineError, match="layer_of"):
        make_dataset(cached, cfg, training=True, layer_of=[np.zeros(2, np.int32)] * 4)


# ------------------------------------------------------------------ the cache
def cache_files(folder: str) -> dict[str, int]:
    return {name: os.stat(os.path.join(folder, name)).st_mtime_ns
            for name in os.listdir(folder) if name.startswith("sample-")}


def test_cache_is_reused_and_invalidated_by_a_changed_source_file(tmp_path, caplog):
    root = str(tmp_path / "data")
    write_folder_dataset(root, 5, 64, disks=3)
    # one sample with a folder of per-object masks (form b): its files count too
    labels = read_label_image(os.path.join(root, "masks", "img00004.png"))
    os.remove(os.path.join(root, "masks", "img00004.png"))
    os.makedirs(os.path.join(root, "masks", "img00004"))
    for value in range(1, int(labels.max()) + 1):
        write_image_atomic(os.path.join(root, "masks", "img00004", f"{value}.png"),
                           (labels == value).astype(np.uint8) * 255)
    cfg = config()
    cache = str(tmp_path / "cache")
    source = load_source("folder", root, "all", 0)
    with caplog.at_level(logging.INFO, logger="layernet.streaming"):
        first = streaming.prepare_to_cache(source, cfg, cache)
        assert "(5 prepared now, 0 reused" in caplog.text
        before = cache_files(cache)
        caplog.clear()
        again = streaming.prepare_to_cache(load_source("folder", root, "all", 0), cfg, cache)
        assert "(0 prepared now, 5 reused" in caplog.text
    assert again.paths == first.paths and cache_files(cache) == before
    for sample, expected in zip(again, prepare_samples(source.load_all(), cfg)):
        assert_same_prepared(expected, sample)
    # a new image content (later mtime) and one changed mask file of the mask folder
    image = np.full((64, 64), 90, np.uint8)
    write_image_atomic(os.path.join(root, "images", "img00001.png"), image)
    mask = os.path.join(root, "masks", "img00004", "1.png")
    os.utime(mask, ns=(os.stat(mask).st_atime_ns, os.stat(mask).st_mtime_ns + 10 ** 9))
    changed = streaming.prepare_to_cache(load_source("folder", root, "all", 0), cfg, cache)
    renewed = {changed.names[i] for i in range(5) if changed.paths[i] != first.paths[i]}
    assert renewed == {"img00001", "img00004"}
    constant = changed[changed.names.index("img00001")].image
    np.testing.assert_array_equal(constant, np.zeros((64, 64, 1), np.float32))
    assert streaming.prune_cache(cache, changed.paths) == 2
    assert sorted(cache_files(cache)) == sorted(os.path.basename(p) for p in changed.paths)
    # other preparation settings are other entries
    other = streaming.prepare_to_cache(source, cfg.replace(adjacency_distance=3.0), cache)
    assert not set(other.paths) & set(changed.paths)


def test_use_streaming_decides_by_config_and_estimated_size(monkeypatch, caplog):
    sources = [load_source("synthetic", None, split, 0, size=64, count=4) for split in
               ("train", "val")]
    assert streaming.use_streaming(Config(streaming="on"), sources)
    assert not streaming.use_streaming(Config(streaming="off"), sources)
    available = streaming.available_memory()
    assert available is not None and available > 2 ** 20
    with caplog.at_level(logging.INFO, logger="layernet.streaming"):
        assert not streaming.use_streaming(Config(), sources)  # 4 images of 64 x 64
        assert "4 images" in caplog.text and "loading into memory" in caplog.text
        monkeypatch.setattr(streaming, "AUTO_MEMORY_FRACTION", 1e-9)
        assert streaming.use_streaming(Config(), sources)
        assert "streaming from a disk cache" in caplog.text
    sample = sources[0].load(0)
    assert streaming.decoded_bytes(sample) == 4 * (64 * 64 + sample.stack.size)


# ------------------------------------------------------------------ configuration, CLI
def test_config_and_command_line_options(tmp_path):
    from layernet_commands.train import build_config, parse_args

    assert Config().streaming == "auto" and Config().cache_dir is None
    values = Config().to_dict()
    del values["streaming"], values["cache_dir"]  # a config.json written before streaming
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    assert Config.load(str(path)).streaming == "auto"
    with pytest.raises(ValueError, match="streaming"):
        Config(streaming="yes").validate()
    assert build_config(parse_args([])).streaming == "auto"
    assert build_config(parse_args(["--stream"])).streaming == "on"
    assert build_config(parse_args(["--no-stream"])).streaming == "off"
    assert build_config(parse_args(["--stream", "--cache-dir", "c"])).cache_dir == "c"


# ------------------------------------------------------------------ training
TINY = dict(size="S", filters=8, head_filters=8, layers=4, patch_size=32, batch_size=2,
            min_size=30, steps_per_epoch=2, deterministic=True,
            data_options={"size": 64, "count": 6, "kind": "cells", "min_area": 30})


def test_streamed_training_end_to_end_resume_and_same_history_as_in_memory(tmp_path):
    from layernet.training import CACHE_FOLDER, train

    run = tmp_path / "streamed"
    train(Config(epochs=1, streaming="on", **TINY).validate(), str(run), verbose=0,
          load_source=load_source)
    history = runfolder.read_history(str(run / runfolder.HISTORY_FILE))
    assert len(history) == 1 and np.isfinite(history[0]["loss"])
    net, _ = runfolder.load_trained_model(str(run / runfolder.BEST_FILE))
    assert net.count_params() > 0
    cache = str(run / CACHE_FOLDER)
    files = cache_files(cache)
    assert len(files) == 6  # 5 training + 1 validation images
    # resume one more epoch: the cache is reused, not rewritten
    saved = json.loads((run / runfolder.CONFIG_FILE).read_text())
    saved["epochs"] = 2
    (run / runfolder.CONFIG_FILE).write_text(json.dumps(saved))
    train(Config.load(str(run / runfolder.CONFIG_FILE)), str(run), resume=True, verbose=0,
          load_source=load_source)
    assert cache_files(cache) == files
    streamed = runfolder.read_history(str(run / runfolder.HISTORY_FILE))
    assert [row["step"] for row in streamed] == [2, 4]
    # the same run in memory, uninterrupted: the same losses
    memory_run = tmp_path / "memory"
    train(Config(epochs=2, streaming="off", **TINY).validate(), str(memory_run), verbose=0,
          load_source=load_source)
    assert not os.path.exists(memory_run / CACHE_FOLDER)
    in_memory = runfolder.read_history(str(memory_run / runfolder.HISTORY_FILE))
    for name in ("loss", "foreground", "layering", "val_meanAP"):
        assert [row[name] for row in streamed] == [row[name] for row in in_memory], name
