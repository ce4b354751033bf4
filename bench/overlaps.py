#!/usr/bin/env python
"""Does a model complete overlaps? Overlap pixels of its predictions and its layer maps.

For every image of a split of the model's own dataset (its own train/validation split, as
``evaluate.py --split`` scores it) the script runs the network and Algorithm 1 with the model's
thresholds, and counts the ground truth's overlap pixels (covered by two or more objects,
:mod:`layernet.overlap_pixels`):

* ``instances``: how many of them the predicted objects cover twice or more (recall), and how
  many of the predicted overlap pixels are true ones (precision);
* ``maps``: how many of them are on in two or more layers (activation ``> tau``) inside the
  foreground (``> tau``), what Algorithm 1's lines 7-8 add before any size screening;
* the second-highest layer activation at the ground truth's overlap pixels and at its pixels of
  one object (percentiles): where the two distributions coincide, the network does not tell
  overlaps from single objects.

Example (the ``worms`` model on BBBC010's validation wells, then on 15 training wells)::

    python bench/overlaps.py models/worms --data-dir ../shared/data/BBBC010
    python bench/overlaps.py models/worms --data-dir ../shared/data/BBBC010 --split train --count 15
"""

from __future__ import annotations

import argparse
import os

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PERCENTILES = (50, 75, 90, 99)


def second_highest(layering: np.ndarray) -> np.ndarray:
    """The second-highest of the ``N`` layer activations of every pixel, ``(H, W)``."""
    return np.partition(layering, -2, axis=-1)[..., -2]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="run folder, model folder or .h5 model")
    parser.add_argument("--data-dir", help="the dataset's folder (default: the model's)")
    parser.add_argument("--split", choices=("train", "val"), default="val",
                        help="the model's training or validation images (val)")
    parser.add_argument("--count", type=int, default=0, help="only the first N images (0: all)")
    parser.add_argument("--tau", type=float, help="threshold instead of the model's")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation")
    args = parser.parse_args(argv)

    from datasets import load_dataset
    from layernet.batch_predict import load_predictor
    from layernet.inference import instances_from_maps
    from layernet.overlap_pixels import OverlapPixels, coverage

    changes = {} if args.tau is None else {"tau": args.tau}
    predictor = load_predictor(args.model, config_changes=changes, tta=args.tta)
    config = predictor.config
    if not predictor.method.has_layers:
        parser.error(f"{args.model}: method {config.method!r} has no layers")
    samples = load_dataset(config.data, args.data_dir or config.data_dir, args.split,
                           config.split_seed, config.val_fraction, **(config.data_options or {}))
    samples = samples[:args.count] if args.count > 0 else samples
    instances, maps = OverlapPixels(), OverlapPixels()
    at_overlaps, at_single = [], []
    for sample in samples:
        foreground, layering = predictor.maps_normalized(predictor.normalize(sample.image))
        covered = coverage(sample.stack)
        truth = covered >= 2
        predicted = coverage(instances_from_maps(foreground, layering, config)) >= 2
        instances += OverlapPixels.from_masks(truth, predicted)
        in_two = (np.count_nonzero(layering > config.tau, axis=-1) >= 2) & (
            foreground > config.tau)
        maps += OverlapPixels.from_masks(truth, in_two)
        second = second_highest(layering)
        at_overlaps.append(second[truth])
        at_single.append(second[covered == 1])
    overlaps_second = np.concatenate(at_overlaps)
    single_second = np.concatenate(at_single)
    result = {
        "images": len(samples), "tau": config.tau, "instances": instances, "maps": maps,
        "second_at_overlaps": (np.percentile(overlaps_second, PERCENTILES).tolist()
                               if overlaps_second.size else []),
        "second_at_single": (np.percentile(single_second, PERCENTILES).tolist()
                             if single_second.size else []),
    }
    print(f"{args.model}: {len(samples)} {args.split} images of {config.data!r}, tau "
          f"{config.tau:g}, min size {config.min_size}; ground-truth overlap pixels "
          f"{instances.ground_truth}")
    for name, counts in (("instances", instances), ("maps", maps)):
        precision = f"{counts.precision:.1%}" if counts.predicted else "-"
        print(f"  {name:<9}: {counts.found} of them predicted as overlaps (recall "
              f"{counts.recall:.1%}); {counts.predicted} predicted overlap pixels (precision "
              f"{precision})")
    for name in ("second_at_overlaps", "second_at_single"):
        values = ", ".join(f"{value:.3f}" for value in result[name]) or "-"
        label = "overlap pixels" if name == "second_at_overlaps" else "one-object pixels"
        print(f"  second-highest layer at {label:<17} (percentiles "
              f"{'/'.join(map(str, PERCENTILES))}): {values}")
    return result


if __name__ == "__main__":
    main()
