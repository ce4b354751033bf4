"""Score instance segmentations with the paper's metrics (AP@0.5..0.9, meanAP, AJI).

Evaluate a trained model on a dataset split:

    python evaluate.py --model runs/demo-overlap/best.h5 --data bbbc010 --data-dir data/bbbc010
    python evaluate.py --model cells --data occ2014 --data-dir data/occ2014 --split val

With --model the network runs on the next image while the last one is post-processed and
scored (--sequential turns this off; the scores are the same). --tta averages the network's maps
over the 8 flips and rotations of each image (8 network passes; default output folder
<run>/eval-<data>-<split>-tta/, so it sits beside the plain evaluation).

Score predictions already on disk (any tool's: label-stack TIFFs <name>.layers.tif, label
images <name>.tif/.png, or per-object mask folders <name>/) against a dataset's ground truth,
or against ground truth files of the same kinds:

    python evaluate.py --pred results/ --data bbbc010 --data-dir data/bbbc010
    python evaluate.py --pred 'cellpose/*_masks.png' --gt truth/ --out eval-cellpose

Both matchings are reported: "reference" (the authors' evaluator, used for the paper's Table 1:
each ground-truth object takes the prediction with the largest intersection) and "hungarian"
(one-to-one, as StarDist/Cellpose). Counts are pooled over the images. The output folder
(--out; default <run>/eval-<data>-<split>/ for a model, runs/eval-<name>-<data>-<split>/ for a
pretrained one) receives metrics.json (pooled numbers),
metrics.csv (one row per image and matching) and worst/ (ground truth | prediction panels of the
worst images: green = found, yellow = missed, red = false prediction).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from layernet.cli import (add_tile_options, check_tile_options, parse_key_values, quiet_tensorflow,
                          run_command, setup_logging, threshold_overrides)
from layernet.config import PRECISIONS

quiet_tensorflow()

logger = logging.getLogger("evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("what to score (--model or --pred)")
    source.add_argument("--model", metavar="RUN", help="run folder, model file or pretrained "
                        "model's name (see models/README.md) to evaluate")
    source.add_argument("--pred", metavar="DIR|GLOB", help="predictions on disk, matched to the "
                        "images by name (<name>.layers.tif, <name>.tif/.png, <name>/ masks)")
    truth = parser.add_argument_group("ground truth (--data or --gt)")
    truth.add_argument("--data", help="dataset: synthetic, bbbc010, occ2014, ccdb6843 or folder "
                       "(default with --model: the run's)")
    truth.add_argument("--data-dir", metavar="DIR", help="dataset folder")
    truth.add_argument("--split", default="test", help="split to score (default test)")
    truth.add_argument("--data-option", metavar="KEY=VALUE", action="append", default=[],
                       help="dataset option, repeatable (default with --model: the run's)")
    truth.add_argument("--split-seed", "--seed", type=int, dest="split_seed",
                       help="train/validation split seed (default with --model on the run's "
                       "dataset: the run's, else 0)")
    truth.add_argument("--val-fraction", type=float, help="validation share of the training "
                       "pool (default with --model on the run's dataset: the run's, else 0.1)")
    truth.add_argument("--gt", metavar="DIR|GLOB", help="ground-truth files instead of --data, "
                       "same kinds and naming as --pred")
    truth.add_argument("--images", metavar="DIR|GLOB", help="with --gt: images for the overlays")
    run = parser.add_argument_group("model prediction")
    add_tile_options(run)
    run.add_argument("--precision", choices=("auto",) + PRECISIONS,
                     help="compute precision of the network (default: the run's, or float32 "
                     "where this machine would only emulate it; auto = bf16 on a GPU or a CPU "
                     "with bf16 instructions, else float32)")
    run.add_argument("--tta", action="store_true",
                     help="test-time augmentation: average the network's maps over the 8 flips "
                     "and rotations of each image (or tile); 8 network passes instead of 1")
    run.add_argument("--tau", type=float, help="post-processing threshold (default: the run's)")
    run.add_argument("--min-size", type=int, help="smallest object (default: the run's)")
    run.add_argument("--save-pred", action="store_true",
                     help="also write the predictions to <out>/pred/<name>.layers.tif")
    run.add_argument("--sequential", action="store_true",
                     help="post-process and score each image before the network starts on the "
                     "next (default: overlapped, same scores)")
    report = parser.add_argument_group("report")
    report.add_argument("--out", metavar="DIR", help="output folder")
    report.add_argument("--thresholds", type=float, nargs="+", metavar="T",
                        help="IoU thresholds (default 0.5 0.6 0.7 0.8 0.9)")
    report.add_argument("--worst", type=int, default=4, metavar="K",
                        help="panels of the K worst images (default 4, 0 = none)")
    parser.add_argument("--verbose", action="store_true", help="more log output")
    args = parser.parse_args(argv)
    if bool(args.model) == bool(args.pred):
        parser.error("give exactly one of --model (evaluate a trained model) and --pred "
                     "(score predictions on disk)")
    if args.gt and args.data:
        parser.error("give either --data (a dataset) or --gt (ground-truth files), not both")
    if args.pred and not (args.gt or args.data):
        parser.error("--pred needs ground truth: --data NAME [--data-dir DIR] or --gt DIR|GLOB")
    if args.gt and args.model:
        parser.error("--gt works with --pred; with --model use --data")
    if args.tta and not args.model:
        parser.error("--tta works with --model (it changes how the network predicts)")
    check_tile_options(parser, args)
    if args.worst < 0:
        parser.error("--worst must be >= 0")
    return args


def _spec_folder(spec: str) -> str:
    if os.path.isdir(spec):
        return os.path.abspath(spec)
    import glob

    matches = glob.glob(spec)
    return os.path.dirname(os.path.abspath(matches[0])) if matches else os.getcwd()


class _Source:
    """Ground truth, images and predictions of the images to score, by name."""

    def __init__(self, args: argparse.Namespace) -> None:
        from layernet.evaluation import index_by_name

        self.args = args
        self.predictor = None
        self.config = None
        self.gt_files: dict[str, str] = {}
        self.image_files: dict[str, str] = {}
        self.samples: dict = {}
        if args.model:
            from layernet import runfolder
            from layernet.batch_predict import load_predictor

            self.model_path = runfolder.resolve_model_path(args.model)
            if not args.gt:  # its own dataset's split: refused at once, before TensorFlow
                trained = runfolder.config_for_model(self.model_path)
                if ((args.data or trained.data) == trained.data and trained.train_on_val
                        and args.split != "test"):
                    raise ValueError(
                        f"{args.model}: trained on all of {trained.data!r}'s training and "
                        f"validation images (train_on_val), so its {args.split!r} split would "
                        "score images it was trained on; use --split test")
            changes = threshold_overrides(args.tau, args.min_size)
            from layernet.model import resolve_precision

            self.predictor = load_predictor(self.model_path, resolve_precision(args.precision),
                                            changes, tta=args.tta)
            if args.tta:
                logger.info("test-time augmentation: 8 network passes per image or tile batch")
            self.config = self.predictor.config
        else:
            self.pred_files = index_by_name(args.pred)
        if args.gt:
            self.gt_files = index_by_name(args.gt)
            if args.images:
                self.image_files = index_by_name_images(args.images)
            self.names = sorted(self.gt_files)
            self.data, self.split = "files", "-"
        else:
            self._load_dataset()
        if args.pred:
            missing = [name for name in self.names if name not in self.pred_files]
            if missing:
                shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
                raise ValueError(f"{args.pred}: no prediction for {len(missing)} of "
                                 f"{len(self.names)} images ({shown})")

    def _load_dataset(self) -> None:
        from datasets import DEFAULT_VAL_FRACTION, load_dataset

        args, config = self.args, self.config
        data = args.data or (config.data if config else None)
        if not data:
            raise ValueError("--data is required")
        options = {}
        data_dir = args.data_dir
        seed, val_fraction = 0, DEFAULT_VAL_FRACTION
        if config is not None and data == config.data:
            options.update(config.data_options or {})
            data_dir = data_dir or config.data_dir
            # the run's own train/validation split: --split val scores its validation images
            seed, val_fraction = config.split_seed, config.val_fraction
        options.update(parse_key_values(args.data_option))
        # --data-option val_fraction=F (folder datasets took it so before) = --val-fraction F
        val_fraction = options.pop("val_fraction", val_fraction)
        seed = seed if args.split_seed is None else args.split_seed
        val_fraction = val_fraction if args.val_fraction is None else args.val_fraction
        samples = load_dataset(data, data_dir, args.split, seed, val_fraction, **options)
        if not samples:
            raise ValueError(f"dataset {data!r} split {args.split!r} holds no images")
        self.samples = {sample.name: sample for sample in samples}
        if len(self.samples) != len(samples):
            raise ValueError(f"dataset {data!r}: image names are not unique")
        self.names = [sample.name for sample in samples]
        self.data, self.split = data, args.split

    def ground_truth(self, name: str):
        from layernet.evaluation import read_instances

        if self.samples:
            return self.samples[name].stack
        return read_instances(self.gt_files[name])

    def image(self, name: str, shape: tuple[int, int]):
        import numpy as np

        if self.samples:
            return self.samples[name].image
        if name in self.image_files:
            from layernet.io import as_channels, read_image

            image = as_channels(read_image(self.image_files[name]), name=self.image_files[name])
            if image.shape[:2] == shape:
                return image
            logger.warning("%s: image size differs from the ground truth; no background",
                           self.image_files[name])
        return np.zeros(shape + (1,), np.float32)

    def submit_prediction(self, name: str, worker, timings: dict | None = None):
        """Future of the label stack predicted for (or read from disk for) image ``name``.

        With a model the network runs here and its post-processing is a job of ``worker`` (an
        :class:`~layernet.ordered_worker.OrderedWorker`); a file on disk is read by ``worker``.
        """
        from layernet.evaluation import read_instances
        from layernet.io import with_channels
        from layernet.prediction import submit_prediction

        if self.predictor is None:
            return worker.submit(read_instances, self.pred_files[name])
        args = self.args
        image = with_channels(self.samples[name].image, self.config.channels, name=name)
        prediction = submit_prediction(self.predictor, image, worker,
                                       tile_size=args.tile_size, overlap=args.tile_overlap,
                                       batch_size=args.tile_batch, timings=timings)
        return worker.submit(lambda: prediction.result().stack)

    def prediction(self, name: str):
        """The label stack of image ``name``, predicted or read here and now."""
        from layernet.ordered_worker import OrderedWorker

        return self.submit_prediction(name, OrderedWorker(threaded=False)).result()

    def default_out(self) -> str:
        if self.args.model:
            from layernet.runfolder import is_published_model

            tta = "-tta" if self.args.tta else ""
            folder = os.path.dirname(os.path.abspath(self.model_path))
            if is_published_model(folder):  # not into a shipped model's folder
                return os.path.join("runs", f"eval-{os.path.basename(folder)}-{self.data}-"
                                    f"{self.split}{tta}")
            return os.path.join(folder, f"eval-{self.data}-{self.split}{tta}")
        suffix = "eval" if self.args.gt else f"eval-{self.data}-{self.split}"
        return os.path.join(_spec_folder(self.args.pred), suffix)


def index_by_name_images(spec: str) -> dict[str, str]:
    """name -> image file of a folder or glob (for the overlays of --gt evaluations)."""
    from layernet.files import collect_inputs

    paths, _ = collect_inputs([spec], accept_matched=os.path.isfile)
    return {os.path.splitext(os.path.basename(p))[0]: p for p in paths if os.path.isfile(p)}


def main(argv: list[str] | None = None) -> int:
    """Score a model, or predictions on disk, as ``argv`` (default ``sys.argv[1:]``) says.

    Writes the report (metrics.json, metrics.csv, worst-image panels), prints the table and
    returns the exit code, 0. Bad options, files or data raise ``ValueError`` or ``OSError``.
    """
    args = parse_args(argv)
    setup_logging(args.verbose)
    from tqdm import tqdm

    from layernet.evaluation import format_table, worst_images, write_report
    from layernet.io import write_image_atomic, write_label_stack
    from layernet.metrics import DEFAULT_THRESHOLDS, MATCHINGS, score_image, summarize
    from layernet.ordered_worker import OrderedWorker
    from layernet.viz import comparison_panel

    thresholds = tuple(args.thresholds or DEFAULT_THRESHOLDS)
    source = _Source(args)
    out_dir = args.out or source.default_out()
    os.makedirs(out_dir, exist_ok=True)
    scores = {matching: [] for matching in MATCHINGS}
    timings: dict[str, float] = {}
    bar = tqdm(total=len(source.names), unit="image", file=sys.stderr, disable=None)

    def score(name: str, prediction) -> None:
        """Score one image once its prediction is done (a job of ``worker``, in image order)."""
        gt = source.ground_truth(name)
        pred = prediction.result()
        if pred.shape[1:] != gt.shape[1:]:
            raise ValueError(f"{name}: prediction has size {pred.shape[1:]} but the ground truth "
                             f"has {gt.shape[1:]}")
        if args.save_pred and source.predictor is not None:
            os.makedirs(os.path.join(out_dir, "pred"), exist_ok=True)
            write_label_stack(os.path.join(out_dir, "pred", f"{name}.layers.tif"), pred)
        for matching in MATCHINGS:
            scores[matching].append(score_image(gt, pred, matching, thresholds, name=name))
        bar.update(1)

    # The network runs here on the next image while the worker post-processes and scores the
    # last one (--sequential: one after the other; the same jobs in the same order either way).
    scored = []
    try:
        with OrderedWorker(depth=1, threaded=not args.sequential) as worker:
            for name in source.names:
                for done in scored:  # stop at the first failure, as the sequential path does
                    if done.done():
                        done.result()
                scored = [done for done in scored if not done.done()]
                scored.append(worker.submit(score, name, source.submit_prediction(
                    name, worker, timings)))
        for done in scored:
            done.result()
    finally:
        bar.close()
    summaries = {matching: summarize(items) for matching, items in scores.items()}

    meta = {"data": source.data, "split": source.split, "n_images": len(source.names),
            "thresholds": list(thresholds)}
    if source.predictor is not None:
        config = source.config
        meta.update(model=os.path.abspath(source.model_path), precision=config.precision,
                    tta=args.tta,
                    postprocess={"tau": config.tau, "min_size": config.min_size,
                                 "overlap_layers": config.overlap_layers,
                                 "connectivity": config.connectivity,
                                 "join_layers": config.join_layers,
                                 "join_max_area": config.join_max_area},
                    tiling={"tile_size": ("off" if args.tile_size == 0
                                          else args.tile_size or "auto"),
                            "overlap": args.tile_overlap or "auto"},
                    seconds={key: round(value, 3) for key, value in timings.items()})
    else:
        meta.update(predictions=os.path.abspath(args.pred),
                    ground_truth=os.path.abspath(args.gt) if args.gt else None)
    json_path, csv_path = write_report(out_dir, summaries, scores, meta)

    worst = worst_images(scores["reference"], args.worst)
    if worst:
        folder = os.path.join(out_dir, "worst")
        os.makedirs(folder, exist_ok=True)
        for rank, name in enumerate(worst, start=1):
            gt = source.ground_truth(name)
            panel = comparison_panel(source.image(name, gt.shape[1:]), gt, source.prediction(name))
            write_image_atomic(os.path.join(folder, f"{rank:02d}-{name}.png"), panel)

    print(f"{source.data} {source.split}: {len(source.names)} images, "
          f"{summaries['reference']['n_gt']} ground-truth objects, "
          f"{summaries['reference']['n_pred']} predicted")
    print(format_table(summaries))
    panels = f", {len(worst)} worst-image panels" if worst else ""
    print(f"wrote {json_path}, {csv_path}{panels}")
    return 0


def run(argv: list[str] | None = None) -> NoReturn:
    """The console script ``layernet-evaluate`` and ``python evaluate.py``: :func:`main` with
    one-line errors (:func:`layernet.cli.run_command`)."""
    run_command(main, argv)
