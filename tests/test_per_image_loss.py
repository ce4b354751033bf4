"""The authors'-style per-image layering loss (bench) equals the batched layernet version."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from bench.per_image_loss import per_image_layering_loss
from layernet.config import Config
from layernet.losses import layering_loss
from tests.test_losses import random_batch

CONFIGS = {"paper": Config(), "authors": Config.authors(),
           "pair_pooled": Config(repulsion_mode="pair", mean_mode="normalized")}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_per_image_equals_batched_value_and_gradient(name: str) -> None:
    config = CONFIGS[name]
    rng = np.random.default_rng(len(name))
    for _ in range(3):
        embedding, _, stack, adjacency, _ = random_batch(rng, batch=3, size=12, max_objects=6)
        variable = tf.Variable(embedding)
        with tf.GradientTape(persistent=True) as tape:
            batched = layering_loss(variable, tf.constant(stack), tf.constant(adjacency),
                                    config)["layering"]
            per_image = per_image_layering_loss(variable, tf.constant(stack),
                                                tf.constant(adjacency), config)
        np.testing.assert_allclose(float(per_image), float(batched), rtol=1e-5)
        np.testing.assert_allclose(tape.gradient(per_image, variable).numpy(),
                                   tape.gradient(batched, variable).numpy(),
                                   rtol=1e-3, atol=1e-6)


def test_per_image_handles_empty_images() -> None:
    stack = np.zeros((2, 6, 6, 1), np.int32)
    stack[1, 1:3, 1:3, 0] = 1
    embedding = np.random.default_rng(0).random((2, 6, 6, 4)).astype(np.float32)
    adjacency = np.ones((2, 2, 2), np.float32)
    value = per_image_layering_loss(tf.constant(embedding), tf.constant(stack),
                                    tf.constant(adjacency), Config())
    expected = layering_loss(tf.constant(embedding), tf.constant(stack), tf.constant(adjacency),
                             Config())["layering"]
    np.testing.assert_allclose(float(value), float(expected), rtol=1e-5)
