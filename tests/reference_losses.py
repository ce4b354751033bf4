"""Slow, obviously-correct NumPy reference of the layernet losses (one image, one object at a time).

Written straight from paper Eqs. 2-6 (and the documented authors' variants) with explicit loops,
in float64, to check the batched TensorFlow implementation in ``layernet.losses``.
Conventions are those of the ``layernet.losses`` module docstring.
"""

from __future__ import annotations

import math

import numpy as np

from layernet.assignment import (
    ISOTROPY_TOLERANCE,
    ORIENTATION_FLOOR,
    ORIENTATION_GRID,
    distinct_layers,
)
from layernet.config import Config

NORM_EPSILON = 1e-12
PROBABILITY_CLIP = 1e-7
PAIR_EPSILON = 1e-7


def norm(vector: np.ndarray) -> float:
    """Guarded L2 norm ``sqrt(max(|v|^2, 1e-12))``."""
    return float(np.sqrt(max(float(np.dot(vector, vector)), NORM_EPSILON)))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity D(a, b) with guarded norms."""
    return float(np.dot(a, b)) / (norm(a) * norm(b))


def overlap_free(stack_image: np.ndarray) -> np.ndarray:
    """(H, W, L) -> (H, W): id where exactly one object covers the pixel, else 0."""
    height, width, _ = stack_image.shape
    out = np.zeros((height, width), np.int64)
    for y in range(height):
        for x in range(width):
            labels = [int(v) for v in stack_image[y, x] if v > 0]
            if len(labels) == 1:
                out[y, x] = labels[0]
    return out


def object_mask(stack_image: np.ndarray, label: int) -> np.ndarray:
    """Full silhouette of object ``label`` in an (H, W, L) stack."""
    return np.any(stack_image == label, axis=-1)


def on_outline(stack_image: np.ndarray, y: int, x: int) -> bool:
    """Whether the 3x3 neighbourhood of (y, x) inside the image holds object and background."""
    values = {bool(np.any(stack_image[v, u] > 0))
              for v in range(max(y - 1, 0), min(y + 2, stack_image.shape[0]))
              for u in range(max(x - 1, 0), min(x + 2, stack_image.shape[1]))}
    return len(values) == 2


def foreground_loss(stack: np.ndarray, fg_pred: np.ndarray, outline_weight: float = 1.0) -> float:
    """Mean binary cross-entropy over all pixels; target = any object; the pixels on either
    side of an outline count ``outline_weight`` times (the mean stays over all pixels)."""
    total, pixels = 0.0, 0
    for b in range(stack.shape[0]):
        for y in range(stack.shape[1]):
            for x in range(stack.shape[2]):
                target = 1.0 if np.any(stack[b, y, x] > 0) else 0.0
                p = min(max(float(fg_pred[b, y, x, 0]), PROBABILITY_CLIP), 1 - PROBABILITY_CLIP)
                weight = outline_weight if on_outline(stack[b], y, x) else 1.0
                total += -weight * (target * np.log(p) + (1 - target) * np.log(1 - p))
                pixels += 1
    return total / pixels


def foreground_dice_loss(stack: np.ndarray, fg_probability: np.ndarray) -> float:
    """Soft Dice over all pixels of the batch, smoothed by 1: 1 - (2 sum pt + 1) / (sum p + sum t + 1)."""
    both = targets = predicted = 0.0
    for b in range(stack.shape[0]):
        for y in range(stack.shape[1]):
            for x in range(stack.shape[2]):
                target = 1.0 if np.any(stack[b, y, x] > 0) else 0.0
                p = float(fg_probability[b, y, x, 0])
                both += p * target
                targets += target
                predicted += p
    return 1.0 - (2.0 * both + 1.0) / (targets + predicted + 1.0)


def image_layering_sums(embedding: np.ndarray, stack_image: np.ndarray, adjacency: np.ndarray,
                        config: Config) -> dict[str, float]:
    """Sums and counts of the three layering terms of one image."""
    embedding = embedding.astype(np.float64)
    ids = overlap_free(stack_image)
    objects = sorted(int(v) for v in np.unique(ids) if v > 0)
    centres = {}
    for label in objects:
        pixels = embedding[ids == label]
        if config.mean_mode == "normalized":
            pixels = np.array([p / norm(p) for p in pixels])
        centres[label] = pixels.mean(axis=0)
    attraction, sparsity, count = 0.0, 0.0, 0
    for label in objects:
        for pixel in embedding[ids == label]:
            attraction += 1.0 - cosine(pixel, centres[label]) ** 2
            largest = float(np.max(pixel / norm(pixel)))
            sparsity += 1.0 - (largest ** 2 if config.sparsity_mode == "authors" else largest)
            count += 1
    repulsion, repulsion_count = 0.0, 0.0
    if config.repulsion_mode == "object":
        for i in objects:
            neighbours = [j for j in objects if j != i and adjacency[i, j] > 0]
            if neighbours:
                repulsion += sum(cosine(centres[i], centres[j]) ** 2
                                 for j in neighbours) / len(neighbours)
            repulsion_count += 1
    else:
        for i in objects:
            for j in objects:
                if i != j and adjacency[i, j] > 0:
                    repulsion += cosine(centres[i], centres[j]) ** 2
                    repulsion_count += 1
    return {"attraction": attraction, "sparsity": sparsity, "pixels": count,
            "repulsion": repulsion, "repulsion_count": repulsion_count}


def layering_loss(embedding: np.ndarray, stack: np.ndarray, adjacency: np.ndarray,
                  config: Config) -> dict[str, float]:
    """Reference of ``layernet.losses.layering_loss`` for batched numpy inputs."""
    batch, height, width = embedding.shape[:3]
    sums = [image_layering_sums(embedding[b], stack[b], adjacency[b], config)
            for b in range(batch)]

    def rep_ratio(total: float, count: float) -> float:
        if config.repulsion_mode == "pair":
            return total / (count + PAIR_EPSILON)
        return total / count if count > 0 else 0.0

    all_pixels = batch * height * width
    if config.layering_per_image:
        used = [s for s in sums if s["pixels"] > 0]
        if used:
            attraction = np.mean([s["attraction"] / s["pixels"] for s in used])
            repulsion = np.mean([rep_ratio(s["repulsion"], s["repulsion_count"]) for s in used])
            sparsity = np.mean([s["sparsity"] / s["pixels"] for s in used])
        else:
            attraction = repulsion = sparsity = 0.0
    else:
        pixels = sum(s["pixels"] for s in sums)
        attraction = sum(s["attraction"] for s in sums) / pixels if pixels else 0.0
        sparsity = sum(s["sparsity"] for s in sums) / pixels if pixels else 0.0
        repulsion = rep_ratio(sum(s["repulsion"] for s in sums),
                              sum(s["repulsion_count"] for s in sums))
    if config.sparsity_mode == "authors":
        sparsity = sum(s["sparsity"] for s in sums) / all_pixels
    layering = attraction + repulsion + config.sparsity_weight * sparsity
    return {"attraction": float(attraction), "repulsion": float(repulsion),
            "sparsity": float(sparsity), "layering": float(layering)}


def object_layers(embedding: np.ndarray, stack: np.ndarray, segments: int,
                  config: Config) -> np.ndarray:
    """Reference of ``layernet.losses.object_layers``: (B, segments) int, -1 = absent/background."""
    result = -np.ones((embedding.shape[0], segments), np.int64)
    for b in range(embedding.shape[0]):
        ids = overlap_free(stack[b])
        vectors = embedding[b].astype(np.float64)
        if config.mean_mode == "normalized":
            vectors = np.array([[v / norm(v) for v in row] for row in vectors])
        for label in range(1, segments):
            free = ids == label
            full = object_mask(stack[b], label)
            if free.any():
                result[b, label] = int(np.argmax(vectors[free].mean(axis=0)))
            elif full.any():
                if config.covered_objects == "full":
                    result[b, label] = int(np.argmax(vectors[full].mean(axis=0)))
                else:
                    result[b, label] = 0
    return result


def distinct_object_layers(embedding: np.ndarray, stack: np.ndarray, adjacency: np.ndarray,
                           config: Config) -> np.ndarray:
    """Reference of ``layernet.losses.distinct_object_layers``: unit mean embedding of each
    object's overlap-free part (else its silhouette), then the greedy colouring per image."""
    batch, segments = adjacency.shape[:2]
    result = -np.ones((batch, segments), np.int64)
    for b in range(batch):
        ids = overlap_free(stack[b])
        vectors = embedding[b].astype(np.float64)
        if config.mean_mode == "normalized":
            vectors = np.array([[v / norm(v) for v in row] for row in vectors])
        scores = np.zeros((segments, embedding.shape[-1]))
        for label in range(1, segments):
            free = ids == label
            full = object_mask(stack[b], label)
            if free.any() or full.any():
                mean = vectors[free if free.any() else full].mean(axis=0)
                scores[label] = mean / norm(mean)
        result[b] = distinct_layers(scores, adjacency[b])
    return result


def orientation_object_layers(stack: np.ndarray, adjacency: np.ndarray, layers: int,
                              spacing: int = 0) -> np.ndarray:
    """Reference of ``layernet.losses.orientation_object_layers``: per object, the covariance
    of its pixel coordinates (whole silhouette), the angle of its main axis snapped to the grid
    (0 without a main axis), a score per layer falling linearly with the angular distance to the
    layer's sector centre, then the greedy colouring per image."""
    batch, segments = adjacency.shape[:2]
    grid = ORIENTATION_GRID
    result = -np.ones((batch, segments), np.int64)
    for b in range(batch):
        scores = np.zeros((segments, layers))
        for label in range(1, segments):
            rows, cols = np.nonzero(object_mask(stack[b], label))
            if len(rows) == 0:
                continue
            covariance = np.cov(np.stack([cols, rows]).astype(np.float64), bias=True)
            var_x, var_y, cov_xy = covariance[0, 0], covariance[1, 1], covariance[0, 1]
            if math.hypot(var_x - var_y, 2 * cov_xy) > ISOTROPY_TOLERANCE * (var_x + var_y):
                angle = 0.5 * math.atan2(2 * cov_xy, var_x - var_y)
                index = int(np.round(angle / math.pi * grid)) % grid
            else:
                index = 0
            for n in range(layers):
                difference = abs(index - (n + 0.5) * grid / layers)
                distance = min(difference, grid - difference)
                scores[label, n] = 1 - distance / (grid / 2) + ORIENTATION_FLOOR
        result[b] = distinct_layers(scores, adjacency[b], spacing)
    return result


def position_object_layers(stack: np.ndarray, adjacency: np.ndarray, layers: int,
                           spacing: int = 0) -> np.ndarray:
    """Reference of ``layernet.losses.position_object_layers``: per image, the objects sorted by
    the mean column of their pixels (whole silhouette; ties by id), then first fit: each object
    takes the lowest layer at a cyclic distance of more than ``spacing`` from the layers of its
    neighbours already placed, else the lowest layer none of them holds, else layer 0."""
    batch, segments = adjacency.shape[:2]
    result = -np.ones((batch, segments), np.int64)
    for b in range(batch):
        centres = []
        for label in range(1, segments):
            _, cols = np.nonzero(object_mask(stack[b], label))
            if len(cols):
                centres.append((float(np.mean(cols.astype(np.float64))), label))
        for _, label in sorted(centres):
            held = [int(result[b, other]) for other in range(1, segments)
                    if adjacency[b, label, other] and other != label and result[b, other] >= 0]

            def near(layer: int) -> bool:
                return any(min(abs(layer - h), layers - abs(layer - h)) <= spacing for h in held)

            spaced = [layer for layer in range(layers) if not near(layer)]
            free = [layer for layer in range(layers) if layer not in held]
            result[b, label] = spaced[0] if spaced else free[0] if free else 0
    return result


def online_layers(embedding: np.ndarray, stack: np.ndarray, adjacency: np.ndarray,
                  config: Config) -> np.ndarray:
    """Reference of ``layernet.losses.online_layer_assignment``."""
    if config.layer_assignment == "distinct":
        return distinct_object_layers(embedding, stack, adjacency, config)
    if config.layer_assignment == "orientation":
        return orientation_object_layers(stack, adjacency, embedding.shape[-1],
                                         config.join_layers)
    if config.layer_assignment == "position":
        return position_object_layers(stack, adjacency, embedding.shape[-1], config.join_layers)
    return object_layers(embedding, stack, adjacency.shape[1], config)


def overlap_targets(stack: np.ndarray, layer_of: np.ndarray, layers: int) -> np.ndarray:
    """Reference of ``layernet.losses.overlap_targets``."""
    batch, height, width, _ = stack.shape
    targets = np.zeros((batch, height, width, layers), np.float32)
    for b in range(batch):
        for label in range(1, layer_of.shape[1]):
            if layer_of[b, label] >= 0:
                targets[b, object_mask(stack[b], label), layer_of[b, label]] = 1.0
    return targets


def overlap_loss(embedding: np.ndarray, targets: np.ndarray, stack: np.ndarray,
                 config: Config) -> float:
    """Reference of ``layernet.losses.overlap_loss`` (Eq. 6 with smoothing and batch options)."""
    smooth = config.dice_smooth
    per_image = []
    for b in range(embedding.shape[0]):
        intersection, total, pixels = 0.0, 0.0, 0
        for y in range(embedding.shape[1]):
            for x in range(embedding.shape[2]):
                if np.any(stack[b, y, x] > 0):
                    e = embedding[b, y, x].astype(np.float64)
                    s = targets[b, y, x].astype(np.float64)
                    intersection += float(np.dot(e, s))
                    total += float(e.sum() + s.sum())
                    pixels += 1
        per_image.append((intersection, total, pixels))
    def dice_loss(intersection: float, total: float) -> float:
        # prediction and targets both zero on the foreground: they agree (0, not 0 / 0)
        return 0.0 if total + smooth == 0 else 1 - (2 * intersection + smooth) / (total + smooth)

    if config.overlap_per_image:
        values = [dice_loss(i, t) for i, t, p in per_image if p > 0]
        return float(np.mean(values)) if values else 0.0
    intersection = sum(i for i, _, _ in per_image)
    total = sum(t for _, t, _ in per_image)
    if sum(p for _, _, p in per_image) == 0:
        return 0.0
    return dice_loss(intersection, total)


def layer_target_bce(embedding: np.ndarray, targets: np.ndarray, stack: np.ndarray,
                     overlap_weight: float = 1.0) -> float:
    """Reference of ``layernet.losses.layer_target_loss`` ("bce"): mean over the foreground
    pixels and the layers of the clipped binary cross-entropy, a pixel covered by two or more
    objects counting ``overlap_weight`` times."""
    values, weights = [], []
    for b, y, x in zip(*np.nonzero(np.any(stack > 0, axis=-1))):
        weight = overlap_weight if np.count_nonzero(stack[b, y, x]) > 1 else 1.0
        for e, s in zip(embedding[b, y, x].astype(np.float64), targets[b, y, x]):
            p = min(max(e, 1e-7), 1 - 1e-7)
            values.append(-(s * np.log(p) + (1 - s) * np.log(1 - p)))
            weights.append(weight)
    return float(np.average(values, weights=weights)) if values else 0.0


def compute_losses(outputs: dict[str, np.ndarray], batch: dict[str, np.ndarray], config: Config,
                   phase: str) -> dict[str, float]:
    """Reference of ``layernet.losses.compute_losses``."""
    embedding = outputs["layering"]
    stack = batch["stack"]
    losses = {"foreground": foreground_loss(stack, outputs["foreground"],
                                            config.foreground_outline_weight)}
    losses.update(layering_loss(embedding, stack, batch["adjacency"], config))
    losses["loss"] = losses["foreground"] + losses["layering"]
    if config.foreground_dice_weight > 0:
        losses["foreground_dice"] = foreground_dice_loss(stack, outputs["foreground"])
        losses["loss"] += config.foreground_dice_weight * losses["foreground_dice"]
    adjacency = batch["adjacency"]
    if phase == "overlap":
        if config.overlap_targets == "frozen":
            online = object_layers(embedding, stack, adjacency.shape[1], config)
            layer_of = np.where(batch["layer_of"] >= 0, batch["layer_of"], online)
        else:
            layer_of = online_layers(embedding, stack, adjacency, config)
        targets = overlap_targets(stack, layer_of, embedding.shape[-1])
        losses["overlap"] = overlap_loss(embedding, targets, stack, config)
        losses["loss"] += config.overlap_weight * losses["overlap"]
    elif config.layer_target_weight > 0:
        targets = overlap_targets(stack, online_layers(embedding, stack, adjacency, config),
                                  embedding.shape[-1])
        if config.layer_target_loss == "dice":
            losses["layer_targets"] = overlap_loss(embedding, targets, stack, config)
        else:
            losses["layer_targets"] = layer_target_bce(embedding, targets, stack,
                                                       config.layer_target_overlap_weight)
        losses["loss"] += config.layer_target_weight * losses["layer_targets"]
    return losses
