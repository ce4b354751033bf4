"""The paper's semantic-segmentation baselines UNet-2 and UNet-3 (Sec. 3.3) as methods.

Both use the layering network's backbone (:func:`layernet.model.build_model`) with a single
``"semantic"`` head (:data:`SEMANTIC_CHANNELS`), and the same training loop, pipeline, run
folder and command-line tools as the layering method.

UNet-2 (``method="unet2"``, :data:`UNET2`)
    Classes object / background. Target: "any object covers the pixel" (overlaps included),
    computed in the graph from the label stack. Loss: binary cross-entropy of the sigmoid head
    (:func:`layernet.losses.foreground_loss`). Instances: connected components of
    ``P(object) > tau`` with at least ``min_size`` pixels (``config.connectivity``,
    :func:`layernet.methods.semantic_postprocess.unet2_instances`).

UNet-3 (``method="unet3"``, :data:`UNET3`)
    Classes background (0) / object (1) / boundary (2), the boundary being the paper's
    pseudo-boundary (:func:`layernet.methods.semantic_targets.semantic_target`). The target is
    computed once per un-augmented image (:meth:`Method.sample_target`,
    :func:`layernet.methods.attach_sample_targets`) and augmented with the stack (nearest
    neighbour) by the pipeline. Loss: categorical cross-entropy of the softmax head. Instances:
    object-class seeds grown back over the boundary class
    (:func:`layernet.methods.semantic_postprocess.unet3_instances`).

Both return a label stack with one slice ``(1, H, W)``: these methods cannot represent overlaps.

Nothing in this module imports TensorFlow (the losses import it when they run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from layernet.methods import Head, Method, attach_sample_targets, get_method
from layernet.methods.semantic_postprocess import unet2_instances, unet3_instances
from layernet.methods.semantic_targets import (BACKGROUND, BaselineError, check_baseline,
                                               semantic_target)

if TYPE_CHECKING:
    from layernet.config import Config

__all__ = [
    "LOSS_NAMES",
    "METHODS",
    "SEMANTIC_CHANNELS",
    "SemanticMethod",
    "UNET2",
    "UNET3",
    "attach_semantic_targets",
    "foreground_of",
    "instances_from_semantic",
    "map_names",
    "maps_from_outputs",
    "semantic_losses",
]

LOSS_NAMES = ("loss", "semantic")
"""Loss terms reported while training a baseline."""
PROBABILITY_CLIP = 1e-7
SEMANTIC_CHANNELS = {"unet2": 1, "unet3": 3}
"""Channels of the ``"semantic"`` head of the baselines: UNet-2 one sigmoid (object
probability), UNet-3 a softmax over background / object / boundary."""


def semantic_losses(outputs: Mapping, batch: Mapping, config: Config,
                    phase: str = "layering") -> dict:
    """Cross-entropy of a baseline's semantic head (same signature as ``compute_losses``).

    Parameters
    ----------
    outputs : mapping
        ``"semantic"``: ``(B, H, W, 1)`` sigmoid (UNet-2) or ``(B, H, W, 3)`` softmax (UNet-3).
    batch : mapping
        ``"stack"`` ``(B, H, W, L)`` (UNet-2 target: any object) or ``"semantic"``
        ``(B, H, W)`` class map (UNet-3,
        :func:`~layernet.methods.semantic_targets.semantic_target`).
    config : Config
        ``method`` selects the loss.
    phase : str, optional
        Must be ``"layering"`` (the baselines have one phase).

    Returns
    -------
    dict of str to tf.Tensor
        Float32 scalars ``semantic`` (the cross-entropy, mean over all pixels, the pixels of
        the objects' outline band weighted ``config.foreground_outline_weight`` times),
        ``foreground_dice`` (if ``config.foreground_dice_weight > 0``; the foreground of UNet-3
        is ``1 - P(background)``) and ``loss`` = ``semantic + foreground_dice_weight *
        foreground_dice``.
    """
    import tensorflow as tf

    from layernet.losses import (foreground_dice_loss, foreground_loss, foreground_target,
                                 weigh_outlines)

    check_baseline(config.method)
    if phase != "layering":
        raise BaselineError(f"method {config.method!r} has no phase {phase!r}")
    if config.method == "unet2":
        loss = foreground_loss(batch["stack"], outputs["semantic"],
                               config.foreground_outline_weight)
    else:
        if "semantic" not in batch:
            raise BaselineError("UNet-3 training needs batch['semantic'] (attach_semantic_targets)")
        probability = tf.clip_by_value(tf.cast(outputs["semantic"], tf.float32),
                                       PROBABILITY_CLIP, 1.0)
        target = tf.one_hot(tf.cast(batch["semantic"], tf.int32), 3, dtype=tf.float32)
        per_pixel = -tf.reduce_sum(target * tf.math.log(probability), axis=-1)
        loss = tf.reduce_mean(weigh_outlines(per_pixel, foreground_target(batch["stack"]),
                                             float(config.foreground_outline_weight)))
    losses = {"semantic": loss}
    if config.foreground_dice_weight > 0:
        foreground = foreground_of(tf.cast(outputs["semantic"], tf.float32), config.method)
        losses["foreground_dice"] = foreground_dice_loss(batch["stack"], foreground)
        loss = loss + float(config.foreground_dice_weight) * losses["foreground_dice"]
    losses["loss"] = loss
    return losses


def maps_from_outputs(semantic: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Split a baseline's head output into a foreground map and the class probabilities.

    Parameters
    ----------
    semantic : numpy.ndarray
        ``(B, H, W, C)`` output of the ``"semantic"`` head.
    method : {"unet2", "unet3"}

    Returns
    -------
    foreground : numpy.ndarray
        ``(B, H, W)`` float32: P(object) (UNet-2) or 1 - P(background) (UNet-3).
    probabilities : numpy.ndarray
        ``(B, H, W, C)`` float32, the head output itself.
    """
    check_baseline(method)
    semantic = np.asarray(semantic, np.float32)
    return foreground_of(semantic, method), semantic


def foreground_of(semantic: Any, method: str) -> Any:
    """P(object) from a baseline's head output ``(..., C)`` (a NumPy array or a tensor): the
    sigmoid channel (UNet-2) or ``1 - P(background)`` (UNet-3)."""
    if method == "unet2":
        return semantic[..., 0]
    return 1.0 - semantic[..., BACKGROUND]


def map_names(config: Config) -> list[str] | None:
    """Captions of the second map of :meth:`layernet.inference.Predictor.maps` for pictures
    (:meth:`Method.map_names` of ``config.method``).

    None for the layering method (``layer 1`` ... ``layer N``), the class names for baselines.
    """
    return get_method(config.method).map_names(config)


def attach_semantic_targets(samples: Sequence, config: Config) -> list:
    """Set ``sample.semantic`` (the UNet-3 class map) of prepared samples, in place
    (:func:`layernet.methods.attach_sample_targets`).

    Parameters
    ----------
    samples : sequence of layernet.prepared.PreparedSample
        Prepared (relabelled, un-augmented) samples.
    config : Config
        Only ``method`` ``"unet3"`` needs the map; for other methods nothing is changed.

    Returns
    -------
    list
        The same samples.
    """
    return attach_sample_targets(samples, config)


def instances_from_semantic(probabilities: np.ndarray, config: Config,
                            min_size: int | None = None) -> np.ndarray:
    """Instances of a baseline from its class probabilities, with the run's parameters.

    Parameters
    ----------
    probabilities : numpy.ndarray
        ``(H, W, C)`` output of the semantic head for one image.
    config : Config
        ``method``, ``tau``, ``min_size`` and ``connectivity`` (UNet-2).
    min_size : int or None, optional
        Overrides ``config.min_size`` (tiled prediction screens sizes after stitching).

    Returns
    -------
    numpy.ndarray
        int32 label stack ``(1, H, W)``.
    """
    check_baseline(config.method)
    size = config.min_size if min_size is None else int(min_size)
    return get_method(config.method).instances(None, probabilities, config, size)


class SemanticMethod(Method):
    """A baseline: one ``"semantic"`` head of class probabilities on the backbone.

    Parameters
    ----------
    name : str
        ``"unet2"`` or ``"unet3"``.
    activation : str
        Activation of the head (sigmoid for one class, softmax for several).
    class_names : sequence of str
        Captions of the head's channels in pictures.
    """

    def __init__(self, name: str, activation: str, class_names: Sequence[str]) -> None:
        self.name = name
        self.activation = activation
        self.class_names = list(class_names)

    def heads(self, config: Config) -> tuple[Head, ...]:
        """One head ``semantic`` (``sem_head_*`` layers) with :data:`SEMANTIC_CHANNELS`."""
        return (Head("semantic", "sem_head", SEMANTIC_CHANNELS[self.name], self.activation),)

    def loss_names(self, config: Config, phase: str) -> list[str]:
        """``loss``, ``semantic`` (and ``foreground_dice`` with its weight)."""
        return list(LOSS_NAMES) + (["foreground_dice"] if config.foreground_dice_weight > 0
                                   else [])

    def losses(self, outputs: Mapping, batch: Mapping, config: Config, phase: str) -> dict:
        """:func:`semantic_losses`."""
        return semantic_losses(outputs, batch, config, phase)

    def maps(self, outputs: Mapping[str, np.ndarray], config: Config
             ) -> tuple[np.ndarray, np.ndarray]:
        """:func:`maps_from_outputs` of the ``semantic`` output."""
        return maps_from_outputs(outputs["semantic"], self.name)

    def map_channels(self, config: Config) -> int:
        """The class count (:data:`SEMANTIC_CHANNELS`)."""
        return SEMANTIC_CHANNELS[self.name]

    def map_names(self, config: Config) -> list[str] | None:
        """The class names."""
        return list(self.class_names)

    def package_channels(self, config: Config) -> dict[str, list[str]]:
        """``semantic``: ``class0``, ``class1``, ..."""
        return {"semantic": [f"class{index}" for index in range(self.map_channels(config))]}

    def output_descriptions(self, config: Config) -> dict[str, str]:
        """``semantic``: the class probabilities."""
        return {"semantic": "class probabilities of the baseline"}

    def readme_outputs(self, config: Config) -> str:
        """The class probabilities' shape."""
        return (f"`semantic` `(B, H, W, {self.map_channels(config)})`: the baseline's class "
                "probabilities.\n")

    def postprocessing_summary(self, config: Config) -> str:
        """``<method> baseline (README)``."""
        return f"{self.name} baseline (README)"


class UNet2(SemanticMethod):
    """UNet-2: object / background (module docstring)."""

    def __init__(self) -> None:
        super().__init__("unet2", "sigmoid", ["object"])

    def instances(self, foreground: np.ndarray | None, maps: np.ndarray, config: Config,
                  min_size: int) -> np.ndarray:
        """:func:`~layernet.methods.semantic_postprocess.unet2_instances` of the class map."""
        return unet2_instances(maps, config.tau, min_size, config.connectivity)

    def readme_postprocessing(self, config: Config) -> str:
        """Connected components of the thresholded object probability."""
        connectivity = "8-connected" if config.connectivity == 2 else "4-connected"
        return (f"UNet-2 baseline: objects are the {connectivity} components of "
                f"`semantic > {config.tau}` with at least {config.min_size} pixels "
                "(`layernet.baselines.unet2_instances`). Objects cannot overlap.\n")


class UNet3(SemanticMethod):
    """UNet-3: background / object / pseudo-boundary (module docstring)."""

    needs_sample_target = True

    def __init__(self) -> None:
        super().__init__("unet3", "softmax", ["background", "object", "boundary"])

    def sample_target(self, stack: np.ndarray) -> np.ndarray:
        """The class map of :func:`~layernet.methods.semantic_targets.semantic_target`."""
        return semantic_target(stack, "unet3")

    def sample_target_key(self) -> dict[str, Any]:
        """Nothing beyond the cache's ``semantic`` flag, as cache entries had before methods
        (the first and so far only per-sample target)."""
        return {}

    def instances(self, foreground: np.ndarray | None, maps: np.ndarray, config: Config,
                  min_size: int) -> np.ndarray:
        """:func:`~layernet.methods.semantic_postprocess.unet3_instances` of the classes."""
        return unet3_instances(maps, min_size)

    def readme_postprocessing(self, config: Config) -> str:
        """Object seeds grown into the boundary."""
        return ("UNet-3 baseline: `semantic` holds the probabilities of background, object "
                "interior and boundary; objects are the components of the pixels whose most "
                "probable class is the interior, grown into the boundary pixels, with at least "
                f"{config.min_size} pixels (`layernet.baselines.unet3_instances`). Objects "
                "cannot overlap.\n")


UNET2 = UNet2()
UNET3 = UNet3()
METHODS = {method.name: method for method in (UNET2, UNET3)}
"""The methods of this module by name (:data:`layernet.methods.BUILTIN_METHODS`)."""
