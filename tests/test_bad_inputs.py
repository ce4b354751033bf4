"""Catalogue of bad inputs: every one is caught with a one-line message naming the file and the
problem (and a non-zero exit code for the command-line tools), nothing is half-written.

Sections: image and mask readers, dataset loaders, models and configs, predict.py, train.py,
evaluate.py, output folders (not writable, disk full). The command-line tools are run in process
through :func:`layernet.cli.run_main` (what ``python predict.py`` does), except the disk-full
case, which needs a real process with a file-size limit.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from layernet import runfolder
from layernet.cli import run_main
from layernet.config import CONFIG_VERSION, Config, ConfigError
from layernet.io import (ImageReadError, as_channels, read_image, read_label_image,
                         read_label_stack, read_mask)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(size="S", filters=4, head_filters=4, layers=4, min_size=5, patch_size=32)


# ------------------------------------------------------------------------------------------
# helpers


def one_line_error(error: BaseException, *words: str) -> None:
    """The message is one line and holds every word (file name, problem)."""
    message = str(error)
    assert "\n" not in message.strip(), message
    for word in words:
        assert word.lower() in message.lower(), (word, message)


def write_tiff(path, array) -> str:
    tifffile.imwrite(str(path), np.asarray(array))
    return str(path)


def gray(size: int = 40, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((size, size)) * 1000).astype(np.uint16)


def run_cli(name: str, argv: list[str], capsys) -> tuple[int, str]:
    """Run ``python <name> argv`` in process (its :mod:`layernet_commands` module); return the
    exit code and stderr."""
    capsys.readouterr()
    module = importlib.import_module(f"layernet_commands.{os.path.splitext(name)[0]}")
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: module.main(argv))
    code = exit_info.value.code
    return (0 if code is None else int(code)), capsys.readouterr().err


def error_lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def assert_cli_error(code: int, stderr: str, *words: str, exit_code: int | None = None) -> None:
    """Non-zero exit and one ``error:`` line holding every word."""
    assert code != 0, stderr
    if exit_code is not None:
        assert code == exit_code, (code, stderr)
    lines = error_lines(stderr)
    assert any(all(word.lower() in line.lower() for word in words) for line in lines), \
        (words, stderr)


@pytest.fixture(scope="module")
def model_run(tmp_path_factory) -> str:
    """A run folder with an untrained tiny model (config.json + best.h5)."""
    import keras

    from layernet.model import build_model

    run = tmp_path_factory.mktemp("run")
    config = Config(**TINY).validate()
    keras.utils.set_random_seed(0)
    config.save(str(run / runfolder.CONFIG_FILE))
    runfolder.save_model_atomic(build_model(config), str(run / runfolder.BEST_FILE))
    return str(run)


def folder_dataset(root, count: int = 3) -> str:
    """A valid folder dataset of ``count`` 40x40 images with label-image masks."""
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for index in range(count):
        labels = np.zeros((40, 40), np.uint16)
        labels[5:20, 5:20] = 1
        labels[22:35, 10:30] = 2
        write_tiff(os.path.join(root, "images", f"im{index}.tif"), gray(seed=index))
        write_tiff(os.path.join(root, "masks", f"im{index}.tif"), labels)
    return str(root)


# ------------------------------------------------------------------------------------------
# image, mask and label readers (layernet.io)


def test_missing_file(tmp_path) -> None:
    path = str(tmp_path / "absent.tif")
    with pytest.raises(ImageReadError) as error:
        read_image(path)
    one_line_error(error.value, path, "not found")


def test_empty_file(tmp_path) -> None:
    path = tmp_path / "empty.tif"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError) as error:
        read_image(str(path))
    one_line_error(error.value, str(path), "empty")


def test_truncated_tiff(tmp_path) -> None:
    whole = write_tiff(tmp_path / "whole.tif", gray(64))
    path = tmp_path / "cut.tif"
    path.write_bytes(open(whole, "rb").read()[:300])
    with pytest.raises(ImageReadError) as error:
        read_image(str(path))
    one_line_error(error.value, str(path), "truncated")


def test_not_an_image(tmp_path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is a text file, not a PNG\n")
    with pytest.raises(ImageReadError) as error:
        read_image(str(path))
    one_line_error(error.value, str(path), "not a readable image")


def test_folder_instead_of_file(tmp_path) -> None:
    with pytest.raises(ImageReadError) as error:
        read_image(str(tmp_path))
    one_line_error(error.value, str(tmp_path), "not a file")


def test_3d_stack_where_a_2d_image_is_expected(tmp_path) -> None:
    path = write_tiff(tmp_path / "stack.tif", np.zeros((6, 30, 30), np.uint8))
    with pytest.raises(ImageReadError) as error:
        as_channels(read_image(path), name=path)
    one_line_error(error.value, path, "stack of 6 planes")
    with pytest.raises(ImageReadError) as error:
        read_mask(path)
    one_line_error(error.value, path, "stack")


def test_4d_tiff(tmp_path) -> None:
    path = str(tmp_path / "volume.tif")
    tifffile.imwrite(path, np.zeros((2, 3, 20, 20), np.uint8), metadata={"axes": "TZYX"})
    with pytest.raises(ImageReadError) as error:
        read_image(path)
    one_line_error(error.value, path, "4 dimensions")


def test_rgb_image_for_a_gray_model(tmp_path) -> None:
    rgb = np.random.default_rng(1).integers(0, 255, (20, 20, 3)).astype(np.uint8)
    path = write_tiff(tmp_path / "colour.tif", rgb)
    with pytest.raises(ImageReadError) as error:
        as_channels(read_image(path), expected_channels=1, name=path)
    one_line_error(error.value, path, "3 channel(s)", "expected 1")


def test_gray_image_for_an_rgb_model(tmp_path) -> None:
    path = write_tiff(tmp_path / "gray.tif", gray())
    with pytest.raises(ImageReadError) as error:
        as_channels(read_image(path), expected_channels=3, name=path)
    one_line_error(error.value, path, "1 channel(s)", "expected 3")


def test_wrong_channel_index(tmp_path) -> None:
    path = write_tiff(tmp_path / "gray.tif", gray())
    with pytest.raises(ImageReadError) as error:
        as_channels(read_image(path), channel=2, name=path)
    one_line_error(error.value, path, "channel 2", "grayscale")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_nan_and_inf_pixels(tmp_path, bad) -> None:
    image = gray().astype(np.float32)
    image[3, 4] = bad
    path = write_tiff(tmp_path / "nan.tif", image)
    with pytest.raises(ImageReadError) as error:
        as_channels(read_image(path), name=path)
    one_line_error(error.value, path, "NaN or infinite")


def test_mask_with_values_other_than_0_1_255(tmp_path) -> None:
    mask = np.zeros((20, 20), np.uint8)
    mask[2:5, 2:5] = 7
    path = write_tiff(tmp_path / "mask.tif", mask)
    with pytest.raises(ImageReadError) as error:
        read_mask(path)
    one_line_error(error.value, path, "not a binary mask", "7")


def test_colour_mask_with_different_channels(tmp_path) -> None:
    mask = np.zeros((20, 20, 3), np.uint8)
    mask[2:5, 2:5, 0] = 255
    path = write_tiff(tmp_path / "mask.tif", mask)
    with pytest.raises(ImageReadError) as error:
        read_mask(path)
    one_line_error(error.value, path, "channels differ")


def test_label_image_with_negative_ids(tmp_path) -> None:
    labels = np.zeros((20, 20), np.int16)
    labels[1:4, 1:4] = -3
    path = write_tiff(tmp_path / "labels.tif", labels)
    with pytest.raises(ImageReadError) as error:
        read_label_image(path)
    one_line_error(error.value, path, ">= 0", "-3")


def test_label_image_with_fractional_ids(tmp_path) -> None:
    labels = np.zeros((20, 20), np.float32)
    labels[1:4, 1:4] = 1.5
    path = write_tiff(tmp_path / "labels.tif", labels)
    with pytest.raises(ImageReadError) as error:
        read_label_image(path)
    one_line_error(error.value, path, "non-integer")


def test_label_stack_with_an_id_in_two_slices(tmp_path) -> None:
    stack = np.zeros((2, 20, 20), np.uint16)
    stack[0, 1:4, 1:4] = 5
    stack[1, 10:14, 10:14] = 5
    stack[1, 15:18, 15:18] = 6
    path = write_tiff(tmp_path / "stack.tif", stack)
    with pytest.raises(ImageReadError) as error:
        read_label_stack(path)
    one_line_error(error.value, path, "5")


# ------------------------------------------------------------------------------------------
# dataset loaders


def test_dataset_folder_with_no_pairs(tmp_path) -> None:
    from datasets import load_dataset

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    write_tiff(tmp_path / "images" / "a.tif", gray())
    write_tiff(tmp_path / "masks" / "b.tif", np.zeros((40, 40), np.uint8))
    with pytest.raises(ValueError) as error:
        load_dataset("folder", str(tmp_path), "train")
    one_line_error(error.value, str(tmp_path), "no image with masks")


def test_dataset_folder_without_masks_folder(tmp_path) -> None:
    from datasets import load_dataset

    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError) as error:
        load_dataset("folder", str(tmp_path), "train")
    one_line_error(error.value, str(tmp_path / "masks"), "folder not found")


def test_mask_size_differs_from_image(tmp_path) -> None:
    from datasets import load_dataset

    root = folder_dataset(tmp_path, count=1)
    path = write_tiff(os.path.join(root, "masks", "im0.tif"), np.ones((30, 40), np.uint8))
    with pytest.raises(ValueError) as error:
        load_dataset("folder", root, "all")
    one_line_error(error.value, path, "differs from image size")


def test_per_object_mask_size_differs_from_image(tmp_path) -> None:
    from datasets import load_dataset

    root = folder_dataset(tmp_path, count=1)
    os.remove(os.path.join(root, "masks", "im0.tif"))
    os.makedirs(os.path.join(root, "masks", "im0"))
    path = write_tiff(os.path.join(root, "masks", "im0", "obj1.tif"),
                      np.full((40, 41), 255, np.uint8))
    with pytest.raises(ValueError) as error:
        load_dataset("folder", root, "all")
    one_line_error(error.value, path, "differs from image size")


def test_dataset_images_with_different_channel_counts(tmp_path) -> None:
    from datasets import load_dataset

    root = folder_dataset(tmp_path, count=2)
    rgb = np.random.default_rng(2).integers(0, 255, (40, 40, 3)).astype(np.uint8)
    write_tiff(os.path.join(root, "images", "im1.tif"), rgb)
    with pytest.raises(ValueError) as error:
        load_dataset("folder", root, "all")
    one_line_error(error.value, "channel", "pass channel=")


def test_dataset_duplicate_stems(tmp_path) -> None:
    from datasets import load_dataset

    root = folder_dataset(tmp_path, count=1)
    write_tiff(os.path.join(root, "images", "im0.tiff"), gray())
    with pytest.raises(ValueError) as error:
        load_dataset("folder", root, "all")
    one_line_error(error.value, "im0", "duplicate stem")


def test_unknown_dataset_and_bad_synthetic_option() -> None:
    from datasets import load_dataset

    with pytest.raises(ValueError) as error:
        load_dataset("imagenet")
    one_line_error(error.value, "imagenet", "unknown dataset")
    with pytest.raises(ValueError) as error:
        load_dataset("synthetic", None, "train", 0, size=8)
    one_line_error(error.value, "synthetic", "size")


def test_prepared_sample_with_nan_image() -> None:
    from datasets import Sample
    from layernet.pipeline import PipelineError, prepare_samples

    image = np.ones((16, 16, 1), np.float32)
    image[0, 0, 0] = np.nan
    sample = Sample(image=image, stack=np.zeros((1, 16, 16), np.int32), name="bad-sample")
    with pytest.raises(PipelineError) as error:
        prepare_samples([sample], Config())
    one_line_error(error.value, "bad-sample", "NaN")


# ------------------------------------------------------------------------------------------
# models and configs


def test_model_file_that_is_not_a_model(tmp_path, model_run) -> None:
    from layernet.model import ModelWeightsError

    run = tmp_path / "run"
    run.mkdir()
    (run / runfolder.CONFIG_FILE).write_text(open(os.path.join(model_run, "config.json")).read())
    (run / runfolder.BEST_FILE).write_text("not a model\n")
    with pytest.raises(ModelWeightsError) as error:
        runfolder.load_trained_model(str(run))
    one_line_error(error.value, str(run / runfolder.BEST_FILE), "not an HDF5")


@pytest.mark.parametrize("change", [{"filters": 8}, {"layers": 6}, {"size": "M"},
                                    {"channels": 3}], ids=lambda c: next(iter(c)))
def test_weights_of_another_architecture(tmp_path, model_run, change) -> None:
    from layernet.model import ModelWeightsError

    run = tmp_path / "run"
    run.mkdir()
    Config(**dict(TINY, **change)).save(str(run / runfolder.CONFIG_FILE))
    os.link(os.path.join(model_run, runfolder.BEST_FILE), run / runfolder.BEST_FILE)
    with pytest.raises(ModelWeightsError) as error:
        runfolder.load_trained_model(str(run))
    one_line_error(error.value, str(run / runfolder.BEST_FILE), "cannot load weights")


def test_corrupt_config_json(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"size": "S", "filters": ')
    with pytest.raises(ConfigError) as error:
        Config.load(str(path))
    one_line_error(error.value, str(path), "not valid JSON")


def test_config_from_a_future_version(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(dict(Config().to_dict(), version=CONFIG_VERSION + 1)))
    with pytest.raises(ConfigError) as error:
        Config.load(str(path))
    one_line_error(error.value, str(path), "newer than this layernet")


@pytest.mark.parametrize("values, words", [
    ({"filtres": 8}, ["unknown config field", "filtres"]),
    ({"size": "XL"}, ["size", "allowed"]),
    ({"tau": 1.5}, ["tau"]),
    ({"patch_size": 100, "size": "S"}, ["patch_size", "multiple of 8"]),
], ids=["unknown-field", "bad-choice", "out-of-range", "patch-stride"])
def test_invalid_config_values(tmp_path, values, words) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(values))
    with pytest.raises(ConfigError) as error:
        Config.load(str(path))
    one_line_error(error.value, str(path), *words)


def test_run_folder_without_model(tmp_path) -> None:
    with pytest.raises(runfolder.RunFolderError) as error:
        runfolder.resolve_model_path(str(tmp_path))
    one_line_error(error.value, str(tmp_path), "neither best.h5 nor last.h5")


def test_model_without_config_beside_it(tmp_path, model_run) -> None:
    path = tmp_path / "lonely.h5"
    os.link(os.path.join(model_run, runfolder.BEST_FILE), path)
    with pytest.raises(runfolder.RunFolderError) as error:
        runfolder.load_trained_model(str(path))
    one_line_error(error.value, str(path), "no config.json")


# ------------------------------------------------------------------------------------------
# predict.py


def test_predict_missing_input(tmp_path, model_run, capsys) -> None:
    path = str(tmp_path / "absent.tif")
    code, err = run_cli("predict.py", ["--model", model_run, path], capsys)
    assert_cli_error(code, err, path, "not found", exit_code=2)


@pytest.mark.parametrize("kind", ["empty", "truncated", "text", "rgb", "nan", "stack"])
def test_predict_reports_each_bad_file_and_goes_on(tmp_path, model_run, capsys, kind) -> None:
    good = write_tiff(tmp_path / "good.tif", gray())
    bad = str(tmp_path / f"bad-{kind}.tif")
    words = {"empty": "empty file", "truncated": "truncated", "text": "not a readable image",
             "rgb": "expected 1", "nan": "NaN", "stack": "stack"}[kind]
    if kind == "empty":
        open(bad, "wb").close()
    elif kind == "truncated":
        open(bad, "wb").write(open(good, "rb").read()[:200])
    elif kind == "text":
        bad = str(tmp_path / "bad-text.png")
        open(bad, "w").write("hello\n")
    elif kind == "rgb":
        write_tiff(bad, np.random.default_rng(3).integers(0, 255, (40, 40, 3)).astype(np.uint8))
    elif kind == "nan":
        write_tiff(bad, np.full((40, 40), np.nan, np.float32))
    else:
        write_tiff(bad, np.zeros((5, 40, 40), np.uint8))
    out = tmp_path / "out"
    code, err = run_cli("predict.py", ["--model", model_run, "--out", str(out), "--quiet",
                                       good, bad], capsys)
    assert_cli_error(code, err, bad, words, exit_code=1)
    assert len(error_lines(err)) == 1
    assert (out / "good.layers.tif").exists()
    stem = os.path.splitext(os.path.basename(bad))[0]
    assert not [name for name in os.listdir(out) if name.startswith((stem, "."))]


def test_predict_wrong_channel_index(tmp_path, model_run, capsys) -> None:
    path = write_tiff(tmp_path / "gray.tif", gray())
    code, err = run_cli("predict.py", ["--model", model_run, "--channel", "3", "--out",
                                       str(tmp_path / "out"), path], capsys)
    assert_cli_error(code, err, path, "channel 3", exit_code=1)


def test_predict_model_that_is_not_a_model(tmp_path, model_run, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / runfolder.CONFIG_FILE).write_text(open(os.path.join(model_run, "config.json")).read())
    (run / runfolder.BEST_FILE).write_bytes(b"\x89HDF\r\n\x1a\n" + b"garbage" * 10)
    image = write_tiff(tmp_path / "gray.tif", gray())
    code, err = run_cli("predict.py", ["--model", str(run), image], capsys)
    assert_cli_error(code, err, str(run / runfolder.BEST_FILE), exit_code=2)


def test_predict_corrupt_and_future_config(tmp_path, model_run, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    os.link(os.path.join(model_run, runfolder.BEST_FILE), run / runfolder.BEST_FILE)
    image = write_tiff(tmp_path / "gray.tif", gray())
    (run / runfolder.CONFIG_FILE).write_text("{ not json")
    code, err = run_cli("predict.py", ["--model", str(run), image], capsys)
    assert_cli_error(code, err, "config.json", "not valid JSON", exit_code=2)
    (run / runfolder.CONFIG_FILE).write_text(json.dumps({"version": CONFIG_VERSION + 5}))
    code, err = run_cli("predict.py", ["--model", str(run), image], capsys)
    assert_cli_error(code, err, "config.json", "newer", exit_code=2)


@pytest.mark.parametrize("kind", ["zeros", "constant", "1x1", "smaller_than_stride",
                                  "float_far_out_of_range", "negative_float"])
def test_predict_degenerate_images_give_finite_results(tmp_path, model_run, capsys,
                                                       kind) -> None:
    rng = np.random.default_rng(4)
    image = {"zeros": np.zeros((40, 40), np.uint8),
             "constant": np.full((40, 40), 1234, np.uint16),
             "1x1": np.full((1, 1), 9, np.uint16),
             "smaller_than_stride": rng.random((5, 7)).astype(np.float32),
             "float_far_out_of_range": (rng.random((40, 40)) * 1e37).astype(np.float32),
             "negative_float": (-1e30 - rng.random((24, 40)) * 1e29).astype(np.float32)}[kind]
    path = write_tiff(tmp_path / f"{kind}.tif", image)
    out = tmp_path / "out"
    code, err = run_cli("predict.py", ["--model", model_run, "--out", str(out), "--save-prob",
                                       "--quiet", path], capsys)
    assert code == 0 and not error_lines(err), err
    stack = read_label_stack(str(out / f"{kind}.layers.tif"))
    assert stack.shape[1:] == image.shape
    maps = tifffile.imread(str(out / f"{kind}.prob.tif"))
    assert np.all(np.isfinite(maps)) and maps.min() >= 0 and maps.max() <= 1


def test_predict_output_folder_not_writable(tmp_path, model_run, capsys) -> None:
    image = write_tiff(tmp_path / "gray.tif", gray())
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, err = run_cli("predict.py", ["--model", model_run, "--out", str(blocker / "out"),
                                       image], capsys)
    assert_cli_error(code, err, str(blocker), exit_code=2)
    if os.geteuid() != 0:  # root writes anywhere; the permission case needs a normal user
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, err = run_cli("predict.py", ["--model", model_run, "--out", str(locked), image],
                            capsys)
        assert_cli_error(code, err, "permission denied", exit_code=1)


def test_predict_disk_full_leaves_no_partial_file(tmp_path, model_run) -> None:
    """A real process whose files may not grow past 4 kB (as a full disk): the write fails with
    a one-line error and neither a truncated output nor a temporary file stays behind."""
    image = write_tiff(tmp_path / "big.tif", gray(96))
    out = tmp_path / "out"
    out.mkdir()

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, os.path.join(REPO, "predict.py"), "--model",
                           model_run, "--out", str(out), "--save-prob", "--quiet", image],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300,
                          preexec_fn=limit_file_size)
    assert done.returncode == 1, done.stderr[-2000:]
    lines = error_lines(done.stderr)
    assert len(lines) == 1, done.stderr
    assert str(out / "big.") in lines[0] and "disk full" in lines[0], lines[0]
    left = os.listdir(out)  # no partial output, no temporary file: at most the (compressed,
    assert set(left) <= {"big.layers.tif"}, left  # small) label stack, written before, whole
    for name in left:
        read_label_stack(str(out / name))


# ------------------------------------------------------------------------------------------
# train.py


TRAIN_TINY = ["--size", "S", "--filters", "4", "--patch-size", "32", "--epochs", "1",
              "--steps-per-epoch", "1", "--batch-size", "1"]


def test_train_dataset_folder_with_no_pairs(tmp_path, capsys) -> None:
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    code, err = run_cli("train.py", [*TRAIN_TINY, "--data", "folder", "--data-dir",
                                     str(tmp_path / "data"), "--out", str(tmp_path / "run")],
                        capsys)
    assert_cli_error(code, err, str(tmp_path / "data"), "no image with masks", exit_code=2)


def test_train_channels_do_not_match_the_data(tmp_path, capsys) -> None:
    root = folder_dataset(tmp_path / "data", count=4)
    code, err = run_cli("train.py", [*TRAIN_TINY, "--data", "folder", "--data-dir", root,
                                     "--channels", "3", "--out", str(tmp_path / "run")], capsys)
    assert_cli_error(code, err, "1", "expects 3", exit_code=2)


def test_train_corrupt_and_future_config(tmp_path, capsys) -> None:
    path = tmp_path / "config.json"
    path.write_text("[1, 2")
    code, err = run_cli("train.py", ["--config", str(path), "--out", str(tmp_path / "a")],
                        capsys)
    assert_cli_error(code, err, str(path), "not valid JSON", exit_code=2)
    path.write_text(json.dumps({"version": CONFIG_VERSION + 1}))
    code, err = run_cli("train.py", ["--config", str(path), "--out", str(tmp_path / "b")],
                        capsys)
    assert_cli_error(code, err, str(path), "newer", exit_code=2)


def test_train_init_that_is_not_a_model(tmp_path, model_run, capsys) -> None:
    code, err = run_cli("train.py", ["--init", str(tmp_path / "absent.h5"), "--out",
                                     str(tmp_path / "run")], capsys)
    assert_cli_error(code, err, str(tmp_path / "absent.h5"), "not found", exit_code=2)


def test_train_resume_without_a_run(tmp_path, capsys) -> None:
    (tmp_path / "run").mkdir()
    Config(**TINY).save(str(tmp_path / "run" / runfolder.CONFIG_FILE))
    code, err = run_cli("train.py", ["--resume", str(tmp_path / "run")], capsys)
    assert_cli_error(code, err, str(tmp_path / "run"), "nothing to resume", exit_code=2)


def test_train_bad_options(tmp_path, capsys) -> None:
    code, err = run_cli("train.py", ["--data-option", "size128", "--out", str(tmp_path / "a")],
                        capsys)
    assert_cli_error(code, err, "size128", "KEY=VALUE", exit_code=2)
    code, err = run_cli("train.py", ["--size", "S", "--patch-size", "100", "--out",
                                     str(tmp_path / "b")], capsys)
    assert_cli_error(code, err, "patch_size", "multiple of 8", exit_code=2)


def test_train_process_exit_code_and_one_line(tmp_path) -> None:
    """The real command: exit code 2 and a single ``error:`` line, no traceback."""
    path = tmp_path / "config.json"
    path.write_text("{")
    done = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), "--config",
                           str(path)], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    # TensorFlow's C++ start-up lines (absl "WARNING: All log messages ...", "I0000 ...") are
    # not ours; everything else on stderr is the one error line
    ours = [line for line in done.stderr.splitlines() if line
            and not re.match(r"^([IWEF]\d{4} |WARNING: All log messages before absl)", line)]
    assert ours == error_lines(done.stderr) and len(ours) == 1, done.stderr
    assert str(path) in done.stderr and "not valid JSON" in done.stderr


# ------------------------------------------------------------------------------------------
# evaluate.py


def test_evaluate_model_that_is_not_a_model(tmp_path, capsys) -> None:
    path = tmp_path / "best.h5"
    path.write_text("nope")
    code, err = run_cli("evaluate.py", ["--model", str(path), "--data", "synthetic"], capsys)
    assert_cli_error(code, err, str(tmp_path), exit_code=2)


def test_evaluate_predictions_missing(tmp_path, capsys) -> None:
    root = folder_dataset(tmp_path / "data", count=2)
    (tmp_path / "pred").mkdir()
    code, err = run_cli("evaluate.py", ["--pred", str(tmp_path / "pred"), "--gt",
                                        os.path.join(root, "masks"), "--out",
                                        str(tmp_path / "eval")], capsys)
    assert_cli_error(code, err, str(tmp_path / "pred"), exit_code=2)


@pytest.mark.parametrize("shape", [(3, 5, 1), (2, 1, 1), (1, 1, 6), (4, 1, 7)])
def test_label_stack_of_one_pixel_wide_images_round_trips(tmp_path, shape) -> None:
    from layernet.io import write_label_stack

    stack = np.zeros(shape, np.int32)
    for layer in range(shape[0]):
        stack[layer].flat[layer % stack[layer].size] = layer + 1
    path = str(tmp_path / "thin.tif")
    write_label_stack(path, stack)
    np.testing.assert_array_equal(read_label_stack(path), stack)
