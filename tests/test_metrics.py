"""Tests of layernet.metrics: hand-computed cases, a brute-force reference, Table 1, StarDist."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from layernet.instances import masks_from_stack, stack_from_masks
from layernet.metrics import (
    DEFAULT_THRESHOLDS,
    MetricsError,
    evaluate_stacks,
    mean_ap,
    overlaps,
    per_image_table,
    score_image,
    summarize,
)
from tests.test_instances import _box as _rect


# --------------------------------------------------------------------------------------------
# Brute force: dense masks, loops, exhaustive search over matchings
# --------------------------------------------------------------------------------------------


def _brute_force(gt, pred, matching, thresholds):
    gt_masks, _ = masks_from_stack(gt)
    pred_masks, _ = masks_from_stack(pred)
    n_gt, n_pred = len(gt_masks), len(pred_masks)
    inter = [[int(np.logical_and(g, p).sum()) for p in pred_masks] for g in gt_masks]
    union = [[int(np.logical_or(g, p).sum()) for p in pred_masks] for g in gt_masks]
    iou = [[inter[i][j] / union[i][j] for j in range(n_pred)] for i in range(n_gt)]
    tps, fps, fns = [], [], []
    if matching == "reference":
        choice = []
        for i in range(n_gt):
            best = None
            for j in range(n_pred):  # later prediction wins ties: >=
                if inter[i][j] > 0 and (best is None or inter[i][j] >= inter[i][best]):
                    best = j
            choice.append(best)
        for t in thresholds:
            hits = [i for i in range(n_gt) if choice[i] is not None and iou[i][choice[i]] >= t]
            matched = {choice[i] for i in hits}
            tps.append(len(hits))
            fps.append(n_pred - len(matched))
            fns.append(n_gt - len(hits))
    else:
        for t in thresholds:
            best_count = 0
            for k in range(min(n_gt, n_pred), 0, -1):
                found = any(
                    all(iou[i][j] >= t for i, j in zip(gts, preds))
                    for gts in itertools.combinations(range(n_gt), k)
                    for preds in itertools.permutations(range(n_pred), k)
                )
                if found:
                    best_count = k
                    break
            tps.append(best_count)
            fps.append(n_pred - best_count)
            fns.append(n_gt - best_count)
        choice = []
        for i in range(n_gt):
            best = None
            for j in range(n_pred):  # Kumar: first maximum wins ties: >
                if inter[i][j] > 0 and (best is None or iou[i][j] > iou[i][best]):
                    best = j
            choice.append(best)
    c_sum = u_sum = 0
    for i in range(n_gt):
        j = choice[i]
        if j is None:
            u_sum += int(gt_masks[i].sum())
        else:
            c_sum += inter[i][j]
            u_sum += union[i][j]
    for j in range(n_pred):
        if j not in choice:
            u_sum += int(pred_masks[j].sum())
    return tps, fps, fns, c_sum, u_sum


def _random_shape(rng, shape):
    height, width = shape
    mask = np.zeros(shape, dtype=bool)
    r0, c0 = rng.integers(0, height - 2), rng.integers(0, width - 2)
    if rng.random() < 0.5:
        mask[r0:r0 + rng.integers(2, 9), c0:c0 + rng.integers(2, 9)] = True
    else:
        rr, cc = np.mgrid[:height, :width]
        mask[(rr - r0) ** 2 + (cc - c0) ** 2 <= rng.integers(2, 16)] = True
    return mask


def _random_pair(rng, shape=(18, 18), max_objects=5):
    gt_masks = [_random_shape(rng, shape) for _ in range(rng.integers(0, max_objects + 1))]
    pred_masks = []
    for mask in gt_masks:
        action = rng.random()
        if action < 0.15:
            continue
        if action < 0.45:
            mask = np.roll(mask, (rng.integers(-2, 3), rng.integers(-2, 3)), axis=(0, 1))
        elif action < 0.6:
            mask = ndimage.binary_dilation(mask)
        elif action < 0.7:
            mask = ndimage.binary_erosion(mask)
        pred_masks.append(mask)
    if len(gt_masks) >= 2 and rng.random() < 0.4:  # a merged prediction
        pred_masks.append(gt_masks[0] | gt_masks[1])
    for _ in range(rng.integers(0, 3)):
        pred_masks.append(_random_shape(rng, shape))
    rng.shuffle(pred_masks)
    pred_masks = pred_masks[:max_objects + 1]
    gt = stack_from_masks(gt_masks, shape=shape)
    pred = stack_from_masks(pred_masks, shape=shape)
    # arbitrary, non-consecutive ids (order preserved) to exercise the renumbering
    gt = np.where(gt > 0, gt * 7 + 3, 0)
    pred = np.where(pred > 0, pred * 5 + 100, 0)
    return gt, pred


# --------------------------------------------------------------------------------------------
# Hand-computed cases
# --------------------------------------------------------------------------------------------


def test_max_intersection_candidate_differs_from_iou_best():
    shape = (24, 24)
    g = _rect(shape, (5, 15), (5, 15))            # 100 px
    big = _rect(shape, (0, 20), (0, 20))          # 400 px, contains g: I=100, IoU=0.25
    part = _rect(shape, (5, 13), (5, 15))         # 80 px inside g: I=80, IoU=0.8
    gt = stack_from_masks([g])
    pred = stack_from_masks([big, part])
    assert pred.shape[0] == 2
    ref = score_image(gt, pred, "reference")
    assert ref.tp == (0,) * 5 and ref.fp == (2,) * 5 and ref.fn == (1,) * 5
    assert ref.ap == (0.0,) * 5
    assert (ref.aji_c, ref.aji_u) == (100, 400 + 80)
    hun = score_image(gt, pred, "hungarian")
    assert hun.tp == (1, 1, 1, 1, 0) and hun.fp == (1, 1, 1, 1, 2)
    assert hun.ap == pytest.approx((0.5, 0.5, 0.5, 0.5, 0.0))
    assert (hun.aji_c, hun.aji_u) == (80, 100 + 400)
    assert hun.aji == pytest.approx(0.16)


def test_one_prediction_counted_for_two_overlapping_gts_in_reference():
    shape = (12, 14)
    g1 = _rect(shape, (0, 10), (0, 10))
    g2 = _rect(shape, (0, 10), (2, 12))
    p = _rect(shape, (0, 10), (1, 11))            # I = 90, U = 110 with both: IoU 0.818
    gt = stack_from_masks([g1, g2])
    pred = stack_from_masks([p])
    assert gt.shape[0] == 2
    ref = score_image(gt, pred, "reference")
    assert ref.tp == (2, 2, 2, 2, 0)
    assert ref.fp == (0, 0, 0, 0, 1) and ref.fn == (0, 0, 0, 0, 2)
    assert ref.ap == (1.0, 1.0, 1.0, 1.0, 0.0)    # AP = 2 / (2 + 1 - 1)
    assert (ref.aji_c, ref.aji_u) == (180, 220)
    hun = score_image(gt, pred, "hungarian")
    assert hun.tp == (1, 1, 1, 1, 0) and hun.fn == (1, 1, 1, 1, 2)
    assert hun.ap == (0.5, 0.5, 0.5, 0.5, 0.0)
    assert (hun.aji_c, hun.aji_u) == (180, 220)


def test_count_maximising_assignment_keeps_a_match_that_max_total_iou_drops():
    shape = (10, 10)
    g1 = _rect(shape, (0, 10), (0, 10))           # 100 px
    g2 = _rect(shape, (3, 9), (0, 10))            # 60 px inside g1
    p1 = g1.copy()
    p2 = _rect(shape, (0, 6), (0, 10))            # 60 px inside g1
    gt, pred = stack_from_masks([g1, g2]), stack_from_masks([p1, p2])
    ov = overlaps(gt, pred)
    iou = np.zeros((2, 2))
    iou[ov.gt_index, ov.pred_index] = ov.iou
    np.testing.assert_allclose(iou, [[1.0, 0.6], [0.6, 1 / 3]])
    # maximising the total IoU pairs g1-p1 and g2-p2 (1.333 > 1.2): only one pair >= 0.5
    rows, cols = linear_sum_assignment(-iou)
    assert np.count_nonzero(iou[rows, cols] >= 0.5) == 1
    hun = score_image(gt, pred, "hungarian", thresholds=(0.5, 0.6, 0.7))
    assert hun.tp == (2, 2, 1) and hun.fp == (0, 0, 1) and hun.fn == (0, 0, 1)
    ref = score_image(gt, pred, "reference", thresholds=(0.5, 0.6, 0.7))
    # both gts take p1 (largest intersection): TP 2, one distinct prediction -> FP 1
    assert ref.tp == (2, 2, 1) and ref.fp == (1, 1, 1) and ref.fn == (0, 0, 1)
    assert ref.ap == pytest.approx((2 / 3, 2 / 3, 1 / 3))


def test_intersection_tie_goes_to_later_prediction():
    shape = (4, 10)
    g = _rect(shape, (0, 2), (0, 10))              # 20 px
    p_left = _rect(shape, (0, 2), (0, 5))          # I = 10, IoU 0.5
    p_wide = _rect(shape, (0, 4), (5, 10))         # I = 10, IoU 10/30
    gt = stack_from_masks([g])
    first_left = score_image(gt, stack_from_masks([p_left, p_wide]), "reference", (0.5,))
    first_wide = score_image(gt, stack_from_masks([p_wide, p_left]), "reference", (0.5,))
    assert first_left.tp == (0,) and first_wide.tp == (1,)


def test_empty_prediction_and_empty_ground_truth():
    shape = (8, 8)
    objects = stack_from_masks([_rect(shape, (0, 4), (0, 4)), _rect(shape, (5, 8), (5, 8))])
    empty = np.zeros((1,) + shape, dtype=np.int32)
    for matching in ("reference", "hungarian"):
        no_pred = score_image(objects, empty, matching)
        assert no_pred.tp == (0,) * 5 and no_pred.fn == (2,) * 5 and no_pred.fp == (0,) * 5
        assert no_pred.ap == (0.0,) * 5 and no_pred.aji == 0.0 and no_pred.aji_u == 25
        no_gt = score_image(empty, objects, matching)
        assert no_gt.fp == (2,) * 5 and no_gt.ap == (0.0,) * 5 and no_gt.aji_u == 25
        nothing = score_image(empty, np.zeros((3,) + shape, np.int32), matching)
        assert nothing.ap == (1.0,) * 5 and nothing.aji == 1.0 and nothing.mean_ap == 1.0
        perfect = score_image(objects, objects, matching)
        # the empty image adds nothing to the pooled sums
        pooled = summarize([perfect, nothing])
        assert pooled["meanAP"] == 1.0 and pooled["AJI"] == 1.0
        pooled = summarize([no_pred, nothing])
        assert pooled["AP@0.5"] == 0.0 and pooled["precision@0.5"] == 0.0
        assert pooled["recall@0.5"] == 0.0
        assert summarize([nothing])["meanAP"] == 1.0


def test_summary_pools_counts_not_per_image_means():
    shape = (10, 10)
    a = _rect(shape, (0, 4), (0, 4))
    b = _rect(shape, (6, 10), (6, 10))
    c = _rect(shape, (0, 4), (6, 10))
    img1 = score_image(stack_from_masks([a]), stack_from_masks([a]), name="one")  # AP 1
    img2 = score_image(stack_from_masks([a, b, c]), stack_from_masks([b]), name="two")  # 1/3
    summary = summarize([img1, img2])
    assert summary["AP@0.5"] == pytest.approx(2 / 4)
    assert summary["F1@0.5"] == pytest.approx(4 / 6)
    assert summary["precision@0.5"] == 1.0 and summary["recall@0.5"] == pytest.approx(0.5)
    assert summary["TP@0.5"] == 2 and summary["FN@0.5"] == 2 and summary["FP@0.5"] == 0
    assert summary["AJI"] == pytest.approx(32 / 64)
    assert summary["n_gt"] == 4 and summary["n_pred"] == 2 and summary["n_images"] == 2
    assert summary["meanAP"] == pytest.approx(0.5)
    rows = per_image_table([img1, img2])
    assert [r["name"] for r in rows] == ["one", "two"]
    assert rows[1]["AP@0.9"] == pytest.approx(1 / 3) and rows[0]["AJI"] == 1.0


def test_evaluate_stacks_accepts_label_images_and_names():
    rng = np.random.default_rng(3)
    pairs = [_random_pair(rng) for _ in range(4)]
    result = evaluate_stacks([g for g, _ in pairs], [p for _, p in pairs], "hungarian",
                             names=["a", "b", "c", "d"])
    scores = [score_image(g, p, "hungarian", name=n) for (g, p), n in zip(pairs, "abcd")]
    expected = summarize(scores)
    for key, value in expected.items():
        assert result[key] == value
    assert [row["name"] for row in result["per_image"]] == list("abcd")
    label_image = np.zeros((6, 6), np.int32)
    label_image[:3, :3] = 4
    out = evaluate_stacks([label_image], [label_image[None]])
    assert out["meanAP"] == 1.0 and out["AJI"] == 1.0


# --------------------------------------------------------------------------------------------
# Against the brute-force implementation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("matching", ["reference", "hungarian"])
def test_matches_brute_force_on_random_stacks(matching):
    rng = np.random.default_rng(11 if matching == "reference" else 12)
    thresholds = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)
    overlapping_cases = 0
    for _ in range(150):
        gt, pred = _random_pair(rng)
        overlapping_cases += gt.shape[0] > 1 and pred.shape[0] > 1
        got = score_image(gt, pred, matching, thresholds)
        tps, fps, fns, c_sum, u_sum = _brute_force(gt, pred, matching, thresholds)
        assert (list(got.tp), list(got.fp), list(got.fn)) == (tps, fps, fns)
        assert (got.aji_c, got.aji_u) == (c_sum, u_sum)
    assert overlapping_cases > 30


def test_hungarian_larger_random_cases_against_exhaustive_count():
    """Bigger crowded cases where a gt has several candidates >= t (overlapping predictions)."""
    rng = np.random.default_rng(5)
    for _ in range(20):
        gt, pred = _random_pair(rng, shape=(14, 14), max_objects=6)
        got = score_image(gt, pred, "hungarian", (0.3, 0.4, 0.5))
        assert list(got.tp) == _brute_force(gt, pred, "hungarian", (0.3, 0.4, 0.5))[0]


def test_huge_ids_and_sparse_code_counting_give_same_scores(monkeypatch):
    import layernet.metrics as metrics_module

    rng = np.random.default_rng(17)
    for _ in range(10):
        gt, pred = _random_pair(rng)
        expected = score_image(gt, pred, "reference")
        huge_gt = np.where(gt > 0, gt.astype(np.int64) + 2**40, 0)
        assert score_image(huge_gt, pred, "reference") == expected
        with monkeypatch.context() as patch:
            patch.setattr(metrics_module, "_DENSE_TABLE_LIMIT", 0)
            assert score_image(gt, pred, "reference") == expected


# --------------------------------------------------------------------------------------------
# Table 1 arithmetic
# --------------------------------------------------------------------------------------------

TABLE1_ROWS = {
    "BBBC UNet-2": ((.5455, .4645, .4497, .4212, .2355), .4233),
    "BBBC UNet-3": ((.8863, .8197, .7412, .5795, .2717), .6597),
    "BBBC StarDist": ((.3098, .1410, .0372, .0011, .000), .0978),
    "BBBC MRCNN": ((.8953, .8629, .8111, .5305, .0382), .6276),
    "BBBC Ours": ((.9357, .9188, .8648, .7606, .2904), .7541),
    "OCC UNet-2": ((.1548, .1303, .1129, .1055, .1048), .1217),
    "OCC UNet-3": ((.7010, .6071, .5097, .3767, .1950), .4779),
    "OCC StarDist": ((.6556, .5566, .4346, .2970, .1547), .4197),
    "OCC MRCNN": ((.9277, .9181, .8870, .8117, .5564), .8202),
    "OCC Ours": ((.9230, .8768, .8007, .6788, .4349), .7429),
    "CCDB UNet-2": ((.3698, .3360, .3049, .2763, .2228), .3020),
    "CCDB UNet-3": ((.7307, .6774, .6210, .5153, .2838), .5656),
    "CCDB StarDist": ((.7428, .6532, .4958, .2685, .0326), .4386),
    "CCDB MRCNN": ((.6248, .5691, .4888, .3476, .0763), .4213),  # printed "4888", "3476"
    "CCDB Ours": ((.7968, .7467, .6767, .4889, .2230), .5864),
}


@pytest.mark.parametrize("row", sorted(TABLE1_ROWS))
def test_table1_meanap_is_mean_of_five_ap(row):
    values, printed = TABLE1_ROWS[row]
    assert abs(mean_ap(values) - printed) <= 1e-4


def test_summary_meanap_is_mean_of_its_ap():
    rng = np.random.default_rng(9)
    pairs = [_random_pair(rng) for _ in range(6)]
    summary = evaluate_stacks([g for g, _ in pairs], [p for _, p in pairs], "reference")
    aps = [summary[f"AP@{t:g}"] for t in DEFAULT_THRESHOLDS]
    assert summary["meanAP"] == pytest.approx(sum(aps) / 5)
    assert 0.0 < summary["meanAP"] < 1.0


# --------------------------------------------------------------------------------------------
# StarDist on non-overlapping label images
# --------------------------------------------------------------------------------------------


def _random_label_image(rng, shape=(40, 40), count=8):
    image = np.zeros(shape, dtype=np.int32)
    for label in range(1, count + 1):
        image[_random_shape(rng, shape) & (image == 0)] = label
    return image


def test_agrees_with_stardist_matching_dataset():
    matching_module = pytest.importorskip("stardist.matching")
    rng = np.random.default_rng(21)
    gts, preds = [], []
    for _ in range(12):
        gt = _random_label_image(rng)
        pred = gt.copy()
        pred[np.roll(gt, (rng.integers(-2, 3), rng.integers(-2, 3)), axis=(0, 1)) == 3] = 0
        pred = np.where(pred == 5, 0, pred)
        pred = np.where((pred == 0) & (np.roll(pred, 1, axis=1) > 0), np.roll(pred, 1, axis=1),
                        pred)
        pred[_random_shape(rng, gt.shape) & (pred == 0)] = 50
        gts.append(gt)
        preds.append(pred)
    thresholds = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)
    stardist = matching_module.matching_dataset(gts, preds, thresh=thresholds, by_image=False,
                                                show_progress=False)
    ours = evaluate_stacks(gts, preds, "hungarian", thresholds)
    reference = evaluate_stacks(gts, preds, "reference", thresholds)
    for t, theirs in zip(thresholds, stardist):
        key = f"{t:g}"
        assert (ours[f"TP@{key}"], ours[f"FP@{key}"], ours[f"FN@{key}"]) == (
            theirs.tp, theirs.fp, theirs.fn)
        assert ours[f"AP@{key}"] == pytest.approx(theirs.accuracy)
        assert ours[f"F1@{key}"] == pytest.approx(theirs.f1)
        if t > 0.5:  # IoU > 0.5 pairs are unique without overlaps: both matchings agree
            assert reference[f"AP@{key}"] == pytest.approx(theirs.accuracy)
    assert 0.0 < ours["AP@0.9"] < ours["AP@0.5"] < 1.0


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    stack = np.zeros((1, 5, 5), np.int32)
    with pytest.raises(MetricsError, match="image size"):
        score_image(stack, np.zeros((1, 5, 6), np.int32))
    with pytest.raises(MetricsError, match="matching"):
        score_image(stack, stack, matching="greedy")
    with pytest.raises(MetricsError, match="thresholds"):
        score_image(stack, stack, thresholds=(0.0,))
    duplicated = np.zeros((2, 5, 5), np.int32)
    duplicated[0, 0, 0] = duplicated[1, 3, 3] = 1
    with pytest.raises(MetricsError, match="prediction"):
        score_image(stack, duplicated)
    with pytest.raises(MetricsError, match="ground truth"):
        score_image(np.zeros((5, 5), np.float32) + 0.5, stack)
    with pytest.raises(MetricsError, match=">= 0"):
        score_image(stack - 1, stack)
    with pytest.raises(MetricsError, match="slices"):
        score_image(np.where(duplicated > 0, 2**40, 0), stack)
    with pytest.raises(MetricsError, match="2 ground-truth"):
        evaluate_stacks([stack, stack], [stack])
    a = score_image(stack, stack, "reference")
    b = score_image(stack, stack, "hungarian")
    with pytest.raises(MetricsError, match="matching"):
        summarize([a, b])
