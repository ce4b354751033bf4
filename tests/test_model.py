"""Tests of layernet.model and layernet.normalize."""

from __future__ import annotations

import numpy as np
import pytest

from layernet.config import Config
from layernet.normalize import percentile_normalize


# --------------------------------------------------------------------------- normalize
def test_percentile_normalize_matches_reference_per_channel():
    rng = np.random.default_rng(0)
    image = np.stack([rng.normal(100, 20, (17, 23)), rng.uniform(0, 5, (17, 23))], axis=-1)
    out = percentile_normalize(image, 2.0, 98.0)
    assert out.dtype == np.float32 and out.shape == image.shape
    for c in range(2):
        lo, hi = np.percentile(image[..., c], 2.0), np.percentile(image[..., c], 98.0)
        np.testing.assert_allclose(out[..., c], (image[..., c] - lo) / (hi - lo), rtol=1e-5,
                                   atol=1e-5)


def test_percentile_normalize_hand_computed():
    image = np.arange(5, dtype=np.uint16).reshape(5, 1, 1) * 10  # values 0,10,20,30,40
    out = percentile_normalize(image, 0.0, 100.0)
    np.testing.assert_allclose(out[:, 0, 0], [0.0, 0.25, 0.5, 0.75, 1.0])
    # 25th percentile = 10, 75th = 30 (linear interpolation)
    out = percentile_normalize(image, 25.0, 75.0)
    np.testing.assert_allclose(out[:, 0, 0], [-0.5, 0.0, 0.5, 1.0, 1.5])


def test_percentile_normalize_constant_channel_is_zero():
    image = np.zeros((8, 8, 2), np.float32)
    image[..., 0] = 7.0
    image[..., 1] = np.arange(64).reshape(8, 8)
    out = percentile_normalize(image)
    assert np.all(np.isfinite(out))
    assert np.all(out[..., 0] == 0.0)
    assert out[..., 1].max() > 0.9


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_percentile_normalize_rejects_non_finite(bad):
    image = np.ones((4, 4, 1), np.float32)
    image[1, 2, 0] = bad
    with pytest.raises(ValueError, match="image contains NaN or infinite values"):
        percentile_normalize(image)


def test_percentile_normalize_rejects_bad_shape_and_percentiles():
    with pytest.raises(ValueError, match="H, W, C"):
        percentile_normalize(np.ones((4, 4)))
    with pytest.raises(ValueError, match="percentiles"):
        percentile_normalize(np.ones((4, 4, 1)), 50.0, 10.0)


# --------------------------------------------------------------------------- model
keras = pytest.importorskip("keras")
from layernet.model import (ModelWeightsError, build_model, load_model_weights,  # noqa: E402
                            pad_to_stride)


def tiny_config(size: str = "S", **changes) -> Config:
    return Config(size=size, filters=8, head_filters=8, **changes).validate()


@pytest.mark.parametrize("size,depth", [("S", 3), ("M", 4), ("L", 5)])
def test_outputs_names_shapes_dtypes(size, depth):
    config = tiny_config(size, layers=5, channels=2)
    model = build_model(config)
    assert model.input.shape == (None, None, None, 2)
    assert model.layers[0].name == "image"
    x = np.random.default_rng(1).random((2, 64, 64, 2)).astype(np.float32)
    out = model(x, training=False)
    assert set(out) == {"foreground", "layering"}
    assert tuple(out["foreground"].shape) == (2, 64, 64, 1)
    assert tuple(out["layering"].shape) == (2, 64, 64, 5)
    for value in out.values():
        value = np.asarray(value)
        assert value.dtype == np.float32
        assert np.all((value >= 0) & (value <= 1))
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    pools = [n for n in names if n.endswith("_pool")]
    assert len(pools) == depth
    # widest level: bottleneck = filters * 2**depth
    assert model.get_layer("bottleneck_conv2").kernel.shape[-1] == 8 * 2 ** depth
    assert model.get_layer("layer_head_conv2").kernel.shape[-1] == 8
    assert model.get_layer("foreground").kernel.shape == (1, 1, 8, 1)


def test_every_layer_name_is_explicit():
    model = build_model(tiny_config("M"))
    prefixes = ("image", "enc", "bottleneck", "dec", "fg_head", "layer_head", "foreground",
                "layering")
    for layer in model.layers:
        assert layer.name.startswith(prefixes), layer.name
    # conv -> ReLU -> BN order: every conv (except the outputs) has a ReLU and feeds a BN
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D) and layer.name not in ("foreground",
                                                                         "layering"):
            assert layer.activation.__name__ == "relu"
            assert layer.name.replace("conv", "bn") in {l.name for l in model.layers}


def test_h5_save_load_weights_round_trip(tmp_path):
    config = tiny_config("S")
    model = build_model(config)
    x = np.random.default_rng(2).random((1, 32, 48, 1)).astype(np.float32)
    model(x, training=True)  # move BN statistics away from their initial values
    expected = model(x, training=False)
    path = tmp_path / "best.h5"
    model.save(path)
    fresh = build_model(config)
    load_model_weights(fresh, path)
    got = fresh(x, training=False)
    for name in ("foreground", "layering"):
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(expected[name]))
    # Keras 3 weights files load too
    model.save_weights(tmp_path / "best.weights.h5")
    again = load_model_weights(build_model(config), tmp_path / "best.weights.h5")
    np.testing.assert_array_equal(np.asarray(again(x, training=False)["foreground"]),
                                  np.asarray(expected["foreground"]))
    # plain Keras also reads it
    other = build_model(config)
    other.load_weights(path)
    np.testing.assert_array_equal(np.asarray(other(x, training=False)["layering"]),
                                  np.asarray(expected["layering"]))


def test_wrong_weights_give_one_line_error(tmp_path):
    path = tmp_path / "best.h5"
    build_model(tiny_config("S")).save(path)
    with pytest.raises(ModelWeightsError, match=r"best\.h5: cannot load weights.*layers") as info:
        load_model_weights(build_model(tiny_config("M")), path)
    assert "\n" not in str(info.value)
    with pytest.raises(ModelWeightsError, match=r"best\.h5: cannot load weights") as info:
        load_model_weights(build_model(tiny_config("S", layers=4)), path)
    assert "\n" not in str(info.value)
    keras3 = tmp_path / "small.weights.h5"
    build_model(tiny_config("S")).save_weights(keras3)
    with pytest.raises(ModelWeightsError, match=r"small\.weights\.h5: cannot load weights"):
        load_model_weights(build_model(tiny_config("M")), keras3)
    junk = tmp_path / "junk.h5"
    junk.write_text("not a model")
    with pytest.raises(ModelWeightsError, match=r"junk\.h5: not an HDF5"):
        load_model_weights(build_model(tiny_config("S")), junk)
    with pytest.raises(ModelWeightsError, match="not found"):
        load_model_weights(build_model(tiny_config("S")), tmp_path / "missing.h5")


@pytest.mark.parametrize("precision,compute", [("mixed_bfloat16", "bfloat16"),
                                               ("mixed_float16", "float16"),
                                               ("float32", "float32")])
def test_precision_from_config_outputs_float32(precision, compute):
    previous = keras.config.dtype_policy().name
    model = build_model(tiny_config("S", precision=precision))
    assert keras.config.dtype_policy().name == previous  # the global policy is left alone
    assert model.get_layer("enc1_conv1").compute_dtype == compute
    assert model.get_layer("enc1_conv1").kernel.dtype == "float32"
    assert model.get_layer("foreground").compute_dtype == "float32"
    out = model(np.zeros((1, 32, 32, 1), np.float32), training=False)
    assert np.asarray(out["foreground"]).dtype == np.float32
    assert np.asarray(out["layering"]).dtype == np.float32


def test_pad_to_stride():
    image = np.ones((30, 33, 2), np.float32)
    padded, pads = pad_to_stride(image, 16)
    assert padded.shape == (32, 48, 2) and pads == (2, 15)
    np.testing.assert_array_equal(padded[:30, :33], image)
    assert padded[30:].sum() == 0 and padded[:, 33:].sum() == 0
    same, pads = pad_to_stride(np.ones((32, 16)), 16)
    assert same.shape == (32, 16) and pads == (0, 0)
    with pytest.raises(ValueError, match="stride"):
        pad_to_stride(image, 0)
