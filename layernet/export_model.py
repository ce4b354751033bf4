"""Export a trained model for other tools: TensorFlow Serving, ONNX Runtime, bioimage.io.

    python -m layernet.export_model RUN --format onnx
    python -m layernet.export_model RUN --format savedmodel --out serving/layernet/1
    python -m layernet.export_model RUN --format bioimageio --author "Ada Lovelace" --out pkg

RUN is a run folder, a model file (``best.h5``) or a pretrained model's name (``worms``), as
for ``predict.py --model``. Every format
holds the network alone, computing in float32: it takes images already normalised as in
training (the run's percentiles), float32 ``(B, H, W, C)`` with H and W multiples of the
network's stride (8 for UNet-S, 16 for M, 32 for L), and returns the probability maps. The
post-processing into instances (Algorithm 1) is not part of it.

Formats:

  onnx        model.onnx (tf2onnx, dynamic batch, height and width), for ONNX Runtime and
              ``predict.py --backend onnx``, which normalises, tiles, applies --tta and
              post-processes exactly as with the Keras model.
  savedmodel  a TensorFlow SavedModel with a ``serving_default`` signature (input ``image``,
              outputs ``foreground`` and ``layering``, or the baselines' ``semantic``), for
              TensorFlow Serving (which expects ``<model>/<version>/``, e.g. --out m/1).
  bioimageio  a bioimage.io model package (zip; rdf.yaml format 0.5: both weight formats,
              percentile normalisation as preprocessing, test tensors, a README with the
              post-processing the consumer must apply), validated and tested with
              bioimageio.core before it is written. Its one output ``maps`` holds the
              foreground in channel 0 and the layers after it (bioimage.io takes a
              SavedModel's outputs by position, and TensorFlow does not keep their order).

Where it goes: without --out, into the run folder (RUN/model.onnx, where ``predict.py --model
RUN --backend onnx`` looks; RUN/saved_model/; RUN/bioimageio.zip). With --out DIR, into a new
folder DIR (it must not exist or be empty, unless --force): DIR/model.onnx or the SavedModel
with the run's config.json beside it (so ``predict.py --model DIR --backend onnx`` works too),
or DIR/bioimageio.zip. Outputs are written to a temporary name and renamed, never left
half-written.

After the conversion the exported model is run on a random batch and compared with the Keras
model; the largest difference is logged (an export that differs by more than --tolerance
fails). onnx and bioimageio need the optional packages of requirements-export.txt (tf2onnx,
onnx, onnxruntime, bioimageio.spec, bioimageio.core; a missing one is named on one line);
savedmodel needs only the core install.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Any

from layernet.cli import quiet_tensorflow, run_main, setup_logging
from layernet.config import Config
from layernet.files import atomic_output

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TOLERANCE",
    "ExportOptions",
    "FORMATS",
    "default_output",
    "export_model",
    "main",
]

FORMATS = ("savedmodel", "onnx", "bioimageio")
"""The ``--format`` choices."""

DEFAULT_TOLERANCE = 1e-4
"""Largest absolute difference from the Keras maps that an export may show on the check batch."""

SAVEDMODEL_FOLDER = "saved_model"
BIOIMAGEIO_FILE = "bioimageio.zip"
_RUN_FILES = ("config.json", "thresholds.json")


@dataclass(frozen=True)
class ExportOptions:
    """Settings of an export besides the run, the format and the destination.

    Attributes
    ----------
    force : bool
        Replace an existing output.
    opset : int
        ONNX opset (formats ``onnx`` and ``bioimageio``).
    tolerance : float
        Largest absolute difference from the Keras maps accepted on the check batch.
    sample : str or None
        bioimage.io: an image file for the test tensors and the cover (default: a synthetic
        image of bright discs).
    authors : tuple of str
        bioimage.io: the package's authors (at least one).
    license : str
        bioimage.io: SPDX licence identifier of the weights.
    name : str or None
        bioimage.io: the model's name (default from the run).
    test : bool
        bioimage.io: run ``bioimageio.core``'s model test before writing the package.
    """

    force: bool = False
    opset: int = 17
    tolerance: float = DEFAULT_TOLERANCE
    sample: str | None = None
    authors: tuple[str, ...] = field(default_factory=tuple)
    license: str = "CC-BY-4.0"
    name: str | None = None
    test: bool = True


def default_output(run_dir: str, fmt: str) -> str:
    """Where an export goes without ``--out``: ``model.onnx``, ``saved_model/`` or
    ``bioimageio.zip`` in the run folder ``run_dir``."""
    from layernet.backends import ONNX_FILE

    names = {"onnx": ONNX_FILE, "savedmodel": SAVEDMODEL_FOLDER, "bioimageio": BIOIMAGEIO_FILE}
    return os.path.join(run_dir, names[fmt])


def _check_destination(path: str, is_folder: bool, force: bool) -> None:
    """Refuse an existing output unless ``force``; a folder may exist if it is empty."""
    if not os.path.exists(path):
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent) and os.path.exists(parent):
            raise ValueError(f"{path}: {parent} is not a folder")
        return
    if is_folder and not os.path.isdir(path):
        raise ValueError(f"{path}: exists and is not a folder")
    if not is_folder and os.path.isdir(path):
        raise ValueError(f"{path}: is a folder")
    if force or (is_folder and not os.listdir(path)):
        return
    what = "exists and is not empty" if is_folder else "exists"
    raise ValueError(f"{path}: {what}; pass --force to replace it")


def _require_packages(fmt: str) -> None:
    """Fail early, before loading anything, when a package that ``fmt`` needs is missing."""
    from layernet.backends import require

    needed = {"savedmodel": (), "onnx": ("tf2onnx", "onnx", "onnxruntime"),
              "bioimageio": ("tf2onnx", "onnx", "onnxruntime", "bioimageio.spec",
                             "bioimageio.core")}
    for module in needed[fmt]:
        require(module)


def export_model(run: str, fmt: str, out: str | None = None,
                 options: ExportOptions | None = None) -> str:
    """Export the model of a run in one of :data:`FORMATS` (module docstring).

    Parameters
    ----------
    run : str
        Run folder, model file (``best.h5``) or a pretrained model's name.
    fmt : str
        ``"savedmodel"``, ``"onnx"`` or ``"bioimageio"``.
    out : str or None, optional
        A new folder for the export (with the run's ``config.json`` beside the model); default
        :func:`default_output` in the run folder.
    options : ExportOptions, optional
        Overwriting, opset, tolerance and the bioimage.io metadata.

    Returns
    -------
    str
        The path written: the ``.onnx`` or ``.zip`` file, or the SavedModel folder.

    Raises
    ------
    ValueError
        For an unknown format, a missing or unusable run, an existing output without
        ``force``, or an export whose maps differ from the Keras model's by more than
        ``options.tolerance``.
    layernet.backends.MissingPackageError
        If an optional package the format needs is not installed.
    """
    from layernet import runfolder
    from layernet.backends import ONNX_FILE

    options = options or ExportOptions()
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    model_path = runfolder.resolve_model_path(run)
    run_dir = os.path.dirname(os.path.abspath(model_path))
    config = runfolder.config_for_model(model_path)  # readable, before any heavy work
    if fmt == "bioimageio" and not options.authors:
        raise ValueError("a bioimage.io package needs at least one author (--author NAME)")
    in_run = out is None
    destination = default_output(run_dir, fmt) if in_run else out
    folder_output = not in_run or fmt == "savedmodel"
    _check_destination(destination, folder_output, options.force)
    _require_packages(fmt)
    if fmt == "bioimageio":
        from layernet.bioimage_package import PackageMetadata, check_metadata

        metadata = PackageMetadata(
            name=options.name or _model_name(run_dir, config), authors=options.authors,
            license=options.license, run=os.path.basename(run_dir))
        check_metadata(metadata)
        if options.sample is not None and not os.path.isfile(options.sample):
            raise ValueError(f"{options.sample}: --sample image not found")

    file_name = {"onnx": ONNX_FILE, "bioimageio": BIOIMAGEIO_FILE}.get(fmt)
    written = destination if in_run or file_name is None else os.path.join(destination, file_name)
    net, config = runfolder.load_trained_model(model_path, precision="float32")
    os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
    with atomic_output(destination, folder=folder_output) as target:
        if not in_run and fmt != "bioimageio":  # the package holds what it needs
            for name in _RUN_FILES:
                if os.path.exists(os.path.join(run_dir, name)):
                    shutil.copy2(os.path.join(run_dir, name), os.path.join(target, name))
        path = target if in_run or file_name is None else os.path.join(target, file_name)
        if fmt == "savedmodel":
            _export_savedmodel_checked(net, config, path, options.tolerance)
        elif fmt == "onnx":
            _export_onnx_checked(net, config, path, options)
        else:
            from layernet.bioimage_package import write_package

            write_package(net, config, path, metadata, sample=options.sample,
                          opset=options.opset, test=options.test, run_dir=run_dir)
    logger.info("exported %s -> %s", model_path, written)
    return written


def _model_name(run_dir: str, config: Config) -> str:
    """A default bioimage.io name: ``layernet <method> UNet-<size> <run folder>``."""
    from layernet.methods import get_method

    method = get_method(config.method).display_name()
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")
    run = "".join(char if char in allowed else "-" for char in os.path.basename(run_dir))
    return f"layernet {method} UNet-{config.size} {run}"[:64].strip()


def _checked(difference: float, what: str, tolerance: float) -> None:
    if not difference <= tolerance:
        raise ValueError(f"the exported {what} differs from the Keras model by {difference:.3g} "
                         f"(more than --tolerance {tolerance:g}); not written")
    logger.info("%s checked: largest difference from the Keras maps %.2g", what, difference)


def _export_savedmodel_checked(net: Any, config: Config, path: str, tolerance: float) -> None:
    """:func:`layernet.model_formats.export_savedmodel`, then compare its signature's maps."""
    import numpy as np
    import tensorflow as tf

    from layernet.model_formats import INPUT_NAME, export_savedmodel, largest_difference

    export_savedmodel(net, config, path)
    signature = tf.saved_model.load(path).signatures["serving_default"]

    def run_signature(batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = signature(**{INPUT_NAME: tf.constant(batch)})
        return {name: np.asarray(value) for name, value in outputs.items()}

    _checked(largest_difference(net, run_signature, config), "SavedModel", tolerance)


def _export_onnx_checked(net: Any, config: Config, path: str, options: ExportOptions) -> None:
    """:func:`layernet.model_formats.export_onnx`, then compare ONNX Runtime's maps."""
    from layernet.backends import OnnxBackend
    from layernet.model_formats import export_onnx, largest_difference

    export_onnx(net, config, path, opset=options.opset)
    _checked(largest_difference(net, OnnxBackend(path), config), "ONNX model", options.tolerance)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options of ``python -m layernet.export_model``."""
    parser = argparse.ArgumentParser(
        prog="python -m layernet.export_model", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", metavar="RUN", help="run folder, model file (best.h5) or a "
                        "pretrained model's name (see models/README.md)")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt",
                        help="savedmodel, onnx or bioimageio")
    parser.add_argument("--out", metavar="DIR",
                        help="new folder for the export (default: into the run folder)")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help="largest difference from the Keras maps accepted on the check "
                        f"batch (default {DEFAULT_TOLERANCE:g})")
    package = parser.add_argument_group("bioimage.io package")
    package.add_argument("--author", action="append", default=[], metavar="NAME",
                         help="author of the package (repeat for several; required)")
    package.add_argument("--license", default="CC-BY-4.0",
                         help="SPDX licence of the weights (default CC-BY-4.0)")
    package.add_argument("--name", help="model name (default: layernet <method> UNet-<size> <run>)")
    package.add_argument("--sample", metavar="IMAGE",
                         help="image for the test tensors and the cover, e.g. one of the "
                         "training images (its centre, at most 256 x 256; default: synthetic)")
    package.add_argument("--no-test", action="store_true",
                         help="skip bioimageio.core's model test (the spec is still validated)")
    parser.add_argument("--verbose", action="store_true", help="more log output")
    args = parser.parse_args(argv)
    if args.opset < 7:
        parser.error("--opset must be >= 7")
    if not args.tolerance > 0:
        parser.error("--tolerance must be > 0")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    options = ExportOptions(force=args.force, opset=args.opset, tolerance=args.tolerance,
                            sample=args.sample, authors=tuple(args.author),
                            license=args.license, name=args.name, test=not args.no_test)
    export_model(args.run, args.fmt, args.out, options)
    return 0


if __name__ == "__main__":
    quiet_tensorflow()
    run_main(lambda: main(sys.argv[1:]), debug="--verbose" in sys.argv)
