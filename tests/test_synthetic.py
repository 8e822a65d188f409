"""The built-in demo dataset: layout, determinism, exact masks."""

import filecmp

import numpy as np
import pytest
from PIL import Image

from patchvq.data import open_dataset
from patchvq.data.synthetic import CATEGORIES, defects, generate, render, textures


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*.png"))


def test_generate_writes_the_mvtec_layout_for_every_category(tmp_path):
    root = generate(tmp_path / "demo", seed=0, n_train=5, n_test=9, image_size=64)
    for category, (_, _, kinds) in CATEGORIES.items():
        train = open_dataset(root / category, image_size=64)
        test = open_dataset(root / category, split="test", image_size=64)
        assert train.format == "mvtec" and len(train) == 5
        counts = test.counts()
        assert counts.pop("good") == 3 and sorted(counts) == sorted(kinds) and sum(counts.values()) == 6
        assert all(it["mask"].sum() > 0 for it in test if it["label"] == 1)
    assert Image.open(root / "metal" / "train" / "good" / "000.png").mode == "L"
    assert Image.open(root / "fabric" / "train" / "good" / "000.png").mode == "RGB"


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    a = generate(tmp_path / "a", seed=3, n_train=2, n_test=4, image_size=48)
    b = generate(tmp_path / "b", seed=3, n_train=2, n_test=4, image_size=48)
    c = generate(tmp_path / "c", seed=4, n_train=2, n_test=4, image_size=48)
    files = _files(a)
    assert files == _files(b) == _files(c)
    _, mismatch, errors = filecmp.cmpfiles(a, b, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors
    _, mismatch, _ = filecmp.cmpfiles(a, c, [str(f) for f in files], shallow=False)
    assert len(mismatch) == len(files)


def test_regenerating_replaces_a_previous_run(tmp_path):
    generate(tmp_path, n_train=6, n_test=6, image_size=32, categories=["tile"])
    generate(tmp_path, n_train=2, n_test=6, image_size=32, categories=["tile"])
    assert len(list((tmp_path / "tile" / "train" / "good").iterdir())) == 2


@pytest.mark.parametrize("category", list(CATEGORIES))
def test_defects_change_exactly_the_masked_pixels(category):
    style_fn, surface_fn, kinds = CATEGORIES[category]
    for k, (kind, fn) in enumerate(kinds.items()):
        rng = np.random.default_rng([k, 1])
        img, ctx = surface_fn(rng, 128, style_fn(rng))
        out, mask = defects.apply(img, *fn(rng, img, ctx))
        assert mask.any(), kind
        assert np.array_equal(out[~mask], img[~mask]), kind
        visible = np.abs(out - img).max(axis=-1)[mask] > 1.5 / 255
        assert visible.mean() > 0.9, kind


def test_render_is_a_pure_function_of_its_arguments():
    a, ma = render("fabric", 0, "test", 2, "hole", 64)
    b, mb = render("fabric", 0, "test", 2, "hole", 64)
    _good, mg = render("fabric", 0, "test", 2, None, 64)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    assert a.dtype == np.uint8 and a.shape == (64, 64, 3) and not mg.any()
    assert render("metal", 0, "train", 0, None, 64)[0].shape == (64, 64, 1)


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown categories"):
        generate(tmp_path, categories=["glass"])
    with pytest.raises(ValueError, match="n_train"):
        generate(tmp_path, n_train=0)


def test_textures_stay_in_range():
    rng = np.random.default_rng(0)
    for style_fn, surface_fn, _ in CATEGORIES.values():
        img = textures.finish(rng, surface_fn(rng, 96, style_fn(rng))[0])
        assert img.min() >= 0 and img.max() <= 1 and img.dtype == np.float32
