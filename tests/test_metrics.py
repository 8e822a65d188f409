"""Metrics against hand-computed cases and slow, obviously-correct implementations."""

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from patchvq.metrics import MetricError, aupro, average_precision, f1_max, image_auroc, pixel_auroc


# Slow references, written straight from the definitions.
def slow_auroc(labels, scores):
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def slow_ap(labels, scores):
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        pred = scores >= t
        recall = (pred & (labels == 1)).sum() / (labels == 1).sum()
        precision = (pred & (labels == 1)).sum() / pred.sum()
        ap += (recall - prev_recall) * precision
        prev_recall = recall
    return ap


def slow_f1(labels, scores):
    best = 0.0
    for t in set(scores):
        pred = scores >= t
        tp = (pred & (labels == 1)).sum()
        if tp:
            p, r = tp / pred.sum(), tp / (labels == 1).sum()
            best = max(best, 2 * p * r / (p + r))
    return best


def regions_8(mask):
    """Connected regions by flood fill over the 8 neighbours."""
    seen, regions = np.zeros_like(mask, dtype=bool), []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        stack, region = [start], []
        seen[start] = True
        while stack:
            y, x = stack.pop()
            region.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    q = (y + dy, x + dx)
                    if 0 <= q[0] < mask.shape[0] and 0 <= q[1] < mask.shape[1] and mask[q] and not seen[q]:
                        seen[q] = True
                        stack.append(q)
        regions.append(region)
    return regions


def slow_aupro(masks, maps, limit=0.3):
    regions = [(i, r) for i, m in enumerate(masks) for r in regions_8(m)]
    normal = np.concatenate([s[m == 0] for m, s in zip(masks, maps)])
    points = [(0.0, 0.0)]
    for t in sorted(set(np.concatenate([s.ravel() for s in maps])), reverse=True):
        fpr = (normal >= t).mean()
        pro = np.mean([np.mean([maps[i][p] >= t for p in r]) for i, r in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 >= limit:
            break
        if x1 > limit:
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


IMG_Y = np.array([0, 0, 1, 1])
IMG_S = np.array([0.1, 0.4, 0.35, 0.8])


def test_image_metrics_hand_computed():
    assert image_auroc(IMG_Y, IMG_S) == pytest.approx(0.75)
    assert average_precision(IMG_Y, IMG_S) == pytest.approx((0.5 * 1.0) + (0.5 * 2 / 3))
    # thresholds 0.8: F1 2/3; 0.4: 1/2; 0.35: P 2/3, R 1 -> 0.8; 0.1: 2/3
    assert f1_max(IMG_Y, IMG_S, return_threshold=True) == pytest.approx((0.8, 0.35))


def test_image_metrics_perfect_inverted_ties():
    y = np.array([0, 0, 0, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.9])
    assert image_auroc(y, s) == 1.0 and average_precision(y, s) == 1.0 and f1_max(y, s) == 1.0
    assert image_auroc(y, -s) == 0.0
    flat = np.full(5, 0.5)
    assert image_auroc(y, flat) == 0.5
    assert average_precision(y, flat) == pytest.approx(0.4)
    assert f1_max(y, flat) == pytest.approx(2 * 0.4 / 1.4)


@pytest.mark.parametrize("seed", range(8))
def test_image_metrics_match_slow_definitions(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 40))
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = np.round(rng.normal(size=n) + y, 1)  # rounding makes ties
    assert image_auroc(y, s) == pytest.approx(slow_auroc(y, s))
    assert average_precision(y, s) == pytest.approx(slow_ap(y, s))
    assert f1_max(y, s) == pytest.approx(slow_f1(y, s))


def test_image_metrics_accept_torch_and_column_vectors():
    assert image_auroc(torch.tensor(IMG_Y), torch.tensor(IMG_S, dtype=torch.float32)) == pytest.approx(0.75)
    assert image_auroc(IMG_Y[:, None], IMG_S[:, None]) == pytest.approx(0.75)
    assert image_auroc([False, False, True, True], list(IMG_S)) == pytest.approx(0.75)


@pytest.mark.parametrize("fn", [image_auroc, average_precision, f1_max])
def test_image_metrics_reject_bad_inputs(fn):
    with pytest.raises(MetricError, match="only one class"):
        fn([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(MetricError, match="same length"):
        fn([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(MetricError, match="0 and 1"):
        fn([0, 2], [0.1, 0.2])
    with pytest.raises(MetricError, match="NaN"):
        fn([0, 1], [0.1, np.nan])


# One region: mask [1 1 0 0], map [.9 .2 .5 .1]. Curve (0,0) (0,.5) (.5,.5) (.5,1) (1,1).
ONE_MASK = np.array([[1, 1, 0, 0]])
ONE_MAP = np.array([[0.9, 0.2, 0.5, 0.1]])

# Many regions: a diagonal line (one region only under 8-connectivity) and a vertical pair.
MANY_MASK = np.array([[1, 0, 0, 0, 1], [0, 1, 0, 0, 1], [0, 0, 1, 0, 0]])
MANY_MAP = np.array([[0.9, 0.2, 0.2, 0.95, 0.8], [0.2, 0.9, 0.2, 0.2, 0.1], [0.2, 0.2, 0.3, 0.2, 0.2]])


@pytest.mark.parametrize("mode", ["exact", "binned"])
def test_pixel_metrics_hand_computed(mode):
    # AUROC: pairs won 3 of 4.
    assert pixel_auroc(ONE_MASK, ONE_MAP, mode=mode) == pytest.approx(0.75)
    # AUPRO to 0.3: PRO stays 0.5 -> 0.5; to 0.75: (0.5*0.5 + 0.25*1) / 0.75.
    assert aupro(ONE_MASK, ONE_MAP, mode=mode) == pytest.approx(0.5)
    assert aupro(ONE_MASK, ONE_MAP, fpr_limit=0.75, mode=mode) == pytest.approx(2 / 3)
    # 5 defect pixels vs 10 normal: wins 9 + 9 + 9 + 9 + 0 = 36 of 50.
    assert pixel_auroc(MANY_MASK, MANY_MAP, mode=mode) == pytest.approx(0.72)
    # FPR jumps to 0.1 at 0.95 with PRO 0, reaches PRO 0.75 at FPR 0.1, flat to 0.3:
    # area 0.2 * 0.75 = 0.15 -> 0.5 (4-connectivity would give 0.2 * 0.875 / 0.3).
    assert aupro(MANY_MASK, MANY_MAP, mode=mode) == pytest.approx(0.5)


@pytest.mark.parametrize("mode", ["exact", "binned"])
def test_pixel_metrics_perfect_inverted_ties(mode):
    rng = np.random.default_rng(1)
    masks = (rng.random((3, 16, 16)) > 0.8).astype(np.float32)
    assert pixel_auroc(masks, masks, mode=mode) == 1.0
    assert aupro(masks, masks, mode=mode) == pytest.approx(1.0)
    assert pixel_auroc(masks, 1 - masks, mode=mode) == 0.0
    assert aupro(masks, 1 - masks, mode=mode) == 0.0
    flat = np.zeros_like(masks)
    assert pixel_auroc(masks, flat, mode=mode) == 0.5
    # the diagonal from (0, 0) to (1, 1): 0.3 * 0.3 / 2 / 0.3
    assert aupro(masks, flat, mode=mode) == pytest.approx(0.15)


@pytest.mark.parametrize("seed", range(10))
def test_pixel_metrics_match_slow_definitions(seed):
    rng = np.random.default_rng(seed)
    n, h, w = int(rng.integers(1, 4)), int(rng.integers(3, 9)), int(rng.integers(3, 9))
    masks = rng.random((n, h, w)) > rng.uniform(0.5, 0.9)
    masks[0, 0, 0], masks[0, -1, -1] = True, False
    maps = np.round(rng.normal(size=(n, h, w)) + masks * rng.uniform(0, 2), 1)
    limit = float(rng.choice([0.3, 0.05, 0.5, 1.0]))
    assert pixel_auroc(masks, maps, mode="exact") == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert aupro(masks, maps, fpr_limit=limit, mode="exact") == pytest.approx(slow_aupro(masks, maps, limit))


def test_pixel_inputs_in_every_layout_agree():
    rng = np.random.default_rng(3)
    masks = rng.random((4, 1, 12, 10)) > 0.7
    maps = rng.normal(size=(4, 1, 12, 10)).astype(np.float32) + masks
    ref = aupro(masks, maps)
    assert aupro(masks[:, 0], maps[:, 0]) == pytest.approx(ref)
    assert aupro(torch.from_numpy(masks), torch.from_numpy(maps)) == pytest.approx(ref)
    assert aupro(list(masks), list(maps)) == pytest.approx(ref)
    # images of different sizes in one list
    sizes = [(5, 7), (9, 4)]
    ms = [rng.random(s) > 0.6 for s in sizes]
    ss = [rng.normal(size=s) + m for s, m in zip(sizes, ms)]
    assert pixel_auroc(ms, ss) == pytest.approx(
        roc_auc_score(np.concatenate([m.ravel() for m in ms]), np.concatenate([s.ravel() for s in ss]))
    )


@pytest.mark.parametrize("fn", [pixel_auroc, aupro])
def test_pixel_metrics_reject_bad_inputs(fn):
    m = np.zeros((2, 4, 4))
    with pytest.raises(MetricError, match="no defect"):
        fn(m, np.random.default_rng(0).random(m.shape))
    with pytest.raises(MetricError, match="no normal"):
        fn(m + 1, np.random.default_rng(0).random(m.shape))
    m[0, 1, 1] = 1
    with pytest.raises(MetricError, match="shape"):
        fn(m, np.zeros((2, 4, 5)))
    with pytest.raises(MetricError, match="masks but"):
        fn(m, np.zeros((3, 4, 4)))
    with pytest.raises(MetricError, match="0 and 1"):
        fn(m * 255, np.zeros((2, 4, 4)))
    with pytest.raises(MetricError, match="NaN"):
        fn(np.where(m == 1, np.nan, 0), np.zeros((2, 4, 4)))
    with pytest.raises(MetricError, match="infinite"):
        fn(m, np.full((2, 4, 4), np.inf))
    with pytest.raises(MetricError, match="mode"):
        fn(m, np.zeros((2, 4, 4)), mode="fast")


def test_aupro_rejects_bad_fpr_limit():
    with pytest.raises(MetricError, match="fpr_limit"):
        aupro(ONE_MASK, ONE_MAP, fpr_limit=0.0)
    with pytest.raises(MetricError, match="fpr_limit"):
        aupro(ONE_MASK, ONE_MAP, fpr_limit=1.5)
