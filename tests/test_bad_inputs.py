"""Bad input to the layers, metrics and data loaders: a right answer or one clear error that
names the argument (or file) and says what to do; never a silently wrong value."""

import math
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from data_builders import mvtec, write_image

from patchvq.data import DatasetError, open_dataset
from patchvq.data.errors import SkippedFilesWarning
from patchvq.data.split import is_test_good, name_hash
from patchvq.layers import budget
from patchvq.layers.patch_vq import PatchVQ
from patchvq.metrics import MetricError, PixelHistogram, aupro, average_precision, f1_max, image_auroc, pixel_auroc

# ---- PatchVQ ---------------------------------------------------------------------------------


def layer(**settings):
    torch.manual_seed(0)
    return PatchVQ(4, (1, 2), num_codes=8, **settings)


@pytest.mark.parametrize("training", [True, False])
def test_empty_batch_gives_zero_losses_and_usage(training):
    vq = layer().train(training)
    vq(torch.randn(2, 4, 4, 4))  # initialise the codebook on a real batch first
    before = vq.codebook.weight.detach().clone()
    out = vq(torch.randn(0, 4, 4, 4))
    assert out.z_q.shape == (0, 4, 4, 4)
    for value in (out.loss.total, out.loss.commitment, out.loss.budget, out.usage["spent_fraction"]):
        assert value.item() == 0.0
    assert torch.equal(out.usage["level_share"], torch.zeros(2))
    assert torch.isfinite(out.usage["perplexity"])
    assert torch.equal(vq.codebook.weight.detach(), before)


def test_empty_batch_before_any_training_leaves_the_codebook_uninitialised():
    vq = layer().train()
    out = vq(torch.randn(0, 4, 4, 4))
    assert out.loss.total.item() == 0.0


@pytest.mark.parametrize("levels", [(8, 16.7), (8.0, 16.0), (8, True), ("8", "16"), "816", 8, (8, None)])
def test_non_integer_strides_are_rejected(levels):
    with pytest.raises(ValueError, match="levels must be"):
        PatchVQ(8, levels=levels)


@pytest.mark.parametrize(("dim", "code_dim", "name"), [(0, None, "dim"), (4.0, None, "dim"), (4, -1, "code_dim")])
def test_bad_dims_are_named(dim, code_dim, name):
    with pytest.raises(ValueError, match=f"{name} must be a positive int"):
        PatchVQ(dim, (1, 2), code_dim=code_dim)


@pytest.mark.parametrize("shape", [(1, 4, 0, 4), (1, 4, 4, 0), (1, 4, 0, 0)])
def test_empty_spatial_size_is_a_clear_error(shape):
    with pytest.raises(ValueError, match="is empty"):
        layer()(torch.randn(shape))
    with pytest.raises(ValueError, match="is empty"):
        layer()([torch.randn(shape), torch.randn(shape[0], 4, shape[2] // 2, shape[3] // 2)])


@pytest.mark.parametrize("bad", [-1, 2, 7])
def test_level_map_out_of_range_names_it(bad):
    level_map = torch.zeros(1, 2, 2, dtype=torch.int64)
    level_map[0, 1, 1] = bad
    with pytest.raises(ValueError, match=r"level_map values must be level indices in \[0, 2\)"):
        layer().eval()(torch.randn(1, 4, 4, 4), level_map=level_map)


@pytest.mark.parametrize("level_map", [torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.bool),
                                       torch.zeros(1, 3, 3, dtype=torch.int64), [[0, 1], [1, 0]]])
def test_level_map_of_wrong_type_or_shape_names_it(level_map):
    with pytest.raises(ValueError, match=r"level_map must be an integer \[B, Hc, Wc\] = \(1, 2, 2\)"):
        layer().eval()(torch.randn(1, 4, 4, 4), level_map=level_map)


@pytest.mark.parametrize("richness", [torch.rand(1, 4, 4), torch.rand(2, 2, 2), torch.rand(1, 2), [0.5]])
def test_richness_of_the_wrong_grid_names_it(richness):
    with pytest.raises(ValueError, match=r"richness must be a floating \[B, Hc, Wc\] = \(1, 2, 2\)"):
        layer()(torch.randn(1, 4, 4, 4), richness=richness)


@pytest.mark.parametrize("value", [float("nan"), -0.5, 1.5])
def test_richness_out_of_range_names_it(value):
    richness = torch.full((1, 2, 2), value)
    with pytest.raises(ValueError, match=r"richness must hold values in \[0, 1\]"):
        layer()(torch.randn(1, 4, 4, 4), richness=richness)


def test_budget_functions_check_their_shapes():
    gate = torch.ones(2, 2, 3, 3) / 2
    with pytest.raises(ValueError, match="richness must be"):
        budget.spent_fraction(gate, [4, 1], torch.rand(2, 6, 6))
    with pytest.raises(ValueError, match="gate must be"):
        budget.spent_fraction(gate, [16, 4, 1])
    assert budget.budget_loss(gate[:0], [4, 1], 0.5).item() == 0.0


# ---- metrics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", [image_auroc, average_precision, f1_max])
def test_empty_labels_are_named_as_empty(metric):
    with pytest.raises(MetricError, match="labels and scores are empty"):
        metric([], [])


def test_meta_tensors_are_a_clear_error():
    labels = torch.tensor([0, 1, 0, 1], device="meta")
    with pytest.raises(MetricError, match="labels is a tensor on the meta device"):
        image_auroc(labels, torch.rand(4))
    with pytest.raises(MetricError, match="maps is a tensor on the meta device"):
        pixel_auroc(torch.zeros(2, 4, 4), torch.zeros(2, 4, 4, device="meta"))


@pytest.mark.parametrize(("labels", "scores", "pattern"), [
    ([0, 1], [0.1j, 0.2], "scores must be real numbers"),
    (["a", "b"], [0.1, 0.2], "labels must be 0/1 numbers or bool"),
    ([0, 1], [[0.1], [0.2, 0.3]], "scores must be an array of numbers of one shape"),
])
def test_odd_label_and_score_values_are_named(labels, scores, pattern):
    with pytest.raises(MetricError, match=pattern):
        image_auroc(labels, scores)


@pytest.mark.parametrize("mode", ["exact", "binned"])
@pytest.mark.parametrize("shape", [(2, 0, 4), (1, 4, 0)])
def test_zero_size_maps_are_a_clear_error(mode, shape):
    with pytest.raises(MetricError, match="no pixels"):
        pixel_auroc(np.zeros(shape), np.zeros(shape), mode=mode)
    with pytest.raises(MetricError, match="no pixels"):
        aupro(np.zeros(shape), np.zeros(shape), mode=mode)


@pytest.mark.parametrize("limit", ["0.3", None, True, float("nan"), 0.0, 1.5])
def test_fpr_limit_must_be_a_number_in_range(limit):
    masks = np.zeros((1, 4, 4))
    masks[0, :2] = 1
    with pytest.raises(MetricError, match=r"fpr_limit must be a number in \(0, 1\]"):
        aupro(masks, np.random.default_rng(0).random((1, 4, 4)), fpr_limit=limit)


@pytest.mark.parametrize("bins", ["10", 3, 2.0, True])
def test_bins_must_be_an_even_int(bins):
    with pytest.raises(MetricError, match="bins must be an even number"):
        PixelHistogram(bins)


def test_binned_metrics_cover_the_whole_float64_range():
    masks = np.zeros((1, 8, 8))
    masks[0, :, :4] = 1
    maps = np.where(masks == 1, 1e308, -1e308)
    maps[0, 0, 0] = 0.0  # a defect pixel in the middle bin
    exact = pixel_auroc(masks, maps, mode="exact")
    binned = pixel_auroc(masks, maps, mode="binned")
    assert math.isfinite(binned) and abs(binned - exact) <= PixelHistogram().update(masks, maps).auroc_bound() + 1e-12
    assert aupro(masks, maps, mode="binned") == pytest.approx(aupro(masks, maps, mode="exact"), abs=0.05)


def test_widening_histogram_beyond_float64_is_a_clear_error():
    masks = np.zeros((1, 2, 2))
    masks[0, 0] = 1
    hist = PixelHistogram(4).update(masks, np.array([[[0.0, 1.0], [0.5, 0.25]]]))
    with pytest.raises(MetricError, match="float64 range"):
        hist.update(masks, np.array([[[-1.7e308, 1.7e308], [0.0, 1.0]]]))


# ---- data ------------------------------------------------------------------------------------


def write_png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height pixels (no pixel data follows)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_a_dataset_error_naming_the_file(tmp_path):
    root = mvtec(tmp_path / "cat")
    bomb = write_png_header(root / "train" / "good" / "bomb.png", 30000, 30000)
    with pytest.raises(DatasetError, match="bomb.png") as err:
        open_dataset(root, image_size=32)
    assert bomb in err.value.files
    with pytest.warns(SkippedFilesWarning, match="bomb.png"):
        ds = open_dataset(root, image_size=32, on_error="skip")
    assert bomb not in ds.paths and len(ds) == 4


@pytest.mark.parametrize("kind", ["loop", "dangling"])
def test_broken_image_links_are_reported(tmp_path, kind):
    root = mvtec(tmp_path / "cat")
    link = root / "train" / "good" / "broken.png"
    os.symlink(link if kind == "loop" else root / "missing.png", link)
    with pytest.raises(DatasetError, match="broken.png.*leads nowhere") as err:
        open_dataset(root, image_size=32)
    assert link in err.value.files
    with pytest.warns(SkippedFilesWarning, match="broken.png"):
        assert len(open_dataset(root, image_size=32, on_error="skip")) == 4


def test_defect_folder_linked_to_itself_is_reported(tmp_path):
    root = mvtec(tmp_path / "cat")
    link = root / "test" / "scratch"
    os.symlink(link, link)
    with pytest.raises(DatasetError, match="scratch.*leads nowhere"):
        open_dataset(root, split="test", image_size=32)
    with pytest.warns(SkippedFilesWarning, match="scratch"):
        ds = open_dataset(root, split="test", image_size=32, on_error="skip")
    assert sum(ds.labels) == 4


def test_non_utf8_file_names_split_by_their_bytes(tmp_path):
    name = os.fsdecode(b"caf\xe9.png")
    assert name_hash(name) == int.from_bytes(__import__("hashlib").sha1(b"caf\xe9.png").digest(), "big")
    assert isinstance(is_test_good(name), bool)
    root = tmp_path / "data"
    for i in range(15):
        write_image(root / "good" / f"{i}.png", (8, 8), seed=i)
    write_image(root / "good" / name, seed=9)
    write_image(root / "crack" / "0.png", seed=10)
    for split in ("train", "test", "fit", "val"):
        open_dataset(root, split=split, image_size=16)


@pytest.mark.parametrize("size", [(32, 32, 3), 32.0, (32.0, 32), "32", True, (32,), [0, 4]])
def test_bad_image_size_is_named(tmp_path, size):
    root = mvtec(tmp_path / "cat")
    with pytest.raises(ValueError, match="image_size must be"):
        open_dataset(root, image_size=size)


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"format": None}, "format must be"),
    ({"format": 3}, "format must be"),
    ({"val_fraction": "0.1", "split": "val"}, "val_fraction must be"),
    ({"workers": -1}, "workers must be"),
    ({"channels": 3.5}, "channels must be"),
])
def test_bad_options_are_named(tmp_path, kwargs, pattern):
    root = mvtec(tmp_path / "cat")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=pattern):
            open_dataset(root, image_size=32, **kwargs)


# ---- beyond the list: the same classes of input on the other public functions -----------------


def test_context_richness_does_not_depend_on_scale_and_rejects_nan():
    from patchvq.layers.context_richness import context_richness

    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    base = context_richness(images, 8)
    for scale in (1e30, 1e-30):
        torch.testing.assert_close(context_richness(images * scale, 8), base, rtol=1e-5, atol=1e-6)
    assert context_richness(images[:, :, :0], 8).shape == (2, 0, 2)
    images[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="images contain NaN or Inf"):
        context_richness(images, 8)


@pytest.mark.parametrize("progress", [float("nan"), "0.5", -0.1, 1.5, None])
def test_progress_must_be_a_number_in_range(progress):
    with pytest.raises(ValueError, match=r"progress must be a number in \[0, 1\]"):
        layer().set_progress(progress)
    with pytest.raises(ValueError, match=r"progress must be a number in \[0, 1\]"):
        budget.budget_target(progress)


@pytest.mark.parametrize("target", [float("nan"), "x", 2.0])
def test_budget_target_override_is_checked(target):
    with pytest.raises(ValueError, match=r"budget_target must be a number in \[0, 1\]"):
        layer()(torch.randn(1, 4, 4, 4), budget_target=target)


@pytest.mark.parametrize(("settings", "pattern"), [
    ({"temperature_end": 0.0}, "temperature_end must be"),
    ({"rho_final": 1.5}, "rho_final must be"),
    ({"budget_weight": float("nan")}, "budget_weight must be"),
    ({"router_hidden": 0}, "router_hidden must be"),
    ({"temprature_end": 0.3}, "unknown PatchVQ settings"),
])
def test_patch_vq_settings_are_checked(settings, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        PatchVQ(4, (1, 2), **settings)


def test_patch_vq_on_huge_features_gives_no_nan():
    vq = layer()
    out = vq(torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(1)) * 1e30)
    assert not torch.isnan(out.loss.commitment) and torch.isfinite(vq.codebook.weight).all()
    assert torch.isfinite(out.z_q).all()


def test_open_dataset_checks_root_split_and_on_error_first(tmp_path):
    with pytest.raises(ValueError, match="root must be a folder path"):
        open_dataset(None)
    with pytest.raises(ValueError, match="split must be one of"):
        open_dataset(tmp_path, split=None)
    with pytest.raises(ValueError, match="on_error must be one of"):
        open_dataset(tmp_path, on_error="ignore")
