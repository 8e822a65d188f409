"""The shipped MTSD settings (configs/mtsd.json) on real data: pvqae trained on MTSD's good images
keeps the accuracy the README reports for it. Slow: it trains and tests on the full split."""

import pytest
from app_fixtures import SHIPPED_CONFIGS, needs_weights

from patchvq.data import open_dataset
from patchvq.engine import evaluate, fit
from patchvq.models import Config

PRESET = SHIPPED_CONFIGS / "mtsd.json"

# The README's figures for this preset: 0.908 image / 0.790 pixel AUROC (seed 0, bfloat16 backbone on
# an AVX-512 CPU). The floors leave room for other CPUs, yet the image floor sits above what the
# preset reaches at the default 12 epochs (0.880) and both sit above what the default settings
# reach (0.856 / 0.679), so losing what the preset adds fails.
IMAGE_AUROC_FLOOR = 0.89
PIXEL_AUROC_FLOOR = 0.76


@pytest.mark.slow
@needs_weights
def test_pvqae_with_the_mtsd_preset_reaches_the_reported_accuracy(mtsd_root, tmp_path):
    config = Config.from_file(PRESET)
    run = fit(open_dataset(mtsd_root, "mtsd", "train", image_size=config.image_size), config, tmp_path / "run",
              progress=False)
    result = evaluate(run, open_dataset(mtsd_root, "mtsd", "test", image_size=config.image_size))
    m = result.metrics
    assert m["images"] == 581 and m["defective"] > 0
    assert m["image_auroc"] >= IMAGE_AUROC_FLOOR, m
    assert m["pixel_auroc"] >= PIXEL_AUROC_FLOOR, m
