"""Train a layernet model (two phases, paper Section 2).

Phase 1 learns the foreground and the layering of the overlap-free foreground:

    python train.py --phase layering --out runs/demo-layering

Phase 2 starts from the best phase-1 model and adds overlap completion:

    python train.py --phase overlap --init runs/demo-layering/best.h5 --out runs/demo-overlap

The paper's baselines (Sec. 3.3) train with the same backbone, loop and run folder; a
single phase, cross-entropy on object/background (UNet-2) or object/boundary/background with a
pseudo-boundary through overlaps (UNet-3):

    python train.py --method unet3 --out runs/demo-unet3

An interrupted run continues where it stopped (last completed epoch, same optimizer state and
learning-rate schedule):

    python train.py --resume runs/demo-layering

A pretrained model (by name, see models/README.md) is fine-tuned on your own images and masks in
the phase it was trained in, with its architecture, channels and tuned settings:

    python train.py --init worms --data folder --data-dir mine --minutes 10 --out runs/mine

Settings come, in increasing priority, from the defaults (the paper's), the ``config.json`` of
``--init`` (phase 2 keeps the architecture of the model it starts from), the presets --recipe and
--authors (each sets only its own fields), the fields a ``--config`` file sets, the command-line
options and --set (layernet.settings.training_config).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from typing import NoReturn

from layernet.cli import parse_key_values, quiet_tensorflow, run_command, setup_logging
from layernet.config import METHODS, PRECISIONS, Config
from layernet.methods import get_method

quiet_tensorflow()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run = parser.add_argument_group("run")
    run.add_argument("--method", choices=METHODS,
                     help="model: layering (the paper's, default), or the baselines unet2 "
                     "(object/background) and unet3 (object/boundary/background)")
    run.add_argument("--phase", choices=("layering", "overlap"),
                     help="'layering' (phase 1) or 'overlap' (phase 2, needs --init); default "
                     "layering, or overlap with --init of a run, or a published model's own")
    run.add_argument("--init", metavar="MODEL", help="weights to start from: a pretrained "
                     "model's name (see models/README.md) or a published model folder, which "
                     "is fine-tuned in the phase it was trained in; or the best.h5 of a "
                     "phase-1 run (or its folder), which starts phase 2. Its config.json "
                     "provides the architecture")
    run.add_argument("--resume", metavar="RUN", nargs="?", const="", default=None,
                     help="continue the interrupted run in RUN (default: --out) from last.h5")
    run.add_argument("--out", metavar="DIR", help="run folder to create (default runs/<time>-<phase>)")
    run.add_argument("--config", metavar="JSON", help="config.json whose fields override the defaults")
    run.add_argument("--recipe", choices=("paper", "cpu"),
                     help="training recipe: 'cpu' (optimiser, schedule, network size and "
                     "augmentation chosen by measurement for minutes to hours on a CPU; see "
                     "docs/recipes.md) or 'paper' (Section 3: RMSprop 1e-4, UNet-M/64, batch 8); "
                     "default: the paper's values, or those of --init. With --init the model's "
                     "architecture is kept")
    run.add_argument("--authors", action="store_true", help="use the authors' code variants of the "
                     "losses instead of the paper's equations (see README)")
    run.add_argument("--set", metavar="FIELD=VALUE", action="append", default=[],
                     help="set any config.json field (repeatable, highest priority), e.g. "
                     "--set elastic_probability=0")
    run.add_argument("--verbose", action="store_true", help="more log output")
    data = parser.add_argument_group("data")
    data.add_argument("--data", help="dataset: synthetic (default, built in), bbbc010, occ2014, "
                      "ccdb6843 or folder")
    data.add_argument("--data-dir", metavar="DIR", help="dataset folder (not needed for synthetic)")
    data.add_argument("--data-option", metavar="KEY=VALUE", action="append", default=[],
                      help="dataset option, repeatable (e.g. kind=cells for synthetic)")
    data.add_argument("--channels", type=int, help="image channels (default 1)")
    data.add_argument("--val-fraction", type=float, help="validation share of the training data "
                      "(0.1; at least 3 images, or all but one of fewer)")
    data.add_argument("--train-on-val", action="store_true", default=None,
                      help="train on the validation images too and validate nothing: best.h5 "
                      "is the last epoch's weights (the average with --ema) and the thresholds "
                      "stay as configured; for datasets too small for a validation split that "
                      "can choose a checkpoint. Score such a model on its test split only")
    data.add_argument("--split-seed", type=int, help="seed of the train/validation split and of "
                      "the synthetic data (0; an --init / --config run's own); --seed does not "
                      "move the validation images")
    data.add_argument("--input-scale", type=float, metavar="FACTOR",
                      help="the network works on images resized by this factor (1); e.g. 0.5 for "
                      "objects much larger than needed (OCC2014's cells): 4x cheaper steps, "
                      "maps resized back; outputs, --min-size, adjacency and elastic settings "
                      "stay in the image's pixels, --patch-size is the network's crop")
    data.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                      help="--stream: prepare every image once into a compressed disk cache "
                      "and stream it while training, for datasets larger than memory (same "
                      "batches as in memory); --no-stream: load everything into memory; "
                      "default: stream when the decoded data would exceed a quarter of the "
                      "available memory. Also accepted with --resume")
    data.add_argument("--cache-dir", metavar="DIR", help="streaming cache folder, reusable by "
                      "other runs on the same data (default <run>/cache)")
    model = parser.add_argument_group("model")
    model.add_argument("--size", choices=("S", "M", "L"), help="UNet-S/M/L: 3/4/5 poolings (M)")
    model.add_argument("--filters", type=int, help="filters of the first UNet level (64)")
    model.add_argument("--layers", type=int, help="N, number of output layers (8)")
    model.add_argument("--head-filters", type=int, help="filters of the two 3x3 convs per head (64)")
    model.add_argument("--foreground-dice", type=float, metavar="WEIGHT",
                       help="add a soft Dice loss of the foreground with this weight to the "
                       "cross-entropy (0 = the paper's loss; every method)")
    model.add_argument("--precision", choices=("auto",) + PRECISIONS,
                       help="compute precision (default auto, or the --init / --config run's): "
                       "auto = bf16 on a GPU or a CPU with bf16 instructions (AVX512-BF16, AMX), "
                       "else float32; the choice is written to config.json")
    fit = parser.add_argument_group("optimisation")
    fit.add_argument("--epochs", type=int, help="epochs to train (100)")
    fit.add_argument("--steps-per-epoch", type=int, help="steps per epoch (0 = one pass over the images)")
    fit.add_argument("--batch-size", type=int, help="images per step (8)")
    fit.add_argument("--patch-size", type=int, help="side of the random training crops (256)")
    fit.add_argument("--minutes", type=float, help="stop after this wall time in minutes; the "
                     "epoch in progress is closed (validated, checkpointed) (0 = no limit)")
    fit.add_argument("--lr", type=float, help="peak learning rate (1e-4)")
    fit.add_argument("--optimizer", choices=("rmsprop", "adam", "adamw"),
                     help="optimizer (rmsprop, the paper's)")
    fit.add_argument("--weight-decay", type=float, help="decoupled weight decay (0; adamw needs it)")
    fit.add_argument("--lr-schedule", choices=("staircase", "cosine", "onecycle"),
                     help="staircase: x0.9 every 10k steps (paper); cosine: warm-up, then cosine "
                     "decay to the end of the training (of --epochs, or of the --minutes budget, "
                     "estimated from the measured step time); onecycle: cosine warm-up from "
                     "lr/25, then cosine decay")
    fit.add_argument("--warmup", type=float, metavar="FRACTION",
                     help="share of the training spent warming the learning rate up (0)")
    fit.add_argument("--final-lr", type=float, metavar="FRACTION",
                     help="cosine/onecycle: last learning rate as a fraction of --lr (0.01)")
    fit.add_argument("--ema", type=float, metavar="MOMENTUM", help="validate and save a moving "
                     "average of the weights with this momentum, e.g. 0.99 (0 = off)")
    fit.add_argument("--select-window", type=int, metavar="EPOCHS",
                     help="best.h5 is the epoch with the highest validation meanAP averaged over "
                     "it and the EPOCHS - 1 before it (1: its own score); for validation splits "
                     "of a few images, whose scores jump between epochs")
    fit.add_argument("--seed", type=int, help="seed of augmentation and initialisation (0); "
                     "the split has --split-seed")
    fit.add_argument("--deterministic", action="store_true", default=None,
                     help="bit-identical reruns with the same --seed (deterministic TensorFlow "
                     "kernels; slightly slower)")
    fit.add_argument("--strategy", choices=("default", "mirrored", "multiworker"),
                     help="tf.distribute strategy (default); multiworker reads TF_CONFIG")
    post = parser.add_argument_group("validation post-processing (Algorithm 1)")
    post.add_argument("--min-size", type=int, help="S_min, smallest object in pixels (250)")
    post.add_argument("--tau", type=float, help="threshold of foreground and layers (0.5)")
    return parser.parse_args(argv)


_STREAMING = {True: "on", False: "off", None: None}
"""``--stream`` / ``--no-stream`` / neither -> Config.streaming (None: keep)."""


def build_config(args: argparse.Namespace) -> Config:
    """The run's configuration from the parsed options (:func:`layernet.settings.training_config`
    merges them with the defaults, the --init model's config, the presets and --config)."""
    from layernet.settings import training_config

    if args.train_on_val and args.val_fraction is not None:
        raise ValueError("--val-fraction sets the validation images and --train-on-val trains "
                         "on them: give one")
    fields = {
        "method": args.method, "phase": args.phase, "data": args.data, "data_dir": args.data_dir,
        "channels": args.channels, "val_fraction": args.val_fraction,
        "train_on_val": args.train_on_val,
        "split_seed": args.split_seed, "input_scale": args.input_scale, "size": args.size,
        "filters": args.filters, "head_filters": args.head_filters, "layers": args.layers,
        "precision": args.precision, "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch, "batch_size": args.batch_size,
        "patch_size": args.patch_size, "learning_rate": args.lr, "seed": args.seed,
        "deterministic": args.deterministic, "time_budget_minutes": args.minutes,
        "strategy": args.strategy, "min_size": args.min_size, "tau": args.tau,
        "streaming": _STREAMING[args.stream], "cache_dir": args.cache_dir,
        "optimizer": args.optimizer, "weight_decay": args.weight_decay,
        "lr_schedule": args.lr_schedule, "warmup_fraction": args.warmup,
        "final_lr_fraction": args.final_lr, "ema_momentum": args.ema,
        "select_window": args.select_window,
        "foreground_dice_weight": args.foreground_dice,
    }
    fields.update(parse_key_values(args.set, flag="--set"))
    return training_config(init=args.init, config_file=args.config, recipe=args.recipe,
                           authors=args.authors, fields=fields,
                           data_options=parse_key_values(args.data_option))


def main(argv: list[str] | None = None) -> int:
    """Train one phase, or resume a run, as ``argv`` (default ``sys.argv[1:]``) says.

    Returns the exit code, 0, after printing the run folder and its best validation score.
    Bad options, files or data raise ``ValueError``, ``OSError`` or ``RuntimeError``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    setup_logging(args.verbose)
    command = "python train.py " + shlex.join(argv)  # recorded in the run folder
    from layernet import runfolder

    if args.resume is None and args.out:  # at once, before TensorFlow starts
        runfolder.check_free_for_a_new_run(args.out)
    from datasets import check_options, load_source
    from layernet.config import Config
    from layernet.settings import resume_config
    from layernet.training import train

    if args.resume is not None:
        run_dir = args.resume or args.out
        if not run_dir:
            raise ValueError("--resume needs the run folder (or --out)")
        # how the data is read does not change the batches: may differ from the first run
        config = resume_config(Config.load(os.path.join(run_dir, runfolder.CONFIG_FILE)),
                               streaming=_STREAMING[args.stream], cache_dir=args.cache_dir)
        result = train(config, run_dir, resume=True, load_source=load_source,
                       command=command)
    else:
        config = build_config(args)
        check_options(config.data, config.data_options)  # before the run folder is made
        # a method with several phases names the run by its phase, the others by the method
        suffix = config.phase if len(get_method(config.method).phases) > 1 else config.method
        run_dir = args.out or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S") + f"-{suffix}")
        result = train(config, run_dir, init=args.init, load_source=load_source, command=command)
    last = result["last"]
    print(f"run folder: {result['run_dir']}")
    if config.train_on_val:
        print(f"trained on the training and validation images; best.h5 is epoch "
              f"{result['best_epoch']} (the last; no validation)")
    else:
        print(f"best validation meanAP {result['best_score']:.4f} at epoch "
              f"{result['best_epoch']}"
              + (f"; last epoch: meanAP {last.get('val_meanAP', float('nan')):.4f}, "
                 f"AJI {last.get('val_AJI', float('nan')):.4f}" if last else ""))
    phases = get_method(config.method).phases
    if config.phase != phases[-1]:
        print(f"next: python train.py --phase {phases[phases.index(config.phase) + 1]} --init "
              f"{os.path.join(result['run_dir'], runfolder.BEST_FILE)}")
    return 0


def run(argv: list[str] | None = None) -> NoReturn:
    """The console script ``layernet-train`` and ``python train.py``: :func:`main` with
    one-line errors (:func:`layernet.cli.run_command`)."""
    run_command(main, argv)
