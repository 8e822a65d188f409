"""A built-in demo dataset: procedurally generated surfaces with realistic defects.

``generate(root, seed=0)`` writes brushed metal (grayscale), woven fabric and ceramic tile
(colour) categories in the MVTec AD layout, with exact masks, deterministically for a seed,
in a few seconds. Open a category with ``patchvq.data.open_dataset(root / "tile")``.
"""

from .writer import CATEGORIES, generate, render

__all__ = ["CATEGORIES", "generate", "render"]
