"""Writing the demo dataset to disk in the MVTec AD layout."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from . import defects, textures

CATEGORIES = {
    "metal": (
        textures.metal_style,
        textures.metal,
        {"scratch": defects.scratch, "pit": defects.pit, "stain": defects.stain},
    ),
    "fabric": (
        textures.fabric_style,
        textures.fabric,
        {"hole": defects.hole, "stain": defects.stain, "missing_thread": defects.missing_thread},
    ),
    "tile": (
        textures.tile_style,
        textures.tile,
        {"crack": defects.crack, "chip": defects.chip, "stain": defects.stain},
    ),
}
"""Category name -> (style function, surface function, {defect type: defect function})."""

_SPLIT_CODE = {"train": 0, "test": 1}


def render(
    category: str, seed: int, split: str, index: int, defect: str | None, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """One image of ``category`` as uint8 (size, size, C) and its bool (size, size) mask.

    ``defect`` is a defect type of the category or None for a good image. The image
    depends only on the arguments: the category style comes from ``(seed, category)`` and
    the image from ``(seed, category, split, index, defect)``.
    """
    style_fn, surface_fn, kinds = CATEGORIES[category]
    cat_id = list(CATEGORIES).index(category)
    style = style_fn(np.random.default_rng([seed, cat_id]))
    kind_id = 0 if defect is None else 1 + list(kinds).index(defect)
    rng = np.random.default_rng([seed, cat_id, _SPLIT_CODE[split], index, kind_id])
    img, ctx = surface_fn(rng, size, style)
    mask = np.zeros((size, size), dtype=bool)
    if defect is not None:
        for _ in range(1 + int(rng.random() < 0.25)):
            img, changed = defects.apply(img, *kinds[defect](rng, img, ctx))
            mask |= changed
    img = textures.finish(rng, img)
    return np.round(img * 255).astype(np.uint8), mask


def _plan(n_train: int, n_test: int, kinds: list[str]) -> list[tuple[str, str | None, int]]:
    """(split, defect or None, index) of every image of a category."""
    n_good_test = max(1, round(n_test / 3))
    n_defect = max(len(kinds), n_test - n_good_test)
    jobs = [("train", None, i) for i in range(n_train)] + [("test", None, i) for i in range(n_good_test)]
    for k, kind in enumerate(kinds):
        count = n_defect // len(kinds) + (k < n_defect % len(kinds))
        jobs += [("test", kind, i) for i in range(count)]
    return jobs


def _write(root: Path, category: str, seed: int, size: int, job: tuple[str, str | None, int]) -> None:
    split, defect, index = job
    img, mask = render(category, seed, split, index, defect, size)
    folder = root / category / split / (defect or "good")
    Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(folder / f"{index:03d}.png")
    if defect is not None:
        Image.fromarray(mask.astype(np.uint8) * 255).save(
            root / category / "ground_truth" / defect / f"{index:03d}_mask.png"
        )


def generate(
    root: str | Path,
    seed: int = 0,
    n_train: int = 60,
    n_test: int = 30,
    image_size: int = 256,
    categories: tuple[str, ...] | list[str] | None = None,
    workers: int | None = None,
) -> Path:
    """Write the demo dataset under ``root`` in the MVTec AD layout and return ``root``.

    For each category (default: all of ``CATEGORIES``: ``metal`` grayscale, ``fabric`` and
    ``tile`` colour) it writes ``n_train`` good training images, ``round(n_test / 3)`` good
    test images and the rest of ``n_test`` as defect images spread evenly over the
    category's defect types, each with its exact mask ``ground_truth/<defect>/<i>_mask.png``
    (255 where the defect changed the surface). PNG files, ``image_size`` pixels square.
    The files depend only on the arguments (byte-identical for the same ones); an existing
    category folder is replaced.
    """
    root = Path(root)
    names = list(CATEGORIES) if categories is None else list(categories)
    unknown = [c for c in names if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown categories {unknown}; choose from {list(CATEGORIES)}")
    if n_train < 1 or n_test < 2 or image_size < 32:
        raise ValueError("need n_train >= 1, n_test >= 2 and image_size >= 32")
    tasks = []
    for category in names:
        kinds = list(CATEGORIES[category][2])
        _clear(root / category)
        for split, defect, index in _plan(n_train, n_test, kinds):
            (root / category / split / (defect or "good")).mkdir(parents=True, exist_ok=True)
            if defect is not None:
                (root / category / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
            tasks.append((category, (split, defect, index)))
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(lambda t: _write(root, t[0], seed, image_size, t[1]), tasks))
    return root


def _clear(folder: Path) -> None:
    """Remove the image files a previous run wrote under ``folder`` (and nothing else)."""
    if not folder.is_dir():
        return
    for sub in ("train", "test", "ground_truth"):
        for path in sorted((folder / sub).glob("*/*.png"), reverse=True):
            path.unlink()
