#!/usr/bin/env python
"""Where the time of one training step goes, and batched versus per-image layering loss.

For each image size, builds the network, feeds synthetic batches through the real tf.data
pipeline (augmentation included) and times, in the same run:

* data:     taking one batch from the pipeline;
* forward:  the network in training mode;
* loss:     all phase-1 losses on fixed network outputs;
* backward: a full training step minus forward and loss (gradients + RMSprop update);
* the batched layering loss (value and gradient) against the authors'-style per-image formulation
  (``tf.map_fn`` + ``boolean_mask`` + ``unique_with_counts``, bench/per_image_loss.py).

Medians over ``--repeats`` calls after warm-up. Example::

    python bench/train_step.py --size M --sides 256 448 --batch-size 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bench.per_image_loss import per_image_layering_loss  # noqa: E402
from datasets import load_dataset  # noqa: E402
from layernet.config import Config  # noqa: E402
from layernet.losses import compute_losses, layering_loss  # noqa: E402
from layernet.model import build_model  # noqa: E402
from layernet.pipeline import make_dataset, prepare_samples  # noqa: E402
from layernet.training import build_optimizer  # noqa: E402


def median_time(function, repeats: int, warmup: int = 2) -> float:
    """Median wall time in seconds of ``function()`` over ``repeats`` calls after warm-up."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_side(side: int, args: argparse.Namespace) -> dict[str, float]:
    config = Config(size=args.size, filters=args.filters, head_filters=args.head_filters,
                    patch_size=side, batch_size=args.batch_size,
                    precision=args.precision).validate()
    if args.precision != "float32":
        import keras

        keras.mixed_precision.set_global_policy(args.precision)
    samples = load_dataset("synthetic", split="train", seed=0, size=side,
                           count=max(2 * args.batch_size, 8))
    prepared = prepare_samples(samples, config)
    iterator = iter(make_dataset(prepared, config, training=True))
    batch = next(iterator)
    net = build_model(config)
    optimizer = build_optimizer(config)
    variables = net.trainable_variables

    forward = tf.function(lambda x: net(x, training=True))
    losses = tf.function(lambda outputs, b: compute_losses(outputs, b, config, "layering")["loss"])

    @tf.function
    def step(b):
        with tf.GradientTape() as tape:
            outputs = net(b["image"], training=True)
            loss = compute_losses(outputs, b, config, "layering")["loss"]
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    outputs = forward(batch["image"])
    embedding = tf.identity(outputs["layering"])

    @tf.function
    def batched_loss(e, b):
        with tf.GradientTape() as tape:
            tape.watch(e)
            value = layering_loss(e, b["stack"], b["adjacency"], config)["layering"]
        return value, tape.gradient(value, e)

    @tf.function
    def per_image_loss(e, b):
        with tf.GradientTape() as tape:
            tape.watch(e)
            value = per_image_layering_loss(e, b["stack"], b["adjacency"], config)
        return value, tape.gradient(value, e)

    def per_image_eager(e, b):
        # the authors' execution: the per-image loss in an eager training loop (no tf.function)
        with tf.GradientTape() as tape:
            tape.watch(e)
            value = per_image_layering_loss(e, b["stack"], b["adjacency"], config)
        return value, tape.gradient(value, e)

    ours, _ = batched_loss(embedding, batch)
    theirs, _ = per_image_loss(embedding, batch)
    if not np.isclose(float(ours), float(theirs), rtol=1e-3, atol=1e-5):
        raise SystemExit(f"batched loss {float(ours)} != per-image loss {float(theirs)}")

    repeats = args.repeats
    result = {
        "data": median_time(lambda: next(iterator), repeats * 2),
        "forward": median_time(lambda: forward(batch["image"])["layering"].numpy(), repeats),
        "loss": median_time(lambda: losses(outputs, batch).numpy(), repeats * 2),
        "step": median_time(lambda: step(batch).numpy(), repeats),
        "loss_batched": median_time(lambda: batched_loss(embedding, batch)[0].numpy(), repeats * 2),
        "loss_per_image": median_time(lambda: per_image_loss(embedding, batch)[0].numpy(),
                                      repeats * 2),
        "loss_per_image_eager": median_time(lambda: per_image_eager(embedding, batch)[0].numpy(),
                                            repeats),
    }
    result["backward"] = max(result["step"] - result["forward"] - result["loss"], 0.0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="M", choices=("S", "M", "L"))
    parser.add_argument("--filters", type=int, default=64)
    parser.add_argument("--head-filters", type=int, default=64)
    parser.add_argument("--sides", type=int, nargs="+", default=[256, 448])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="float32",
                        choices=("float32", "mixed_bfloat16", "mixed_float16"))
    args = parser.parse_args()
    print(f"UNet-{args.size}, {args.filters} base filters, {args.head_filters}-filter heads, "
          f"batch {args.batch_size}, {args.precision}, {os.cpu_count()} CPU cores; medians of {args.repeats}+ runs (ms)")
    header = (f"{'side':>5} {'data':>8} {'forward':>9} {'loss':>8} {'backward':>9} {'step':>9} "
              f"{'loss/step':>9} | {'batched':>8} {'per-image':>9} {'speed-up':>8} "
              f"{'eager':>8} {'speed-up':>8}")
    print(header)
    print("-" * len(header))
    for side in args.sides:
        r = bench_side(side, args)
        print(f"{side:>5} {r['data'] * 1e3:8.1f} {r['forward'] * 1e3:9.1f} {r['loss'] * 1e3:8.1f} "
              f"{r['backward'] * 1e3:9.1f} {r['step'] * 1e3:9.1f} {r['loss'] / r['step']:9.1%} | "
              f"{r['loss_batched'] * 1e3:8.1f} {r['loss_per_image'] * 1e3:9.1f} "
              f"{r['loss_per_image'] / r['loss_batched']:7.1f}x "
              f"{r['loss_per_image_eager'] * 1e3:8.1f} "
              f"{r['loss_per_image_eager'] / r['loss_batched']:7.1f}x")
    print("loss/step: share of the training step spent in the losses (goal <= 10%); speed-up: "
          "per-image / batched layering loss with gradient, both in tf.function (goal >= 3x); "
          "eager: the per-image loss run eagerly, as in the authors' training loop")


if __name__ == "__main__":
    main()
