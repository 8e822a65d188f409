"""What the command line writes: tables, CSV files, heat-map overlays."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
import torch

from patchvq.engine.checkpoint import atomic_write

METRIC_ROWS = (
    ("image_auroc", "image AUROC"),
    ("pixel_auroc", "pixel AUROC"),
    ("aupro", "AUPRO (FPR <= 0.3)"),
    ("ap", "average precision"),
    ("f1_max", "F1-max (oracle threshold)"),
    ("precision", "precision at threshold"),
    ("recall", "recall at threshold"),
    ("threshold", "threshold"),
    ("ms_per_image", "ms per image"),
)


def metrics_table(metrics: dict) -> str:
    """A two-column text table of the summary metrics; None prints as 'n/a (no masks)' or 'n/a'."""
    lines = []
    for key, label in METRIC_ROWS:
        value = metrics.get(key)
        if value is None:
            text = "n/a (no masks)" if key in ("pixel_auroc", "aupro") else "n/a"
        elif key == "ms_per_image":
            text = f"{value:.1f}"
        else:
            text = f"{value:.4f}"
        lines.append(f"  {label:<28} {text}")
    c = metrics.get("confusion", {})
    lines.append(f"  {'images (good / defective)':<28} {metrics['images']} ({metrics['good']} / {metrics['defective']})")
    lines.append(f"  {'at threshold: TP FP FN TN':<28} {c.get('tp')} {c.get('fp')} {c.get('fn')} {c.get('tn')}")
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    """Write rows atomically as CSV with the given columns."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buffer.getvalue().encode("utf-8")))


def safe_name(index: int, path: str | Path) -> str:
    """A file name for the output of input number `index`: its stem with only safe characters."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem).strip("._") or "image"
    return f"{index:05d}_{stem[:80]}"


def heat_colours(values: np.ndarray) -> np.ndarray:
    """[H, W] values in [0, 1] to [H, W, 3] uint8 colours (matplotlib's inferno)."""
    from matplotlib import colormaps

    return (colormaps["inferno"](np.clip(values, 0, 1))[..., :3] * 255).astype(np.uint8)


def overlay(image: torch.Tensor, heat: torch.Tensor, lo: float, hi: float) -> np.ndarray:
    """Image [C, H, W] in [0, 1] blended with its anomaly map [H, W] scaled from [lo, hi]: [H, W, 3] uint8."""
    img = image.float().cpu().numpy()
    img = np.repeat(img, 3, 0) if img.shape[0] == 1 else img[:3]
    img = (img.transpose(1, 2, 0) * 255).astype(np.float32)
    scaled = (heat.float().cpu().numpy() - lo) / max(hi - lo, 1e-12)
    colours = heat_colours(scaled).astype(np.float32)
    alpha = 0.5 * np.clip(scaled, 0, 1)[..., None] + 0.15
    return (img * (1 - alpha) + colours * alpha).clip(0, 255).astype(np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
