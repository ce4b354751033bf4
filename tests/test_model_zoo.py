"""Models by name (issue 14): the one rule that turns a name into a model folder, publishing a
run as a model folder (layernet.model_zoo), and using it by name: predict.py, evaluate.py,
train.py --init (fine-tuning on a folder of RGB images of any size), export."""

from __future__ import annotations

import json
import os

import cv2
import h5py
import numpy as np
import pytest
import roifile
import tifffile

from layernet import model_zoo, runfolder
from layernet.model_zoo import FILL_IN, ModelZooError
from layernet.runfolder import RunFolderError
from tests.test_predict_cli import assert_rois_fill_the_objects

TINY = ["--data", "synthetic", "--data-option", "kind=cells", "--data-option", "size=64",
        "--data-option", "count=6", "--size", "S", "--filters", "4", "--head-filters", "4",
        "--layers", "4", "--patch-size", "32", "--batch-size", "2", "--epochs", "1",
        "--steps-per-epoch", "2", "--min-size", "10", "--set", "tune_thresholds=true"]


def model_folder(root, name: str, card: bool = True) -> str:
    """A folder ``root/name`` that locate_model accepts as a model (config.json, best.h5)."""
    folder = os.path.join(str(root), name)
    os.makedirs(folder)
    with open(os.path.join(folder, runfolder.CONFIG_FILE), "w", encoding="utf-8") as handle:
        handle.write("{}\n")
    open(os.path.join(folder, runfolder.BEST_FILE), "wb").close()
    if card:
        with open(os.path.join(folder, runfolder.CARD_FILE), "w", encoding="utf-8") as handle:
            handle.write("# card\n")
    return folder


# ------------------------------------------------------------------------------------------
# the rule


def test_a_name_is_looked_up_in_layernet_models_then_the_shipped_folder(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    worms = model_folder(first, "worms")
    model_folder(second, "worms")
    cells = model_folder(second, "cells")
    (second / "notes").mkdir()                 # no config.json: not a model
    monkeypatch.setenv(runfolder.MODELS_ENV, os.pathsep.join([str(first), str(second)]))
    monkeypatch.chdir(tmp_path)
    assert runfolder.model_folders()[:2] == [str(first), str(second)]
    models = runfolder.available_models()
    assert models["worms"] == worms and models["cells"] == cells and "notes" not in models
    assert runfolder.locate_model("cells") == cells
    assert runfolder.resolve_model_path("worms") == os.path.join(worms, runfolder.BEST_FILE)
    assert runfolder.is_published_model("worms")
    # an existing path wins over a name
    own = model_folder(tmp_path, "cells", card=False)
    assert runfolder.locate_model("cells") == "cells"
    assert runfolder.resolve_model_path("cells") == os.path.join("cells", runfolder.BEST_FILE)
    assert not runfolder.is_published_model("cells") and os.path.isdir(own)
    # an unknown name: one line with the names there are
    with pytest.raises(RunFolderError) as error:
        runfolder.resolve_model_path("snails")
    message = str(error.value)
    assert "\n" not in message and message.startswith("snails: no such file or folder")
    assert "models available: worms, cells" in message and runfolder.MODELS_ENV in message
    # what looks like a path is one: the old message
    for path in ("runs/x", "best.h5", "x/best.h5"):
        with pytest.raises(RunFolderError, match=r": model file not found$"):
            runfolder.locate_model(path)
    with pytest.raises(RunFolderError, match=r"pass --model \(a run, or a pretrained model: "
                                             r"worms, cells"):
        runfolder.newest_run(str(tmp_path / "runs"))   # predict.py without --model
    monkeypatch.setenv(runfolder.MODELS_ENV, str(tmp_path / "empty"))
    monkeypatch.setattr(runfolder, "shipped_models_folder", lambda: None)
    with pytest.raises(RunFolderError, match=r"pass --model$"):
        runfolder.newest_run(str(tmp_path / "runs"))
    assert runfolder.available_models() == {}
    with pytest.raises(RunFolderError, match=r"models available: none;"):
        runfolder.locate_model("worms")


def test_model_names() -> None:
    for name in ("worms", "cells", "worms-v2", "nuclei_2.1", "A1"):
        assert runfolder.is_model_name(name), name
    for name in ("", ".hidden", "-x", "a/b", "best.h5", "model.onnx", "x.keras", "a b", "~"):
        assert not runfolder.is_model_name(name), name


def test_shipped_models_folder_is_the_checkout_models(monkeypatch) -> None:
    from tests.conftest import REPO

    monkeypatch.delenv(runfolder.MODELS_ENV, raising=False)
    assert runfolder.shipped_models_folder() == os.path.join(REPO, "models")
    assert runfolder.model_folders() == [os.path.join(REPO, "models")]


# ------------------------------------------------------------------------------------------
# the model card


def test_card_sections_are_filled_from_another_card_and_placeholders_are_found() -> None:
    card = ("# m\n\nintro\n\n## Use\n\nrun it\n\n## Intended use\n\n"
            f"{FILL_IN}: what for\n\n## Data\n\n{FILL_IN}: cite\n\n## Scores\n\n0.5\n")
    assert model_zoo.unfilled_sections(card) == ["Intended use", "Data"]
    filled = ("## intended use\n\nWorms in wells.\n\n## Scores\n\n0.1 (old)\n\n"
              f"## Data\n\n{FILL_IN}: still open\n\n## Notes\n\nextra\n")
    merged = model_zoo.merge_card(card, filled)
    assert merged.startswith("# m\n\nintro\n\n## Use\n\nrun it\n\n## Intended use\n\nWorms")
    assert "0.5" in merged and "(old)" not in merged       # generated sections stay the run's
    assert model_zoo.unfilled_sections(merged) == ["Data"]
    assert merged.rstrip().endswith("## Notes\n\nextra")
    assert model_zoo.merge_card(card, "no sections") == card


@pytest.mark.parametrize("data", ["bbbc010", "occ2014", "folder"])
def test_card_cites_the_known_datasets_and_asks_for_what_the_run_cannot_tell(tmp_path,
                                                                             data) -> None:
    from layernet.config import Config

    Config(data=data, data_dir="somewhere").save(str(tmp_path / runfolder.CONFIG_FILE))
    config = runfolder.config_for_model(str(tmp_path))
    card = model_zoo.model_card(str(tmp_path), "m", config, 1234, 5_000_000)
    expected = ["Intended use", "Training", "Validation scores", "Limitations"]
    if data == "folder":
        expected.insert(2, "Data")
        assert "citation of the data's authors" in card.split("## Data")[1].split("##")[0]
    else:
        citation = model_zoo.DATA_CITATIONS[data].citation
        assert card.count(citation) == 2                  # in Data and in Citation
        assert card.startswith(f"# m: layernet model trained on {data.upper()}\n")
    assert model_zoo.unfilled_sections(card) == expected
    assert "1,234 parameters (5.0 MB)" in card and "evaluate.py --model m --split val" in card
    if data == "bbbc010":
        assert "Ljosa V" in card and "https://bbbc.broadinstitute.org/BBBC010" in card
    if data == "occ2014":
        assert "Lu Z, Carneiro G, Bradley AP" in card


def test_card_of_a_phase_2_run_gives_the_commands_of_both_phases(tmp_path) -> None:
    from layernet.config import Config

    first, second = tmp_path / "first", tmp_path / "second"
    for run, command in ((first, "python train.py --data bbbc010 --out first"),
                         (second, f"python train.py --init '{first}/best.h5' --out second\n"
                                  "python train.py --resume second")):
        run.mkdir()
        Config(data="bbbc010").save(str(run / runfolder.CONFIG_FILE))
        (run / runfolder.BEST_FILE).write_bytes(b"")
        (run / runfolder.COMMAND_FILE).write_text(command + "\n")
    card = model_zoo.model_card(str(second), "m", runfolder.config_for_model(str(second)), 1, 1)
    assert ("```bash\npython train.py --data bbbc010 --out first\npython train.py --init "
            f"'{first}/best.h5' --out second\npython train.py --resume second\n```") in card
    assert "Training" not in model_zoo.unfilled_sections(card)


# ------------------------------------------------------------------------------------------
# a tiny model trained, published and used by name


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> str:
    """A tiny run trained through train.py's main (so command.txt records its command)."""
    from layernet_commands import train

    run = str(tmp_path_factory.mktemp("zoo") / "run")
    assert train.main([*TINY, "--out", run]) == 0
    return run


@pytest.fixture
def published(trained, tmp_path, monkeypatch) -> dict:
    """``trained`` published as ``tiny`` into a temporary models folder named by
    ``LAYERNET_MODELS``."""
    models = tmp_path / "models"
    monkeypatch.setenv(runfolder.MODELS_ENV, str(models))
    folder = model_zoo.publish(trained, "tiny")
    return {"run": trained, "models": str(models), "folder": folder}


def test_publish_writes_a_small_complete_model_folder(published) -> None:
    run, folder = published["run"], published["folder"]
    assert folder == os.path.join(published["models"], "tiny")
    assert sorted(os.listdir(folder)) == sorted([runfolder.BEST_FILE, runfolder.CONFIG_FILE,
                                                 runfolder.THRESHOLDS_FILE, runfolder.CARD_FILE])
    assert sorted(os.listdir(published["models"])) == ["tiny"]     # no temporary left
    for name in (runfolder.CONFIG_FILE, runfolder.THRESHOLDS_FILE):
        with open(os.path.join(run, name), "rb") as a, open(os.path.join(folder, name), "rb") as b:
            assert a.read() == b.read(), name
    assert model_zoo._same_weights(os.path.join(run, runfolder.BEST_FILE),
                                   os.path.join(folder, runfolder.BEST_FILE))
    assert runfolder.available_models()["tiny"] == folder
    card = open(os.path.join(folder, runfolder.CARD_FILE), encoding="utf-8").read()
    command = open(os.path.join(run, runfolder.COMMAND_FILE), encoding="utf-8").read().strip()
    assert command.startswith("python train.py --data synthetic ") and command in card
    thresholds = runfolder.load_json(os.path.join(run, runfolder.THRESHOLDS_FILE))
    assert thresholds["tuned"]
    assert (f"meanAP {thresholds['val_meanAP']:.4f}, AJI {thresholds['val_AJI']:.4f}"
            in card)
    assert "generated data, no data citation is needed." in card
    assert "UNet-S, 4 base filters, 4-filter heads" in card
    assert "python predict.py --model tiny" in card
    assert "at epoch 1 (the model in this folder)." in card
    assert model_zoo.unfilled_sections(card) == ["Intended use", "Limitations"]


def test_publish_refuses_what_it_should_and_writes_nothing(published, tmp_path) -> None:
    models, folder = published["models"], published["folder"]
    before = os.path.getmtime(os.path.join(folder, runfolder.CARD_FILE))
    with pytest.raises(ModelZooError, match="a model of that name exists"):
        model_zoo.publish(published["run"], "tiny")
    with pytest.raises(ModelZooError, match=r"more than 0.001 MB .*raise --max-mb"):
        model_zoo.publish(published["run"], "small", max_mb=0.001)
    with pytest.raises(ModelZooError, match="a model name is"):
        model_zoo.publish(published["run"], "best.h5")
    with pytest.raises(ModelZooError, match="published model folder already"):
        model_zoo.publish(folder, "again")
    with pytest.raises(ModelZooError, match=r"nothing: model file not found"):
        model_zoo.publish(str(tmp_path / "nothing"), "x")
    assert sorted(os.listdir(models)) == ["tiny"]
    assert os.path.getmtime(os.path.join(folder, runfolder.CARD_FILE)) == before
    # --force replaces it, --card-from fills the sections a person writes
    notes = tmp_path / "notes.md"
    notes.write_text("## Intended use\n\nTesting only.\n\n## Limitations\n\nUntrained.\n")
    model_zoo.publish(published["run"], "tiny", force=True, card_from=str(notes))
    card = open(os.path.join(folder, runfolder.CARD_FILE), encoding="utf-8").read()
    assert "Testing only." in card and "Untrained." in card and FILL_IN not in card
    assert sorted(os.listdir(models)) == ["tiny"]
    last = model_zoo.publish(os.path.join(published["run"], runfolder.LAST_FILE), "tiny-last")
    card = open(os.path.join(last, runfolder.CARD_FILE), encoding="utf-8").read()
    assert "at epoch 1; this folder holds the run's last.h5 instead." in card
    assert model_zoo._same_weights(os.path.join(published["run"], runfolder.LAST_FILE),
                                   os.path.join(last, runfolder.BEST_FILE))


def test_copied_weights_leave_the_optimizer_behind(trained, tmp_path) -> None:
    source = str(tmp_path / "with-optimizer.h5")
    with open(os.path.join(trained, runfolder.BEST_FILE), "rb") as handle:
        open(source, "wb").write(handle.read())
    with h5py.File(source, "a") as handle:  # as a compiled model's model.save writes them
        handle.create_group("optimizer_weights").create_dataset("iterations", data=[7])
        handle.attrs["training_config"] = '{"loss": "x"}'
    copy = str(tmp_path / "copy.h5")
    count = model_zoo.copy_weights(source, copy)
    with h5py.File(copy, "r") as handle:
        assert "optimizer_weights" not in handle and "training_config" not in handle.attrs
        assert "model_config" in handle.attrs
    net, _ = runfolder.load_trained_model(trained)
    assert count == net.count_params()
    assert os.path.getsize(copy) < os.path.getsize(source)
    with pytest.raises(ModelZooError, match="not.*HDF5"):
        model_zoo.copy_weights(os.path.join(trained, runfolder.CONFIG_FILE), copy)


def synthetic_image(path: str, height: int = 72, width: int = 88) -> None:
    from datasets.synthetic import generate_sample

    sample = generate_sample(np.random.default_rng(3), "cells", max(height, width))
    image = (sample.image[:height, :width, 0] * 200).astype(np.uint16)
    tifffile.imwrite(path, image)


def test_predict_by_name_gives_the_files_of_predict_by_path(published, tmp_path) -> None:
    from layernet_commands import predict

    image = str(tmp_path / "plate.tif")
    synthetic_image(image)
    outputs = ["--save-prob", "--save-rois", "--quiet", "--sequential"]
    assert predict.main(["--model", "tiny", image, "--out", str(tmp_path / "name"),
                         *outputs]) == 0
    assert predict.main(["--model", published["run"], image, "--out", str(tmp_path / "path"),
                         *outputs]) == 0
    for suffix in (".layers.tif", ".prob.tif"):
        by_name = tifffile.imread(str(tmp_path / "name" / f"plate{suffix}"))
        by_path = tifffile.imread(str(tmp_path / "path" / f"plate{suffix}"))
        np.testing.assert_array_equal(by_name, by_path)
    stack = tifffile.imread(str(tmp_path / "name" / "plate.layers.tif"))
    assert stack.shape[-2:] == (72, 88)
    if stack.any():  # the ROIs of the Fiji section, by name too
        rois = roifile.roiread(str(tmp_path / "name" / "plate.rois.zip"))
        assert_rois_fill_the_objects(rois, stack.reshape((-1,) + stack.shape[-2:]))
    with pytest.raises(RunFolderError, match=r"^snails: .*models available: [^;]*\btiny\b"):
        predict.main(["--model", "snails", image, "--out", str(tmp_path / "none")])


def test_evaluate_by_name_reports_under_runs(published, tmp_path, monkeypatch) -> None:
    from layernet_commands import evaluate

    monkeypatch.chdir(tmp_path)
    assert evaluate.main(["--model", "tiny", "--split", "val", "--worst", "0"]) == 0
    metrics = json.loads((tmp_path / "runs" / "eval-tiny-synthetic-val" / "metrics.json")
                         .read_text())
    assert metrics["n_images"] >= 1
    assert os.path.samefile(metrics["model"], os.path.join(published["folder"],
                                                           runfolder.BEST_FILE))
    assert sorted(os.listdir(published["folder"])) == sorted([
        runfolder.BEST_FILE, runfolder.CONFIG_FILE, runfolder.THRESHOLDS_FILE,
        runfolder.CARD_FILE])    # nothing written into the model folder


def test_export_by_name(published, tmp_path) -> None:
    from layernet.backends import resolve_onnx_model
    from layernet.export_model import export_model

    out = tmp_path / "serving"
    written = export_model("tiny", "savedmodel", str(out))
    assert os.path.isfile(os.path.join(written, "saved_model.pb"))
    with open(out / runfolder.CONFIG_FILE, "rb") as copy, \
            open(os.path.join(published["folder"], runfolder.CONFIG_FILE), "rb") as original:
        assert copy.read() == original.read()
    with pytest.raises(RunFolderError, match=r"export_model tiny --format onnx$"):
        resolve_onnx_model("tiny")


def test_napari_widget_model_field_takes_a_name(published) -> None:
    """What the widget shows when a name is typed into its model field (without napari's
    window: the runner's reading of the model, which the widget calls)."""
    from layernet.napari.runner import model_defaults

    thresholds = runfolder.load_json(os.path.join(published["folder"],
                                                  runfolder.THRESHOLDS_FILE))
    tau, min_size, description = model_defaults(" tiny ")
    assert (tau, min_size) == (thresholds["tau"], thresholds["min_size"])
    assert description == "UNet-S/4, 4 layers (best.h5)"
    with pytest.raises(RunFolderError, match=r"^snails: .*models available: [^;]*\btiny\b"):
        model_defaults("snails")


def rgb_folder_of_odd_sizes(root) -> str:
    """A folder dataset of 8-bit RGB PNGs with three equal channels, 27 x 45 and 41 x 30
    pixels (smaller than the model's 32 px patches in one side, not multiples of its stride)."""
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "masks"))
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate([(27, 45), (41, 30)] * 2):
        labels = np.zeros((height, width), np.uint16)
        labels[3:12, 3:14] = 1
        labels[15:24, 8:26] = 2
        gray = (30 + 160 * (labels > 0) + rng.integers(0, 40, labels.shape)).astype(np.uint8)
        cv2.imwrite(os.path.join(root, "images", f"n{index}.png"), np.dstack([gray] * 3))
        cv2.imwrite(os.path.join(root, "masks", f"n{index}.png"), labels)
    return str(root)


def test_fine_tuning_a_published_model_on_rgb_images_of_any_size(published, tmp_path, caplog,
                                                                  monkeypatch) -> None:
    from layernet_commands import train

    # the note is logged once per process: an earlier test in this worker may have logged it
    monkeypatch.setattr("layernet.io._grayscale_noted", False)
    data = rgb_folder_of_odd_sizes(tmp_path / "mine")
    out = str(tmp_path / "tuned")
    with caplog.at_level("INFO"):
        assert train.main(["--init", "tiny", "--data", "folder", "--data-dir", data,
                           "--minutes", "10", "--out", out]) == 0
    log = caplog.text
    assert "initialised from tiny" in log and log.count("read as grayscale") == 1
    config = json.loads(open(os.path.join(out, runfolder.CONFIG_FILE)).read())
    published_config = json.loads(open(os.path.join(published["folder"],
                                                    runfolder.CONFIG_FILE)).read())
    assert config["phase"] == published_config["phase"] == "layering"  # fine-tuned, not phase 2
    assert (config["data"], config["data_dir"], config["data_options"]) == ("folder", data, {})
    for field in ("size", "filters", "head_filters", "layers", "channels"):
        assert config[field] == published_config[field], field
    assert config["time_budget_minutes"] == 10
    command = open(os.path.join(out, runfolder.COMMAND_FILE)).read()
    assert command.startswith("python train.py --init tiny --data folder --data-dir ")
    assert os.path.exists(os.path.join(out, runfolder.BEST_FILE))
    # a run's best.h5 (not a published model) still starts phase 2
    args = train.parse_args(["--init", published["run"]])
    assert train.build_config(args).phase == "overlap"
    assert train.build_config(train.parse_args(["--init", "tiny"])).phase == "layering"
    with pytest.raises(RunFolderError, match=r"^snails: .*models available: [^;]*\btiny\b"):
        train.build_config(train.parse_args(["--init", "snails"]))


def test_colour_images_for_a_published_gray_model_fail_on_one_line(published, tmp_path,
                                                                   capsys) -> None:
    from layernet_commands import predict

    colour = np.zeros((40, 40, 3), np.uint8)
    colour[..., 0] = 200
    colour[10:20, 10:20, 2] = 90
    path = str(tmp_path / "colour.png")
    cv2.imwrite(path, colour)
    assert predict.main(["--model", "tiny", path, "--out", str(tmp_path / "out"),
                         "--quiet"]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "colour.png" in errors[0] and "3 channel(s)" in errors[0]
