"""Network backends: what runs the network's forward pass for a :class:`~layernet.inference.Predictor`.

A backend is a callable that takes a batch of already normalised images ``(B, H, W, C)``
(float32, ``H`` and ``W`` multiples of ``config.stride``) and returns the network's output maps
by name, as float32 NumPy arrays: ``{"foreground": (B, H, W, 1), "layering": (B, H, W, N)}``, or
``{"semantic": (B, H, W, C)}`` for the baselines. The :class:`~layernet.inference.Predictor`
pads, tiles, applies test-time augmentation and post-processes around it, so every backend
shares that code.

* :class:`KerasBackend`: the Keras model (the default; any precision).
* :class:`OnnxBackend`: an ONNX file written by ``python -m layernet.export_model RUN --format
  onnx`` (:mod:`layernet.model_formats`), run by ONNX Runtime in float32. It needs the optional
  packages of ``requirements-export.txt``.

Where the ONNX file of a model lives (:func:`resolve_onnx_model`): ``RUN/model.onnx`` beside the
run's ``config.json`` (the exporter's default), or any folder or ``.onnx`` file with a
``config.json`` beside it (the exporter's ``--out DIR``).
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from layernet.config import Config

logger = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "EXPORT_REQUIREMENTS",
    "ONNX_FILE",
    "Backend",
    "KerasBackend",
    "MissingPackageError",
    "OnnxBackend",
    "require",
    "resolve_onnx_model",
]

BACKENDS = ("keras", "onnx")
"""Names of the backends ``predict.py --backend`` accepts."""

ONNX_FILE = "model.onnx"
"""Name of the ONNX file in a run folder or an export folder."""

EXPORT_REQUIREMENTS = "requirements-export.txt"
"""The requirements file that installs the optional packages of export and the ONNX backend."""


class MissingPackageError(RuntimeError):
    """An optional package is not installed; the message names it and the requirements file."""


def require(module: str, package: str | None = None) -> ModuleType:
    """Import an optional module, or fail with one line naming the package to install.

    Parameters
    ----------
    module : str
        The module to import, e.g. ``"onnxruntime"`` or ``"bioimageio.spec"``.
    package : str or None, optional
        Its package name on PyPI when it differs from ``module``.

    Returns
    -------
    types.ModuleType
        The imported module.

    Raises
    ------
    MissingPackageError
        If the module cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingPackageError(
            f"this needs the optional package {package or module!r}, which is not installed "
            f"({error}); install it with: pip install -r {EXPORT_REQUIREMENTS}") from None


class Backend(Protocol):
    """What a :class:`~layernet.inference.Predictor` calls for the network's forward pass."""

    name: str

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Output maps by name (float32) of a normalised, stride-padded ``(B, H, W, C)`` batch."""
        ...


class KerasBackend:
    """The Keras model in inference mode.

    Parameters
    ----------
    net : keras.Model
        Network built by :func:`layernet.model.build_model`.
    """

    name = "keras"

    def __init__(self, net: Any) -> None:
        import tensorflow as tf

        self.net = net
        # Traced once per input shape: Keras' bilinear up-sampling needs static spatial sizes.
        # Shapes repeat (tiles, validation images), so retracing is rare.
        self._forward = tf.function(lambda x: net(x, training=False), autograph=False)
        self._tf = tf

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Output maps by name (float32) of a normalised, stride-padded ``(B, H, W, C)`` batch."""
        outputs = self._forward(self._tf.convert_to_tensor(batch, self._tf.float32))
        return {name: np.asarray(value.numpy(), np.float32) for name, value in outputs.items()}


class OnnxBackend:
    """An exported ONNX model run by ONNX Runtime (CPU, float32).

    Parameters
    ----------
    path : str
        The ``.onnx`` file (written by :func:`layernet.model_formats.export_onnx`).
    threads : int or None, optional
        ONNX Runtime's intra-op threads (default: its own choice, one per core).

    Raises
    ------
    MissingPackageError
        If ``onnxruntime`` is not installed.
    ValueError
        If the file cannot be loaded as an ONNX model.
    """

    name = "onnx"

    def __init__(self, path: str, threads: int | None = None) -> None:
        ort = require("onnxruntime")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        # ONNX Runtime prints its own warnings to stderr unless told otherwise (3 = errors only).
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(path, sess_options=options,
                                                providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            detail = " ".join(str(error).split())[:300]
            raise ValueError(f"{path}: cannot load the ONNX model ({detail})") from None
        self.path = path
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]
        logger.info("ONNX Runtime %s runs %s", ort.__version__, path)

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Output maps by name (float32) of a normalised, stride-padded ``(B, H, W, C)`` batch."""
        values = self.session.run(self.output_names,
                                  {self.input_name: np.ascontiguousarray(batch, np.float32)})
        return {name: np.asarray(value, np.float32)
                for name, value in zip(self.output_names, values)}


def resolve_onnx_model(path: str) -> tuple[str, Config]:
    """The ONNX file of a model and the configuration beside it.

    Parameters
    ----------
    path : str
        A run folder or an export folder (``<path>/model.onnx``), a model file of a run folder
        (``best.h5``: the ``model.onnx`` beside it), an ``.onnx`` file, or a model's name
        (:func:`layernet.runfolder.locate_model`); in every case a ``config.json`` must be in
        the same folder.

    Returns
    -------
    onnx_path : str
        The ONNX file.
    config : Config
        The configuration it was exported with (with the run's tuned thresholds, if any).

    Raises
    ------
    layernet.runfolder.RunFolderError
        If there is no such file (the message gives the export command) or no ``config.json``.
    """
    from layernet.runfolder import RunFolderError, config_for_model, locate_model

    name, path = path, locate_model(path)
    if path.endswith(".onnx"):
        onnx_path = path
    else:
        folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        onnx_path = os.path.join(folder, ONNX_FILE)
        if not os.path.isfile(onnx_path):
            raise RunFolderError(
                f"{path}: no {ONNX_FILE} for the ONNX backend; export it first with: "
                f"python -m layernet.export_model {name} --format onnx")
    return onnx_path, config_for_model(onnx_path)
