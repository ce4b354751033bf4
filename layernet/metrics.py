"""Overlap-aware instance segmentation metrics on label stacks: AP_t, meanAP, AJI.

Why this module is longer than 500 lines: it is the one definition of every score the project
reports (validation, evaluate.py, the benches, the paper tables). Both matchings are computed
from the same sparse intersection table and pooled the same way, and most of the length is the
documentation of exactly how (below), which must stay beside the code that it describes.

Ground truth and prediction are label stacks ``(L, H, W)`` (:mod:`layernet.instances`), so
objects may overlap on either side; a plain 2-D label image is accepted as a one-slice stack.
Everything is derived from a sparse table of intersections: for every pair of slices the
(ground-truth id, predicted id) codes of the pixels where both are non-zero are counted with
:func:`numpy.bincount`; object areas come from one more bincount. No dense per-object masks or
per-pair products are ever formed.

Two matchings are available (``matching=``):

``"reference"`` — the authors' evaluator (used for the paper's Table 1)
    Every ground-truth object ``g`` takes as candidate the prediction ``p*(g)`` with the largest
    **intersection** (ties: the highest prediction id, i.e. the later prediction, as in the
    authors' code); it is a hit at threshold ``t`` if ``IoU(g, p*(g)) >= t``. ``TP_t`` = number
    of hits, ``M_t`` = number of distinct predictions among the hits, and
    ``AP_t = TP_t / (N_gt + N_pred - M_t)``. It is stored as ``tp = TP_t``, ``fp = N_pred - M_t``,
    ``fn = N_gt - TP_t`` so that ``AP_t = TP/(TP+FP+FN)`` holds for both matchings. One
    prediction may be the hit of several (overlapping) ground-truth objects.
    AJI: ``C = sum_g |g ∩ p*(g)|``; ``U = sum_g |g ∪ p*(g)|`` (``|g|`` when ``g`` touches no
    prediction) ``+ sum |p|`` over predictions chosen by no ``g``.

``"hungarian"`` — one-to-one matching (as StarDist / Cellpose)
    At each threshold ``t`` the one-to-one assignment with the largest **number** of pairs with
    ``IoU >= t`` is used (ties between such assignments broken by the total IoU of those pairs;
    the tie-break never changes the counts). ``AP_t = TP / (TP + FP + FN)``.
    AJI is Kumar et al.'s (2017): every ground-truth object takes the prediction with the
    largest **IoU** (ties: the lowest prediction id), predictions never taken add their area
    to ``U``.

Counts are pooled over a data set by :func:`summarize` (sum of TP, FP, FN, C, U over images,
then the ratios), as in the paper. ``meanAP`` is the arithmetic mean of the per-threshold AP
(:func:`mean_ap`). Empty cases: an image (or data set) without ground truth and without
predictions has nothing to get wrong and scores AP = AJI = 1.0; when the data set holds other
images it simply adds nothing to the pooled sums. Any other ratio with a zero denominator
(for example precision without predictions while ground truth exists) is 0.0.

Thresholds compare with ``>=`` (the authors' and StarDist's choice; the paper's text says
"larger than"). Nothing in this module imports TensorFlow.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from layernet.instances import LabelStackError, stack_from_label_image, validate_stack

logger = logging.getLogger(__name__)

__all__ = [
    "MetricsError",
    "DEFAULT_THRESHOLDS",
    "MATCHINGS",
    "ImageScores",
    "Overlaps",
    "overlaps",
    "score_image",
    "summarize",
    "per_image_table",
    "evaluate_stacks",
    "mean_ap",
]

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
MATCHINGS = ("reference", "hungarian")

# Up to this many (gt, pred) cells the intersection table is counted densely with bincount
# (then made sparse); beyond it the codes are counted with np.unique.
_DENSE_TABLE_LIMIT = 1 << 20


class MetricsError(ValueError):
    """Raised for invalid inputs to the metrics (shapes, matching name, thresholds)."""


def _fraction(numerator: float, denominator: float, perfect: bool) -> float:
    """``numerator / denominator``; with a zero denominator 1.0 if nothing was to be found."""
    if denominator > 0:
        return float(numerator) / float(denominator)
    return 1.0 if perfect else 0.0


def _threshold_key(threshold: float) -> str:
    return f"{threshold:g}"


def mean_ap(values: Sequence[float]) -> float:
    """Return meanAP, the arithmetic mean of AP values over thresholds (paper Table 1).

    Parameters
    ----------
    values : sequence of float
        AP at each threshold, e.g. ``(AP@0.5, AP@0.6, AP@0.7, AP@0.8, AP@0.9)``.

    Returns
    -------
    float
        Their mean.
    """
    values = [float(v) for v in values]
    if not values:
        raise MetricsError("mean_ap needs at least one AP value")
    return float(np.mean(values))


# --------------------------------------------------------------------------------------------
# Sparse overlaps
# --------------------------------------------------------------------------------------------


def _as_stack(array: np.ndarray, name: str) -> np.ndarray:
    """Return ``array`` as a 3-D integer stack (a 2-D label image becomes one slice)."""
    array = np.asarray(array)
    try:
        if array.ndim == 2:
            return stack_from_label_image(array, dtype=np.int64)
    except LabelStackError as error:
        raise MetricsError(f"{name}: {error}") from None
    if array.ndim != 3:
        raise MetricsError(
            f"{name}: expected a label stack (L, H, W) or a label image (H, W), got shape "
            f"{array.shape}"
        )
    if array.dtype == np.bool_:
        return array.astype(np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise MetricsError(f"{name}: a label stack must have an integer dtype, got {array.dtype}")
    if array.size and array.min() < 0:
        raise MetricsError(f"{name}: label ids must be >= 0, found {int(array.min())}")
    return array


def _compact(stack: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check a stack and renumber its ids to ``1..n``.

    Returns the compact stack (int64), the original ids and the object areas. Raises
    :class:`MetricsError` if an id appears in more than one slice.
    """
    max_id = int(stack.max()) if stack.size else 0
    if max_id == 0:
        return np.zeros(stack.shape, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    if max_id > 4 * stack.size + (1 << 20):  # huge ids: sort instead of a lookup table
        try:
            validate_stack(stack, name=name)
        except LabelStackError as error:
            raise MetricsError(str(error)) from None
        ids, inverse, counts = np.unique(stack.reshape(-1), return_inverse=True,
                                         return_counts=True)
        compact = inverse.reshape(stack.shape).astype(np.int64) + (0 if ids[0] == 0 else 1)
        if ids[0] == 0:
            ids, counts = ids[1:], counts[1:]
        return compact, ids.astype(np.int64), counts.astype(np.int64)
    counts = np.zeros(max_id + 1, dtype=np.int64)
    slices_holding = np.zeros(max_id + 1, dtype=np.int64)
    for layer in stack:
        layer_counts = np.bincount(layer.reshape(-1), minlength=max_id + 1)
        counts += layer_counts
        slices_holding += layer_counts > 0
    slices_holding[0] = 0
    if slices_holding.max() > 1:
        label = int(np.argmax(slices_holding > 1))
        raise MetricsError(
            f"{name}: object id {label} appears in {int(slices_holding[label])} slices; every id "
            "must live in exactly one slice"
        )
    ids = np.flatnonzero(counts[1:]) + 1
    lut = np.zeros(max_id + 1, dtype=np.int64)
    lut[ids] = np.arange(1, ids.size + 1)
    return np.take(lut, stack), ids.astype(np.int64), counts[ids]


@dataclass(frozen=True)
class Overlaps:
    """Sparse intersections between the objects of a ground-truth and a predicted stack.

    Attributes
    ----------
    gt_ids, pred_ids : numpy.ndarray
        Original object ids; object ``i`` below is ``gt_ids[i]`` / ``pred_ids[i]``.
    gt_areas, pred_areas : numpy.ndarray
        Pixel counts of the objects.
    gt_index, pred_index : numpy.ndarray
        For each intersecting pair, the 0-based object indices (sorted by gt, then pred).
    intersection : numpy.ndarray
        Pixel count of each pair's intersection (> 0).
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    gt_areas: np.ndarray
    pred_areas: np.ndarray
    gt_index: np.ndarray
    pred_index: np.ndarray
    intersection: np.ndarray

    @property
    def iou(self) -> np.ndarray:
        """IoU of each intersecting pair."""
        union = self.gt_areas[self.gt_index] + self.pred_areas[self.pred_index] - self.intersection
        return self.intersection / union


def overlaps(gt: np.ndarray, pred: np.ndarray) -> Overlaps:
    """Compute the sparse intersection table of two label stacks.

    Parameters
    ----------
    gt : numpy.ndarray
        Ground-truth label stack ``(L, H, W)`` or label image ``(H, W)``.
    pred : numpy.ndarray
        Predicted label stack ``(L', H, W)`` or label image ``(H, W)``.

    Returns
    -------
    Overlaps
        Areas of all objects and the intersection of every pair that shares a pixel.
    """
    gt = _as_stack(gt, "ground truth")
    pred = _as_stack(pred, "prediction")
    if gt.shape[1:] != pred.shape[1:]:
        raise MetricsError(
            f"ground truth has image size {gt.shape[1:]} but prediction has {pred.shape[1:]}"
        )
    gt_compact, gt_ids, gt_areas = _compact(gt, "ground truth")
    pred_compact, pred_ids, pred_areas = _compact(pred, "prediction")
    n_pred = pred_ids.size
    codes = []
    if gt_ids.size and n_pred:
        pred_flat = [layer.reshape(-1) for layer in pred_compact if layer.any()]
        for gt_layer in gt_compact:
            gt_flat = gt_layer.reshape(-1)
            where = np.flatnonzero(gt_flat)
            if where.size == 0:
                continue
            gt_values = gt_flat[where]
            for pred_layer in pred_flat:
                pred_values = pred_layer[where]
                both = pred_values > 0
                if both.any():
                    codes.append(gt_values[both] * (n_pred + 1) + pred_values[both])
    if codes:
        all_codes = np.concatenate(codes)
        cells = (gt_ids.size + 1) * (n_pred + 1)
        if cells <= _DENSE_TABLE_LIMIT:
            table = np.bincount(all_codes, minlength=cells)
            pair_codes = np.flatnonzero(table)
            counts = table[pair_codes]
        else:
            pair_codes, counts = np.unique(all_codes, return_counts=True)
        gt_index = pair_codes // (n_pred + 1) - 1
        pred_index = pair_codes % (n_pred + 1) - 1
    else:
        gt_index = pred_index = counts = np.zeros(0, dtype=np.int64)
    return Overlaps(gt_ids, pred_ids, gt_areas, pred_areas, gt_index.astype(np.int64),
                    pred_index.astype(np.int64), counts.astype(np.int64))


# --------------------------------------------------------------------------------------------
# Matchings
# --------------------------------------------------------------------------------------------


def _best_per_gt(gt_index: np.ndarray, pred_index: np.ndarray, score: np.ndarray,
                 prefer_high_pred: bool) -> np.ndarray:
    """Positions (into the pair arrays) of each gt's best pair by ``score``.

    Ties go to the highest pred index when ``prefer_high_pred`` else to the lowest.
    """
    if gt_index.size == 0:
        return np.zeros(0, dtype=np.int64)
    tie = pred_index if prefer_high_pred else -pred_index
    order = np.lexsort((tie, score, gt_index))
    sorted_gt = gt_index[order]
    last = np.r_[sorted_gt[1:] != sorted_gt[:-1], True]
    return order[last]


def _aji_counts(ov: Overlaps, chosen: np.ndarray) -> tuple[int, int]:
    """AJI numerator and denominator for a choice of one pair per matched gt."""
    matched_pred = ov.pred_index[chosen]
    inter = ov.intersection[chosen]
    intersection_sum = int(inter.sum())
    union = int(ov.gt_areas.sum()) + int(ov.pred_areas[matched_pred].sum()) - intersection_sum
    used = np.zeros(ov.pred_ids.size, dtype=bool)
    used[matched_pred] = True
    union += int(ov.pred_areas[~used].sum())
    return intersection_sum, union


def _max_valid_matching(gt_index: np.ndarray, pred_index: np.ndarray, iou: np.ndarray,
                        threshold: float) -> int:
    """Size of the one-to-one assignment with the most pairs of ``IoU >= threshold``.

    Among assignments with that many pairs the one with the largest total IoU of those pairs
    is taken (only the count is returned; the tie-break cannot change it).
    """
    valid = iou >= threshold
    if not valid.any():
        return 0
    g, p, scores = gt_index[valid], pred_index[valid], iou[valid]
    rows, g_local = np.unique(g, return_inverse=True)
    cols, p_local = np.unique(p, return_inverse=True)
    if np.bincount(g_local).max() == 1 and np.bincount(p_local).max() == 1:
        return int(valid.sum())  # every candidate pair is isolated: all of them match
    size = min(rows.size, cols.size)
    # gain(pair) = 1 + IoU/(2*size): any assignment with one more valid pair gains >= 1, while
    # IoU terms of a whole assignment sum to < 1/2 -> the count is maximised exactly.
    cost = np.zeros((rows.size, cols.size), dtype=np.float64)
    cost[g_local, p_local] = -(1.0 + scores / (2.0 * size))
    row_ind, col_ind = linear_sum_assignment(cost)
    return int(np.count_nonzero(cost[row_ind, col_ind] < 0))


# --------------------------------------------------------------------------------------------
# Per image
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageScores:
    """Counts of one image, ready to be pooled.

    Attributes
    ----------
    name : str
        Image name.
    matching : str
        ``"reference"`` or ``"hungarian"``.
    thresholds : tuple of float
        IoU thresholds.
    n_gt, n_pred : int
        Number of ground-truth and predicted objects.
    tp, fp, fn : tuple of int
        Per threshold (see the module docstring for the reference matching's convention).
    aji_c, aji_u : int
        AJI intersection and union sums.
    """

    name: str
    matching: str
    thresholds: tuple[float, ...]
    n_gt: int
    n_pred: int
    tp: tuple[int, ...]
    fp: tuple[int, ...]
    fn: tuple[int, ...]
    aji_c: int
    aji_u: int

    @property
    def ap(self) -> tuple[float, ...]:
        """AP at each threshold, ``TP / (TP + FP + FN)`` (1.0 when there is nothing at all)."""
        return tuple(
            _fraction(tp, tp + fp + fn, perfect=(tp + fp + fn == 0))
            for tp, fp, fn in zip(self.tp, self.fp, self.fn)
        )

    @property
    def mean_ap(self) -> float:
        """Mean of :attr:`ap` over the thresholds."""
        return mean_ap(self.ap)

    @property
    def aji(self) -> float:
        """Aggregated Jaccard index of this image (1.0 when both sides are empty)."""
        return _fraction(self.aji_c, self.aji_u, perfect=(self.aji_u == 0))


def _check_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(t) for t in thresholds)
    if not values:
        raise MetricsError("thresholds: need at least one IoU threshold")
    for t in values:
        if not 0.0 < t <= 1.0:
            raise MetricsError(f"thresholds: IoU thresholds must be in (0, 1], got {t}")
    return values


def score_image(
    gt: np.ndarray,
    pred: np.ndarray,
    matching: str = "reference",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    name: str = "",
) -> ImageScores:
    """Match the objects of one image and count TP, FP, FN and the AJI sums.

    Parameters
    ----------
    gt : numpy.ndarray
        Ground-truth label stack ``(L, H, W)`` (or label image ``(H, W)``).
    pred : numpy.ndarray
        Predicted label stack ``(L', H, W)`` (or label image ``(H, W)``).
    matching : {"reference", "hungarian"}, optional
        Matching rule, see the module docstring.
    thresholds : sequence of float, optional
        IoU thresholds ``t`` (a pair matches when ``IoU >= t``).
    name : str, optional
        Image name, kept in the result.

    Returns
    -------
    ImageScores
        Counts of this image.
    """
    if matching not in MATCHINGS:
        raise MetricsError(f"matching must be one of {MATCHINGS}, got {matching!r}")
    thresholds = _check_thresholds(thresholds)
    ov = overlaps(gt, pred)
    n_gt, n_pred = int(ov.gt_ids.size), int(ov.pred_ids.size)
    iou = ov.iou
    tps, fps, fns = [], [], []
    if matching == "reference":
        chosen = _best_per_gt(ov.gt_index, ov.pred_index, ov.intersection, prefer_high_pred=True)
        chosen_iou = iou[chosen]
        chosen_pred = ov.pred_index[chosen]
        for t in thresholds:
            hits = chosen_iou >= t
            tp = int(hits.sum())
            matched_pred = int(np.unique(chosen_pred[hits]).size)
            tps.append(tp)
            fps.append(n_pred - matched_pred)
            fns.append(n_gt - tp)
    else:
        for t in thresholds:
            tp = _max_valid_matching(ov.gt_index, ov.pred_index, iou, t)
            tps.append(tp)
            fps.append(n_pred - tp)
            fns.append(n_gt - tp)
        chosen = _best_per_gt(ov.gt_index, ov.pred_index, iou, prefer_high_pred=False)
    aji_c, aji_u = _aji_counts(ov, chosen)
    return ImageScores(name=name, matching=matching, thresholds=thresholds, n_gt=n_gt,
                       n_pred=n_pred, tp=tuple(tps), fp=tuple(fps), fn=tuple(fns),
                       aji_c=aji_c, aji_u=aji_u)


# --------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------


def _rates(tp: int, fp: int, fn: int) -> dict[str, float]:
    perfect = tp + fp + fn == 0
    return {
        "AP": _fraction(tp, tp + fp + fn, perfect),
        "F1": _fraction(2 * tp, 2 * tp + fp + fn, perfect),
        "precision": _fraction(tp, tp + fp, perfect),
        "recall": _fraction(tp, tp + fn, perfect),
    }


def summarize(scores: Sequence[ImageScores]) -> dict[str, Any]:
    """Pool per-image counts over a data set and compute the metrics.

    Parameters
    ----------
    scores : sequence of ImageScores
        Results of :func:`score_image`, all with the same matching and thresholds.

    Returns
    -------
    dict
        ``"matching"``, ``"thresholds"``, ``"n_images"``, ``"n_gt"``, ``"n_pred"``; for every
        threshold ``t`` (formatted with ``{t:g}``, e.g. ``"AP@0.5"``): ``"AP@t"``, ``"F1@t"``
        (``2TP/(2TP+FP+FN)``), ``"precision@t"``, ``"recall@t"``, ``"TP@t"``, ``"FP@t"``,
        ``"FN@t"``; ``"meanAP"`` (mean of the AP values); ``"AJI"`` (pooled ``C / U``) with
        ``"AJI_C"`` and ``"AJI_U"``.
    """
    scores = list(scores)
    if not scores:
        raise MetricsError("summarize: no image scores given")
    first = scores[0]
    for item in scores[1:]:
        if item.matching != first.matching or item.thresholds != first.thresholds:
            raise MetricsError(
                f"summarize: image {item.name!r} was scored with matching={item.matching!r}, "
                f"thresholds={item.thresholds}, but image {first.name!r} with "
                f"matching={first.matching!r}, thresholds={first.thresholds}"
            )
    summary: dict[str, Any] = {
        "matching": first.matching,
        "thresholds": list(first.thresholds),
        "n_images": len(scores),
        "n_gt": int(sum(s.n_gt for s in scores)),
        "n_pred": int(sum(s.n_pred for s in scores)),
    }
    aps = []
    for index, t in enumerate(first.thresholds):
        key = _threshold_key(t)
        tp = int(sum(s.tp[index] for s in scores))
        fp = int(sum(s.fp[index] for s in scores))
        fn = int(sum(s.fn[index] for s in scores))
        rates = _rates(tp, fp, fn)
        aps.append(rates["AP"])
        for metric, value in rates.items():
            summary[f"{metric}@{key}"] = value
        summary[f"TP@{key}"], summary[f"FP@{key}"], summary[f"FN@{key}"] = tp, fp, fn
    summary["meanAP"] = mean_ap(aps)
    aji_c = int(sum(s.aji_c for s in scores))
    aji_u = int(sum(s.aji_u for s in scores))
    summary["AJI"] = _fraction(aji_c, aji_u, perfect=(aji_u == 0))
    summary["AJI_C"], summary["AJI_U"] = aji_c, aji_u
    return summary


def per_image_table(scores: Sequence[ImageScores]) -> list[dict[str, Any]]:
    """One row per image (for a CSV): name, counts, AP and F1 per threshold, meanAP, AJI.

    Parameters
    ----------
    scores : sequence of ImageScores
        Results of :func:`score_image`.

    Returns
    -------
    list of dict
        Rows with keys ``name, n_gt, n_pred, AP@t..., meanAP, AJI, F1@t..., TP@t..., FP@t...,
        FN@t...``.
    """
    rows = []
    for item in scores:
        row: dict[str, Any] = {"name": item.name, "n_gt": item.n_gt, "n_pred": item.n_pred}
        for t, ap in zip(item.thresholds, item.ap):
            row[f"AP@{_threshold_key(t)}"] = ap
        row["meanAP"] = item.mean_ap
        row["AJI"] = item.aji
        for index, t in enumerate(item.thresholds):
            key = _threshold_key(t)
            row[f"F1@{key}"] = _rates(item.tp[index], item.fp[index], item.fn[index])["F1"]
            row[f"TP@{key}"] = item.tp[index]
            row[f"FP@{key}"] = item.fp[index]
            row[f"FN@{key}"] = item.fn[index]
        rows.append(row)
    return rows


def evaluate_stacks(
    gts: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    matching: str = "reference",
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Score a whole data set: :func:`score_image` per image, then :func:`summarize`.

    Parameters
    ----------
    gts : sequence of numpy.ndarray
        Ground-truth label stacks (or label images), one per image.
    preds : sequence of numpy.ndarray
        Predicted label stacks (or label images), in the same order.
    matching : {"reference", "hungarian"}, optional
        Matching rule.
    thresholds : sequence of float, optional
        IoU thresholds.
    names : sequence of str, optional
        Image names (default ``"0", "1", ...``).

    Returns
    -------
    dict
        The pooled summary of :func:`summarize` plus ``"per_image"``, the rows of
        :func:`per_image_table`.
    """
    gts, preds = list(gts), list(preds)
    if len(gts) != len(preds):
        raise MetricsError(f"got {len(gts)} ground-truth stacks but {len(preds)} predictions")
    if not gts:
        raise MetricsError("evaluate_stacks: no images given")
    if names is None:
        names = [str(index) for index in range(len(gts))]
    elif len(names) != len(gts):
        raise MetricsError(f"got {len(names)} names for {len(gts)} images")
    scores = []
    for gt, pred, name in zip(gts, preds, names):
        try:
            scores.append(score_image(gt, pred, matching, thresholds, name=str(name)))
        except MetricsError as error:
            raise MetricsError(f"image {name!r}: {error}") from None
    summary = summarize(scores)
    summary["per_image"] = per_image_table(scores)
    logger.info("evaluated %d images (%s): meanAP %.4f, AJI %.4f", len(scores), matching,
                summary["meanAP"], summary["AJI"])
    return summary
