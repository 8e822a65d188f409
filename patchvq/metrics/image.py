"""Image-level metrics: exact, by scikit-learn's reference implementations."""

from __future__ import annotations

import numpy as np

from .inputs import labels_and_scores


def image_auroc(labels, scores) -> float:
    """Area under the ROC curve of image ``scores`` (N,) against ``labels`` (N,), 1 = defective.

    Exact (scikit-learn ``roc_auc_score``): the probability that a random defective image
    scores higher than a random good one, ties counting one half.
    """
    from sklearn.metrics import roc_auc_score

    y, s = labels_and_scores(labels, scores)
    return float(roc_auc_score(y, s))


def average_precision(labels, scores) -> float:
    """Average precision of ``scores`` (N,) for ``labels`` (N,), 1 = defective (the positive class).

    Exact (scikit-learn ``average_precision_score``): sum over thresholds of
    (R_n - R_{n-1}) * P_n, the step-wise area under the precision-recall curve, without
    interpolation.
    """
    from sklearn.metrics import average_precision_score

    y, s = labels_and_scores(labels, scores)
    return float(average_precision_score(y, s))


def f1_max(labels, scores, return_threshold: bool = False) -> float | tuple[float, float]:
    """The best F1 score over all thresholds, ``labels`` (N,) 1 = defective, ``scores`` (N,).

    An image is predicted defective when its score is >= the threshold; every distinct
    score is tried (scikit-learn ``precision_recall_curve``). With ``return_threshold`` the
    result is ``(f1, threshold)``, the smallest score reaching it. Chosen on the test set
    itself, it is an optimistic (oracle) figure.
    """
    from sklearn.metrics import precision_recall_curve

    y, s = labels_and_scores(labels, scores)
    precision, recall, thresholds = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    if return_threshold:
        return float(f1[best]), float(thresholds[best])
    return float(f1[best])
