#!/usr/bin/env python
"""Which layers a trained model uses, and how many neighbouring objects share one.

For every image of a split, each object's layer is the argmax of the model's mean embedding over
its overlap-free part (the paper's phase-2 assignment, ``layernet.losses.object_layers``); the
script counts the adjacent object pairs (closer than the run's ``adjacency_distance``) whose
layers coincide (Algorithm 1 merges such pairs where they touch) and the objects per layer.
Example::

    python bench/layer_use.py runs/acc/phase1 --split train
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="run folders or .h5 models")
    parser.add_argument("--split", choices=("train", "val"), default="train",
                        help="the run's training or validation images (train)")
    args = parser.parse_args(argv)

    from datasets import load_source
    from layernet import runfolder
    from layernet.assignment import layer_collisions
    from layernet.model import build_model, load_model_weights
    from layernet.training import frozen_layer_assignment, load_training_data

    data_config = None
    data = None
    print(f"{'model':<50} {'pairs':>6} {'shared':>7} objects per layer")
    for model in args.models:
        path = runfolder.resolve_model_path(model)
        config = runfolder.config_for_model(path).replace(layer_assignment="argmax",
                                                          streaming="off")
        key = (config.data, config.data_dir, config.split_seed, config.val_fraction,
               str(config.data_options), config.adjacency_distance)
        if data is None or key != data_config:
            data, data_config = load_training_data(config, load_source), key
        samples = data.train if args.split == "train" else data.val
        net = build_model(config)
        load_model_weights(net, path)
        result = layer_collisions(frozen_layer_assignment(net, samples, config),
                                  [sample.adjacency for sample in samples], config.layers)
        print(f"{path:<50} {result['pairs']:>6} {result['shared']:>7} "
              f"{result['objects_per_layer']}", flush=True)


if __name__ == "__main__":
    main()
