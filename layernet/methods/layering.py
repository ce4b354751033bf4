"""The paper's method: a foreground head and a layering head, Algorithm 1 into instances.

The network (:func:`layernet.model.build_model`) has two heads on the shared backbone:
``foreground`` (1 sigmoid channel) and ``layering`` (``config.layers`` = N sigmoid channels).
Training has two phases (paper Eq. 1): ``"layering"`` (foreground cross-entropy + layering loss
on the overlap-free foreground) and ``"overlap"`` (adds the overlap-completion loss, Eq. 6,
started from the phase-1 model); the losses are :func:`layernet.losses.compute_losses`.
Instances come from Algorithm 1 (:func:`layernet.postprocess.postprocess`), one slice per
layer. Test-time augmentation averages the foreground only: the layer an object lands in is the
network's free choice and differs between orientations (:mod:`layernet.inference`). A merged
export (bioimage.io) concatenates the two outputs into ``maps`` (foreground in channel 0).

Nothing in this module imports TensorFlow (the losses import it when they run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

import numpy as np

from layernet.methods import MERGED_NAME, Head, Method
from layernet.postprocess import postprocess

if TYPE_CHECKING:
    from layernet.config import Config

__all__ = ["LAYERING", "LOSS_NAMES", "LayeringMethod", "METHODS"]

LOSS_NAMES = ("loss", "foreground", "attraction", "repulsion", "sparsity", "layering", "overlap")
"""Loss terms of the layering method (``overlap`` in phase 2 only)."""


class LayeringMethod(Method):
    """The paper's method (module docstring)."""

    name = "layering"
    phases = ("layering", "overlap")
    has_layers = True
    merged_outputs = ("foreground", "layering")

    def heads(self, config: Config) -> tuple[Head, ...]:
        """``foreground`` (``fg_head_*``, 1 channel) and ``layering`` (``layer_head_*``, N)."""
        return (Head("foreground", "fg_head", 1, "sigmoid"),
                Head("layering", "layer_head", config.layers, "sigmoid"))

    def model_name(self, config: Config) -> str:
        """``layernet_unet<size>``."""
        return f"layernet_unet{config.size}"

    def display_name(self) -> str:
        """``layering``."""
        return self.name

    def loss_names(self, config: Config, phase: str) -> list[str]:
        """:data:`LOSS_NAMES` (``overlap`` in phase 2), ``layer_targets`` and
        ``foreground_dice`` when their weights are on."""
        names = [name for name in LOSS_NAMES if name != "overlap" or phase == "overlap"]
        if phase == "layering" and config.layer_target_weight > 0:
            names.append("layer_targets")
        if config.foreground_dice_weight > 0:
            names.append("foreground_dice")
        return names

    def losses(self, outputs: Mapping, batch: Mapping, config: Config, phase: str) -> dict:
        """:func:`layernet.losses.compute_losses`."""
        from layernet.losses import compute_losses

        return compute_losses(outputs, batch, config, phase)

    def maps(self, outputs: Mapping[str, np.ndarray], config: Config
             ) -> tuple[np.ndarray, np.ndarray]:
        """The foreground probability ``(B, H, W)`` and the layer activations ``(B, H, W, N)``."""
        foreground = outputs["foreground"][..., 0]
        layering = outputs["layering"]
        return foreground.astype(np.float32), layering.astype(np.float32)

    def map_channels(self, config: Config) -> int:
        """N, the number of layers."""
        return config.layers

    def averaged_outputs(self, config: Config) -> tuple[str, ...]:
        """The foreground only (module docstring)."""
        return ("foreground",)

    def instances(self, foreground: np.ndarray, maps: np.ndarray, config: Config,
                  min_size: int) -> np.ndarray:
        """Algorithm 1 (:func:`layernet.postprocess.postprocess`) with the run's ``tau``,
        ``overlap_layers``, ``connectivity``, ``join_layers`` and
        :attr:`~layernet.config.Config.join_max_area`; a stack ``(N, H, W)``."""
        return postprocess(foreground, maps, tau=config.tau, min_size=min_size,
                           overlap_layers=config.overlap_layers,
                           connectivity=config.connectivity, join_layers=config.join_layers,
                           join_max_area=config.join_max_area)

    def package_channels(self, config: Config) -> dict[str, list[str]]:
        """``maps``: ``foreground``, ``layer1`` ... ``layerN``."""
        return {MERGED_NAME: ["foreground"] + [f"layer{index + 1}"
                                               for index in range(config.layers)]}

    def output_descriptions(self, config: Config) -> dict[str, str]:
        """``maps``: foreground and layer activations."""
        return {MERGED_NAME: "channel 0: foreground probability; channels 1-N: layer "
                "activations (post-processing in the README)"}

    def readme_outputs(self, config: Config) -> str:
        """The merged output's channels."""
        return (f"`maps` `(B, H, W, {config.layers + 1})`: channel 0 is the foreground "
                f"probability, channels 1-{config.layers} the activations of the "
                f"{config.layers} layers (sigmoid). Touching objects are in different layers, "
                "so every layer holds separated objects only.\n")

    def readme_postprocessing(self, config: Config) -> str:
        """Algorithm 1, step by step, with the run's parameters and the Python call."""
        connectivity = "8-connected" if config.connectivity == 2 else "4-connected"
        overlap = (f"   and also in every layer whose activation is `> tau` (Algorithm 1, lines "
                   f"7-8), so a pixel where objects overlap is on in several layers;\n"
                   if config.overlap_layers else "   (and in no other layer: this run uses the "
                   "argmax-only variant, so objects do not overlap);\n")
        return (
            "Algorithm 1 of the paper turns the maps of one image into instances. It is "
            "**not** part of the network and not expressible as bioimage.io post-processing: "
            "the consumer must apply it to the outputs, with this run's parameters "
            f"(`tau` = {config.tau}, `S_min` = {config.min_size} pixels, {connectivity} "
            "components):\n\n"
            "1. `F = maps[..., 0] > tau` (the foreground; strictly greater);\n"
            "2. remove the connected components of `F` with fewer than `S_min` pixels;\n"
            "3. switch every remaining foreground pixel on in the layer of its largest "
            "activation `maps[..., 1:]` (argmax; ties to the lowest layer)\n" + overlap +
            ("4. every connected component of every layer with at least `S_min` pixels is one "
             "object.\n\n" if not config.join_layers else
             f"4. (not in the paper) components of layers at most {config.join_layers} apart, "
             "counted cyclically, that touch or share a pixel are one object"
             + ("" if not config.join_max_area_ratio else
                f" (joined pair by pair, most touching pixels first, as long as the joined "
                f"object covers at most {config.join_max_area:.0f} pixels)")
             + "; every object with at least `S_min` pixels is kept.\n\n") +
            f"The result is a label stack `({config.layers}, H, W)`: one slice per layer, objects "
            "in different slices may overlap (a single label image cannot hold them). In "
            "Python:\n\n"
            "```python\n"
            "from layernet.postprocess import postprocess\n"
            f"stack = postprocess(maps[0, ..., 0], maps[0, ..., 1:], tau={config.tau}, "
            f"min_size={config.min_size},\n"
            f"                    overlap_layers={config.overlap_layers}, "
            f"connectivity={config.connectivity}, join_layers={config.join_layers}"
            + (f",\n                    join_max_area={config.join_max_area:g}"
               if config.join_max_area_ratio else "") + ")\n"
            "```\n")

    def postprocessing_summary(self, config: Config) -> str:
        """``Algorithm 1 (README)``."""
        return "Algorithm 1 (README)"


LAYERING = LayeringMethod()
METHODS = {LAYERING.name: LAYERING}
"""The methods of this module by name (:data:`layernet.methods.BUILTIN_METHODS`)."""
