"""Loaders on small generated folders of every layout, good and bad."""

import logging
import warnings

import numpy as np
import pytest
import torch
from data_builders import btad, mvtec, truncate, write_image, write_mask
from PIL import Image
from torch.utils.data import DataLoader

from patchvq.data import (
    BTADDataset,
    DatasetError,
    FolderDataset,
    MVTecDataset,
    SkippedFilesWarning,
    detect_format,
    is_test_good,
    open_dataset,
)
from patchvq.metrics import MetricError, pixel_auroc


def test_mvtec_items_have_the_documented_shapes_and_values(tmp_path):
    root = mvtec(tmp_path / "cat")
    train = open_dataset(root, image_size=32)
    assert isinstance(train, MVTecDataset) and train.format == "mvtec"
    assert len(train) == 4 and train.labels == [0] * 4
    for item in train:  # RGB, L, RGBA, P and 16-bit images of different sizes
        assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
        assert 0.0 <= item["image"].min() and item["image"].max() <= 1.0
        assert item["mask"].shape == (1, 32, 32) and item["mask"].sum() == 0
    test = open_dataset(root, split="test", image_size=(30, 40), channels=1)
    assert test.counts() == {"good": 2, "crack": 2, "hole": 2}
    item = next(it for it in test if it["label"] == 1)
    assert item["image"].shape == (1, 30, 40) and item["defect"] in ("crack", "hole")
    # the mask box (x 5..15, y 5..12) of a 40 x 30 image keeps its place at the same size
    expected = np.zeros((30, 40))
    expected[5:12, 5:15] = 1
    assert np.array_equal(item["mask"][0].numpy(), expected)
    assert item["path"].endswith(".png") and item["has_mask"] is True


def test_masks_are_resized_with_nearest_neighbour_and_stay_binary(tmp_path):
    root = mvtec(tmp_path / "cat")
    write_mask(root / "ground_truth" / "crack" / "000_mask.png", box=(3, 3, 30, 20), value=200)
    test = open_dataset(root, split="test", image_size=17)
    masks = torch.stack([it["mask"] for it in test])
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    original = open_dataset(root, split="test", image_size=None)
    sizes = {tuple(it["image"].shape[1:]) for it in original}
    assert (30, 40) in sizes


def test_mask_threshold_is_above_127(tmp_path):
    root = mvtec(tmp_path / "cat", defects=("crack",))
    write_mask(root / "ground_truth" / "crack" / "000_mask.png", value=127)
    write_mask(root / "ground_truth" / "crack" / "001_mask.png", value=128)
    by_name = {it["path"][-13:]: it for it in open_dataset(root, split="test", image_size=None)}
    assert by_name["crack/000.png"]["mask"].sum() == 0
    assert by_name["crack/001.png"]["mask"].sum() == 70


def test_dataloader_batches_items(tmp_path):
    test = open_dataset(mvtec(tmp_path / "cat"), split="test", image_size=16, cache=True)
    batch = next(iter(DataLoader(test, batch_size=4)))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["mask"].shape == (4, 1, 16, 16)
    assert batch["label"].tolist() == test.labels[:4]


def test_auto_detection_says_which_layout_it_chose(tmp_path, caplog):
    mvtec(tmp_path / "m")
    btad(tmp_path / "b")
    write_image(tmp_path / "f" / "good" / "a.png")
    assert [detect_format(tmp_path / n) for n in "mbf"] == ["mvtec", "btad", "folder"]
    with caplog.at_level(logging.INFO, logger="patchvq.data"):
        open_dataset(tmp_path / "m", image_size=8)
    assert "recognised the mvtec layout" in caplog.text


def test_detection_errors_name_what_is_there(tmp_path):
    mvtec(tmp_path / "all" / "bottle")
    mvtec(tmp_path / "all" / "cable")
    with pytest.raises(DatasetError, match="several datasets.*bottle \\(mvtec\\).*cable"):
        open_dataset(tmp_path / "all")
    (tmp_path / "odd" / "pictures").mkdir(parents=True)
    with pytest.raises(DatasetError, match="matches no known layout.*pictures/"):
        open_dataset(tmp_path / "odd")
    with pytest.raises(DatasetError, match="not a folder"):
        open_dataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="format must be"):
        open_dataset(tmp_path / "all" / "bottle", format="coco")
    with pytest.raises(ValueError, match="split must be"):
        open_dataset(tmp_path / "all" / "bottle", split="validation")


def test_missing_mask_is_an_error_naming_the_file_or_a_listed_skip(tmp_path):
    root = mvtec(tmp_path / "cat")
    (root / "ground_truth" / "hole" / "001_mask.png").unlink()
    with pytest.raises(DatasetError, match="hole/001.png: defect image without a mask") as err:
        open_dataset(root, split="test")
    assert err.value.files == [root / "test" / "hole" / "001.png"]
    with pytest.warns(SkippedFilesWarning, match="(?s)skipped 1 file.*hole/001.png") as rec:
        test = open_dataset(root, split="test", on_error="skip")
    assert len(test) == 5 and test.skipped == [root / "test" / "hole" / "001.png"]
    assert rec[0].message.files == test.skipped


def test_unreadable_truncated_and_mismatched_files_are_all_reported(tmp_path):
    root = mvtec(tmp_path / "cat")
    truncate(root / "test" / "crack" / "000.png")
    (root / "test" / "good" / "001.png").write_text("not an image")
    write_mask(root / "ground_truth" / "hole" / "000_mask.png", size=(20, 20))
    truncate(write_mask(root / "ground_truth" / "hole" / "001_mask.png"))
    with pytest.raises(DatasetError) as err:
        open_dataset(root, split="test")
    message = str(err.value)
    assert "4 file(s)" in message and "unreadable or truncated image" in message
    assert "is 20x20 but the image is 40x30" in message and "mask" in message
    with pytest.warns(SkippedFilesWarning) as rec:
        test = open_dataset(root, split="test", on_error="skip")
    assert len(rec[0].message.files) == 4 and len(test) == 2


def test_lazy_mode_names_a_bad_file_when_it_is_read(tmp_path):
    root = mvtec(tmp_path / "cat")
    truncate(root / "train" / "good" / "002.png")
    train = open_dataset(root, verify=False)
    with pytest.raises(DatasetError, match="002.png"):
        train[2]


def test_empty_folders_and_one_class_test_sets_are_errors(tmp_path):
    root = mvtec(tmp_path / "a")
    for p in (root / "test" / "hole").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match="hole: folder holds no images"):
        open_dataset(root, split="test")
    root = mvtec(tmp_path / "b")
    for p in (root / "test" / "good").iterdir():
        p.unlink()
    (root / "test" / "good").rmdir()
    with pytest.raises(DatasetError, match="no good images"):
        open_dataset(root, split="test")
    root = mvtec(tmp_path / "c", defects=())
    with pytest.raises(DatasetError, match="no defect images"):
        open_dataset(root, split="test")
    root = mvtec(tmp_path / "d", n_train=1)
    truncate(root / "train" / "good" / "000.png")
    with pytest.warns(SkippedFilesWarning), pytest.raises(DatasetError, match="no usable images"):
        open_dataset(root, on_error="skip")
    with pytest.raises(DatasetError, match="training folder not found"):
        open_dataset(tmp_path / "b" / "test", format="mvtec")


def test_non_image_files_are_reported_not_silently_dropped(tmp_path):
    root = mvtec(tmp_path / "cat")
    (root / "train" / "good" / "notes.txt").write_text("x")
    (root / "train" / "good" / ".DS_Store").write_text("x")
    with pytest.warns(SkippedFilesWarning, match="(?s)ignored 1 file.*notes.txt"):
        train = open_dataset(root)
    assert len(train) == 4


def test_fit_and_val_partition_train_deterministically(tmp_path):
    root = mvtec(tmp_path / "cat", n_train=20)
    train = open_dataset(root, image_size=8)
    fit = open_dataset(root, split="fit", image_size=8)
    val = open_dataset(root, split="val", image_size=8, val_fraction=0.1)
    assert len(val) == 2 and len(fit) == 18
    assert sorted(fit.paths + val.paths) == sorted(train.paths)
    assert val.paths == open_dataset(root, split="val", image_size=8).paths
    assert len(open_dataset(root, split="val", image_size=8, val_fraction=0.5)) == 10
    with pytest.raises(ValueError, match="val_fraction"):
        open_dataset(root, split="val", val_fraction=1.0)


def test_cache_returns_the_same_items(tmp_path):
    root = mvtec(tmp_path / "cat")
    plain, cached = (
        open_dataset(root, split="val", image_size=16),
        open_dataset(root, split="val", image_size=16, cache=True),
    )
    assert torch.equal(plain[0]["image"], cached[0]["image"]) and plain[0]["path"] == cached[0]["path"]


def test_btad_mixed_extensions_are_matched_by_stem(tmp_path):
    root = btad(tmp_path / "01")
    test = open_dataset(root, split="test", image_size=16)
    assert isinstance(test, BTADDataset) and test.counts() == {"good": 1, "ko": 2}
    assert all(it["mask"].sum() > 0 for it in test if it["label"] == 1)
    assert len(open_dataset(root, image_size=16)) == 3
    (root / "ground_truth" / "ko" / "0001.bmp").unlink()
    with pytest.raises(DatasetError, match="0001.png: defect image without a mask"):
        open_dataset(root, split="test")
    write_mask(root / "ground_truth" / "ko" / "0000.bmp")
    write_mask(root / "ground_truth" / "ko" / "0001.png")
    with pytest.raises(DatasetError, match="more than one mask file"):
        open_dataset(root, split="test")


def _folder(root, masks: bool):
    names = [f"g{i:02d}.png" for i in range(12)]
    for i, n in enumerate(names):
        write_image(root / "good" / n, seed=i)
    for d in ("dent", "smear"):
        write_image(root / d / "x.jpg", seed=50)
        if masks:
            write_mask(root / "masks" / d / "x_mask.png")
    return names


def test_folder_layout_splits_good_images_by_the_hash_rule(tmp_path):
    names = _folder(tmp_path / "f", masks=True)
    train = open_dataset(tmp_path / "f", image_size=8)
    test = open_dataset(tmp_path / "f", split="test", image_size=8)
    assert isinstance(train, FolderDataset)
    assert sorted(p.name for p in train.paths) == sorted(n for n in names if not is_test_good(n))
    assert test.counts()["good"] == sum(map(is_test_good, names)) and test.counts()["dent"] == 1
    assert test.has_masks


def test_folder_layout_without_masks_marks_them_unknown(tmp_path):
    _folder(tmp_path / "f", masks=False)
    test = open_dataset(tmp_path / "f", split="test", image_size=8)
    assert not test.has_masks
    items = list(test)
    defect = [it for it in items if it["label"] == 1]
    assert all(not it["has_mask"] and torch.isnan(it["mask"]).all() for it in defect)
    with pytest.raises(MetricError, match="NaN"):
        pixel_auroc(torch.stack([it["mask"] for it in items]), torch.rand(len(items), 1, 8, 8))


def test_folder_mask_folder_requires_every_mask(tmp_path):
    _folder(tmp_path / "f", masks=True)
    (tmp_path / "f" / "masks" / "smear" / "x_mask.png").unlink()
    with pytest.raises(DatasetError, match="smear/x.jpg: defect image without a mask"):
        open_dataset(tmp_path / "f", split="test")


def test_image_modes_convert_consistently(tmp_path):
    root = mvtec(tmp_path / "cat", n_train=2)  # 000.png is RGB, 001.png grayscale
    gray = np.asarray(Image.open(root / "train" / "good" / "001.png"), dtype=np.float32) / 255
    rgb = Image.open(root / "train" / "good" / "000.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        colour, grey = open_dataset(root, image_size=None)
        as_luma = open_dataset(root, image_size=None, channels=1)[0]["image"][0]
    assert torch.allclose(grey["image"][0], torch.from_numpy(gray)) and torch.equal(grey["image"][0], grey["image"][2])
    luma = np.asarray(rgb, dtype=np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32) / 255
    assert torch.allclose(as_luma, torch.from_numpy(luma), atol=1e-5)
    assert colour["image"].shape == (3, 30, 40)


def test_mvtec_and_btad_without_ground_truth_are_image_level_datasets(tmp_path):
    import shutil

    root = mvtec(tmp_path / "cat")
    shutil.rmtree(root / "ground_truth")
    test = open_dataset(root, "mvtec", "test", image_size=16)
    assert not test.has_masks and len(test) == 6
    defect = next(test[i] for i in range(len(test)) if test[i]["label"] == 1)
    assert defect["has_mask"] is False and torch.isnan(defect["mask"]).all()
    product = btad(tmp_path / "01")
    shutil.rmtree(product / "ground_truth")
    assert not open_dataset(product, "btad", "test", image_size=16).has_masks


def test_a_ground_truth_folder_lacking_some_masks_is_still_an_error(tmp_path):
    import shutil

    root = mvtec(tmp_path / "cat")
    shutil.rmtree(root / "ground_truth" / "hole")
    with pytest.raises(DatasetError, match="hole/000.png: defect image without a mask"):
        open_dataset(root, "mvtec", "test", image_size=16)
