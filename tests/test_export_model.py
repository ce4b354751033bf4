"""Model export (python -m layernet.export_model) and predict.py --backend onnx.

A tiny UNet-S (4 filters) is built once for the module and saved as a run folder; its output
convolutions are scaled up so that its maps spread over (0, 1) and Algorithm 1 finds objects.
The tests that need the optional packages of requirements-export.txt skip without them.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tifffile

from layernet.export_model import ExportOptions, export_model
from layernet.instances import pack_stack
from layernet.io import read_label_stack
from tests.conftest import REPO, run_cli

TINY = dict(size="S", filters=4, head_filters=4, precision="float32", min_size=10)


def export_cli(*args: str, block: str | None = None) -> subprocess.CompletedProcess:
    """``python -m layernet.export_model args``; ``block``: a module made unimportable first."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    code = ("import runpy, sys\n"
            + (f"sys.modules[{block!r}] = None\n" if block else "")
            + f"sys.argv = ['export_model', *{list(args)!r}]\n"
            "runpy.run_module('layernet.export_model', run_name='__main__', alter_sys=True)\n")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The ``error:`` line of a failed command (and check that it failed without a traceback)."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-2000:]
    return errors[0]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A raw 16-bit-like synthetic image (H and W not multiples of the stride)."""
    from datasets.synthetic import generate_sample

    sample = generate_sample(np.random.default_rng(3), "cells", 100)
    return (sample.image[:, :92] * 1000.0 + 50.0).astype(np.float32)


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, image) -> str:
    """A run folder (config.json, best.h5) of a tiny layering UNet whose maps spread over
    (0, 1): output kernels scaled up, the foreground bias set so that half of ``image`` is
    foreground."""
    import keras

    from layernet.config import Config
    from layernet.inference import Predictor
    from layernet.model import build_model
    from layernet.runfolder import save_model_atomic

    folder = tmp_path_factory.mktemp("export") / "run"
    folder.mkdir()
    config = Config(**TINY).validate()
    keras.utils.set_random_seed(0)
    net = build_model(config)
    for name in ("foreground", "layering"):
        kernel, bias = net.get_layer(name).get_weights()
        net.get_layer(name).set_weights([kernel * 40.0, bias])
    foreground = np.clip(Predictor(net, config).maps(image)[0], 1e-6, 1 - 1e-6)
    kernel, bias = net.get_layer("foreground").get_weights()
    median_logit = float(np.median(np.log(foreground / (1.0 - foreground))))
    net.get_layer("foreground").set_weights([kernel, bias - median_logit])
    save_model_atomic(net, str(folder / "best.h5"))
    config.save(str(folder / "config.json"))
    return str(folder)


def test_savedmodel_gives_the_keras_maps(run_folder, tmp_path):
    import tensorflow as tf

    from layernet.runfolder import load_trained_model

    out = tmp_path / "serving" / "1"
    out.mkdir(parents=True)
    (out / "stale.txt").write_text("an older export")
    written = export_model(run_folder, "savedmodel", str(out), ExportOptions(force=True))
    assert written == str(out)
    assert sorted(os.listdir(out.parent)) == ["1"]  # replaced; no temporary folder left
    assert (out / "saved_model.pb").exists() and (out / "config.json").exists()
    assert not (out / "stale.txt").exists()
    net, config = load_trained_model(run_folder)
    signature = tf.saved_model.load(str(out)).signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == ["image"]
    for shape in ((2, 40, 56), (1, 24, 16)):  # dynamic batch, height and width
        batch = np.random.default_rng(0).random(shape + (1,)).astype(np.float32)
        served = signature(image=tf.constant(batch))
        expected = net(batch, training=False)
        assert sorted(served) == ["foreground", "layering"]
        for name in served:
            assert served[name].shape == expected[name].shape
            np.testing.assert_allclose(served[name].numpy(), expected[name].numpy(), atol=1e-5)


def test_onnx_backend_gives_the_keras_instances(run_folder, image, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    from layernet.batch_predict import load_predictor
    from layernet.tiling import predict_image

    assert export_model(run_folder, "onnx") == os.path.join(run_folder, "model.onnx")
    keras = load_predictor(run_folder, precision="float32")
    onnx = load_predictor(run_folder, backend="onnx")
    assert onnx.backend.name == "onnx" and keras.backend.name == "keras"
    for tta in (False, True):
        keras.tta = onnx.tta = tta
        expected, got = keras.maps(image), onnx.maps(image)
        for want, have in zip(expected, got):
            np.testing.assert_allclose(have, want, atol=1e-5)
        stack = keras.instances_from_maps(*expected)
        assert stack.max() > 3  # the maps hold objects, so the comparison means something
        np.testing.assert_array_equal(onnx.instances_from_maps(*got), stack)
    keras.tta = onnx.tta = False
    tiled = [predict_image(predictor, image, tile_size=48) for predictor in (keras, onnx)]
    assert tiled[0].tiles > 1
    np.testing.assert_array_equal(tiled[1].stack, tiled[0].stack)

    # predict.py --backend onnx writes the same label stack as the Keras model in this process
    path = str(tmp_path / "cells.tif")
    tifffile.imwrite(path, image[..., 0])
    result = run_cli("predict.py", path, "--model", run_folder, "--backend", "onnx", "--out",
                     str(tmp_path / "out"), "--tile-size", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "onnx backend" in result.stderr
    written = read_label_stack(str(tmp_path / "out" / "cells.layers.tif"))
    np.testing.assert_array_equal(written, pack_stack(predict_image(keras, image,
                                                                    tile_size=0).stack))


def test_bioimageio_package_is_valid_and_passes_the_model_test(run_folder, tmp_path, caplog):
    pytest.importorskip("bioimageio.core")
    pytest.importorskip("tf2onnx")
    from bioimageio.spec import load_description

    for option, value in (("license", "NOPE"), ("name", "a/b"), ("authors", ("a/b",))):
        options = ExportOptions(**{"authors": ("A. Author",), option: value})
        with pytest.raises(ValueError, match=f"--{option.rstrip('s')} "):
            export_model(run_folder, "bioimageio", str(tmp_path / "bad"), options)
    caplog.set_level(logging.INFO)
    out = tmp_path / "package"
    written = export_model(run_folder, "bioimageio", str(out),
                           ExportOptions(authors=("A. Author",), license="MIT"))
    assert written == str(out / "bioimageio.zip") and os.listdir(out) == ["bioimageio.zip"]
    assert "bioimageio.core model test passed" in caplog.text  # run before the zip is written
    assert "tensorflow_saved_model_bundle" in caplog.text and "onnx" in caplog.text
    descr = load_description(written)
    assert type(descr).__name__ == "ModelDescr", descr.validation_summary.format()
    assert str(descr.format_version).startswith("0.5")
    assert [str(tensor.id) for tensor in descr.inputs] == ["image"]
    assert [str(tensor.id) for tensor in descr.outputs] == ["maps"]
    scale = [step for step in descr.inputs[0].preprocessing if step.id == "scale_range"]
    assert scale[0].kwargs.min_percentile == 1.0 and scale[0].kwargs.max_percentile == 99.8
    assert [str(axis.id) for axis in descr.inputs[0].axes] == ["batch", "y", "x", "channel"]
    assert descr.weights.onnx is not None and descr.weights.tensorflow_saved_model_bundle
    assert str(descr.license) == "MIT" and descr.authors[0].name == "A. Author"
    assert descr.config.model_extra["layernet"]["tau"] == 0.5
    with zipfile.ZipFile(written) as archive:
        readme = archive.read("README.md").decode()
        assert {"rdf.yaml", "model.onnx", "saved_model.zip", "test_input.npy",
                "test_maps.npy", "cover.png"} <= set(archive.namelist())
    for words in ("Algorithm 1", "maps[..., 0] > tau", "S_min` = 10", "## Validation",
                  "BMVC", "2210.03551"):
        assert words in readme


def test_bad_inputs_fail_on_one_line_and_write_nothing(run_folder, tmp_path):
    missing = one_line_error(export_cli(str(tmp_path / "nothing"), "--format", "onnx"))
    assert "nothing" in missing and "not found" in missing
    unknown = export_cli(run_folder, "--format", "tflite")
    assert unknown.returncode == 2 and "Traceback" not in unknown.stderr
    assert "invalid choice: 'tflite'" in unknown.stderr
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    busy = one_line_error(export_cli(run_folder, "--format", "savedmodel", "--out", str(taken)))
    assert "not empty" in busy and "--force" in busy
    no_author = one_line_error(export_cli(run_folder, "--format", "bioimageio", "--out",
                                          str(tmp_path / "pkg")))
    assert "--author" in no_author
    assert os.listdir(taken) == ["keep.txt"] and not (tmp_path / "pkg").exists()

    # an export that fails its check leaves nothing behind, not even a temporary folder
    with pytest.raises(ValueError, match="differs from the Keras model"):  # no export passes
        export_model(run_folder, "savedmodel", str(taken),
                     ExportOptions(force=True, tolerance=-1.0))
    assert os.listdir(taken) == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_missing_optional_packages_and_onnx_file_are_named(run_folder, tmp_path):
    error = one_line_error(export_cli(run_folder, "--format", "onnx", "--out",
                                      str(tmp_path / "x"), block="tf2onnx"))
    assert "'tf2onnx'" in error and "requirements-export.txt" in error
    assert not (tmp_path / "x").exists()
    tifffile.imwrite(str(tmp_path / "image.tif"), np.zeros((16, 16), np.uint8))
    not_exported = tmp_path / "run"
    not_exported.mkdir()
    for name in ("best.h5", "config.json"):
        shutil.copy(os.path.join(run_folder, name), not_exported / name)
    missing_file = run_cli("predict.py", str(tmp_path / "image.tif"), "--model",
                           str(not_exported), "--backend", "onnx", "--out", str(tmp_path / "out"))
    text = one_line_error(missing_file)
    assert "model.onnx" in text and "python -m layernet.export_model" in text
