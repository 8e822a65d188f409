"""Scoring: image scores and anomaly maps of images, and the metrics of a run on a test set."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from patchvq import metrics
from patchvq.models.detector import Detector, Scored


@torch.no_grad()
def score(run, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(image scores [B], anomaly maps [B, H, W], level maps [B, Hc, Wc] or None) of images
    [B, C, H, W] in [0, 1] at the run's image size; the level maps are the allocation scored
    (pvqae: after the Budget Prior)."""
    out = score_images(run.detector, images)
    return out.scores.cpu(), out.maps.cpu(), None if out.prior_level_map is None else out.prior_level_map.cpu()


@torch.no_grad()
def score_images(detector: Detector, images: torch.Tensor) -> Scored:
    size = detector.config.image_size
    if images.dim() != 4 or tuple(images.shape[2:]) != (size, size) or not images.is_floating_point():
        raise ValueError(f"score: images must be a float [B, C, {size}, {size}] tensor, got "
                         f"{tuple(images.shape)} {images.dtype}")
    if images.shape[1] != detector.image_channels and (detector.config.pixel_space or images.shape[1] not in (1, 3)):
        raise ValueError(f"score: the run was trained on {detector.image_channels}-channel images, "
                         f"got {images.shape[1]} channels")
    device = next(detector.buffers()).device
    images = images.to(device)
    return detector.score_targets(detector.targets(images), (size, size))


def _loader(dataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=list)


@torch.no_grad()
def score_dataset(detector: Detector, dataset, batch_size: int, *, progress, desc: str) -> torch.Tensor:
    """Image scores [N] of every image of `dataset`, in order."""
    detector.eval()
    scores = []
    with progress(total=len(dataset), desc=desc, unit="img") as bar:
        for items in _loader(dataset, batch_size):
            scores.append(score_images(detector, torch.stack([i["image"] for i in items])).scores.cpu())
            bar.update(len(items))
    return torch.cat(scores)


@torch.no_grad()
def error_terms_of(detector: Detector, dataset, batch_size: int, *, progress, desc: str) -> list[list[torch.Tensor]]:
    """The per-level error terms of every image of `dataset`, batch by batch (for calibration)."""
    detector.eval()
    device = next(detector.buffers()).device
    terms = []
    with progress(total=len(dataset), desc=desc, unit="img") as bar:
        for items in _loader(dataset, batch_size):
            images = torch.stack([i["image"] for i in items]).to(device)
            terms.append([t.cpu() for t in detector.error_terms(detector.targets(images))[0]])
            bar.update(len(items))
    return terms


@dataclass
class Evaluation:
    """metrics: the summary (JSON-ready); rows: per image {path, label, defect, score, verdict}."""

    metrics: dict
    rows: list[dict]


@torch.no_grad()
def evaluate(run, dataset, *, batch_size: int = 8, progress=None,
             on_batch: Callable[[list[dict], Scored], None] | None = None) -> Evaluation:
    """Score every image of a test `dataset` with `run` and compute the field's metrics.

    Pixel metrics (pixel AUROC, AUPRO) are streamed through a histogram and are None when the
    dataset has no masks. Threshold metrics use the run's threshold (fitted on good training
    images only); f1_max is the oracle figure over all thresholds of the test set.
    `on_batch(items, scored)` sees each batch (e.g. to write a report).
    """
    from tqdm.auto import tqdm

    detector = run.detector.eval()
    has_masks = bool(getattr(dataset, "has_masks", False))
    hist = metrics.PixelHistogram() if has_masks else None
    rows, seconds = [], 0.0
    bar = progress or (lambda **kw: tqdm(disable=True, **kw))
    with bar(total=len(dataset), desc="test", unit="img") as pbar:
        for items in _loader(dataset, batch_size):
            images = torch.stack([i["image"] for i in items])
            start = time.perf_counter()
            out = score_images(detector, images)
            scores = out.scores.cpu()
            seconds += time.perf_counter() - start
            if hist is not None:
                masks = torch.stack([i["mask"][0] for i in items])
                known = ~torch.isnan(masks).flatten(1).any(1)
                if bool(known.any()):
                    hist.update((masks[known] > 0.5).numpy(), out.maps.cpu()[known].numpy())
            for item, s in zip(items, scores.tolist()):
                rows.append({"path": str(item["path"]), "label": int(item["label"]), "defect": item.get("defect", ""),
                             "score": s, "verdict": "defective" if s > run.threshold else "good"})
            if on_batch is not None:
                on_batch(items, out)
            pbar.update(len(items))
    return Evaluation(summarise(rows, run.threshold, hist, seconds), rows)


def summarise(rows: list[dict], threshold: float, hist, seconds: float) -> dict:
    labels = np.array([r["label"] for r in rows])
    scores = np.array([r["score"] for r in rows])
    predicted = scores > threshold
    tp = int((predicted & (labels == 1)).sum())
    fp = int((predicted & (labels == 0)).sum())
    fn = int((~predicted & (labels == 1)).sum())
    tn = int((~predicted & (labels == 0)).sum())
    both = len(set(labels.tolist())) == 2
    pixel = hist is not None and hist.regions > 0
    return {
        "image_auroc": metrics.image_auroc(labels, scores) if both else None,
        "pixel_auroc": hist.pixel_auroc() if pixel else None,
        "aupro": hist.aupro(0.3) if pixel else None,
        "f1_max": metrics.f1_max(labels, scores) if both else None,
        "ap": metrics.average_precision(labels, scores) if both else None,
        "threshold": threshold,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
        "images": len(rows),
        "good": int((labels == 0).sum()),
        "defective": int((labels == 1).sum()),
        "ms_per_image": 1000 * seconds / max(len(rows), 1),
    }
