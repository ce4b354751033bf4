"""napari plugin: overlapping instances stay visible (an optional part: the extra ``napari``).

napari's Labels layers cannot overlap; a layernet label stack never overlaps within a slice. So a
prediction is shown as one Labels layer per slice and one Shapes layer with every object's
outline on top (:mod:`layernet.napari.layers`), every object in one colour in all of them.

* :mod:`layernet.napari.reader` opens ``*.layers.tif`` files of ``predict.py`` and folders of
  them (:func:`open_prediction`, or napari's File > Open once the plugin is registered);
* :mod:`layernet.napari.widget` is a dock widget that runs a model on an image layer in a worker
  thread, with Algorithm 1's ``tau`` and ``min_size`` as controls (imports Qt, so it is not
  imported here);
* ``napari.yaml`` is the npe2 manifest (:data:`MANIFEST`). napari finds it in an installed
  layernet by the package's entry point (``napari.manifest`` in ``pyproject.toml``);
  :func:`register` registers it in the running napari by hand, where layernet is imported from a
  folder without being installed.

This package imports napari only in :func:`register` and in the widget module. Nothing in this
module imports TensorFlow (nor do the reader, the layers and the runner, whose process does):
napari's process must not load it (see :mod:`layernet.napari.runner`).
"""

from __future__ import annotations

import os

from layernet.napari.layers import LayerData, prediction_layer_data
from layernet.napari.reader import (PredictionReadError, add_layer_data, napari_get_reader,
                                    open_prediction, read_prediction)

__all__ = [
    "MANIFEST",
    "PLUGIN_NAME",
    "LayerData",
    "PredictionReadError",
    "add_layer_data",
    "napari_get_reader",
    "open_prediction",
    "prediction_layer_data",
    "read_prediction",
    "register",
]

MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "napari.yaml")
"""Path of the plugin's npe2 manifest."""

PLUGIN_NAME = "layernet"
"""The plugin's name in napari (``viewer.open(path, plugin="layernet")``)."""


def register() -> str:
    """Register the plugin's manifest with napari's plugin manager (npe2), once.

    After this, napari's File > Open reads ``*.layers.tif`` with the plugin, and Plugins >
    layernet opens the widget, as napari does by itself for an installed layernet (its entry
    point); nothing is done when napari already has the plugin.

    Returns
    -------
    str
        The plugin name, :data:`PLUGIN_NAME`.
    """
    from npe2 import PluginManager, PluginManifest

    manager = PluginManager.instance()
    if PLUGIN_NAME not in {manifest.name for manifest in manager.iter_manifests()}:
        manager.register(PluginManifest.from_file(MANIFEST))
    return PLUGIN_NAME
