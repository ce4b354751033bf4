"""A bioimage.io model package (rdf.yaml format 0.5) of a trained network.

The package holds the network in two weight formats (a TensorFlow SavedModel, zipped, and the
ONNX file converted from it, :mod:`layernet.model_formats`), the description of its input and
outputs with their axes, the preprocessing (the run's percentile normalisation as bioimage.io's
``scale_range`` per image and channel), test tensors (an input image and the Keras model's maps
of it, ``.npy``), a cover picture, and a README that describes the post-processing the consumer
must apply (Algorithm 1 of the paper, or the baselines' rule: the run's method,
:mod:`layernet.methods`), which bioimage.io cannot express.
Built with ``bioimageio.spec`` 0.5's Python API, validated by it, and tested with
``bioimageio.core.test_model`` (every weight format on the test tensors and on other sizes)
before the zip is written. Both packages are optional (``requirements-export.txt``).

Tensors (``B`` batch, ``H`` and ``W`` multiples of the stride, ``C`` the run's channels):

* input ``image`` ``(B, H, W, C)`` float32, raw intensities; the preprocessing maps the
  ``normalize_low`` / ``normalize_high`` percentiles of each image and channel to 0 and 1;
* output ``maps`` ``(B, H, W, 1 + N)``: the foreground probability in channel 0, the N layer
  activations after it (baselines: ``semantic`` ``(B, H, W, C)``). One output, not two:
  bioimage.io runs a SavedModel through Keras' ``TFSMLayer`` and takes its outputs in the order
  of the restored dictionary, which TensorFlow does not keep from one process to the next
  (:func:`layernet.model_formats.serving_network`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from layernet import PAPER, PAPER_URL
from layernet.backends import require
from layernet.config import Config
from layernet.methods import get_method

logger = logging.getLogger(__name__)

__all__ = ["PackageMetadata", "PAPER", "check_metadata", "package_readme", "sample_image",
           "write_package"]

SAMPLE_SIDE = 128
"""Side of the synthetic test image (and the largest side kept of a ``--sample`` image is
:data:`MAX_SAMPLE_SIDE`)."""
MAX_SAMPLE_SIDE = 256


@dataclass(frozen=True)
class PackageMetadata:
    """What bioimage.io wants to know besides the network.

    Attributes
    ----------
    name : str
        Model name (letters, digits, spaces and ``_+-()``; 5-128 characters).
    authors : tuple of str
        Names of the authors (at least one).
    license : str
        SPDX licence identifier of the weights, e.g. ``CC-BY-4.0``.
    run : str
        Name of the run folder, quoted in the documentation.
    """

    name: str
    authors: tuple[str, ...]
    license: str = "CC-BY-4.0"
    run: str = ""


def check_metadata(metadata: PackageMetadata) -> None:
    """Check the name, licence and authors as bioimage.io will, before any export work.

    Parameters
    ----------
    metadata : PackageMetadata
        What the user chose.

    Raises
    ------
    ValueError
        Naming the option (``--name``, ``--license``, ``--author``) and what is wrong.
    layernet.backends.MissingPackageError
        If ``bioimageio.spec`` is not installed.
    """
    from typing import Annotated

    from pydantic import TypeAdapter, ValidationError

    v05 = require("bioimageio.spec.model.v0_5", "bioimageio.spec")
    name = v05.ModelDescr.model_fields["name"]
    name_type = TypeAdapter(Annotated[(name.annotation, *name.metadata)])
    checks = [("--name", metadata.name, name_type.validate_python,
               "a model name has 5-128 characters: letters, digits, spaces and _+-()"),
              ("--license", metadata.license, v05.LicenseId,
               "not an SPDX licence identifier that bioimage.io knows (e.g. CC-BY-4.0, MIT)")]
    checks += [("--author", author, lambda value: v05.Author(name=value),
                "bioimage.io does not accept this author name") for author in metadata.authors]
    for flag, value, check, problem in checks:
        try:
            check(value)
        except ValidationError:
            raise ValueError(f"{flag} {value!r}: {problem}") from None


def sample_image(config: Config, side: int = SAMPLE_SIDE, seed: int = 0) -> np.ndarray:
    """A synthetic raw test image: bright discs, some overlapping, on a noisy background.

    Parameters
    ----------
    config : Config
        ``channels`` of the image.
    side : int, optional
        Height and width in pixels.
    seed : int, optional
        Seed of the discs and the noise.

    Returns
    -------
    numpy.ndarray
        float32 ``(side, side, channels)``, intensities of a 12-bit camera (about 100-1100).
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:side, 0:side]
    image = np.full((side, side), 100.0)
    for _ in range(max(4, side // 16)):
        centre = rng.uniform(0.1 * side, 0.9 * side, 2)
        radius = rng.uniform(0.05 * side, 0.12 * side)
        distance = np.hypot(rows - centre[0], cols - centre[1])
        image += 600.0 / (1.0 + np.exp((distance - radius) / 1.5))
    image += rng.normal(0.0, 20.0, image.shape)
    return np.repeat(image[..., None], config.channels, axis=-1).astype(np.float32)


def _test_image(config: Config, sample: str | None) -> np.ndarray:
    """The raw test image: ``sample`` read as in prediction and cropped to stride multiples of at
    most :data:`MAX_SAMPLE_SIDE` (centre), or :func:`sample_image`."""
    if sample is None:
        return sample_image(config)
    from layernet.io import as_channels, read_image

    image = as_channels(read_image(sample), expected_channels=config.channels, name=sample)
    stride = config.stride
    sizes = [min(MAX_SAMPLE_SIDE, side) // stride * stride for side in image.shape[:2]]
    if min(sizes) == 0:
        raise ValueError(f"{sample}: {image.shape[0]} x {image.shape[1]} pixels is smaller than "
                         f"the network's stride {stride}")
    top, left = ((side - size) // 2 for side, size in zip(image.shape[:2], sizes))
    return np.ascontiguousarray(image[top:top + sizes[0], left:left + sizes[1]], np.float32)


def _training_scores(run_dir: str | None) -> str:
    """Best validation meanAP / AJI of the run (``state.json``, ``history.csv``), if known."""
    if not run_dir:
        return "not recorded"
    from layernet.runfolder import best_validation_scores

    best = best_validation_scores(run_dir)
    if best is None:
        return "not recorded"
    text = f"meanAP {best['meanAP']:.4f}"
    if best["AJI"] is not None:
        text += f", AJI {best['AJI']:.4f}"
    return f"{text} (epoch {best['epoch']}, on the run's validation split)"


def _scale_note(config: Config) -> str:
    """The README paragraph on the network's input scale (empty at scale 1)."""
    if config.input_scale == 1.0:
        return ""
    return (f"**Input scale {config.input_scale:g}**: the network was trained on images resized "
            f"by {config.input_scale:g}. Resize each image by this factor before the network "
            "(area interpolation when shrinking, bilinear when growing) and the output maps back "
            "to the image (bilinear) before post-processing; layernet's `predict.py` does "
            "both. The test tensors are at the network's scale.\n\n")


def package_readme(config: Config, metadata: PackageMetadata, scores: str = "not recorded"
                   ) -> str:
    """The package's documentation (README.md) for a network of ``config``.

    Parameters
    ----------
    config : Config
        The run's configuration (post-processing parameters, architecture, normalisation).
    metadata : PackageMetadata
        Name, authors and licence.
    scores : str, optional
        The run's validation scores, one line.

    Returns
    -------
    str
        Markdown text with a ``## Validation`` section.
    """
    method = get_method(config.method)
    return (
        f"# {metadata.name}\n\n"
        "Instance segmentation of dense and overlapping objects by layering: a UNet "
        f"(UNet-{config.size}, {config.filters} base filters) predicts a foreground map and "
        f"{config.layers} layers, trained so that touching objects land in different layers; "
        "each layer's connected components are objects, and objects found in different layers "
        f"may overlap. Exported by layernet from the run `{metadata.run}` "
        f"(method `{config.method}`).\n\n"
        "## Input\n\n"
        f"`image` `(B, H, W, {config.channels})` float32, raw intensities, H and W multiples of "
        f"{config.stride}. Preprocessing (applied by bioimage.io consumers): each image and "
        f"channel is mapped so that its {config.normalize_low} and {config.normalize_high} "
        "percentiles become 0 and 1 (`scale_range`), as in training. Pad other sizes (e.g. "
        "reflect) and crop the outputs.\n\n" + _scale_note(config) +
        "## Outputs\n\n" + method.readme_outputs(config) + "\n"
        "## Post-processing (the consumer must apply it)\n\n"
        + method.readme_postprocessing(config) +
        "\nLarge images: predict overlapping tiles and join the objects across tile borders "
        "(layernet's `predict.py` does both).\n\n"
        "## Validation\n\n"
        f"Validation scores of the run: {scores}. Validate on your own images with ground truth "
        "before use: `python evaluate.py --model RUN --data folder --data-dir D` (layernet) "
        "reports the paper's meanAP (IoU 0.5-0.9) and AJI on label stacks, overlaps included.\n\n"
        "## Citation\n\n"
        f"{PAPER} {PAPER_URL}\n\n"
        "## Licence\n\n"
        f"Weights: {metadata.license}. Authors: {', '.join(metadata.authors)}.\n")


def _cover(image: np.ndarray, outputs: dict[str, np.ndarray], config: Config, path: str
           ) -> None:
    """Cover picture: the image beside its objects (from the network's ``outputs`` of it)
    outlined on it (2:1)."""
    from layernet.inference import instances_from_maps
    from layernet.io import write_image_atomic
    from layernet.viz import display_image, outline_overlay

    foreground, maps = get_method(config.method).maps(outputs, config)
    stack = instances_from_maps(foreground[0], maps[0], config)
    shown = display_image(image)
    write_image_atomic(path, np.concatenate([shown, outline_overlay(shown, stack)], axis=1))


def _zip_folder(folder: str, path: str) -> None:
    """Zip the contents of ``folder`` (paths relative to it) into ``path``."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for root, _, files in os.walk(folder):
            for name in sorted(files):
                full = os.path.join(root, name)
                archive.write(full, os.path.relpath(full, folder))


def _description(config: Config, metadata: PackageMetadata, work: str, opset: int,
                 channels: dict[str, list[str]]) -> Any:
    """The ``ModelDescr`` (bioimage.io 0.5) of the files in ``work``."""
    import tensorflow as tf

    v05 = require("bioimageio.spec.model.v0_5", "bioimageio.spec")
    side = {"y": "height", "x": "width"}
    stride = config.stride
    input_axes = [v05.BatchAxis()] + [
        v05.SpaceInputAxis(id=v05.AxisId(axis), size=v05.ParameterizedSize(min=stride, step=stride),
                           description=side[axis]) for axis in ("y", "x")] + [
        v05.ChannelAxis(channel_names=[v05.Identifier(f"channel{index}")
                                       for index in range(config.channels)])]
    preprocessing = [v05.ScaleRangeDescr(kwargs=v05.ScaleRangeKwargs(
        axes=(v05.AxisId("y"), v05.AxisId("x")), min_percentile=config.normalize_low,
        max_percentile=config.normalize_high))]
    image = v05.InputTensorDescr(
        id=v05.TensorId("image"), axes=input_axes,
        description="raw image, normalised by the preprocessing",
        test_tensor=v05.FileDescr(source=os.path.join(work, "test_input.npy")),
        sample_tensor=v05.FileDescr(source=os.path.join(work, "sample_input.tif")),
        data=v05.IntervalOrRatioDataDescr(type="float32"), preprocessing=preprocessing)
    method = get_method(config.method)
    descriptions = method.output_descriptions(config)
    output_descrs = []
    for name, channel_names in channels.items():
        axes = [v05.BatchAxis()] + [
            v05.SpaceOutputAxis(id=v05.AxisId(axis), description=side[axis],
                                size=v05.SizeReference(tensor_id=v05.TensorId("image"),
                                                       axis_id=v05.AxisId(axis)))
            for axis in ("y", "x")] + [
            v05.ChannelAxis(channel_names=[v05.Identifier(channel) for channel in channel_names])]
        output_descrs.append(v05.OutputTensorDescr(
            id=v05.TensorId(name), axes=axes, description=descriptions[name],
            test_tensor=v05.FileDescr(source=os.path.join(work, f"test_{name}.npy")),
            sample_tensor=v05.FileDescr(source=os.path.join(work, f"sample_{name}.tif")),
            data=v05.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0))))
    weights = v05.WeightsDescr(
        tensorflow_saved_model_bundle=v05.TensorflowSavedModelBundleWeightsDescr(
            source=os.path.join(work, "saved_model.zip"),
            tensorflow_version=v05.Version(tf.__version__),
            comment="Keras 3 model exported with model.export(format='tf_saved_model')"),
        onnx=v05.OnnxWeightsDescr(
            source=os.path.join(work, "model.onnx"), opset_version=opset,
            parent="tensorflow_saved_model_bundle", comment="converted with tf2onnx"))
    layernet_config = {
        "method": config.method, "tau": config.tau, "min_size": config.min_size,
        "overlap_layers": config.overlap_layers, "connectivity": config.connectivity,
        "join_layers": config.join_layers, "join_max_area": config.join_max_area,
        "layers": config.layers, "stride": config.stride,
        "postprocessing": method.postprocessing_summary(config)}
    return v05.ModelDescr(
        name=metadata.name,
        description=("Instance segmentation of dense and overlapping objects via layering "
                     "(Chen, Wu and Merhof, BMVC 2022): foreground and layer maps; the "
                     "post-processing into instances is described in the README."),
        authors=[v05.Author(name=author) for author in metadata.authors],
        cite=[v05.CiteEntry(text=PAPER, url=v05.HttpUrl(PAPER_URL))],
        license=v05.LicenseId(metadata.license),
        documentation=v05.FileDescr(source=os.path.join(work, "README.md")),
        covers=[v05.FileDescr(source=os.path.join(work, "cover.png"))],
        tags=["instance-segmentation", "overlapping-objects", "layering", "unet", "2d",
              "microscopy", "tensorflow", "onnx"],
        inputs=[image], outputs=output_descrs, weights=weights,
        config=v05.Config(layernet=layernet_config),
        version=v05.Version("0.1.0"),
    )


def write_package(net: Any, config: Config, path: str, metadata: PackageMetadata,
                  sample: str | None = None, opset: int = 17, test: bool = True,
                  run_dir: str | None = None) -> None:
    """Build, validate and test a bioimage.io package of ``net``; write it as a zip.

    Parameters
    ----------
    net : keras.Model
        The network (float32 precision).
    config : Config
        Its run's configuration.
    path : str
        The ``.zip`` file to write (written only when the package is valid and, with ``test``,
        passed the model test).
    metadata : PackageMetadata
        Name, authors, licence, run name.
    sample : str or None, optional
        Image file for the test tensors and the cover (default :func:`sample_image`).
    opset : int, optional
        ONNX opset.
    test : bool, optional
        Run ``bioimageio.core.test_model`` on the package.
    run_dir : str or None, optional
        The run folder, for the validation scores quoted in the README.

    Raises
    ------
    ValueError
        If the package is invalid or fails the model test (the first error is given).
    layernet.backends.MissingPackageError
        If an optional package is missing.
    """
    from layernet.inference import Predictor
    from layernet.model_formats import export_onnx, export_savedmodel

    with tempfile.TemporaryDirectory(prefix="layernet-bioimageio-") as work:
        export_savedmodel(net, config, os.path.join(work, "saved_model"), merged=True)
        _zip_folder(os.path.join(work, "saved_model"), os.path.join(work, "saved_model.zip"))
        shutil.rmtree(os.path.join(work, "saved_model"))
        export_onnx(net, config, os.path.join(work, "model.onnx"), opset=opset, merged=True)

        image = _test_image(config, sample)
        predictor = Predictor(net, config)
        outputs = predictor.backend(predictor.normalize(image)[None])
        method = get_method(config.method)
        maps = method.package_maps(outputs, config)
        channels = method.package_channels(config)
        import tifffile

        # test tensors (.npy, with the batch axis) for the model test; sample tensors (TIFF)
        # to show a person what goes in and comes out
        for name, value in {"input": image[None], **maps}.items():
            np.save(os.path.join(work, f"test_{name}.npy"), value)
            tifffile.imwrite(os.path.join(work, f"sample_{name}.tif"), value[0])
        _cover(image, outputs, config, os.path.join(work, "cover.png"))
        with open(os.path.join(work, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(package_readme(config, metadata, _training_scores(run_dir)))

        descr = _description(config, metadata, work, opset, channels)
        package = os.path.join(work, "package.zip")
        _save_and_test(descr, package, test, work)
        shutil.copyfile(package, path)
    logger.debug("wrote bioimage.io package %s", path)


def _save_and_test(descr: Any, package: str, test: bool, work: str) -> None:
    """Zip ``descr`` into ``package`` (bioimageio.spec validates it), then test it (with
    ``work``, a temporary folder, as the current folder)."""
    spec = require("bioimageio.spec", "bioimageio.spec")
    try:
        spec.save_bioimageio_package(descr, output_path=package)
    except ValueError as error:
        raise ValueError(f"the bioimage.io package is invalid: {_first_line(error)}") from None
    if not test:
        return
    core = require("bioimageio.core", "bioimageio.core")
    # bioimageio.core unzips TensorFlow weights into ./bioimageio_unzipped_tf_weights: run it in
    # the temporary folder, not in the caller's
    with contextlib.chdir(work):
        summary = core.test_model(os.path.abspath(package))
    if summary.status != "passed":
        errors = [f"{'.'.join(map(str, entry.loc))}: {entry.msg}" for entry in summary.errors]
        raise ValueError("the bioimage.io package failed bioimageio.core's model test: "
                         + (_first_line(errors[0]) if errors else summary.status))
    logger.info("bioimageio.core model test passed: %d checks, weights %s",
                len(summary.details), " and ".join(descr.weights.available_formats))


def _first_line(error: Any) -> str:
    text = str(error).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(error).__name__
