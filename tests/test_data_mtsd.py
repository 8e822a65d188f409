"""The MTSD loader and its packaged split."""

import numpy as np
import pytest
from data_builders import write_image, write_mask
from PIL import Image

from patchvq.data import DatasetError, MTSDDataset, SkippedFilesWarning, mtsd_split, open_dataset
from patchvq.data.mtsd import split_rule


def test_split_file_follows_the_stated_rule_and_counts():
    listed = mtsd_split()
    assert len(listed) == 1344
    assert all(split_rule(key) == split for key, split in listed.items())
    free = [s for k, s in listed.items() if k.startswith("MT_Free/")]
    assert free.count("train") == 763 and free.count("test") == 189
    assert sum(1 for k, s in listed.items() if not k.startswith("MT_Free/") and s == "test") == 392
    # the rule reads the file name alone: this name, sha1 % 5 == 2, would be a training image
    assert split_rule("MT_Free/exp1_num_4727.jpg") == "train"
    assert listed["MT_Blowhole/exp1_num_4727.jpg"] == "test"


def test_real_mtsd_counts_match_the_split_file(mtsd_root):
    listed = mtsd_split()
    train = open_dataset(mtsd_root, split="train", image_size=64, verify=False)
    test = open_dataset(mtsd_root, split="test", image_size=64)
    assert isinstance(train, MTSDDataset) and train.format == "mtsd"
    assert len(train) == sum(s == "train" for s in listed.values()) == 763
    assert test.counts() == {"good": 189, "Blowhole": 115, "Break": 85, "Crack": 57, "Fray": 32, "Uneven": 103}
    keys = {f"{p.parent.parent.name}/{p.name}" for p in test.paths}
    assert keys == {k for k, s in listed.items() if s == "test"}
    fit = open_dataset(mtsd_root, split="fit", image_size=64, verify=False)
    val = open_dataset(mtsd_root, split="val", image_size=64, verify=False)
    assert (len(fit), len(val)) == (686, 77) and not set(fit.paths) & set(val.paths)


def test_real_mtsd_masks_are_the_png_above_127(mtsd_root):
    test = open_dataset(mtsd_root, split="test", image_size=None, verify=False, channels=1)
    index = next(i for i, s in enumerate(test.samples) if s.defect == "Crack")
    item = test[index]
    png = np.asarray(Image.open(item["path"][:-4] + ".png"))
    assert np.array_equal(item["mask"][0].numpy(), (png > 127).astype(np.float32))
    assert item["image"].shape[1:] == png.shape and item["label"] == 1


def _fake(root, names):
    for key in names:
        cls, name = key.split("/")
        write_image(root / cls / "Imgs" / name, mode="L")
        if cls != "MT_Free":
            write_mask(root / cls / "Imgs" / name.replace(".jpg", ".png"))
    return root


def test_unlisted_and_missing_files_are_reported(tmp_path):
    listed = mtsd_split()
    some = [k for k in listed if k.startswith("MT_Crack/")][:2]
    root = _fake(tmp_path / "mtsd", some + ["MT_Crack/not_in_split.jpg"])
    with pytest.raises(DatasetError) as err:
        open_dataset(root, split="test")
    message = str(err.value)
    assert "not_in_split.jpg: not in the packaged MTSD split file" in message
    assert "listed in the MTSD split file but missing" in message
    assert "MT_Free: class folder missing: the split file lists 189" in message
    assert root / "MT_Free" in err.value.files
    with pytest.warns(SkippedFilesWarning), pytest.raises(DatasetError, match="no good images"):
        open_dataset(root, split="test", on_error="skip")


def test_defect_image_without_its_mask_is_reported(tmp_path):
    key = next(k for k in mtsd_split() if k.startswith("MT_Fray/"))
    root = _fake(tmp_path / "mtsd", [key])
    (root / key.replace("/", "/Imgs/").replace(".jpg", ".png")).unlink()
    with pytest.raises(DatasetError, match="defect image without its mask"):
        open_dataset(root, format="mtsd", split="test")
