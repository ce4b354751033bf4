"""Segmentation methods behind one protocol: what differs between layering, UNet-2 and UNet-3.

The project trains, validates, predicts, evaluates and exports every method with the same code
(backbone, pipeline, training loop, run folder, tiling, metrics, command lines). What a method
changes is collected in one :class:`Method` object, found by the run's ``Config.method``
(:func:`get_method`):

* the **heads** on the shared UNet backbone (:meth:`Method.heads`, built by
  :func:`layernet.model.build_model`);
* the **targets** a training sample needs beyond its label stack: a per-pixel map computed once
  per un-augmented image (:meth:`Method.sample_target`, UNet-3's pseudo-boundary classes), which
  the pipeline carries as the batch key ``"semantic"`` and resamples with the stack;
* the **losses** of a batch (:meth:`Method.losses`, with the names of their terms);
* the **maps** of the network's outputs (a foreground probability and the method's second map,
  :meth:`Method.maps`) and their **post-processing** into a label stack
  (:meth:`Method.instances`: Algorithm 1 for layering), used by validation, prediction,
  tiling and evaluation alike;
* what an **export** says (merged outputs, bioimage.io README and tensor descriptions).

Built-in methods (:data:`BUILTIN_METHODS`): ``layering`` (:mod:`layernet.methods.layering`),
``unet2`` and ``unet3`` (:mod:`layernet.methods.semantic`). A new method is one new module
with a :class:`Method` subclass, added to :data:`BUILTIN_METHODS` (one line) or registered at
run time with :func:`register_method`; nothing else changes. A subclass must give
:attr:`Method.name`, :meth:`~Method.heads`, :meth:`~Method.loss_names`, :meth:`~Method.losses`,
:meth:`~Method.maps`, :meth:`~Method.map_channels` and :meth:`~Method.instances`; the rest has
defaults.

Nothing in this module imports TensorFlow, and neither do the built-in methods' modules: they
import it (or Keras) inside the functions that run the network's tensors, so that the
configuration can ask a method about itself.
"""

from __future__ import annotations

import importlib
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from layernet.config import Config

logger = logging.getLogger(__name__)

__all__ = [
    "BUILTIN_METHODS",
    "Head",
    "MERGED_NAME",
    "Method",
    "UnknownMethodError",
    "attach_sample_targets",
    "get_method",
    "method_names",
    "register_method",
    "unregister_method",
]

MERGED_NAME = "maps"
"""Name of the one output of a merged export (:attr:`Method.merged_outputs` concatenated)."""

BUILTIN_METHODS = {"layering": "layernet.methods.layering",
                   "unet2": "layernet.methods.semantic",
                   "unet3": "layernet.methods.semantic"}
"""Built-in method name -> the module that defines it (in its ``METHODS`` dict, loaded on first
use). ``layering`` is the paper's; ``unet2`` / ``unet3`` are its semantic-segmentation baselines
(Sec. 3.3)."""


class UnknownMethodError(ValueError):
    """Raised for a method name that is neither built in nor registered."""


@dataclass(frozen=True)
class Head:
    """One output head on the shared backbone (:func:`layernet.model.build_model`).

    Two 3x3 convolutions (``<prefix>_conv1`` / ``_bn1``, ``_conv2`` / ``_bn2`` with
    ``config.head_filters`` channels) and a 1x1 convolution named ``output`` with ``channels``
    channels and ``activation``, computing in float32.

    Attributes
    ----------
    output : str
        Name of the output layer and key of the model's output dict.
    prefix : str
        Prefix of the head's layer names.
    channels : int
        Output channels.
    activation : str
        Keras activation of the output (``"sigmoid"``, ``"softmax"``).
    """

    output: str
    prefix: str
    channels: int
    activation: str


class Method(ABC):
    """What one segmentation method contributes (module docstring); subclass it for a new one.

    Attributes
    ----------
    name : str
        The ``Config.method`` value.
    phases : tuple of str
        Training phases (``Config.phase`` values) the method has; the first is a new run's,
        the last the default of a run started from a model (``train.py --init``).
    has_layers : bool
        The method has a layering head: layer targets and a recipe's layering settings
        (``layernet.config.RECIPE_LAYERING``) apply to it.
    needs_sample_target : bool
        Training samples carry :meth:`sample_target` (batch key ``"semantic"``).
    merged_outputs : tuple of str
        Outputs concatenated (in this order, channels last) into the one output
        :data:`MERGED_NAME` of a merged export (bioimage.io); empty: exported as they are.
    """

    name: str = ""
    phases: tuple[str, ...] = ("layering",)
    has_layers: bool = False
    needs_sample_target: bool = False
    merged_outputs: tuple[str, ...] = ()

    # --- network ------------------------------------------------------------------------------
    @abstractmethod
    def heads(self, config: Config) -> tuple[Head, ...]:
        """The output heads of the network of ``config``.

        Parameters
        ----------
        config : Config
            The run's configuration.

        Returns
        -------
        tuple of Head
        """

    def model_name(self, config: Config) -> str:
        """Name of the Keras model: ``<method>_unet<size>``."""
        return f"{self.name}_unet{config.size}"

    def output_names(self, config: Config) -> tuple[str, ...]:
        """Names of the network's outputs, in the order of :meth:`heads`."""
        return tuple(head.output for head in self.heads(config))

    def display_name(self) -> str:
        """The method's name in a default model name (``layernet export``)."""
        return self.name.upper()

    # --- training -----------------------------------------------------------------------------
    def sample_target(self, stack: np.ndarray) -> np.ndarray:
        """The per-pixel target of one un-augmented label stack ``(L, H, W)``, an integer
        ``(H, W)`` map (only for methods with :attr:`needs_sample_target`)."""
        raise NotImplementedError(f"method {self.name!r} has no per-sample target")

    def sample_target_key(self) -> dict[str, Any]:
        """Fields that tell the streaming cache which :meth:`sample_target` an entry holds
        (added to its key, :func:`layernet.streaming.sample_key`)."""
        return {"sample_target": self.name}

    @abstractmethod
    def loss_names(self, config: Config, phase: str) -> list[str]:
        """Names of the loss terms :meth:`losses` returns and training reports (``"loss"``, the
        total, first), in the order of the run's ``history.csv``."""

    @abstractmethod
    def losses(self, outputs: Mapping, batch: Mapping, config: Config, phase: str) -> dict:
        """The losses of a batch (a ``tf.function``-traceable computation).

        Parameters
        ----------
        outputs : mapping
            The network's outputs by name, ``(B, H, W, C)`` tensors.
        batch : mapping
            The pipeline's batch (:func:`layernet.pipeline.make_dataset`): ``"image"``,
            ``"stack"`` ``(B, H, W, L)``, ``"adjacency"``, ``"layer_of"`` and, for
            :attr:`needs_sample_target`, ``"semantic"`` ``(B, H, W)``.
        config : Config
            Loss options.
        phase : str
            One of :attr:`phases`.

        Returns
        -------
        dict of str to tf.Tensor
            Float32 scalars, at least those of :meth:`loss_names`; ``"loss"`` is minimised.
        """

    # --- maps and instances -------------------------------------------------------------------
    @abstractmethod
    def maps(self, outputs: Mapping[str, np.ndarray], config: Config
             ) -> tuple[np.ndarray, np.ndarray]:
        """The two maps of a batch of network outputs (already cropped to the images).

        Parameters
        ----------
        outputs : mapping of str to numpy.ndarray
            The network's outputs by name, ``(B, H, W, C)``.
        config : Config
            The run's configuration.

        Returns
        -------
        foreground : numpy.ndarray
            ``(B, H, W)`` float32 object probability.
        maps : numpy.ndarray
            ``(B, H, W, C)`` float32: the method's second map (layer activations, class
            probabilities), :meth:`map_channels` channels.
        """

    @abstractmethod
    def map_channels(self, config: Config) -> int:
        """Channels of the second map of :meth:`maps`."""

    def map_names(self, config: Config) -> list[str] | None:
        """Captions of the channels of the second map in pictures (None: ``layer 1`` ...)."""
        return None

    def averaged_outputs(self, config: Config) -> tuple[str, ...]:
        """Outputs that test-time augmentation averages over the 8 orientations (the others
        come from the image as it is); default: all of them."""
        return self.output_names(config)

    @abstractmethod
    def instances(self, foreground: np.ndarray, maps: np.ndarray, config: Config,
                  min_size: int) -> np.ndarray:
        """Post-process the maps of one image into a label stack.

        Parameters
        ----------
        foreground, maps : numpy.ndarray
            ``(H, W)`` and ``(H, W, C)`` maps of one image (:meth:`maps`).
        config : Config
            Post-processing parameters (``tau``, ``connectivity``, ...).
        min_size : int
            Objects with fewer pixels are dropped (0 for tiles, screened after stitching).

        Returns
        -------
        numpy.ndarray
            Integer label stack ``(L, H, W)``.
        """

    # --- export -------------------------------------------------------------------------------
    def export_outputs(self, config: Config, merged: bool = False) -> tuple[str, ...]:
        """Names of an exported network's outputs: :data:`MERGED_NAME` alone when ``merged``
        and the method merges outputs, else :meth:`output_names`."""
        if merged and self.merged_outputs:
            return (MERGED_NAME,)
        return self.output_names(config)

    def package_maps(self, outputs: Mapping[str, np.ndarray], config: Config
                     ) -> dict[str, np.ndarray]:
        """The network's outputs as a merged export gives them (:attr:`merged_outputs`)."""
        if not self.merged_outputs:
            return dict(outputs)
        return {MERGED_NAME: np.concatenate([outputs[name] for name in self.merged_outputs],
                                            axis=-1)}

    def package_channels(self, config: Config) -> dict[str, list[str]]:
        """Channel names of every output of a merged export (bioimage.io)."""
        channels = {head.output: [f"{head.output}{index}" for index in range(head.channels)]
                    for head in self.heads(config)}
        if not self.merged_outputs:
            return channels
        return {MERGED_NAME: [name for output in self.merged_outputs
                              for name in channels[output]]}

    def output_descriptions(self, config: Config) -> dict[str, str]:
        """One-line description of every output of a merged export (bioimage.io)."""
        return {name: f"output {name} of method {self.name}"
                for name in self.export_outputs(config, merged=True)}

    def readme_outputs(self, config: Config) -> str:
        """The ``## Outputs`` paragraph of an exported package's README (Markdown)."""
        descriptions = self.output_descriptions(config)
        return "".join(f"`{name}` `(B, H, W, {len(names)})`: {descriptions[name]}.\n"
                       for name, names in self.package_channels(config).items())

    def readme_postprocessing(self, config: Config) -> str:
        """The README section that tells a consumer how to turn the outputs into instances."""
        return (f"Method `{self.name}`: the instances come from "
                f"`layernet.methods.get_method({self.name!r}).instances` with tau = {config.tau} "
                f"and at least {config.min_size} pixels.\n")

    def postprocessing_summary(self, config: Config) -> str:
        """A few words on the post-processing for the package's ``config`` section."""
        return f"{self.name} (README)"


_REGISTRY: dict[str, Method] = {}


def register_method(method: Method, replace: bool = False) -> Method:
    """Make ``method`` available as ``Config.method == method.name``.

    Parameters
    ----------
    method : Method
        An instance of a :class:`Method` subclass.
    replace : bool, optional
        Allow replacing a method of the same name.

    Returns
    -------
    Method
        ``method``.

    Raises
    ------
    ValueError
        For a method without a name, or a name that is taken (without ``replace``).
    """
    if not isinstance(method, Method) or not method.name:
        raise ValueError(f"{method!r} is not a named layernet.methods.Method")
    if not replace and (method.name in _REGISTRY or method.name in BUILTIN_METHODS):
        raise ValueError(f"method {method.name!r} is registered already")
    _REGISTRY[method.name] = method
    return method


def unregister_method(name: str) -> None:
    """Remove a method added by :func:`register_method` (built-in methods stay)."""
    if name not in BUILTIN_METHODS:
        _REGISTRY.pop(name, None)


def method_names() -> tuple[str, ...]:
    """Names of every method: the built-in ones first, then the registered ones."""
    return tuple(BUILTIN_METHODS) + tuple(name for name in _REGISTRY
                                          if name not in BUILTIN_METHODS)


def get_method(name: str) -> Method:
    """The method called ``name`` (a ``Config.method`` value).

    Parameters
    ----------
    name : str
        A name of :func:`method_names`.

    Returns
    -------
    Method

    Raises
    ------
    UnknownMethodError
        For any other name.
    """
    method = _REGISTRY.get(name)
    if method is not None:
        return method
    if name not in BUILTIN_METHODS:
        raise UnknownMethodError(f"unknown method {name!r}; use one of "
                                 f"{', '.join(method_names())}")
    module = importlib.import_module(BUILTIN_METHODS[name])
    for method in module.METHODS.values():
        _REGISTRY.setdefault(method.name, method)
    return _REGISTRY[name]


def attach_sample_targets(samples: Sequence, config: Config) -> list:
    """Set ``sample.semantic`` of prepared samples to the method's :meth:`Method.sample_target`,
    in place (nothing changes for methods without one).

    Parameters
    ----------
    samples : sequence of layernet.prepared.PreparedSample
        Prepared (relabelled, un-augmented) samples.
    config : Config
        ``method`` chooses the target.

    Returns
    -------
    list
        The same samples.
    """
    method = get_method(config.method)
    if method.needs_sample_target:
        for sample in samples:
            sample.semantic = method.sample_target(sample.stack)
        logger.info("computed %s targets of %d samples", method.name, len(samples))
    return list(samples)
