"""Tests of the method interface (:mod:`layernet.methods`): the registry, what the built-in
methods say about themselves, that no other module branches on ``config.method``, that the
streaming cache keys did not change, and that a method registered here (foreground only,
connected components) is trained for a step, predicted and evaluated without any other module
knowing it."""

from __future__ import annotations

import hashlib
import json
import os
import re

import numpy as np
import pytest

from layernet.config import METHODS, Config, ConfigError
from layernet.instances import pack_stack
from layernet.methods import (BUILTIN_METHODS, MERGED_NAME, Head, Method, UnknownMethodError,
                              get_method, method_names, register_method, unregister_method)
from layernet.postprocess import label_components
from tests.conftest import REPO


class ForegroundOnly(Method):
    """A trivial method: one foreground head, its cross-entropy, connected components."""

    name = "test_foreground"

    def heads(self, config: Config) -> tuple[Head, ...]:
        return (Head("foreground", "fg_head", 1, "sigmoid"),)

    def loss_names(self, config: Config, phase: str) -> list[str]:
        return ["loss", "foreground"]

    def losses(self, outputs, batch, config: Config, phase: str) -> dict:
        from layernet.losses import foreground_loss

        loss = foreground_loss(batch["stack"], outputs["foreground"])
        return {"foreground": loss, "loss": loss}

    def maps(self, outputs, config: Config) -> tuple[np.ndarray, np.ndarray]:
        probability = np.asarray(outputs["foreground"], np.float32)
        return probability[..., 0], probability

    def map_channels(self, config: Config) -> int:
        return 1

    def instances(self, foreground: np.ndarray, maps: np.ndarray, config: Config,
                  min_size: int) -> np.ndarray:
        return label_components(foreground > config.tau, min_size, config.connectivity)[None]


@pytest.fixture
def foreground_method():
    method = register_method(ForegroundOnly())
    try:
        yield method
    finally:
        unregister_method(method.name)


# ------------------------------------------------------------------------------------------
# the registry


def test_config_methods_are_the_registry_builtins_and_unknown_names_are_refused():
    assert METHODS == tuple(BUILTIN_METHODS) == method_names() == ("layering", "unet2", "unet3")
    for name in METHODS:
        assert get_method(name).name == name
    with pytest.raises(UnknownMethodError, match="unknown method 'unet4'.*layering"):
        get_method("unet4")
    with pytest.raises(ConfigError, match="method"):
        Config(method="unet4").validate()
    with pytest.raises(ValueError, match="registered already"):
        register_method(get_method("layering"))


def test_a_registered_method_is_valid_in_configs_until_it_is_removed(foreground_method):
    assert method_names()[-1] == "test_foreground"
    config = Config(method="test_foreground").validate()
    assert get_method(config.method) is foreground_method
    with pytest.raises(ConfigError, match="layer_target_weight"):  # it has no layers
        Config(method="test_foreground", layer_target_weight=1.0).validate()
    with pytest.raises(ConfigError, match="single training phase"):
        Config(method="test_foreground", phase="overlap").validate()
    unregister_method("test_foreground")
    with pytest.raises(ConfigError, match="method"):
        config.validate()


def test_builtin_methods_describe_their_networks_and_exports():
    config = Config(layers=6)
    layering, unet2, unet3 = (get_method(name) for name in ("layering", "unet2", "unet3"))
    assert layering.output_names(config) == ("foreground", "layering")
    assert [head.channels for head in layering.heads(config)] == [1, 6]
    assert layering.export_outputs(config, merged=True) == (MERGED_NAME,)
    assert layering.phases == ("layering", "overlap") and layering.has_layers
    assert layering.averaged_outputs(config) == ("foreground",)
    for method, channels in ((unet2, 1), (unet3, 3)):
        assert method.output_names(config) == ("semantic",)
        assert method.export_outputs(config, merged=True) == ("semantic",)
        assert method.map_channels(config) == channels
        assert method.phases == ("layering",) and not method.has_layers
    assert unet3.needs_sample_target and not unet2.needs_sample_target
    assert not layering.needs_sample_target
    outputs = {"foreground": np.zeros((1, 4, 4, 1)), "layering": np.ones((1, 4, 4, 6))}
    assert layering.package_maps(outputs, config)[MERGED_NAME].shape == (1, 4, 4, 7)
    assert layering.package_channels(config)[MERGED_NAME][:2] == ["foreground", "layer1"]


def test_no_module_outside_the_methods_branches_on_the_method():
    branch = re.compile(r"method\s*[!=]=|[!=]=\s*config\.method")
    found = []
    for package in ("layernet", "layernet_commands"):
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            if os.path.relpath(folder, REPO).startswith(os.path.join("layernet", "methods")):
                continue
            for file in files:
                if file.endswith(".py"):
                    path = os.path.join(folder, file)
                    with open(path, encoding="utf-8") as handle:
                        found += [f"{os.path.relpath(path, REPO)}:{number}: {line.strip()}"
                                  for number, line in enumerate(handle, 1)
                                  if branch.search(line) and "Config.method ==" not in line
                                  # two runs' methods compared: not a branch on one method
                                  and "method == init.method" not in line]
    assert not found, "\n".join(found)


def test_streaming_cache_keys_are_those_of_before_the_method_interface(tmp_path):
    from layernet.samples import SampleSource
    from layernet.streaming import CACHE_FORMAT, file_identity, sample_key

    image = tmp_path / "a.tif"
    image.write_bytes(b"x")
    source = SampleSource(names=["a"], files=[(str(image),)], read=lambda index: None,
                          key="folder:x")
    for method, semantic in (("layering", False), ("unet2", False), ("unet3", False),
                             ("unet3", True)):
        config = Config(method=method)
        description = {
            "format": CACHE_FORMAT, "source": "folder:x", "name": "a",
            "files": file_identity([str(image)]), "channels": 1, "normalize_low": 1.0,
            "normalize_high": 99.8, "adjacency_distance": 15.0, "semantic": semantic}
        expected = hashlib.sha1(json.dumps(description, sort_keys=True).encode()).hexdigest()
        assert sample_key(source, 0, config, semantic) == expected


# ------------------------------------------------------------------------------------------
# a new method, end to end


def test_registered_method_builds_and_predicts_with_test_time_augmentation(foreground_method):
    from layernet.inference import Predictor
    from layernet.model import build_model

    config = Config(method="test_foreground", size="S", filters=4, head_filters=4,
                    min_size=0).validate()
    net = build_model(config)
    assert net.name == "test_foreground_unetS" and list(net.output) == ["foreground"]
    image = np.random.default_rng(0).random((20, 28, 1)).astype(np.float32)
    for tta in (False, True):
        predictor = Predictor(net, config, tta=tta)
        foreground, maps = predictor.maps_normalized(image)
        assert foreground.shape == (20, 28) and maps.shape == (20, 28, 1)
        assert predictor.map_channels == 1
        stack = predictor.instances_normalized(image)
        assert stack.shape == (1, 20, 28)
        np.testing.assert_array_equal(stack[0] > 0, foreground > config.tau)


def test_registered_method_trains_predicts_and_evaluates(tmp_path, foreground_method):
    from datasets import load_source
    from datasets.synthetic import load
    from layernet import runfolder
    from layernet.inference import Predictor
    from layernet.io import read_image, write_image_atomic
    from layernet.training import train
    from layernet_commands import evaluate, predict

    options = {"kind": "cells", "size": 64, "count": 4}
    config = Config(method="test_foreground", size="S", filters=4, head_filters=4,
                    patch_size=64, batch_size=2, epochs=1, steps_per_epoch=1, min_size=10,
                    data_options=options).validate()
    run = tmp_path / "run"
    result = train(config, str(run), verbose=0, load_source=load_source)
    history = runfolder.read_history(str(run / runfolder.HISTORY_FILE))
    assert result["epochs"] == 1 and np.isfinite(history[0]["foreground"])
    assert {"loss", "foreground", "val_meanAP", "val_AJI"} <= set(history[0])
    net, saved = runfolder.load_trained_model(str(run))
    assert saved.method == "test_foreground" and list(net.output) == ["foreground"]

    # predict.py on a folder gives the objects the library's Predictor finds
    raw = load(split="test", kind="cells", size=64, count=1)[0].image[..., 0].astype(np.uint16)
    (tmp_path / "images").mkdir()
    write_image_atomic(str(tmp_path / "images" / "plate.tif"), raw)
    assert predict.main([str(tmp_path / "images"), "--model", str(run), "--out",
                         str(tmp_path / "pred"), "--quiet", "--save-layer-maps"]) == 0
    predictor = Predictor(net, saved)
    expected = predictor.instances_normalized(predictor.normalize(raw[..., None]))
    written = read_image(str(tmp_path / "pred" / "plate.layers.tif"))
    np.testing.assert_array_equal(written.reshape((-1,) + expected.shape[1:]),
                                  pack_stack(expected))
    assert os.path.isfile(tmp_path / "pred" / "plate.layermaps.png")

    out = tmp_path / "eval"
    assert evaluate.main(["--model", str(run), "--split", "test", "--out", str(out),
                          "--worst", "0"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_images"] == 4
    summary = metrics["matchings"]["reference"]
    assert 0.0 <= summary["meanAP"] <= 1.0 and 0.0 <= summary["AJI"] <= 1.0
