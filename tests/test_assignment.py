"""Phase-2 layer assignment: object scores and the adjacent-distinct colouring."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from layernet.assignment import (
    position_layer_scores,
    distinct_layers,
    layer_collisions,
    object_layer_scores,
    object_orientations,
    orientation_layer_scores,
)
from layernet.config import Config, ConfigError
from layernet.losses import (
    position_object_layers,
    compute_losses,
    distinct_object_layers,
    layer_target_loss,
    object_layers,
    orientation_object_layers,
)
from tests import reference_losses as reference


def test_scores_hand_case_overlap_free_part_and_fallback() -> None:
    stack = np.zeros((2, 2, 3), np.int32)
    stack[0, 0, :2] = 1          # object 1: pixels (0,0), (0,1)
    stack[1, 0, 1:] = 2          # object 2: (0,1) under object 1, (0,2) free
    stack[1, 1, 0] = 3           # object 3: (1,0), all of it under ...
    stack[0, 1, 0] = 4           # ... object 4: no overlap-free pixel for either
    layering = np.zeros((2, 3, 2))
    layering[0, 0] = [1.0, 0.0]
    layering[0, 1] = [0.0, 1.0]  # overlap pixel: not in object 1's or 2's free part
    layering[0, 2] = [0.0, 3.0]
    layering[1, 0] = [3.0, 4.0]
    scores = object_layer_scores(layering, stack)
    np.testing.assert_allclose(scores, [[0, 0], [1, 0], [0, 1], [0.6, 0.8], [0.6, 0.8]])


def test_distinct_layers_hand_cases() -> None:
    # objects 1 and 2 both prefer layer 0 and touch: the more confident (2) keeps it
    scores = np.array([[0, 0, 0], [0.8, 0.6, 0.0], [0.9, 0.1, 0.4], [0.7, 0.0, 0.7]])
    adjacency = np.zeros((4, 4), bool)
    adjacency[1, 2] = adjacency[2, 1] = True
    np.testing.assert_array_equal(distinct_layers(scores, adjacency), [-1, 1, 0, 0])
    # all layers held by neighbours: the object keeps its own best layer
    adjacency[:] = True
    scores = np.array([[0, 0], [1.0, 0.0], [0.0, 1.0], [0.9, 0.1]])
    np.testing.assert_array_equal(distinct_layers(scores, adjacency), [-1, 0, 1, 0])
    # an absent object (zero row) stays -1
    scores[2] = 0
    assert distinct_layers(scores, adjacency)[2] == -1
    with pytest.raises(ValueError, match="adjacency"):
        distinct_layers(scores, np.zeros((3, 3)))


def test_distinct_layers_spacing_hand_case() -> None:
    # objects 1 and 2 adjacent, both prefer layer 0 of 6, object 2 then layer 1, then 3
    scores = np.zeros((3, 6))
    scores[1] = [0.9, 0.1, 0.0, 0.0, 0.0, 0.0]
    scores[2] = [0.8, 0.7, 0.0, 0.5, 0.0, 0.1]
    adjacency = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(distinct_layers(scores, adjacency), [-1, 0, 1])
    # spacing 1: layers 5, 0, 1 are too near object 1's layer 0 -> its best other, layer 3
    np.testing.assert_array_equal(distinct_layers(scores, adjacency, spacing=1), [-1, 0, 3])
    # spacing 3 rules out every layer: back to "different"
    np.testing.assert_array_equal(distinct_layers(scores, adjacency, spacing=3), [-1, 0, 1])
    with pytest.raises(ValueError, match="spacing"):
        distinct_layers(scores, adjacency, spacing=-1)


def test_distinct_layers_property_on_random_graphs() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        count, layers = int(rng.integers(2, 12)), int(rng.integers(2, 6))
        scores = rng.random((count, layers))
        scores[0] = 0
        upper = np.triu(rng.random((count, count)) < 0.3, 1)
        adjacency = upper | upper.T
        layer_of = distinct_layers(scores, adjacency)
        assert layer_of[0] == -1 and np.all(layer_of[1:] >= 0)
        degree = adjacency[1:, 1:].sum(axis=1)
        for a, b in zip(*np.nonzero(np.triu(adjacency, 1))):
            if a and degree[a - 1] < layers and degree[b - 1] < layers:
                assert layer_of[a] != layer_of[b]  # a free layer existed for both: not shared
        # without adjacency it is the argmax
        alone = distinct_layers(scores, np.zeros_like(adjacency))
        np.testing.assert_array_equal(alone[1:], np.argmax(scores[1:], axis=1))


def test_scores_argmax_equals_the_losses_object_layers() -> None:
    rng = np.random.default_rng(1)
    for _ in range(10):
        stack = np.zeros((2, 12, 12), np.int32)
        for obj in range(1, 6):
            r, c = rng.integers(0, 9, 2)
            stack[obj % 2, r:r + 4, c:c + 4] = np.where(stack[obj % 2, r:r + 4, c:c + 4] == 0,
                                                        obj, stack[obj % 2, r:r + 4, c:c + 4])
        present = np.unique(stack[stack > 0])
        stack = np.searchsorted(np.concatenate([[0], present]), stack).astype(np.int32)
        layering = rng.random((12, 12, 4)).astype(np.float32)
        expected = object_layers(tf.constant(layering[None]),
                                 tf.constant(np.moveaxis(stack, 0, -1)[None]),
                                 int(stack.max()) + 1, Config()).numpy()[0]
        scores = object_layer_scores(layering, stack)
        np.testing.assert_array_equal(np.argmax(scores[1:], axis=1), expected[1:])


def bars_stack() -> np.ndarray:
    """``(2, 16, 16)`` stack: 1 horizontal bar, 2 vertical bar crossing it (slice 1), 3 a
    diagonal from top left to bottom right, 4 a bar parallel to 1 touching it."""
    stack = np.zeros((2, 16, 16), np.int32)
    stack[0, 2, 1:9] = 1
    stack[1, 0:9, 4] = 2
    for index in range(6):
        stack[0, 9 + index, 8 + index] = 3
    stack[0, 3, 1:9] = 4
    return stack


def test_orientations_hand_case() -> None:
    index = object_orientations(bars_stack())
    # measured from the x axis (columns) towards the y axis (rows), in quarter degrees
    np.testing.assert_array_equal(index, [-1, 0, 360, 180, 0])
    square = np.zeros((1, 5, 5), np.int32)
    square[0, 1:4, 1:4] = 1                                  # no main axis: horizontal
    np.testing.assert_array_equal(object_orientations(square), [-1, 0])
    scores = orientation_layer_scores(np.array([-1, 0, 360, 180, 90]), 4)
    np.testing.assert_array_equal(scores[0], 0)
    # sectors centred at 22.5, 67.5, 112.5 and 157.5 degrees
    np.testing.assert_allclose(scores[1], 1 - np.array([22.5, 67.5, 67.5, 22.5]) / 90 + 1e-3)
    np.testing.assert_allclose(scores[3], 1 - np.array([22.5, 22.5, 67.5, 67.5]) / 90 + 1e-3)
    np.testing.assert_allclose(scores[4], 1 - np.array([0, 45, 90, 45]) / 90 + 1e-3)
    assert np.argmax(scores[2]) in (1, 2) and np.argmax(scores[4]) == 0


def test_orientation_assignment_separates_neighbours_and_follows_the_pose() -> None:
    stack = bars_stack()
    adjacency = np.zeros((1, 6, 6), np.float32)       # one padding id (5)
    for a, b in ((1, 2), (1, 4), (2, 4)):
        adjacency[0, a, b] = adjacency[0, b, a] = 1
    layer_of = orientation_object_layers(tf.constant(np.moveaxis(stack, 0, -1)[None]),
                                         tf.constant(adjacency), 8).numpy()[0]
    # 8 sectors of 22.5 degrees: horizontal -> 0 or 7, vertical -> 3 or 4, 45 degrees -> 1 or 2
    assert layer_of[0] == -1 and layer_of[5] == -1
    assert layer_of[1] in (0, 7) and layer_of[2] in (3, 4) and layer_of[3] in (1, 2)
    # the parallel neighbour of bar 1 takes the other horizontal sector, not bar 1's
    assert layer_of[4] in (0, 7) and layer_of[4] != layer_of[1]
    # kept more than one sector from its neighbours' layers (spacing 1): bar 1 in 0 and bar 2
    # in 3 leave 5 and 6, and 6 is nearer the horizontal
    spaced = orientation_object_layers(tf.constant(np.moveaxis(stack, 0, -1)[None]),
                                       tf.constant(adjacency), 8, spacing=1).numpy()[0]
    np.testing.assert_array_equal(spaced[:4], layer_of[:4])
    assert (spaced[1], spaced[2], spaced[4]) == (0, 3, 6)
    # turning the image by 90 degrees turns the vertical bar horizontal and vice versa
    turned = np.rot90(stack, axes=(1, 2))
    turned_layers = orientation_object_layers(tf.constant(np.moveaxis(turned, 0, -1)[None]),
                                              tf.constant(adjacency), 8).numpy()[0]
    assert turned_layers[1] in (3, 4) and turned_layers[2] in (0, 7)


def random_blobs(rng: np.random.Generator, density: float) -> tuple[np.ndarray, np.ndarray]:
    """A ``(2, 20, 20, 2)`` batch of 6 random pixel scatters per image (ids 1..6) and a random
    symmetric ``(2, 8, 8)`` adjacency (ids 1..6 and a padding id) of the given density."""
    stack = np.zeros((2, 20, 20, 2), np.int32)
    for b in range(2):
        for obj in range(1, 7):
            r, c = rng.integers(0, 14, 2)
            h, w = rng.integers(3, 7, 2)
            # a random scatter of pixels: generic orientations (a single row or column is
            # at 0 or 90 degrees, a tie between two sectors that float32 breaks either way)
            blob = rng.random((h, w)) < 0.6
            stack[b, r:r + h, c:c + w, obj % 2][blob] = obj
    segments = 8
    adjacency = (rng.random((2, segments, segments)) < density).astype(np.float32)
    adjacency = np.maximum(adjacency, np.transpose(adjacency, (0, 2, 1)))
    adjacency[:, np.arange(segments), np.arange(segments)] = 0
    adjacency[:, 0, :] = adjacency[:, :, 0] = 0
    return stack, adjacency


def test_orientation_assignment_equals_the_reference() -> None:
    rng = np.random.default_rng(3)
    segments = 8
    for _ in range(6):
        stack, adjacency = random_blobs(rng, 0.4)
        spacing = int(rng.integers(0, 2))
        result = orientation_object_layers(tf.constant(stack), tf.constant(adjacency), 5,
                                           spacing).numpy()
        expected = reference.orientation_object_layers(stack, adjacency, 5, spacing)
        np.testing.assert_array_equal(result, expected)
        index = object_orientations(np.moveaxis(stack[0], -1, 0))
        scores = np.zeros((segments, 5))
        scores[:len(index)] = orientation_layer_scores(index, 5)
        np.testing.assert_array_equal(distinct_layers(scores, adjacency[0], spacing),
                                      expected[0])


def triangle_stack() -> np.ndarray:
    """``(2, 12, 20)`` stack: three mutually overlapping blocks 1 (middle), 2 (left), 3 (right)
    and a lone block 4 far right; ids do not follow the columns."""
    stack = np.zeros((2, 12, 20), np.int32)
    stack[0, 2:8, 4:9] = 1        # columns 4-8, centre 6
    stack[1, 3:9, 1:6] = 2        # centre 3
    stack[1, 0:3, 7:11] = 3       # centre 8.5 (slice 1 beside 2, overlapping 1)
    stack[0, 9:12, 16:19] = 4     # centre 17, alone
    return stack


def test_position_assignment_hand_case() -> None:
    stack = triangle_stack()
    adjacency = np.zeros((1, 6, 6), np.float32)   # one padding id (5)
    for a, b in ((1, 2), (1, 3), (2, 3)):
        adjacency[0, a, b] = adjacency[0, b, a] = 1
    as_batch = tf.constant(np.moveaxis(stack, 0, -1)[None])
    layer_of = position_object_layers(as_batch, tf.constant(adjacency), 8).numpy()[0]
    # left to right: 2 (col 3) -> 0, 1 (col 6) -> 1, 3 (col 8.5) -> 2; the lone 4 -> 0
    np.testing.assert_array_equal(layer_of, [-1, 1, 0, 2, 0, -1])
    spaced = position_object_layers(as_batch, tf.constant(adjacency), 8, spacing=1).numpy()[0]
    np.testing.assert_array_equal(spaced, [-1, 2, 0, 4, 0, -1])
    # mirrored, the order of the three reverses
    mirrored = tf.constant(np.moveaxis(stack[:, :, ::-1], 0, -1)[None])
    np.testing.assert_array_equal(
        position_object_layers(mirrored, tf.constant(adjacency), 8).numpy()[0],
        [-1, 1, 2, 0, 0, -1])
    # more neighbours than layers: the last object gets its preferred layer 0
    two = position_object_layers(as_batch, tf.constant(adjacency), 2).numpy()[0]
    np.testing.assert_array_equal(two, [-1, 1, 0, 0, 0, -1])
    scores = position_layer_scores(np.array([0, 12, 6, 17, 0]), np.array([0, 2, 2, 2, 0]), 3)
    np.testing.assert_array_equal(scores[0], 0)
    np.testing.assert_array_equal(scores[4], 0)
    # ranks: 2 (col 3), 1 (col 6), 3 (col 8.5) -> (3, 2, 1) * 4 + (3, 2, 1)
    np.testing.assert_array_equal(scores[2], [15, 14, 13])
    np.testing.assert_array_equal(scores[1], [11, 10, 9])
    np.testing.assert_array_equal(scores[3], [7, 6, 5])


def test_position_assignment_equals_the_reference() -> None:
    rng = np.random.default_rng(5)
    for _ in range(6):
        stack, adjacency = random_blobs(rng, 0.5)
        stack[1, :, :, 0][stack[1, :, :, 0] == 3] = 0
        stack[1, 0, 0, 0] = 3          # a one-pixel object at column 0
        stack[1, 5, 10, 1] = 0
        for layers, spacing in ((5, 0), (5, 1), (3, 1), (2, 0)):
            result = position_object_layers(tf.constant(stack), tf.constant(adjacency), layers,
                                            spacing).numpy()
            expected = reference.position_object_layers(stack, adjacency, layers, spacing)
            np.testing.assert_array_equal(result, expected, err_msg=f"{layers} {spacing}")


def test_config_checks_assignment_and_layer_target_weight() -> None:
    Config(layer_assignment="position", layer_target_weight=1).validate()
    with pytest.raises(ConfigError, match="position"):
        Config(layer_assignment="position", phase="overlap").validate()
    Config(layer_assignment="orientation", layer_target_weight=1).validate()
    Config(layer_assignment="orientation", phase="overlap", overlap_targets="online").validate()
    with pytest.raises(ConfigError, match="orientation"):
        Config(layer_assignment="orientation", phase="overlap").validate()
    Config(layer_assignment="distinct").validate()
    Config(layer_assignment="distinct", overlap_targets="online", layer_target_weight=1).validate()
    with pytest.raises(ConfigError, match="layer_assignment"):
        Config(layer_assignment="colour").validate()
    with pytest.raises(ConfigError, match="layer_target_weight"):
        Config(layer_target_weight=-1).validate()
    with pytest.raises(ConfigError, match="layer_target_weight"):
        Config(method="unet3", layer_target_weight=1).validate()


def two_touching_objects() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Objects 1 (columns 0-1) and 2 (columns 2-3) of a 2 x 4 image, adjacent, both preferring
    layer 0 of 3 (object 1 more strongly); layer 1 is object 2's second choice."""
    stack = np.array([[1, 1, 2, 2], [1, 1, 2, 2]], np.int32)[None, :, :, None]
    embedding = np.zeros((1, 2, 4, 3), np.float32)
    embedding[0, :, :2] = [0.9, 0.1, 0.1]
    embedding[0, :, 2:] = [0.6, 0.5, 0.1]
    adjacency = np.array([[[0, 0, 0], [0, 0, 1], [0, 1, 0]]], np.float32)
    return stack, embedding, adjacency


def test_online_distinct_targets_hand_case() -> None:
    stack, embedding, adjacency = two_touching_objects()
    config = Config(layer_assignment="distinct", layer_target_weight=1.0,
                    layer_target_loss="dice")
    layer_of = distinct_object_layers(tf.constant(embedding), tf.constant(stack),
                                      tf.constant(adjacency), config).numpy()
    np.testing.assert_array_equal(layer_of, [[-1, 0, 1]])
    argmax = object_layers(tf.constant(embedding), tf.constant(stack), 3, Config()).numpy()
    np.testing.assert_array_equal(argmax, [[-1, 0, 0]])   # the paper's targets merge them
    outputs = {"layering": tf.Variable(embedding),
               "foreground": tf.constant(np.full((1, 2, 4, 1), 0.9, np.float32))}
    batch = {"stack": tf.constant(stack), "adjacency": tf.constant(adjacency)}
    with tf.GradientTape() as tape:
        losses = compute_losses(outputs, batch, config, "layering")
    # Dice of Eq. 6 by hand: targets [1,0,0] on object 1's 4 pixels, [0,1,0] on object 2's
    intersection = 4 * 0.9 + 4 * 0.5
    total = 4 * (0.9 + 0.1 + 0.1) + 4 * (0.6 + 0.5 + 0.1) + 8
    np.testing.assert_allclose(float(losses["layer_targets"]), 1 - 2 * intersection / total,
                               rtol=1e-6)
    paper = compute_losses(outputs, batch, Config(), "layering")
    np.testing.assert_allclose(float(losses["loss"]),
                               float(paper["loss"]) + float(losses["layer_targets"]), rtol=1e-6)
    gradient = tape.gradient(losses["layer_targets"], outputs["layering"]).numpy()[0]
    assert np.all(gradient[:, 2:, 1] < 0) and np.all(gradient[:, 2:, 0] > 0)  # 2 -> layer 1
    assert "layer_targets" not in paper
    # the cross-entropy: mean over the 8 pixels and 3 layers
    bce = compute_losses(outputs, batch, config.replace(layer_target_loss="bce"), "layering")
    expected = -(4 * (np.log(0.9) + 2 * np.log(0.9)) + 4 * (np.log(0.4) + np.log(0.5)
                                                            + np.log(0.9))) / 24
    np.testing.assert_allclose(float(bce["layer_targets"]), expected, rtol=1e-6)


def test_overlap_pixels_weigh_more_in_the_cross_entropy_hand_case() -> None:
    # two objects on a 1 x 3 strip, sharing the middle pixel; targets: object 1 in layer 0,
    # object 2 in layer 1, so the middle pixel's targets are [1, 1]
    stack = np.zeros((1, 1, 3, 2), np.int32)
    stack[0, 0, :2, 0] = 1
    stack[0, 0, 1:, 1] = 2
    embedding = np.array([[[[0.8, 0.3], [0.6, 0.2], [0.1, 0.7]]]], np.float32)
    targets = np.array([[[[1, 0], [1, 1], [0, 1]]]], np.float32)

    def bce(e, s):
        return -(s * np.log(e) + (1 - s) * np.log(1 - e))

    per_pixel = [np.mean(bce(embedding[0, 0, x], targets[0, 0, x])) for x in range(3)]
    for weight in (1.0, 3.0, 0.5):
        config = Config(layer_assignment="position", layer_target_weight=1.0,
                        layer_target_overlap_weight=weight)
        value = float(layer_target_loss(tf.constant(embedding), tf.constant(targets),
                                        tf.constant(stack), config))
        expected = (per_pixel[0] + weight * per_pixel[1] + per_pixel[2]) / (2 + weight)
        np.testing.assert_allclose(value, expected, rtol=1e-6)
    assert not np.isclose(per_pixel[1], np.mean(per_pixel))  # the weight can change the mean


def test_config_checks_layer_target_overlap_weight() -> None:
    Config(layer_target_weight=1, layer_target_overlap_weight=4).validate()
    with pytest.raises(ConfigError, match="layer_target_overlap_weight must be > 0"):
        Config(layer_target_weight=1, layer_target_overlap_weight=0).validate()
    with pytest.raises(ConfigError, match="needs layer_target_weight > 0"):
        Config(layer_target_overlap_weight=2).validate()   # no layer-target loss to weigh
    with pytest.raises(ConfigError, match="layer_target_loss 'bce'"):
        Config(layer_target_weight=1, layer_target_loss="dice",
               layer_target_overlap_weight=2).validate()


def test_cross_entropy_targets_pull_a_switched_off_layer_harder_than_dice() -> None:
    stack, embedding, adjacency = two_touching_objects()
    embedding[0, :, :2] = [0.9, 0.001, 0.001]
    embedding[0, :, 2:] = [0.5, 0.01, 0.001]         # object 2's target layer 1 is switched off
    batch = {"stack": tf.constant(stack), "adjacency": tf.constant(adjacency)}
    logits = tf.Variable(np.log(embedding / (1 - embedding)))
    pulls = {}
    for loss in ("dice", "bce"):
        config = Config(layer_assignment="distinct", layer_target_weight=1.0,
                        layer_target_loss=loss)
        with tf.GradientTape() as tape:
            outputs = {"layering": tf.sigmoid(logits),
                       "foreground": tf.constant(np.full((1, 2, 4, 1), 0.9, np.float32))}
            value = compute_losses(outputs, batch, config, "layering")["layer_targets"]
        pulls[loss] = -float(tape.gradient(value, logits)[0, 0, 2, 1]) * 8  # per-pixel scale
    assert pulls["bce"] > 0 and pulls["dice"] > 0
    assert pulls["bce"] > 20 * pulls["dice"]


def test_online_distinct_targets_in_a_training_step(tmp_path) -> None:
    from layernet.training import LayeringTrainer
    from layernet.model import build_model

    stack, embedding, adjacency = two_touching_objects()
    config = Config(size="S", filters=4, head_filters=4, layers=3, channels=1,
                    layer_assignment="distinct", layer_target_weight=1.0).validate()
    trainer = LayeringTrainer(build_model(config), config, "layering")
    trainer.compile(optimizer="rmsprop")
    trainer.optimizer.build(trainer.net.trainable_variables)
    image = np.random.default_rng(0).random((1, 8, 8, 1)).astype(np.float32)
    big_stack = np.zeros((1, 8, 8, 1), np.int32)
    big_stack[0, 2:4, 2:6, 0] = stack[0, :, :, 0]
    batch = {"image": tf.constant(image), "stack": tf.constant(big_stack),
             "adjacency": tf.constant(adjacency)}
    before = [weight.numpy().copy() for weight in trainer.net.trainable_variables]
    logs = tf.function(trainer.train_step)(batch)     # graph mode: the NumPy colouring inside
    assert np.isfinite(float(logs["layer_targets"])) and float(logs["layer_targets"]) > 0
    after = trainer.net.trainable_variables
    assert any(not np.array_equal(b, a.numpy()) for b, a in zip(before, after))


def test_layer_collisions_hand_case() -> None:
    adjacency = np.zeros((4, 4), bool)
    adjacency[1, 2] = adjacency[2, 1] = adjacency[2, 3] = adjacency[3, 2] = True
    adjacency[0, :] = adjacency[:, 0] = True   # background row/column: ignored
    result = layer_collisions([np.array([-1, 0, 0, 1]), np.array([-1, 2, -1])],
                              [adjacency, np.ones((3, 3), bool)], layers=3)
    # image 1: pairs (1,2) shared, (2,3) not; image 2: pair (1,2) with an unassigned object
    assert result == {"pairs": 3, "shared": 1, "objects_per_layer": [2, 1, 1]}


def test_layer_use_bench_reports_pairs_and_layers(tiny_run, capsys) -> None:
    from bench import layer_use

    layer_use.main([tiny_run, "--split", "val"])
    row = capsys.readouterr().out.strip().splitlines()[-1].split(maxsplit=3)
    pairs, shared = int(row[1]), int(row[2])
    counts = [int(value) for value in row[3].strip("[]").split(",")]
    layers = Config.load(f"{tiny_run}/config.json").layers
    assert 0 <= shared <= pairs and len(counts) == layers and sum(counts) > 0
