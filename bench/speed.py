#!/usr/bin/env python
"""Speed of layernet on this machine: one run, one table, every ratio against a baseline timed in
the same run (baseline and candidate calls interleaved, medians), so a busy machine slows both.

Rows:

* machine:   a float32 and a bfloat16 ``N^3`` matmul and 3x3 convolution (64 -> 64 channels,
             4 x 224^2) in GFLOP/s: what the hardware delivers (AMX on recent Xeons; the
             header names the CPU and whether it has AMX);
* train:     one training step (forward, all phase-1 losses, gradients, RMSprop) in float32 vs
             mixed_bfloat16, UNet-S/M at 256^2 and 448^2 patches;
* pipeline:  batches/s of the tf.data training pipeline alone (all augmentations) vs the batches/s
             the bf16 train step consumes (256^2 patches);
* loss:      our batched layering loss (value + gradient) vs the per-image formulation;
* forward:   the network on one 448^2 image, float32 and bf16, its GFLOP count and achieved
             GFLOP/s against the conv rate measured above (same dtype);
* postproc:  Algorithm 1 on the maps of a well-trained network (ideal maps from ground truth);
* predict:   end to end per image (normalise, network, post-process, write .layers.tif) at 448^2
             and 2048^2 (tiled), float32 and bf16, vs StarDist ``predict_instances`` (+ its
             normalisation and writing) with a StarDist2D of comparable size trained for a few
             steps, when the optional ``stardist`` package is installed; and the convolution
             FLOPs of both networks on a 448^2 image;
* onnx:      the same Predictor with ONNX Runtime (the exported ``model.onnx``, float32) in place
             of the Keras model (float32): the forward pass and predict.py's work per 448^2
             image, and the largest difference of their maps (needs requirements-export.txt).

Example (about 5 minutes on 2 cores)::

    python bench/speed.py --repeats 3
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.pipeline import batches_per_second, pipeline_dataset  # noqa: E402
from bench.predict import ideal_maps, synthetic_mosaic  # noqa: E402

ROWS: list[tuple[str, str, str, str, str]] = []


def row(section: str, what: str, value: str, baseline: str = "", ratio: str = "") -> None:
    """Add one line to the final table (and print it at once, so progress is visible)."""
    ROWS.append((section, what, value, baseline, ratio))
    print(f"  {section:<9} {what:<44} {value:>14} {baseline:>14} {ratio:>8}", flush=True)


def interleaved(functions: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
                ) -> dict[str, float]:
    """Median seconds of each function, the calls of all functions interleaved round-robin."""
    for function in functions.values():
        for _ in range(warmup):
            function()
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def cpu_description(path: str = "/proc/cpuinfo") -> str:
    """CPU model and the instruction sets that decide the bf16 speed-up (Linux; else "?").

    AMX (``amx_bf16``, Sapphire Rapids and later Xeons) multiplies bf16 tiles several times
    faster than float32 FMA; ``avx512_bf16`` alone (e.g. AMD Zen 4) has at most twice the
    float32 rate, which bounds a bf16 train step's speed-up at about 2x.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return "?"
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines()
                      if line.startswith("flags")), []))
    isa = [flag for flag in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if flag in flags]
    return f"{model} ({' '.join(isa) or 'no AVX-512'}; AMX {'yes' if 'amx_bf16' in flags else 'no'})"


def machine_rates(args: argparse.Namespace) -> dict[str, float]:
    """GFLOP/s of a square matmul and a 3x3 conv in float32 and bfloat16."""
    n = args.matmul_size
    rates = {}
    functions = {}
    for dtype in (tf.float32, tf.bfloat16):
        a = tf.random.normal([n, n], dtype=tf.float32)
        a = tf.cast(a, dtype)
        functions[f"matmul {dtype.name}"] = (lambda a=a: tf.matmul(a, a).numpy(), 2.0 * n ** 3)
        x = tf.cast(tf.random.normal([4, 224, 224, 64]), dtype)
        k = tf.cast(tf.random.normal([3, 3, 64, 64]) * 0.05, dtype)
        conv = tf.function(lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"))
        functions[f"conv {dtype.name}"] = (lambda x=x, k=k, conv=conv: conv(x, k).numpy(),
                                           2.0 * 4 * 224 * 224 * 9 * 64 * 64)
    seconds = interleaved({name: item[0] for name, item in functions.items()}, args.repeats)
    for name, (_, flops) in functions.items():
        rates[name] = flops / seconds[name] / 1e9
    for kind in ("matmul", "conv"):
        f32, bf16 = rates[f"{kind} float32"], rates[f"{kind} bfloat16"]
        shape = f"{n}^3" if kind == "matmul" else "3x3 64->64 4x224^2"
        row("machine", f"{kind} {shape} GFLOP/s (bf16 | f32)", f"{bf16:.0f}", f"{f32:.0f}",
            f"{bf16 / f32:.2f}x")
    return rates


def _config(size: str, side: int, precision: str, args: argparse.Namespace):
    from layernet.config import Config

    return Config(size=size, filters=args.filters, head_filters=args.head_filters,
                  patch_size=side, batch_size=args.batch_size, precision=precision).validate()


def _train_step(net, optimizer, config) -> Callable:
    """A compiled training step (forward, phase-1 losses, gradients, update) of ``net``."""
    from layernet.losses import compute_losses

    variables = net.trainable_variables

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            outputs = net(batch["image"], training=True)
            loss = compute_losses(outputs, batch, config, "layering")["loss"]
            scaled = optimizer.scale_loss(loss)
        optimizer.apply(tape.gradient(scaled, variables), variables)
        return loss
    return step


def train_steps(args: argparse.Namespace) -> dict[tuple[str, int], float]:
    """Train step float32 vs mixed_bfloat16; returns bf16 seconds per step by (size, side)."""
    from layernet.model import build_model
    from layernet.training import build_optimizer

    bf16_seconds = {}
    for size in args.sizes:
        for side in args.sides:
            batch = None
            steps = {}
            for precision in ("float32", "mixed_bfloat16"):
                config = _config(size, side, precision, args)
                if batch is None:
                    batch = next(iter(pipeline_dataset(config, image_side=max(2 * side, 512),
                                                       count=max(args.batch_size, 4))))
                net = build_model(config)
                optimizer = build_optimizer(config)

                compiled = _train_step(net, optimizer, config)
                steps[precision] = lambda compiled=compiled: compiled(batch).numpy()
            seconds = interleaved(steps, args.repeats)
            f32, bf16 = seconds["float32"], seconds["mixed_bfloat16"]
            bf16_seconds[(size, side)] = bf16
            row("train", f"step UNet-{size}/{args.filters} {args.batch_size}x{side}^2 ms "
                "(bf16 | f32)", f"{bf16 * 1e3:.0f}", f"{f32 * 1e3:.0f}", f"{f32 / bf16:.2f}x")
    return bf16_seconds


def pipeline_rate(args: argparse.Namespace, step_seconds: float | None) -> None:
    """Pipeline batches/s against the train step's consumption."""
    config = _config(args.sizes[0], 256, "float32", args)
    rate = batches_per_second(pipeline_dataset(config), seconds=args.pipeline_seconds)
    if step_seconds:
        need = 1.0 / step_seconds
        row("pipeline", f"batches/s, {args.batch_size}x256^2 (data | bf16 step)", f"{rate:.1f}",
            f"{need:.1f}", f"{rate / need:.2f}x")
    else:
        row("pipeline", f"batches/s, {args.batch_size}x256^2 (data)", f"{rate:.1f}")


def loss_ratio(args: argparse.Namespace) -> None:
    """Batched layering loss vs the per-image formulation (value and gradient)."""
    from bench.per_image_loss import per_image_layering_loss
    from layernet.losses import layering_loss

    for side in args.sides:
        config = _config(args.sizes[0], side, "float32", args)
        batch = next(iter(pipeline_dataset(config, image_side=max(2 * side, 512),
                                           count=max(args.batch_size, 4))))
        embedding = tf.random.uniform(
            [args.batch_size, side, side, config.layers], seed=1)

        def gradient_of(function):
            @tf.function
            def run(e):
                with tf.GradientTape() as tape:
                    tape.watch(e)
                    value = function(e)
                return value, tape.gradient(value, e)
            return lambda: run(embedding)[1].numpy()

        seconds = interleaved({
            "batched": gradient_of(lambda e: layering_loss(e, batch["stack"], batch["adjacency"],
                                                           config)["layering"]),
            "per_image": gradient_of(lambda e: per_image_layering_loss(
                e, batch["stack"], batch["adjacency"], config)),
        }, args.repeats * 2)
        row("loss", f"layering loss+grad {args.batch_size}x{side}^2 ms (ours | per-image)",
            f"{seconds['batched'] * 1e3:.1f}", f"{seconds['per_image'] * 1e3:.1f}",
            f"{seconds['per_image'] / seconds['batched']:.2f}x")


def conv_flops(net, side: int, channels: int) -> float:
    """FLOPs (2 per multiply-add) of all convolutions of ``net`` on one ``side``^2 image."""
    import keras

    convs = [layer for layer in net.layers if isinstance(layer, keras.layers.Conv2D)]
    probe = keras.Model(net.inputs, [layer.output for layer in convs])
    outputs = probe(np.zeros((1, side, side, channels), np.float32), training=False)
    total = 0.0
    for layer, output in zip(convs, outputs):
        kh, kw, cin, cout = layer.kernel.shape
        total += 2.0 * output.shape[1] * output.shape[2] * kh * kw * cin * cout
    return total


def forward_rate(args: argparse.Namespace, rates: dict[str, float] | None) -> dict:
    """Network forward on one 448^2 image, float32 vs bf16, and GFLOP/s against the conv rate."""
    from layernet.inference import Predictor
    from layernet.model import build_model

    side = 448
    predictors = {}
    for precision in ("float32", "mixed_bfloat16"):
        config = _config(args.predict_size, 256, precision, args)
        net = build_model(config)
        predictors[precision] = Predictor(net, config)
    flops = conv_flops(predictors["float32"].net, side, 1)
    image = np.random.default_rng(0).random((side, side, 1)).astype(np.float32)
    seconds = interleaved({name: (lambda p=p: p.maps_normalized(image))
                           for name, p in predictors.items()}, args.repeats)
    f32, bf16 = seconds["float32"], seconds["mixed_bfloat16"]
    row("forward", f"UNet-{args.predict_size}/{args.filters} h{args.head_filters} {side}^2 ms, "
        f"{flops / 1e9:.0f} GFLOP (bf16 | f32)", f"{bf16 * 1e3:.0f}", f"{f32 * 1e3:.0f}",
        f"{f32 / bf16:.2f}x")
    if rates:
        for precision, dtype in (("mixed_bfloat16", "bfloat16"), ("float32", "float32")):
            achieved = flops / seconds[precision] / 1e9
            measured = rates[f"conv {dtype}"]
            row("forward", f"GFLOP/s {dtype} (network | measured conv)", f"{achieved:.0f}",
                f"{measured:.0f}", f"{achieved / measured:.0%}")
    return predictors


def postprocess_time(args: argparse.Namespace) -> None:
    """Algorithm 1 on ideal maps of a 448^2 image."""
    from layernet.config import Config
    from layernet.postprocess import postprocess

    config = Config()
    _, stack = synthetic_mosaic(448)
    foreground, layering = ideal_maps(stack, config.layers)
    seconds = interleaved({"pp": lambda: postprocess(
        foreground, layering, tau=config.tau, min_size=config.min_size,
        overlap_layers=config.overlap_layers, connectivity=config.connectivity)},
        args.repeats * 3)
    row("postproc", "Algorithm 1, 448^2, ideal maps, ms (goal <= 20)",
        f"{seconds['pp'] * 1e3:.1f}")


def stardist_model(args: argparse.Namespace, folder: str):
    """A StarDist2D of comparable size (3 levels, same base filters) trained for a few steps."""
    from datasets import load_dataset
    from layernet.baselines import flatten_with_pseudo_boundary
    from layernet.normalize import percentile_normalize
    from stardist.models import Config2D, StarDist2D

    samples = load_dataset("synthetic", split="train", seed=0, size=256, count=8, kind="cells")
    images = [percentile_normalize(s.image, 1.0, 99.8)[..., 0] for s in samples]
    labels = [flatten_with_pseudo_boundary(s.stack) for s in samples]
    config = Config2D(n_rays=32, grid=(2, 2), n_channel_in=1, unet_n_depth=3,
                      unet_n_filter_base=args.filters, train_patch_size=(128, 128),
                      train_batch_size=4, train_epochs=1,
                      train_steps_per_epoch=args.stardist_steps, train_tensorboard=False,
                      use_gpu=False)
    model = StarDist2D(config, name="speed", basedir=folder)
    model.train(images, labels, validation_data=(images[:2], labels[:2]), epochs=1,
                steps_per_epoch=args.stardist_steps)
    return model


def end_to_end(predictor, image: np.ndarray, prefix: str, tile_batch: int) -> Callable[[], None]:
    """What predict.py does for one image: predict (tiled if large) and write the label stack."""
    from layernet.export import write_prediction
    from layernet.tiling import predict_image

    def run() -> None:
        result = predict_image(predictor, image, batch_size=tile_batch)
        write_prediction(prefix, result.stack, image, overlay=False)
    return run


def onnx_ratio(args: argparse.Namespace, predictors: dict) -> None:
    """predict.py's work per 448^2 image with ONNX Runtime vs the Keras model (float32): the
    same Predictor (normalisation, padding, Algorithm 1, writing), only the forward pass
    differs; the forward pass alone; and the largest difference of the two backends' maps."""
    if any(importlib.util.find_spec(name) is None for name in ("onnxruntime", "tf2onnx", "onnx")):
        row("onnx", "skipped: pip install -r requirements-export.txt", "-")
        return
    from layernet.backends import OnnxBackend
    from layernet.inference import Predictor
    from layernet.model import build_model
    from layernet.model_formats import export_onnx

    keras_predictor = predictors.get("float32")
    if keras_predictor is None:
        config = _config(args.predict_size, 256, "float32", args)
        keras_predictor = Predictor(build_model(config), config)
    config = keras_predictor.config
    folder = tempfile.mkdtemp(prefix="layernet-speed-onnx-")
    path = os.path.join(folder, "model.onnx")
    export_onnx(keras_predictor.net, config, path)
    candidates = {"keras": keras_predictor, "onnx": Predictor(OnnxBackend(path), config)}
    side = 448
    image, _ = synthetic_mosaic(side)
    normalized = keras_predictor.normalize(image)[None]
    # an untrained network's maps sit at about 0.5 = tau, so rounding can flip its objects:
    # compare the maps
    maps = {name: predictor.maps_batch_normalized(normalized)
            for name, predictor in candidates.items()}
    difference = max(float(np.max(np.abs(a - b))) for a, b in zip(maps["keras"], maps["onnx"]))
    forward = interleaved({name: (lambda p=predictor: p.maps_batch_normalized(normalized))
                           for name, predictor in candidates.items()}, args.repeats)
    whole = interleaved({name: end_to_end(predictor, image, os.path.join(folder, name),
                                          args.tile_batch)
                         for name, predictor in candidates.items()}, args.repeats)
    what = f"UNet-{args.predict_size}/{args.filters} h{args.head_filters} {side}^2"
    row("onnx", f"forward {what} ms (ONNX Runtime | Keras f32)",
        f"{forward['onnx'] * 1e3:.0f}", f"{forward['keras'] * 1e3:.0f}",
        f"{forward['keras'] / forward['onnx']:.2f}x")
    row("onnx", f"predict {what} per image ms, maps +-{difference:.0e}",
        f"{whole['onnx'] * 1e3:.0f}",
        f"{whole['keras'] * 1e3:.0f}", f"{whole['keras'] / whole['onnx']:.2f}x")


def predict_end_to_end(args: argparse.Namespace, predictors: dict) -> None:
    """Per image, normalise + network + post-process + write, ours vs StarDist."""
    from layernet.io import write_label_stack
    from layernet.normalize import percentile_normalize

    folder = tempfile.mkdtemp(prefix="layernet-speed-")
    star = None
    if importlib.util.find_spec("stardist") is not None and not args.no_stardist:
        star = stardist_model(args, folder)
        ours, theirs = (conv_flops(predictors["float32"].net, 448, 1),
                        conv_flops(star.keras_model, 448, 1))
        row("predict", "network GFLOP per 448^2 image (ours | StarDist)", f"{ours / 1e9:.1f}",
            f"{theirs / 1e9:.1f}", f"{ours / theirs:.2f}x")
    for side in (448, 2048):
        image, _ = synthetic_mosaic(side)
        functions = {precision: end_to_end(predictor, image, os.path.join(
            folder, f"ours-{precision}-{side}"), args.tile_batch)
            for precision, predictor in predictors.items()}
        if star is not None:
            path = os.path.join(folder, f"stardist-{side}.tif")

            def theirs():
                labels, _ = star.predict_instances(percentile_normalize(image, 1.0, 99.8)[..., 0],
                                                   show_tile_progress=False)
                write_label_stack(path, labels[None])
            functions["stardist"] = theirs
        seconds = interleaved(functions, max(1, args.repeats if side == 448 else
                                             args.repeats // 2 + 1))
        best = min(seconds["float32"], seconds["mixed_bfloat16"])
        best_name = "bf16" if seconds["mixed_bfloat16"] <= seconds["float32"] else "f32"
        row("predict", f"{side}^2 per image ms (bf16 | f32)",
            f"{seconds['mixed_bfloat16'] * 1e3:.0f}", f"{seconds['float32'] * 1e3:.0f}",
            f"{seconds['float32'] / seconds['mixed_bfloat16']:.2f}x")
        if star is not None:
            row("predict", f"{side}^2 per image ms (ours {best_name} | StarDist)",
                f"{best * 1e3:.0f}", f"{seconds['stardist'] * 1e3:.0f}",
                f"{seconds['stardist'] / best:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per candidate")
    parser.add_argument("--filters", type=int, default=32, help="base filters (32)")
    parser.add_argument("--head-filters", type=int, default=64,
                        help="filters of the heads' two 3x3 convs (64, the paper's; the cpu "
                             "recipe's: 16)")
    parser.add_argument("--batch-size", type=int, default=2, help="training batch (2)")
    parser.add_argument("--sizes", nargs="+", default=["S", "M"], choices=("S", "M", "L"))
    parser.add_argument("--sides", nargs="+", type=int, default=[256, 448])
    parser.add_argument("--predict-size", default="S", choices=("S", "M", "L"),
                        help="UNet size for the forward / predict rows (S)")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--pipeline-seconds", type=float, default=8.0)
    parser.add_argument("--tile-batch", type=int, default=2)
    parser.add_argument("--stardist-steps", type=int, default=10)
    parser.add_argument("--no-stardist", action="store_true")
    parser.add_argument("--only", nargs="+", default=None,
                        choices=("machine", "train", "pipeline", "loss", "forward", "postproc",
                                 "predict", "onnx"), help="run only these sections")
    args = parser.parse_args(argv)
    only = set(args.only or ("machine", "train", "pipeline", "loss", "forward", "postproc",
                             "predict", "onnx"))
    start = time.perf_counter()
    print(f"layernet speed, {os.cpu_count()} CPU cores of {cpu_description()}, "
          f"TF {tf.__version__}, medians of "
          f"{args.repeats} interleaved runs; ratio = baseline / candidate time (or rate ratio)")
    print(f"  {'section':<9} {'what':<44} {'value':>14} {'baseline':>14} {'ratio':>8}")
    rates = machine_rates(args) if "machine" in only else None
    bf16_steps = train_steps(args) if "train" in only else {}
    if "pipeline" in only:
        pipeline_rate(args, bf16_steps.get((args.sizes[0], 256)))
    if "loss" in only:
        loss_ratio(args)
    predictors = forward_rate(args, rates) if only & {"forward", "predict"} else {}
    if "postproc" in only:
        postprocess_time(args)
    if "predict" in only:
        predict_end_to_end(args, predictors)
    if "onnx" in only:
        onnx_ratio(args, predictors)
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
