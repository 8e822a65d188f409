"""ReportWriter: streams per-image strips during `evaluate`, then writes plots and HTML pages."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from patchvq.engine.checkpoint import atomic_write
from patchvq.report import html_pages, panels, plots

PAGE_SIZE = 100
IMAGE_DIR = "images"


def _safe_name(index: int, path: str) -> str:
    """A file name made only of safe characters: no path of a dataset can leave the folder."""
    import re

    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).stem).strip("_")[:60] or "image"
    return f"{index:05d}_{stem}.jpg"


def _write_jpeg(path: Path, pixels: np.ndarray, quality: int) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality, optimize=True)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


class ReportWriter:
    """Writes the report of one test run into `folder`.

    `side`: pixels of each panel (images are shown at most this size); `heat_range`: the
    (lo, hi) of the heat-map colours, by default 0 to 1.5 x the run's threshold (the
    colours `predict` uses), the same for every image so that they compare.
    """

    def __init__(self, folder: str | Path, run, *, side: int = 160, quality: int = 82, title: str | None = None,
                 heat_range: tuple[float, float] | None = None):
        from patchvq.metrics import PixelHistogram

        self.folder = Path(folder)
        self.run = run
        self.side = min(int(side), int(run.config.image_size))
        self.quality = int(quality)
        self.title = title or f"{run.config.model} ({run.config.backbone})"
        self.heat_range = heat_range or (0.0, max(float(run.threshold), 1e-12) * 1.5)
        self.items: list[dict] = []
        self.titles: list[str] = []
        self.hist = PixelHistogram()
        (self.folder / IMAGE_DIR).mkdir(parents=True, exist_ok=True)

    def add(self, items: list[dict], scored) -> None:
        """The `on_batch` callback of `evaluate`: one strip per image, and the pixel histogram."""
        lo, hi = self.heat_range
        maps = scored.maps.float().cpu()
        recon = None if scored.reconstruction is None else scored.reconstruction.float().cpu()
        level = None if scored.level_map is None else scored.level_map.cpu()
        prior = None if scored.prior_level_map is None else scored.prior_level_map.cpu()
        for i, item in enumerate(items):
            index = len(self.items)
            mask = item.get("mask")
            has_mask = mask is not None and bool(item.get("has_mask", True)) and not bool(torch.isnan(mask).any())
            pixels, titles = panels.strip(
                item["image"], maps[i], lo, hi, self.side,
                mask=mask[0] if has_mask else None,
                reconstruction=None if recon is None else recon[i],
                level_map=None if level is None else level[i],
                prior_map=None if prior is None else prior[i],
            )
            if has_mask:
                self.hist.update((mask[0] > 0.5).numpy(), maps[i].numpy())
            name = _safe_name(index, str(item["path"]))
            _write_jpeg(self.folder / IMAGE_DIR / name, pixels, self.quality)
            if len(titles) > len(self.titles):
                self.titles = titles
            self.items.append({"path": str(item["path"]), "label": int(item["label"]),
                               "defect": str(item.get("defect", "") or ""), "score": float(scored.scores[i]),
                               "file": f"{IMAGE_DIR}/{name}", "width": pixels.shape[1], "height": pixels.shape[0]})

    def finish(self, evaluation, extra: dict | None = None) -> Path:
        """Write the plots and the pages; returns the path of index.html."""
        if self.run.config.model == "knn" and self.titles:
            self.titles = ["nearest-neighbour distance" if t == "anomaly map" else t for t in self.titles]
        labels = np.array([r["label"] for r in self.items])
        scores = np.array([r["score"] for r in self.items])
        threshold = float(self.run.threshold)
        figures = []
        hist = self.hist if self.hist.images else None
        if len(self.items):
            figures.append(("roc.png", "ROC curves", plots.roc(labels, scores, hist)))
            pro = plots.pro(hist)
            if pro is not None:
                figures.append(("pro.png", "per-region overlap", pro))
            figures.append(("scores.png", "score histogram", plots.histogram(labels, scores, threshold)))
        for name, _, data in figures:
            atomic_write(self.folder / name, lambda f, d=data: f.write(d))
        order = sorted(self.items, key=lambda r: -r["score"])
        for rank, r in enumerate(order, 1):
            r["rank"] = rank
            r["verdict"] = "defective" if r["score"] > threshold else "good"
        pages = max(1, math.ceil(len(order) / PAGE_SIZE))
        summary = dict(evaluation.metrics)
        for number in range(1, pages + 1):
            chunk = order[(number - 1) * PAGE_SIZE : number * PAGE_SIZE]
            text = html_pages.page(
                title=self.title, metrics=summary, extra=extra or {}, figures=figures if number == 1 else [],
                rows=chunk, titles=self.titles, number=number, pages=pages, side=self.side,
                heat_range=self.heat_range, levels=len(self.run.config.strides) if self.run.config.model == "pvqae" else 0,
            )
            atomic_write(self.folder / html_pages.page_file(number), lambda f, t=text: f.write(t.encode("utf-8")))
        return self.folder / "index.html"
