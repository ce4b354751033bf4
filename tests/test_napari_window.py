"""The napari plugin in a real napari window: registered, docked, drawn, run with a model.

Opt-in: it opens a window (on an X display; CI's is a virtual one) and must run in a process
that has not loaded TensorFlow, since TensorFlow and Mesa's OpenGL driver crash together (the
reason the widget runs the model in a process of its own). CI runs it alone after the suite:

    LAYERNET_NAPARI_WINDOW=1 xvfb-run -a python -m pytest -q tests/test_napari_window.py

Anywhere else (the README's test command included) it is skipped.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

if os.environ.get("LAYERNET_NAPARI_WINDOW") != "1" or not os.environ.get("DISPLAY"):
    pytest.skip("opt-in (LAYERNET_NAPARI_WINDOW=1 on an X display, see the module docstring)",
                allow_module_level=True)
if "tensorflow" in sys.modules:
    pytest.skip("TensorFlow is loaded in this process; with OpenGL it would crash: run this file "
                "alone", allow_module_level=True)

napari = pytest.importorskip("napari")
npe2 = pytest.importorskip("npe2")

from layernet.napari import PLUGIN_NAME, register  # noqa: E402
from layernet.napari.layers import LABELS_OPACITY, id_colours  # noqa: E402
from tests.test_napari_plugin import _cells_image, _wait, prediction  # noqa: E402, F401


@pytest.fixture
def window(qtbot):
    """A napari viewer window, shown (a hidden window's canvas draws nothing), then closed."""
    view = napari.Viewer(show=True)
    yield view
    view.close()


@pytest.fixture
def plugin():
    """The plugin registered with napari's plugin manager for the test."""
    manager = npe2.PluginManager.instance()
    assert register() == PLUGIN_NAME
    assert register() == PLUGIN_NAME  # twice is fine
    yield PLUGIN_NAME
    manager.unregister(PLUGIN_NAME)


def _canvas_has(window, colour: np.ndarray, pixels: int = 50) -> bool:
    picture = window.screenshot(canvas_only=True, flash=False)
    near = np.abs(picture[..., :3] - colour[:3] * 255 * LABELS_OPACITY).max(axis=-1) < 20
    return int(near.sum()) > pixels  # the labels' colour over the black background


def test_plugin_opens_draws_docks_and_runs_a_model_in_a_napari_window(
        prediction, plugin, window, tiny_run, qtbot, request) -> None:
    layers = window.open(prediction["path"], plugin=plugin)
    assert [layer.name for layer in layers] == [
        "cross", "cross slice 1", "cross slice 2", "cross outlines"]
    window.layers["cross"].visible = False
    window.layers["cross outlines"].visible = False
    window.reset_view()
    assert _canvas_has(window, id_colours(prediction["stack"])[3]), "bar missing on the canvas"

    _, widget = window.window.add_plugin_dock_widget(plugin, "Segment overlapping objects")
    request.addfinalizer(widget.runner.close)
    assert [layer.name for layer in widget.viewer.layers] == [  # napari's proxy of the viewer
        layer.name for layer in window.layers]
    assert widget.image.value is window.layers["cross"]

    # the model runs in its own process: napari's canvas (OpenGL) and TensorFlow never meet
    for layer in list(window.layers):
        layer.visible = False
    window.add_image(_cells_image(), name="cells")
    widget.image.value = window.layers["cells"]
    widget.model.line_edit.value = tiny_run
    widget.tau.value, widget.min_size.value = 0.45, 5
    assert widget.start() is not None
    _wait(qtbot, widget)
    outcome = widget.last_outcome
    assert outcome.error is None and "tensorflow" not in sys.modules, outcome.error
    stack = outcome.stack
    names = [layer.name for layer in window.layers if layer.name.startswith("cells ")]
    assert names[-1] == "cells outlines" and len(names) >= 2
    if stack.max() > 0:  # the canvas draws the largest object, its slice alone shown
        ids, counts = np.unique(stack[stack > 0], return_counts=True)
        label = int(ids[np.argmax(counts)])
        shown = f"cells slice {int(np.nonzero((stack == label).any(axis=(1, 2)))[0][0]) + 1}"
        for layer in window.layers:
            layer.visible = layer.name == shown
        window.reset_view()
        assert _canvas_has(window, id_colours(stack)[label], 5)
