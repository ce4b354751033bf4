"""Property-based tests of the losses (hypothesis): finite, bounded, equal to the NumPy reference.

Scenes are drawn from the cases that break naive implementations: empty images, a single
object, objects covering each other completely, more mutually adjacent objects than layers, an
object filling the image, one-pixel objects and random overlapping boxes; predictions include
exact sigmoid saturation (0 and 1), values a hair from 0 and 1, and binary maps.

Shapes are fixed (B=2, 16x16, 3 slices, K+1=16 segments, N=4 layers) so every loss is traced once
per configuration variant and the few hundred examples run in seconds.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from layernet.config import Config
from layernet.losses import compute_losses
from tests import reference_losses as ref

BATCH, SIZE, SLICES, SEGMENTS, LAYERS = 2, 16, 3, 16, 4
TOLERANCE = dict(rtol=1e-4, atol=2e-5)
SCENES = ("empty", "single", "covered", "all_overlapped", "adjacent_stripes", "huge", "tiny",
          "boxes")
FILLS = ("uniform", "zeros", "ones", "binary", "near_saturated", "constant")
VARIANTS = {
    "paper": Config(),
    "authors": Config.authors(),
    "per_image": Config(layering_per_image=True, overlap_per_image=True),
    "pair_normalized": Config(repulsion_mode="pair", mean_mode="normalized",
                              sparsity_mode="authors", dice_smooth=1.0),
}
PROPERTY_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def scene(kind: str, rng: np.random.Generator) -> np.ndarray:
    """One ``(SIZE, SIZE, SLICES)`` label stack (ids 1..SEGMENTS-1, each id in one slice)."""
    stack = np.zeros((SIZE, SIZE, SLICES), np.int32)
    if kind == "single":
        r, c = rng.integers(0, SIZE - 2, 2)
        h, w = rng.integers(1, SIZE - max(r, c) + 1, 2)
        stack[r:r + h, c:c + w, 0] = 1
    elif kind == "covered":        # object 2 lies entirely on object 1: no overlap-free pixel
        stack[2:12, 2:12, 0] = 1
        stack[4:8, 4:8, 1] = 2
    elif kind == "all_overlapped":  # every foreground pixel covered by two or three objects
        stack[:, :, 0] = 1
        stack[:, :, 1] = 2
        if rng.random() < 0.5:
            stack[3:9, 3:9, 2] = 3
    elif kind == "adjacent_stripes":  # 6-8 touching stripes, more than N = 4 layers
        count = int(rng.integers(LAYERS + 2, LAYERS + 5))
        edges = np.linspace(0, SIZE, count + 1).astype(int)
        for label in range(count):
            stack[:, edges[label]:edges[label + 1], 0] = label + 1
    elif kind == "huge":
        stack[:, :, 0] = 1
        if rng.random() < 0.5:
            stack[5:7, 5:7, 1] = 2
    elif kind == "tiny":
        count = int(rng.integers(1, SEGMENTS))
        cells = rng.choice(SIZE * SIZE, size=count, replace=False)
        for label, cell in enumerate(cells, start=1):
            stack[cell // SIZE, cell % SIZE, int(rng.integers(0, SLICES))] = label
    elif kind == "boxes":
        for label in range(1, int(rng.integers(1, 8)) + 1):
            r, c = rng.integers(0, SIZE - 1, 2)
            h, w = rng.integers(1, 9, 2)
            layer = int(rng.integers(0, SLICES))
            stack[r:r + h, c:c + w, layer] = np.where(stack[r:r + h, c:c + w, layer] == 0,
                                                      label, stack[r:r + h, c:c + w, layer])
    return stack


def prediction(fill: str, rng: np.random.Generator, channels: int) -> np.ndarray:
    shape = (BATCH, SIZE, SIZE, channels)
    if fill == "uniform":
        return rng.random(shape).astype(np.float32)
    if fill == "zeros":
        return np.zeros(shape, np.float32)
    if fill == "ones":
        return np.ones(shape, np.float32)
    if fill == "binary":
        return (rng.random(shape) < 0.5).astype(np.float32)
    if fill == "near_saturated":
        values = np.where(rng.random(shape) < 0.5, 1e-8, 1.0 - 1e-7)
        return values.astype(np.float32)
    return np.full(shape, rng.random(), np.float32)


def adjacency_of(stack: np.ndarray, rng: np.random.Generator, mode: str) -> np.ndarray:
    if mode == "all":
        adjacency = np.ones((SEGMENTS, SEGMENTS), np.float32)
    elif mode == "none":
        adjacency = np.zeros((SEGMENTS, SEGMENTS), np.float32)
    else:
        adjacency = (rng.random((SEGMENTS, SEGMENTS)) < 0.5).astype(np.float32)
        adjacency = np.maximum(adjacency, adjacency.T)
    np.fill_diagonal(adjacency, 0.0)
    adjacency[0, :] = adjacency[:, 0] = 0.0
    return adjacency


@st.composite
def batches(draw) -> dict:
    """A batch of two scenes with predictions, adjacency and a full frozen layer assignment."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kinds = [draw(st.sampled_from(SCENES)) for _ in range(BATCH)]
    stack = np.stack([scene(kind, rng) for kind in kinds])
    mode = draw(st.sampled_from(("all", "none", "random")))
    adjacency = np.stack([adjacency_of(stack[b], rng, mode) for b in range(BATCH)])
    return {
        "kinds": kinds,
        "stack": stack,
        "adjacency": adjacency,
        "embedding": prediction(draw(st.sampled_from(FILLS)), rng, LAYERS),
        "fg_pred": prediction(draw(st.sampled_from(FILLS)), rng, 1),
        # every object has a frozen layer, so the reference needs no argmax (ties)
        "layer_of": rng.integers(0, LAYERS, (BATCH, SEGMENTS)).astype(np.int32),
    }


def tf_losses(data: dict, config: Config, phase: str, variables: bool = False):
    embedding = tf.Variable(data["embedding"]) if variables else tf.constant(data["embedding"])
    fg_pred = tf.Variable(data["fg_pred"]) if variables else tf.constant(data["fg_pred"])
    batch = {key: tf.constant(data[key]) for key in ("stack", "adjacency", "layer_of")}
    with tf.GradientTape() as tape:
        losses = compute_losses({"layering": embedding, "foreground": fg_pred}, batch, config,
                                phase)
    gradients = tape.gradient(losses["loss"], [embedding, fg_pred]) if variables else None
    return losses, gradients


@settings(max_examples=240, **PROPERTY_SETTINGS)
@given(data=batches(), name=st.sampled_from(sorted(VARIANTS)),
       phase=st.sampled_from(("layering", "overlap")))
def test_losses_equal_the_per_image_reference_and_stay_in_range(data, name, phase) -> None:
    config = VARIANTS[name]
    losses, _ = tf_losses(data, config, phase)
    # The implementation clips at float32(1 - 1e-7) = 1 - 1.19e-7 (the float64 reference at
    # 1 - 1e-7): on saturated predictions log(1 - p) differs by 1 %, so hand the reference the
    # float32-clipped foreground (a no-op for every other value).
    upper = float(np.float32(1.0 - ref.PROBABILITY_CLIP))
    foreground = np.clip(data["fg_pred"].astype(np.float64), ref.PROBABILITY_CLIP, upper)
    expected = ref.compute_losses(
        {"layering": data["embedding"], "foreground": foreground},
        {key: data[key] for key in ("stack", "adjacency", "layer_of")}, config, phase)
    assert set(losses) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(float(losses[key]), value, err_msg=key, **TOLERANCE)
    for key in ("attraction", "repulsion", "sparsity") + (("overlap",) if phase == "overlap"
                                                          else ()):
        assert -1e-6 <= float(losses[key]) <= 1.0 + 1e-6, (key, float(losses[key]))
    assert float(losses["foreground"]) >= 0.0


@settings(max_examples=200, **PROPERTY_SETTINGS)
@given(data=batches(), name=st.sampled_from(sorted(VARIANTS)))
def test_every_loss_and_gradient_is_finite(data, name) -> None:
    config = VARIANTS[name]
    for phase in ("layering", "overlap"):
        losses, gradients = tf_losses(data, config, phase, variables=True)
        for key, value in losses.items():
            assert np.isfinite(float(value)), (phase, key)
        for gradient in gradients:
            assert gradient is not None and np.all(np.isfinite(gradient.numpy())), phase


@settings(max_examples=80, **PROPERTY_SETTINGS)
@given(data=batches())
def test_per_image_mode_is_the_mean_over_images_with_overlap_free_foreground(data) -> None:
    config = VARIANTS["per_image"]
    batched, _ = tf_losses(data, config, "overlap")
    singles = []
    for b in range(BATCH):
        single = {key: value[b:b + 1] for key, value in data.items() if key != "kinds"}
        losses, _ = tf_losses(single, config, "overlap")
        singles.append((losses, ref.overlap_free(data["stack"][b]).any(),
                        bool(np.any(data["stack"][b] > 0))))
    for key in ("attraction", "repulsion", "sparsity"):
        used = [float(losses[key]) for losses, free, _ in singles if free]
        expected = float(np.mean(used)) if used else 0.0
        np.testing.assert_allclose(float(batched[key]), expected, err_msg=key, **TOLERANCE)
    used = [float(losses["overlap"]) for losses, _, fg in singles if fg]
    np.testing.assert_allclose(float(batched["overlap"]), float(np.mean(used)) if used else 0.0,
                               **TOLERANCE)
    np.testing.assert_allclose(float(batched["foreground"]),
                               np.mean([float(losses["foreground"]) for losses, _, _ in singles]),
                               **TOLERANCE)
