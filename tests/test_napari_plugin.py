"""The napari plugin (layernet.napari): manifest, reader, dock widget; headless.

Skipped when napari is not installed (requirements-napari.txt; CI installs it). These tests need
no display and no OpenGL: layers go into napari's viewer model (``napari.components.ViewerModel``,
everything of a viewer but the window) and the widget's Qt controls run on Qt's offscreen
platform (without a display), with pytest-qt's ``qtbot`` running the event loop. A real viewer
window is tested in tests/test_napari_window.py.

napari's own pytest plugin is switched off for the suite (pytest.ini): it would add autouse
fixtures to every test.
"""

from __future__ import annotations

import os
import threading
import time

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")
npe2 = pytest.importorskip("npe2")

from skimage.draw import disk, line  # noqa: E402

from layernet.io import write_image_atomic, write_label_stack  # noqa: E402
from layernet.napari import (MANIFEST, PLUGIN_NAME, PredictionReadError,  # noqa: E402
                             napari_get_reader, open_prediction, read_prediction, register)
from layernet.napari.layers import id_colours, prediction_layer_data  # noqa: E402

SHAPE = (48, 64)


def crossing_stack() -> np.ndarray:
    """Two objects that cross (a thick diagonal line and a bar), each in its own slice, plus a
    round object beside the bar in the first slice."""
    stack = np.zeros((2,) + SHAPE, dtype=np.uint16)
    bar = np.zeros(SHAPE, bool)
    bar[20:27, 4:60] = True
    diagonal = np.zeros(SHAPE, bool)
    for shift in range(-3, 4):
        rows, cols = line(2, 10 + shift, 45, 50 + shift)
        diagonal[rows, cols] = True
    rows, cols = disk((8, 52), 5, shape=SHAPE)
    stack[0][bar] = 3
    stack[0][rows, cols] = 7
    stack[1][diagonal] = 5
    assert (bar & diagonal).sum() > 20  # they really cross
    return stack


@pytest.fixture
def viewer(qtbot):
    """napari's viewer model: layers, dims, opening files, no window (no OpenGL needed)."""
    return napari.components.ViewerModel()


def _shown(start: int) -> list[tuple[str, str]]:
    from napari.utils.notifications import notification_manager

    return [(str(record.severity), record.message)
            for record in notification_manager.records[start:]]


def _records() -> int:
    from napari.utils.notifications import notification_manager

    return len(notification_manager.records)


@pytest.fixture
def prediction(tmp_path):
    """``cross.layers.tif`` (crossing_stack) and its input image ``cross.png`` beside it."""
    stack = crossing_stack()
    path = tmp_path / "cross.layers.tif"
    write_label_stack(path, stack)
    image = (stack.max(axis=0) > 0).astype(np.uint16) * 900 + 100
    write_image_atomic(tmp_path / "cross.png", image)
    return {"path": str(path), "stack": stack, "image": image}


def test_manifest_is_valid_npe2_and_its_commands_import() -> None:
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == PLUGIN_NAME
    manifest.validate_imports()  # every python_name resolves to a callable
    reader = manifest.contributions.readers[0]
    assert "*.layers.tif" in reader.filename_patterns and reader.accepts_directories
    assert [widget.display_name for widget in manifest.contributions.widgets] == [
        "Segment overlapping objects"]


def test_reader_gives_one_labels_layer_per_slice_and_outlines_that_cover_the_objects(
        prediction, viewer) -> None:
    stack = prediction["stack"]
    reader = napari_get_reader(prediction["path"])
    assert reader is read_prediction
    layers = open_prediction(viewer, prediction["path"])
    assert [(layer.name, type(layer).__name__) for layer in layers] == [
        ("cross", "Image"), ("cross slice 1", "Labels"), ("cross slice 2", "Labels"),
        ("cross outlines", "Shapes")]
    image, first, second, outlines = layers
    np.testing.assert_array_equal(image.data, prediction["image"])
    np.testing.assert_array_equal(first.data, stack[0])
    np.testing.assert_array_equal(second.data, stack[1])

    # napari's own rasterisation of every polygon gives back exactly the object's pixels
    ids = np.asarray(outlines.features["id"])
    assert sorted(ids) == [3, 5, 7] and outlines.shape_type == ["polygon"] * 3
    masks = outlines.to_masks(mask_shape=SHAPE)
    for label in (3, 5, 7):
        union = np.any(masks[ids == label], axis=0)
        np.testing.assert_array_equal(union, (stack == label).any(axis=0), err_msg=str(label))
    np.testing.assert_array_equal(np.asarray(outlines.features["slice"]),
                                  [1 if label in (3, 7) else 2 for label in ids])
    # the outlines of the two crossing objects overlap
    assert (masks[ids == 3][0] & masks[ids == 5][0]).sum() > 20

    # one colour per object in the Labels layers and the outlines, distinct between objects
    colours = id_colours(stack)
    for label, edge in zip(ids, outlines.edge_color):
        np.testing.assert_allclose(edge, colours[label], atol=1e-6)
        layer = first if label in (3, 7) else second
        np.testing.assert_allclose(layer.colormap.map(np.array([label]))[0], colours[label],
                                   atol=1e-6)
    assert len({tuple(np.round(colours[label], 3)) for label in (3, 5, 7)}) == 3
    np.testing.assert_allclose(first.colormap.map(np.array([0]))[0][3], 0)  # background clear


def test_plugin_registered_opens_files_through_napari(prediction, viewer) -> None:
    manager = npe2.PluginManager.instance()
    register()
    try:
        layers = viewer.open(prediction["path"], plugin=PLUGIN_NAME)
        assert [layer.name for layer in layers] == [
            "cross", "cross slice 1", "cross slice 2", "cross outlines"]
        with pytest.raises(Exception, match="empty.layers.tif"):
            empty = os.path.join(os.path.dirname(prediction["path"]), "empty.layers.tif")
            open(empty, "wb").close()
            viewer.open(empty, plugin=PLUGIN_NAME)
    finally:
        manager.unregister(PLUGIN_NAME)


def test_reader_of_a_prediction_folder_hides_all_but_the_first(prediction, tmp_path) -> None:
    stack = prediction["stack"]
    write_label_stack(tmp_path / "b.layers.tif", stack[::-1])
    (tmp_path / "b.overlay.png").write_bytes(b"not read")
    layers = read_prediction(str(tmp_path))
    names = [kwargs["name"] for _, kwargs, _ in layers]
    assert names == ["b slice 1", "b slice 2", "b outlines",  # no b.png beside b.layers.tif
                     "cross", "cross slice 1", "cross slice 2", "cross outlines"]
    assert [kwargs["visible"] for _, kwargs, _ in layers] == [True] * 3 + [False] * 4
    assert napari_get_reader(str(tmp_path)) is read_prediction
    assert napari_get_reader(prediction["path"].replace(".layers.tif", ".png")) is None


def test_reader_errors_name_the_file_on_one_line(tmp_path) -> None:
    import tifffile

    empty = tmp_path / "empty.layers.tif"
    empty.write_bytes(b"")
    text = tmp_path / "text.layers.tif"
    text.write_text("not a tiff\n")
    twice = tmp_path / "twice.layers.tif"
    stack = np.zeros((2, 8, 8), np.uint16)
    stack[0, :2] = 1
    stack[1, 5:] = 1  # id 1 in two slices
    tifffile.imwrite(twice, stack)
    floats = tmp_path / "floats.layers.tif"
    tifffile.imwrite(floats, np.full((2, 8, 8), 0.5, np.float32))
    for path in (empty, text, twice, floats, tmp_path / "missing.layers.tif"):
        with pytest.raises(PredictionReadError) as error:
            read_prediction(str(path))
        message = str(error.value)
        assert message.startswith(str(path)) and "\n" not in message, message
    folder = tmp_path / "nothing"
    folder.mkdir()
    with pytest.raises(PredictionReadError, match="nothing: folder holds no"):
        read_prediction(str(folder))
    assert napari_get_reader(str(folder)) is None


def test_stack_without_objects_opens_with_a_warning(tmp_path, viewer) -> None:
    path = tmp_path / "blank.layers.tif"
    write_label_stack(path, np.zeros((8, 20, 30), np.uint16))
    with pytest.warns(UserWarning, match="blank.layers.tif: the prediction holds no objects"):
        layers = open_prediction(viewer, str(path))
    assert [layer.name for layer in layers] == ["blank slice 1", "blank outlines"]
    assert len(layers[1].data) == 0 and not layers[0].data.any()


def test_layer_data_follow_the_image_layer_scale_and_all_slices_on_request() -> None:
    stack = np.zeros((4,) + SHAPE, np.uint16)
    stack[:2] = crossing_stack()
    spatial = {"scale": (0.5, 0.5), "translate": (10.0, 0.0)}
    layers = prediction_layer_data(stack, "x", all_slices=True, spatial=spatial)
    assert [kwargs["name"] for _, kwargs, _ in layers] == [
        "x slice 1", "x slice 2", "x slice 3", "x slice 4", "x outlines"]
    assert all(kwargs["scale"] == (0.5, 0.5) and kwargs["translate"] == (10.0, 0.0)
               for _, kwargs, _ in layers)


def _cells_image() -> np.ndarray:
    from datasets.synthetic import generate_sample

    sample = generate_sample(np.random.default_rng(5), "cells", 96)
    return (sample.image[..., 0] * 200).astype(np.uint16)


def _wait(qtbot, widget, timeout: float = 90.0) -> None:
    """Run the event loop until the widget's worker has finished (its ``finished`` signal,
    connected before the worker started, resets ``running``)."""
    qtbot.waitUntil(lambda: not widget.running, timeout=int(timeout * 1000))


def test_widget_runs_the_model_in_a_worker_and_adds_the_layers(tiny_run, viewer, qtbot,
                                                                request) -> None:
    from qtpy.QtCore import QTimer

    from layernet import runfolder
    from layernet.batch_predict import load_predictor
    from layernet.io import as_channels
    from layernet.napari.widget import PredictWidget
    from layernet.tiling import predict_image

    image = _cells_image()
    viewer.add_image(image, name="cells")
    widget = PredictWidget(viewer, model=tiny_run)
    request.addfinalizer(widget.runner.close)
    config = runfolder.config_for_model(runfolder.resolve_model_path(tiny_run))
    assert widget.image.value is viewer.layers["cells"]
    assert widget.tau.value == pytest.approx(config.tau) and widget.min_size.value == config.min_size
    widget.tau.value, widget.min_size.value = 0.45, 5

    progress: list[tuple[int, int, str, bool]] = []
    widget._relay.progress.connect(lambda done, total, what: progress.append(
        (done, total, what, threading.current_thread() is threading.main_thread())))
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(20)
    worker = widget.start()
    assert worker is not None and widget.running  # start() returned before the prediction
    assert not widget.run_button.enabled and widget.cancel_button.enabled
    _wait(qtbot, widget)
    timer.stop()

    outcome = widget.last_outcome
    assert outcome is not None and outcome.error is None, outcome.error
    # the GUI thread kept running its event loop while the model loaded and predicted
    assert len(ticks) >= 10, (len(ticks), outcome.seconds)
    stages = [what for _, _, what, _ in progress]
    assert stages[0] == "checking the model" and progress[-1][:3] == (3, 3, "done")
    assert "loading the model" in stages and "running the network" in stages
    assert all(in_main for *_, in_main in progress)  # delivered to the GUI thread
    assert widget.progress.value == widget.progress.max == 3 and widget.run_button.enabled
    # TensorFlow ran in a process of its own, which stays for the next run
    assert widget.runner.process.is_alive() and widget.runner.process.pid != os.getpid()

    predictor = load_predictor(tiny_run, config_changes={"tau": 0.45, "min_size": 5})
    expected = predict_image(predictor, as_channels(image, expected_channels=1)).stack
    np.testing.assert_array_equal(outcome.stack, expected)
    filled = [index for index in range(expected.shape[0]) if expected[index].any()] or [0]
    names = [f"cells slice {index + 1}" for index in filled] + ["cells outlines"]
    assert [layer.name for layer in viewer.layers] == ["cells"] + names
    for index in filled:
        np.testing.assert_array_equal(viewer.layers[f"cells slice {index + 1}"].data,
                                      expected[index])
    assert len(viewer.layers["cells outlines"].data) >= len(np.unique(expected)) - 1

    # other thresholds: Algorithm 1 again on the kept maps, and the layers are replaced
    widget.min_size.value = 10_000
    worker = widget.start()
    _wait(qtbot, widget)
    assert widget.last_outcome.reused_maps and widget.last_outcome.stack.max() == 0
    assert [layer.name for layer in viewer.layers] == ["cells", "cells slice 1",
                                                      "cells outlines"]

    # Cancel stops the process; the next run starts a new one and loads the model again
    pid = widget.runner.process.pid
    widget.tta.value = True  # not the kept maps: the network runs
    widget.start()
    widget.cancel()
    _wait(qtbot, widget)
    assert widget.last_outcome.cancelled and widget.runner.process is None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # ended and reaped
    assert widget.status.value.startswith("cancelled")


def test_widget_reports_bad_input_as_notifications(tiny_run, viewer, qtbot, tmp_path,
                                                   request) -> None:
    from layernet.napari.widget import PredictWidget

    widget = PredictWidget(viewer, model="")
    request.addfinalizer(widget.runner.close)
    start = _records()
    assert widget.start() is None
    assert any("no image layer" in message for _, message in _shown(start))

    viewer.add_image(_cells_image(), name="cells")
    widget.model.line_edit.value = str(tmp_path / "no-such-run")
    assert "no-such-run" in widget.status.value  # checked while typing, without a notification
    start = _records()
    worker = widget.start()
    _wait(qtbot, widget)
    shown = _shown(start)
    assert len(shown) == 1 and shown[0][0] == "error", shown
    assert shown[0][1].startswith("layernet: ") and "no-such-run" in shown[0][1]
    assert "\n" not in shown[0][1] and "Traceback" not in shown[0][1]

    # a colour image for a grayscale model: the message names the layer
    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), name="colour",
                     rgb=True)
    widget.image.value = viewer.layers["colour"]
    widget.model.line_edit.value = tiny_run
    start = _records()
    worker = widget.start()
    _wait(qtbot, widget)
    shown = _shown(start)
    assert len(shown) == 1 and shown[0][0] == "error" and "colour" in shown[0][1], shown
    assert [layer.name for layer in viewer.layers] == ["cells", "colour"]  # nothing added
    assert widget.runner.process is None  # both checked before TensorFlow was started


def test_widget_takes_a_model_by_name_and_defaults_to_one(tiny_run, viewer, tmp_path,
                                                          monkeypatch, request) -> None:
    """Without runs/ the widget starts with the first model available by name; a name typed
    into the model field sets the model's thresholds, an unknown one lists the names."""
    import shutil

    from layernet import runfolder
    from layernet.napari.widget import PredictWidget

    models = tmp_path / "models"
    folder = models / "zz-tiny"
    folder.mkdir(parents=True)
    for name in (runfolder.CONFIG_FILE, runfolder.BEST_FILE, runfolder.THRESHOLDS_FILE):
        shutil.copy(os.path.join(tiny_run, name), folder / name)
    monkeypatch.setenv(runfolder.MODELS_ENV, str(models))
    monkeypatch.chdir(tmp_path)  # no runs/ here
    widget = PredictWidget(viewer)
    request.addfinalizer(widget.runner.close)
    assert widget.model_text() == "zz-tiny"
    config = runfolder.config_for_model(tiny_run)
    assert (widget.tau.value, widget.min_size.value) == (config.tau, config.min_size)
    assert widget.status.value.startswith(f"UNet-S/8, {config.layers} layers (best.h5)")
    widget.model.line_edit.value = "snails"
    assert widget.status.value.startswith("snails: ") and "zz-tiny" in widget.status.value
