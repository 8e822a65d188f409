"""A tiny conv autoencoder with VectorQuantize in its bottleneck learns on real MTSD crops (the loss falls)."""

import random

import pytest
import torch
from torch import nn

from patchvq.layers import VectorQuantize

CROP = 32
STEPS = 150


def _crops(root, count, seed):
    """`count` random grey CROP x CROP crops, in [0, 1], from the defect-free MTSD images under root."""
    image_module = pytest.importorskip("PIL.Image", reason="Pillow is needed to read MTSD images")
    files = sorted((root / "MT_Free" / "Imgs").glob("*.jpg"))
    if len(files) < 10:
        pytest.skip(f"MTSD at {root} has fewer than 10 defect-free images")
    rng = random.Random(seed)
    images = []
    for path in rng.sample(files, min(40, len(files))):
        with image_module.open(path) as img:
            grey = img.convert("L").resize((96, 96))
        images.append(torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8).reshape(96, 96))
    stack = torch.stack(images).float().div(255)
    picks = []
    for _ in range(count):
        img = stack[rng.randrange(len(images))]
        top, left = rng.randrange(96 - CROP), rng.randrange(96 - CROP)
        picks.append(img[top : top + CROP, left : left + CROP])
    return torch.stack(picks)[:, None]


class _AutoEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encode = nn.Sequential(nn.Conv2d(1, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 16, 4, 2, 1))
        self.vq = VectorQuantize(dim=16, codebook_size=64, accept_image_fmap=True, kmeans_init=True,
                                 threshold_ema_dead_code=1.0, commitment_weight=0.25)
        self.decode = nn.Sequential(nn.ConvTranspose2d(16, 32, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(32, 1, 4, 2, 1))

    def forward(self, x):
        z, _, commit = self.vq(self.encode(x))
        out = self.decode(z)
        return out, (out - x).pow(2).mean(), commit


def test_autoencoder_learns_on_mtsd(mtsd_root):
    torch.manual_seed(0)
    train, held_out = _crops(mtsd_root, 2048, seed=0), _crops(mtsd_root, 256, seed=1)
    model = _AutoEncoder()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model(train[:64])  # the first training forward initialises the codebook by k-means
    model.eval()
    with torch.no_grad():
        before = float(model(held_out)[1])
    model.train()
    for step in range(STEPS):
        batch = train[torch.randint(len(train), (32,))]
        _, recon, commit = model(batch)
        opt.zero_grad()
        (recon + commit).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = float(model(held_out)[1])
    usage = model.vq.usage()
    assert after < 0.5 * before, (before, after)
    # Better than the best constant per crop (its own mean): the codes carry spatial structure.
    per_crop_mean = (held_out - held_out.mean((2, 3), keepdim=True)).pow(2).mean()
    assert after < float(per_crop_mean), (after, float(per_crop_mean))
    assert usage["perplexity"] > 4, usage
