"""The napari plugin (layernet.napari): manifest, reader, dock widget; headless.

Skipped when napari is not installed (requirements-napari.txt; CI installs it). The reader and
widget tests need no display and no OpenGL: layers go into napari's viewer model
(``napari.components.ViewerModel``, everything of a viewer but the window) and the widget's Qt
controls run on Qt's offscreen platform, with pytest-qt's ``qtbot`` running the event loop. The
one test of a real viewer window (plugin registered with napari, widget docked through its
Plugins entry, layers drawn by the OpenGL canvas) needs an X display: CI runs it under
``xvfb-run`` (.ci/run); without a display it is skipped.

napari's own pytest plugin is switched off for the suite (pytest.ini): it would add autouse
fixtures to every test.
"""

from __future__ import annotations

import os
import threading


if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
# napari colours labels and triangulates shapes with numba when it is installed (as with
# requirements-bench.txt), compiling its loops on first use: 10-40 s once per installation.
# Its NumPy backends give the same layers at once (read when napari's settings load).
os.environ.setdefault("NAPARI_COLORMAP_BACKEND", "pure_python")
os.environ.setdefault("NAPARI_TRIANGULATION_BACKEND", "pure_python")

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")
npe2 = pytest.importorskip("npe2")

from skimage.draw import disk, line  # noqa: E402

from layernet.io import write_image_atomic, write_label_stack  # noqa: E402
from layernet.napari import (MANIFEST, PLUGIN_NAME, PredictionReadError,  # noqa: E402
                             napari_get_reader, open_prediction, read_prediction, register)
from layernet.napari.layers import (LABELS_OPACITY, id_colours,  # noqa: E402
                                    prediction_layer_data)

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
