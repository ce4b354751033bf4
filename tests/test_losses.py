"""Tests of layernet.losses: batched TF losses vs the slow NumPy reference, hand cases, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests import reference_losses as ref
from layernet.config import Config
from layernet.instances import stack_from_masks
from layernet.losses import (
    LossInputError,
    compute_losses,
    foreground_dice_loss,
    foreground_loss,
    layering_loss,
    object_layers,
    overlap_free_id_map,
    overlap_loss,
    overlap_targets,
)

PAPER = Config()
AUTHORS = Config.authors()
VARIANTS = {
    "paper": PAPER,
    "authors": AUTHORS,
    "paper_per_image": PAPER.replace(layering_per_image=True, overlap_per_image=True),
    "mixed": PAPER.replace(mean_mode="normalized", sparsity_mode="authors", dice_smooth=1.0,
                           covered_objects="zero", overlap_targets="online",
                           foreground_dice_weight=0.5),
    "pair": PAPER.replace(repulsion_mode="pair", sparsity_weight=0.5, overlap_weight=2.0,
                          foreground_outline_weight=3.0),
    "targets": PAPER.replace(layer_target_weight=0.5, layer_assignment="distinct",
                             overlap_targets="online"),
    "targets_orientation": PAPER.replace(layer_target_weight=1.0, layer_assignment="orientation",
                                         join_layers=1),
    "targets_position": PAPER.replace(layer_target_weight=1.0, layer_assignment="position",
                                      join_layers=1),
    "targets_overlap_weight": PAPER.replace(layer_target_weight=1.0, layer_assignment="position",
                                            layer_target_overlap_weight=4.0),
    "targets_argmax": PAPER.replace(layer_target_weight=2.0, mean_mode="normalized",
                                    layer_target_loss="dice"),
}


def random_batch(rng: np.random.Generator, batch: int = 2, size: int = 10, layers: int = 4,
                 max_objects: int = 5, pad_objects: int = 1, zero_fraction: float = 0.1):
    """Random batch: label stacks of random rectangles (overlapping), padded K and L."""
    stacks = []
    for _ in range(batch):
        masks = []
        for _ in range(int(rng.integers(0, max_objects + 1))):
            mask = np.zeros((size, size), bool)
            r0, c0 = rng.integers(0, size, 2)
            h, w = rng.integers(1, size // 2 + 2, 2)
            mask[r0:r0 + h, c0:c0 + w] = True
            masks.append(mask)
        stacks.append(np.moveaxis(stack_from_masks(masks, shape=(size, size)), 0, -1))
    depth = max(s.shape[-1] for s in stacks) + 1
    stack = np.zeros((batch, size, size, depth), np.int32)
    for b, s in enumerate(stacks):
        stack[b, :, :, :s.shape[-1]] = s
    segments = int(stack.max()) + 1 + pad_objects
    adjacency = (rng.random((batch, segments, segments)) < 0.6).astype(np.float32)
    adjacency = np.maximum(adjacency, np.transpose(adjacency, (0, 2, 1)))
    embedding = rng.random((batch, size, size, layers)).astype(np.float32)
    embedding[rng.random((batch, size, size)) < zero_fraction] = 0.0
    fg_pred = rng.random((batch, size, size, 1)).astype(np.float32)
    layer_of = rng.integers(-1, layers, (batch, segments)).astype(np.int32)
    return embedding, fg_pred, stack, adjacency, layer_of


def as_batch(stack, adjacency, layer_of):
    return {"stack": tf.constant(stack), "adjacency": tf.constant(adjacency),
            "layer_of": tf.constant(layer_of)}


def as_outputs(embedding, fg_pred):
    return {"layering": tf.constant(embedding), "foreground": tf.constant(fg_pred)}


def assert_close(tf_values: dict, ref_values: dict, rtol: float = 1e-4, atol: float = 1e-5):
    assert set(tf_values) == set(ref_values)
    for key, value in ref_values.items():
        np.testing.assert_allclose(float(tf_values[key]), value, rtol=rtol, atol=atol, err_msg=key)


# ------------------------------------------------------------------------------------------
# TF vs reference


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("phase", ["layering", "overlap"])
def test_compute_losses_matches_reference(name: str, phase: str) -> None:
    config = VARIANTS[name]
    rng = np.random.default_rng(hash((name, phase)) % 2**32)
    for _ in range(2):
        embedding, fg_pred, stack, adjacency, layer_of = random_batch(rng, batch=3, size=9)
        result = compute_losses(as_outputs(embedding, fg_pred),
                                as_batch(stack, adjacency, layer_of), config, phase)
        expected = ref.compute_losses({"layering": embedding, "foreground": fg_pred},
                                      {"stack": stack, "adjacency": adjacency,
                                       "layer_of": layer_of}, config, phase)
        assert_close(result, expected)
        assert all(value.dtype == tf.float32 and value.shape == () for value in result.values())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**31 - 1), name=st.sampled_from(sorted(VARIANTS)),
       batch=st.integers(1, 3), size=st.integers(4, 9), layers=st.integers(2, 5),
       pad=st.integers(0, 2))
@example(seed=178512, name="paper_per_image", batch=2, size=4, layers=4, pad=0)  # Dice 0 / 0
def test_property_layering_and_overlap_match_reference(seed, name, batch, size, layers, pad):
    config = VARIANTS[name]
    rng = np.random.default_rng(seed)
    embedding, _, stack, adjacency, layer_of = random_batch(
        rng, batch=batch, size=size, layers=layers, max_objects=4, pad_objects=pad,
        zero_fraction=0.2)
    assert_close(layering_loss(tf.constant(embedding), tf.constant(stack),
                               tf.constant(adjacency), config),
                 ref.layering_loss(embedding, stack, adjacency, config))
    segments = adjacency.shape[1]
    np.testing.assert_array_equal(
        object_layers(tf.constant(embedding), tf.constant(stack), segments, config).numpy(),
        ref.object_layers(embedding, stack, segments, config))
    targets = ref.overlap_targets(stack, layer_of, layers)
    np.testing.assert_array_equal(
        overlap_targets(tf.constant(stack), tf.constant(layer_of), layers).numpy(), targets)
    np.testing.assert_allclose(
        float(overlap_loss(tf.constant(embedding), tf.constant(targets), tf.constant(stack),
                           config)),
        ref.overlap_loss(embedding, targets, stack, config), rtol=1e-4, atol=1e-6)


def test_mixed_precision_inputs_give_float32() -> None:
    rng = np.random.default_rng(5)
    embedding, fg_pred, stack, adjacency, layer_of = random_batch(rng)
    outputs = {"layering": tf.constant(embedding, tf.bfloat16),
               "foreground": tf.constant(fg_pred, tf.float16)}
    result = compute_losses(outputs, as_batch(stack, adjacency, layer_of), PAPER, "overlap")
    expected = ref.compute_losses(
        {"layering": embedding.astype(tf.bfloat16.as_numpy_dtype).astype(np.float32),
         "foreground": fg_pred.astype(np.float16).astype(np.float32)},
        {"stack": stack, "adjacency": adjacency, "layer_of": layer_of}, PAPER, "overlap")
    assert all(value.dtype == tf.float32 for value in result.values())
    assert_close(result, expected, rtol=1e-3, atol=1e-4)


def test_losses_work_inside_tf_function() -> None:
    rng = np.random.default_rng(6)
    embedding, fg_pred, stack, adjacency, layer_of = random_batch(rng)
    step = tf.function(lambda o, b: compute_losses(o, b, AUTHORS, "overlap"))
    outputs, batch = as_outputs(embedding, fg_pred), as_batch(stack, adjacency, layer_of)
    assert_close(step(outputs, batch),
                 {k: float(v) for k, v in compute_losses(outputs, batch, AUTHORS,
                                                         "overlap").items()})


# ------------------------------------------------------------------------------------------
# hand-computed cases


def three_objects_in_a_row(size: int = 8):
    """Three touching vertical bars (ids 1..3), all mutually adjacent."""
    stack = np.zeros((1, size, 6, 1), np.int32)
    stack[0, :, 0:2, 0] = 1
    stack[0, :, 2:4, 0] = 2
    stack[0, :, 4:6, 0] = 3
    adjacency = np.ones((1, 4, 4), np.float32)
    return stack, adjacency


@pytest.mark.parametrize("config", [PAPER, AUTHORS], ids=["paper", "authors"])
def test_orthogonal_one_hot_embeddings_give_zero_layering_loss(config: Config) -> None:
    stack, adjacency = three_objects_in_a_row()
    embedding = np.zeros(stack.shape[:3] + (4,), np.float32)
    for label, layer in ((1, 0), (2, 3), (3, 1)):
        embedding[stack[..., 0] == label, layer] = 1.0
    terms = layering_loss(tf.constant(embedding), tf.constant(stack), tf.constant(adjacency),
                          config)
    for key in ("attraction", "repulsion", "sparsity", "layering"):
        assert abs(float(terms[key])) < 1e-6, key


def test_identical_adjacent_objects_give_repulsion_one() -> None:
    stack, adjacency = three_objects_in_a_row()
    stack[stack == 3] = 0
    adjacency = adjacency[:, :3, :3]
    embedding = np.full(stack.shape[:3] + (4,), 0.3, np.float32)
    embedding[..., 1] = 0.9
    for config in (PAPER, AUTHORS):
        terms = layering_loss(tf.constant(embedding), tf.constant(stack), tf.constant(adjacency),
                              config)
        np.testing.assert_allclose(float(terms["repulsion"]), 1.0, rtol=1e-6)
        assert abs(float(terms["attraction"])) < 1e-6


def test_object_without_neighbour_counts_in_c_with_zero() -> None:
    # objects 1 and 2 adjacent with identical embeddings, object 3 isolated
    stack, adjacency = three_objects_in_a_row()
    adjacency[0, 3, :] = adjacency[0, :, 3] = 0.0
    embedding = np.zeros(stack.shape[:3] + (3,), np.float32)
    embedding[stack[..., 0] == 1, 0] = 1.0
    embedding[stack[..., 0] == 2, 0] = 1.0
    embedding[stack[..., 0] == 3, 0] = 1.0   # same as the others, but not adjacent
    paper = layering_loss(tf.constant(embedding), tf.constant(stack), tf.constant(adjacency),
                          PAPER)
    np.testing.assert_allclose(float(paper["repulsion"]), 2.0 / 3.0, rtol=1e-6)
    pair = layering_loss(tf.constant(embedding), tf.constant(stack), tf.constant(adjacency),
                         PAPER.replace(repulsion_mode="pair"))
    np.testing.assert_allclose(float(pair["repulsion"]), 1.0, rtol=1e-6)


def test_sparsity_hand_value() -> None:
    # one object, every pixel e = (3, 4): e/|e| = (0.6, 0.8)
    stack = np.ones((1, 2, 2, 1), np.int32)
    embedding = np.tile(np.array([0.3, 0.4], np.float32), (1, 2, 2, 1))
    adjacency = np.zeros((1, 2, 2), np.float32)
    args = (tf.constant(embedding), tf.constant(stack), tf.constant(adjacency))
    np.testing.assert_allclose(float(layering_loss(*args, PAPER)["sparsity"]), 0.2, rtol=1e-6)
    np.testing.assert_allclose(float(layering_loss(*args, AUTHORS)["sparsity"]), 1 - 0.64,
                               rtol=1e-6)
    # authors divide by all B*H*W pixels: with one background pixel out of 4 it becomes 3/4
    stack[0, 0, 0, 0] = 0
    args = (tf.constant(embedding), tf.constant(stack), tf.constant(adjacency))
    np.testing.assert_allclose(float(layering_loss(*args, AUTHORS)["sparsity"]), 0.36 * 3 / 4,
                               rtol=1e-6)
    np.testing.assert_allclose(float(layering_loss(*args, PAPER)["sparsity"]), 0.2, rtol=1e-6)


def test_foreground_loss_hand_value() -> None:
    stack = np.zeros((1, 1, 2, 2), np.int32)
    stack[0, 0, 0, 1] = 1
    fg_pred = np.array([[[[0.8], [0.0]]]], np.float32)
    value = float(foreground_loss(tf.constant(stack), tf.constant(fg_pred)))
    np.testing.assert_allclose(value, (-np.log(0.8) - np.log(1 - 1e-7)) / 2, rtol=1e-5)


def test_outline_band_and_weighted_foreground_loss_hand_values() -> None:
    from layernet.losses import outline_band

    # a 2x3 object in a 6x7 image: the band is the object and the ring of 14 pixels around it
    foreground = np.zeros((1, 6, 7), np.float32)
    foreground[0, 2:4, 2:5] = 1
    expected = np.zeros((6, 7), np.float32)
    expected[1:5, 1:6] = 1
    np.testing.assert_array_equal(outline_band(tf.constant(foreground)).numpy()[0], expected)
    # the image border is not an outline: an object filling a row at the border
    border = np.zeros((1, 3, 3), np.float32)
    border[0, 0, :] = 1
    np.testing.assert_array_equal(outline_band(tf.constant(border)).numpy()[0],
                                  [[1, 1, 1], [1, 1, 1], [0, 0, 0]])
    stack = foreground[..., None].astype(np.int32)
    fg_pred = np.full((1, 6, 7, 1), 0.3, np.float32)
    inside, outside = -np.log(0.3), -np.log(0.7)
    plain = (6 * inside + 36 * outside) / 42
    weighted = (3 * 6 * inside + 3 * 14 * outside + 22 * outside) / 42
    np.testing.assert_allclose(float(foreground_loss(tf.constant(stack), tf.constant(fg_pred))),
                               plain, rtol=1e-6)
    np.testing.assert_allclose(float(foreground_loss(tf.constant(stack), tf.constant(fg_pred),
                                                     outline_weight=3.0)), weighted, rtol=1e-6)
    assert np.isclose(ref.foreground_loss(stack, fg_pred, 3.0), weighted)


def test_foreground_dice_hand_values() -> None:
    stack = np.zeros((1, 1, 2, 2), np.int32)
    stack[0, 0, 0, 1] = 1
    fg_pred = np.array([[[[0.8], [0.0]]]], np.float32)
    value = float(foreground_dice_loss(tf.constant(stack), tf.constant(fg_pred)))
    np.testing.assert_allclose(value, 1 - (2 * 0.8 + 1) / (1 + 0.8 + 1), rtol=1e-6)
    # no foreground, none predicted: 0; no foreground, all predicted: 1 - 1 / (4 + 1)
    empty = np.zeros((1, 2, 2, 1), np.int32)
    assert float(foreground_dice_loss(tf.constant(empty), tf.zeros((1, 2, 2, 1)))) == 0.0
    np.testing.assert_allclose(
        float(foreground_dice_loss(tf.constant(empty), tf.ones((1, 2, 2)))), 0.8, rtol=1e-6)
    # the term enters the total with its weight
    config = PAPER.replace(foreground_dice_weight=2.0)
    losses = compute_losses({"layering": tf.fill((1, 1, 2, 4), 0.5),
                             "foreground": tf.constant(fg_pred)},
                            as_batch(stack, np.ones((1, 2, 2), np.float32),
                                     -np.ones((1, 2), np.int32)), config, "layering")
    np.testing.assert_allclose(float(losses["loss"]), float(losses["foreground"])
                               + float(losses["layering"]) + 2.0 * value, rtol=1e-6)


def overlapping_pair():
    """Two overlapping squares (ids 1, 2), a square fully covered by 1 (id 3), id 4 absent."""
    stack = np.zeros((1, 8, 8, 2), np.int32)
    stack[0, 0:5, 0:5, 0] = 1
    stack[0, 3:8, 3:8, 1] = 2
    stack[0, 1:3, 1:3, 1] = 3
    return stack


def test_object_layers_and_overlap_targets_hand_case() -> None:
    stack = overlapping_pair()
    embedding = np.full((1, 8, 8, 4), 0.1, np.float32)
    free = overlap_free_id_map(tf.constant(stack)).numpy()[0]
    embedding[0][free == 1, 2] = 0.9                       # object 1 -> layer 2
    embedding[0][free == 2, 1] = 0.9                       # object 2 -> layer 1
    embedding[0, 1:3, 1:3, 3] = 0.95                       # covered object 3 -> layer 3 if "full"
    adjacency_segments = 5                                 # ids 0..4, id 4 absent
    full = object_layers(tf.constant(embedding), tf.constant(stack), adjacency_segments, PAPER)
    np.testing.assert_array_equal(full.numpy(), [[-1, 2, 1, 3, -1]])
    zero = object_layers(tf.constant(embedding), tf.constant(stack), adjacency_segments,
                         PAPER.replace(covered_objects="zero"))
    np.testing.assert_array_equal(zero.numpy(), [[-1, 2, 1, 0, -1]])

    targets = overlap_targets(tf.constant(stack), full, 4).numpy()
    expected = np.zeros((1, 8, 8, 4), np.float32)
    expected[0, 0:5, 0:5, 2] = 1
    expected[0, 3:8, 3:8, 1] = 1
    expected[0, 1:3, 1:3, 3] = 1
    np.testing.assert_array_equal(targets, expected)
    # the overlap pixels are positive in two layers
    assert targets[0, 4, 4].sum() == 2

    for config in (PAPER, AUTHORS, PAPER.replace(overlap_per_image=True)):
        perfect = overlap_loss(tf.constant(expected), tf.constant(expected), tf.constant(stack),
                               config)
        assert abs(float(perfect)) < 1e-6
    # background values of the prediction are ignored
    noisy = expected.copy()
    noisy[0][~np.any(stack[0] > 0, axis=-1)] = 0.7
    assert abs(float(overlap_loss(tf.constant(noisy), tf.constant(expected), tf.constant(stack),
                                  PAPER))) < 1e-6
    # all-zero prediction on the foreground: Dice 1 (paper)
    zero_pred = np.zeros_like(expected)
    np.testing.assert_allclose(float(overlap_loss(tf.constant(zero_pred), tf.constant(expected),
                                                  tf.constant(stack), PAPER)), 1.0)


def test_overlap_loss_of_nothing_predicted_and_nothing_to_predict_is_zero() -> None:
    # with s = 0 the Dice would be 0 / 0 (found by the property test, seed 178512); an image
    # with foreground, no target layer and a zero prediction agrees: loss 0, finite gradient
    stack = overlapping_pair()
    zeros = np.zeros((1, 8, 8, 4), np.float32)
    for config in (PAPER, PAPER.replace(overlap_per_image=True), AUTHORS):
        prediction = tf.Variable(zeros)
        with tf.GradientTape() as tape:
            loss = overlap_loss(prediction, tf.constant(zeros), tf.constant(stack), config)
        gradient = tape.gradient(loss, prediction)
        assert float(loss) == 0.0
        assert np.all(np.isfinite(gradient.numpy()))
        assert ref.overlap_loss(zeros, zeros, stack, config) == 0.0
    # next to an image that has targets, it counts as a perfect image in the per-image mean
    two = np.concatenate([stack, stack])
    targets = np.zeros((2, 8, 8, 4), np.float32)
    targets[1, ..., 0] = np.any(stack[0] > 0, axis=-1)
    per_image = PAPER.replace(overlap_per_image=True)
    np.testing.assert_allclose(float(overlap_loss(tf.constant(np.zeros_like(targets)),
                                                  tf.constant(targets), tf.constant(two),
                                                  per_image)), 0.5)


def test_frozen_assignment_falls_back_to_online() -> None:
    stack = overlapping_pair()
    embedding = np.full((1, 8, 8, 4), 0.1, np.float32)
    free = overlap_free_id_map(tf.constant(stack)).numpy()[0]
    embedding[0][free == 1, 2] = 0.9
    embedding[0][free == 2, 1] = 0.9
    embedding[0, 1:3, 1:3, 3] = 0.95
    adjacency = np.ones((1, 5, 5), np.float32)
    frozen = np.array([[-1, 0, -1, 0, -1]], np.int32)    # object 2 unknown -> online layer 1
    batch = as_batch(stack, adjacency, frozen)
    outputs = as_outputs(embedding, np.full((1, 8, 8, 1), 0.5, np.float32))
    result = compute_losses(outputs, batch, PAPER, "overlap")
    layer_of = np.array([[-1, 0, 1, 0, -1]])
    targets = ref.overlap_targets(stack, layer_of, 4)
    np.testing.assert_allclose(float(result["overlap"]),
                               ref.overlap_loss(embedding, targets, stack, PAPER), rtol=1e-5)
    online = compute_losses(outputs, batch, PAPER.replace(overlap_targets="online"), "overlap")
    assert float(online["overlap"]) < float(result["overlap"])


# ------------------------------------------------------------------------------------------
# edge cases: finite losses and gradients


def boxes_stack(batch: int, depth: int, boxes: list[tuple], size: int = 8) -> np.ndarray:
    """Label stack ``(batch, size, size, depth)`` from ``(image, slice, id, r0, r1, c0, c1)``."""
    stack = np.zeros((batch, size, size, depth), np.int32)
    for image, layer, label, r0, r1, c0, c1 in boxes:
        stack[image, r0:r1, c0:c1, layer] = label
    return stack


def edge_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stacks and adjacency matrices of the edge cases the losses must survive."""
    return {
        "empty": (boxes_stack(2, 1, []), np.zeros((2, 1, 1), np.float32)),
        "one_object": (boxes_stack(1, 1, [(0, 0, 1, 2, 5, 2, 6)]), np.ones((1, 2, 2), np.float32)),
        "no_neighbour": (boxes_stack(1, 1, [(0, 0, 1, 0, 2, 0, 2), (0, 0, 2, 6, 8, 6, 8)]),
                         np.zeros((1, 3, 3), np.float32)),
        "covered": (overlapping_pair(), np.ones((1, 5, 5), np.float32)),
        "padded_k": (boxes_stack(2, 1, [(0, 0, 2, 1, 4, 1, 4)]), np.ones((2, 7, 7), np.float32)),
        "only_overlap": (boxes_stack(1, 2, [(0, 0, 1, 2, 5, 2, 5), (0, 1, 2, 2, 5, 2, 5)]),
                         np.ones((1, 3, 3), np.float32)),
    }


@pytest.mark.parametrize("case", sorted(edge_cases()))
@pytest.mark.parametrize("fill", ["random", "zeros", "ones"])
@pytest.mark.parametrize("name", ["paper", "authors", "mixed", "targets",
                                  "targets_overlap_weight"])
def test_losses_and_gradients_are_finite(case: str, fill: str, name: str) -> None:
    stack, adjacency = edge_cases()[case]
    config = VARIANTS[name]
    shape = stack.shape[:3]
    rng = np.random.default_rng(3)
    if fill == "random":
        embedding = rng.random(shape + (4,)).astype(np.float32)
        fg_pred = rng.random(shape + (1,)).astype(np.float32)
    else:
        value = 0.0 if fill == "zeros" else 1.0
        embedding = np.full(shape + (4,), value, np.float32)
        fg_pred = np.full(shape + (1,), value, np.float32)
    layer_of = -np.ones(adjacency.shape[:2], np.int32)
    embedding_var = tf.Variable(embedding)
    fg_var = tf.Variable(fg_pred)
    for phase in ("layering", "overlap"):
        with tf.GradientTape() as tape:
            losses = compute_losses({"layering": embedding_var, "foreground": fg_var},
                                    as_batch(stack, adjacency, layer_of), config, phase)
        gradients = tape.gradient(losses["loss"], [embedding_var, fg_var])
        for key, value in losses.items():
            assert np.isfinite(float(value)), (case, fill, phase, key)
        for gradient in gradients:
            assert gradient is not None and np.all(np.isfinite(gradient.numpy())), (case, phase)
    if case in ("empty", "only_overlap"):
        for key in ("attraction", "repulsion", "sparsity", "layering"):
            assert float(losses[key]) == 0.0


def test_layering_gradient_flows_through_means() -> None:
    stack, adjacency = three_objects_in_a_row()
    rng = np.random.default_rng(8)
    embedding = tf.Variable(rng.random(stack.shape[:3] + (4,)).astype(np.float32))
    with tf.GradientTape() as tape:
        value = layering_loss(embedding, tf.constant(stack), tf.constant(adjacency),
                              PAPER)["repulsion"]
    gradient = tape.gradient(value, embedding)
    assert np.abs(gradient.numpy()).max() > 0   # repulsion depends on e only through u_i


def test_bad_inputs_raise_clear_errors() -> None:
    stack, adjacency = three_objects_in_a_row()
    embedding = tf.zeros(stack.shape[:3] + (4,))
    with pytest.raises(LossInputError, match="id 3"):
        layering_loss(embedding, tf.constant(stack), tf.constant(adjacency[:, :3, :3]), PAPER)
    with pytest.raises(LossInputError, match="num_segments"):
        object_layers(embedding, tf.constant(stack), 2, PAPER)
    with pytest.raises(ValueError, match="phase"):
        compute_losses({"layering": embedding, "foreground": embedding[..., :1]},
                       as_batch(stack, adjacency, np.zeros((1, 4), np.int32)), PAPER, "tune")
