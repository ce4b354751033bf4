#!/usr/bin/env python
"""Validation scores of a trained model under several limits of the join of neighbouring layers.

``join_layers`` (not in the paper) counts touching pieces of neighbouring layers as one object:
it repairs an object cut where its layer changes along its body, and merges two whole objects
that touch. ``join_max_area_ratio`` limits a join to objects of at most that many times the
training objects' median area (``object_area``). For every ratio given, this script
post-processes the model's maps of the run's validation (or training) split, chooses ``tau`` and
``min_size`` on that split from the grid ``tune_thresholds`` uses, and prints meanAP / AJI at the
run's configured thresholds and at the chosen ones. The network runs once per image. Ratio 0 is
the join without a limit; ``--no-join`` adds Algorithm 1 as published. Example::

    python -m bench.join_limit runs/acc/phase1 --ratios 0 1.25 1.5 2 --no-join

Never run it on a test split: the thresholds and the ratio are chosen on what it scores.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> list[dict]:
    """Run the comparison; return one row per setting (also printed as a markdown table)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a run folder or .h5 model of the layering method")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 1.25, 1.5, 2.0],
                        help="join_max_area_ratio values (0 = join without a limit)")
    parser.add_argument("--join-layers", type=int, default=0,
                        help="layers apart that are joined (default: the model's, else 1)")
    parser.add_argument("--no-join", action="store_true",
                        help="also score Algorithm 1 as published (join_layers 0)")
    parser.add_argument("--split", choices=("train", "val"), default="val",
                        help="the run's split to score and choose thresholds on (val)")
    args = parser.parse_args(argv)
    if any(ratio < 0 for ratio in args.ratios) or args.join_layers < 0:
        parser.error("ratios and --join-layers must be >= 0")

    from datasets import load_source
    from layernet import runfolder
    from layernet.config import Config
    from layernet.inference import Predictor
    from layernet.instances import median_object_area
    from layernet.model import build_model, load_model_weights
    from layernet.training import choose_thresholds, load_training_data

    path = runfolder.resolve_model_path(args.model)
    runfolder.config_for_model(path)  # one-line errors for a file outside a run folder
    # the run's own thresholds (config.json), as training's tuning starts from them
    config = Config.load(os.path.join(os.path.dirname(os.path.abspath(path)),
                                      runfolder.CONFIG_FILE)).replace(streaming="off")
    if config.method != "layering":
        parser.error(f"{path}: method {config.method!r} has no layers to join")
    join_layers = args.join_layers or config.join_layers or 1
    data = load_training_data(config, load_source)
    samples = data.train if args.split == "train" else data.val
    area = median_object_area(sample.stack for sample in data.train)
    net = build_model(config)
    load_model_weights(net, path)
    predictor = Predictor(net, config)
    maps = [predictor.maps_normalized(sample.image) for sample in samples]
    settings = ([("Algorithm 1 (no join)", dict(join_layers=0, join_max_area_ratio=0.0))]
                if args.no_join else [])
    settings += [(f"join {join_layers}, " + (f"limit {ratio:g} x {area} px" if ratio
                                             else "no limit"),
                  dict(join_layers=join_layers, join_max_area_ratio=ratio, object_area=area))
                 for ratio in args.ratios]
    rows = []
    print(f"{path}: {len(samples)} {args.split} images, median training object area {area} px")
    print("| post-processing | configured tau / min_size | meanAP / AJI | chosen tau / min_size "
          "| meanAP / AJI |\n|---|---|---|---|---|")
    for name, changes in settings:
        predictor.config = config.replace(**changes)
        chosen = choose_thresholds(predictor, samples, maps=maps)
        configured = chosen["configured"] or {"meanAP": float("nan"), "AJI": float("nan")}
        rows.append({"setting": name, **changes, "tau": chosen["tau"],
                     "min_size": chosen["min_size"], "meanAP": chosen["meanAP"],
                     "AJI": chosen["AJI"], "configured": configured})
        print(f"| {name} | {config.tau} / {config.min_size} | {configured['meanAP']:.4f} / "
              f"{configured['AJI']:.4f} | {chosen['tau']} / {chosen['min_size']} | "
              f"{chosen['meanAP']:.4f} / {chosen['AJI']:.4f} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
