"""The paper's semantic-segmentation baselines UNet-2 and UNet-3 (Sec. 3.3), and StarDist's labels.

The code lives in the method package :mod:`layernet.methods`; this module keeps the names it
exported:

* :mod:`layernet.methods.semantic`: the two methods (heads, losses, maps, instances),
  :func:`semantic_losses`, :func:`maps_from_outputs`, :func:`instances_from_semantic`;
* :mod:`layernet.methods.semantic_targets`: the targets (:func:`object_boundaries`,
  :func:`pseudo_boundary`, :func:`semantic_target`) and StarDist's label images
  (:func:`flatten_with_pseudo_boundary`);
* :mod:`layernet.methods.semantic_postprocess`: :func:`unet2_instances`,
  :func:`unet3_instances`.

Nothing here but the losses imports TensorFlow at call time.
"""

from __future__ import annotations

from layernet.methods.semantic import (LOSS_NAMES, PROBABILITY_CLIP, attach_semantic_targets,
                                       foreground_of, instances_from_semantic, map_names,
                                       maps_from_outputs, semantic_losses)
from layernet.methods.semantic_postprocess import unet2_instances, unet3_instances
from layernet.methods.semantic_targets import (BACKGROUND, BASELINES, BOUNDARY, OBJECT,
                                               BaselineError, flatten_with_pseudo_boundary,
                                               object_boundaries, pseudo_boundary,
                                               semantic_target)

__all__ = [
    "BASELINES",
    "BACKGROUND",
    "OBJECT",
    "BOUNDARY",
    "LOSS_NAMES",
    "PROBABILITY_CLIP",
    "BaselineError",
    "object_boundaries",
    "pseudo_boundary",
    "semantic_target",
    "attach_semantic_targets",
    "semantic_losses",
    "maps_from_outputs",
    "foreground_of",
    "map_names",
    "unet2_instances",
    "unet3_instances",
    "instances_from_semantic",
    "flatten_with_pseudo_boundary",
]
