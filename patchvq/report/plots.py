"""The report's figures (matplotlib, Agg, PNG bytes): ROC, per-region overlap, score histogram."""

from __future__ import annotations

import io

import numpy as np


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(5, 3.6), dpi=100, layout="constrained")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _from_top(counts: np.ndarray) -> np.ndarray:
    c = np.concatenate([[0.0], np.cumsum(counts[::-1], dtype=np.float64)])
    return c / max(c[-1], 1e-300)


def roc(labels: np.ndarray, scores: np.ndarray, hist=None) -> bytes:
    """Image ROC (both classes needed) and, from the pixel histogram, pixel ROC."""
    from sklearn.metrics import roc_curve

    fig = _figure()
    ax = fig.subplots()
    if len(set(labels.tolist())) == 2:
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label="image")
    if hist is not None and hist.images and hist.defect.sum() and hist.normal.sum():
        ax.plot(_from_top(hist.normal), _from_top(hist.defect), label="pixel")
    ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    return _png(fig)


def pro(hist, fpr_limit: float = 0.3) -> bytes | None:
    """Per-region overlap against the pixel false positive rate; None without defect regions."""
    if hist is None or not hist.regions or not hist.normal.sum():
        return None
    fig = _figure()
    ax = fig.subplots()
    fpr = _from_top(hist.normal)
    overlap = np.concatenate([[0.0], np.cumsum(hist.overlap[::-1])]) / hist.regions
    ax.plot(fpr, overlap)
    ax.axvline(fpr_limit, color="0.5", lw=0.8, ls="--", label=f"FPR {fpr_limit} (AUPRO limit)")
    ax.set(xlabel="pixel false positive rate", ylabel="per-region overlap", title="PRO curve", xlim=(0, 1),
           ylim=(0, 1.01))
    ax.legend(loc="lower right")
    return _png(fig)


def histogram(labels: np.ndarray, scores: np.ndarray, threshold: float) -> bytes:
    """Image scores of good and defective images, with the fitted threshold."""
    fig = _figure()
    ax = fig.subplots()
    lo, hi = float(min(scores.min(), threshold)), float(max(scores.max(), threshold))
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 41)
    for label, name, colour in ((0, "good", "tab:green"), (1, "defective", "tab:red")):
        part = scores[labels == label]
        if part.size:
            ax.hist(part, bins=bins, alpha=0.6, label=f"{name} ({part.size})", color=colour)
    ax.axvline(threshold, color="black", lw=1.2, ls="--", label=f"threshold {threshold:.4g}")
    ax.set(xlabel="image score", ylabel="images", title="Image scores")
    ax.legend()
    return _png(fig)
